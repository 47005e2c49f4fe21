"""Compiled hot loops (Cython). No Python-level policy lives here: argument
checking, algorithm choice and thread counts are decided in ``pyconv.ops``."""


def _preload_cython_blas() -> None:
    """Load ``scipy.linalg.cython_blas`` (the sgemm our kernels cimport) by itself.

    A cimport imports the module at run time, and importing it the ordinary way first
    runs ``scipy/linalg/__init__.py``, which imports all of scipy.linalg and, through
    its array-API layer, numpy.testing and numpy.f2py: ~170 ms of CPU on the first
    ``pyconv.load``.  The extension module itself needs only the ``scipy`` package.
    Anything unexpected leaves the ordinary import to happen."""
    import sys

    name = "scipy.linalg.cython_blas"
    if name in sys.modules:
        return
    import importlib.machinery
    import importlib.util
    import os

    try:
        scipy_spec = importlib.util.find_spec("scipy")
        if scipy_spec is None or not scipy_spec.submodule_search_locations:
            return
        linalg = os.path.join(list(scipy_spec.submodule_search_locations)[0], "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(linalg, "cython_blas" + suffix)
            if os.path.exists(path):
                break
        else:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    except Exception:  # noqa: BLE001 - an optimisation only: the cimport imports it normally
        return


_preload_cython_blas()
