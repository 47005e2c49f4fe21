# Stride-2 max pools fused into a conv's output stage (winograd.pyx on its
# channels-innermost tiles, conv_gemm.pyx on NCHW rows): the conv's full-size output
# never leaves the cache, and only the pooled quarter is written to memory.
# NaN propagates, as in PyTorch's max_pool2d (and pooling.pyx).
from libc.math cimport NAN

from pyconv._core.simd cimport inlined_void


cdef inline float max4_nan(float a, float b, float c, float d) noexcept nogil:
    # three maxps and one unordered test (nested two-way NaN selects vectorize badly)
    cdef float m = a if a > b else b
    cdef float n = c if c > d else d
    m = m if m > n else n
    return m if (a == a) & (b == b) & (c == c) & (d == d) else NAN


cdef inline float max3_nan(float a, float b, float c) noexcept nogil:
    # two maxps and one unordered test
    cdef float m = a if a > b else b
    m = m if m > c else c
    return m if (a == a) & (b == b) & (c == c) else NAN


cdef inline inlined_void max_pool_2x2_row(const float* top, const float* bottom, float* dst,
                                          Py_ssize_t width) noexcept nogil:
    """dst[j] = max of top[2j], top[2j + 1], bottom[2j], bottom[2j + 1] for j < width (NCHW rows)."""
    cdef Py_ssize_t j
    for j in range(width):
        dst[j] = max4_nan(top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1])


cdef inline inlined_void max_pool_3x3s2_row(float* top, float* middle, const float* bottom, float* dst,
                                            Py_ssize_t width) noexcept nogil:
    """dst[j] = max of the 3x3 window at column 2j of rows top, middle, bottom, for
    j < width (NCHW rows of at least 2 * width + 1 floats), in three unit-stride passes
    that vectorize (a stride-2 NaN-propagating max stays scalar): the column maxima into
    ``middle``, the one row no other window of a stride-2 pool reads; their even and
    odd columns apart into ``top``, which the windows after this one do not read;
    then the maxima of three neighbours."""
    cdef Py_ssize_t j
    cdef float* even = top
    cdef float* odd = top + width + 1
    for j in range(2 * width + 1):
        middle[j] = max3_nan(top[j], middle[j], bottom[j])
    for j in range(width):
        even[j] = middle[2 * j]
        odd[j] = middle[2 * j + 1]
    even[width] = middle[2 * width]
    for j in range(width):
        dst[j] = max3_nan(even[j], odd[j], even[j + 1])


cdef inline inlined_void max_pool_2x2_pixels(const float* top, const float* bottom, Py_ssize_t stride,
                                             float* dst, Py_ssize_t dst_stride, Py_ssize_t width,
                                             Py_ssize_t channels) noexcept nogil:
    """The same on channels-innermost rows (a pixel's channels ``stride`` floats apart from
    the next pixel's; ``dst_stride`` in dst): ``channels`` channels of ``width`` pooled pixels."""
    cdef Py_ssize_t j, c
    cdef const float* t
    cdef const float* b
    cdef float* o
    for j in range(width):
        t = top + 2 * j * stride
        b = bottom + 2 * j * stride
        o = dst + j * dst_stride
        for c in range(channels):
            o[c] = max4_nan(t[c], t[stride + c], b[c], b[stride + c])
