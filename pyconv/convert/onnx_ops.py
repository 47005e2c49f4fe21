"""ONNX op -> pyconv op handlers, one per ONNX op type (registered in :data:`HANDLERS`).

A handler receives the importer (``ctx``: constants, shapes, ``emit``), the ONNX
node and its attributes, and emits pyconv nodes into the importer's graph, or
raises :class:`Unsupported` saying why this node cannot be converted (the
importer collects every such node into one error).  Ops whose inputs are all
known at conversion time never reach a handler: they are folded
(:mod:`pyconv.convert.folding`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pyconv.convert.folding import Dim, has_symbols, reshape_shape, slice_params
from pyconv.convert.ir import static
from pyconv.ops.tensor import COORDINATE_MODES


class Unsupported(Exception):
    """This node cannot be converted (the message says why)."""


ERF_PLACEHOLDER = "onnx.Erf"  # not a pyconv op: must be fused away (GELU) before emission

Handler = Callable[[Any, Any, Dict[str, Any]], None]  # (importer, ONNX node, attributes)
HANDLERS: Dict[str, Handler] = {}


def _handles(*op_types: str):
    def register(fn: Handler) -> Handler:
        for op_type in op_types:
            HANDLERS[op_type] = fn
        return fn

    return register


def _pair(values, default: int) -> List[int]:
    values = list(values) if values is not None else [default, default]
    if len(values) != 2:
        raise Unsupported(f"only 2-D spatial windows are supported, got {values}")
    return [int(v) for v in values]


def _window_padding(ctx, node, attrs, kernel: List[int], strides: List[int],
                    dilations: List[int]) -> List[int]:
    """ONNX pads/auto_pad -> pyconv (top, left, bottom, right)."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise Unsupported(f"pads must have 4 values for a 2-D window, got {pads}")
        return [pads[0], pads[1], pads[2], pads[3]]
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad!r}")
    totals = []
    for axis in range(2):
        span = (kernel[axis] - 1) * dilations[axis] + 1
        if strides[axis] == 1:
            totals.append(span - 1)  # independent of the input size: stays dynamic
            continue
        size = ctx.spatial(node.input[0], f"auto_pad={auto_pad} with stride {strides[axis]}")[axis]
        out = -(-size // strides[axis])
        totals.append(max((out - 1) * strides[axis] + span - size, 0))
    return _same_pads(totals, auto_pad)


def _same_pads(totals: Sequence[int], auto_pad: str) -> List[int]:
    """Total padding per axis split ONNX's way: SAME_UPPER puts the odd one at the end, others
    (SAME_LOWER, and ConvTranspose's output_shape) at the beginning. Returns all begins, then all ends."""
    before = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
    return before + [t - b for t, b in zip(totals, before)]


def _check_2d(ctx, node, what: str) -> None:
    shape = ctx.shape(node.input[0])
    if shape is not None and len(shape) != 4:
        raise Unsupported(f"{what} is supported on 4-D NCHW tensors only, got rank {len(shape)}")


def _conv1d(ctx, node, attrs, weight: np.ndarray, bias: Optional[np.ndarray]) -> None:
    """Conv on (N, C, L): pyconv's conv1d."""
    stride, dilation = list(attrs.get("strides", [1]))[0], list(attrs.get("dilations", [1]))[0]
    auto_pad, k = attrs.get("auto_pad", "NOTSET"), weight.shape[2]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if stride != 1:
            raise Unsupported("1-D auto_pad SAME with stride > 1")
        pads = _same_pads([(k - 1) * dilation], auto_pad)
    else:
        pads = [0, 0] if auto_pad == "VALID" else list(attrs.get("pads", [0, 0]))
    ctx.emit("conv1d", [node.input[0]], node.output[:1], node, weights={"weight": weight, "bias": bias},
             stride=int(stride), padding=[int(p) for p in pads], dilation=int(dilation),
             groups=int(attrs.get("group", 1)))


@_handles("Conv")
def _conv(ctx, node, attrs):
    weight = ctx.need_const(node, 1, "the weight")
    bias = ctx.optional_const(node, 2, "the bias")
    if weight.ndim == 3:
        _conv1d(ctx, node, attrs, weight, bias)
        return
    if weight.ndim != 4:
        raise Unsupported(f"only 1-D and 2-D convolutions are supported (weight of rank {weight.ndim})")
    kernel = _pair(attrs.get("kernel_shape", weight.shape[2:]), 1)
    strides, dilations = _pair(attrs.get("strides"), 1), _pair(attrs.get("dilations"), 1)
    ctx.emit("conv2d", [node.input[0]], node.output[:1], node, weights={"weight": weight, "bias": bias},
             stride=strides, padding=_window_padding(ctx, node, attrs, kernel, strides, dilations),
             dilation=dilations, groups=int(attrs.get("group", 1)))


@_handles("ConvTranspose")
def _conv_transpose(ctx, node, attrs):
    weight = ctx.need_const(node, 1, "the weight")
    if weight.ndim != 4:
        raise Unsupported(f"only 2-D transposed convolutions are supported (weight of rank {weight.ndim})")
    bias = ctx.optional_const(node, 2, "the bias")
    kernel = _pair(attrs.get("kernel_shape", weight.shape[2:]), 1)
    strides, dilations = _pair(attrs.get("strides"), 1), _pair(attrs.get("dilations"), 1)
    output_padding = _pair(attrs.get("output_padding"), 0)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        size = ctx.spatial(node.input[0], "ConvTranspose with output_shape/auto_pad")
        if "output_shape" in attrs:
            target = list(attrs["output_shape"])[-2:]
        else:  # SAME: the input size times the stride
            target = [s * st for s, st in zip(size, strides)]
        totals = [st * (s - 1) + op + (k - 1) * d + 1 - t
                  for s, st, op, k, d, t in zip(size, strides, output_padding, kernel, dilations, target)]
        if min(totals) < 0:
            raise Unsupported(f"output_shape {target} is larger than the full transposed convolution")
        pads = _same_pads(totals, auto_pad)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
    ctx.emit("conv_transpose2d", [node.input[0]], node.output[:1], node, weights={"weight": weight, "bias": bias},
             stride=strides, padding=pads, output_padding=output_padding, dilation=dilations,
             groups=int(attrs.get("group", 1)))


@_handles("BatchNormalization")
def _batch_norm(ctx, node, attrs):
    if any(o in ctx.used for o in node.output[1:]):
        raise Unsupported("training-mode outputs (running mean/var) are not supported")
    scale, bias = ctx.need_const(node, 1, "scale"), ctx.need_const(node, 2, "bias")
    mean, var = ctx.need_const(node, 3, "mean"), ctx.need_const(node, 4, "var")
    ctx.emit("batch_norm", [node.input[0]], node.output[:1], node,
             weights={"mean": mean, "var": var, "weight": scale, "bias": bias},
             eps=float(attrs.get("epsilon", 1e-5)))


def _simple(op: str) -> Handler:
    """A one-input op without attributes."""
    def handler(ctx, node, attrs):
        ctx.emit(op, [node.input[0]], node.output[:1], node)

    return handler


for _onnx_op, _pyconv_op in (("Relu", "relu"), ("Sigmoid", "sigmoid"), ("Tanh", "tanh"),
                             ("HardSwish", "hardswish")):
    HANDLERS[_onnx_op] = _simple(_pyconv_op)


@_handles("LeakyRelu")
def _leaky_relu(ctx, node, attrs):
    ctx.emit("leaky_relu", [node.input[0]], node.output[:1], node, negative_slope=float(attrs.get("alpha", 0.01)))


@_handles("Elu")
def _elu(ctx, node, attrs):
    ctx.emit("elu", [node.input[0]], node.output[:1], node, alpha=float(attrs.get("alpha", 1.0)))


@_handles("HardSigmoid")
def _hardsigmoid(ctx, node, attrs):
    ctx.emit("hardsigmoid", [node.input[0]], node.output[:1], node,
             alpha=float(attrs.get("alpha", 0.2)), beta=float(attrs.get("beta", 0.5)))


@_handles("PRelu")
def _prelu(ctx, node, attrs):
    slope = ctx.need_const(node, 1, "the slope")
    rank = ctx.rank(node.input[0])
    aligned = (1,) * (rank - slope.ndim) + tuple(slope.shape)  # ONNX broadcasts the slope from the right
    if slope.size > 1 and (rank < 2 or any(d != 1 for i, d in enumerate(aligned) if i != 1)):
        raise Unsupported(f"only a scalar or per-channel slope is supported, got shape {slope.shape}")
    ctx.emit("prelu", [node.input[0]], node.output[:1], node, weights={"slope": slope.reshape(-1)})


@_handles("Clip")
def _clip(ctx, node, attrs):
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo_v, hi_v = ctx.optional_const(node, 1, "min"), ctx.optional_const(node, 2, "max")
        lo = None if lo_v is None else float(lo_v.reshape(()))
        hi = None if hi_v is None else float(hi_v.reshape(()))
    lo = None if lo is None or lo <= -3.4e38 else float(lo)
    hi = None if hi is None or hi >= 3.4e38 else float(hi)
    if lo == 0.0 and hi is None:
        ctx.emit("relu", [node.input[0]], node.output[:1], node)
    elif lo == 0.0 and hi == 6.0:
        ctx.emit("relu6", [node.input[0]], node.output[:1], node)
    else:
        ctx.emit("clip", [node.input[0]], node.output[:1], node, min=lo, max=hi)


@_handles("Softmax", "LogSoftmax")
def _softmax(ctx, node, attrs):
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    rank = ctx.rank(node.input[0])
    default_axis = -1 if ctx.opset >= 13 else 1
    axis = int(attrs.get("axis", default_axis)) % rank
    shape = ctx.shape(node.input[0])
    if ctx.opset >= 13 or axis == rank - 1 or all(d == 1 for d in shape[axis + 1:]):
        ctx.emit(op, [node.input[0]], node.output[:1], node, axis=axis)
        return
    # opsets < 13 normalise over all axes from `axis` on: flatten them, apply, restore
    flat, soft = ctx.fresh(node.output[0]), ctx.fresh(node.output[0])
    ctx.emit("reshape", [node.input[0]], [flat], node, shape=_reshape_target(shape, list(shape[:axis]) + [-1]))
    ctx.emit(op, [flat], [soft], node, axis=axis)
    ctx.emit("reshape", [soft], node.output[:1], node, shape=_reshape_target(list(shape[:axis]) + [-1], shape))


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}


