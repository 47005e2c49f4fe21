# Pointwise activations and (log-)softmax: hot loops only.
#
# Every kernel reads x[i] before writing y[i] at the same index, so ``y`` may be
# ``x`` (in place).  Comparisons are written so that NaN passes through.
from cython.parallel cimport prange
from libc.math cimport logf, fabsf, INFINITY

from pyconv._core.simd cimport multiversion_void

cdef extern from "fastmath.h" nogil:
    # vectorisable versions of libm's functions (see fastmath.h)
    float fast_exp "pyconv_expf"(float x)
    float fast_tanh "pyconv_tanhf"(float x)
    float fast_erfc_nonneg "pyconv_erfcf_nonneg"(float a)
    float fast_expm1 "pyconv_expm1f"(float x)

cdef enum Kind:
    CLIP = 0         # relu (a=0, b=inf), relu6, clip(a, b)
    LEAKY = 1        # x >= 0 ? x : a * x
    ELU = 2          # x > 0 ? x : a * (exp(x) - 1)
    SIGMOID = 3
    TANH = 4
    SILU = 5         # x * sigmoid(x)
    HARDSIGMOID = 6  # clamp(a * x + b, 0, 1)
    HARDSWISH = 7    # x * clamp(x / 6 + 1/2, 0, 1)
    GELU_ERF = 8     # x / 2 * (1 + erf(x / sqrt(2)))
    GELU_TANH = 9    # x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))

KINDS = {
    "clip": CLIP, "leaky_relu": LEAKY, "elu": ELU, "sigmoid": SIGMOID, "tanh": TANH,
    "silu": SILU, "hardsigmoid": HARDSIGMOID, "hardswish": HARDSWISH,
    "gelu_erf": GELU_ERF, "gelu_tanh": GELU_TANH,
}

cdef enum:
    CHUNK = 16384        # elements per task of the flat kernels: amortises the call, splits evenly
    SOFTMAX_BLOCK = 512  # columns per task of the strided softmax (its stack buffers)
    LANES = 16           # independent accumulators of a row reduction (one AVX-512 vector)


cdef inline float sigmoid1(float v) noexcept nogil:
    # exp of a non-positive argument never overflows: stable for any |v|.
    cdef float e = fast_exp(-fabsf(v))
    cdef float r = 1.0 / (1.0 + e)
    return r if v >= 0 else e * r


cdef multiversion_void activation_tile(int kind, const float* x, float* y, Py_ssize_t n,
                                       float a, float b) noexcept nogil:
    """y[i] = act(x[i]) for n floats; a, b are the activation's parameters."""
    cdef Py_ssize_t i
    cdef float v, t
    if kind == CLIP:
        for i in range(n):
            v = x[i]
            v = a if v < a else v
            y[i] = b if v > b else v
    elif kind == LEAKY:
        for i in range(n):
            v = x[i]
            y[i] = v if v >= 0 else a * v
    elif kind == ELU:
        for i in range(n):
            v = x[i]
            t = fast_expm1(0 if v > 0 else v)  # never overflows; NaN passes
            y[i] = v if v > 0 else a * t
    elif kind == SIGMOID:
        for i in range(n):
            y[i] = sigmoid1(x[i])
    elif kind == TANH:
        for i in range(n):
            y[i] = fast_tanh(x[i])
    elif kind == SILU:
        for i in range(n):
            v = x[i]
            y[i] = v * sigmoid1(v)
    elif kind == HARDSIGMOID:
        for i in range(n):
            t = a * x[i] + b
            t = 0 if t < 0 else t
            y[i] = 1 if t > 1 else t
    elif kind == HARDSWISH:
        for i in range(n):
            v = x[i]
            t = v * (1.0 / 6.0) + 0.5
            t = 0 if t < 0 else t
            t = 1 if t > 1 else t
            y[i] = v * t
    elif kind == GELU_ERF:
        for i in range(n):
            v = x[i]
            t = fast_erfc_nonneg(fabsf(v) * 0.70710678118654752)
            y[i] = 0.5 * v * (t if v < 0 else 2.0 - t)  # 1 + erf(u) = erfc(-u)
    elif kind == GELU_TANH:
        for i in range(n):
            v = x[i]
            y[i] = 0.5 * v * (1.0 + fast_tanh(0.79788456080286536 * (v + 0.044715 * v * v * v)))


def activation_forward(int kind, const float[::1] x, float[::1] y, float a, float b, int nthreads):
    """y = act(x) over flat float32 buffers (``y`` may be ``x``)."""
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, start
    if n == 0:
        return
    with nogil:
        for c in prange(nchunks, num_threads=nthreads, schedule="static"):
            start = c * CHUNK
            activation_tile(kind, &x[start], &y[start], min(CHUNK, n - start), a, b)


def prelu_forward(const float[::1] x, float[::1] y, const float[::1] slope,
                  Py_ssize_t channels, Py_ssize_t plane, int nthreads):
    """PReLU with one slope per channel over planes of ``plane`` floats (NC... layout)."""
    cdef Py_ssize_t nplanes = x.shape[0] // plane if plane > 0 else 0
    cdef Py_ssize_t p, start
    with nogil:
        for p in prange(nplanes, num_threads=nthreads, schedule="static"):
            start = p * plane
            activation_tile(LEAKY, &x[start], &y[start], plane, slope[p % channels], 0.0)


