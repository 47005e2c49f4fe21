"""Convolutions: conv2d (Winograd, 1x1, depthwise, im2col), conv1d, conv_transpose2d.

All take NCHW (NCL for conv1d) float32 arrays and PyTorch's argument names and
semantics; float64 and non-contiguous inputs are converted (a copy), other
dtypes raise TypeError.  ``padding`` may be an int, ``(ph, pw)`` or ONNX-order
``(top, left, bottom, right)``.  Bias, the fused activation and (conv2d) a
residual are applied in each kernel's output loop, and so is (conv2d) a stride-2
max pool of the result (``pool="max2x2"``, ``"max3x3s2"``..., see :data:`FUSED_POOLS`).

``prepare_conv2d`` packs the weights once for one algorithm (the executor uses
it through the registry's ``prepare`` hook); ``conv2d`` is prepare + call.
How ``algorithm="auto"`` chooses is documented in ``docs/kernels.md`` and in
:func:`choose_algorithm`.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from pyconv import _threads
from pyconv._core import conv_gemm as _gemm
from pyconv._core import conv_transpose as _transpose
from pyconv._core import depthwise as _depthwise
from pyconv._core import pointwise_panels as _panels
from pyconv._threads import get_num_threads, threads_for
from pyconv.ops import _pool_reference
from pyconv.ops._args import (
    ACT_LEAKY, apply_activation_reference, as_float32, check_out, conv_output_size, int_pair, padding4,
    parse_activation, pool_output_size,
)
from pyconv.ops._spec_helpers import bind_with_out
from pyconv.registry import Counts, OpSpec, Window, register

__all__ = [
    "conv2d", "prepare_conv2d", "PreparedConv2d", "conv1d", "conv_transpose2d",
    "choose_algorithm", "winograd_tile_for", "ALGORITHMS", "FUSED_POOLS",
]

ALGORITHMS = ("auto", "winograd", "winograd2", "winograd4", "winograd6", "1x1", "depthwise", "im2col", "direct")
# Pools a conv2d may apply to its own output (``pool=``), as (kernel, ceil_mode) of a
# max_pool2d with stride 2 and no padding: a 2x2 window (VGG's) or an overlapping 3x3
# one (SqueezeNet's, AlexNet's; in ceil mode an even-sized output gets a last, clipped
# window).  The GEMM conv pools in its output loop (and Winograd the 2x2 pool), so
# the full-size output never reaches memory; the other kernels, and clipped windows,
# write it to a work buffer and pool that (docs/kernels.md).
POOL_KINDS = {"max2x2": (2, False), "max3x3s2": (3, False), "max3x3s2_ceil": (3, True)}
FUSED_POOLS = tuple(POOL_KINDS)
# "auto" uses Winograd only from this many input and output channels on: below
# it the transforms cost more than the GEMM they save (measured, docs/kernels.md).
WINOGRAD_MIN_CHANNELS = 16
# Winograd's tile is chosen per input shape (winograd_tile_for).  Each of the
# (m+2)^2 GEMMs of F(m x m, 3x3) has one row per output tile and streams that
# position's Ci x Co transformed filters once per call: with few tiles and many
# channels the filters' memory traffic, not the multiplies, sets the time.
# F(4x4) needs at least this many tiles (thin GEMMs below it run slowly) ...
WINOGRAD4_MIN_TILES = 48
# ... and a tile size is used only while its transformed filters amount to at
# most this many bytes per output tile; "auto" runs im2col when even F(2x2)
# exceeds it.  With sgemm: F(4x4) wins at 385 KiB (256->512 @28) and loses to
# F(2x2) at 770 KiB (512 @28); F(2x2) beats im2col at 342 KiB (512 @14) and loses
# at 1 MiB (512 @7).
WINOGRAD_FILTER_BYTES_PER_TILE = 512 << 10
# With the filters in column panels for the blocked loop (_WinogradKernel.panels),
# read sequentially, larger filters pay: alone, cold caches, F(4x4) beats F(2x2)
# at 770 KiB (512 @28, 14.2 vs 18.3 ms) and F(2x2) beats im2col at 1 MiB (512 @7,
# 2.8 vs 3.4 ms) and 4 MiB (1024 @7, 10.7 vs 12.3 ms).  ResNet-18 ran 7 % faster
# (9-12 % at 2 threads), VGG-11 6 %.
WINOGRAD_PANELS_FILTER_BYTES_PER_TILE = 4 << 20
# Winograd's per-position GEMMs run the blocked loop (see _BLOCKED_MAX_WEIGHTS) from
# this many filters per position (C_in x C_out) on, where sgemm's packed copy of
# U[p], megabytes per conv in deep layers, costs as much as the multiplies.
# Measured interleaved with other layers (caches cold, as in a network), 1 thread,
# loop / sgemm: 256 @7 0.53, 192 @14 0.70, 384 @14 0.76, 512 @14 0.79, 256 @14
# 0.82, 256 @28 0.87.  With 12-row register blocks (blocked_gemm.h) also 128 @28
# 0.86, 128 @14 0.91, 64->256 @13 0.96, 48->192 @13 0.96, 64->128 @56 0.97; below
# it 64 @56 and 32->128 @27 even, 16->64 @55 1.08.
_WINOGRAD_BLOCKED_MIN_FILTER = 1 << 13
# Floats of one GEMM task's B and C tiles: 2 MiB (the L2 of one core here) for
# 1x1 convs, which read B in place; 1 MiB for kxk, whose im2col tile is
# written first and must stay in L2 beside the BLAS's packed panels (measured).
_GEMM_TILE_BUDGET_1X1 = 1 << 19
_GEMM_TILE_BUDGET_IM2COL = 1 << 18
# ... and at most this many pixels per kxk tile: first layers (C_in = 3, K = 27)
# ran 1.4-1.7x faster with 256-pixel tiles than with 2500-4200 (measured,
# docs/kernels.md); larger K is indifferent between 128 and 1024.
_IM2COL_MAX_TILE_COLS = 256
# A tile of a conv fused with a 3x3 stride-2 pool computes the row after its pairs
# again (the next tile's first): at least this many pairs keep that to an eighth.  In
# SqueezeNet, 3->64 s2 @224 with its pool took 0.76 ms with one pair per tile, 0.64-0.71
# with 3-8 (0.82 for the conv, then max_pool2d).
_POOL3_MIN_PAIRS = 4
# 1x1 convs run the register-blocked GEMM loop (blocked_gemm_tile) instead of sgemm.
# In a network their large outputs or inputs are cold, and the loop writes each
# output once (sgemm with beta = 0 zeroes C in a pass of its own) and streams B in
# short blocks: with 8-row register blocks, MobileNetV2's and SqueezeNet's small
# layers (at most 32 input or output channels, or not expanding with at most 64K
# weights) ran 10-35 % faster in-network, while wider ones (96->576 @14) ran faster
# in sgemm.  With 12-row blocks the loop wins there too (alone, cold, 1 thread, loop
# vs sgemm): 64->384 and 96->576 @14 0.88-0.94, 64->256 @13 0.86, 512->1000 @13 0.90,
# 64->256 @56 and 128->512 @28 0.88 (2 threads 0.85-0.89); large weight matrices
# (1024->256, 256->1024, 2048->512 @14) even (measured, docs/kernels.md).
# kxk convs (im2col tiles) with K > _BLOCKED_MAX_K and at most _BLOCKED_MAX_WEIGHTS
# weights per group take the loop too: it reads the im2col tile where it is, which sgemm
# copies once more to pack it.  Alone, 1 thread, loop vs sgemm: ResNet's 7x7 conv1
# (K = 147) 0.76, 5x5 16->32 @28 0.76, 3x3 16->16 @56 and 32->32 @28 0.76-0.79;
# 64->128 3x3 s2 (74K weights) even, 128->128 3x3 @28 (147K) 1.09.  First layers
# with K = 27, bound by writing their large outputs, ran 17-23 % slower at stride 2
# (and 8 % with 12-row blocks), so with AVX-512 they keep sgemm, unless a fused max
# pool keeps their output in cache: VGG's 3->64 @224 then ran 12-13 % faster with the
# loop (1 and 2 threads).  With AVX2's 256-bit tiles the loop wins there too (alone,
# warm, 1 thread, loop vs sgemm): 3->32 s2 @224 0.42 vs 0.61 ms, 3->24 s2 0.35 vs
# 0.52-0.57, 3->64 @224 2.7-3.3 vs 4.3-4.6.
_BLOCKED_MAX_K = 32
_BLOCKED_MAX_WEIGHTS = 1 << 16
# With AVX2's 256-bit tiles 1x1 convs take the loop only with at most this many input
# or output channels: wider ones ran faster in sgemm, NCHW or panels (alone, warm, 1
# thread, loop vs sgemm, ms: 64->256 @56 1.85 vs 1.37, 256->1024 @14 1.70 vs 1.15,
# 512->1000 @13 3.05 vs 1.96, 64->384 @14 0.160 vs 0.125, 160->960 @7 0.233 vs 0.199),
# narrow ones in the loop (32->16 @112 0.216 vs 0.40, 144->24 @56 0.36 vs 0.50, 192->32
# @28 0.154 vs 0.192, 16->96 @112 0.73 vs 0.77; 32->192 @28 0.158 vs 0.147).
_NARROW_TILES_MAX_1X1_CHANNELS = 32


# GEMM convs (groups 1, C_out >= 32) run transposed on weights packed in panels
# (pointwise_panels.pyx), where the blocked loop pays: 1x1 stride-1 unpadded convs
# with outputs of at most _PANELS_MAX_PIXELS pixels on their input (PanelConv1x1);
# the others, whatever their size, with at least _PANEL_CONV_MIN_IN input channels
# or long runs of taps (below), as implicit GEMMs on their phase planes made
# channels-innermost (PanelConv).  Alone, 1 thread, PanelConv against im2col + sgemm:
# 3x3 s2 64->128 @56, 128->256 @28, 256->512 @14 1.29 -> 1.07, 1.27 -> 1.02, 1.34 ->
# 1.14 ms (onnxruntime 0.87, 0.88, 0.97).  With few input channels (first layers) a
# tap is a few multiplies per loop set-up: ResNet's 7x7 conv1 ran 2.47 -> 2.72 ms
# taking each tap alone.  Taps one pixel apart in their phase plane are read as one
# run (tap_runs): with K >= _PANEL_CONV_MIN_K and runs of _PANEL_CONV_MIN_RUN k or
# more on average such convs run faster as PanelConv (alone, cold, 1 thread, GemmConv
# -> PanelConv: 7x7 s2 3->64 @224 2.66-2.96 -> 2.32-2.52 ms, 7x7 s1 3->64 @112 2.26
# -> 2.06, 11x11 s4 3->64 @224 1.44 -> 1.35, 5x5 s2 8->64 @112 0.93 -> 0.81), while
# RGB 3x3 and 5x5 layers (K = 27, 75) and 3x3 8->32 (K = 72) ran slower (0.66 ->
# 0.94, 0.27 -> 0.31, 0.31 -> 0.40 ms) and stay on GemmConv (docs/kernels.md).
# Strided or padded 1x1 convs with more than _PANELS_MAX_PIXELS outputs take the NCHW
# loop on their one phase plane, which PanelConv would only transpose there and back
# (ResNet's downsamples, alone, cold: 64->128 @56 s2 0.231 -> 0.174 ms, 128->256 @28
# 0.179 -> 0.163; with 49 outputs PanelConv stays ahead: 512->1024 @14 0.49 vs 0.58).
_PANELS_MAX_PIXELS = 64
_PANEL_CONV_MIN_IN = 16
_PANEL_CONV_MIN_K = 128
_PANEL_CONV_MIN_RUN = 8


def _blocked_loop_pays() -> bool:
    """Whether the rules above apply on this CPU (the loop needs AVX2 or AVX-512, see
    conv_gemm.blocked_loop_pays); tests patch it to run the loop everywhere."""
    return _gemm.blocked_loop_pays()


def _wide_register_tiles() -> bool:
    """Whether the loop runs 512-bit tiles (AVX-512), where first layers keep sgemm (see
    _BLOCKED_MAX_K) and every 1x1 conv takes the loop (_NARROW_TILES_MAX_1X1_CHANNELS);
    tests patch it to check both rules on any CPU."""
    return _gemm.wide_register_tiles()


def _pointwise_loop_pays(in_channels: int, out_channels: int) -> bool:
    """Whether a 1x1 conv with these channels (per group) runs the blocked loop."""
    return _wide_register_tiles() or min(in_channels, out_channels) <= _NARROW_TILES_MAX_1X1_CHANNELS


# Output channels per block when threads split a GEMM conv's weights (sgemm's and the
# blocked loop's register blocks need a few; blocked_min_rows() is 8).
_MIN_ROWS_PER_BLOCK = 16
# Per-input-shape plans kept by a PreparedConv2d (the executor keeps 8 shapes).
_MAX_PLANS = 16


@functools.lru_cache(maxsize=None)
def _winograd_kernels():
    """The Winograd module, or None while it is not built."""
    try:
        from pyconv._core import winograd
    except ImportError:
        return None
    return winograd


# --------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class ConvGeometry:
    """Validated hyper-parameters of a 2-D convolution, tied to its weight shape."""

    out_channels: int
    in_channels: int
    groups: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    pads: Tuple[int, int, int, int]  # top, left, bottom, right
    dilation: Tuple[int, int]

    @classmethod
    def from_args(cls, weight_shape: Sequence[int], bias_shape, stride, padding, dilation, groups) -> "ConvGeometry":
        weight_shape = tuple(weight_shape)
        if len(weight_shape) != 4:
            raise ValueError(f"weight must have 4 dimensions (C_out, C_in/groups, kh, kw), got shape {weight_shape}")
        groups = _positive_int(groups, "groups")
        co, cig, kh, kw = weight_shape
        if min(weight_shape) < 1:
            raise ValueError(f"weight must not have empty dimensions, got shape {weight_shape}")
        if co % groups:
            raise ValueError(f"groups={groups} must divide the output channels of weight {weight_shape}")
        if bias_shape is not None and tuple(bias_shape) != (co,):
            raise ValueError(f"bias must have shape ({co},) for weight {weight_shape}, got {tuple(bias_shape)}")
        return cls(co, cig * groups, groups, (kh, kw), int_pair(stride, "stride", 1), padding4(padding),
                   int_pair(dilation, "dilation", 1))

    def output_shape(self, x_shape: Sequence[int]) -> Tuple[int, int, int, int]:
        """(N, C_out, H_out, W_out) for an input of ``x_shape``; ValueError when they do not fit."""
        x_shape = tuple(x_shape)
        if len(x_shape) != 4:
            raise ValueError(f"x must have 4 dimensions (N, C, H, W), got shape {x_shape}")
        n, c, h, w = x_shape
        if min(x_shape) < 1:
            raise ValueError(f"x must not be empty, got shape {x_shape}")
        if c != self.in_channels:
            raise ValueError(
                f"x has {c} channels but weight (C_out={self.out_channels}, C_in/groups="
                f"{self.in_channels // self.groups}) with groups={self.groups} expects {self.in_channels}; "
                f"x shape {x_shape}"
            )
        pt, pl, pb, pr = self.pads
        ho = conv_output_size(h, self.kernel[0], self.stride[0], pt, pb, self.dilation[0])
        wo = conv_output_size(w, self.kernel[1], self.stride[1], pl, pr, self.dilation[1])
        if ho <= 0 or wo <= 0:
            raise ValueError(
                f"conv output size would be {(n, self.out_channels, ho, wo)} for x shape {x_shape}, kernel "
                f"{self.kernel}, stride {self.stride}, padding {self.pads}, dilation {self.dilation}"
            )
        return n, self.out_channels, ho, wo

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.in_channels

    @property
    def winograd_applies(self) -> bool:
        return self.kernel == (3, 3) and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1


def _positive_int(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def choose_algorithm(geometry: ConvGeometry, algorithm: str = "auto") -> str:
    """The algorithm conv2d runs for ``geometry``; ValueError when a forced one does not apply.

    Rule for "auto": depthwise when groups == C_in (one input channel per
    group); the direct 1x1 GEMM for 1x1 kernels; "winograd" for 3x3 stride-1
    undilated ungrouped convs with at least WINOGRAD_MIN_CHANNELS input and
    output channels (when the Winograd kernel is built); tiled im2col + GEMM
    otherwise.  For such "winograd" convs the tile is chosen per input shape
    (:func:`winograd_tile_for`): F(4x4) or F(2x2), or, under "auto" only,
    im2col when the output has too few tiles for the transformed filters to pay
    (512 channels @7x7).  "winograd2/4/6" force a tile.  "direct" is an alias of
    "im2col" (the tiled im2col is an implicit GEMM: B is built one cache-sized
    tile at a time)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    g = geometry
    if algorithm == "auto":
        if g.is_depthwise:
            return "depthwise"
        if g.kernel == (1, 1):
            return "1x1"
        if (g.winograd_applies and min(g.in_channels, g.out_channels) >= WINOGRAD_MIN_CHANNELS
                and _winograd_kernels() is not None):
            return "winograd"
        return "im2col"
    if algorithm.startswith("winograd"):
        if not g.winograd_applies:
            raise ValueError(
                f"algorithm {algorithm!r} needs a 3x3 kernel, stride 1, dilation 1 and groups=1; got kernel "
                f"{g.kernel}, stride {g.stride}, dilation {g.dilation}, groups {g.groups}"
            )
        if _winograd_kernels() is None:
            raise ValueError(f"algorithm {algorithm!r} is unavailable: pyconv._core.winograd is not built")
        return algorithm
    if algorithm == "1x1" and g.kernel != (1, 1):
        raise ValueError(f"algorithm '1x1' needs a 1x1 kernel, got kernel {g.kernel}")
    if algorithm == "depthwise" and not g.is_depthwise:
        raise ValueError(
            f"algorithm 'depthwise' needs groups == C_in, got groups={g.groups} with C_in={g.in_channels}"
        )
    return "im2col" if algorithm == "direct" else algorithm


