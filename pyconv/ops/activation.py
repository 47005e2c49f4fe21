"""Activations and softmax.

Every function takes a float32 array of any shape (channel axis 1 for
``prelu``), returns an array of the same shape and accepts ``out=``; ``out``
may be ``x`` itself (in place).  NaN propagates as in PyTorch.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from pyconv._core import activation as _kernels
from pyconv._threads import threads_for
from pyconv.ops._args import as_float32, check_out
from pyconv.ops._spec_helpers import bind_with_out, numel, per_element_counts, same_shape
from pyconv.registry import OpSpec, register

__all__ = [
    "relu", "relu6", "clip", "leaky_relu", "prelu", "elu", "sigmoid", "tanh", "silu",
    "hardsigmoid", "hardswish", "gelu", "softmax", "log_softmax",
]

# Element operations per element, for the threading decision: comparisons are
# cheap, transcendental functions cost roughly ten of them.
_CHEAP, _TRANSCENDENTAL = 1, 10


def _pointwise(kind: str, x, out, a: float = 0.0, b: float = 0.0, cost: int = _TRANSCENDENTAL) -> np.ndarray:
    x = as_float32(x)
    y = check_out(out, x.shape)
    _kernels.activation_forward(
        _kernels.KINDS[kind], x.reshape(-1), y.reshape(-1), a, b, threads_for(x.size * cost)
    )
    return y


def relu(x, out: Optional[np.ndarray] = None) -> np.ndarray:
    """max(x, 0)."""
    return _pointwise("clip", x, out, 0.0, math.inf, _CHEAP)


def relu6(x, out: Optional[np.ndarray] = None) -> np.ndarray:
    """min(max(x, 0), 6)."""
    return _pointwise("clip", x, out, 0.0, 6.0, _CHEAP)


def clip(x, min: Optional[float] = None, max: Optional[float] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Clamp to [min, max] (PyTorch ``clamp`` / ONNX ``Clip``); None means unbounded."""
    lo = -math.inf if min is None else float(min)
    hi = math.inf if max is None else float(max)
    if lo > hi:
        raise ValueError(f"clip needs min <= max, got min={min!r}, max={max!r}")
    return _pointwise("clip", x, out, lo, hi, _CHEAP)


def leaky_relu(x, negative_slope: float = 0.01, out: Optional[np.ndarray] = None) -> np.ndarray:
    """x if x >= 0 else negative_slope * x."""
    return _pointwise("leaky_relu", x, out, float(negative_slope), 0.0, _CHEAP)


