"""Build facts of the compiled kernels, queried at run time."""
from pyconv._core.parallel cimport pyconv_openmp_enabled, pyconv_omp_max_threads


def openmp_enabled() -> bool:
    """Whether the kernels were compiled with OpenMP."""
    return bool(pyconv_openmp_enabled())


def openmp_max_threads() -> int:
    """OpenMP's default team size (1 without OpenMP)."""
    return pyconv_omp_max_threads()
