"""Adder convolution (Chen et al., AdderNet, CVPR 2020).

    y[n, o, i, j] = -sum_{c, u, v} | xpad[n, g*Cg + c, i*sh + u, j*sw + v] - w[o, c, u, v] |

over each window of the zero-padded input (``g`` the group of ``o``); a padded
position therefore contributes ``-|w|``, exactly as the paper's reference code
(which unfolds the zero-padded input) computes it.  An optional per-channel
``scale`` multiplies the result before ``bias`` is added: that is how a
following BatchNorm folds into the layer (:func:`fold_batch_norm_into_adder`),
since BatchNorm's scale cannot move into the weights of an L1 distance.

The kernel never multiplies: cost is reported as additions (one
abs-difference accumulate per weight per output pixel), with zero MACs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from pyconv._threads import threads_for
from pyconv.ops._args import (
    IntPair,
    apply_activation_reference,
    as_float32,
    as_nchw,
    check_out,
    conv_output_size,
    int_pair,
    padding4,
    parse_activation,
)
from pyconv.registry import Counts, OpSpec, Window, register

__all__ = ["adder2d", "fold_batch_norm_into_adder"]

# Output pixels per task: the im2col panel (K x block floats) stays in L2.
_PANEL_FLOATS = 1 << 15


def _kernel():
    from pyconv._core import adder as kernel

    return kernel


def _check_args(x_shape, weight_shape, bias_shape, scale_shape, groups) -> None:
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if len(weight_shape) != 4:
        raise ValueError(f"weight must have 4 dimensions (Co, Ci/groups, kh, kw), got shape {weight_shape}")
    out_channels, group_in = weight_shape[:2]
    channels = x_shape[1]
    if channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels ({channels}) and output channels ({out_channels})"
        )
    if group_in != channels // groups:
        raise ValueError(
            f"weight {weight_shape} expects {group_in * groups} input channels with groups={groups}, "
            f"input has shape {x_shape}"
        )
    for name, shape in (("bias", bias_shape), ("scale", scale_shape)):
        if shape is not None and tuple(shape) != (out_channels,):
            raise ValueError(f"{name} must have shape ({out_channels},), got {tuple(shape)}")


def _output_hw(x_shape, weight_shape, stride, pads) -> Tuple[int, int]:
    kh, kw = weight_shape[2:]
    ho = conv_output_size(x_shape[2], kh, stride[0], pads[0], pads[2], 1)
    wo = conv_output_size(x_shape[3], kw, stride[1], pads[1], pads[3], 1)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"kernel {kh}x{kw} is larger than the padded input {tuple(x_shape[2:])} (padding {pads})"
        )
    return ho, wo


def pack_weights(weight: np.ndarray, groups: int) -> np.ndarray:
    """Weights (Co, Ci/g, kh, kw) as (groups, ceil(Co/g / MR), K, MR): per block of MR
    output channels, k-major, zero rows padding the last block."""
    mr = _kernel().MR
    out_channels = weight.shape[0]
    group_out = out_channels // groups
    blocks = -(-group_out // mr)
    w = weight.reshape(groups, group_out, -1)
    padded = np.zeros((groups, blocks * mr, w.shape[2]), dtype=np.float32)
    padded[:, :group_out] = w
    return np.ascontiguousarray(padded.reshape(groups, blocks, mr, -1).transpose(0, 1, 3, 2))


def adder2d(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, stride: IntPair = 1,
            padding=0, groups: int = 1, *, scale: Optional[np.ndarray] = None, activation=None,
            out: Optional[np.ndarray] = None) -> np.ndarray:
    """Adder convolution: ``-sum |x - w|`` over each window (see module doc), then
    ``* scale + bias`` per output channel and the activation.

    padding: int, (ph, pw) or (top, left, bottom, right), zero-valued."""
    x = as_nchw(x)
    weight = as_float32(weight, "weight", ndim=4)
    bias = None if bias is None else as_float32(bias, "bias", ndim=1)
    scale = None if scale is None else as_float32(scale, "scale", ndim=1)
    _check_args(x.shape, weight.shape, None if bias is None else bias.shape,
                None if scale is None else scale.shape, groups)
    return _run_adder2d(x, pack_weights(weight, groups), weight.shape, bias, scale,
                        int_pair(stride, "stride", 1), padding4(padding), groups, activation, out)


def _block_pixels(depth: int, out_pixels: int, tasks_per_pixel_block: int, nthreads: int) -> int:
    nr = _kernel().NR
    block = max(nr, _PANEL_FLOATS // depth // nr * nr)
    if nthreads > 1:
        # at least two tasks per thread so the static schedule balances
        per_thread = -(-out_pixels * tasks_per_pixel_block // (2 * nthreads))
        block = min(block, max(nr, -(-per_thread // nr) * nr))
    return min(block, out_pixels)


def _run_adder2d(x, wpack, weight_shape, bias, scale, stride, pads, groups, activation, out):
    epilogue = parse_activation(activation)
    n = x.shape[0]
    out_channels, group_in, kh, kw = weight_shape
    ho, wo = _output_hw(x.shape, weight_shape, stride, pads)
    out = check_out(out, (n, out_channels, ho, wo))
    if out.size == 0:
        return out
    depth = group_in * kh * kw
    if depth == 0:  # no input channels: an empty sum
        out[...] = 0.0 if bias is None else bias[:, None, None]
        out[...] = apply_activation_reference(out, activation)
        return out
    out_pixels = ho * wo
    nthreads = threads_for(n * out_channels * out_pixels * depth)
    block = _block_pixels(depth, out_pixels, n * groups, nthreads)
    kernel = _kernel()
    ldp = -(-block // kernel.NR) * kernel.NR
    workspace = np.empty((nthreads, (depth + kernel.MR) * ldp), dtype=np.float32)
    empty = np.empty(0, np.float32)
    kernel.adder2d_forward(x, wpack, empty if bias is None else bias, empty if scale is None else scale, out,
                           kh, kw, stride[0], stride[1], pads[0], pads[1], epilogue, workspace, block, nthreads)
    return out


def fold_batch_norm_into_adder(scale: Optional[np.ndarray], bias: Optional[np.ndarray], mean: np.ndarray,
                               var: np.ndarray, weight: Optional[np.ndarray], bn_bias: Optional[np.ndarray],
                               eps: float) -> Tuple[np.ndarray, np.ndarray]:
    """``(scale, bias)`` of an adder2d whose output then goes through BatchNorm.

    BatchNorm(s * a + b) = (s * k) * a + (b - mean) * k + beta with k = gamma / sqrt(var + eps)."""
    mean = np.asarray(mean, np.float64)
    k = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    if weight is not None:
        k = k * np.asarray(weight, np.float64)
    s = np.ones_like(mean) if scale is None else np.asarray(scale, np.float64)
    b = np.zeros_like(mean) if bias is None else np.asarray(bias, np.float64)
    beta = np.zeros_like(mean) if bn_bias is None else np.asarray(bn_bias, np.float64)
    return (s * k).astype(np.float32), ((b - mean) * k + beta).astype(np.float32)


# ---------------------------------------------------------------- reference
def adder2d_reference(x, weight, bias=None, stride=1, padding=0, groups=1, *, scale=None,
                      activation=None) -> np.ndarray:
    """float64 NumPy adder convolution: unfold the zero-padded input, -sum |x - w|."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    sh, sw = int_pair(stride, "stride", 1)
    top, left, bottom, right = padding4(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_channels, group_in, kh, kw = weight.shape
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    group_out = out_channels // groups
    y = np.empty((x.shape[0], out_channels) + windows.shape[2:4])
    for o in range(out_channels):
        g = o // group_out
        patch = windows[:, g * group_in:(g + 1) * group_in]  # n, c, ho, wo, kh, kw
        y[:, o] = -np.abs(patch - weight[o][None, :, None, None]).sum(axis=(1, 4, 5))
    if scale is not None:
        y = y * np.asarray(scale, np.float64)[:, None, None]
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[:, None, None]
    return apply_activation_reference(y, activation)


# ---------------------------------------------------------------- registry
def _weight_shape(weight_shapes, name):
    return None if name not in weight_shapes else tuple(weight_shapes[name])


def _adder2d_shape(input_shapes, weight_shapes, attrs):
    x_shape = tuple(input_shapes[0])
    if len(x_shape) != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {x_shape}")
    weight_shape = tuple(weight_shapes["weight"])
    _check_args(x_shape, weight_shape, _weight_shape(weight_shapes, "bias"),
                _weight_shape(weight_shapes, "scale"), attrs["groups"])
    parse_activation(attrs["activation"])
    ho, wo = _output_hw(x_shape, weight_shape, int_pair(attrs["stride"], "stride", 1), padding4(attrs["padding"]))
    return [(x_shape[0], weight_shape[0], ho, wo)]


def _adder2d_count(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
    params = sum(int(np.prod(s)) for s in weight_shapes.values())
    n, co, ho, wo = output_shapes[0]
    batch = n if isinstance(n, (int, np.integer)) else 1
    depth = int(np.prod(weight_shapes["weight"][1:]))
    return Counts(params=params, macs=0, adds=batch * co * ho * wo * depth)


def _adder2d_window(attrs, weight_shapes) -> Window:
    kh, kw = weight_shapes["weight"][2:]
    return Window(kernel=(kh, kw), stride=int_pair(attrs["stride"], "stride", 1))


def _prepare_adder2d(weights, attrs):
    weight = as_float32(weights["weight"], "weight", ndim=4)
    bias, scale = (None if weights.get(k) is None else as_float32(weights[k], k, ndim=1) for k in ("bias", "scale"))
    groups = attrs["groups"]
    stride, pads = int_pair(attrs["stride"], "stride", 1), padding4(attrs["padding"])
    wpack = None

    def run(x, out=None):
        nonlocal wpack
        x = as_nchw(x)
        _check_args(x.shape, weight.shape, None if bias is None else bias.shape,
                    None if scale is None else scale.shape, groups)
        if wpack is None:
            wpack = pack_weights(weight, groups)
        return _run_adder2d(x, wpack, weight.shape, bias, scale, stride, pads, groups, attrs["activation"], out)

    return run


register(OpSpec(
    name="adder2d",
    fn=adder2d,
    infer_shape=_adder2d_shape,
    weights=("weight", "bias?", "scale?"),
    attrs={"stride": 1, "padding": 0, "groups": 1, "activation": None},
    count=_adder2d_count,
    window=_adder2d_window,
    prepare=_prepare_adder2d,
    reference=adder2d_reference,
    doc="AdderNet convolution: -sum |x - w| over each zero-padded window (additions only)",
))
