# OpenMP helpers usable with or without an OpenMP build.
# Kernels take an explicit ``nthreads`` argument (decided in Python by
# pyconv._threads) and pass it as ``prange(..., num_threads=nthreads)``.
cdef extern from "parallel.h" nogil:
    int pyconv_openmp_enabled()
    int pyconv_omp_max_threads()
    int pyconv_omp_thread_id()