def prelu(x, slope, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Leaky ReLU with a learned slope: one per channel (axis 1, shape (C,)) or one shared (shape (1,))."""
    x = as_float32(x)
    slope = as_float32(slope, "slope").reshape(-1)
    if x.ndim < 2:
        raise ValueError(f"prelu needs x with a channel axis (ndim >= 2), got shape {x.shape}")
    channels = x.shape[1]
    if slope.size == 1:
        return _pointwise("leaky_relu", x, out, float(slope[0]), 0.0, _CHEAP)
    if slope.size != channels:
        raise ValueError(f"prelu slope must have 1 or C={channels} elements, got {slope.size}")
    y = check_out(out, x.shape)
    plane = numel(x.shape[2:])
    _kernels.prelu_forward(x.reshape(-1), y.reshape(-1), slope, channels, plane, threads_for(x.size))
    return y


def elu(x, alpha: float = 1.0, out: Optional[np.ndarray] = None) -> np.ndarray:
    """x if x > 0 else alpha * (exp(x) - 1)."""
    return _pointwise("elu", x, out, float(alpha))


def sigmoid(x, out: Optional[np.ndarray] = None) -> np.ndarray:
    """1 / (1 + exp(-x)), evaluated without overflow for any |x|."""
    return _pointwise("sigmoid", x, out)


def tanh(x, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Hyperbolic tangent."""
    return _pointwise("tanh", x, out)


def silu(x, out: Optional[np.ndarray] = None) -> np.ndarray:
    """x * sigmoid(x) (also called swish)."""
    return _pointwise("silu", x, out)


def hardsigmoid(x, alpha: float = 1.0 / 6.0, beta: float = 0.5, out: Optional[np.ndarray] = None) -> np.ndarray:
    """clamp(alpha * x + beta, 0, 1).

    The defaults are PyTorch's ``hardsigmoid`` (x / 6 + 1/2); ONNX ``HardSigmoid``
    defaults to alpha=0.2, beta=0.5 (pass them explicitly)."""
    return _pointwise("hardsigmoid", x, out, float(alpha), float(beta), _CHEAP)


def hardswish(x, out: Optional[np.ndarray] = None) -> np.ndarray:
    """x * clamp(x / 6 + 1/2, 0, 1) (PyTorch and ONNX ``HardSwish`` agree)."""
    return _pointwise("hardswish", x, out, cost=_CHEAP)


def gelu(x, approximate: str = "none", out: Optional[np.ndarray] = None) -> np.ndarray:
    """GELU: exact x/2 (1 + erf(x/sqrt 2)) for ``approximate="none"``, the tanh form for ``"tanh"``."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return _pointwise("gelu_erf" if approximate == "none" else "gelu_tanh", x, out)


def _softmax(x, axis: int, log: bool, out) -> np.ndarray:
    x = as_float32(x)
    if x.ndim == 0:
        raise ValueError("softmax needs at least one dimension, got a scalar")
    if not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an int in [{-x.ndim}, {x.ndim}) for shape {x.shape}, got {axis!r}")
    axis = int(axis) % x.ndim
    y = check_out(out, x.shape)
    outer, length, inner = numel(x.shape[:axis]), x.shape[axis], numel(x.shape[axis + 1:])
    _kernels.softmax_forward(x.reshape(-1), y.reshape(-1), outer, length, inner, log,
                             threads_for(x.size * _TRANSCENDENTAL))
    return y


def softmax(x, axis: int = -1, out: Optional[np.ndarray] = None) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along ``axis`` (ONNX opset-13 semantics; PyTorch ``dim``)."""
    return _softmax(x, axis, False, out)


def log_softmax(x, axis: int = -1, out: Optional[np.ndarray] = None) -> np.ndarray:
    """x - max - log(sum(exp(x - max))) along ``axis``."""
    return _softmax(x, axis, True, out)


# ---------------------------------------------------------------- references (float64)

def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _sigmoid_ref(x):
    x = _f64(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _gelu_ref(x, approximate="none"):
    x = _f64(x)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax_ref(x, axis=-1, log=False):
    x = _f64(x)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    log_sum = np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return shifted - log_sum if log else np.exp(shifted - log_sum)


def _prelu_ref(x, slope):
    x, slope = _f64(x), _f64(slope).reshape(-1)
    shape = (1, -1) + (1,) * (x.ndim - 2) if slope.size > 1 else (1,)
    return np.where(x >= 0, x, x * slope.reshape(shape))


_REFERENCES = {
    "relu": lambda x: np.maximum(_f64(x), 0.0),
    "relu6": lambda x: np.minimum(np.maximum(_f64(x), 0.0), 6.0),
    "clip": lambda x, min=None, max=None: np.clip(
        _f64(x), -np.inf if min is None else min, np.inf if max is None else max),
    "leaky_relu": lambda x, negative_slope=0.01: np.where(_f64(x) >= 0, _f64(x), negative_slope * _f64(x)),
    "prelu": _prelu_ref,
    "elu": lambda x, alpha=1.0: np.where(_f64(x) > 0, _f64(x), alpha * np.expm1(np.minimum(_f64(x), 0))),
    "sigmoid": _sigmoid_ref,
    "tanh": lambda x: np.tanh(_f64(x)),
    "silu": lambda x: _f64(x) * _sigmoid_ref(x),
    "hardsigmoid": lambda x, alpha=1.0 / 6.0, beta=0.5: np.clip(alpha * _f64(x) + beta, 0.0, 1.0),
    "hardswish": lambda x: _f64(x) * np.clip(_f64(x) / 6.0 + 0.5, 0.0, 1.0),
    "gelu": _gelu_ref,
    "softmax": lambda x, axis=-1: _softmax_ref(x, axis, log=False),
    "log_softmax": lambda x, axis=-1: _softmax_ref(x, axis, log=True),
}

def _prelu_shape(input_shapes, weight_shapes, attrs):
    shape, slope = tuple(input_shapes[0]), numel(weight_shapes["slope"])
    if len(shape) < 2 or slope not in (1, shape[1]):
        raise ValueError(f"prelu slope has {slope} elements; input {shape} needs 1 or one per channel (axis 1)")
    return [shape]


def _softmax_shape(input_shapes, weight_shapes, attrs):
    shape = tuple(input_shapes[0])
    axis = attrs["axis"]
    if not shape or not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
        raise ValueError(f"softmax axis {axis!r} is out of range for input {shape}")
    return [shape]


_SHAPE_RULES = {"prelu": _prelu_shape, "softmax": _softmax_shape, "log_softmax": _softmax_shape}

_ATTRS = {
    "clip": {"min": None, "max": None},
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "hardsigmoid": {"alpha": 1.0 / 6.0, "beta": 0.5},
    "gelu": {"approximate": "none"},
    "softmax": {"axis": -1},
    "log_softmax": {"axis": -1},
}
_ADDS_PER_ELEMENT = {"softmax": 3, "log_softmax": 3}

for _fn in (relu, relu6, clip, leaky_relu, prelu, elu, sigmoid, tanh, silu, hardsigmoid, hardswish, gelu,
            softmax, log_softmax):
    _name = _fn.__name__
    register(OpSpec(
        name=_name,
        fn=_fn,
        infer_shape=_SHAPE_RULES.get(_name, same_shape),
        weights=("slope",) if _name == "prelu" else (),
        attrs=_ATTRS.get(_name, {}),
        count=per_element_counts(adds=_ADDS_PER_ELEMENT.get(_name, 1)),
        prepare=bind_with_out(_fn),
        reference=_REFERENCES[_name],
        inplace=True,
        doc=(_fn.__doc__ or "").splitlines()[0],
    ))
