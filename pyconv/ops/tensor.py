"""Tensor ops: elementwise arithmetic, concat/split/slice, reshape, transpose, pad, resize, linear, channel shuffle."""
__all__: list = []