# --------------------------------------------------------------------------- kernels

class _Scratch(threading.local):
    """Zeroed float32 work buffers kept across calls (no allocation per run), one set per
    calling thread.  Kernels rely on the zeroing only for memory they never write."""

    def get(self, name: str, shape: tuple) -> np.ndarray:
        buf = self.__dict__.get(name)
        if buf is not None and buf.shape == shape:  # the usual case, without the generator below
            return buf
        if buf is None or any(have < want for have, want in zip(buf.shape, shape)):
            buf = self.__dict__[name] = np.zeros(shape, np.float32)
        return buf


class _Run:
    """A kernel planned for one input shape and thread count.

    ``call(x, residual, out, *buffers)`` runs it on work buffers of ``scratch`` (name,
    shape) pairs; called as ``run(x, residual, out)`` it takes them from its kernel's
    thread-local scratch, while an executor step binds buffers of its own (see
    PreparedConv2d.bind_step)."""

    __slots__ = ("call", "scratch", "local")

    def __init__(self, call: Callable[..., None], scratch: Tuple[Tuple[str, tuple], ...] = (),
                 local: Optional["_Scratch"] = None) -> None:
        self.call, self.scratch, self.local = call, scratch, local

    def __call__(self, x: np.ndarray, residual: Optional[np.ndarray], out: np.ndarray) -> None:
        self.call(x, residual, out, *[self.local.get(name, shape) for name, shape in self.scratch])


