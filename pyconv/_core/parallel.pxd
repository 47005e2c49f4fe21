# OpenMP helpers usable with or without an OpenMP build.
# Kernels take an explicit ``nthreads`` argument (decided in Python by
# pyconv._threads) and pass it as ``prange(..., num_threads=nthreads)``.
cdef extern from "parallel.h" nogil:
    int pyconv_openmp_enabled()
    int pyconv_omp_max_threads()
    int pyconv_omp_thread_id()


cdef inline Py_ssize_t thread_stride(Py_ssize_t floats) noexcept nogil:
    """Floats between the starts of two threads' scratch buffers holding ``floats`` each:
    whole cache lines and one spare, so the end of one thread's buffer never shares a
    line with the start of the next (false sharing made a 2-thread max pool of
    24 x 112 x 112 3x slower than it is with this gap)."""
    return (floats + 31) // 16 * 16 + 16
