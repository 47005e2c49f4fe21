# Reading one output row of a shifted, strided view of a zero-padded plane.
#
# Output pixel (ho, wo) reads input pixel (ho*stride_h + dy, wo*stride_w + dx),
# and 0 where that falls outside the plane.  This one loop serves the shift op
# (dy, dx = the channel's shift), the fused shift + 1x1 gather, and the adder
# convolution's im2col panel (dy, dx = kernel tap - padding), so padding and
# shifts never materialise a padded or shifted copy of the input.
from libc.string cimport memcpy, memset


cdef inline Py_ssize_t _first_valid(Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """Smallest o >= 0 with o*stride + offset >= 0."""
    if offset >= 0:
        return 0
    return (-offset + stride - 1) // stride


cdef inline Py_ssize_t _end_valid(Py_ssize_t size, Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """One past the largest o with o*stride + offset <= size - 1 (0 if none)."""
    if size - 1 - offset < 0:
        return 0
    return (size - 1 - offset) // stride + 1


cdef inline void gather_shifted_row(const float* plane, Py_ssize_t height, Py_ssize_t width,
                                    Py_ssize_t dy, Py_ssize_t dx, Py_ssize_t stride_h, Py_ssize_t stride_w,
                                    Py_ssize_t ho, Py_ssize_t wo_start, Py_ssize_t count,
                                    float* dst) noexcept nogil:
    """dst[j] = plane[ho*stride_h + dy, (wo_start + j)*stride_w + dx] (0 outside), j < count."""
    cdef Py_ssize_t ih = ho * stride_h + dy
    cdef Py_ssize_t lo, hi, j
    cdef const float* src
    if ih < 0 or ih >= height:
        memset(dst, 0, count * sizeof(float))
        return
    lo = _first_valid(dx, stride_w) - wo_start
    hi = _end_valid(width, dx, stride_w) - wo_start
    lo = 0 if lo < 0 else (count if lo > count else lo)
    hi = lo if hi < lo else (count if hi > count else hi)
    if lo > 0:
        memset(dst, 0, lo * sizeof(float))
    src = plane + ih * width + (wo_start + lo) * stride_w + dx
    if stride_w == 1:
        memcpy(dst + lo, src, (hi - lo) * sizeof(float))
    else:
        for j in range(hi - lo):
            dst[lo + j] = src[j * stride_w]
    if hi < count:
        memset(dst + hi, 0, (count - hi) * sizeof(float))


cdef inline void _copy_clipped(const float* src, Py_ssize_t src_size, Py_ssize_t offset,
                               Py_ssize_t count, float* dst) noexcept nogil:
    """dst[j] = src[offset + j] where 0 <= offset + j < src_size, else 0."""
    cdef Py_ssize_t lo = -offset if offset < 0 else 0
    cdef Py_ssize_t hi = src_size - offset
    lo = count if lo > count else lo
    hi = lo if hi < lo else (count if hi > count else hi)
    if lo > 0:
        memset(dst, 0, lo * sizeof(float))
    memcpy(dst + lo, src + offset + lo, (hi - lo) * sizeof(float))
    if hi < count:
        memset(dst + hi, 0, (count - hi) * sizeof(float))


cdef inline void gather_shifted_pixels(const float* plane, Py_ssize_t height, Py_ssize_t width,
                                       Py_ssize_t dy, Py_ssize_t dx, Py_ssize_t stride_h, Py_ssize_t stride_w,
                                       Py_ssize_t out_width, Py_ssize_t p_start, Py_ssize_t count,
                                       float* dst) noexcept nogil:
    """Like gather_shifted_row for the flat output pixels p_start .. p_start+count-1
    (row-major over an output of width out_width); the range may span several rows."""
    cdef Py_ssize_t p = p_start
    cdef Py_ssize_t end = p_start + count
    cdef Py_ssize_t ho, wo, n, edge_lo, edge_hi, q
    if stride_h == 1 and stride_w == 1:
        # Unstrided: one flat copy of the plane at offset dy*width + dx, then
        # zero the columns that wrapped around a row end (w + dx outside the row).
        _copy_clipped(plane, height * width, p_start + dy * width + dx, count, dst)
        if dx == 0:
            return
        edge_lo = width - dx if dx > 0 else 0
        edge_hi = width if dx > 0 else -dx
        if edge_lo < 0:
            edge_lo = 0
        if edge_hi > width:
            edge_hi = width
        ho = p_start // width
        while ho * width < end:
            for q in range(ho * width + edge_lo, ho * width + edge_hi):
                if q >= p_start and q < end:
                    dst[q - p_start] = 0.0
            ho += 1
        return
    while p < end:
        ho = p // out_width
        wo = p - ho * out_width
        n = out_width - wo
        if n > end - p:
            n = end - p
        gather_shifted_row(plane, height, width, dy, dx, stride_h, stride_w, ho, wo, n, dst + (p - p_start))
        p += n