@_handles(*_BINARY)
def _binary(ctx, node, attrs):
    ctx.emit(_BINARY[node.op_type], list(node.input[:2]), node.output[:1], node)


def _scalar_const(ctx, name: str) -> Optional[float]:
    value = ctx.const(name)
    if value is None or value.size != 1 or has_symbols(value):
        return None
    return float(value.reshape(()))


def _const_input(ctx, value: float, base: str) -> str:
    """A new scalar constant tensor (for ops spelled with an implicit constant)."""
    name = ctx.fresh(base)
    ctx.consts[name] = np.asarray([value], np.float32)
    return name


@_handles("Pow")
def _pow(ctx, node, attrs):
    exponent = _scalar_const(ctx, node.input[1])
    if exponent == 1.0:
        ctx.alias[node.output[0]] = ctx.name(node.input[0])
    elif exponent == 2.0:  # YOLOv5's (2 * sigmoid(x)) ** 2
        ctx.emit("mul", [node.input[0], node.input[0]], node.output[:1], node)
    else:
        raise Unsupported(f"only the exponents 1 and 2 of a runtime base are supported, got {exponent}")


@_handles("Neg")
def _neg(ctx, node, attrs):
    ctx.emit("mul", [node.input[0], _const_input(ctx, -1.0, node.output[0])], node.output[:1], node)


