# Elementwise arithmetic fast paths: same-shape operands (residual add) and a
# tensor combined with one scalar per (batch, channel) plane (squeeze-and-
# excitation weighting, batch-norm scale and shift).  Hot loops only; general
# broadcasting stays with NumPy in pyconv.ops.tensor.
from cython.parallel cimport prange

from pyconv._core.simd cimport multiversion_void

cdef enum BinaryOp:
    ADD = 0
    SUB = 1
    MUL = 2
    DIV = 3

OPS = {"add": ADD, "sub": SUB, "mul": MUL, "div": DIV}

# Elements per parallel task of the flat same-shape kernel.
cdef enum:
    CHUNK = 16384


cdef multiversion_void binary_tile(int op, const float* a, const float* b, float* y,
                                   Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if op == ADD:
        for i in range(n):
            y[i] = a[i] + b[i]
    elif op == SUB:
        for i in range(n):
            y[i] = a[i] - b[i]
    elif op == MUL:
        for i in range(n):
            y[i] = a[i] * b[i]
    else:
        for i in range(n):
            y[i] = a[i] / b[i]


cdef multiversion_void binary_scalar_tile(int op, const float* a, float s, float* y, Py_ssize_t n,
                                          bint scalar_first) noexcept nogil:
    """y = a op s, or s op a when ``scalar_first``."""
    cdef Py_ssize_t i
    if op == ADD:
        for i in range(n):
            y[i] = a[i] + s
    elif op == MUL:
        for i in range(n):
            y[i] = a[i] * s
    elif op == SUB and not scalar_first:
        for i in range(n):
            y[i] = a[i] - s
    elif op == SUB:
        for i in range(n):
            y[i] = s - a[i]
    elif not scalar_first:
        for i in range(n):
            y[i] = a[i] / s
    else:
        for i in range(n):
            y[i] = s / a[i]


cdef multiversion_void affine_tile(const float* x, float scale, float shift, float* y,
                                   Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = x[i] * scale + shift


def binary_same_shape(int op, const float[::1] a, const float[::1] b, float[::1] y, int nthreads):
    """y = a op b for flat buffers of equal length (``y`` may be ``a`` or ``b``)."""
    cdef Py_ssize_t n = a.shape[0]
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, start
    with nogil:
        for c in prange(nchunks, num_threads=nthreads, schedule="static"):
            start = c * CHUNK
            binary_tile(op, &a[start], &b[start], &y[start], min(CHUNK, n - start))


def binary_per_plane(int op, const float[::1] big, const float[::1] small, float[::1] y,
                     Py_ssize_t channels, Py_ssize_t plane, Py_ssize_t batch_stride,
                     Py_ssize_t channel_stride, bint small_first, int nthreads):
    """y = big op s (or s op big) where s = small[n * batch_stride + c * channel_stride]
    is constant over each (n, c) plane of ``plane`` floats (``y`` may be ``big``)."""
    cdef Py_ssize_t nplanes = big.shape[0] // plane if plane > 0 else 0
    cdef Py_ssize_t p
    with nogil:
        for p in prange(nplanes, num_threads=nthreads, schedule="static"):
            binary_scalar_tile(op, &big[p * plane],
                               small[(p // channels) * batch_stride + (p % channels) * channel_stride],
                               &y[p * plane], plane, small_first)


def channel_affine(const float[::1] x, const float[::1] scale, const float[::1] shift, float[::1] y,
                   Py_ssize_t channels, Py_ssize_t plane, int nthreads):
    """y = x * scale[c] + shift[c] over (n, c) planes of ``plane`` floats (``y`` may be ``x``)."""
    cdef Py_ssize_t nplanes = x.shape[0] // plane if plane > 0 else 0
    cdef Py_ssize_t p
    with nogil:
        for p in prange(nplanes, num_threads=nthreads, schedule="static"):
            affine_tile(&x[p * plane], scale[p % channels], shift[p % channels], &y[p * plane], plane)
