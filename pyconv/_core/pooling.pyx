# Pooling kernels (hot loops only; argument checking, output sizes, divisors and
# bin/tap tables are computed in pyconv/ops/pool.py).
#
# Every kernel works plane by plane (one (n, c) image channel), OpenMP over the
# planes.  Windows are separable, so a window reduction is done in two passes:
# the window's input rows are reduced into a one-row scratch buffer (unit-stride
# loop over the columns), then each output column reduces its taps of that row.
# Padding is never materialised: window bounds are clipped to the input.
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, fabsf, powf, sqrtf

import numpy as np

from pyconv._core.simd cimport multiversion_void


cdef struct Window2d:
    Py_ssize_t H, W, Ho, Wo          # input and output plane sizes
    Py_ssize_t kh, kw, sh, sw        # kernel, stride
    Py_ssize_t pt, pl, dh, dw        # top/left padding, dilation
    Py_ssize_t ow_lo, ow_hi          # output columns whose taps all lie inside the input
    Py_ssize_t x_row, out_row        # row strides (floats)


cdef inline float max_nan(float a, float b) noexcept nogil:
    # b wins when larger or NaN; a NaN already in a stays: NaN propagates (PyTorch).
    # Bitwise | keeps the select branch-free so the loops vectorize.
    return b if (b > a) | (b != b) else a


cdef inline void reduce_rows(float* dst, const float* src, Py_ssize_t nrows, Py_ssize_t row_step,
                             Py_ssize_t width, bint is_max) noexcept nogil:
    """dst[w] = max or sum over r < nrows of src[r * row_step + w] (nrows >= 1)."""
    cdef Py_ssize_t r, w
    cdef const float* row
    for w in range(width):
        dst[w] = src[w]
    for r in range(1, nrows):
        row = src + r * row_step
        if is_max:
            for w in range(width):
                dst[w] = max_nan(dst[w], row[w])
        else:
            for w in range(width):
                dst[w] = dst[w] + row[w]


cdef inline void accumulate_taps(float* o, const float* t, Py_ssize_t lo, Py_ssize_t hi,
                                 Py_ssize_t stride, Py_ssize_t offset, bint is_max) noexcept nogil:
    """o[j] (op)= t[j * stride + offset] for lo <= j < hi; strides 1 and 2 get constant-stride loops."""
    cdef Py_ssize_t j
    if is_max:
        if stride == 1:
            for j in range(lo, hi):
                o[j] = max_nan(o[j], t[j + offset])
        elif stride == 2:
            for j in range(lo, hi):
                o[j] = max_nan(o[j], t[2 * j + offset])
        else:
            for j in range(lo, hi):
                o[j] = max_nan(o[j], t[j * stride + offset])
    else:
        if stride == 1:
            for j in range(lo, hi):
                o[j] = o[j] + t[j + offset]
        elif stride == 2:
            for j in range(lo, hi):
                o[j] = o[j] + t[2 * j + offset]
        else:
            for j in range(lo, hi):
                o[j] = o[j] + t[j * stride + offset]


cdef inline float reduce_clipped_taps(const float* t, Py_ssize_t start, Py_ssize_t taps, Py_ssize_t step,
                                      Py_ssize_t size, bint is_max) noexcept nogil:
    """max or sum of t[start + k * step] over the k < taps that fall in [0, size)."""
    cdef Py_ssize_t k, i
    cdef float acc = -INFINITY if is_max else 0.0
    for k in range(taps):
        i = start + k * step
        if 0 <= i < size:
            acc = max_nan(acc, t[i]) if is_max else acc + t[i]
    return acc


cdef multiversion_void window_pool_plane(const float* x, float* out, const Window2d* g, float* row_buf,
                                         const float* scale, bint is_max) noexcept nogil:
    """One plane of a strided, dilated, padded max pool or window sum (times ``scale``, Ho x Wo)."""
    cdef Py_ssize_t oh, ow, kx, h0, ky0, ky1
    cdef float* o
    for oh in range(g.Ho):
        h0 = oh * g.sh - g.pt
        ky0 = 0 if h0 >= 0 else (-h0 + g.dh - 1) // g.dh
        ky1 = (g.H - 1 - h0) // g.dh + 1          # h0 < H always (output size rule)
        if ky1 > g.kh:
            ky1 = g.kh
        o = out + oh * g.out_row
        if ky1 <= ky0:                             # only reachable for windows inside the padding
            for ow in range(g.Wo):
                o[ow] = -INFINITY if is_max else 0.0
            continue
        reduce_rows(row_buf, x + (h0 + ky0 * g.dh) * g.x_row, ky1 - ky0, g.dh * g.x_row, g.W, is_max)
        for ow in range(g.ow_lo):
            o[ow] = reduce_clipped_taps(row_buf, ow * g.sw - g.pl, g.kw, g.dw, g.W, is_max)
        for ow in range(g.ow_hi, g.Wo):
            o[ow] = reduce_clipped_taps(row_buf, ow * g.sw - g.pl, g.kw, g.dw, g.W, is_max)
        for ow in range(g.ow_lo, g.ow_hi):
            o[ow] = -INFINITY if is_max else 0.0
        for kx in range(g.kw):
            accumulate_taps(o, row_buf, g.ow_lo, g.ow_hi, g.sw, kx * g.dw - g.pl, is_max)
        if scale != NULL:
            for ow in range(g.Wo):
                o[ow] = o[ow] * scale[oh * g.Wo + ow]


