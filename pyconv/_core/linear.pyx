"""Fully connected layer: ``y = x @ weight.T + bias`` through SciPy's sgemm.

The output features are split into one block per thread; each thread runs a
single-threaded sgemm on its block (pyconv's one-pool rule, see _threads.py)."""
from cython.parallel cimport prange

from pyconv._core.blas cimport gemm_rowmajor


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
    cdef int chunk = (features + nthreads - 1) // nthreads
    cdef int t, first, count, r, j
    cdef const float* b = &bias[0] if bias is not None else NULL
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static"):
        first = t * chunk
        count = min(features - first, chunk)
        if count > 0:
            gemm_rowmajor(False, True, rows, count, k, 1.0, &x[0, 0], k, &weight[first, 0], k,
                          0.0, &out[0, first], features)
            if b != NULL:
                for r in range(rows):
                    for j in range(first, first + count):
                        out[r, j] += b[j]
