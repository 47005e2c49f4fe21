# ShuffleNet channel shuffle: view C as (groups, C / groups), transpose to
# (C / groups, groups).  Whole planes move, so each task is one memcpy.
from cython.parallel cimport prange
from libc.string cimport memcpy


def channel_shuffle_forward(const float[::1] x, float[::1] y, Py_ssize_t batch, Py_ssize_t channels,
                            Py_ssize_t groups, Py_ssize_t plane, int nthreads):
    """y[n, j * groups + i] = x[n, i * (channels / groups) + j] (``y`` must not alias ``x``)."""
    cdef Py_ssize_t per_group = channels // groups
    cdef Py_ssize_t q, n, c, src
    if plane == 0:
        return
    with nogil:
        for q in prange(batch * channels, num_threads=nthreads, schedule="static"):
            n = q // channels
            c = q % channels
            src = n * channels + (c % groups) * per_group + c // groups
            memcpy(&y[q * plane], &x[src * plane], plane * sizeof(float))
