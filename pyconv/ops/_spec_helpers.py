"""Small pieces shared by the OpSpec declarations of the activation, norm and tensor families."""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from pyconv.registry import Counts


def numel(shape) -> int:
    """Elements of an array of ``shape`` (Python ints: no overflow, and ~20x cheaper than
    np.prod, which ran on every flatten)."""
    return math.prod(int(d) for d in shape)


def same_shape(input_shapes, weight_shapes, attrs):
    """Shape rule of pointwise ops: the output has the first input's shape."""
    return [tuple(input_shapes[0])]


def per_element_counts(adds: int = 1, macs: int = 0) -> Callable[..., Counts]:
    """Count rule: ``adds``/``macs`` per output element, parameters = weight sizes."""

    def count(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
        n = sum(numel(s) for s in output_shapes)
        params = sum(numel(s) for s in weight_shapes.values())
        return Counts(params=params, macs=macs * n, adds=adds * n)

    return count


def bind_with_out(fn: Callable) -> Callable:
    """``prepare`` for ops whose functional API takes ``out=`` (lets the executor run them in place)."""

    def prepare(weights: Mapping[str, np.ndarray], attrs: Mapping):
        bound = {**weights, **attrs}

        def call(*inputs, out=None):
            return fn(*inputs, **bound, out=out)

        return call

    return prepare
