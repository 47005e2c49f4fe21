"""Thread control for the BLAS behind ``scipy.linalg.cython_blas``.

SciPy does not expose its BLAS's thread setting, so the shared library is
found next to SciPy and its ``*_set_num_threads`` symbol called through ctypes
(the approach threadpoolctl takes, reduced to the libraries SciPy ships).
When nothing is found the BLAS keeps its own default and ``describe()`` says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import lru_cache
from typing import Optional, Tuple

_SET_SYMBOLS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads",
                "scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_")
_CONFIG_SYMBOLS = ("scipy_openblas_get_config", "openblas_get_config", "openblas_get_config64_")


def _candidate_libraries() -> list:
    import scipy

    scipy_dir = os.path.dirname(scipy.__file__)
    patterns = [
        os.path.join(scipy_dir, os.pardir, "scipy.libs", "*openblas*"),  # Linux wheels
        os.path.join(scipy_dir, ".dylibs", "*openblas*"),  # macOS wheels
    ]
    paths = [p for pattern in patterns for p in sorted(glob.glob(pattern))]
    system = ctypes.util.find_library("openblas")
    if system:
        paths.append(system)
    return paths


@lru_cache(maxsize=1)
def _library() -> Optional[Tuple[ctypes.CDLL, str, str]]:
    """(library, set-threads symbol, path) of SciPy's OpenBLAS, if found."""
    for path in _candidate_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _SET_SYMBOLS:
            if hasattr(lib, symbol):
                return lib, symbol, path
    return None


def set_threads(n: int) -> bool:
    """Set the BLAS thread count; False when the BLAS cannot be controlled."""
    found = _library()
    if found is None:
        return False
    lib, symbol, _ = found
    getattr(lib, symbol)(ctypes.c_int(n))
    return True


def describe() -> str:
    """One line naming the BLAS in use."""
    found = _library()
    if found is None:
        return "SciPy's BLAS (thread count not controllable from pyconv)"
    lib, _, path = found
    for symbol in _CONFIG_SYMBOLS:
        if hasattr(lib, symbol):
            func = getattr(lib, symbol)
            func.restype = ctypes.c_char_p
            return f"{func().decode(errors='replace')} ({os.path.basename(path)})"
    return os.path.basename(path)
