"""Shift convolution (Wu et al., CVPR 2018) and fused shift + 1x1.

A shift moves each channel by an integer offset and fills the vacated border
with zeros; it has no parameters and no multiplications.  Offsets are given
per channel as ``(dy, dx)`` in kernel units (multiplied by ``dilation``) and
mean *sample at an offset*:

    y[n, c, h, w] = x[n, c, h + dy*dilation, w + dx*dilation]   (0 outside)

so a shift by ``(dy, dx)`` equals a depthwise 3x3 (kxk) cross-correlation whose
kernel is 1 at tap ``(k//2 + dy, k//2 + dx)``.

Shift numbers.  ``s`` in ``0 .. k*k-1`` is the tap index in row-major order:
``dy = s // k - k//2``, ``dx = s % k - k//2`` (s = k*k//2 is no shift).  This is
the ordering of the paper's reference CUDA kernel.

Channel assignment (``assignment``):

* ``"interleaved"`` (default): channel ``c`` gets shift number ``c % (k*k)``,
  as the paper's reference CUDA kernel does;
* ``"grouped"``: ``k*k`` contiguous blocks of ``C // (k*k)`` channels, block
  ``s`` gets shift number ``s``;
* an explicit table: a sequence of ``C`` pairs ``[dy, dx]`` (a list in graph
  files, so a shift stays an op without weights; ``|dy|, |dx| <= k//2``).

With the two named assignments, channels from ``(C // (k*k)) * (k*k)`` on stay
unshifted (as in the reference kernel); when ``C < k*k`` that is every channel.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from pyconv._threads import threads_for
from pyconv.ops._args import (
    apply_activation_reference,
    as_float32,
    as_nchw,
    check_out,
    int_pair,
    parse_activation,
)
from pyconv.registry import Counts, OpSpec, Window, register

__all__ = ["shift2d", "shift_conv1x1", "shift_table"]

Assignment = Union[str, Sequence[Sequence[int]], np.ndarray]

# Output pixels per block of the fused shift + 1x1 (measured on AVX-512 with
# OpenBLAS for C_in, C_out in 32 .. 384).  Small layers want the gathered
# C_in x block panel and the C_out x block output tile near L1 (about 16K
# floats together).  Layers with many input channels want long blocks: sgemm
# repacks the C_out x C_in weights on every call and the gather pays a little
# per channel and block, so blocks of C_in * min(C_in, C_out) / 32 pixels
# amortise both (192 -> 64 @28: 1.3x slower with 80-pixel blocks than with 400).
_TILE_FLOATS = 1 << 14
_WEIGHT_REUSE = 32


def _kernel_size(kernel_size) -> int:
    if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    return int(kernel_size)


def _dilation(dilation) -> int:
    if not isinstance(dilation, (int, np.integer)) or dilation < 1:
        raise ValueError(f"dilation must be a positive int, got {dilation!r}")
    return int(dilation)


def shift_table(channels: int, kernel_size: int = 3, assignment: Assignment = "interleaved") -> np.ndarray:
    """Per-channel shifts ``(dy, dx)`` in kernel units, an int array of shape (channels, 2).

    See the module docstring for the shift-number ordering and the assignments."""
    k = _kernel_size(kernel_size)
    half, taps = k // 2, k * k
    if isinstance(assignment, str):
        table = np.zeros((channels, 2), dtype=np.int64)
        shifted = (channels // taps) * taps
        c = np.arange(shifted)
        if assignment == "interleaved":
            number = c % taps
        elif assignment == "grouped":
            number = c // max(shifted // taps, 1)
        else:
            raise ValueError(f"assignment must be 'interleaved', 'grouped' or a (C, 2) table, got {assignment!r}")
        table[:shifted, 0] = number // k - half
        table[:shifted, 1] = number % k - half
        return table
    try:
        table = np.asarray(assignment)
    except (TypeError, ValueError):
        raise ValueError(f"assignment table must be {channels} pairs [dy, dx], got {assignment!r}") from None
    if table.shape != (channels, 2) or not (np.issubdtype(table.dtype, np.integer) or table.size == 0):
        raise ValueError(
            f"assignment table must be {channels} integer pairs [dy, dx] (one per input channel), "
            f"got shape {table.shape} dtype {table.dtype}"
        )
    if table.size and np.abs(table).max() > half:
        raise ValueError(f"assignment table offsets must lie in [-{half}, {half}] for kernel_size {k}")
    return table.astype(np.int64)


def _offsets(channels: int, kernel_size, dilation, assignment) -> Tuple[np.ndarray, np.ndarray]:
    """(dy, dx) per channel in pixels, as int32 arrays for the kernels."""
    table = shift_table(channels, kernel_size, assignment) * _dilation(dilation)
    return np.ascontiguousarray(table[:, 0], np.int32), np.ascontiguousarray(table[:, 1], np.int32)


def _kernel():
    from pyconv._core import shift as kernel

    return kernel


def shift2d(x: np.ndarray, kernel_size: int = 3, dilation: int = 1, assignment: Assignment = "interleaved",
            *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Shift every channel of ``x`` (N, C, H, W) by its offset, zero fill (see module doc)."""
    x = as_nchw(x)
    dy, dx = _offsets(x.shape[1], kernel_size, dilation, assignment)
    return _run_shift2d(x, dy, dx, out)