@_handles("Max", "Min")
def _max_min(ctx, node, attrs):
    inputs = [i for i in node.input if i]
    bounds = [_scalar_const(ctx, i) for i in inputs]
    runtime = [i for i, b in zip(inputs, bounds) if b is None]
    if len(runtime) != 1:
        raise Unsupported("only the maximum/minimum of one runtime tensor and scalar constants is supported")
    if node.op_type == "Max":
        ctx.emit("clip", runtime, node.output[:1], node, min=max(b for b in bounds if b is not None), max=None)
    else:
        ctx.emit("clip", runtime, node.output[:1], node, min=None, max=min(b for b in bounds if b is not None))


@_handles("Sum")
def _sum(ctx, node, attrs):
    inputs = [i for i in node.input if i]
    if len(inputs) == 1:
        ctx.alias[node.output[0]] = ctx.name(inputs[0])
        return
    acc = inputs[0]
    for i, other in enumerate(inputs[1:]):
        out = node.output[0] if i == len(inputs) - 2 else ctx.fresh(node.output[0])
        ctx.emit("add", [acc, other], [out], node)
        acc = out


@_handles("Concat")
def _concat(ctx, node, attrs):
    inputs = [i for i in node.input if i]
    axis = int(attrs["axis"])
    if axis < 0:
        axis += ctx.rank(inputs[0])
    ctx.emit("concat", inputs, node.output[:1], node, axis=axis)


