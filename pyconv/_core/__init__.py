"""Compiled hot loops (Cython). No Python-level policy lives here: argument
checking, algorithm choice and thread counts are decided in ``pyconv.ops``."""