# A kernel's ``plan(x_shape, out_shape, nthreads, pool)`` does the per-shape work
# once (tile sizes, scratch sizes, algorithm choice) and returns a ``_Run``.  out_shape
# is the conv's; with ``pool`` (one of FUSED_POOLS) the run writes it pooled
# (pooled_shape), or the plan is None when the kernel cannot pool in its output loop.


def pooled_shape(shape: Sequence[int], pool: str) -> Tuple[int, int, int, int]:
    """An [N, C, H, W] shape after the fused ``pool`` (POOL_KINDS: its window and mode)."""
    n, c, h, w = shape
    k, ceil_mode = POOL_KINDS[pool]
    return (n, c) + tuple(pool_output_size(size, k, 2, 0, 0, 1, ceil_mode) for size in (h, w))


def _clips_windows(pool: str, shape: Sequence[int]) -> bool:
    """Whether ``pool`` (in ceil mode) has a clipped last window on a conv output of ``shape``."""
    k, ceil_mode = POOL_KINDS[pool]
    return ceil_mode and any((size - k) % 2 for size in shape[2:])


def _pool_after(run: _Run, conv_shape: Tuple[int, ...], pool: str) -> _Run:
    """``run`` (a conv into ``conv_shape``) followed by ``pool``: the conv writes a work
    buffer that max_pool2d then reads (for kernels that cannot pool in their loop)."""
    from pyconv.ops.pool import max_pool2d

    conv, (window, ceil_mode) = run.call, POOL_KINDS[pool]

    def call(x, residual, out, *buffers):
        *work, full = buffers
        conv(x, residual, full, *work)
        max_pool2d(full, window, 2, ceil_mode=ceil_mode, out=out)
    return _Run(call, run.scratch + (("pooled_conv", tuple(conv_shape)),), run.local or _Scratch())


def _non_decreasing(epilogue) -> bool:
    """Whether an epilogue's activation never decreases (then it commutes with a max)."""
    kind, _, _, slope = epilogue
    return kind != ACT_LEAKY or slope >= 0

