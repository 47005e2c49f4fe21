"""Converters from other formats to pyconv graphs (``onnx`` is an optional dependency)."""
from pyconv.convert.onnx_import import from_onnx

__all__ = ["from_onnx"]
