# Pooling kernels (hot loops only; argument checking, output sizes, divisors and
# bin/tap tables are computed in pyconv/ops/pool.py).
#
# Every kernel works plane by plane (one (n, c) image channel), OpenMP over the
# planes.  Windows are separable, so a window reduction is done in two passes:
# the window's input rows are reduced into a one-row scratch buffer (unit-stride
# loop over the columns), then each output column reduces its taps of that row.
# Small planes run both passes over several whole planes at once (window_pool_flat_planes),
# or, 16 planes at a time, with the planes as the lanes of a vector (window_pool_lanes).
# Padding is never materialised: window bounds are clipped to the input.
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, NAN, fabsf, powf, sqrtf
from libc.stdlib cimport calloc, free, malloc

import numpy as np

cimport numpy as cnp

cnp.import_array()   # the NumPy C API behind ndarrays.pxd

FLAT_PLANE_MAX = FLAT_CHUNK_MAX   # largest plane (floats) the flat window scheme takes

from pyconv._core.blas cimport gemm_rowmajor
from pyconv._core.channel_rows cimport gather_channel_rows, scatter_channel_rows
from pyconv._core.ndarrays cimport check_array, check_float_rows, data_of
from pyconv._core.parallel cimport thread_stride
from pyconv._core.simd cimport inlined_void, multiversion_void, prefetch, wide_vectors


# Floats in the widest vector (AVX-512); loops over scratch rows are rounded up to it.
cdef enum:
    VECTOR_SLACK = 16
    FLAT_CHUNK_MAX = 4096   # floats (16 KiB) of small planes pooled together by the flat scheme
    LANES = 16              # planes per block of window_pool_lanes (one AVX-512 vector)
    # Largest plane (pixels) window_pool_lanes takes whatever the windows: its transposed
    # block stays in L1.  Larger small planes take it only when some windows are clipped
    # by the padding (or the ceil-mode overhang), which the flat scheme reduces one by one.
    # Warm, 1 thread, lanes / flat: 3x3 s2 on 13x13 0.77-0.81, on 27x27 (no window
    # clipped) 1.15-1.18, on 28x28 ceil mode 0.48-0.50.
    LANES_PLANE_MAX = 400
    PREFETCH_ROWS_AHEAD = 2   # output rows whose input rows window_pool_plane prefetches ahead


cdef extern from "lanes.h" nogil:
    enum:
        PYCONV_LANES_SUM
        PYCONV_LANES_MAX
        PYCONV_LANES_MAX_NAN
    void pyconv_reduce_rows_to_lanes(const float* src, Py_ssize_t plane_stride, Py_ssize_t W, Py_ssize_t taps,
                                     Py_ssize_t tap_step, int op, float* dst)
    void pyconv_pool_lanes(const float* lanes, Py_ssize_t W, const Py_ssize_t* rows, Py_ssize_t Ho, Py_ssize_t dh,
                           const Py_ssize_t* cols, Py_ssize_t Wo, Py_ssize_t dw, int op, const float* scale,
                           float* result)


cdef struct Window2d:
    Py_ssize_t H, W, Ho, Wo          # input and output plane sizes
    Py_ssize_t kh, kw, sh, sw        # kernel, stride
    Py_ssize_t pt, pl, dh, dw        # top/left padding, dilation
    Py_ssize_t ow_lo, ow_hi          # output columns whose taps all lie inside the input
    Py_ssize_t x_row, out_row        # row strides (floats)
    Py_ssize_t phase_len             # ceil(W / sw): length of one stride phase of a row


# What a kernel reduces: sums, or maxima.  Max kernels first check their input for
# NaN (one cheap pass); NaN-free input takes plain maxps loops, the rest the
# NaN-propagating ones, whose unordered compares cost ~25 % of a 3x3 pool.
cdef enum:
    OP_SUM = 0
    OP_MAX = 1          # input known to be NaN-free
    OP_MAX_NAN = 2      # NaN propagates (PyTorch)


cdef inline float max_plain(float a, float b) noexcept nogil:
    return a if a > b else b   # maxps


cdef inline float max_nan(float a, float b) noexcept nogil:
    # max(a, b), NaN if either is NaN (PyTorch propagates NaN).  ``a > b ? a : b`` is
    # exactly maxss/maxps (b when unordered, so a NaN b wins); the second select only
    # keeps a NaN a.  In scalar code that select is a branch that is always predicted
    # (NaN is rare), unlike a compare of the data itself.
    cdef float m = a if a > b else b
    return m if a == a else a


cdef inline float max3_nan(float a, float b, float c) noexcept nogil:
    # max of three, NaN if any is NaN: two maxps and one unordered test (nesting max_nan
    # vectorizes to a chain of ~18 mask operations).
    cdef float m = a if a > b else b
    m = m if m > c else c
    return m if (a == a) & (b == b) & (c == c) else NAN


cdef multiversion_void find_nan(const float* x, Py_ssize_t n, int* found) noexcept nogil:
    """found[0] = whether x[0 .. n) holds a NaN (one branch-free vectorized loop;
    multi-versioned, as a baseline SSE2 copy would cost a third of a small max pool)."""
    cdef Py_ssize_t i
    cdef int nan = 0
    for i in range(n):
        nan = nan | (x[i] != x[i])
    found[0] = nan


cdef inline int max_op_for(int op, const float* x, Py_ssize_t n) noexcept nogil:
    """``op`` for a task reading x[0 .. n): OP_MAX_NAN becomes OP_MAX when they hold no NaN.

    Worth it where the data sits in L1/L2 (small planes pooled in chunks); large planes
    are bound by memory traffic, where the NaN compares are free and a scan is not."""
    cdef int found = 0
    if op == OP_MAX_NAN:
        find_nan(x, n, &found)
        if not found:
            return OP_MAX
    return op


cdef struct ScalarMax:
    # Running maximum for scalar reductions: the max compiles to maxss and NaN is
    # tracked off the dependency chain (max_nan's NaN select would lengthen it).
    float value
    bint nan


cdef inline void scalar_max_add(ScalarMax* m, float v) noexcept nogil:
    m.value = m.value if m.value > v else v
    m.nan = m.nan | (v != v)


cdef inline float scalar_max_result(ScalarMax* m) noexcept nogil:
    return m.value if not m.nan else NAN


cdef inline void combine_rows(float* dst, const float* a, const float* b, Py_ssize_t n, int op) noexcept nogil:
    """dst[i] = max(a[i], b[i]) or a[i] + b[i] (dst must not overlap a or b)."""
    cdef Py_ssize_t i
    if op == OP_SUM:
        for i in range(n):
            dst[i] = a[i] + b[i]
    elif op == OP_MAX:
        for i in range(n):
            dst[i] = max_plain(a[i], b[i])
    else:
        for i in range(n):
            dst[i] = max_nan(a[i], b[i])


