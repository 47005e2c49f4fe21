"""Constant folding: a small NumPy evaluator for the ONNX ops exporters use to
compute shapes and weights (Shape -> Gather -> Unsqueeze -> Concat -> Reshape,
Constant, ConstantOfShape, Cast, ...).

Values are NumPy arrays.  A shape that depends on a dynamic input dimension is
an ``object`` array holding ints and :class:`Dim` symbols; the shape-only ops
(Gather, Concat, Unsqueeze, Squeeze, Slice, Reshape, Identity, Cast) carry the
symbols through.  Elementwise arithmetic keeps what the importer can use: a
symbol times a constant stays that symbol with a scale (``H * 2``: an upsampled
size), a scaled symbol over its own symbol is a plain number (a scale factor);
any other expression becomes an opaque symbol (usable as a reshape's ``-1``).
Ops that need actual values raise :class:`NotFoldable`, so the importer can say
which node needs a fixed ``--input-shape``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np


class NotFoldable(Exception):
    """The node cannot be evaluated at conversion time (reason in the message)."""


@dataclass(frozen=True)
class Dim:
    """A dynamic dimension: the input dimension ``name`` (e.g. ``N``, ``H``) times ``scale``.

    Deliberately supports no Python arithmetic (see :func:`_symbolic_binary`)."""

    name: str
    scale: float = 1.0

    def __repr__(self) -> str:
        return self.name if self.scale == 1 else f"{self.name}*{self.scale:g}"


def _opaque(text: str) -> Dim:
    """A symbol for an expression nothing downstream can take apart."""
    return Dim(f"({text})")


Value = np.ndarray
Folder = Callable[[List[Optional[Value]], Mapping[str, Any], int], List[Value]]

# ONNX TensorProto data types -> NumPy
ONNX_DTYPES = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}


def has_symbols(value: Value) -> bool:
    """True when ``value`` holds dynamic dimensions."""
    return value.dtype == object and any(isinstance(v, Dim) for v in value.flat)


def _numeric(value: Optional[Value], what: str = "input") -> Value:
    if value is None:
        raise NotFoldable(f"missing {what}")
    if has_symbols(value):
        raise NotFoldable(f"arithmetic on a dynamic dimension ({value.tolist()}); fix it with --input-shape")
    if value.dtype == object:
        return value.astype(np.int64)
    return value


def _ints(value: Optional[Value]) -> Optional[List[int]]:
    return None if value is None else [int(v) for v in _numeric(value).reshape(-1)]


def _axes(attrs: Mapping[str, Any], inputs: Sequence[Optional[Value]], index: int) -> Optional[List[int]]:
    """Axes given as an attribute (older opsets) or as input ``index`` (newer)."""
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    return None


def _constant(inputs, attrs, opset):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in attrs:
            value = attrs[key]
            if key.endswith("float") or key.endswith("floats"):
                return [np.asarray(value, dtype=np.float32)]
            if key.endswith("int") or key.endswith("ints"):
                return [np.asarray(value, dtype=np.int64)]
            return [np.asarray(value)]
    raise NotFoldable(f"Constant with attributes {sorted(attrs)} is not supported")


def _constant_of_shape(inputs, attrs, opset):
    shape = _ints(inputs[0])
    fill = attrs.get("value")
    fill = np.zeros(1, dtype=np.float32) if fill is None else np.asarray(fill)
    return [np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)]


def _gather(inputs, attrs, opset):
    data, indices = inputs[0], _numeric(inputs[1], "indices")
    return [np.take(data, indices.astype(np.int64), axis=attrs.get("axis", 0))]


def _cast(inputs, attrs, opset):
    dtype = ONNX_DTYPES.get(attrs["to"])
    if dtype is None:
        raise NotFoldable(f"Cast to ONNX type {attrs['to']} is not supported")
    value = inputs[0]
    if has_symbols(value):
        if dtype is np.bool_:
            raise NotFoldable("Cast of a dynamic dimension to bool")
        return [value]  # symbols stand for numbers of any type
    return [value.astype(dtype)]


def _unsqueeze(inputs, attrs, opset):
    value, axes = inputs[0], _axes(attrs, inputs, 1)
    rank = value.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        value = np.expand_dims(value, axis)
    return [value]


def _squeeze(inputs, attrs, opset):
    value, axes = inputs[0], _axes(attrs, inputs, 1)
    if axes is None:
        return [np.squeeze(value)]
    return [np.squeeze(value, axis=tuple(a % value.ndim for a in axes))]


def _concat(inputs, attrs, opset):
    parts = [v for v in inputs if v is not None]
    if any(p.dtype == object for p in parts):
        parts = [p.astype(object) for p in parts]
    return [np.concatenate(parts, axis=attrs["axis"])]


def reshape_shape(in_shape: Sequence[Any], target: Sequence[int], allowzero: bool = False) -> List[Any]:
    """ONNX Reshape's output shape (0 copies the input dim unless ``allowzero``; one -1 is inferred)."""
    shape = [in_shape[i] if (t == 0 and not allowzero) else t for i, t in enumerate(target)]
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        total = int(np.prod(in_shape))
        shape[shape.index(-1)] = total // known if known else 0
    return shape


