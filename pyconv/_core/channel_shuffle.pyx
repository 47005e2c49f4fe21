# ShuffleNet channel shuffle: view C as (groups, C / groups), transpose to
# (C / groups, groups).  Whole planes move, so each task is one memcpy.  The
# input may be given in parts that are concatenated along the channels first
# (ShuffleNetV2's concat + shuffle in one pass: the concatenation is never
# written out).
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cimport numpy as cnp

cnp.import_array()


def shuffle_channels(list parts, cnp.ndarray y, Py_ssize_t groups, int nthreads):
    """y[n, j * groups + i] = cat(parts)[n, i * (C / groups) + j], with cat(parts) the parts
    joined along axis 1.  Every array is C-contiguous float32 of shape (N, C_k, ...) with the
    same N and trailing sizes (checked by the caller); ``y`` must not alias a part."""
    cdef Py_ssize_t batch = cnp.PyArray_DIM(y, 0), channels = cnp.PyArray_DIM(y, 1)
    cdef Py_ssize_t plane = cnp.PyArray_SIZE(y) // max(1, batch * channels)
    cdef Py_ssize_t per_group = channels // groups, q, n, c, s, k, local, first = 0
    cdef cnp.ndarray part
    if batch * channels * plane == 0:
        return
    # for each channel of the concatenation: its plane in image 0 and the image stride
    cdef const float** source = <const float**>malloc(channels * sizeof(float*))
    cdef Py_ssize_t* image_stride = <Py_ssize_t*>malloc(channels * sizeof(Py_ssize_t))
    cdef float* out = <float*>cnp.PyArray_DATA(y)
    try:
        if source == NULL or image_stride == NULL:
            raise MemoryError()
        for k in range(len(parts)):
            part = parts[k]
            for local in range(cnp.PyArray_DIM(part, 1)):
                source[first + local] = <const float*>cnp.PyArray_DATA(part) + local * plane
                image_stride[first + local] = cnp.PyArray_DIM(part, 1) * plane
            first += cnp.PyArray_DIM(part, 1)
        with nogil:
            for q in prange(batch * channels, num_threads=nthreads, schedule="static"):
                n = q // channels
                c = q % channels
                s = (c % groups) * per_group + c // groups
                memcpy(out + q * plane, source[s] + n * image_stride[s], plane * sizeof(float))
    finally:
        free(source)
        free(image_stride)
