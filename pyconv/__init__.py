"""pyconv: a Cython-accelerated, pure-CPU inference engine for convolutional networks.

Top-level names are imported lazily so that ``import pyconv`` stays cheap;
``pyconv.ops`` holds the functional API, ``pyconv.load`` reads a model file.
"""
from __future__ import annotations

import importlib
import os

# How idle OpenMP workers wait for the next parallel loop (libgomp reads this
# when the first kernel module loads it; a value the user exported wins).
# Spinning forever (ACTIVE) steals the cores it waits for whenever the machine
# has more runnable threads than cores: ResNet-18 ran 25x slower at 2 threads
# on a busy 2-core machine.  Sleeping at once (PASSIVE) pays a wake-up per
# loop and cancelled the whole 2-thread gain on an idle one.  A short spin
# (~tens of microseconds) covers the gaps between a layer's loops:
# ResNet-18 34.5 -> 19.7 ms at 2 threads idle, as fast as ACTIVE.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["GOMP_SPINCOUNT"] = "30000"

from pyconv._version import __version__
from pyconv.errors import (
    FormatVersionError,
    ImageError,
    InputError,
    ModelError,
    PyconvError,
    UnsafeFileError,
    UnsupportedOpError,
)
from pyconv._threads import get_num_threads, set_num_threads

# name -> module that defines it, imported on first access
_LAZY = {
    "ops": "pyconv.ops",
    "show_config": "pyconv._config",
    "load": "pyconv.graph.executor",
    "Model": "pyconv.graph.executor",
    "GraphBuilder": "pyconv.graph.builder",
}

__all__ = [
    "__version__",
    "get_num_threads",
    "set_num_threads",
    "PyconvError",
    "ModelError",
    "UnsupportedOpError",
    "FormatVersionError",
    "InputError",
    "ImageError",
    "UnsafeFileError",
    *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyconv' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"pyconv.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