def _reshape(inputs, attrs, opset):
    value = inputs[0]
    target = _ints(inputs[1]) if len(inputs) > 1 else list(attrs["shape"])
    return [value.reshape(reshape_shape(value.shape, target, bool(attrs.get("allowzero", 0))))]


def _flatten(inputs, attrs, opset):
    value, axis = inputs[0], attrs.get("axis", 1) % max(inputs[0].ndim, 1)
    return [value.reshape(int(np.prod(value.shape[:axis])), -1)]


def _transpose(inputs, attrs, opset):
    perm = attrs.get("perm")
    return [np.transpose(inputs[0], perm)]


def slice_params(rank: int, starts, ends, axes, steps):
    """Normalised ``(axes, starts, ends, steps)`` lists for an ONNX Slice."""
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
    steps = [1] * len(starts) if steps is None else list(steps)
    return axes, list(starts), list(ends), steps


def _slice(inputs, attrs, opset):
    value = inputs[0]
    if opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 else None
        steps = _ints(inputs[4]) if len(inputs) > 4 else None
    index = [slice(None)] * value.ndim
    for axis, start, end, step in zip(*slice_params(value.ndim, starts, ends, axes, steps)):
        # NumPy clamps out-of-range bounds exactly as ONNX does (INT64_MAX/MIN included)
        index[axis] = slice(start, end, step)
    return [value[tuple(index)]]


def _int_div(a: Value, b: Value) -> Value:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        # ONNX integer Div truncates toward zero; NumPy's // floors
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    return a / b


_SYMBOLS = {"Mul": "*", "Div": "/", "Add": "+", "Sub": "-"}


def _symbolic_binary(op: str, a: Any, b: Any, float_division: bool) -> Any:
    """One element of Mul/Div/Add/Sub in which an operand may be a :class:`Dim`."""
    a_dim, b_dim = isinstance(a, Dim), isinstance(b, Dim)
    if not a_dim and not b_dim:
        return _FOLDERS_NUMERIC[op](np.asarray(a), np.asarray(b)).item()
    if op == "Mul" and a_dim != b_dim:
        dim, factor = (a, b) if a_dim else (b, a)
        return Dim(dim.name, dim.scale * float(factor))
    if op == "Div" and a_dim and b_dim and a.name == b.name:
        return a.scale / b.scale  # e.g. the scale factor of a resize: (H * 2) / H
    if op == "Div" and a_dim and float_division:
        return Dim(a.name, a.scale / float(b))
    return _opaque(f"{a}{_SYMBOLS[op]}{b}")


def _symbolic_arithmetic(op: str) -> Folder:
    def fold(inputs, attrs, opset):
        a, b = inputs[0], inputs[1]
        if a is None or b is None:
            raise NotFoldable("missing input")
        if a.size > 64 or b.size > 64:
            raise NotFoldable("arithmetic on a large symbolic tensor")
        float_division = any(v.dtype.kind == "f" for v in (a, b))
        combine = np.frompyfunc(lambda x, y: _symbolic_binary(op, x, y, float_division), 2, 1)
        result = np.asarray(combine(a, b), dtype=object)
        return [result if has_symbols(result) else np.asarray(result.tolist())]

    return fold


def _symbolic_rounding(fn: Callable[[Value], Value]) -> Folder:
    def fold(inputs, attrs, opset):
        value = inputs[0]
        if not has_symbols(value):
            return [np.asarray(fn(_numeric(value)))]
        keep = lambda d: d if not isinstance(d, Dim) or float(d.scale).is_integer() \
            else _opaque(f"{fn.__name__}({d})")  # noqa: E731
        return [np.asarray(np.frompyfunc(keep, 1, 1)(value), dtype=object)]

    return fold


def _elementwise(fn: Callable[..., Value]) -> Folder:
    def fold(inputs, attrs, opset):
        args = [_numeric(v) for v in inputs if v is not None]
        result = np.asarray(fn(*args))
        if result.dtype == np.float64 and all(a.dtype != np.float64 for a in args):
            result = result.astype(np.float32)
        return [result]

    return fold


def _variadic(fn: Callable[[Value, Value], Value]) -> Folder:
    def fold(inputs, attrs, opset):
        args = [_numeric(v) for v in inputs if v is not None]
        result = args[0]
        for arg in args[1:]:
            result = fn(result, arg)
        return [np.asarray(result)]

    return fold


