# Single entry point to the BLAS that SciPy ships (scipy.linalg.cython_blas),
# wrapped once for all kernels.  BLAS is column-major; our tensors are
# row-major, so a row-major C = A @ B is computed as the column-major
# C^T = B^T @ A^T (swap the operands, keep the leading dimensions).
from scipy.linalg.cython_blas cimport sgemm as scipy_sgemm
from scipy.linalg.cython_blas cimport sgemv as scipy_sgemv

# SciPy < 1.11 declares sgemm without ``noexcept``; Cython 3 would then take
# the GIL after every call to check for a Python exception.  Calling through
# a noexcept pointer type avoids that on every SciPy version.
ctypedef void (*sgemm_fn)(char*, char*, int*, int*, int*, float*, float*, int*,
                          float*, int*, float*, float*, int*) noexcept nogil
ctypedef void (*sgemv_fn)(char*, int*, int*, float*, float*, int*, float*, int*,
                          float*, float*, int*) noexcept nogil


cdef inline void gemm_rowmajor(bint trans_a, bint trans_b, int m, int n, int k,
                               float alpha, const float* a, int lda,
                               const float* b, int ldb, float beta,
                               float* c, int ldc) noexcept nogil:
    """Row-major C[m,n] = alpha * op(A)[m,k] @ op(B)[k,n] + beta * C."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    (<sgemm_fn>scipy_sgemm)(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)


cdef inline void gemv_rowmajor(int m, int n, float alpha, const float* a, int lda, const float* x,
                               float beta, float* y) noexcept nogil:
    """Row-major y[m] = alpha * A[m,n] @ x[n] + beta * y (unit strides).

    For one input row a matrix-vector product streams A once; sgemm would first
    copy A into its packed layout."""
    cdef char trans = b'T'     # row-major A is column-major A^T
    cdef int one = 1
    if m <= 0:
        return
    (<sgemv_fn>scipy_sgemv)(&trans, &n, &m, &alpha, <float*>a, &lda, <float*>x, &one, &beta, y, &one)
