# The fused output stage shared by every convolution kernel:
#     out = activation(out + bias [+ residual])
# applied to a row while it is still in cache, instead of a second pass over
# memory.  ``EpilogueSpec`` tuples come from pyconv.ops._args.parse_activation.
from libc.math cimport INFINITY


cdef enum:
    ACT_NONE = 0
    ACT_CLIP = 1    # relu = clip(0, +inf), relu6 = clip(0, 6), clip(lo, hi)
    ACT_LEAKY = 2   # x if x >= 0 else slope * x


cdef struct Epilogue:
    int kind
    float lo
    float hi
    float slope


cdef inline Epilogue epilogue_from_spec(tuple spec):
    """Convert a (kind, lo, hi, slope) tuple to the C struct (call with the GIL)."""
    cdef Epilogue ep
    ep.kind = spec[0]
    ep.lo = spec[1]
    ep.hi = spec[2]
    ep.slope = spec[3]
    return ep


cdef inline float clip(float v, float lo, float hi) noexcept nogil:
    """v clipped to [lo, hi]; NaN passes through unchanged (as in PyTorch)."""
    if v < lo:
        v = lo
    if v > hi:
        v = hi
    return v


cdef inline bint clip_bounds(Epilogue ep, bint residual, float* lo, float* hi) noexcept nogil:
    """Whether a kernel may apply the epilogue as ``clip(v + bias, lo, hi)`` on values it
    is about to store (no residual, a clip activation or none); sets lo and hi (-inf, inf
    when it may not: the kernel then stores plain values and runs epilogue_row)."""
    cdef bint in_kernel = not residual and (ep.kind == ACT_CLIP or ep.kind == ACT_NONE)
    lo[0] = ep.lo if in_kernel and ep.kind == ACT_CLIP else -INFINITY
    hi[0] = ep.hi if in_kernel and ep.kind == ACT_CLIP else INFINITY
    return in_kernel


cdef inline void epilogue_row(float* out, Py_ssize_t n, float bias,
                              const float* residual, Epilogue ep) noexcept nogil:
    """Apply bias, optional residual (NULL for none) and the activation to n floats.

    Comparisons are written so that NaN passes through unchanged, as in PyTorch."""
    cdef Py_ssize_t i
    cdef float v
    if residual != NULL:
        for i in range(n):
            out[i] = out[i] + bias + residual[i]
    elif bias != 0.0:
        for i in range(n):
            out[i] = out[i] + bias
    if ep.kind == ACT_CLIP:
        for i in range(n):
            out[i] = clip(out[i], ep.lo, ep.hi)
    elif ep.kind == ACT_LEAKY:
        for i in range(n):
            v = out[i]
            out[i] = v if v >= 0 else v * ep.slope
