# Layout changes between channel rows (NCHW: one row of pixels per channel) and
# channels-innermost buffers (a pixel's channels contiguous), shared by the kernels
# that compute channels-innermost (winograd.pyx, pointwise_panels.pyx, and
# pooling.pyx's lanes).  Inlined into each ISA clone of their callers.
from pyconv._core.simd cimport inlined_void


cdef extern from "transpose16.h" nogil:
    void pyconv_transpose16(const float* src, Py_ssize_t src_stride, float* dst, Py_ssize_t dst_stride)


cdef inline void transpose_part(const float* src, Py_ssize_t src_stride, float* dst,
                                Py_ssize_t dst_stride, Py_ssize_t r0, Py_ssize_t r1,
                                Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """dst[c * dst_stride + r] = src[r * src_stride + c] for r0 <= r < r1, c0 <= c < c1
    (the edges that pyconv_transpose16 does not cover)."""
    cdef Py_ssize_t r, c
    for r in range(r0, r1):
        for c in range(c0, c1):
            dst[c * dst_stride + r] = src[r * src_stride + c]


cdef inline inlined_void gather_channel_rows(const float* src, Py_ssize_t C, float* dst,
                                             Py_ssize_t dst_stride, Py_ssize_t width,
                                             Py_ssize_t rows) noexcept nogil:
    """dst[r * dst_stride + x] = src[x * C + r] for x < width, r < rows (<= 16): the rows
    of ``rows`` channels out of a channels-innermost buffer of ``width`` pixels."""
    cdef Py_ssize_t x0 = 0
    if rows == 16:
        while x0 < width and width >= 16:
            x0 = min(x0, width - 16)  # the last block overlaps the one before it
            pyconv_transpose16(src + x0 * C, C, dst + x0, dst_stride)
            x0 += 16
    transpose_part(src, C, dst, dst_stride, x0, width, 0, rows)


cdef inline inlined_void scatter_channel_rows(const float* src, Py_ssize_t src_stride, float* dst,
                                              Py_ssize_t C, Py_ssize_t width, Py_ssize_t rows) noexcept nogil:
    """dst[x * C + r] = src[r * src_stride + x] for x < width, r < rows (<= 16): the inverse
    of gather_channel_rows, ``rows`` channel rows into a channels-innermost buffer."""
    cdef Py_ssize_t x0 = 0
    if rows == 16:
        while x0 < width and width >= 16:
            x0 = min(x0, width - 16)  # the last block overlaps the one before it
            pyconv_transpose16(src + x0, src_stride, dst + x0 * C, C)
            x0 += 16
    transpose_part(src, src_stride, dst, C, 0, rows, x0, width)
