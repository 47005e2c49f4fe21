# Cheap argument checks for kernel objects called once per layer per run.
#
# A typed memoryview argument costs a buffer-protocol acquisition (~0.15 us warm,
# ~1 us with cold caches, as in a network where each layer's call follows
# megabytes of another layer's data); a kernel built once per input shape checks
# its arrays per call with these instead: dtype, contiguity and shape, read
# straight off the ndarray.
# Modules that cimport these must call ``cnp.import_array()`` at import.
cimport numpy as cnp


cdef inline int check_array(object arr, str name, tuple shape) except -1:
    """``arr`` must be a C-contiguous float32 ndarray of ``shape``."""
    cdef cnp.ndarray a
    cdef int d
    cdef bint same
    if not isinstance(arr, cnp.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    a = arr
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{name} must be C-contiguous float32")
    same = cnp.PyArray_NDIM(a) == len(shape)
    for d in range(cnp.PyArray_NDIM(a) if same else 0):
        same = same and cnp.PyArray_DIM(a, d) == <Py_ssize_t>shape[d]
    if not same:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return 0


cdef inline int check_conv_arrays(object x, object residual, object out, tuple x_shape, tuple out_shape,
                                  bint pooled=False) except -1:
    """A conv kernel's arrays: x of ``x_shape``, out and the residual (None, or refused
    when the output is ``pooled``: it would be added before the pool) of ``out_shape``."""
    check_array(x, "x", x_shape)
    check_array(out, "out", out_shape)
    if residual is not None:
        if pooled:
            raise ValueError("a residual cannot be added before a fused max pool")
        check_array(residual, "residual", out_shape)
    return 0


cdef inline int check_floats(object arr, str name, Py_ssize_t need) except -1:
    """``arr`` must be a C-contiguous float32 ndarray of at least ``need`` elements."""
    if not isinstance(arr, cnp.ndarray) or cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 \
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or cnp.PyArray_SIZE(arr) < need:
        raise ValueError(f"{name} must be a C-contiguous float32 array of at least {need} elements")
    return 0


cdef inline float* data_of(object arr):
    """The first float of an ndarray already checked by the functions above."""
    return <float*>cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef inline bint overlaps(object a, object b):
    """Whether two C-contiguous arrays, checked by the functions above, share memory
    (np.may_share_memory costs microseconds per call)."""
    cdef char* pa = <char*>cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef char* pb = <char*>cnp.PyArray_DATA(<cnp.ndarray>b)
    return pa < pb + cnp.PyArray_NBYTES(<cnp.ndarray>b) and pb < pa + cnp.PyArray_NBYTES(<cnp.ndarray>a)


cdef inline int check_float_rows(object arr, str name, int ndim, bint writable) except -1:
    """``arr`` must be a float32 ndarray of ``ndim`` dimensions whose rows are contiguous
    (unit last stride: channel slices of larger arrays pass), writable if asked."""
    if (not isinstance(arr, cnp.ndarray) or cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32
            or cnp.PyArray_NDIM(arr) != ndim or cnp.PyArray_STRIDE(arr, ndim - 1) != <Py_ssize_t>sizeof(float)):
        raise ValueError(f"{name} must be a {ndim}-D float32 array whose rows are contiguous")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be writable")
    return 0
