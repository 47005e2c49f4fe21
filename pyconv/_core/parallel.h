/* OpenMP queries that also compile without OpenMP (then: one thread). */
#ifndef PYCONV_PARALLEL_H
#define PYCONV_PARALLEL_H
#ifdef _OPENMP
#include <omp.h>
static int pyconv_openmp_enabled(void) { return 1; }
static int pyconv_omp_max_threads(void) { return omp_get_max_threads(); }
static int pyconv_omp_thread_id(void) { return omp_get_thread_num(); }
#else
static int pyconv_openmp_enabled(void) { return 0; }
static int pyconv_omp_max_threads(void) { return 1; }
static int pyconv_omp_thread_id(void) { return 0; }
#endif
#endif