cdef inline void accumulate_row(float* acc, const float* b, Py_ssize_t n, int op) noexcept nogil:
    """acc[i] = max(acc[i], b[i]) or acc[i] + b[i].

    (In place through one pointer: with a separate destination argument equal to a
    source, GCC's overlap check fails at run time and the scalar loop runs.)
    Callers round n up to whole vectors where they can: a scalar tail's
    data-dependent compares mispredict and cost more than the vector body."""
    cdef Py_ssize_t i
    if op == OP_SUM:
        for i in range(n):
            acc[i] = acc[i] + b[i]
    elif op == OP_MAX:
        for i in range(n):
            acc[i] = max_plain(acc[i], b[i])
    else:
        for i in range(n):
            acc[i] = max_nan(acc[i], b[i])


cdef inline void gather_taps(float* acc, const float* src, Py_ssize_t n, Py_ssize_t stride, bint first,
                             int op) noexcept nogil:
    """acc[i] = src[i * stride] (first tap) or acc[i] (op)= src[i * stride]; stride 1 or 2."""
    cdef Py_ssize_t i
    if stride == 1:
        if first:
            for i in range(n):
                acc[i] = src[i]
        else:
            accumulate_row(acc, src, n, op)
    elif first:
        for i in range(n):
            acc[i] = src[2 * i]
    elif op == OP_SUM:
        for i in range(n):
            acc[i] = acc[i] + src[2 * i]
    elif op == OP_MAX:
        for i in range(n):
            acc[i] = max_plain(acc[i], src[2 * i])
    else:
        for i in range(n):
            acc[i] = max_nan(acc[i], src[2 * i])


cdef inline void three_taps_stride2(float* o, const float* r, Py_ssize_t n, int op) noexcept nogil:
    """o[i] = sum (OP_SUM) or max (OP_MAX: no NaN) of r[2i], r[2i + 1], r[2i + 2]."""
    cdef Py_ssize_t i
    if op == OP_SUM:
        for i in range(n):
            o[i] = r[2 * i] + r[2 * i + 1] + r[2 * i + 2]
    else:
        for i in range(n):
            o[i] = max_plain(max_plain(r[2 * i], r[2 * i + 1]), r[2 * i + 2])


cdef inline void combine_three(float* dst, const float* a, Py_ssize_t step, Py_ssize_t n,
                               int op) noexcept nogil:
    """dst[i] = max or sum of a[i], a[i + step], a[i + 2 * step]."""
    cdef Py_ssize_t i
    if op == OP_SUM:
        for i in range(n):
            dst[i] = a[i] + a[i + step] + a[i + 2 * step]
    elif op == OP_MAX:
        for i in range(n):
            dst[i] = max_plain(max_plain(a[i], a[i + step]), a[i + 2 * step])
    else:
        for i in range(n):
            dst[i] = max3_nan(a[i], a[i + step], a[i + 2 * step])


cdef inline void accumulate_two(float* acc, const float* a, Py_ssize_t step, Py_ssize_t n,
                                int op) noexcept nogil:
    """acc[i] (op)= a[i] (op) a[i + step]."""
    cdef Py_ssize_t i
    if op == OP_SUM:
        for i in range(n):
            acc[i] = acc[i] + (a[i] + a[i + step])
    elif op == OP_MAX:
        for i in range(n):
            acc[i] = max_plain(acc[i], max_plain(a[i], a[i + step]))
    else:
        for i in range(n):
            acc[i] = max3_nan(acc[i], a[i], a[i + step])


cdef multiversion_void reduce_rows(float* dst, const float* src, Py_ssize_t nrows, Py_ssize_t row_step,
                                   Py_ssize_t width, int op) noexcept nogil:
    """dst[w] = max or sum over r < nrows of src[r * row_step + w] (nrows >= 1).

    Up to three rows per pass over dst: one load/store pass per row would be bound by
    the load and store ports rather than the arithmetic.  Multi-versioned: it is too big
    for GCC to inline, and a plain out-of-line copy gets only SSE2 (4x slower for max)."""
    cdef Py_ssize_t r, w
    if nrows == 1:
        for w in range(width):
            dst[w] = src[w]
        return
    if nrows == 2:
        combine_rows(dst, src, src + row_step, width, op)
        return
    combine_three(dst, src, row_step, width, op)
    r = 3
    while r + 1 < nrows:
        accumulate_two(dst, src + r * row_step, row_step, width, op)
        r += 2
    if r < nrows:
        accumulate_row(dst, src + r * row_step, width, op)