cdef Py_ssize_t floor_div(Py_ssize_t a, Py_ssize_t b) noexcept:
    return a // b if a >= 0 else -((-a + b - 1) // b)


cdef check_unit_columns(const float[:, :, :, :] x, float[:, :, :, :] out):
    if x.strides[3] != sizeof(float) or out.strides[3] != sizeof(float):
        raise ValueError("pooling kernels need rows with contiguous columns")


def window_pool(const float[:, :, :, :] x, float[:, :, :, :] out, tuple kernel, tuple stride,
                Py_ssize_t pad_top, Py_ssize_t pad_left, tuple dilation, scale, bint is_max, int nthreads):
    """Max pool (``is_max``) or window sum times ``scale`` (float32 Ho x Wo) of every plane into ``out``.

    ``x`` and ``out`` may be channel slices of larger arrays (only their rows must be contiguous)."""
    cdef Window2d g
    cdef const float[:, ::1] scale_view
    cdef const float* scale_ptr = NULL
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], p, n, c
    check_unit_columns(x, out)
    g.H, g.W, g.Ho, g.Wo = x.shape[2], x.shape[3], out.shape[2], out.shape[3]
    g.kh, g.kw = kernel
    g.sh, g.sw = stride
    g.dh, g.dw = dilation
    g.pt, g.pl = pad_top, pad_left
    g.x_row, g.out_row = x.strides[2] // sizeof(float), out.strides[2] // sizeof(float)
    g.ow_lo = min((g.pl + g.sw - 1) // g.sw, g.Wo)
    g.ow_hi = min(max(floor_div(g.W - 1 + g.pl - (g.kw - 1) * g.dw, g.sw) + 1, g.ow_lo), g.Wo)
    if scale is not None:
        scale_view = scale
        scale_ptr = &scale_view[0, 0]
    row_bufs = np.empty((max(nthreads, 1), g.W), dtype=np.float32)
    cdef float[:, ::1] bufs = row_bufs
    for p in prange(N * C, nogil=True, num_threads=nthreads, schedule="static"):
        n = p // C
        c = p % C
        window_pool_plane(&x[n, c, 0, 0], &out[n, c, 0, 0], &g, &bufs[threadid(), 0], scale_ptr, is_max)


cdef multiversion_void bin_pool_plane(const float* x, Py_ssize_t x_row, float* out, Py_ssize_t out_row,
                                      const Py_ssize_t* hbins, Py_ssize_t Ho, const Py_ssize_t* wbins,
                                      Py_ssize_t Wo, float* row_buf, bint is_max, bint average) noexcept nogil:
    """One plane of a pool over explicit bins: output (i, j) reduces input rows
    [hbins[2i], hbins[2i+1]) x columns [wbins[2j], wbins[2j+1]).  Empty bins give 0."""
    cdef Py_ssize_t oh, ow, w, hs, he, ws, we, wmin = wbins[0], wmax = wbins[1]
    cdef float acc
    cdef float* o
    for ow in range(1, Wo):
        wmin = min(wmin, wbins[2 * ow])
        wmax = max(wmax, wbins[2 * ow + 1])
    for oh in range(Ho):
        hs, he = hbins[2 * oh], hbins[2 * oh + 1]
        o = out + oh * out_row
        if he <= hs or wmax <= wmin:
            for ow in range(Wo):
                o[ow] = 0.0
            continue
        reduce_rows(row_buf, x + hs * x_row + wmin, he - hs, x_row, wmax - wmin, is_max)
        for ow in range(Wo):
            ws, we = wbins[2 * ow] - wmin, wbins[2 * ow + 1] - wmin
            if we <= ws:
                o[ow] = 0.0
                continue
            acc = -INFINITY if is_max else 0.0
            for w in range(ws, we):
                acc = max_nan(acc, row_buf[w]) if is_max else acc + row_buf[w]
            if average:
                acc = acc / <float>((he - hs) * (we - ws))
            o[ow] = acc


def bin_pool(const float[:, :, :, :] x, float[:, :, :, :] out, const Py_ssize_t[::1] image_of,
             const Py_ssize_t[:, :, ::1] hbins, const Py_ssize_t[:, :, ::1] wbins,
             bint is_max, bint average, int nthreads):
    """Pool every plane of ``out`` (R, C, Ho, Wo) over bins of input image ``image_of[r]``.

    ``hbins`` (B, Ho, 2) and ``wbins`` (B, Wo, 2) hold [start, end) per output row and column;
    B is 1 (the same bins for every r: adaptive, global, SPP) or R (per box: RoI pooling).
    ``out`` may be a strided view (SPP levels); only its rows must be contiguous."""
    cdef Py_ssize_t R = out.shape[0], C = out.shape[1], Ho = out.shape[2], Wo = out.shape[3]
    cdef Py_ssize_t x_row = x.strides[2] // sizeof(float), out_row = out.strides[2] // sizeof(float)
    cdef Py_ssize_t per_box = hbins.shape[0] > 1, p, r, c, b
    check_unit_columns(x, out)
    row_bufs = np.empty((max(nthreads, 1), x.shape[3]), dtype=np.float32)
    cdef float[:, ::1] bufs = row_bufs
    for p in prange(R * C, nogil=True, num_threads=nthreads, schedule="static"):
        r = p // C
        c = p % C
        b = r * per_box
        bin_pool_plane(&x[image_of[r], c, 0, 0], x_row, &out[r, c, 0, 0], out_row, &hbins[b, 0, 0], Ho,
                       &wbins[b, 0, 0], Wo, &bufs[threadid(), 0], is_max, average)


cdef multiversion_void power_row(const float* x, float* y, Py_ssize_t n, float p, bint signed_power) noexcept nogil:
    cdef Py_ssize_t i
    if p == 2.0:
        for i in range(n):
            y[i] = x[i] * x[i]
    elif p == 1.0:
        for i in range(n):
            y[i] = x[i] if signed_power else fabsf(x[i])
    else:
        for i in range(n):
            y[i] = powf(x[i], p) if signed_power else powf(fabsf(x[i]), p)


def lp_power(const float[:, ::1] x, float[:, ::1] y, float p, bint signed_power, int nthreads):
    """y = |x|^p (ONNX LpPool) or x^p (PyTorch LPPool2d: NaN for negative x and non-integer p), row by row."""
    cdef Py_ssize_t i
    for i in prange(x.shape[0], nogil=True, num_threads=nthreads, schedule="static"):
        power_row(&x[i, 0], &y[i, 0], x.shape[1], p, signed_power)


def lp_root(float[:, ::1] y, float p, int nthreads):
    """y = y^(1/p) in place (a negative y gives NaN unless p == 1, as powf does)."""
    cdef Py_ssize_t i, j, n = y.shape[1]
    cdef float inv_p = 1.0 / p
    if p == 1.0:
        return
    for i in prange(y.shape[0], nogil=True, num_threads=nthreads, schedule="static"):
        for j in range(n):
            y[i, j] = sqrtf(y[i, j]) if p == 2.0 else powf(y[i, j], inv_p)


cdef void roi_align_plane(const float* x, Py_ssize_t x_row, float* out, Py_ssize_t PH, Py_ssize_t PW,
                          const Py_ssize_t* ytap_ptr, const Py_ssize_t* ytap_row, const float* ytap_w,
                          const Py_ssize_t* xtap_ptr, const Py_ssize_t* xtap_col, const float* xtap_w,
                          float inv_count) noexcept nogil:
    """out[ph, pw] = inv_count * sum over row taps t of ph and column taps u of pw of w_t w_u x[row_t, col_u]."""
    cdef Py_ssize_t ph, pw, t, u
    cdef float acc, row_sum
    cdef const float* row
    for ph in range(PH):
        for pw in range(PW):
            acc = 0.0
            for t in range(ytap_ptr[ph], ytap_ptr[ph + 1]):
                row = x + ytap_row[t] * x_row
                row_sum = 0.0
                for u in range(xtap_ptr[pw], xtap_ptr[pw + 1]):
                    row_sum = row_sum + xtap_w[u] * row[xtap_col[u]]
                acc = acc + ytap_w[t] * row_sum
            out[ph * PW + pw] = acc * inv_count


def roi_align_taps(const float[:, :, :, ::1] x, float[:, :, :, ::1] out, const Py_ssize_t[::1] image_of,
                   const Py_ssize_t[:, ::1] ytap_ptr, const Py_ssize_t[::1] ytap_row, const float[::1] ytap_w,
                   const Py_ssize_t[:, ::1] xtap_ptr, const Py_ssize_t[::1] xtap_col, const float[::1] xtap_w,
                   const float[::1] inv_count, int nthreads):
    """RoI Align as separable bilinear taps: box r's output row ph averages the rows
    ``ytap_row[ytap_ptr[r, ph]:ytap_ptr[r, ph + 1]]`` with weights ``ytap_w`` (likewise columns)."""
    cdef Py_ssize_t R = out.shape[0], C = out.shape[1], p, r, c
    cdef Py_ssize_t x_row = x.strides[2] // sizeof(float)
    if ytap_row.shape[0] == 0 or xtap_col.shape[0] == 0:   # every box empty: all zeros
        np.asarray(out)[...] = 0.0
        return
    for p in prange(R * C, nogil=True, num_threads=nthreads, schedule="static"):
        r = p // C
        c = p % C
        roi_align_plane(&x[image_of[r], c, 0, 0], x_row, &out[r, c, 0, 0], out.shape[2], out.shape[3],
                        &ytap_ptr[r, 0], &ytap_row[0], &ytap_w[0], &xtap_ptr[r, 0], &xtap_col[0], &xtap_w[0],
                        inv_count[r])
