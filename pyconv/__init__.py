"""pyconv: a Cython-accelerated, pure-CPU inference engine for convolutional networks.

Top-level names are imported lazily so that ``import pyconv`` stays cheap;
``pyconv.ops`` holds the functional API, ``pyconv.load`` reads a model file.
"""
from __future__ import annotations

import importlib
import os

# OpenMP workers that spin-wait between parallel regions steal the cores they
# wait for whenever the machine has more runnable threads than cores (a shared
# box, a second process, Python threads): measured 25x slower ResNet-18 at 2
# threads on a busy 2-core machine, against 1.9x faster with passive waiting.
# Must be set before libgomp is loaded by the first kernel module; a value
# the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
