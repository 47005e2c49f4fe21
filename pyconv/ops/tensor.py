"""Tensor ops: elementwise arithmetic, concat/split/slice, reshape, transpose, pad, resize, linear,
channel shuffle, identity and constant.

Arithmetic, channel shuffle and resize run Cython kernels; pure data movement
(concat, split, slice, reshape, transpose, pad) uses NumPy, which already does
it at memory speed; ``linear`` is one NumPy ``matmul`` (NumPy's BLAS).  Ops with
an ``out=`` argument write into it; see docs/layers.md for which may run in place.
"""
from __future__ import annotations

import builtins
import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from pyconv._core import channel_shuffle as _shuffle_kernels
from pyconv._core import elementwise as _elementwise
from pyconv._core import linear as _linear
from pyconv._core import resize as _resize
from pyconv._threads import threads_for
from pyconv.ops._args import as_float32, as_nchw, check_out
from pyconv.ops._spec_helpers import bind_with_out, numel, per_element_counts, same_shape
from pyconv.registry import REQUIRED, Counts, OpSpec, register

__all__ = [
    "add", "sub", "mul", "div", "concat", "split", "slice", "channel_shuffle", "concat_shuffle", "flatten",
    "reshape", "transpose", "linear", "pad", "resize", "upsample", "identity", "constant",
]