def _range(inputs, attrs, opset):
    start, limit, delta = (_numeric(v).reshape(()) for v in inputs)
    return [np.arange(start, limit, delta).astype(start.dtype)]


def _expand(inputs, attrs, opset):
    value, shape = _numeric(inputs[0]), _ints(inputs[1])
    return [value * np.ones(shape, dtype=value.dtype)]


def _tile(inputs, attrs, opset):
    return [np.tile(_numeric(inputs[0]), _ints(inputs[1]))]


def _reduce(fn: Callable[..., Value]) -> Folder:
    def fold(inputs, attrs, opset):
        value, axes = _numeric(inputs[0]), _axes(attrs, inputs, 1)
        keep = bool(attrs.get("keepdims", 1))
        return [np.asarray(fn(value, axis=None if axes is None else tuple(axes), keepdims=keep))]

    return fold


def _dequantize_linear(inputs, attrs, opset):
    """Quantized weights: ``(x - zero_point) * scale``, per tensor or per ``axis``."""
    x = _numeric(inputs[0]).astype(np.float32)
    scale = _numeric(inputs[1]).astype(np.float32)
    zero = np.zeros((), np.float32) if len(inputs) < 3 or inputs[2] is None else _numeric(inputs[2]).astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:  # per-axis
        shape = [1] * x.ndim
        shape[attrs.get("axis", 1) % x.ndim] = scale.size
        scale, zero = scale.reshape(shape), (zero.reshape(shape) if zero.ndim else zero)
    if attrs.get("block_size"):
        raise NotFoldable("blocked DequantizeLinear")
    return [(x - zero) * scale]


def _identity(inputs, attrs, opset):
    return [inputs[0]]


def _where(inputs, attrs, opset):
    return [np.where(_numeric(inputs[0]).astype(bool), inputs[1], inputs[2])]


FOLDERS: Dict[str, Folder] = {
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Gather": _gather,
    "Cast": _cast,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Slice": _slice,
    "Identity": _identity,
    "DequantizeLinear": _dequantize_linear,
    "Dropout": _identity,
    "Add": _elementwise(np.add),
    "Sub": _elementwise(np.subtract),
    "Mul": _elementwise(np.multiply),
    "Div": _elementwise(_int_div),
    "Pow": _elementwise(np.power),
    "Neg": _elementwise(np.negative),
    "Abs": _elementwise(np.abs),
    "Sqrt": _elementwise(np.sqrt),
    "Reciprocal": _elementwise(np.reciprocal),
    "Floor": _symbolic_rounding(np.floor),
    "Ceil": _symbolic_rounding(np.ceil),
    "Exp": _elementwise(np.exp),
    "Log": _elementwise(np.log),
    "Relu": _elementwise(lambda x: np.maximum(x, 0)),
    "Sigmoid": _elementwise(lambda x: 1.0 / (1.0 + np.exp(-x))),
    "Tanh": _elementwise(np.tanh),
    "Equal": _elementwise(np.equal),
    "Less": _elementwise(np.less),
    "Greater": _elementwise(np.greater),
    "Not": _elementwise(np.logical_not),
    "Where": _where,
    "Sum": _variadic(np.add),
    "Min": _variadic(np.minimum),
    "Max": _variadic(np.maximum),
    "Range": _range,
    "Expand": _expand,
    "Tile": _tile,
    "ReduceProd": _reduce(np.prod),
    "ReduceSum": _reduce(np.sum),
    "ReduceMean": _reduce(np.mean),
    "ReduceMax": _reduce(np.max),
    "ReduceMin": _reduce(np.min),
}


_FOLDERS_NUMERIC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _int_div}
_SYMBOLIC_FOLDERS = {op: _symbolic_arithmetic(op) for op in _FOLDERS_NUMERIC}


def fold(op_type: str, inputs: List[Optional[Value]], attrs: Mapping[str, Any], opset: int) -> List[Value]:
    """Evaluate one ONNX node on constant inputs; NotFoldable when it cannot be done here."""
    folder = FOLDERS.get(op_type)
    if op_type in _SYMBOLIC_FOLDERS and any(v is not None and has_symbols(v) for v in inputs):
        folder = _SYMBOLIC_FOLDERS[op_type]
    if folder is None:
        raise NotFoldable(f"{op_type} is not evaluated at conversion time")
    try:
        results = folder(inputs, attrs, opset)
        # indexing an object array with a scalar gives back a bare Dim or int
        return [r if isinstance(r, np.ndarray) else np.asarray(r, dtype=object if isinstance(r, Dim) else None)
                for r in results]
    except NotFoldable:
        raise
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise NotFoldable(f"cannot evaluate {op_type}: {exc}") from None
