# Resize gathers for NCHW planes.  The coordinate mapping (ONNX coordinate
# transformation and rounding modes) is decided in pyconv.ops.tensor and
# arrives here as per-axis index and weight tables, so the loops only gather.
from cython.parallel cimport prange
from libc.string cimport memcpy

from pyconv._core.simd cimport multiversion_void


cdef multiversion_void bilinear_row(const float* r0, const float* r1, float wy, const int* x0,
                                    const int* x1, const float* wx, float* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef float top, bottom
    for i in range(n):
        top = r0[x0[i]] + (r0[x1[i]] - r0[x0[i]]) * wx[i]
        bottom = r1[x0[i]] + (r1[x1[i]] - r1[x0[i]]) * wx[i]
        out[i] = top + (bottom - top) * wy


def resize_nearest(const float[::1] x, float[::1] y, Py_ssize_t planes, Py_ssize_t in_h, Py_ssize_t in_w,
                   const int[::1] iy, const int[::1] ix, int nthreads):
    """y[p, i, j] = x[p, iy[i], ix[j]] for ``planes`` planes."""
    cdef Py_ssize_t out_h = iy.shape[0], out_w = ix.shape[0]
    cdef Py_ssize_t p, i, j
    cdef const float* src
    cdef float* dst
    with nogil:
        for p in prange(planes, num_threads=nthreads, schedule="static"):
            for i in range(out_h):
                dst = &y[(p * out_h + i) * out_w]
                if i > 0 and iy[i] == iy[i - 1]:
                    # upsampling repeats source rows: copy the row just gathered
                    memcpy(dst, dst - out_w, out_w * sizeof(float))
                    continue
                src = &x[(p * in_h + iy[i]) * in_w]
                for j in range(out_w):
                    dst[j] = src[ix[j]]


def resize_bilinear(const float[::1] x, float[::1] y, Py_ssize_t planes, Py_ssize_t in_h, Py_ssize_t in_w,
                    const int[::1] y0, const int[::1] y1, const float[::1] wy,
                    const int[::1] x0, const int[::1] x1, const float[::1] wx, int nthreads):
    """Bilinear resize: row i blends input rows y0[i], y1[i] with weight wy[i] (same for columns)."""
    cdef Py_ssize_t out_h = y0.shape[0], out_w = x0.shape[0]
    cdef Py_ssize_t p, i, base
    with nogil:
        for p in prange(planes, num_threads=nthreads, schedule="static"):
            base = p * in_h * in_w
            for i in range(out_h):
                bilinear_row(&x[base + y0[i] * in_w], &x[base + y1[i] * in_w], wy[i],
                             &x0[0], &x1[0], &wx[0], &y[(p * out_h + i) * out_w], out_w)