@_handles("Split")
def _split(ctx, node, attrs):
    rank = ctx.rank(node.input[0])
    axis = int(attrs.get("axis", 0)) % rank
    sizes = attrs.get("split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = [int(v) for v in ctx.need_const(node, 1, "split")]
    parts = sizes if sizes is not None else int(attrs.get("num_outputs", len(node.output)))
    outs = [o or ctx.fresh(node.name or "split") for o in node.output]
    ctx.emit("split", [node.input[0]], outs, node, axis=axis,
             sizes_or_count=[int(v) for v in parts] if sizes is not None else parts)


@_handles("Slice")
def _slice(ctx, node, attrs):
    rank = ctx.rank(node.input[0])
    if ctx.opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts = [int(v) for v in ctx.need_const(node, 1, "starts")]
        ends = [int(v) for v in ctx.need_const(node, 2, "ends")]
        axes_v, steps_v = ctx.optional_const(node, 3, "axes"), ctx.optional_const(node, 4, "steps")
        axes = None if axes_v is None else [int(v) for v in axes_v]
        steps = None if steps_v is None else [int(v) for v in steps_v]
    axes, starts, ends, steps = slice_params(rank, starts, ends, axes, steps)
    big = 2 ** 62  # ONNX uses INT64_MAX/MIN for "to the end"; keep JSON integers moderate
    clamp = lambda v: max(min(int(v), big), -big)  # noqa: E731
    ctx.emit("slice", [node.input[0]], node.output[:1], node, axes=axes,
             starts=[clamp(v) for v in starts], ends=[clamp(v) for v in ends], steps=steps)


def _pool_common(ctx, node, attrs) -> Tuple[List[int], List[int], List[int], List[int]]:
    _check_2d(ctx, node, node.op_type)
    kernel = _pair(attrs["kernel_shape"], 1)
    strides, dilations = _pair(attrs.get("strides"), 1), _pair(attrs.get("dilations"), 1)
    return kernel, strides, dilations, _window_padding(ctx, node, attrs, kernel, strides, dilations)


def _pad_beyond_half_window(ctx, node, kernel: List[int], pads: List[int], value: float) -> Tuple[str, List[int]]:
    """ONNX allows pool pads beyond half the window; pyconv's pooling, like PyTorch's, does not:
    such pads become an explicit pad with ``value`` first. Returns (pool input, pool pads)."""
    if all(p <= k // 2 for p, k in zip(pads, kernel + kernel)):
        return node.input[0], pads
    padded = ctx.fresh(node.output[0])
    ctx.emit("pad", [node.input[0]], [padded], node, pads=pads, value=value)
    return padded, [0, 0, 0, 0]


@_handles("MaxPool")
def _max_pool(ctx, node, attrs):
    if len(node.output) > 1 and node.output[1] in ctx.used:
        raise Unsupported("the Indices output is not supported")
    kernel, strides, dilations, pads = _pool_common(ctx, node, attrs)
    source, pads = _pad_beyond_half_window(ctx, node, kernel, pads, float(np.finfo(np.float32).min))
    ctx.emit("max_pool2d", [source], node.output[:1], node, kernel_size=kernel, stride=strides,
             padding=pads, dilation=dilations, ceil_mode=bool(attrs.get("ceil_mode", 0)))


@_handles("AveragePool")
def _avg_pool(ctx, node, attrs):
    kernel, strides, dilations, pads = _pool_common(ctx, node, attrs)
    if dilations != [1, 1]:
        raise Unsupported("dilated average pooling")
    include_pad = bool(attrs.get("count_include_pad", 0))
    source = node.input[0]
    if include_pad:  # zeros counted in the average: explicit zero padding is the same thing
        source, pads = _pad_beyond_half_window(ctx, node, kernel, pads, 0.0)
    elif any(p > k // 2 for p, k in zip(pads, kernel + kernel)):
        raise Unsupported(f"pads {pads} beyond half the window {kernel} with count_include_pad=0")
    ctx.emit("avg_pool2d", [source], node.output[:1], node, kernel_size=kernel, stride=strides,
             padding=pads, ceil_mode=bool(attrs.get("ceil_mode", 0)), count_include_pad=include_pad)


@_handles("LpPool")
def _lp_pool(ctx, node, attrs):
    kernel, strides, dilations, pads = _pool_common(ctx, node, attrs)
    if dilations != [1, 1]:
        raise Unsupported("dilated Lp pooling")
    ctx.emit("lp_pool2d", [node.input[0]], node.output[:1], node, p=float(attrs.get("p", 2)),
             kernel_size=kernel, stride=strides, padding=pads, ceil_mode=bool(attrs.get("ceil_mode", 0)),
             convention="onnx")


@_handles("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(ctx, node, attrs):
    _check_2d(ctx, node, node.op_type)
    if node.op_type == "GlobalLpPool":
        ctx.emit("global_lp_pool2d", [node.input[0]], node.output[:1], node, p=float(attrs.get("p", 2)))
    else:
        op = "global_avg_pool2d" if node.op_type == "GlobalAveragePool" else "global_max_pool2d"
        ctx.emit(op, [node.input[0]], node.output[:1], node)


@_handles("ReduceMean", "ReduceMax")
def _reduce(ctx, node, attrs):
    rank = ctx.rank(node.input[0])
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in ctx.need_const(node, 1, "axes")]
    if axes is None or sorted(a % rank for a in axes) != [2, 3] or rank != 4:
        raise Unsupported(f"only reductions over the spatial axes (2, 3) of NCHW tensors are supported, "
                          f"got axes={axes} on rank {rank}")
    op = "global_avg_pool2d" if node.op_type == "ReduceMean" else "global_max_pool2d"
    if attrs.get("keepdims", 1):
        ctx.emit(op, [node.input[0]], node.output[:1], node)
        return
    pooled = ctx.fresh(node.output[0])
    ctx.emit(op, [node.input[0]], [pooled], node)
    ctx.emit("flatten", [pooled], node.output[:1], node, start_dim=1)


@_handles("LRN")
def _lrn(ctx, node, attrs):
    ctx.emit("local_response_norm", [node.input[0]], node.output[:1], node, size=int(attrs["size"]),
             alpha=float(attrs.get("alpha", 1e-4)), beta=float(attrs.get("beta", 0.75)),
             k=float(attrs.get("bias", 1.0)))


@_handles("Gemm")
def _gemm(ctx, node, attrs):
    a = node.input[0]
    if attrs.get("transA", 0):
        a = ctx.fresh(node.output[0])
        ctx.emit("transpose", [node.input[0]], [a], node, perm=[1, 0])
    b = ctx.need_const(node, 1, "B")
    weight = b if attrs.get("transB", 0) else b.T  # pyconv linear: (out, in)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:  # (float32 throughout: classifier weights can be hundreds of MB)
        weight = weight * np.float32(alpha)
    c = ctx.optional_const(node, 2, "C")
    bias = None
    if c is not None:
        if c.size not in (1, weight.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise Unsupported(f"C of shape {c.shape} is not a per-output bias")
        bias = np.broadcast_to(c.astype(np.float64).reshape(-1), (weight.shape[0],)) * beta
    ctx.emit("linear", [a], node.output[:1], node, weights={"weight": weight, "bias": bias})


@_handles("MatMul")
def _matmul(ctx, node, attrs):
    b = ctx.need_const(node, 1, "the right-hand matrix")
    if b.ndim != 2:
        raise Unsupported(f"MatMul with a constant of rank {b.ndim} (only 2-D weights map to linear)")
    ctx.emit("linear", [node.input[0]], node.output[:1], node, weights={"weight": b.T})


def _reshape_target(in_shape: Sequence[Any], out_shape: Sequence[Any]) -> List[int]:
    """A reshape target for pyconv: known dims as ints, an input's dynamic dim kept in place as 0,
    at most one other dynamic dim as -1."""
    target = []
    for i, d in enumerate(out_shape):
        if not isinstance(d, Dim):
            target.append(int(d))
        elif i < len(in_shape) and in_shape[i] == d:
            target.append(0)
        else:
            target.append(-1)
    if target.count(-1) > 1:
        raise Unsupported(f"reshape from {tuple(in_shape)} to {tuple(out_shape)} has more than one dynamic "
                          "dimension to infer; fix the input shape with --input-shape")
    return target


def _emit_reshape(ctx, node, data: str, out_shape: Sequence[Any]) -> None:
    in_shape = ctx.shape(data)
    if in_shape is None:
        raise Unsupported(f"the shape of {data!r} is unknown")
    if ctx.shapes.get(node.output[0]) is None:
        ctx.shapes[node.output[0]] = tuple(out_shape)  # keeps the symbols, which re-inference could not
    try:
        target = _reshape_target(in_shape, out_shape)
    except Unsupported as exc:
        # A pattern may still absorb it (the reshapes around a channel shuffle of any H x W):
        # decided after fusion.
        target = [d.name if isinstance(d, Dim) else int(d) for d in out_shape]
        ctx.deferred[node.output[0]] = (node, "reshape", str(exc))
    ctx.emit("reshape", [data], node.output[:1], node, shape=target)


@_handles("Reshape")
def _reshape(ctx, node, attrs):
    in_shape = ctx.shape(node.input[0])
    target = ctx.const(node.input[1]) if len(node.input) > 1 else np.asarray(attrs["shape"])
    if target is None:
        raise Unsupported("the target shape must be computable at conversion time")
    if in_shape is None:
        raise Unsupported(f"the shape of {node.input[0]!r} is unknown")
    copy_zeros = not attrs.get("allowzero", 0)
    out = [in_shape[i] if (copy_zeros and not isinstance(v, Dim) and int(v) == 0) else v
           for i, v in enumerate(target.reshape(-1))]
    out = [v if isinstance(v, Dim) else int(v) for v in out]
    if -1 in out:
        inferred = ctx.shapes.get(node.output[0])
        if static(in_shape) and static(out):
            out = reshape_shape(in_shape, out)
        elif inferred is not None and len(inferred) == len(out):
            out = [i if o == -1 else o for o, i in zip(out, inferred)]  # ONNX shape inference resolved it
        else:
            out = [Dim(f"{node.output[0]}:{i}") if o == -1 else o for i, o in enumerate(out)]
    _emit_reshape(ctx, node, node.input[0], out)


@_handles("Flatten")
def _flatten(ctx, node, attrs):
    ctx.emit("flatten", [node.input[0]], node.output[:1], node, axis=int(attrs.get("axis", 1)))


@_handles("Transpose")
def _transpose(ctx, node, attrs):
    rank = ctx.rank(node.input[0])
    perm = [int(p) for p in attrs.get("perm", list(range(rank))[::-1])]
    ctx.emit("transpose", [node.input[0]], node.output[:1], node, perm=perm)


@_handles("Squeeze", "Unsqueeze")
def _squeeze(ctx, node, attrs):
    in_shape = ctx.shape(node.input[0])
    if in_shape is None:
        raise Unsupported(f"the shape of {node.input[0]!r} is unknown")
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in ctx.need_const(node, 1, "axes")]
    if node.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(in_shape) if d == 1]
        drop = {a % len(in_shape) for a in axes}
        out = [d for i, d in enumerate(in_shape) if i not in drop]
    else:
        rank = len(in_shape) + len(axes)
        out = list(in_shape)
        for a in sorted(a % rank for a in axes):
            out.insert(a, 1)
    _emit_reshape(ctx, node, node.input[0], out)


def _reshape_transpose_reshape(ctx, node, split: List[Any], perm: List[int], merged: List[Any]) -> None:
    """A block rearrangement as reshape -> transpose -> reshape (static C, H, W; N may be dynamic)."""
    first, moved = ctx.fresh(node.output[0]), ctx.fresh(node.output[0])
    in_shape = ctx.shape(node.input[0])
    ctx.shapes[first] = tuple(split)
    ctx.emit("reshape", [node.input[0]], [first], node, shape=_reshape_target(in_shape, split))
    ctx.emit("transpose", [first], [moved], node, perm=perm)
    ctx.shapes[node.output[0]] = tuple(merged)
    ctx.emit("reshape", [moved], node.output[:1], node, shape=_reshape_target([split[p] for p in perm], merged))


@_handles("DepthToSpace", "SpaceToDepth")
def _depth_space(ctx, node, attrs):
    shape = ctx.shape(node.input[0])
    if shape is None or len(shape) != 4 or not static(shape[1:]):
        raise Unsupported(f"{node.op_type} needs a static C, H, W (got {shape}); fix them with --input-shape")
    n, c, h, w = shape
    b = int(attrs["blocksize"])
    if node.op_type == "SpaceToDepth":
        _reshape_transpose_reshape(ctx, node, [n, c, h // b, b, w // b, b], [0, 3, 5, 1, 2, 4],
                                   [n, c * b * b, h // b, w // b])
    elif attrs.get("mode", "DCR") == "DCR":
        _reshape_transpose_reshape(ctx, node, [n, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2],
                                   [n, c // (b * b), h * b, w * b])
    else:  # CRD: PyTorch's PixelShuffle
        _reshape_transpose_reshape(ctx, node, [n, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3],
                                   [n, c // (b * b), h * b, w * b])


def _resize_target(ctx, node) -> Tuple[Optional[List[float]], Optional[List[int]]]:
    """Resize ``sizes`` as ``(None, [H, W])``; N and C may be symbolic (exporters take them from
    Shape). Sizes computed as ``H * k`` from a dynamic input become ``([k_h, k_w], None)``."""
    if len(node.input) < 4 or not node.input[3]:
        return None, None
    sizes = ctx.const(node.input[3])
    if sizes is None:
        raise Unsupported("sizes (input 3) must be computable at conversion time")
    if sizes.size == 0:
        return None, None
    values = list(sizes.reshape(-1))
    in_shape = ctx.shape(node.input[0])
    same = lambda v, d: v == d if isinstance(v, Dim) or isinstance(d, Dim) else int(v) == int(d)  # noqa: E731
    if len(values) != 4 or in_shape is None or not all(same(v, d) for v, d in zip(values[:2], in_shape[:2])):
        raise Unsupported(f"only spatial resizing of NCHW tensors is supported, got sizes={values}")
    spatial = values[2:]
    if not any(isinstance(v, Dim) for v in spatial):
        return None, [int(v) for v in spatial]
    factors = [v.scale if isinstance(v, Dim) and isinstance(d, Dim) and d.name == v.name and d.scale == 1 else None
               for v, d in zip(spatial, in_shape[2:])]
    if any(f is None or not float(f).is_integer() for f in factors):
        raise Unsupported(f"output size {spatial} depends on a dynamic input dimension (other than an integer "
                          "multiple of it); fix the input shape with --input-shape")
    return [float(f) for f in factors], None  # an integer factor: same output size and coordinates


@_handles("Cast")
def _cast(ctx, node, attrs):
    if attrs.get("to") != 1:  # TensorProto.FLOAT
        raise Unsupported(f"Cast of a runtime tensor to ONNX type {attrs.get('to')} (pyconv computes in float32)")
    ctx.alias[node.output[0]] = ctx.name(node.input[0])


@_handles("Erf")
def _erf(ctx, node, attrs):
    """Only inside GELU, which fusion recognises; a placeholder until then."""
    ctx.shapes.setdefault(node.output[0], ctx.shape(node.input[0]))
    ctx.emit(ERF_PLACEHOLDER, [node.input[0]], node.output[:1], node)
    ctx.deferred[node.output[0]] = (node, ERF_PLACEHOLDER, "Erf is supported only inside GELU "
                                                           "(x * 0.5 * (1 + erf(x / sqrt(2))))")


@_handles("Gelu")
def _gelu(ctx, node, attrs):
    ctx.emit("gelu", [node.input[0]], node.output[:1], node, approximate=attrs.get("approximate", "none"))


@_handles("Dropout", "Identity")
def _identity(ctx, node, attrs):
    if len(node.output) > 1 and node.output[1] in ctx.used:
        raise Unsupported("the Dropout mask output is not supported")
    ctx.alias[node.output[0]] = ctx.name(node.input[0])


@_handles("Pad")
def _pad(ctx, node, attrs):
    mode = attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"mode={mode!r}")
    if ctx.opset < 11:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = [int(v) for v in ctx.need_const(node, 1, "pads")]
        value_v = ctx.optional_const(node, 2, "constant_value")
        value = 0.0 if value_v is None else float(value_v.reshape(()))
    rank = ctx.rank(node.input[0])
    axes_v = ctx.optional_const(node, 3, "axes")
    if axes_v is not None:  # opset 18: pads for the listed axes only
        axes = [int(a) % rank for a in axes_v]
        before, after = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
        pads = [before.get(a, 0) for a in range(rank)] + [after.get(a, 0) for a in range(rank)]
    if len(pads) != 2 * rank:
        raise Unsupported(f"pads {pads} do not match the input rank {rank}")
    ctx.emit("pad", [node.input[0]], node.output[:1], node, pads=[int(p) for p in pads], mode=mode, value=value)


@_handles("Resize", "Upsample")
def _resize(ctx, node, attrs):
    _check_2d(ctx, node, node.op_type)
    mode = attrs.get("mode", "nearest")
    if mode in ("bilinear",):
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode={mode!r} (nearest and linear are supported)")
    if node.op_type == "Upsample" or ctx.opset < 11:
        scales = attrs.get("scales")
        if scales is None:
            scales = [float(v) for v in ctx.need_const(node, 1, "scales")]
        # pre-opset-11 semantics: asymmetric coordinates; nearest floors when upsampling and, in
        # onnxruntime, takes the ceiling when downsampling
        sizes, coord = None, "asymmetric"
        down = [float(v) < 1 for v in scales[2:]]
        if mode == "nearest" and any(down) and not all(down):
            raise Unsupported(f"nearest resampling that upsamples one axis and downsamples the other ({scales})")
        nearest_mode = "ceil" if any(down) else "floor"
    else:
        if attrs.get("antialias", 0):
            raise Unsupported("antialias=1")
        if attrs.get("axes") is not None:
            raise Unsupported("the axes attribute")
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise Unsupported(f"keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']!r}")
        scales_v = ctx.optional_const(node, 2, "scales")
        scales = None if scales_v is None or scales_v.size == 0 else [float(v) for v in scales_v]
        size_factors, sizes = _resize_target(ctx, node)
        if size_factors is not None:
            scales = [1.0, 1.0] + size_factors
        coord = attrs.get("coordinate_transformation_mode", "half_pixel")
        nearest_mode = attrs.get("nearest_mode", "round_prefer_floor")
        if coord not in COORDINATE_MODES:
            raise Unsupported(f"coordinate_transformation_mode={coord!r} (supported: {', '.join(COORDINATE_MODES)})")
    if scales is not None:
        if len(scales) != 4 or scales[0] != 1 or scales[1] != 1:
            raise Unsupported(f"only spatial scaling of NCHW tensors is supported, got scales={scales}")
        ctx.emit("resize", [node.input[0]], node.output[:1], node, scales=scales[2:], mode=mode,
                 coordinate_transformation_mode=coord, nearest_mode=nearest_mode)
    elif sizes is not None:
        ctx.emit("resize", [node.input[0]], node.output[:1], node, sizes=sizes, mode=mode,
                 coordinate_transformation_mode=coord, nearest_mode=nearest_mode)
    else:
        raise Unsupported("neither scales nor sizes is given")


@_handles("Constant", "ConstantOfShape", "Shape", "Size", "Gather", "Range", "Expand", "Tile", "Where",
          "Equal", "Less", "Greater", "Not", "ReduceProd", "ReduceSum", "ReduceMin", "Sqrt", "Exp",
          "Log", "Reciprocal", "Floor", "Ceil", "Abs")
def _constant_only(ctx, node, attrs):
    raise Unsupported("supported only when its inputs are known at conversion time "
                      "(constant folding); it depends on a runtime tensor here")