cdef inline void split_phases(float* phases, const float* row, Py_ssize_t width, Py_ssize_t stride,
                              Py_ssize_t phase_len) noexcept nogil:
    """phases[r * phase_len + j] = row[j * stride + r]: afterwards every tap of a strided
    window is a unit-stride run of one phase."""
    cdef Py_ssize_t r, j
    for r in range(stride):
        for j in range((width - r + stride - 1) // stride):
            phases[r * phase_len + j] = row[j * stride + r]


cdef inline float reduce_taps(const float* t, Py_ssize_t taps, Py_ssize_t step, int op) noexcept nogil:
    """max or sum of t[k * step] for k < taps (all inside the row)."""
    cdef Py_ssize_t k
    cdef ScalarMax m
    cdef float total
    if op:
        m = ScalarMax(t[0], t[0] != t[0])
        for k in range(1, taps):
            scalar_max_add(&m, t[k * step])
        return scalar_max_result(&m)
    total = t[0]
    for k in range(1, taps):
        total = total + t[k * step]
    return total


cdef inline float reduce_clipped_taps(const float* t, Py_ssize_t start, Py_ssize_t taps, Py_ssize_t step,
                                      Py_ssize_t size, int op) noexcept nogil:
    """max or sum of t[start + k * step] over the k < taps that fall in [0, size) (-inf / 0 if none)."""
    cdef Py_ssize_t k, i
    cdef ScalarMax m = ScalarMax(-INFINITY, False)
    cdef float total = 0.0
    for k in range(taps):
        i = start + k * step
        if 0 <= i < size:
            if op:
                scalar_max_add(&m, t[i])
            else:
                total = total + t[i]
    return scalar_max_result(&m) if op else total


cdef inline Py_ssize_t floor_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a // b if a >= 0 else -((-a + b - 1) // b)


cdef multiversion_void window_pool_plane(const float* x, float* out, const Window2d* g, float* row_buf,
                                         const float* scale, int op) noexcept nogil:
    """One plane of a strided, dilated, padded max pool or window sum (times ``scale``, Ho x Wo).

    ``row_buf`` holds the reduced row (W), its stride phases (sw * phase_len, used for
    strides > 2), slack, and the accumulator of the interior columns.  The interior runs
    over whole vectors (n_vec >= n: no scalar tails; the extra lanes read scratch and are
    never copied out).  Rows narrower than a vector take the scalar path instead."""
    cdef Py_ssize_t oh, ow, kx, h0, ky0, ky1, tap, n = g.ow_hi - g.ow_lo
    cdef int tap_op
    cdef Py_ssize_t n_vec = (n + VECTOR_SLACK - 1) // VECTOR_SLACK * VECTOR_SLACK
    cdef float* o
    cdef const float* phases = row_buf if g.sw == 1 else row_buf + g.W
    cdef float* acc = row_buf + g.W + g.sw * g.phase_len + VECTOR_SLACK
    cdef const float* run
    cdef const float* ahead
    cdef bint three_wide = g.sw == 2 and g.kw == 3 and g.dw == 1
    for oh in range(g.Ho):
        h0 = oh * g.sh - g.pt
        # the rows that PREFETCH_ROWS_AHEAD output rows on adds to its window (planes larger
        # than L2 stream from memory; past the plane, the next plane's first rows: harmless)
        ahead = x + (h0 + (PREFETCH_ROWS_AHEAD * g.sh + (g.kh - 1) * g.dh - min(g.sh, g.kh) + 1)) * g.x_row
        for tap in range(0, min(g.sh, g.kh) * g.x_row, 16):
            prefetch(ahead + tap)
        if g.dh == 1:                              # no divisions (they are slow) in the common case
            ky0 = 0 if h0 >= 0 else -h0
            ky1 = g.H - h0
        else:
            ky0 = 0 if h0 >= 0 else (-h0 + g.dh - 1) // g.dh
            ky1 = (g.H - 1 - h0) // g.dh + 1      # h0 < H always (output size rule)
        if ky1 > g.kh:
            ky1 = g.kh
        o = out + oh * g.out_row
        if ky1 <= ky0:                             # dilated taps all in the padding
            for ow in range(g.Wo):
                o[ow] = -INFINITY if op else 0.0
            continue
        reduce_rows(row_buf, x + (h0 + ky0 * g.dh) * g.x_row, ky1 - ky0, g.dh * g.x_row, g.W, op)
        # stride 2: GCC leaves the NaN-propagating stride-2 tap loop scalar, so a reduced
        # row without NaN (it holds one wherever its window rows do) takes plain maxps;
        # the scan is one pass over a row in L1 (4-10 % of a 3x3 s2 pool; at other
        # strides the taps are vectorized either way and the scan would only cost)
        tap_op = max_op_for(op, row_buf, g.W) if g.sw == 2 else op
        for ow in range(g.ow_lo):
            o[ow] = reduce_clipped_taps(row_buf, ow * g.sw - g.pl, g.kw, g.dw, g.W, tap_op)
        for ow in range(g.ow_hi, g.Wo):
            o[ow] = reduce_clipped_taps(row_buf, ow * g.sw - g.pl, g.kw, g.dw, g.W, tap_op)
        if n < VECTOR_SLACK:
            # narrow rows: scalar taps straight from the reduced row (whole-vector runs
            # would mostly compute padding)
            for ow in range(g.ow_lo, g.ow_hi):
                o[ow] = reduce_taps(row_buf + ow * g.sw - g.pl, g.kw, g.dw, tap_op)
        elif three_wide and tap_op != OP_MAX_NAN:
            # the common 3-wide stride-2 window (ResNet's, SqueezeNet's max pools) in one
            # pass straight into the output, not a pass per tap over acc and a copy:
            # 20-33 % faster on their planes (measured)
            three_taps_stride2(o + g.ow_lo, row_buf + 2 * g.ow_lo - g.pl, n, tap_op)
        else:
            if g.sw > 2:
                split_phases(row_buf + g.W, row_buf, g.W, g.sw, g.phase_len)
            for kx in range(g.kw):
                tap = kx * g.dw - g.pl
                if g.sw <= 2:   # unit or stride-2 loads straight from the reduced row
                    gather_taps(acc, row_buf + g.ow_lo * g.sw + tap, n_vec, g.sw, kx == 0, tap_op)
                else:           # input column ow * sw + tap = (ow + tap // sw) * sw + tap % sw
                    run = phases + (tap - floor_div(tap, g.sw) * g.sw) * g.phase_len + g.ow_lo + floor_div(tap, g.sw)
                    gather_taps(acc, run, n_vec, 1, kx == 0, tap_op)
            for ow in range(n):
                o[g.ow_lo + ow] = acc[ow]
        if scale != NULL:
            for ow in range(g.Wo):
                o[ow] = o[ow] * scale[oh * g.Wo + ow]


cdef inline void reduce_pairs(float* dst, const float* src, Py_ssize_t n, int op) noexcept nogil:
    """dst[i] = max_nan or sum of src[2i], src[2i + 1]."""
    cdef Py_ssize_t i
    if op == OP_SUM:
        for i in range(n):
            dst[i] = src[2 * i] + src[2 * i + 1]
    elif op == OP_MAX:
        for i in range(n):
            dst[i] = max_plain(src[2 * i], src[2 * i + 1])
    else:
        for i in range(n):
            dst[i] = max_nan(src[2 * i], src[2 * i + 1])


cdef multiversion_void pool_2x2_plane(const float* x, float* out, const Window2d* g, float* pairs,
                                      const float* scale, int op) noexcept nogil:
    """One plane of a 2x2 stride-2 pool with every window inside (W even, x and out
    contiguous planes): column pairs of the whole plane in one long loop, then pairs of
    those rows, then the scale; no per-row tap bookkeeping (which dominates window_pool_plane
    on rows this short)."""
    cdef Py_ssize_t oh, ow
    cdef const float* top
    cdef const float* bottom
    cdef const float* sc
    cdef float* o
    reduce_pairs(pairs, x, g.H * g.Wo, op)
    for oh in range(g.Ho):
        top = pairs + 2 * oh * g.Wo
        bottom = top + g.Wo
        o = out + oh * g.Wo
        if scale == NULL:
            combine_rows(o, top, bottom, g.Wo, op)
        else:   # average: scaled while the sum is in a register
            sc = scale + oh * g.Wo
            for ow in range(g.Wo):
                o[ow] = (top[ow] + bottom[ow]) * sc[ow]


cdef inline float reduce_clipped_window(const float* x, const Window2d* g, Py_ssize_t h0,
                                        Py_ssize_t w0, int op) noexcept nogil:
    """max or sum of the window starting at (h0, w0), read straight from the plane, taps
    outside the input skipped (-inf / 0 when none is inside)."""
    cdef Py_ssize_t ky, kx, h, w
    cdef ScalarMax m = ScalarMax(-INFINITY, False)
    cdef float total = 0.0
    for ky in range(g.kh):
        h = h0 + ky * g.dh
        if h < 0 or h >= g.H:
            continue
        for kx in range(g.kw):
            w = w0 + kx * g.dw
            if 0 <= w < g.W:
                if op:
                    scalar_max_add(&m, x[h * g.x_row + w])
                else:
                    total = total + x[h * g.x_row + w]
    return scalar_max_result(&m) if op else total


cdef inline float scaled(float v, const float* scale_row, Py_ssize_t i) noexcept nogil:
    return v * scale_row[i] if scale_row != NULL else v


cdef multiversion_void window_pool_flat_planes(const float* x, Py_ssize_t planes, float* out,
                                               Py_ssize_t out_plane, const Window2d* g, const int* corner,
                                               float* buf, const float* scale, int op) noexcept nogil:
    """``planes`` consecutive small planes (x contiguous over them) of the same pool as
    window_pool_plane; output plane p (Ho x Wo contiguous) at ``out + p * out_plane``.

    Both passes run over the planes as one flat row, so every loop is long and
    vectorized and there is no per-row or per-plane loop setup: hsum[i] reduces
    x[i + kx*dw] over kx, vsum[i] reduces hsum[i + ky*dh*W] over ky; output j = (oh, ow)
    with a window inside its plane is then vsum at its window's top-left cell, the
    plane offset ``corner[j]`` (one gather loop per plane).
    Positions whose window wraps past a row or plane end are computed and never read.
    Windows clipped by the padding are then reduced directly from the input."""
    cdef Py_ssize_t HW = g.H * g.W, total = planes * HW, n_h = total - (g.kw - 1) * g.dw
    cdef Py_ssize_t n_v = total - (g.kh - 1) * g.dh * g.W, HoWo = g.Ho * g.Wo
    cdef Py_ssize_t n_vvec = (n_v + VECTOR_SLACK - 1) // VECTOR_SLACK * VECTOR_SLACK
    cdef Py_ssize_t p, j, oh, ow, h0, lo, hi
    # vsum below hsum: GCC's run-time overlap check of vsum against its shifted reads of
    # hsum then always passes (with vsum above, the check failed and ran the scalar loop)
    cdef float* vsum = buf                           # n_vvec floats
    cdef float* hsum = buf + total + VECTOR_SLACK    # total + VECTOR_SLACK floats
    cdef const float* xp
    cdef const float* src
    cdef const float* sc
    cdef float* o
    cdef bint inside = g.H - (g.kh - 1) * g.dh > 0 and n_h > 0
    if inside:
        reduce_rows(hsum, x, g.kw, g.dw, n_h, op)                  # reads the input: exact length
        reduce_rows(vsum, hsum, g.kh, g.dh * g.W, n_vvec, op)      # scratch only: whole vectors
        for p in range(planes):
            src = vsum + p * HW
            o = out + p * out_plane
            if scale != NULL:
                for j in range(HoWo):
                    o[j] = src[corner[j]] * scale[j]
            else:
                for j in range(HoWo):
                    o[j] = src[corner[j]]
    for oh in range(g.Ho):
        h0 = oh * g.sh - g.pt
        sc = scale + oh * g.Wo if scale != NULL else NULL
        if inside and h0 >= 0 and h0 + (g.kh - 1) * g.dh < g.H:
            lo, hi = g.ow_lo, g.ow_hi        # the padding-clipped columns remain
        else:
            lo, hi = g.Wo, g.Wo              # the whole row is clipped
        if lo == 0 and hi == g.Wo:
            continue
        for p in range(planes):
            xp = x + p * HW
            o = out + p * out_plane + oh * g.Wo
            for ow in range(g.Wo):
                if ow < lo or ow >= hi:
                    o[ow] = scaled(reduce_clipped_window(xp, g, h0, ow * g.sw - g.pl, op), sc, ow)


cdef inline Py_ssize_t first_tap(Py_ssize_t start, Py_ssize_t step) noexcept nogil:
    """The first of start, start + step, ... that is >= 0 (a window clipped by the padding)."""
    return start if start >= 0 else start + (-start + step - 1) // step * step


cdef inline bint rows_inside(const Window2d* g) noexcept nogil:
    """Whether every window's rows lie inside the plane (no padding clips them)."""
    return g.pt == 0 and (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh < g.H


cdef inline Py_ssize_t lanes_floats(const Window2d* g) noexcept nogil:
    """Scratch of window_pool_lanes: the lanes (plus a transpose's overhang) and the results."""
    return (g.H * g.W + 16) * LANES + g.Ho * g.Wo * LANES


cdef inline bint rows_first(const Window2d* g) noexcept nogil:
    """Whether window_pool_lanes reduces the windows' rows on the way to the lanes."""
    return g.kh > 1 and g.W >= 8 and rows_inside(g)


cdef inline inlined_void pool_lanes_block(const float* x, const Window2d* g, const Py_ssize_t* bounds,
                                          float* lanes, const float* scale, float* result,
                                          int lanes_op) noexcept nogil:
    """window_pool_lanes's work up to the results, for one lanes.h op (a constant once inlined)."""
    cdef Py_ssize_t HW = g.H * g.W, oh
    cdef const Py_ssize_t* row_bounds = bounds
    if rows_first(g):
        for oh in range(g.Ho):
            pyconv_reduce_rows_to_lanes(x + oh * g.sh * g.W, HW, g.W, g.kh, g.dh * g.W, lanes_op,
                                        lanes + oh * g.W * LANES)
        row_bounds = bounds + 2 * (g.Ho + g.Wo)   # window oh reads lane row oh
    else:
        scatter_channel_rows(x, HW, lanes, LANES, HW, LANES)
    pyconv_pool_lanes(lanes, g.W, row_bounds, g.Ho, g.dh, bounds + 2 * g.Ho, g.Wo, g.dw, lanes_op, scale, result)


cdef multiversion_void window_pool_lanes(const float* x, float* out, Py_ssize_t out_plane,
                                         const Window2d* g, const Py_ssize_t* bounds, float* buf,
                                         const float* scale, int op) noexcept nogil:
    """LANES consecutive small planes (x contiguous over them) of the same pool as
    window_pool_plane, with the planes as the lanes of a vector: transposed to
    pixel-major, every tap of every window is one vector operation (lanes.h), whatever
    the window's size, stride or position; the Ho*Wo x LANES results are transposed back
    to the output planes.  ``bounds``: window_bounds; ``buf``: lanes_floats(g) floats.
    Needs H*W >= 16 and Ho*Wo >= 16.

    When no window's rows are clipped (and rows are at least 8 wide), each row of
    windows has its rows reduced as they are loaded for the transpose
    (pyconv_reduce_rows_to_lanes), so only Ho lane rows are made and each window then
    reduces one of them: at 13x13, 3x3 stride 2, 6 transposes instead of 11, 3 taps per
    output instead of 9, and no pass over a scratch copy of the planes (which cost
    half the kernel).  At 13x13 the flat scheme alone spent most of its time on the
    windows' scattered corners (one scalar gather per output) and on sums of unused
    positions."""
    cdef float* lanes = buf
    cdef float* result = buf + (g.H * g.W + 16) * LANES
    if op == OP_SUM:
        pool_lanes_block(x, g, bounds, lanes, scale, result, PYCONV_LANES_SUM)
    elif op == OP_MAX:
        pool_lanes_block(x, g, bounds, lanes, NULL, result, PYCONV_LANES_MAX)
    else:
        pool_lanes_block(x, g, bounds, lanes, NULL, result, PYCONV_LANES_MAX_NAN)
    gather_channel_rows(result, LANES, out, out_plane, g.Ho * g.Wo, LANES)


cdef void window_bounds(const Window2d* g, Py_ssize_t* bounds) noexcept nogil:
    """First and end tap of each output row's window rows (2 * Ho), then of each output
    column's window columns (2 * Wo), clipped to the plane: the taps are
    first, first + dilation, ... < end.  Then (2 * Ho) the one lane row of each output
    row once its window rows are reduced (window_pool_lanes)."""
    cdef Py_ssize_t o, start
    for o in range(g.Ho):
        start = o * g.sh - g.pt
        bounds[2 * o] = first_tap(start, g.dh)
        bounds[2 * o + 1] = min(start + (g.kh - 1) * g.dh + 1, g.H)
    bounds += 2 * g.Ho
    for o in range(g.Wo):
        start = o * g.sw - g.pl
        bounds[2 * o] = first_tap(start, g.dw)
        bounds[2 * o + 1] = min(start + (g.kw - 1) * g.dw + 1, g.W)
    bounds += 2 * g.Wo
    for o in range(g.Ho):
        bounds[2 * o] = o
        bounds[2 * o + 1] = o + 1


cdef bint windows_clipped(const Window2d* g) noexcept nogil:
    """Whether some window reaches into the padding or past the plane."""
    return (g.ow_lo > 0 or g.ow_hi < g.Wo or g.pt > 0
            or (g.Ho - 1) * g.sh - g.pt + (g.kh - 1) * g.dh >= g.H)


cdef void window_corners(const Window2d* g, int* corners) noexcept nogil:
    """Plane offset of each output's window top-left cell (Ho * Wo); 0 for windows
    clipped by the padding (computed separately)."""
    cdef Py_ssize_t oh, ow, h0, w0
    cdef bint inside
    for oh in range(g.Ho):
        h0 = oh * g.sh - g.pt
        for ow in range(g.Wo):
            w0 = ow * g.sw - g.pl
            inside = h0 >= 0 and h0 + (g.kh - 1) * g.dh < g.H and w0 >= 0 and w0 + (g.kw - 1) * g.dw < g.W
            corners[oh * g.Wo + ow] = h0 * g.W + w0 if inside else 0


cdef check_unit_columns(const float[:, :, :, :] x, float[:, :, :, :] out):
    if x.strides[3] != sizeof(float) or out.strides[3] != sizeof(float):
        raise ValueError("pooling kernels need rows with contiguous columns")


cdef enum PlaneScheme:
    SCHEME_ROWS     # window_pool_plane: row by row
    SCHEME_PAIRS    # pool_2x2_plane: 2x2 stride 2, every window inside
    SCHEME_FLAT     # window_pool_flat_planes: chunks of small planes as one flat row
    SCHEME_LANES    # window_pool_lanes: blocks of LANES small planes (the flat scheme for the rest)


cdef void window_pool_task(const float* x, float* out, const Window2d* g, PlaneScheme scheme,
                           Py_ssize_t planes, Py_ssize_t out_plane, const int* corners,
                           const Py_ssize_t* bounds, float* buf, const float* scale, int op) noexcept nogil:
    """``planes`` consecutive planes of one image (one plane unless SCHEME_FLAT or SCHEME_LANES)."""
    if scheme == SCHEME_LANES and planes == LANES:
        window_pool_lanes(x, out, out_plane, g, bounds, buf, scale, max_op_for(op, x, planes * g.H * g.W))
    elif scheme == SCHEME_FLAT or scheme == SCHEME_LANES:
        window_pool_flat_planes(x, planes, out, out_plane, g, corners, buf, scale,
                                max_op_for(op, x, planes * g.H * g.W))
    elif scheme == SCHEME_PAIRS:
        pool_2x2_plane(x, out, g, buf, scale, op)
    else:
        window_pool_plane(x, out, g, buf, scale, op)


def lanes_pay() -> bool:
    """Whether window_pool_lanes runs with 512-bit vectors (AVX-512), one per lane
    vector.  Elsewhere GCC lowers its 16-float vectors through the stack: an AVX2 build
    pooled 256x13x13 5-10x slower than with the flat scheme."""
    return wide_vectors()


cdef class WindowPool:
    """A windowed pool's geometry (kernel, stride, top and left padding, dilation) bound
    once to H x W planes.  ``pool(x, out, scale, is_max, nthreads, lanes)``: max pool
    (``is_max``, NaN propagating) or window sum times ``scale`` (float32 Ho x Wo, or None)
    of every plane of ``x`` (float32 N x C x H x W) into ``out`` (N x C x Ho x Wo,
    allocated when None), which it returns; ``lanes``: small planes may take
    window_pool_lanes (where lanes_pay()).

    ``x`` and ``out`` may be channel slices of larger arrays (only their rows must be
    contiguous).  Both are checked and read through the NumPy C API (ndarrays.pxd): at
    13x13, Python-level checks of out and a call parsing the geometry's tuples cost a
    third of the pool once other work has left the interpreter's caches cold, and
    typed memoryviews ~1 us each (measured interleaved).  Scratch and tables live on
    the C heap: a NumPy allocation per call cost as much as pooling a tenth of the
    planes."""
    cdef Window2d g
    cdef readonly tuple out_hw
    cdef readonly Py_ssize_t taps

    def __init__(self, tuple in_hw, tuple out_hw, tuple kernel, tuple stride, Py_ssize_t pad_top,
                 Py_ssize_t pad_left, tuple dilation):
        self.g.H, self.g.W = in_hw
        self.g.Ho, self.g.Wo = out_hw
        self.g.kh, self.g.kw = kernel
        self.g.sh, self.g.sw = stride
        self.g.dh, self.g.dw = dilation
        self.g.pt, self.g.pl = pad_top, pad_left
        self.out_hw, self.taps = (self.g.Ho, self.g.Wo), self.g.kh * self.g.kw

    def __call__(self, x, out, scale, bint is_max, int nthreads, bint lanes):
        check_float_rows(x, "x", 4, False)
        if cnp.PyArray_DIM(x, 2) != self.g.H or cnp.PyArray_DIM(x, 3) != self.g.W:
            raise ValueError(f"x {x.shape} must have {self.g.H}x{self.g.W} planes")
        if out is None:
            out = cnp.PyArray_EMPTY(4, [cnp.PyArray_DIM(x, 0), cnp.PyArray_DIM(x, 1), self.g.Ho, self.g.Wo],
                                    cnp.NPY_FLOAT32, 0)
        else:
            check_float_rows(out, "out", 4, True)
            if cnp.PyArray_DIM(out, 2) != self.g.Ho or cnp.PyArray_DIM(out, 3) != self.g.Wo:
                raise ValueError(f"out {out.shape} must have the {self.g.Ho}x{self.g.Wo} planes of the pool's output")
        pool_windows(x, out, &self.g, scale, is_max, nthreads, lanes)
        return out


cdef int pool_windows(object x, object out, Window2d* gp, object scale, bint is_max, int nthreads,
                      bint lanes) except -1:
    """WindowPool's work, its window (kernel, stride, dilation, pads) in ``gp``, the
    rest of it worked out here from x and out (both checked already, but for out's images
    and channels)."""
    cdef int op = OP_MAX_NAN if is_max else OP_SUM
    cdef Window2d g = gp[0]
    cdef const float* scale_ptr = NULL
    cdef Py_ssize_t N = cnp.PyArray_DIM(x, 0), C = cnp.PyArray_DIM(x, 1), p, n, c
    if cnp.PyArray_DIM(out, 0) != N or cnp.PyArray_DIM(out, 1) != C:
        raise ValueError(f"out {out.shape} must have the images and channels of x {x.shape}")
    g.H, g.W, g.Ho, g.Wo = cnp.PyArray_DIM(x, 2), cnp.PyArray_DIM(x, 3), cnp.PyArray_DIM(out, 2), cnp.PyArray_DIM(out, 3)
    g.x_row, g.out_row = cnp.PyArray_STRIDE(x, 2) // sizeof(float), cnp.PyArray_STRIDE(out, 2) // sizeof(float)
    g.ow_lo = min((g.pl + g.sw - 1) // g.sw, g.Wo)
    g.ow_hi = min(max(floor_div(g.W - 1 + g.pl - (g.kw - 1) * g.dw, g.sw) + 1, g.ow_lo), g.Wo)
    if scale is not None:
        check_array(scale, "scale", (g.Ho, g.Wo))
        scale_ptr = data_of(scale)
    g.phase_len = (g.W + g.sw - 1) // g.sw
    if N == 0 or C == 0:
        return 0
    # Small planes whose interior rows are narrower than a vector: blocks of LANES
    # planes with the planes as vector lanes, when there are that many planes and the
    # planes fit LANES_PLANE_MAX or have clipped windows; else (and for the last
    # C % LANES planes) flat scheme over chunks of up to FLAT_CHUNK_MAX floats of
    # consecutive planes of one image.
    cdef Py_ssize_t HW = g.H * g.W
    cdef PlaneScheme scheme = SCHEME_ROWS
    if (g.ow_hi - g.ow_lo < VECTOR_SLACK and g.x_row == g.W and HW <= FLAT_CHUNK_MAX
            and (C == 1 or cnp.PyArray_STRIDE(x, 1) == HW * <Py_ssize_t>sizeof(float)) and g.out_row == g.Wo):
        scheme = SCHEME_LANES if (lanes and C >= LANES and HW >= 16 and g.Ho * g.Wo >= 16
                                  and (HW <= LANES_PLANE_MAX or windows_clipped(&g))) else SCHEME_FLAT
    elif (g.kh == 2 and g.kw == 2 and g.sh == 2 and g.sw == 2 and g.dh == 1 and g.dw == 1 and g.pt == 0
          and g.pl == 0 and g.W == 2 * g.Wo and 2 * g.Ho <= g.H and g.x_row == g.W and g.out_row == g.Wo):
        scheme = SCHEME_PAIRS
    cdef Py_ssize_t chunk = (LANES if scheme == SCHEME_LANES else
                             min(max(1, FLAT_CHUNK_MAX // HW), C) if scheme == SCHEME_FLAT else 1)
    cdef Py_ssize_t chunks = (C + chunk - 1) // chunk
    cdef Py_ssize_t out_plane = cnp.PyArray_STRIDE(out, 1) // sizeof(float)
    cdef Py_ssize_t buf_len = (max(lanes_floats(&g), 2 * (LANES - 1) * HW + 3 * VECTOR_SLACK) if scheme == SCHEME_LANES else
                               2 * chunk * HW + 3 * VECTOR_SLACK if scheme == SCHEME_FLAT else
                               g.H * g.Wo if scheme == SCHEME_PAIRS else
                               g.W + g.sw * g.phase_len + 2 * VECTOR_SLACK + g.Wo)
    nthreads = max(1, min(nthreads, N * chunks))
    # zeroed where the flat scheme runs: its vector loops read (and discard) scratch
    # lanes past the data, which must not hold denormals (slow) or signalling garbage.
    # window_pool_lanes reads only what it wrote (zeroing cost 5 % of a 13x13 pool).
    cdef bint flat = scheme == SCHEME_FLAT or (scheme == SCHEME_LANES and C % LANES != 0)
    buf_len = thread_stride(buf_len)
    cdef float* bufs = (<float*>calloc(nthreads * buf_len, sizeof(float)) if flat or scheme != SCHEME_LANES
                        else <float*>malloc(nthreads * buf_len * sizeof(float)))
    cdef int* corners = <int*>malloc(max(1, g.Ho * g.Wo) * sizeof(int)) if flat else NULL
    cdef Py_ssize_t* bounds = (<Py_ssize_t*>malloc((4 * g.Ho + 2 * g.Wo) * sizeof(Py_ssize_t))
                               if scheme == SCHEME_LANES else NULL)
    if bufs == NULL or (flat and corners == NULL) or (scheme == SCHEME_LANES and bounds == NULL):
        free(bufs)
        free(corners)
        free(bounds)
        raise MemoryError()
    if flat:
        window_corners(&g, corners)
    if scheme == SCHEME_LANES:
        window_bounds(&g, bounds)
    cdef const float* x0 = data_of(x)
    cdef float* out0 = data_of(out)
    cdef Py_ssize_t x_image = cnp.PyArray_STRIDE(x, 0) // sizeof(float)
    cdef Py_ssize_t x_plane = cnp.PyArray_STRIDE(x, 1) // sizeof(float)
    cdef Py_ssize_t out_image = cnp.PyArray_STRIDE(out, 0) // sizeof(float)
    try:
        if nthreads == 1:   # no OpenMP region: it costs as much as a small pool
            for p in range(N * chunks):
                n = p // chunks
                c = (p % chunks) * chunk
                window_pool_task(x0 + n * x_image + c * x_plane, out0 + n * out_image + c * out_plane, &g,
                                 scheme, min(chunk, C - c), out_plane, corners, bounds, bufs, scale_ptr, op)
        else:
            for p in prange(N * chunks, nogil=True, num_threads=nthreads, schedule="static"):
                n = p // chunks
                c = (p % chunks) * chunk
                window_pool_task(x0 + n * x_image + c * x_plane, out0 + n * out_image + c * out_plane, &g,
                                 scheme, min(chunk, C - c), out_plane, corners, bounds, bufs + threadid() * buf_len,
                                 scale_ptr, op)
    finally:
        free(bufs)
        free(corners)
        free(bounds)


cdef multiversion_void bin_pool_plane(const float* x, Py_ssize_t x_row, float* out, Py_ssize_t out_row,
                                      const Py_ssize_t* hbins, Py_ssize_t Ho, const Py_ssize_t* wbins,
                                      Py_ssize_t Wo, float* row_buf, int op, bint average) noexcept nogil:
    """One plane of a pool over explicit bins: output (i, j) reduces input rows
    [hbins[2i], hbins[2i+1]) x columns [wbins[2j], wbins[2j+1]).  Empty bins give 0."""
    cdef Py_ssize_t oh, ow, w, hs, he, ws, we, wmin = wbins[0], wmax = wbins[1]
    cdef float acc
    cdef ScalarMax m
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
        reduce_rows(row_buf, x + hs * x_row + wmin, he - hs, x_row, wmax - wmin, op)
        for ow in range(Wo):
            ws, we = wbins[2 * ow] - wmin, wbins[2 * ow + 1] - wmin
            if we <= ws:
                o[ow] = 0.0
                continue
            if op:
                m = ScalarMax(-INFINITY, False)
                for w in range(ws, we):
                    scalar_max_add(&m, row_buf[w])
                o[ow] = scalar_max_result(&m)
                continue
            acc = 0.0
            for w in range(ws, we):
                acc = acc + row_buf[w]
            o[ow] = acc / <float>((he - hs) * (we - ws)) if average else acc


def bin_pool(const float[:, :, :, :] x, float[:, :, :, :] out, const Py_ssize_t[::1] image_of,
             const Py_ssize_t[:, :, ::1] hbins, const Py_ssize_t[:, :, ::1] wbins,
             bint is_max, bint average, int nthreads):
    """Pool every plane of ``out`` (R, C, Ho, Wo) over bins of input image ``image_of[r]``.

    ``hbins`` (B, Ho, 2) and ``wbins`` (B, Wo, 2) hold [start, end) per output row and column;
    B is 1 (the same bins for every r: adaptive, global, SPP) or R (per box: RoI pooling).
    ``out`` may be a strided view (SPP levels); only its rows must be contiguous."""
    cdef int op = OP_MAX_NAN if is_max else OP_SUM
    cdef Py_ssize_t R = out.shape[0], C = out.shape[1], Ho = out.shape[2], Wo = out.shape[3]
    cdef Py_ssize_t x_row = x.strides[2] // sizeof(float), out_row = out.strides[2] // sizeof(float)
    cdef Py_ssize_t per_box = hbins.shape[0] > 1, p, r, c, b
    check_unit_columns(x, out)
    if R == 0 or C == 0:
        return
    nthreads = max(1, min(nthreads, R * C))
    cdef Py_ssize_t buf_len = thread_stride(x.shape[3])
    cdef float* bufs = <float*>malloc(nthreads * buf_len * sizeof(float))
    if bufs == NULL:
        raise MemoryError()
    try:
        if nthreads == 1:
            for p in range(R * C):
                r = p // C
                c = p % C
                b = r * per_box
                bin_pool_plane(&x[image_of[r], c, 0, 0], x_row, &out[r, c, 0, 0], out_row, &hbins[b, 0, 0], Ho,
                               &wbins[b, 0, 0], Wo, bufs, op, average)
        else:
            for p in prange(R * C, nogil=True, num_threads=nthreads, schedule="static"):
                r = p // C
                c = p % C
                b = r * per_box
                bin_pool_plane(&x[image_of[r], c, 0, 0], x_row, &out[r, c, 0, 0], out_row, &hbins[b, 0, 0], Ho,
                               &wbins[b, 0, 0], Wo, bufs + threadid() * buf_len, op, average)
    finally:
        free(bufs)


cdef struct PyramidTables:
    const Py_ssize_t* levels     # L x LEVEL_FIELDS, see pyramid_pool
    const Py_ssize_t* hbins      # (sum n) x 2
    const Py_ssize_t* wbins
    const int* corners
    const float* scales


cdef enum:
    LEVEL_FIELDS = 9


cdef void pyramid_task(const float* x, float* out, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t c0,
                       Py_ssize_t chunk, Py_ssize_t L, const PyramidTables* t, float* buf, int op,
                       bint average) noexcept nogil:
    """Every level of planes c0 .. c0 + chunk - 1 of one image (x: its C x H x W input,
    out: its row of the output)."""
    cdef Py_ssize_t planes = min(chunk, C - c0), l, n, src, m, first, plane_h, plane_w, c
    cdef const Py_ssize_t* row
    cdef const float* plane
    cdef Window2d g
    op = max_op_for(op, x + c0 * H * W, planes * H * W)   # later levels read earlier ones: NaN-free too
    for l in range(L):
        row = t.levels + l * LEVEL_FIELDS
        n, src, first = row[0], row[1], row[3]
        if src < 0:
            plane, plane_h, plane_w = x + c0 * H * W, H, W
        else:
            m = t.levels[src * LEVEL_FIELDS]
            plane, plane_h, plane_w = out + t.levels[src * LEVEL_FIELDS + 2] + c0 * m * m, m, m
        if row[4] > 0:
            g = Window2d(plane_h, plane_w, n, n, row[4], row[5], row[6], row[7], 0, 0, 1, 1, 0, n, plane_w, n, 0)
            window_pool_flat_planes(plane, planes, out + row[2] + c0 * n * n, n * n, &g, t.corners + row[8], buf,
                                    t.scales + row[8] if average else NULL, op)
            continue
        for c in range(planes):
            bin_pool_plane(plane + c * plane_h * plane_w, plane_w, out + row[2] + (c0 + c) * n * n, n,
                           t.hbins + 2 * first, n, t.wbins + 2 * first, n, buf, op, average)


def pyramid_pool(const float[:, :, :, ::1] x, float[:, ::1] out, const Py_ssize_t[:, ::1] levels,
                 const Py_ssize_t[:, ::1] hbins, const Py_ssize_t[:, ::1] wbins, const int[::1] corners,
                 const float[::1] scales, bint is_max, bint average, int nthreads):
    """Spatial pyramid pooling in one call: each task takes a chunk of consecutive planes
    (the flat scheme's size) and computes every level of it while it is in cache.

    Row l of ``levels`` is (n, source, column, first, kh, kw, sh, sw, table), in computation
    order: level l is n x n bins ``hbins[first:first + n]`` x ``wbins[first:first + n]``
    over plane c of the input (source -1) or of level ``source``'s n' x n' output (an
    earlier row); its output plane c is ``out[:, column + c * n * n:][:n * n]``.  A level
    of the input whose bins are equal windows (kh > 0: kernel kh x kw, stride sh x sw,
    all inside) runs the flat window kernel instead, with the window corners
    ``corners[table:]`` and (average) the scales ``scales[table:]``, n * n each."""
    cdef int op = OP_MAX_NAN if is_max else OP_SUM
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], L = levels.shape[0]
    cdef Py_ssize_t HW = H * W, chunk = min(max(1, FLAT_CHUNK_MAX // HW), C), chunks, p, l, width
    if levels.shape[1] != LEVEL_FIELDS:
        raise ValueError(f"levels must have {LEVEL_FIELDS} columns, got {levels.shape[1]}")
    if N == 0 or C == 0 or L == 0:
        return
    chunks = (C + chunk - 1) // chunk
    cdef PyramidTables t
    t.levels, t.hbins, t.wbins = &levels[0, 0], &hbins[0, 0], &wbins[0, 0]
    t.corners = &corners[0] if corners.shape[0] > 0 else NULL
    t.scales = &scales[0] if scales.shape[0] > 0 else NULL
    width = max(W, 2 * chunk * HW + 3 * VECTOR_SLACK)
    for l in range(L):
        width = max(width, 2 * chunk * levels[l, 0] * levels[l, 0] + 3 * VECTOR_SLACK)
    nthreads = max(1, min(nthreads, N * chunks))
    width = thread_stride(width)
    cdef float* bufs = <float*>calloc(nthreads * width, sizeof(float))   # zeroed: see pool_windows
    if bufs == NULL:
        raise MemoryError()
    try:
        if nthreads == 1:
            for p in range(N * chunks):
                pyramid_task(&x[p // chunks, 0, 0, 0], &out[p // chunks, 0], C, H, W, (p % chunks) * chunk, chunk,
                             L, &t, bufs, op, average)
        else:
            for p in prange(N * chunks, nogil=True, num_threads=nthreads, schedule="static"):
                pyramid_task(&x[p // chunks, 0, 0, 0], &out[p // chunks, 0], C, H, W, (p % chunks) * chunk, chunk,
                             L, &t, bufs + threadid() * width, op, average)
    finally:
        free(bufs)


cdef multiversion_void reduce_planes(const float* x, Py_ssize_t planes, Py_ssize_t size, float* out,
                                     int op, float scale, Py_ssize_t width) noexcept nogil:
    """out[p] = max (or scale * sum) of the ``size`` contiguous floats of each plane p.

    A plane is reduced as rows of ``width`` (<= VECTOR_SLACK) lanes, vectorized like the
    other passes, then the lanes and the leftover tail with branch-free scalar code.
    ``width`` is a run-time argument on purpose: as a constant, GCC unrolls the lane
    loop into scalar compares and branches instead of vectorizing it."""
    cdef float lanes[VECTOR_SLACK]
    cdef Py_ssize_t p, i, full = size // width
    cdef const float* plane
    cdef ScalarMax m
    cdef float total
    for p in range(planes):
        plane = x + p * size
        if op:
            m = ScalarMax(-INFINITY, False)
        total = 0.0
        if full > 0:
            reduce_rows(lanes, plane, full, width, width, op)
            for i in range(width):
                if op:
                    scalar_max_add(&m, lanes[i])
                else:
                    total = total + lanes[i]
        for i in range(full * width, size):
            if op:
                scalar_max_add(&m, plane[i])
            else:
                total = total + plane[i]
        out[p] = scalar_max_result(&m) if op else total * scale


def global_pool(const float[:, :, :, ::1] x, float[:, :, :, ::1] out, bint is_max, float scale, int nthreads,
                Py_ssize_t lanes=VECTOR_SLACK):
    """out[n, c] = max (NaN propagating) or scale * sum of plane x[n, c]; ``out`` is (N, C, 1, 1).

    Sums are one matrix-vector product (BLAS, per thread's block of planes): ~1.3x faster
    than reduce_planes on 512 planes of 7x7."""
    cdef int op = OP_MAX_NAN if is_max else OP_SUM
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1], size = x.shape[2] * x.shape[3], chunk, t, lo, hi
    if planes == 0 or size == 0:
        return
    cdef const float* src = &x[0, 0, 0, 0]
    cdef float* dst = &out[0, 0, 0, 0]
    cdef float* ones = NULL
    if not op:
        ones = <float*>malloc(size * sizeof(float))
        if ones == NULL:
            raise MemoryError()
        for t in range(size):
            ones[t] = 1.0
    nthreads = max(1, min(nthreads, planes))
    chunk = (planes + nthreads - 1) // nthreads
    try:
        if nthreads == 1:
            global_pool_block(src, dst, 0, planes, size, ones, scale, op, lanes)
        else:
            for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static"):
                global_pool_block(src, dst, t * chunk, min(t * chunk + chunk, planes), size, ones, scale, op,
                                  lanes)
    finally:
        free(ones)


cdef void global_pool_block(const float* src, float* dst, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t size,
                            const float* ones, float scale, int op, Py_ssize_t lanes) noexcept nogil:
    """Planes lo .. hi - 1 of global_pool."""
    if hi <= lo:
        return
    if op:
        op = max_op_for(op, src + lo * size, (hi - lo) * size)
        reduce_planes(src + lo * size, hi - lo, size, dst + lo, op, scale, lanes)
    else:   # sums: (planes x size) @ ones, BLAS's matrix-vector product
        gemm_rowmajor(False, False, hi - lo, 1, size, scale, src + lo * size, size, ones, 1, 0.0, dst + lo, 1)


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
