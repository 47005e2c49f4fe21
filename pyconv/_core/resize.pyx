# Resize gathers for NCHW planes.  The coordinate mapping (ONNX coordinate
# transformation and rounding modes) is decided in pyconv.ops.tensor and
# arrives here as per-axis index and weight tables, so the loops only gather
# and blend.
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy

import numpy as np

from pyconv._core.parallel cimport thread_stride
from pyconv._core.simd cimport multiversion_void


cdef multiversion_void interpolate_row(const float* r, const int* x0, const int* x1, const float* wx,
                                       float* out, Py_ssize_t n) noexcept nogil:
    """Horizontal pass: one input row resampled to n columns."""
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = r[x0[j]] + (r[x1[j]] - r[x0[j]]) * wx[j]


cdef multiversion_void blend_rows(const float* top, const float* bottom, float wy, float* out,
                                  Py_ssize_t n) noexcept nogil:
    """Vertical pass: unit stride, vectorises."""
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = top[j] + (bottom[j] - top[j]) * wy


cdef void bilinear_plane(const float* x, float* y, Py_ssize_t in_w, Py_ssize_t out_h, Py_ssize_t out_w,
                         const int* y0, const int* y1, const float* wy, const int* x0, const int* x1,
                         const float* wx, float* rows) noexcept nogil:
    """One plane; ``rows`` holds two horizontally resampled input rows (2 * out_w floats).
    Consecutive output rows mostly share input rows, so each is resampled once, not per output row."""
    cdef float* a = rows
    cdef float* b = rows + out_w
    cdef float* swap
    cdef Py_ssize_t i, have_a = -1, have_b = -1, t
    for i in range(out_h):
        if have_a != y0[i]:
            if have_b == y0[i]:  # the old lower row is the new upper one
                swap = a
                a = b
                b = swap
                t = have_a
                have_a = have_b
                have_b = t
            else:
                interpolate_row(x + y0[i] * in_w, x0, x1, wx, a, out_w)
                have_a = y0[i]
        if have_b != y1[i]:
            interpolate_row(x + y1[i] * in_w, x0, x1, wx, b, out_w)
            have_b = y1[i]
        blend_rows(a, b, wy[i], y + i * out_w, out_w)


cdef multiversion_void gather_row(const float* src, const int* ix, float* dst, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        dst[j] = src[ix[j]]


cdef multiversion_void double_row(const float* src, float* dst, Py_ssize_t n) noexcept nogil:
    """Each of n values twice: 2x nearest upsampling (PyTorch's and YOLO/FPN's), without a gather."""
    cdef Py_ssize_t j
    for j in range(n):
        dst[2 * j] = src[j]
        dst[2 * j + 1] = src[j]


def resize_nearest(const float[::1] x, float[::1] y, Py_ssize_t planes, Py_ssize_t in_h, Py_ssize_t in_w,
                   const int[::1] iy, const int[::1] ix, int nthreads):
    """y[p, i, j] = x[p, iy[i], ix[j]] for ``planes`` planes."""
    cdef Py_ssize_t out_h = iy.shape[0], out_w = ix.shape[0]
    cdef Py_ssize_t p, i, j
    cdef const float* src
    cdef float* dst
    cdef bint doubled = out_w == 2 * in_w
    for j in range(out_w if doubled else 0):
        if ix[j] != j // 2:
            doubled = False
            break
    with nogil:
        for p in prange(planes, num_threads=nthreads, schedule="static"):
            for i in range(out_h):
                dst = &y[(p * out_h + i) * out_w]
                if i > 0 and iy[i] == iy[i - 1]:
                    # upsampling repeats source rows: copy the row just gathered
                    memcpy(dst, dst - out_w, out_w * sizeof(float))
                    continue
                src = &x[(p * in_h + iy[i]) * in_w]
                if doubled:
                    double_row(src, dst, in_w)
                else:
                    gather_row(src, &ix[0], dst, out_w)


def resize_bilinear(const float[::1] x, float[::1] y, Py_ssize_t planes, Py_ssize_t in_h, Py_ssize_t in_w,
                    const int[::1] y0, const int[::1] y1, const float[::1] wy,
                    const int[::1] x0, const int[::1] x1, const float[::1] wx, int nthreads):
    """Bilinear resize: row i blends input rows y0[i], y1[i] with weight wy[i] (same for columns)."""
    cdef Py_ssize_t out_h = y0.shape[0], out_w = x0.shape[0]
    cdef Py_ssize_t p
    cdef float[:, ::1] rows = np.empty((max(nthreads, 1), thread_stride(2 * out_w)), dtype=np.float32)  # per thread
    with nogil:
        for p in prange(planes, num_threads=nthreads, schedule="static"):
            bilinear_plane(&x[p * in_h * in_w], &y[p * out_h * out_w], in_w, out_h, out_w,
                           &y0[0], &y1[0], &wy[0], &x0[0], &x1[0], &wx[0], &rows[threadid(), 0])