cdef inline float row_max(const float* x, Py_ssize_t n) noexcept nogil:
    """max of n floats; LANES independent maxima so the compiler can use vector max."""
    cdef float acc[LANES]
    cdef Py_ssize_t i, j, body = n - n % LANES
    cdef float m = -INFINITY
    for j in range(LANES):
        acc[j] = -INFINITY
    for i in range(body // LANES):
        for j in range(LANES):
            acc[j] = x[i * LANES + j] if x[i * LANES + j] > acc[j] else acc[j]
    for i in range(body, n):
        m = x[i] if x[i] > m else m
    for j in range(LANES):
        m = acc[j] if acc[j] > m else m
    return m


cdef inline double exp_sum(const float* x, Py_ssize_t n, float m, bint stored) noexcept nogil:
    """sum of exp(x[i] - m) (of x[i] itself when ``stored``), in double over LANES partial sums:
    a float32 running sum of a thousand terms would lose ~1e-5 (visible in log_softmax)."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, body = n - n % LANES
    cdef double total = 0
    for j in range(LANES):
        acc[j] = 0
    for i in range(body // LANES):
        for j in range(LANES):
            acc[j] = acc[j] + (x[i * LANES + j] if stored else fast_exp(x[i * LANES + j] - m))
    for i in range(body, n):
        total = total + (x[i] if stored else fast_exp(x[i] - m))
    for j in range(LANES):
        total = total + acc[j]
    return total


cdef multiversion_void softmax_row(const float* x, float* y, Py_ssize_t n, bint log) noexcept nogil:
    """(log-)softmax of n contiguous floats."""
    cdef Py_ssize_t i
    cdef float m = row_max(x, n)
    cdef float shift, scale
    if log:
        shift = logf(<float>exp_sum(x, n, m, False))
        for i in range(n):
            y[i] = (x[i] - m) - shift  # x - m first: exact for nearby values, whatever |m|
    else:
        for i in range(n):
            y[i] = fast_exp(x[i] - m)
        scale = <float>(1.0 / exp_sum(y, n, m, True))
        for i in range(n):
            y[i] = y[i] * scale


cdef multiversion_void softmax_columns(const float* x, float* y, Py_ssize_t length, Py_ssize_t stride,
                                       Py_ssize_t width, bint log) noexcept nogil:
    """(log-)softmax down ``width`` (<= SOFTMAX_BLOCK) columns of a length x stride block.

    Works row by row across the columns so the inner loops are unit stride."""
    cdef float m[SOFTMAX_BLOCK]
    cdef double s[SOFTMAX_BLOCK]  # double: see exp_sum
    cdef float r[SOFTMAX_BLOCK]
    cdef Py_ssize_t l, j
    cdef const float* xr
    cdef float* yr
    for j in range(width):
        m[j] = -INFINITY
        s[j] = 0
    for l in range(length):
        xr = x + l * stride
        for j in range(width):
            m[j] = xr[j] if xr[j] > m[j] else m[j]
    if log:
        for l in range(length):
            xr = x + l * stride
            for j in range(width):
                s[j] = s[j] + fast_exp(xr[j] - m[j])
        for j in range(width):
            r[j] = logf(<float>s[j])
        for l in range(length):
            xr = x + l * stride
            yr = y + l * stride
            for j in range(width):
                yr[j] = (xr[j] - m[j]) - r[j]
    else:
        for l in range(length):
            xr = x + l * stride
            yr = y + l * stride
            for j in range(width):
                yr[j] = fast_exp(xr[j] - m[j])
                s[j] = s[j] + yr[j]
        for j in range(width):
            r[j] = <float>(1.0 / s[j])
        for l in range(length):
            yr = y + l * stride
            for j in range(width):
                yr[j] = yr[j] * r[j]


def softmax_forward(const float[::1] x, float[::1] y, Py_ssize_t outer, Py_ssize_t length,
                    Py_ssize_t inner, bint log, int nthreads):
    """(log-)softmax over the middle axis of an (outer, length, inner) buffer (``y`` may be ``x``)."""
    cdef Py_ssize_t nblocks = (inner + SOFTMAX_BLOCK - 1) // SOFTMAX_BLOCK
    cdef Py_ssize_t t, o, j0
    if outer == 0 or length == 0 or inner == 0:
        return
    with nogil:
        if inner == 1:
            for o in prange(outer, num_threads=nthreads, schedule="static"):
                softmax_row(&x[o * length], &y[o * length], length, log)
        else:
            for t in prange(outer * nblocks, num_threads=nthreads, schedule="static"):
                o = t // nblocks
                j0 = (t % nblocks) * SOFTMAX_BLOCK
                softmax_columns(&x[o * length * inner + j0], &y[o * length * inner + j0],
                                length, inner, min(SOFTMAX_BLOCK, inner - j0), log)