def _run_shift2d(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    out = check_out(out, x.shape)
    if x.size:
        _kernel().shift2d_forward(x, out, dy, dx, threads_for(x.size))
    return out


def _check_1x1(x: np.ndarray, weight, bias) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    weight = as_float32(weight, "weight", ndim=4)
    if weight.shape[1] != x.shape[1] or weight.shape[2:] != (1, 1):
        raise ValueError(
            f"weight must have shape (out_channels, {x.shape[1]}, 1, 1) for input {x.shape}, got {weight.shape}"
        )
    if bias is not None:
        bias = as_float32(bias, "bias", ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
    return weight, bias


def _block_pixels(in_channels: int, out_channels: int, out_pixels: int, images: int, nthreads: int) -> int:
    """Output pixels per gathered panel (see _TILE_FLOATS); the block count is
    rounded so the static schedule gives every thread the same number."""
    target = max(_TILE_FLOATS // (in_channels + out_channels),
                 in_channels * min(in_channels, out_channels) // _WEIGHT_REUSE, 16)
    blocks = -(-out_pixels // target)
    while (images * blocks) % nthreads and images * blocks < 8 * nthreads:
        blocks += 1
    return -(-out_pixels // blocks)


def shift_conv1x1(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, kernel_size: int = 3,
                  dilation: int = 1, assignment: Assignment = "interleaved", stride=1, activation=None,
                  *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``conv2d(shift2d(x, kernel_size, dilation, assignment), weight, bias, stride)`` then the activation.

    ``weight`` is a 1x1 convolution weight (Co, C, 1, 1).  The shift is applied
    while each block of output pixels is gathered into a cache-sized panel for
    sgemm, so no shifted copy of ``x`` is made.  A ShiftNet CSC block
    (1x1 -> shift -> 1x1) is ``conv2d(x, w1, ..., activation="relu")`` followed
    by ``shift_conv1x1(y, w2, ...)``."""
    x = as_nchw(x)
    weight, bias = _check_1x1(x, weight, bias)
    dy, dx = _offsets(x.shape[1], kernel_size, dilation, assignment)
    return _run_shift_conv1x1(x, weight.reshape(weight.shape[0], -1), bias, dy, dx,
                              int_pair(stride, "stride", 1), activation, out)


def _run_shift_conv1x1(x, wmat, bias, dy, dx, stride, activation, out):
    epilogue = parse_activation(activation)
    n, c, h, w = x.shape
    sh, sw = stride
    shape = (n, wmat.shape[0], (h - 1) // sh + 1, (w - 1) // sw + 1)
    out = check_out(out, shape)
    if out.size == 0:
        return out
    if c == 0:  # an empty sum: bias and activation only
        out[...] = 0.0 if bias is None else bias[:, None, None]
        out[...] = apply_activation_reference(out, activation)
        return out
    out_pixels = shape[2] * shape[3]
    nthreads = threads_for(n * out_pixels * c * wmat.shape[0])
    block = _block_pixels(c, wmat.shape[0], out_pixels, n, nthreads)
    panels = np.empty((nthreads, c * block), dtype=np.float32)
    bias_arg = bias if bias is not None else np.empty(0, np.float32)
    _kernel().shift_conv1x1_forward(x, wmat, bias_arg, out, dy, dx, sh, sw, epilogue, panels, nthreads)
    return out


# ---------------------------------------------------------------- references
def shift2d_reference(x, kernel_size=3, dilation=1, assignment="interleaved") -> np.ndarray:
    """float64 NumPy shift: zero-pad by the largest offset and slice each channel."""
    x = np.asarray(x, np.float64)
    table = shift_table(x.shape[1], kernel_size, assignment) * dilation
    pad = dilation * (kernel_size // 2)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h, w = x.shape[2:]
    y = np.empty_like(x)
    for c, (dy, dx) in enumerate(table):
        y[:, c] = xp[:, c, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return y


def shift_conv1x1_reference(x, weight, bias=None, kernel_size=3, dilation=1, assignment="interleaved",
                            stride=1, activation=None) -> np.ndarray:
    """float64 NumPy shift followed by a strided 1x1 convolution, bias and activation."""
    sh, sw = int_pair(stride, "stride", 1)
    shifted = shift2d_reference(x, kernel_size, dilation, assignment)[:, :, ::sh, ::sw]
    y = np.einsum("oc,nchw->nohw", np.asarray(weight, np.float64)[:, :, 0, 0], shifted)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[:, None, None]
    return apply_activation_reference(y, activation)


# ---------------------------------------------------------------- registry
def _spatial(shape) -> Tuple[int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(shape)}")
    return shape[1], shape[2], shape[3]


def _shift2d_shape(input_shapes, weight_shapes, attrs):
    channels, _, _ = _spatial(input_shapes[0])
    shift_table(channels, attrs["kernel_size"], attrs["assignment"])
    _dilation(attrs["dilation"])
    return [tuple(input_shapes[0])]


def _shift_conv1x1_shape(input_shapes, weight_shapes, attrs):
    channels, h, w = _spatial(input_shapes[0])
    shift_table(channels, attrs["kernel_size"], attrs["assignment"])
    _dilation(attrs["dilation"])
    wshape = tuple(weight_shapes["weight"])
    if len(wshape) != 4 or wshape[1] != channels or wshape[2:] != (1, 1):
        raise ValueError(f"weight must have shape (out_channels, {channels}, 1, 1), got {wshape}")
    if "bias" in weight_shapes and tuple(weight_shapes["bias"]) != (wshape[0],):
        raise ValueError(f"bias must have shape ({wshape[0]},), got {tuple(weight_shapes['bias'])}")
    sh, sw = int_pair(attrs["stride"], "stride", 1)
    parse_activation(attrs["activation"])
    return [(input_shapes[0][0], wshape[0], (h - 1) // sh + 1, (w - 1) // sw + 1)]


def _batch(shape) -> int:
    return shape[0] if isinstance(shape[0], (int, np.integer)) else 1


def _shift_conv1x1_count(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
    params = sum(int(np.prod(s)) for s in weight_shapes.values())
    n, co, ho, wo = output_shapes[0]
    return Counts(params=params, macs=_batch(output_shapes[0]) * co * ho * wo * input_shapes[0][1])


def _shift_window(attrs, weight_shapes) -> Window:
    k, d = attrs["kernel_size"], attrs["dilation"]
    stride = int_pair(attrs.get("stride", 1), "stride", 1)
    return Window(kernel=(k, k), stride=stride, dilation=(d, d))


class _OffsetCache:
    """Per-channel offsets of one node, computed when its channel count is first seen."""

    def __init__(self, attrs):
        self.attrs = attrs
        self.channels = None
        self.offsets = None

    def __call__(self, channels: int):
        if channels != self.channels:
            a = self.attrs
            self.offsets = _offsets(channels, a["kernel_size"], a["dilation"], a["assignment"])
            self.channels = channels
        return self.offsets


def _prepare_shift2d(weights, attrs):
    offsets = _OffsetCache(attrs)

    def run(x, out=None):
        x = as_nchw(x)
        return _run_shift2d(x, *offsets(x.shape[1]), out)

    return run


def _prepare_shift_conv1x1(weights, attrs):
    offsets = _OffsetCache(attrs)
    weight = as_float32(weights["weight"], "weight", ndim=4)
    wmat = np.ascontiguousarray(weight.reshape(weight.shape[0], -1))
    bias = weights.get("bias")
    bias = None if bias is None else as_float32(bias, "bias", ndim=1)
    stride = int_pair(attrs["stride"], "stride", 1)

    def run(x, out=None):
        x = as_nchw(x)
        _check_1x1(x, weight, bias)
        return _run_shift_conv1x1(x, wmat, bias, *offsets(x.shape[1]), stride, attrs["activation"], out)

    return run


_SHIFT_ATTRS = {"kernel_size": 3, "dilation": 1, "assignment": "interleaved"}

register(OpSpec(
    name="shift2d",
    fn=shift2d,
    infer_shape=_shift2d_shape,
    attrs=dict(_SHIFT_ATTRS),
    count=lambda *args: Counts(),
    window=_shift_window,
    prepare=_prepare_shift2d,
    reference=shift2d_reference,
    doc="per-channel integer shift with zero fill (no parameters, no multiplications)",
))

register(OpSpec(
    name="shift_conv1x1",
    fn=shift_conv1x1,
    infer_shape=_shift_conv1x1_shape,
    weights=("weight", "bias?"),
    attrs={**_SHIFT_ATTRS, "stride": 1, "activation": None},
    count=_shift_conv1x1_count,
    window=_shift_window,
    prepare=_prepare_shift_conv1x1,
    reference=shift_conv1x1_reference,
    doc="shift fused into the following 1x1 convolution (the shift is applied while gathering)",
))
