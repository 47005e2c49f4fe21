"""Fully connected layer: ``y = x @ weight.T + bias`` through SciPy's BLAS.

The output features are split into one block per thread; each thread runs a
single-threaded sgemm on its block (pyconv's one-pool rule, see _threads.py),
or sgemv for a single input row (batch 1 classifiers: the weights are streamed
once instead of being packed first, 2-3x faster at 1280 -> 1000)."""
from cython.parallel cimport prange

from pyconv._core.blas cimport gemm_rowmajor, gemv_rowmajor


def linear_forward(const float[:, ::1] x, const float[:, ::1] weight, const float[::1] bias,
                   float[:, ::1] out, int nthreads) -> None:
    """out[rows, out_features] = x[rows, in] @ weight[out_features, in].T (+ bias)."""
    cdef int rows = x.shape[0], k = x.shape[1], features = weight.shape[0]
    if weight.shape[1] != k or out.shape[0] != rows or out.shape[1] != features:
        raise ValueError(f"linear_forward: shapes x ({rows}, {k}), weight ({features}, {weight.shape[1]}), "
                         f"out ({out.shape[0]}, {out.shape[1]}) do not agree")
    if bias is not None and bias.shape[0] != features:
        raise ValueError(f"linear_forward: bias has {bias.shape[0]} elements, expected {features}")
    if rows == 0 or features == 0:
        return
    nthreads = max(1, min(nthreads, features))
    cdef int chunk = (features + nthreads - 1) // nthreads, t
    cdef const float* b = &bias[0] if bias is not None else NULL
    if nthreads == 1:   # no OpenMP region: it costs as much as a small layer
        linear_block(&x[0, 0], rows, k, &weight[0, 0], b, &out[0, 0], features, 0, features)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static"):
        linear_block(&x[0, 0], rows, k, &weight[0, 0], b, &out[0, 0], features, t * chunk,
                     min(features - t * chunk, chunk))


cdef void linear_block(const float* x, int rows, int k, const float* weight, const float* bias, float* out,
                       int features, int first, int count) noexcept nogil:
    """Output features first .. first + count - 1 of every row."""
    cdef int r, j
    if count <= 0:
        return
    if rows == 1:
        gemv_rowmajor(count, k, 1.0, weight + <Py_ssize_t>first * k, k, x, 0.0, out + first)
    else:
        gemm_rowmajor(False, True, rows, count, k, 1.0, x, k, weight + <Py_ssize_t>first * k, k,
                      0.0, out + first, features)
    if bias != NULL:
        for r in range(rows):
            for j in range(first, first + count):
                out[<Py_ssize_t>r * features + j] += bias[j]
