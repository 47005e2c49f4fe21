# Local response normalisation across channels (AlexNet, GoogLeNet):
#     y[c] = x[c] * (k + alpha / size * sum_{c' in window(c)} x[c']^2) ^ -beta
# The window of channel c is [c - before, c - before + size - 1] clipped to the
# valid channels; pyconv.ops.norm chooses ``before`` (PyTorch vs ONNX).
from cython.parallel cimport prange
from libc.math cimport powf, sqrtf

from pyconv._core.simd cimport multiversion_void

cdef extern from "fastmath.h" nogil:
    float fast_exp "pyconv_expf"(float x)
    float fast_log "pyconv_logf_positive"(float x)

# Pixels per task; the squared-sum accumulator lives on the stack.
cdef enum:
    BLOCK = 512


cdef multiversion_void lrn_block(const float* x, float* y, Py_ssize_t width, Py_ssize_t channel_stride,
                                 Py_ssize_t lo, Py_ssize_t hi, float k, float alpha_over_size,
                                 float beta) noexcept nogil:
    """One block of ``width`` pixels of one channel; ``x``/``y`` point at that channel,
    the window spans channel offsets lo..hi (inclusive) relative to it."""
    cdef float acc[BLOCK]
    cdef Py_ssize_t j, d
    cdef const float* xc
    cdef float r
    for j in range(width):
        acc[j] = 0
    for d in range(lo, hi + 1):
        xc = x + d * channel_stride
        for j in range(width):
            acc[j] = acc[j] + xc[j] * xc[j]
    if beta == 0.75:  # AlexNet, GoogLeNet: b^-0.75 = 1 / (sqrt(b) sqrt(sqrt(b))), which vectorises
        for j in range(width):
            r = sqrtf(k + alpha_over_size * acc[j])
            y[j] = x[j] / (r * sqrtf(r))
    elif k > 1.2e-38:  # base >= k is a positive normal float: exp(-beta log(base)), vectorised
        for j in range(width):
            y[j] = x[j] * fast_exp(-beta * fast_log(k + alpha_over_size * acc[j]))
    else:
        for j in range(width):
            y[j] = x[j] * powf(k + alpha_over_size * acc[j], -beta)


def lrn_forward(const float[::1] x, float[::1] y, Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t plane,
                Py_ssize_t size, Py_ssize_t before, float alpha, float beta, float k, int nthreads):
    """LRN over an (batch, channels, plane) buffer (``y`` must not alias ``x``)."""
    cdef Py_ssize_t nblocks = (plane + BLOCK - 1) // BLOCK
    cdef Py_ssize_t t, q, c, j0, lo, hi, base
    cdef float alpha_over_size = alpha / size
    with nogil:
        for t in prange(batch * channels * nblocks, num_threads=nthreads, schedule="static"):
            q = t // nblocks
            c = q % channels
            j0 = (t % nblocks) * BLOCK
            lo = max(-before, -c)
            hi = min(size - 1 - before, channels - 1 - c)
            base = q * plane + j0
            lrn_block(&x[base], &y[base], min(BLOCK, plane - j0), plane, lo, hi, k, alpha_over_size, beta)