def _write(result: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    """``result`` copied into ``out`` when a buffer is given."""
    if out is None:
        return result
    out = check_out(out, result.shape)
    if out is not result:
        np.copyto(out, result)
    return out


def _axis(axis, ndim: int, name: str = "axis") -> int:
    if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be an int in [{-ndim}, {ndim}), got {axis!r}")
    return int(axis) % ndim


# ---------------------------------------------------------------- elementwise arithmetic

_UFUNCS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def _plane_broadcast(big: Tuple[int, ...], small: Tuple[int, ...]):
    """(batch_stride, channel_stride) when ``small`` is constant over each (n, c) plane of
    ``big`` (shapes like (N|1, C|1, 1, ..., 1) against (N, C, ...)); None otherwise."""
    if len(big) < 2 or len(small) > len(big):
        return None
    padded = (1,) * (len(big) - len(small)) + tuple(small)
    if any(d != 1 for d in padded[2:]) or padded[0] not in (1, big[0]) or padded[1] not in (1, big[1]):
        return None
    channel_stride = 1 if padded[1] == big[1] else 0
    batch_stride = padded[1] if padded[0] == big[0] else 0
    return batch_stride, channel_stride


def _binary(op: str, a, b, out: Optional[np.ndarray]) -> np.ndarray:
    a, b = as_float32(a, "a"), as_float32(b, "b")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
    y = check_out(out, shape)
    code = _elementwise.OPS[op]
    if a.shape == b.shape:
        _elementwise.binary_same_shape(code, a.reshape(-1), b.reshape(-1), y.reshape(-1), threads_for(y.size))
        return y
    for big, small, small_first in ((a, b, False), (b, a, True)):
        strides = _plane_broadcast(big.shape, small.shape) if big.shape == shape else None
        if strides is not None and big.size > 0:
            _elementwise.binary_per_plane(code, big.reshape(-1), small.reshape(-1), y.reshape(-1), big.shape[1],
                                          numel(big.shape[2:]), strides[0], strides[1], small_first,
                                          threads_for(y.size))
            return y
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        _UFUNCS[op](a, b, out=y)
    return y


def add(a, b, out: Optional[np.ndarray] = None) -> np.ndarray:
    """a + b with NumPy broadcasting (residual connections)."""
    return _binary("add", a, b, out)


def sub(a, b, out: Optional[np.ndarray] = None) -> np.ndarray:
    """a - b with NumPy broadcasting."""
    return _binary("sub", a, b, out)


def mul(a, b, out: Optional[np.ndarray] = None) -> np.ndarray:
    """a * b with NumPy broadcasting (squeeze-and-excitation: (N, C, H, W) * (N, C, 1, 1))."""
    return _binary("mul", a, b, out)


def div(a, b, out: Optional[np.ndarray] = None) -> np.ndarray:
    """a / b with NumPy broadcasting (IEEE: x / 0 = +-inf, 0 / 0 = NaN)."""
    return _binary("div", a, b, out)


# ---------------------------------------------------------------- concat / split / slice

def concat(*xs, axis: int = 1, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Join arrays along ``axis`` (Inception branches, DenseNet)."""
    if not xs:
        raise ValueError("concat needs at least one input")
    arrays = [as_float32(x, f"input {i}") for i, x in enumerate(xs)]
    shapes = [a.shape for a in arrays]
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"concat inputs must have the same number of dimensions, got shapes {shapes}")
    ax = _axis(axis, arrays[0].ndim)
    if len({s[:ax] + s[ax + 1:] for s in shapes}) != 1:
        raise ValueError(f"concat inputs must match except along axis {axis}, got shapes {shapes}")
    total = list(shapes[0])
    total[ax] = sum(s[ax] for s in shapes)
    y = check_out(out, tuple(total))
    np.concatenate(arrays, axis=ax, out=y)
    return y


def _split_sizes(length: int, sizes_or_count) -> List[int]:
    """Part lengths: a count gives ONNX ``num_outputs`` parts of ceil(length / count)
    (the last one shorter); a list gives the lengths themselves."""
    if isinstance(sizes_or_count, (int, np.integer)):
        count = int(sizes_or_count)
        if count < 1:
            raise ValueError(f"split count must be >= 1, got {count}")
        part = -(-length // count)
        sizes = [part] * (count - 1) + [length - part * (count - 1)]
        if sizes[-1] < 0 or (sizes[-1] == 0 and length > 0):
            raise ValueError(f"cannot split a length-{length} axis into {count} non-empty parts")
        return sizes
    if isinstance(sizes_or_count, (str, bytes)) or not all(
            isinstance(s, (int, np.integer)) for s in np.atleast_1d(np.asarray(sizes_or_count, dtype=object))):
        raise TypeError(f"sizes_or_count must be an int or a list of ints, got {sizes_or_count!r}")
    sizes = [int(s) for s in sizes_or_count]
    if not sizes or min(sizes) < 0 or sum(sizes) != length:
        raise ValueError(f"split sizes {sizes} must be non-negative and sum to the axis length {length}")
    return sizes


def split(x, sizes_or_count: Union[int, Sequence[int]] = 2, axis: int = 1,
          out: Optional[Sequence[np.ndarray]] = None) -> List[np.ndarray]:
    """Cut ``x`` along ``axis`` into parts (contiguous copies): an int is a number of parts
    (ONNX ``num_outputs``: equal parts, the last one shorter; note PyTorch's ``split`` takes a
    part *size* instead), a list gives each part's length."""
    x = as_float32(x)
    ax = _axis(axis, x.ndim)
    sizes = _split_sizes(x.shape[ax], sizes_or_count)
    if out is not None and len(out) != len(sizes):
        raise ValueError(f"split produces {len(sizes)} outputs but {len(out)} buffers were given")
    bounds = np.cumsum([0] + sizes)
    parts = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        index = (builtins.slice(None),) * ax + (builtins.slice(int(lo), int(hi)),)
        part_shape = x.shape[:ax] + (int(hi - lo),) + x.shape[ax + 1:]
        y = check_out(None if out is None else out[i], part_shape, f"out[{i}]")
        np.copyto(y, x[index])
        parts.append(y)
    return parts


def _slice_bounds(dim: int, start: int, end: int, step: int) -> builtins.slice:
    """ONNX Slice clamping of one axis, as a Python slice."""
    if step == 0:
        raise ValueError("slice steps must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return builtins.slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return builtins.slice(start, None if end < 0 else end, step)


def _slice_index(shape: Tuple[int, ...], starts, ends, axes, steps) -> Tuple[builtins.slice, ...]:
    ndim = len(shape)
    starts, ends = [int(s) for s in starts], [int(e) for e in ends]
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError(f"slice starts, ends, axes and steps must have equal lengths, got "
                         f"{len(starts)}, {len(ends)}, {len(axes)}, {len(steps)}")
    axes = [_axis(a, ndim, "slice axes") for a in axes]
    if len(set(axes)) != len(axes):
        raise ValueError(f"slice axes must not repeat, got {axes}")
    index = [builtins.slice(None)] * ndim
    for ax, start, end, step in zip(axes, starts, ends, steps):
        index[ax] = _slice_bounds(shape[ax], start, end, step)
    return tuple(index)


def slice(x, starts: Sequence[int], ends: Sequence[int], axes: Optional[Sequence[int]] = None,
          steps: Optional[Sequence[int]] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """ONNX ``Slice``: negative indices count from the end, out-of-range ones are clamped,
    negative steps walk backwards; ``axes`` defaults to the first len(starts) axes."""
    x = as_float32(x)
    view = x[_slice_index(x.shape, starts, ends, axes, steps)]
    y = check_out(out, view.shape)
    np.copyto(y, view)
    return y


# ---------------------------------------------------------------- shape ops

def _check_groups(groups, channels: int) -> int:
    if not isinstance(groups, (int, np.integer)) or groups < 1 or channels % groups:
        raise ValueError(f"groups must be a positive int dividing C={channels}, got {groups!r}")
    return int(groups)


def _shuffle(parts: List[np.ndarray], shape: Tuple[int, ...], groups: int, out: Optional[np.ndarray]) -> np.ndarray:
    if out is not None and builtins.any(np.may_share_memory(out, p) for p in parts):
        raise ValueError("channel_shuffle cannot run in place (out shares memory with an input)")
    y = check_out(out, shape)
    _shuffle_kernels.shuffle_channels(parts, y, groups, threads_for(y.size))
    return y


def channel_shuffle(x, groups: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """ShuffleNet channel shuffle: channels viewed as (groups, C/groups) are transposed."""
    x = np.ascontiguousarray(as_float32(x))
    if x.ndim < 2:
        raise ValueError(f"channel_shuffle needs x of shape (N, C, ...), got {x.shape}")
    return _shuffle([x], x.shape, _check_groups(groups, x.shape[1]), out)


def concat_shuffle(*xs, groups: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``channel_shuffle(concat(xs, axis=1), groups)`` in one pass (ShuffleNetV2's unit tail;
    the executor fuses the pair): the concatenation is never written out."""
    if not xs:
        raise ValueError("concat_shuffle needs at least one input")
    parts = [np.ascontiguousarray(as_float32(x, f"input {i}")) for i, x in enumerate(xs)]
    shape = _concat_shuffle_shape([p.shape for p in parts], {}, {"groups": groups})[0]
    return _shuffle(parts, shape, _check_groups(groups, shape[1]), out)


def _flatten_shape(shape: Tuple[int, ...], start_dim: int, end_dim: int, axis) -> Tuple[int, ...]:
    ndim = len(shape)
    if axis is not None:
        if not isinstance(axis, (int, np.integer)) or not -ndim <= axis <= ndim:
            raise ValueError(f"flatten axis must be an int in [{-ndim}, {ndim}], got {axis!r}")
        axis = int(axis) + ndim if axis < 0 else int(axis)
        return (numel(shape[:axis]), numel(shape[axis:]))
    if ndim == 0:
        return (1,)
    start, end = _axis(start_dim, ndim, "start_dim"), _axis(end_dim, ndim, "end_dim")
    if start > end:
        raise ValueError(f"flatten needs start_dim <= end_dim, got {start_dim} and {end_dim} for shape {shape}")
    return shape[:start] + (numel(shape[start:end + 1]),) + shape[end + 1:]


def flatten(x, start_dim: int = 1, end_dim: int = -1, axis: Optional[int] = None,
            out: Optional[np.ndarray] = None) -> np.ndarray:
    """PyTorch ``flatten(start_dim, end_dim)``; with ``axis`` given, ONNX ``Flatten`` instead:
    always 2-D, (prod(shape[:axis]), prod(shape[axis:])).  Returns a view unless ``out`` is given."""
    x = as_float32(x)
    return _write(x.reshape(_flatten_shape(x.shape, start_dim, end_dim, axis)), out)


def _reshape_target(shape: Tuple[int, ...], target: Sequence[int], allowzero: int) -> Tuple[int, ...]:
    """ONNX Reshape rules: 0 copies the input dim (unless allowzero), one -1 is inferred."""
    try:
        target = [int(d) for d in target]
    except TypeError:
        raise TypeError(f"reshape shape must be a list of ints, got {target!r}") from None
    dims = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(shape):
                raise ValueError(f"reshape shape {target} copies dim {i} (0) but the input {shape} has no such dim")
            d = shape[i]
        elif d < -1:
            raise ValueError(f"reshape shape entries must be >= -1, got {target}")
        dims.append(d)
    if dims.count(-1) > 1:
        raise ValueError(f"reshape shape may infer only one dim (-1), got {target}")
    total = numel(shape)
    if -1 in dims:
        known = numel([d for d in dims if d != -1])
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {shape} ({total} elements) to {target}")
        dims[dims.index(-1)] = total // known
    if numel(dims) != total:
        raise ValueError(f"cannot reshape {shape} ({total} elements) to {target}")
    return tuple(dims)


def reshape(x, shape: Sequence[int], allowzero: int = 0, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Reshape with ONNX rules (0 = keep that input dim, -1 = infer); a view unless ``out`` is given."""
    x = as_float32(x)
    return _write(x.reshape(_reshape_target(x.shape, shape, allowzero)), out)


def _perm(perm, ndim: int) -> Tuple[int, ...]:
    if perm is None:
        return tuple(range(ndim - 1, -1, -1))
    perm = tuple(int(p) for p in perm)
    if sorted(perm) != list(range(ndim)):
        raise ValueError(f"transpose perm must be a permutation of 0..{ndim - 1}, got {perm}")
    return perm


def transpose(x, perm: Optional[Sequence[int]] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Permute axes (ONNX ``Transpose``; ``perm=None`` reverses them) into a contiguous array."""
    x = as_float32(x)
    view = x.transpose(_perm(perm, x.ndim))
    y = check_out(out, view.shape)
    np.copyto(y, view)
    return y


def linear(x, weight, bias=None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """y = x @ weight.T + bias for x of shape (..., in) and weight (out, in) (PyTorch ``Linear``).

    sgemm of SciPy's BLAS through ``pyconv._core.linear``, output features split
    across pyconv's threads (NumPy's matmul would start NumPy's own BLAS thread
    pool, which spin-waits after the call and slows the kernels that follow)."""
    x, weight = as_float32(x), as_float32(weight, "weight", ndim=2)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x of shape {x.shape} does not match weight of shape {weight.shape} (out, in)")
    if bias is not None:
        bias = as_float32(bias, "bias").reshape(-1)
        if bias.size != weight.shape[0]:
            raise ValueError(f"linear bias must have {weight.shape[0]} elements, got shape {bias.shape}")
    y = check_out(out, x.shape[:-1] + (weight.shape[0],))
    rows = x.reshape(-1, weight.shape[1])
    _linear.linear_forward(rows, weight, bias, y.reshape(-1, weight.shape[0]), threads_for(rows.shape[0] * weight.size))
    return y


# ---------------------------------------------------------------- pad

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "replicate": "edge"}


def _pad_pairs(pads: Sequence[int], ndim: int) -> List[Tuple[int, int]]:
    """(before, after) per axis from (top, left, bottom, right) for the last two axes or from
    ONNX ``pads`` (all begins, then all ends) covering every axis."""
    try:
        pads = [int(p) for p in pads]
    except TypeError:
        raise TypeError(f"pads must be a list of ints, got {pads!r}") from None
    if len(pads) == 2 * ndim:
        return list(zip(pads[:ndim], pads[ndim:]))
    if len(pads) == 4 and ndim >= 2:
        top, left, bottom, right = pads
        return [(0, 0)] * (ndim - 2) + [(top, bottom), (left, right)]
    raise ValueError(f"pads must be (top, left, bottom, right) or 2 * ndim = {2 * ndim} ONNX values, got {pads}")


def pad(x, pads: Sequence[int], mode: str = "constant", value: float = 0.0,
        out: Optional[np.ndarray] = None) -> np.ndarray:
    """Pad with a constant, a reflection (no edge repeat) or the edge value.

    ``pads`` is (top, left, bottom, right) on the last two axes, or ONNX ``pads`` for every
    axis; negative pads crop (ONNX).  ``"replicate"`` is PyTorch's name for ``"edge"``."""
    x = as_float32(x)
    if mode not in _PAD_MODES:
        raise ValueError(f"pad mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
    pairs = _pad_pairs(pads, x.ndim)
    crop = tuple(builtins.slice(max(-b, 0), d - max(-a, 0)) for (b, a), d in zip(pairs, x.shape))
    if any(s.start > s.stop for s in crop):
        raise ValueError(f"negative pads {list(pads)} crop more than the whole input of shape {x.shape}")
    x = x[crop]
    grow = [(max(b, 0), max(a, 0)) for b, a in pairs]
    for (b, a), d in zip(grow, x.shape):
        if mode == "reflect" and (b or a) and max(b, a) >= d:
            raise ValueError(f"reflect padding {max(b, a)} must be smaller than the padded dim {d} (shape {x.shape})")
        if mode != "constant" and (b or a) and d == 0:
            raise ValueError(f"{mode} padding of an empty dim (shape {x.shape})")
    kwargs = {"constant_values": float(value)} if mode == "constant" else {}
    return _write(np.pad(x, grow, mode=_PAD_MODES[mode], **kwargs), out)


# ---------------------------------------------------------------- resize

COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                    "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_RESIZE_MODES = {"nearest": "nearest", "linear": "linear", "bilinear": "linear"}


def source_coordinates(out_len: int, in_len: int, scale: float, mode: str) -> np.ndarray:
    """Input coordinate of each output index (ONNX ``coordinate_transformation_mode``).

    Evaluated in float32 in the formula's order, as onnxruntime does: a coordinate
    that lands exactly on an integer or a half then rounds the same way."""
    i = np.arange(out_len, dtype=np.float32)
    scale, half = np.float32(scale), np.float32(0.5)
    if mode == "half_pixel":
        return (i + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (i + half) / scale - half if out_len > 1 else np.zeros(out_len, np.float32)
    if mode == "align_corners":
        return i * np.float32(in_len - 1) / np.float32(out_len - 1) if out_len > 1 else np.zeros(out_len, np.float32)
    if mode == "asymmetric":
        return i / scale
    if mode == "tf_half_pixel_for_nn":
        return (i + half) / scale
    if mode == "half_pixel_symmetric":
        # half_pixel, recentred when floor(in * scale) cut the output short (ONNX opset 19)
        adjustment = np.float32(out_len) / (scale * np.float32(in_len))
        offset = np.float32(in_len) / np.float32(2) * (np.float32(1) - adjustment)
        return (np.float64(offset) + (i + 0.5) / np.float64(scale) - 0.5).astype(np.float32)
    raise ValueError(f"coordinate_transformation_mode must be one of {COORDINATE_MODES}, got {mode!r}")


def _nearest_indices(coords: np.ndarray, in_len: int, nearest_mode: str) -> np.ndarray:
    rounding = {
        "round_prefer_floor": lambda c: np.ceil(c - 0.5),
        "round_prefer_ceil": lambda c: np.floor(c + 0.5),
        "floor": np.floor,
        "ceil": np.ceil,
    }
    if nearest_mode not in rounding:
        raise ValueError(f"nearest_mode must be one of {NEAREST_MODES}, got {nearest_mode!r}")
    return np.clip(rounding[nearest_mode](coords), 0, in_len - 1).astype(np.int32)


def _linear_taps(coords: np.ndarray, in_len: int):
    """(lower index, upper index, upper weight); coordinates outside the input clamp to the edge."""
    c = np.clip(coords, 0, in_len - 1)
    lo = np.floor(c).astype(np.int32)
    hi = np.minimum(lo + 1, in_len - 1).astype(np.int32)
    return lo, hi, (c - lo).astype(np.float32)


def _spatial_pair(values, name: str, x_shape: Tuple[int, ...], cast) -> Tuple:
    """(h, w) from 2 values, or from 4 (N, C, H, W) whose N and C must be identity."""
    try:
        values = [cast(v) for v in values]
    except TypeError:
        raise TypeError(f"{name} must be a list of 2 (H, W) or 4 (N, C, H, W) numbers, got {values!r}") from None
    if len(values) == 4:
        identity = [1.0, 1.0] if name == "scales" else list(x_shape[:2])
        if values[:2] != identity:
            raise ValueError(f"resize only resizes H and W; {name} for N and C must be {identity}, got {values}")
        values = values[2:]
    if len(values) != 2:
        raise ValueError(f"{name} must have 2 (H, W) or 4 (N, C, H, W) values, got {values}")
    return tuple(values)


def _resize_plan(x_shape, scales, sizes):
    """Output (h, w) and the scales used by the coordinate transform."""
    if (scales is None) == (sizes is None):
        raise ValueError("resize needs exactly one of scales and sizes")
    in_hw = x_shape[2:]
    if scales is not None:
        scale = _spatial_pair(scales, "scales", x_shape, float)
        if min(scale) <= 0:
            raise ValueError(f"resize scales must be positive, got {scales!r}")
        # float32 product, truncated: onnxruntime's rule (ONNX says floor; equal for these values)
        out_hw = tuple(int(np.float32(s) * np.float32(n)) for n, s in zip(in_hw, scale))
    else:
        out_hw = _spatial_pair(sizes, "sizes", x_shape, int)
        scale = tuple(o / n if n else 1.0 for o, n in zip(out_hw, in_hw))
    if min(out_hw) < 1 or min(in_hw) < 1:
        raise ValueError(f"resize of input {tuple(x_shape)} gives an empty output {out_hw}")
    return out_hw, scale


def resize(x, scales: Optional[Sequence[float]] = None, sizes: Optional[Sequence[int]] = None,
           mode: str = "nearest", coordinate_transformation_mode: str = "half_pixel",
           nearest_mode: str = "round_prefer_floor", out: Optional[np.ndarray] = None) -> np.ndarray:
    """ONNX ``Resize`` of the H and W axes of an NCHW tensor (``mode`` "nearest" or "linear"/"bilinear").

    Give ``scales`` (output = floor(input * scale); the coordinate transform uses the
    scale as given) or ``sizes`` (scale = output / input).  Coordinates outside the
    input clamp to the edge.  Defaults are ONNX's; PyTorch's ``interpolate`` is
    :func:`upsample`."""
    x = as_nchw(x)
    if mode not in _RESIZE_MODES:
        raise ValueError(f"resize mode must be 'nearest', 'linear' or 'bilinear', got {mode!r}")
    (out_h, out_w), (scale_h, scale_w) = _resize_plan(x.shape, scales, sizes)
    n, c, in_h, in_w = x.shape
    ys = source_coordinates(out_h, in_h, scale_h, coordinate_transformation_mode)
    xs = source_coordinates(out_w, in_w, scale_w, coordinate_transformation_mode)
    y = check_out(out, (n, c, out_h, out_w))
    planes = n * c
    if _RESIZE_MODES[mode] == "nearest":
        _resize.resize_nearest(x.reshape(-1), y.reshape(-1), planes, in_h, in_w,
                               _nearest_indices(ys, in_h, nearest_mode), _nearest_indices(xs, in_w, nearest_mode),
                               threads_for(y.size))
    else:
        _resize.resize_bilinear(x.reshape(-1), y.reshape(-1), planes, in_h, in_w,
                                *_linear_taps(ys, in_h), *_linear_taps(xs, in_w), threads_for(y.size * 6))
    return y


def upsample(x, scale_factor=None, size=None, mode: str = "nearest", align_corners: Optional[bool] = None,
             out: Optional[np.ndarray] = None) -> np.ndarray:
    """PyTorch ``interpolate`` / ``Upsample`` (nearest or bilinear) expressed as :func:`resize`:
    nearest is ``asymmetric`` + ``floor``; bilinear is ``half_pixel`` (PyTorch's source index
    (i + 1/2) / s - 1/2 clamped at 0, also for an output of length 1, where ONNX's
    ``pytorch_half_pixel`` would sample index 0), or ``align_corners`` when ``align_corners=True``."""
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"upsample mode must be 'nearest' or 'bilinear', got {mode!r}")
    if mode == "nearest" and align_corners:
        raise ValueError("align_corners applies to bilinear upsampling only")
    pair = lambda v: None if v is None else ([v, v] if isinstance(v, (int, float, np.number)) else list(v))
    coordinates = "asymmetric" if mode == "nearest" else ("align_corners" if align_corners else "half_pixel")
    return resize(x, scales=pair(scale_factor), sizes=pair(size), mode=mode,
                  coordinate_transformation_mode=coordinates, nearest_mode="floor", out=out)


# ---------------------------------------------------------------- identity / constant

def identity(x, out: Optional[np.ndarray] = None) -> np.ndarray:
    """x unchanged (also dropout at inference); returns ``x`` itself unless ``out`` is given."""
    return _write(as_float32(x), out)


def constant(value, out: Optional[np.ndarray] = None) -> np.ndarray:
    """The stored array ``value`` (an op with no inputs)."""
    return _write(as_float32(value, "value"), out)


# ---------------------------------------------------------------- references (float64)
# Written independently of the functions above: loops over output positions where that is clearer.

def _binary_ref(ufunc):
    return lambda a, b: ufunc(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _split_ref(x, sizes_or_count=2, axis=1):
    x = np.asarray(x, np.float64)
    length = x.shape[axis]
    if isinstance(sizes_or_count, (int, np.integer)):
        part = math.ceil(length / sizes_or_count)
        cuts = [min(part * i, length) for i in range(1, sizes_or_count)]
    else:
        cuts = list(np.cumsum(sizes_or_count)[:-1])
    return np.split(x, cuts, axis=axis)


def _slice_ref(x, starts, ends, axes=None, steps=None):
    x = np.asarray(x, np.float64)
    axes = list(range(len(starts))) if axes is None else [a % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    for ax, start, end, step in zip(axes, starts, ends, steps):
        dim = x.shape[ax]
        start, end = (start + dim if start < 0 else start), (end + dim if end < 0 else end)
        if step > 0:
            keep = [i for i in range(max(start, 0), min(end, dim), step)]
        else:
            keep = [i for i in range(min(start, dim - 1), max(end, -1), step)]
        x = np.take(x, keep, axis=ax)
    return x


def _channel_shuffle_ref(x, groups):
    x = np.asarray(x, np.float64)
    per_group = x.shape[1] // groups
    y = np.empty_like(x)
    for g in range(groups):
        for j in range(per_group):
            y[:, j * groups + g] = x[:, g * per_group + j]
    return y


def _linear_ref(x, weight, bias=None):
    y = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
    return y if bias is None else y + np.asarray(bias, np.float64)


def _pad_ref(x, pads, mode="constant", value=0.0):
    x = np.asarray(x, np.float64)
    pairs = _pad_pairs(pads, x.ndim)
    for ax, (before, after) in enumerate(pairs):
        dim = x.shape[ax]
        if before < 0 or after < 0:
            x = np.take(x, range(max(-before, 0), dim - max(-after, 0)), axis=ax)
            dim = x.shape[ax]
            before, after = max(before, 0), max(after, 0)
        index = np.arange(-before, dim + after)
        if mode == "constant":
            inside = (index >= 0) & (index < dim)
            taken = np.take(x, np.clip(index, 0, max(dim - 1, 0)), axis=ax) if dim else np.zeros(
                x.shape[:ax] + (len(index),) + x.shape[ax + 1:])
            shape = [1] * x.ndim
            shape[ax] = len(index)
            x = np.where(inside.reshape(shape), taken, value)
        else:
            if mode == "reflect":
                index = np.abs(index)
                index = np.where(index > dim - 1, 2 * (dim - 1) - index, index)
            x = np.take(x, np.clip(index, 0, dim - 1), axis=ax)
    return x


def _resize_ref(x, scales=None, sizes=None, mode="nearest", coordinate_transformation_mode="half_pixel",
                nearest_mode="round_prefer_floor"):
    """Per output pixel, straight from the ONNX Resize formulas."""
    x = np.asarray(x, np.float64)
    n, c, in_h, in_w = x.shape
    f32 = np.float32
    if scales is not None:
        sh, sw = [f32(s) for s in scales][-2:]
        out_h, out_w = int(sh * f32(in_h)), int(sw * f32(in_w))
    else:
        out_h, out_w = [int(s) for s in sizes][-2:]
        sh, sw = f32(out_h) / f32(in_h), f32(out_w) / f32(in_w)

    def coord(i, out_len, in_len, s):
        # float32 arithmetic in the formula's order (how onnxruntime evaluates it)
        m, i = coordinate_transformation_mode, f32(i)
        if m == "align_corners":
            return 0.0 if out_len == 1 else float(i * f32(in_len - 1) / f32(out_len - 1))
        if m == "asymmetric":
            return float(i / s)
        if m == "pytorch_half_pixel" and out_len == 1:
            return 0.0
        if m == "tf_half_pixel_for_nn":
            return float((i + f32(0.5)) / s)
        if m == "half_pixel_symmetric":
            offset = f32(in_len) / f32(2) * (f32(1) - f32(out_len) / (s * f32(in_len)))
            return float(f32(float(offset) + (float(i) + 0.5) / float(s) - 0.5))
        return float((i + f32(0.5)) / s - f32(0.5))

    def nearest(v, in_len):
        frac = v - math.floor(v)
        if nearest_mode == "floor":
            r = math.floor(v)
        elif nearest_mode == "ceil":
            r = math.ceil(v)
        elif frac == 0.5:
            r = math.floor(v) if nearest_mode == "round_prefer_floor" else math.ceil(v)
        else:
            r = math.floor(v + 0.5)
        return min(max(r, 0), in_len - 1)

    y = np.empty((n, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            cy, cx = coord(i, out_h, in_h, sh), coord(j, out_w, in_w, sw)
            if mode == "nearest":
                y[:, :, i, j] = x[:, :, nearest(cy, in_h), nearest(cx, in_w)]
                continue
            cy, cx = min(max(cy, 0.0), in_h - 1), min(max(cx, 0.0), in_w - 1)
            y0, x0 = int(math.floor(cy)), int(math.floor(cx))
            y1, x1 = min(y0 + 1, in_h - 1), min(x0 + 1, in_w - 1)
            fy, fx = cy - y0, cx - x0
            y[:, :, i, j] = ((1 - fy) * ((1 - fx) * x[:, :, y0, x0] + fx * x[:, :, y0, x1])
                             + fy * ((1 - fx) * x[:, :, y1, x0] + fx * x[:, :, y1, x1]))
    return y


# ---------------------------------------------------------------- shape rules and registration

def _binary_shape(input_shapes, weight_shapes, attrs):
    try:
        return [tuple(np.broadcast_shapes(*[tuple(s) for s in input_shapes]))]
    except ValueError:
        raise ValueError(f"input shapes {[tuple(s) for s in input_shapes]} do not broadcast") from None


def _concat_shape(input_shapes, weight_shapes, attrs):
    shapes = [tuple(s) for s in input_shapes]
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"concat inputs must have the same number of dimensions, got {shapes}")
    ax = _axis(attrs["axis"], len(shapes[0]))
    if len({s[:ax] + s[ax + 1:] for s in shapes}) != 1:
        raise ValueError(f"concat inputs must match except along axis {attrs['axis']}, got {shapes}")
    return [shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1:]]


def _split_shape(input_shapes, weight_shapes, attrs):
    shape = tuple(input_shapes[0])
    ax = _axis(attrs["axis"], len(shape))
    return [shape[:ax] + (size,) + shape[ax + 1:] for size in _split_sizes(shape[ax], attrs["sizes_or_count"])]


def _split_count(attrs) -> int:
    value = attrs["sizes_or_count"]
    return int(value) if isinstance(value, (int, np.integer)) else len(value)


def _slice_shape(input_shapes, weight_shapes, attrs):
    shape = tuple(input_shapes[0])
    index = _slice_index(shape, attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"])
    return [tuple(len(range(d)[s]) for d, s in zip(shape, index))]


def _channel_shuffle_shape(input_shapes, weight_shapes, attrs):
    shape = tuple(input_shapes[0])
    groups = attrs["groups"]
    if len(shape) < 2 or not isinstance(groups, int) or groups < 1 or shape[1] % groups:
        raise ValueError(f"channel_shuffle groups={groups!r} must divide the channels of {shape}")
    return [shape]


def _concat_shuffle_shape(input_shapes, weight_shapes, attrs):
    shapes = [tuple(s) for s in input_shapes]
    if builtins.any(len(s) < 2 for s in shapes) or len({s[:1] + s[2:] for s in shapes}) != 1:
        raise ValueError(f"concat_shuffle inputs must be (N, C_k, ...) arrays matching except in C, got {shapes}")
    total = shapes[0][:1] + (sum(s[1] for s in shapes),) + shapes[0][2:]
    return _channel_shuffle_shape([total], weight_shapes, attrs)


def _flatten_rule(input_shapes, weight_shapes, attrs):
    return [_flatten_shape(tuple(input_shapes[0]), attrs["start_dim"], attrs["end_dim"], attrs["axis"])]


def _reshape_rule(input_shapes, weight_shapes, attrs):
    return [_reshape_target(tuple(input_shapes[0]), attrs["shape"], attrs["allowzero"])]


def _transpose_rule(input_shapes, weight_shapes, attrs):
    shape = tuple(input_shapes[0])
    return [tuple(shape[p] for p in _perm(attrs["perm"], len(shape)))]


def _linear_rule(input_shapes, weight_shapes, attrs):
    shape, w = tuple(input_shapes[0]), tuple(weight_shapes["weight"])
    if len(w) != 2 or not shape or shape[-1] != w[1]:
        raise ValueError(f"linear: input {shape} does not match weight {w} (out, in)")
    if "bias" in weight_shapes and numel(weight_shapes["bias"]) != w[0]:
        raise ValueError(f"linear bias has shape {tuple(weight_shapes['bias'])}, expected ({w[0]},)")
    return [shape[:-1] + (w[0],)]


def _linear_count(input_shapes, weight_shapes, attrs, output_shapes):
    params = sum(numel(s) for s in weight_shapes.values())
    return Counts(params=params, macs=numel(output_shapes[0]) * weight_shapes["weight"][1],
                  adds=numel(output_shapes[0]) if "bias" in weight_shapes else 0)


def _pad_rule(input_shapes, weight_shapes, attrs):
    shape = tuple(input_shapes[0])
    if attrs["mode"] not in _PAD_MODES:
        raise ValueError(f"pad mode must be one of {sorted(_PAD_MODES)}, got {attrs['mode']!r}")
    out = tuple(d + b + a for d, (b, a) in zip(shape, _pad_pairs(attrs["pads"], len(shape))))
    if min(out, default=0) < 0:
        raise ValueError(f"pads {attrs['pads']} crop more than the whole input {shape}")
    return [out]


def _resize_rule(input_shapes, weight_shapes, attrs):
    shape = tuple(input_shapes[0])
    if len(shape) != 4:
        raise ValueError(f"resize needs an NCHW input, got shape {shape}")
    (h, w), _ = _resize_plan(shape, attrs["scales"], attrs["sizes"])
    return [shape[:2] + (h, w)]


def _constant_rule(input_shapes, weight_shapes, attrs):
    return [tuple(weight_shapes["value"])]


def _concat_ref(*xs, axis=1):
    return np.concatenate([np.asarray(x, np.float64) for x in xs], axis=axis)


def _whole_view(input_shape, output_shapes, attrs) -> List[int]:
    """Reshape-like ops: the output is the input's memory from its start."""
    return [0]


def _split_view(input_shape, output_shapes, attrs) -> Optional[List[int]]:
    """A split is a set of contiguous runs when every axis before the split axis has
    length 1 (a channel split at batch 1)."""
    ax = _axis(attrs["axis"], len(input_shape))
    if numel(input_shape[:ax]) != 1:
        return None
    starts = np.cumsum([0] + [numel(shape) for shape in output_shapes[:-1]])
    return [int(start) for start in starts]


def _spec(fn, infer_shape, *, inputs=1, weights=(), attrs=None, count=None, reference=None, inplace=False,
          num_outputs=None, prepare=None, view=None):
    register(OpSpec(
        name=fn.__name__, fn=fn, infer_shape=infer_shape, inputs=inputs, weights=weights, attrs=attrs or {},
        count=count or per_element_counts(adds=0), prepare=prepare or bind_with_out(fn), reference=reference,
        num_outputs=num_outputs, inplace=inplace, view=view, doc=(fn.__doc__ or "").splitlines()[0],
    ))


for _fn, _ufunc in ((add, np.add), (sub, np.subtract), (mul, np.multiply), (div, np.divide)):
    _spec(_fn, _binary_shape, inputs=2, count=per_element_counts(adds=1), reference=_binary_ref(_ufunc),
          inplace=True)

_spec(concat, _concat_shape, inputs=(1, None), attrs={"axis": 1}, reference=_concat_ref)
_spec(split, _split_shape, attrs={"sizes_or_count": REQUIRED, "axis": 1}, reference=_split_ref,
      num_outputs=_split_count, view=_split_view)
_spec(slice, _slice_shape, attrs={"starts": REQUIRED, "ends": REQUIRED, "axes": None, "steps": None},
      reference=_slice_ref)
_spec(channel_shuffle, _channel_shuffle_shape, attrs={"groups": REQUIRED}, reference=_channel_shuffle_ref)
_spec(concat_shuffle, _concat_shuffle_shape, inputs=(1, None), attrs={"groups": REQUIRED},
      reference=lambda *xs, groups: _channel_shuffle_ref(_concat_ref(*xs), groups))
_spec(flatten, _flatten_rule, attrs={"start_dim": 1, "end_dim": -1, "axis": None}, inplace=True, view=_whole_view,
      reference=lambda x, start_dim=1, end_dim=-1, axis=None: np.asarray(x, np.float64).reshape(
          _flatten_shape(np.shape(x), start_dim, end_dim, axis)))
_spec(reshape, _reshape_rule, attrs={"shape": REQUIRED, "allowzero": 0}, inplace=True, view=_whole_view,
      reference=lambda x, shape, allowzero=0: np.asarray(x, np.float64).reshape(
          _reshape_target(np.shape(x), shape, allowzero)))
_spec(transpose, _transpose_rule, attrs={"perm": None},
      reference=lambda x, perm=None: np.transpose(np.asarray(x, np.float64), perm))
_spec(linear, _linear_rule, weights=("weight", "bias?"), count=_linear_count, reference=_linear_ref)
_spec(pad, _pad_rule, attrs={"pads": REQUIRED, "mode": "constant", "value": 0.0}, reference=_pad_ref)
_spec(resize, _resize_rule,
      attrs={"scales": None, "sizes": None, "mode": "nearest", "coordinate_transformation_mode": "half_pixel",
             "nearest_mode": "round_prefer_floor"},
      count=lambda i, w, a, o: per_element_counts(adds=0, macs=3 if a["mode"] != "nearest" else 0)(i, w, a, o),
      reference=_resize_ref)
_spec(identity, same_shape, inplace=True, view=_whole_view, reference=lambda x: np.asarray(x, np.float64))
_spec(constant, _constant_rule, inputs=0, weights=("value",), reference=lambda value: np.asarray(value, np.float64))