class _GemmKernel:
    """1x1 and im2col convs: tiled GEMM on NCHW (pyconv/_core/conv_gemm.pyx)."""

    def __init__(self, g: ConvGeometry, weight: np.ndarray, bias, epilogue):
        self.g = g
        self.wmat = np.ascontiguousarray(weight.reshape(g.out_channels, -1))
        self.bias, self.epilogue = bias, epilogue
        self._scratch = _Scratch()
        self.weight = weight
        self._panels = None   # pack_panels(weight) in PanelConv's tap_order (1x1: wmat's order), made on first use

    def panel_route(self, out_hw: Tuple[int, int]) -> Optional[str]:
        """"1x1" (PanelConv1x1), "implicit" (PanelConv) or None (GemmConv) for an output
        plane of ``out_hw`` (see _PANELS_MAX_PIXELS)."""
        g = self.g
        if g.groups != 1 or g.out_channels < _panels.MIN_OUT_CHANNELS or not _blocked_loop_pays():
            return None
        if g.kernel == (1, 1) and not _pointwise_loop_pays(g.in_channels, g.out_channels):
            return None
        ho, wo = out_hw
        _, wq, direct = _gemm.gemm_layout(*g.kernel, g.stride, g.pads, g.dilation, ho, wo)
        if direct:
            return "1x1" if _panels.MIN_PIXELS <= ho * wo <= _PANELS_MAX_PIXELS else None
        if g.kernel == (1, 1) and ho * wo > _PANELS_MAX_PIXELS:
            return None   # the NCHW loop reads B straight from the phase plane (no transposes)
        k = g.in_channels * g.kernel[0] * g.kernel[1]
        runs = len(_panels.tap_runs(g.kernel, g.stride, g.dilation))
        long_runs = k >= _PANEL_CONV_MIN_K and k >= _PANEL_CONV_MIN_RUN * runs
        enough_inputs = g.in_channels >= _PANEL_CONV_MIN_IN or long_runs
        return "implicit" if enough_inputs and ho * wq >= _panels.MIN_PIXELS else None

    def split(self, pixels: int, nthreads: int) -> Tuple[int, int]:
        """(output pixels per GEMM task, output-channel blocks per tile).

        Tiles keep B and C in L2.  With fewer (group, tile) tasks than threads (deep
        layers: few pixels, megabytes of weights) each tile's output channels are split
        instead of its pixels: every thread then packs only its share of the weights
        (sgemm repacks its whole A on every call).  Otherwise tiles are evened out
        over the threads."""
        k, cog, groups = self.wmat.shape[1], self.g.out_channels // self.g.groups, self.g.groups
        if self.g.kernel == (1, 1):
            cap = max(64, _GEMM_TILE_BUDGET_1X1 // (k + cog))
        else:
            cap = max(64, min(_IM2COL_MAX_TILE_COLS, _GEMM_TILE_BUDGET_IM2COL // (k + cog)))
        ntiles = -(-pixels // cap)
        row_blocks = 1
        if groups * ntiles < nthreads and cog >= _MIN_ROWS_PER_BLOCK * nthreads:
            row_blocks = -(-nthreads // (groups * ntiles))
        elif groups * ntiles < 8 * nthreads:
            while (groups * ntiles) % nthreads:
                ntiles += 1
        tile = -(-pixels // ntiles)
        return min(pixels, -(-tile // 16) * 16), row_blocks

    def plan(self, x_shape, out_shape, nthreads, pool=None):
        g = self.g
        kh, kw = g.kernel
        ho, wo = out_shape[2:]
        route = self.panel_route((ho, wo))
        if route is not None:
            return None if pool else self._plan_panels(route, tuple(x_shape), tuple(out_shape), nthreads)
        hq, wq, direct = _gemm.gemm_layout(kh, kw, g.stride, g.pads, g.dilation, ho, wo)
        window = 0
        if pool:   # tiles of whole pairs of the output rows that the pool reads
            if _clips_windows(pool, out_shape):
                return None   # ceil mode's clipped last windows: pooled after the conv
            window = POOL_KINDS[pool][0]
            out_shape = pooled_shape(out_shape, pool)
            pixels = out_shape[2] * 2 * wo   # the pairs that start a pooled row's window
            step, row_blocks = self.split(pixels, nthreads)
            pairs = max(-(-step // (2 * wo)), _POOL3_MIN_PAIRS if window == 3 else 1)
            step = min(pixels, pairs * 2 * wo)
            tile = step + (window - 2) * wo   # and the row that a 3x3 window reaches past them
        else:
            tile, row_blocks = self.split(ho * wo, nthreads)
        tile_shape = (nthreads, _gemm.scratch_floats(self.wmat.shape[1], g.out_channels // g.groups, tile, kh, kw,
                                                     pool is not None))
        phase_shape = (1 if direct else _gemm.phase_floats(x_shape[1], g.stride, hq, wq),)
        cog = g.out_channels // g.groups
        k = self.wmat.shape[1]
        # first layers (K <= _BLOCKED_MAX_K) with 512-bit tiles are bound by writing their large
        # outputs, except when pooled: their output tiles then stay in cache and the loop wins
        first_layer_loop = pool or not _wide_register_tiles()
        if kh == kw == 1:
            loop_pays = _pointwise_loop_pays(k, cog)
        else:
            loop_pays = (_BLOCKED_MAX_K < k or first_layer_loop) and cog * k <= _BLOCKED_MAX_WEIGHTS
        blocked = (loop_pays and cog >= _gemm.blocked_min_rows() and tile >= _gemm.blocked_min_cols()
                   and _blocked_loop_pays())
        conv = _gemm.GemmConv(tuple(x_shape), self.wmat, self.bias, g.stride, g.pads, g.dilation, g.groups, kh, kw,
                              self.epilogue, tuple(out_shape), tile, nthreads, blocked, row_blocks, window)
        return _Run(conv, (("phases", phase_shape), ("tiles", tile_shape)), self._scratch)

    def _plan_panels(self, route: str, x_shape, out_shape, nthreads):
        """PanelConv1x1 on x itself (1x1, stride 1, unpadded) or PanelConv on its phase planes."""
        g = self.g
        if self._panels is None:   # one packing for both (a 1x1 conv may take either, by shape)
            self._panels = _panels.pack_panels(self.weight, _panels.tap_order(g.kernel, g.stride, g.dilation))
        if route == "1x1":
            conv = _panels.PanelConv1x1(x_shape, self._panels, self.bias, self.epilogue, out_shape, nthreads)
        else:
            conv = _panels.PanelConv(x_shape, self._panels, self.bias, self.epilogue, out_shape, g.kernel,
                                     g.stride, g.pads, g.dilation, nthreads)
        return _Run(conv, (("panel_work", (conv.scratch_floats(),)),), self._scratch)


class _DepthwiseKernel:
    """groups == C_in: channel lanes, row ring or phase planes (pyconv/_core/depthwise.pyx)."""

    def __init__(self, g: ConvGeometry, weight: np.ndarray, bias, epilogue):
        self.g = g
        self.weight = np.ascontiguousarray(weight)
        self.bias, self.epilogue = bias, epilogue
        self._scratch = _Scratch()

    def plan(self, x_shape, out_shape, nthreads, pool=None):
        if pool:
            return None
        g = self.g
        nthreads = min(nthreads, x_shape[0] * x_shape[1])
        plane_shape = (nthreads, _depthwise.scratch_floats(out_shape[2], out_shape[3], *g.kernel, g.stride,
                                                           g.dilation))
        conv = _depthwise.DepthwiseConv(tuple(x_shape), self.weight, self.bias, g.stride, g.pads, g.dilation,
                                        self.epilogue, tuple(out_shape), nthreads)
        return _Run(conv, (("planes", plane_shape),), self._scratch)


def winograd_tile_for(n: int, in_channels: int, out_channels: int, ho: int, wo: int,
                      allow_im2col: bool = False, panels: bool = False) -> Optional[int]:
    """Output tile m of F(m x m, 3x3) for an (n, out_channels, ho, wo) output, or None for im2col.

    F(4x4) when it has at least WINOGRAD4_MIN_TILES tiles, else F(2x2); a tile
    qualifies only while its transformed filters, (m+2)^2 * C_in * C_out floats,
    come to at most WINOGRAD_FILTER_BYTES_PER_TILE per output tile
    (WINOGRAD_PANELS_FILTER_BYTES_PER_TILE with ``panels``, filters packed for the
    blocked loop, when the tiles fill its register block).  When F(2x2) does not
    qualify: None if ``allow_im2col`` (what "auto" does), else 2."""
    for m in (4, 2):
        tiles = n * -(-ho // m) * -(-wo // m)
        # the loop runs only with a register block's tiles (fewer take sgemm per panel)
        blocked = panels and tiles >= _gemm.blocked_min_rows()
        limit = WINOGRAD_PANELS_FILTER_BYTES_PER_TILE if blocked else WINOGRAD_FILTER_BYTES_PER_TILE
        filter_bytes = 4 * (m + 2) ** 2 * in_channels * out_channels
        if (m == 2 or tiles >= WINOGRAD4_MIN_TILES) and filter_bytes <= limit * tiles:
            return m
    return None if allow_im2col else 2


class _WinogradKernel:
    """3x3 stride-1 convs by Winograd F(m x m, 3x3) (pyconv/_core/winograd.pyx).

    ``tile`` None: chosen per input shape by :func:`winograd_tile_for` (with
    ``allow_im2col``, shapes too small for Winograd run im2col); filters are
    transformed for a tile on first use, so only the tiles in use hold memory."""

    def __init__(self, g: ConvGeometry, weight: np.ndarray, bias, epilogue, tile: Optional[int],
                 allow_im2col: bool = False):
        self.g = g
        self.tile, self.allow_im2col = tile, allow_im2col
        self.bias, self.epilogue = bias, epilogue
        self.module = _winograd_kernels()
        self.weight = np.ascontiguousarray(weight)
        self.packed = {}
        self._im2col = None
        # the per-position GEMMs by the blocked loop, which reads U in column panels
        self.panels = (g.in_channels * g.out_channels >= _WINOGRAD_BLOCKED_MIN_FILTER
                       and g.out_channels >= _gemm.blocked_min_cols() and _blocked_loop_pays())
        if tile is not None:
            self.packed[tile] = self.module.winograd_pack(self.weight, tile, self.panels)
            self.weight = None

    def tile_for(self, out_shape) -> Optional[int]:
        """The tile this kernel uses for ``out_shape`` (None: im2col)."""
        n, co, ho, wo = out_shape
        return self.tile or winograd_tile_for(n, self.g.in_channels, co, ho, wo, self.allow_im2col, self.panels)

    def plan(self, x_shape, out_shape, nthreads, pool=None):
        tile = self.tile_for(out_shape)
        if tile is None:
            if self._im2col is None:
                self._im2col = _GemmKernel(self.g, self.weight, self.bias, self.epilogue)
            return self._im2col.plan(x_shape, out_shape, nthreads, pool)
        # Winograd pools 2x2 only, before its epilogue, which then must not decrease
        # (docs/kernels.md)
        max_pool = pool is not None
        if max_pool and (POOL_KINDS[pool][0] != 2 or not _non_decreasing(self.epilogue)):
            return None
        packed = self.packed.get(tile)
        if packed is None:
            packed = self.packed[tile] = self.module.winograd_pack(self.weight, tile, self.panels)
        # the kernel keeps its own work buffers
        return _Run(self.module.WinogradConv(tuple(x_shape), packed, tile, self.bias, self.g.pads, self.epilogue,
                                             pooled_shape(out_shape, pool) if max_pool else tuple(out_shape), nthreads,
                                             max_pool=max_pool))


# --------------------------------------------------------------------------- conv2d

class PreparedConv2d:
    """A conv2d whose weights are packed once for one algorithm.

    Call it as ``prepared(x, residual=None, out=None)``; ``algorithm`` says which
    kernel family runs, :meth:`algorithm_for` the exact kernel for an input
    shape.  Per input shape the geometry, thread count, tiles and (for
    Winograd) the tile size are worked out on the first call and cached.
    ``pool``: None, or one of :data:`FUSED_POOLS` applied to the result (then
    no residual).  Built by :func:`prepare_conv2d`."""

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 activation=None, algorithm: str = "auto", pool: Optional[str] = None):
        weight = as_float32(weight, "weight")
        self.bias = None if bias is None else as_float32(bias, "bias")
        self.geometry = ConvGeometry.from_args(weight.shape, None if bias is None else self.bias.shape,
                                               stride, padding, dilation, groups)
        self.epilogue = parse_activation(activation)
        self.pool = check_pool(pool)
        self.algorithm = choose_algorithm(self.geometry, algorithm)
        kernel_args = (self.geometry, weight, self.bias, self.epilogue)
        if self.algorithm.startswith("winograd"):
            tile = self.algorithm[len("winograd"):]
            self._kernel = _WinogradKernel(*kernel_args, int(tile) if tile else None, allow_im2col=algorithm == "auto")
        elif self.algorithm == "depthwise":
            self._kernel = _DepthwiseKernel(*kernel_args)
        else:
            self._kernel = _GemmKernel(*kernel_args)
        g = self.geometry
        self._macs_per_output = (g.in_channels // g.groups) * g.kernel[0] * g.kernel[1]
        self._plans = {}

    def output_shape(self, x_shape: Sequence[int]) -> Tuple[int, int, int, int]:
        """Output shape for an input of ``x_shape``, pooled if ``pool`` (ValueError when it does not fit)."""
        return conv2d_output_shape(self.geometry, x_shape, self.pool)

    def algorithm_for(self, x_shape: Sequence[int]) -> str:
        """The kernel that runs for an input of ``x_shape``: "winograd2/4/6", "im2col", "1x1" or "depthwise"."""
        if isinstance(self._kernel, _WinogradKernel):
            tile = self._kernel.tile_for(self.geometry.output_shape(x_shape))
            return "im2col" if tile is None else f"winograd{tile}"
        return self.algorithm

    def _plan(self, x_shape):
        """(output shape, run(x, residual, out)) for inputs of ``x_shape``, made once per shape
        and thread setting."""
        key = (x_shape, get_num_threads())
        plan = self._plans.get(key)
        if plan is None:
            shape = self.output_shape(x_shape)
            conv_shape = self.geometry.output_shape(x_shape)
            nthreads = threads_for(float(np.prod(conv_shape)) * self._macs_per_output)
            run = self._kernel.plan(x_shape, conv_shape, nthreads, self.pool)
            if run is None:   # a kernel that cannot pool in its output loop
                run = _pool_after(self._kernel.plan(x_shape, conv_shape, nthreads), conv_shape, self.pool)
            plan = (shape, run)
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def __call__(self, x, residual=None, out: Optional[np.ndarray] = None) -> np.ndarray:
        x = as_float32(x, "x", ndim=4)
        shape, run = self._plan(x.shape)
        if residual is not None:
            if self.pool is not None:
                raise ValueError(f"a residual cannot be added before the fused pool {self.pool!r}")
            residual = as_float32(residual, "residual")
            if residual.shape != shape:
                raise ValueError(f"residual must have the output shape {shape}, got {residual.shape}")
        out = check_out(out, shape)
        if np.may_share_memory(out, x):
            raise ValueError("out must not overlap x (the kernels read x while writing out)")
        if residual is not None and np.may_share_memory(out, residual):
            residual = residual.copy()  # output rows are written before their residual is read
        run(x, residual, out)
        return out

    def bind_step(self, inputs: Sequence[np.ndarray], out: np.ndarray) -> Optional[Callable[..., np.ndarray]]:
        """``step(out=out)``: this conv on fixed arrays (an executor's planned buffers, reused every run).

        The checks of :meth:`__call__` run once, here; None when the arrays need its
        conversions or fail them (the caller then uses ``__call__``, which reports why)."""
        x, residual = inputs[0], (inputs[1] if len(inputs) > 1 else None)
        try:
            fits = (as_float32(x, "x", ndim=4) is x and check_out(out, self._plan(x.shape)[0]) is out
                    and not np.may_share_memory(out, x))
            if residual is not None:
                fits = fits and self.pool is None and as_float32(residual, "residual") is residual \
                    and residual.shape == out.shape and not np.may_share_memory(out, residual)
        except (ValueError, TypeError):
            return None
        if not fits:
            return None
        plan, shape = self._plan, x.shape
        run = plan(shape)[1]
        # This step's own work buffers (an executor state runs one call at a time), and the
        # kernel call for the thread setting of now: in a network the Python calls that
        # fetched thread-local buffers per run cost more than a small layer (cold caches).
        call, threads_now = run.call, _threads._num_threads
        buffers = tuple(np.zeros(shape_, np.float32) for _, shape_ in run.scratch)

        def step(out: np.ndarray = out) -> np.ndarray:
            if _threads._num_threads == threads_now:
                call(x, residual, out, *buffers)
            else:   # the thread setting changed since: planned again for it
                plan(shape)[1](x, residual, out)
            return out
        return step

    def __repr__(self) -> str:
        g = self.geometry
        pool = f", pool={self.pool!r}" if self.pool else ""
        return (f"PreparedConv2d({g.in_channels}->{g.out_channels}, kernel={g.kernel}, stride={g.stride}, "
                f"pads={g.pads}, dilation={g.dilation}, groups={g.groups}, algorithm={self.algorithm!r}{pool})")


def check_pool(pool: Optional[str]) -> Optional[str]:
    """``pool`` if it is None or one of :data:`FUSED_POOLS`, else ValueError."""
    if pool is not None and pool not in FUSED_POOLS:
        raise ValueError(f"pool must be None or one of {FUSED_POOLS}, got {pool!r}")
    return pool


def conv2d_output_shape(g: ConvGeometry, x_shape: Sequence[int], pool: Optional[str]) -> Tuple[int, int, int, int]:
    """conv2d's output shape, after its fused ``pool`` if any (ValueError when nothing is left)."""
    shape = g.output_shape(x_shape)
    if pool is None:
        return shape
    k = POOL_KINDS[pool][0]
    if min(shape[2:]) < k:
        raise ValueError(f"pool {pool!r} needs a conv output of at least {k}x{k}, got {shape[2]}x{shape[3]}")
    return pooled_shape(shape, pool)


def prepare_conv2d(weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                   activation=None, algorithm: str = "auto", pool: Optional[str] = None) -> PreparedConv2d:
    """Pack ``weight`` once for conv2d (Winograd transform, GEMM layout); see :class:`PreparedConv2d`."""
    return PreparedConv2d(weight, bias, stride, padding, dilation, groups, activation=activation, algorithm=algorithm,
                          pool=pool)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           residual=None, algorithm: str = "auto", pool: Optional[str] = None,
           out: Optional[np.ndarray] = None) -> np.ndarray:
    """2-D cross-correlation (PyTorch ``conv2d``) with fused bias, residual and activation.

    x: (N, C_in, H, W); weight: (C_out, C_in/groups, kh, kw); bias: (C_out,) or None.
    padding: int, (ph, pw) or (top, left, bottom, right).  residual: (N, C_out, H_out,
    W_out), added before the activation.  algorithm: one of ``ALGORITHMS``.  pool:
    None, "max2x2" or "max3x3s2" for ``max_pool2d(.., 2, 2)`` or ``max_pool2d(.., 3,
    2)`` of the result, computed in the conv's output loop where the kernel can (no
    residual then)."""
    prepared = PreparedConv2d(weight, bias, stride, padding, dilation, groups, activation=activation,
                              algorithm=algorithm, pool=pool)
    return prepared(x, residual=residual, out=out)


# --------------------------------------------------------------------------- conv1d

def _conv1d_as_2d(stride, padding, dilation):
    """(stride, (top, left, bottom, right), dilation) of the equivalent 1 x k conv2d on (N, C, 1, L)."""
    if isinstance(padding, (int, np.integer)):
        padding = (int(padding), int(padding))
    try:
        left, right = (int(p) for p in padding)
    except (TypeError, ValueError):
        raise ValueError(f"conv1d padding must be an int or (left, right), got {padding!r}") from None
    return (1, _scalar(stride, "stride")), (0, left, 0, right), (1, _scalar(dilation, "dilation"))


def _conv1d_weight(weight) -> np.ndarray:
    weight = as_float32(weight, "weight")
    if weight.ndim != 3:
        raise ValueError(f"conv1d weight must have 3 dimensions (C_out, C_in/groups, k), got shape {weight.shape}")
    return weight


def _scalar(value, name: str) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return _positive_int(value, name)


def _as_ncl(x) -> np.ndarray:
    x = as_float32(x, "x")
    if x.ndim != 3:
        raise ValueError(f"conv1d x must have 3 dimensions (N, C, L), got shape {x.shape}")
    return x


class PreparedConv1d:
    """conv1d with weights packed once: a 1 x k conv2d on (N, C, 1, L)."""

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None):
        stride2d, pads, dilation2d = _conv1d_as_2d(stride, padding, dilation)
        self.conv2d = PreparedConv2d(_conv1d_weight(weight)[:, :, None, :], bias, stride2d, pads, dilation2d, groups,
                                     activation=activation)
        self.algorithm = self.conv2d.algorithm

    def __call__(self, x, out: Optional[np.ndarray] = None) -> np.ndarray:
        x = _as_ncl(x)
        out4 = None if out is None else out[:, :, None, :]
        y = self.conv2d(x[:, :, None, :], out=out4)
        return y[:, :, 0, :] if out is None else out


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None) -> np.ndarray:
    """1-D cross-correlation (PyTorch ``conv1d``) on (N, C_in, L) with weight (C_out, C_in/groups, k).

    padding: int or (left, right).  Runs the 2-D kernels on (N, C, 1, L)."""
    return PreparedConv1d(weight, bias, stride, padding, dilation, groups, activation=activation)(x)


# --------------------------------------------------------------------------- conv_transpose2d

@dataclass(frozen=True)
class TransposeGeometry:
    """Validated hyper-parameters of a transposed 2-D convolution."""

    in_channels: int
    out_channels: int
    groups: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    pads: Tuple[int, int, int, int]
    output_padding: Tuple[int, int]
    dilation: Tuple[int, int]

    @classmethod
    def from_args(cls, weight_shape, bias_shape, stride, padding, output_padding, groups, dilation):
        weight_shape = tuple(weight_shape)
        if len(weight_shape) != 4:
            raise ValueError(
                f"conv_transpose2d weight must have 4 dimensions (C_in, C_out/groups, kh, kw), got shape {weight_shape}"
            )
        if min(weight_shape) < 1:
            raise ValueError(f"weight must not have empty dimensions, got shape {weight_shape}")
        groups = _positive_int(groups, "groups")
        ci, cog, kh, kw = weight_shape
        if ci % groups:
            raise ValueError(f"groups={groups} must divide the input channels of weight {weight_shape}")
        if bias_shape is not None and tuple(bias_shape) != (cog * groups,):
            raise ValueError(f"bias must have shape ({cog * groups},) for weight {weight_shape}, got {tuple(bias_shape)}")
        stride = int_pair(stride, "stride", 1)
        dilation = int_pair(dilation, "dilation", 1)
        output_padding = int_pair(output_padding, "output_padding", 0)
        for axis in range(2):
            if output_padding[axis] >= max(stride[axis], dilation[axis]):
                raise ValueError(
                    f"output_padding {output_padding} must be smaller than stride {stride} or dilation {dilation}"
                )
        return cls(ci, cog * groups, groups, (kh, kw), stride, padding4(padding), output_padding, dilation)

    def output_shape(self, x_shape):
        x_shape = tuple(x_shape)
        if len(x_shape) != 4:
            raise ValueError(f"x must have 4 dimensions (N, C, H, W), got shape {x_shape}")
        n, c, h, w = x_shape
        if min(x_shape) < 1:
            raise ValueError(f"x must not be empty, got shape {x_shape}")
        if c != self.in_channels:
            raise ValueError(f"x has {c} channels but conv_transpose2d weight expects {self.in_channels}; "
                             f"x shape {x_shape}")
        pt, pl, pb, pr = self.pads
        ho = (h - 1) * self.stride[0] - pt - pb + self.dilation[0] * (self.kernel[0] - 1) + self.output_padding[0] + 1
        wo = (w - 1) * self.stride[1] - pl - pr + self.dilation[1] * (self.kernel[1] - 1) + self.output_padding[1] + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"conv_transpose2d output size would be {(n, self.out_channels, ho, wo)} for x shape "
                             f"{x_shape}, kernel {self.kernel}, stride {self.stride}, padding {self.pads}")
        return n, self.out_channels, ho, wo


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     activation=None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Transposed 2-D convolution (PyTorch ``conv_transpose2d``), GEMM + col2im.

    x: (N, C_in, H, W); weight: (C_in, C_out/groups, kh, kw); padding: int, (ph, pw)
    or (top, left, bottom, right) cropped from the full output."""
    x = as_float32(x, "x", ndim=4)
    weight = as_float32(weight, "weight")
    bias = None if bias is None else as_float32(bias, "bias")
    g = TransposeGeometry.from_args(weight.shape, None if bias is None else bias.shape, stride, padding,
                                    output_padding, groups, dilation)
    shape = g.output_shape(x.shape)
    epilogue = parse_activation(activation)
    out = check_out(out, shape)
    if np.may_share_memory(out, x):
        raise ValueError("out must not overlap x (the kernels read x while writing out)")
    cog = g.out_channels // g.groups
    cols = np.empty((cog * g.kernel[0] * g.kernel[1], x.shape[2] * x.shape[3]), np.float32)
    nthreads = threads_for(float(cols.size) * x.shape[0] * g.groups * (g.in_channels // g.groups))
    _transpose.conv_transpose2d_gemm(x, weight, bias, g.stride, g.pads[:2], g.dilation, g.groups, epilogue,
                                     out, cols, nthreads)
    return out


# --------------------------------------------------------------------------- float64 references

def conv2d_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
                     residual=None, pool=None, **_ignored) -> np.ndarray:
    """Plain float64 NumPy conv2d (sliding windows + tensordot per group), then the
    reference max_pool2d for ``pool``, for tests."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    g = ConvGeometry.from_args(weight.shape, None if bias is None else np.shape(bias), stride, padding, dilation,
                               groups)
    n, co, ho, wo = g.output_shape(x.shape)
    pt, pl, pb, pr = g.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    sn, sc, sh, sw = xp.strides
    (kh, kw), (strh, strw), (dh, dw) = g.kernel, g.stride, g.dilation
    windows = np.lib.stride_tricks.as_strided(
        xp, (n, xp.shape[1], ho, wo, kh, kw), (sn, sc, sh * strh, sw * strw, sh * dh, sw * dw), writeable=False)
    cig, cog = g.in_channels // g.groups, co // g.groups
    y = np.empty((n, co, ho, wo))
    for grp in range(g.groups):
        part = np.tensordot(windows[:, grp * cig:(grp + 1) * cig], weight[grp * cog:(grp + 1) * cog],
                            axes=([1, 4, 5], [1, 2, 3]))
        y[:, grp * cog:(grp + 1) * cog] = part.transpose(0, 3, 1, 2)
    if bias is not None:
        y += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    if residual is not None:
        y += np.asarray(residual, np.float64)
    y = apply_activation_reference(y, activation)
    if pool is None:
        return y
    window, ceil_mode = POOL_KINDS[pool]
    return _pool_reference.max_pool2d(y, window, 2, ceil_mode=ceil_mode)


def conv1d_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None):
    """Plain float64 conv1d through :func:`conv2d_reference` on (N, C, 1, L)."""
    stride2d, pads, dilation2d = _conv1d_as_2d(stride, padding, dilation)
    y = conv2d_reference(np.asarray(x, np.float64)[:, :, None, :], np.asarray(weight, np.float64)[:, :, None, :],
                         bias, stride2d, pads, dilation2d, groups, activation=activation)
    return y[:, :, 0, :]


def conv_transpose2d_reference(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                               *, activation=None) -> np.ndarray:
    """Plain float64 transposed conv: scatter every kernel tap, then crop the padding."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    g = TransposeGeometry.from_args(weight.shape, None if bias is None else np.shape(bias), stride, padding,
                                    output_padding, groups, dilation)
    n, co, ho, wo = g.output_shape(x.shape)
    h, w = x.shape[2:]
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + g.output_padding[0]
    full_w = (w - 1) * sw + dw * (kw - 1) + 1 + g.output_padding[1]
    full = np.zeros((n, co, full_h, full_w))
    cig, cog = g.in_channels // g.groups, co // g.groups
    for grp in range(g.groups):
        xs = x[:, grp * cig:(grp + 1) * cig]
        for ki in range(kh):
            for kj in range(kw):
                tap = np.einsum("nchw,cd->ndhw", xs, weight[grp * cig:(grp + 1) * cig, :, ki, kj])
                full[:, grp * cog:(grp + 1) * cog, ki * dh:ki * dh + (h - 1) * sh + 1:sh,
                     kj * dw:kj * dw + (w - 1) * sw + 1:sw] += tap
    pt, pl = g.pads[:2]
    y = full[:, :, pt:pt + ho, pl:pl + wo].copy()
    if bias is not None:
        y += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return apply_activation_reference(y, activation)


# --------------------------------------------------------------------------- registry

def _conv2d_node(x, residual=None, *, weight, bias=None, out=None, **attrs):
    """conv2d as a graph node: inputs (x[, residual]), weights and attributes by name."""
    return conv2d(x, weight, bias, residual=residual, out=out, **attrs)


def _conv2d_node_reference(x, residual=None, *, weight, bias=None, **attrs):
    return conv2d_reference(x, weight, bias, residual=residual, **attrs)


def _conv2d_geometry(weight_shapes, attrs) -> ConvGeometry:
    return ConvGeometry.from_args(weight_shapes["weight"], weight_shapes.get("bias"), attrs["stride"],
                                  attrs["padding"], attrs["dilation"], attrs["groups"])


def _conv2d_infer_shape(input_shapes, weight_shapes, attrs):
    pool = check_pool(attrs["pool"])
    if pool is not None and len(input_shapes) > 1:
        raise ValueError("conv2d cannot add a residual (2nd input) before its pool")
    shape = conv2d_output_shape(_conv2d_geometry(weight_shapes, attrs), input_shapes[0], pool)
    if len(input_shapes) > 1 and tuple(input_shapes[1]) != shape:
        raise ValueError(f"conv2d residual must have the output shape {shape}, got {tuple(input_shapes[1])}")
    return [shape]


def _conv_counts(input_shapes, weight_shapes, attrs, output_shapes, transposed: bool = False) -> Counts:
    """Parameters (weight + bias where present), MACs, and the bias/residual additions
    (and a fused k x k pool's comparisons: k * k - 1 per pooled output).

    A conv's output pixel meets every tap of its filter (C_in/g * kh * kw MACs); a
    transposed conv's input pixel meets every tap (C_out/g * kh * kw)."""
    weight = tuple(weight_shapes["weight"])
    pooled = int(np.prod(output_shapes[0]))
    if attrs.get("pool") is not None:   # the conv's own output, before its pool
        output_shapes = [_conv2d_geometry(weight_shapes, attrs).output_shape(input_shapes[0])]
    outputs = int(np.prod(output_shapes[0]))
    has_bias = weight_shapes.get("bias") is not None
    params = int(np.prod(weight)) + (int(np.prod(weight_shapes["bias"])) if has_bias else 0)
    macs = int(np.prod(input_shapes[0] if transposed else output_shapes[0])) * int(np.prod(weight[1:]))
    adds = outputs * (int(has_bias) + (1 if len(input_shapes) > 1 else 0))
    if attrs.get("pool") is not None:
        adds += (POOL_KINDS[attrs["pool"]][0] ** 2 - 1) * pooled
    return Counts(params=params, macs=macs, adds=adds)


def _conv2d_window(attrs, weight_shapes) -> Window:
    g = _conv2d_geometry(weight_shapes, attrs)
    if attrs.get("pool") is None:
        return Window(kernel=g.kernel, stride=g.stride, dilation=g.dilation)
    # a k x k stride-2 window over the conv's outputs: k - 1 more conv strides of input
    # per axis, every other output
    k = POOL_KINDS[attrs["pool"]][0]
    return Window(kernel=tuple(g.dilation[a] * (g.kernel[a] - 1) + 1 + (k - 1) * g.stride[a] for a in range(2)),
                  stride=tuple(2 * s for s in g.stride))


def _conv2d_prepare(weights, attrs):
    return PreparedConv2d(weights["weight"], weights.get("bias"), attrs.get("stride", 1), attrs.get("padding", 0),
                          attrs.get("dilation", 1), attrs.get("groups", 1), activation=attrs.get("activation"),
                          algorithm=attrs.get("algorithm", "auto"), pool=attrs.get("pool"))


def _conv1d_infer_shape(input_shapes, weight_shapes, attrs):
    x_shape = tuple(input_shapes[0])
    if len(x_shape) != 3:
        raise ValueError(f"conv1d x must have 3 dimensions (N, C, L), got shape {x_shape}")
    w_shape = tuple(weight_shapes["weight"])
    if len(w_shape) != 3:
        raise ValueError(f"conv1d weight must have 3 dimensions (C_out, C_in/groups, k), got shape {w_shape}")
    stride2d, pads, dilation2d = _conv1d_as_2d(attrs["stride"], attrs["padding"], attrs["dilation"])
    g = ConvGeometry.from_args(w_shape[:2] + (1,) + w_shape[2:], weight_shapes.get("bias"), stride2d, pads,
                               dilation2d, attrs["groups"])
    n, co, _, lo = g.output_shape(x_shape[:2] + (1,) + x_shape[2:])
    return [(n, co, lo)]


def _conv1d_window(attrs, weight_shapes) -> Window:
    return Window(kernel=(1, tuple(weight_shapes["weight"])[2]), stride=(1, _scalar(attrs["stride"], "stride")),
                  dilation=(1, _scalar(attrs["dilation"], "dilation")))


def _conv1d_prepare(weights, attrs):
    return PreparedConv1d(weights["weight"], weights.get("bias"), attrs.get("stride", 1), attrs.get("padding", 0),
                          attrs.get("dilation", 1), attrs.get("groups", 1), activation=attrs.get("activation"))


def _transpose_geometry(weight_shapes, attrs) -> TransposeGeometry:
    return TransposeGeometry.from_args(weight_shapes["weight"], weight_shapes.get("bias"), attrs["stride"],
                                       attrs["padding"], attrs["output_padding"], attrs["groups"], attrs["dilation"])


def _transpose_infer_shape(input_shapes, weight_shapes, attrs):
    return [_transpose_geometry(weight_shapes, attrs).output_shape(input_shapes[0])]


def _transpose_window(attrs, weight_shapes) -> Window:
    # An output pixel depends on ceil(span / stride) input pixels along each axis.
    # The upsampling itself (a fractional stride) cannot be expressed by Window,
    # so downstream receptive fields are over-estimated by up to the stride.
    g = _transpose_geometry(weight_shapes, attrs)
    span = tuple(-(-(g.dilation[a] * (g.kernel[a] - 1) + 1) // g.stride[a]) for a in range(2))
    return Window(kernel=span)


_CONV_ATTRS = dict(stride=1, padding=0, dilation=1, groups=1, activation=None)

register(OpSpec(
    name="conv2d", fn=_conv2d_node, infer_shape=_conv2d_infer_shape, inputs=(1, 2), weights=("weight", "bias?"),
    attrs=dict(_CONV_ATTRS, algorithm="auto", pool=None), count=_conv_counts, window=_conv2d_window,
    prepare=_conv2d_prepare, reference=_conv2d_node_reference,
    doc="2-D convolution with fused bias, activation, optional residual (2nd input) or 2x2 max pool",
))
register(OpSpec(
    name="conv1d", fn=conv1d, infer_shape=_conv1d_infer_shape, inputs=1, weights=("weight", "bias?"),
    attrs=dict(_CONV_ATTRS), count=_conv_counts, window=_conv1d_window, prepare=_conv1d_prepare,
    reference=conv1d_reference, doc="1-D convolution on (N, C, L) with fused bias and activation",
))
register(OpSpec(
    name="conv_transpose2d", fn=conv_transpose2d, infer_shape=_transpose_infer_shape, inputs=1,
    weights=("weight", "bias?"), attrs=dict(_CONV_ATTRS, output_padding=0),
    count=functools.partial(_conv_counts, transposed=True),
    window=_transpose_window, prepare=bind_with_out(conv_transpose2d), reference=conv_transpose2d_reference,
    doc="transposed 2-D convolution (weight C_in x C_out/groups x kh x kw) with fused bias and activation",
))
