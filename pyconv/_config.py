"""``pyconv.show_config()``: how this installation was built and runs."""
from __future__ import annotations

import platform
import sys


def config() -> dict:
    """Build and run-time configuration as a dict (what show_config prints)."""
    import numpy
    import scipy

    from pyconv import _blas, _build_config, _threads
    from pyconv._core import runtime
    from pyconv._version import __version__

    return {
        "pyconv": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "openmp": "on" if runtime.openmp_enabled() else "off (kernels run on one thread)",
        "blas": _blas.describe(),
        "compiler": _build_config.COMPILER,
        "compile flags": _build_config.COMPILE_ARGS,
        "threads": _threads.get_num_threads(),
        "cpus available": _threads.available_cpus(),
    }


def show_config() -> None:
    """Print version, OpenMP on/off, BLAS in use, compiler flags and thread count."""
    for key, value in config().items():
        print(f"{key + ':':<16} {value}")
