"""Pooling: max, average, LP, global, adaptive, spatial pyramid, SPPF, RoI.

PyTorch names and semantics (torchvision's for the RoI ops); where ONNX differs
an argument selects its convention.  The choices (ceil_mode rule, divisors,
NaN propagation, LP conventions, SPP bins, RoI box rules) are documented in
``docs/pooling.md``.  Every function takes ``out=`` (a C-contiguous float32
array of the output shape) so the executor can write into planned buffers.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from pyconv import _threads
from pyconv._core import pooling as _kernels
from pyconv._threads import threads_for
from pyconv.ops import _pool_reference as _reference
from pyconv.ops._args import IntPair, as_nchw, check_out, int_pair, padding4, pool_output_size
from pyconv.registry import REQUIRED, Counts, OpSpec, Window, register

__all__ = [
    "max_pool2d",
    "avg_pool2d",
    "lp_pool2d",
    "global_max_pool2d",
    "global_avg_pool2d",
    "global_lp_pool2d",
    "adaptive_max_pool2d",
    "adaptive_avg_pool2d",
    "spatial_pyramid_pool",
    "sppf",
    "roi_pool",
    "roi_align",
    "pool_output_size",
]

Pads = Tuple[int, int, int, int]


# ----------------------------------------------------------------------------- geometry

_FLOAT32 = np.dtype(np.float32)


def _as_input(x) -> np.ndarray:
    """``as_nchw`` with a fast exit for what the executor passes (pooling is often cheaper
    than the checks).  NumPy's float32 dtype is one object (a dtype that is not goes the
    slow way, and as_nchw keeps it unless it has to convert)."""
    if type(x) is np.ndarray and x.dtype is _FLOAT32 and x.ndim == 4 and x.flags.c_contiguous:
        return x
    return as_nchw(x)


def _stride_pair(stride, kernel: Tuple[int, int]) -> Tuple[int, int]:
    """PyTorch: stride None (or an empty list) means stride = kernel_size."""
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        return kernel
    return int_pair(stride, "stride", 1)


class _WindowGeometry:
    """Kernel, stride, dilation, padding (top, left, bottom, right) and output size of a windowed pool."""

    __slots__ = ("kernel", "stride", "dilation", "pads", "out_hw", "taps", "pool")

    def __init__(self, op: str, in_hw: Sequence[int], kernel_size: IntPair, stride: Optional[IntPair],
                 padding, dilation: IntPair, ceil_mode: bool):
        self.kernel = int_pair(kernel_size, "kernel_size", 1)
        self.stride = _stride_pair(stride, self.kernel)
        self.dilation = int_pair(dilation, "dilation", 1)
        self.pads = padding4(padding)
        sides = ("top", "left", "bottom", "right")
        for side, pad, k in zip(sides, self.pads, self.kernel * 2):
            if pad > k // 2:
                raise ValueError(
                    f"{op}: padding must be at most half the kernel size, got {side} padding {pad} "
                    f"for kernel_size {self.kernel} (limit {k // 2})"
                )
        H, W = in_hw
        pt, pl, pb, pr = self.pads
        Ho = pool_output_size(H, self.kernel[0], self.stride[0], pt, pb, self.dilation[0], ceil_mode)
        Wo = pool_output_size(W, self.kernel[1], self.stride[1], pl, pr, self.dilation[1], ceil_mode)
        if Ho < 1 or Wo < 1:
            span = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))
            raise ValueError(
                f"{op}: the window {span[0]}x{span[1]} (kernel_size {self.kernel}, dilation {self.dilation}) "
                f"is larger than the padded input {H + pt + pb}x{W + pl + pr} (input {H}x{W}, padding {self.pads})"
            )
        self.out_hw = (Ho, Wo)
        self.taps = self.kernel[0] * self.kernel[1]
        self.pool = _kernels.WindowPool(tuple(in_hw), self.out_hw, self.kernel, self.stride, pt, pl, self.dilation)


@functools.lru_cache(maxsize=512)
def _cached_geometry(op, in_hw, kernel_size, stride, padding, dilation, ceil_mode) -> _WindowGeometry:
    return _WindowGeometry(op, in_hw, kernel_size, stride, padding, dilation, ceil_mode)


def _hashable(value):
    return tuple(value) if isinstance(value, (list, np.ndarray)) else value


def _geometry(op: str, in_hw, kernel_size, stride, padding, dilation, ceil_mode) -> _WindowGeometry:
    """The window geometry for one call; cached, since working it out costs more than a small pool."""
    try:   # ints and tuples hash as they are (the common case: no conversions)
        return _cached_geometry(op, in_hw, kernel_size, stride, padding, dilation, ceil_mode)
    except TypeError:   # lists or arrays
        return _cached_geometry(op, tuple(in_hw), _hashable(kernel_size), _hashable(stride),
                                _hashable(padding), _hashable(dilation), bool(ceil_mode))


def _window_counts(size: int, out: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                   count_pad: bool) -> np.ndarray:
    """Per output position, the window length PyTorch divides by along one axis:
    clipped to the padded input when ``count_pad`` (the ceil-mode overhang never counts),
    else to the input itself."""
    start = np.arange(out) * stride - pad_before
    end = np.minimum(start + kernel, size + pad_after)
    if not count_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return end - start


@functools.lru_cache(maxsize=256)
def _average_scale(in_hw: Tuple[int, int], out_hw: Tuple[int, int], kernel: Tuple[int, int],
                   stride: Tuple[int, int], pads: Pads, count_include_pad: bool,
                   divisor_override: Optional[float], multiplier: float = 1.0) -> np.ndarray:
    """Ho x Wo table of multiplier / divisor for average pooling (read-only, cached per geometry)."""
    if divisor_override is not None:
        scale = np.full(out_hw, multiplier / divisor_override)
    else:
        rows = _window_counts(in_hw[0], out_hw[0], kernel[0], stride[0], pads[0], pads[2], count_include_pad)
        cols = _window_counts(in_hw[1], out_hw[1], kernel[1], stride[1], pads[1], pads[3], count_include_pad)
        scale = multiplier / np.outer(rows, cols).astype(np.float64)
    scale = scale.astype(np.float32)
    scale.setflags(write=False)
    return scale


def _check_divisor(divisor_override) -> Optional[float]:
    if divisor_override is None:
        return None
    value = float(divisor_override)
    if value == 0 or not math.isfinite(value):
        raise ValueError(f"avg_pool2d: divisor_override must be a non-zero number or None, got {divisor_override!r}")
    return value


def _check_p(op: str, p) -> float:
    value = float(p)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{op}: p must be a positive finite number, got {p!r}")
    return value


# Whether small planes may be pooled 16 at a time as vector lanes (AVX-512 only, see
# pooling.lanes_pay); tests patch it to run the lanes on every CPU.
_LANES = _kernels.lanes_pay()


def _run_window_pool(x: np.ndarray, out: Optional[np.ndarray], geo: _WindowGeometry, scale: Optional[np.ndarray],
                     is_max: bool) -> np.ndarray:
    """The pool into ``out`` (checked in C: the geometry's WindowPool), or a new array.

    Few Python calls on the way: at 13x13 each costs ~0.5 us once other work has left
    the interpreter's caches cold, against a ~7 us kernel (measured interleaved)."""
    if _threads._num_threads == 1:
        threads = 1
    else:
        threads = threads_for(x.shape[0] * x.shape[1] * geo.out_hw[0] * geo.out_hw[1] * geo.taps)
    return geo.pool(x, out, scale, is_max, threads, _LANES)


# ----------------------------------------------------------------------------- windowed pools

def max_pool2d(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None, padding=0,
               dilation: IntPair = 1, ceil_mode: bool = False, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Max pooling, PyTorch's ``max_pool2d``; padding may also be ``(top, left, bottom, right)``.

    Padding is never selected (it acts as -inf).  NaN propagates: a window holding a
    NaN gives NaN, as in PyTorch."""
    x = _as_input(x)
    geo = _geometry("max_pool2d", x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    return _run_window_pool(x, out, geo, None, True)


def avg_pool2d(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None, padding=0,
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override=None, *,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """Average pooling, PyTorch's ``avg_pool2d``; padding may also be ``(top, left, bottom, right)``.

    Divisor: ``divisor_override`` if given; else the window clipped to the padded input
    (``count_include_pad``: padding counts, the ceil-mode overhang does not) or to the input."""
    x = _as_input(x)
    geo = _geometry("avg_pool2d", x.shape[2:], kernel_size, stride, padding, 1, ceil_mode)
    scale = _average_scale(x.shape[2:], geo.out_hw, geo.kernel, geo.stride, geo.pads, bool(count_include_pad),
                           _check_divisor(divisor_override))
    return _run_window_pool(x, out, geo, scale, False)


LP_CONVENTIONS = ("onnx", "torch")


def lp_pool2d(x: np.ndarray, p: float, kernel_size: IntPair, stride: Optional[IntPair] = None, padding=0,
              ceil_mode: bool = False, convention: str = "onnx", *,
              out: Optional[np.ndarray] = None) -> np.ndarray:
    """Power-average pooling: ``(sum over the window of |x|^p)^(1/p)`` (ONNX ``LpPool``; p = 2 is L2 pooling).

    ``convention="torch"`` reproduces PyTorch's ``LPPool2d`` construction instead:
    ``(avg_pool2d(x^p) * kh * kw)^(1/p)`` with the signed power ``x^p`` (NaN for negative
    x with non-integer p, or a negative sum with p != 1), and ceil-mode windows rescaled by
    the average's divisor.  Padding adds zeros in both conventions."""
    x = _as_input(x)
    p = _check_p("lp_pool2d", p)
    if convention not in LP_CONVENTIONS:
        raise ValueError(f"lp_pool2d: convention must be one of {LP_CONVENTIONS}, got {convention!r}")
    geo = _geometry("lp_pool2d", x.shape[2:], kernel_size, stride, padding, 1, ceil_mode)
    scale = None
    if convention == "torch":
        scale = _average_scale(x.shape[2:], geo.out_hw, geo.kernel, geo.stride, geo.pads, True, None,
                               float(geo.kernel[0] * geo.kernel[1]))
    y = _run_window_pool(_power(x, p, signed=convention == "torch"), out, geo, scale, False)
    return _root(y, p)


def _power(x: np.ndarray, p: float, signed: bool) -> np.ndarray:
    powered = np.empty_like(x)
    rows = x.reshape(-1, x.shape[-1])
    _kernels.lp_power(rows, powered.reshape(rows.shape), p, signed, threads_for(x.size))
    return powered


def _root(y: np.ndarray, p: float) -> np.ndarray:
    _kernels.lp_root(y.reshape(-1, y.shape[-1]), p, threads_for(y.size))
    return y


# ----------------------------------------------------------------------------- bin pools

def _adaptive_bins(size: int, out: int) -> np.ndarray:
    """(out, 2) [start, end) with start = floor(i * size / out), end = ceil((i + 1) * size / out)."""
    i = np.arange(out)
    return np.stack([i * size // out, -(-(i + 1) * size // out)], axis=1).astype(np.intp)


def _uniform_window(size: int, out: int) -> Optional[Tuple[int, int]]:
    """(kernel, stride) when the adaptive bins along an axis are equal windows at a constant stride."""
    bins = _adaptive_bins(size, out)
    starts, lengths = bins[:, 0], bins[:, 1] - bins[:, 0]
    stride = int(starts[1] - starts[0]) if out > 1 else 1
    if stride >= 1 and (lengths == lengths[0]).all() and (starts == np.arange(out) * stride).all():
        return int(lengths[0]), stride
    return None


@functools.lru_cache(maxsize=256)
def _adaptive_plan(in_hw: Tuple[int, int], out_hw: Tuple[int, int]):
    """How to run an adaptive pool: ``("window", geometry, scale)`` when the bins are a regular
    window grid on both axes (13 -> 6 is 3x3 stride 2; in divisible by out), which the faster
    strided kernel handles, else ``("bins", hbins, wbins)`` for the general bin kernel."""
    rows, cols = _uniform_window(in_hw[0], out_hw[0]), _uniform_window(in_hw[1], out_hw[1])
    if rows and cols:
        geo = _WindowGeometry("adaptive pool", in_hw, (rows[0], cols[0]), (rows[1], cols[1]), 0, 1, False)
        assert geo.out_hw == out_hw
        return "window", geo, _average_scale(in_hw, out_hw, geo.kernel, geo.stride, geo.pads, True, None)
    hbins = _adaptive_bins(in_hw[0], out_hw[0])[None]
    wbins = _adaptive_bins(in_hw[1], out_hw[1])[None]
    for table in (hbins, wbins):
        table.setflags(write=False)
    return "bins", hbins, wbins


def _run_bin_pool(x: np.ndarray, y: np.ndarray, image_of: np.ndarray, hbins: np.ndarray, wbins: np.ndarray,
                  mode: str) -> np.ndarray:
    work = x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3]
    _kernels.bin_pool(x, y, image_of, hbins, wbins, mode == "max", mode == "avg", threads_for(work))
    return y


@functools.lru_cache(maxsize=256)
def _adaptive_call(op: str, in_hw: Tuple[int, int], output_size):
    """(output size, plan) of one adaptive pool call, cached: at 13x13 the Python checks
    would otherwise be ~10% of the call."""
    out_hw = _adaptive_output_size(op, output_size, in_hw)
    return out_hw, _adaptive_plan(in_hw, out_hw)


def _pool_adaptive(op: str, x, output_size, out: Optional[np.ndarray], mode: str) -> np.ndarray:
    x = _as_input(x)
    try:
        out_hw, (kind, a, b) = _adaptive_call(op, x.shape[2:], output_size)
    except TypeError:   # an unhashable output_size (a list)
        out_hw, (kind, a, b) = _adaptive_call(op, x.shape[2:], _hashable(output_size))
    if kind == "window":
        return _run_window_pool(x, out, a, b if mode == "avg" else None, mode == "max")
    y = check_out(out, x.shape[:2] + out_hw)
    return _run_bin_pool(x, y, np.arange(x.shape[0], dtype=np.intp), a, b, mode)


def _adaptive_output_size(op: str, output_size, in_hw: Sequence[int]) -> Tuple[int, int]:
    """PyTorch's output_size: an int, or a pair whose None entries keep the input size."""
    if isinstance(output_size, (list, tuple)) and len(output_size) == 2:
        output_size = tuple(in_hw[i] if v is None else v for i, v in enumerate(output_size))
    try:
        return int_pair(output_size, "output_size", 1)
    except ValueError as err:
        raise ValueError(f"{op}: {err}") from None


def _global_pool(x: np.ndarray, out: Optional[np.ndarray], is_max: bool, scale: float) -> np.ndarray:
    y = check_out(out, x.shape[:2] + (1, 1))
    _kernels.global_pool(x, y, is_max, scale, threads_for(x.size))
    return y


def global_max_pool2d(x: np.ndarray, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Maximum over each whole plane: (N, C, H, W) -> (N, C, 1, 1); NaN propagates."""
    x = _as_input(x)
    return _global_pool(x, out, True, 1.0)


def global_avg_pool2d(x: np.ndarray, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Mean over each whole plane: (N, C, H, W) -> (N, C, 1, 1)."""
    x = _as_input(x)
    return _global_pool(x, out, False, 1.0 / (x.shape[2] * x.shape[3]))


def global_lp_pool2d(x: np.ndarray, p: float = 2.0, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``(sum over each plane of |x|^p)^(1/p)`` (ONNX ``GlobalLpPool``): (N, C, H, W) -> (N, C, 1, 1)."""
    x = _as_input(x)
    p = _check_p("global_lp_pool2d", p)
    return _root(_global_pool(_power(x, p, signed=False), out, False, 1.0), p)


def adaptive_max_pool2d(x: np.ndarray, output_size, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Max over bins [floor(i*in/out), ceil((i+1)*in/out)) per axis (PyTorch); any in/out sizes."""
    return _pool_adaptive("adaptive_max_pool2d", x, output_size, out, "max")


def adaptive_avg_pool2d(x: np.ndarray, output_size, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Mean over bins [floor(i*in/out), ceil((i+1)*in/out)) per axis (PyTorch); any in/out sizes."""
    return _pool_adaptive("adaptive_avg_pool2d", x, output_size, out, "avg")


SPP_MODES = ("max", "avg")


def _check_levels(levels) -> Tuple[int, ...]:
    try:
        result = tuple(int(level) for level in levels)
    except TypeError:
        raise TypeError(f"spatial_pyramid_pool: levels must be a sequence of ints, got {levels!r}") from None
    if not result or min(result) < 1:
        raise ValueError(f"spatial_pyramid_pool: levels must be a non-empty sequence of ints >= 1, got {levels!r}")
    return result


@functools.lru_cache(maxsize=256)
def _pyramid_plan(in_hw: Tuple[int, int], levels, mode: str, channels: int):
    """(output width, then the ``levels`` / ``hbins`` / ``wbins`` tables of ``_kernels.pyramid_pool``),
    checked and cached (read-only): at 13x13 the Python work is a tenth of the call.

    Levels are computed finest first.  For max, an adaptive bin of level n is the union
    of the bins of a finer level m = k * n that it contains (floor(k*i*a / (k*n)) =
    floor(i*a / n)), so level n is pooled from the small m x m map instead of the input."""
    levels = _check_levels(levels)
    if mode not in SPP_MODES:
        raise ValueError(f"spatial_pyramid_pool: mode must be one of {SPP_MODES}, got {mode!r}")
    columns = np.cumsum([0] + [channels * n * n for n in levels])
    rows, hbins, wbins, corners, scales = [], [], [], [], []
    computed = {}   # level size -> its row
    for j in sorted(range(len(levels)), key=lambda j: -levels[j]):
        n = levels[j]
        finer = next((m for m in computed if m % n == 0), None) if mode == "max" else None
        source_hw = in_hw if finer is None else (finer, finer)
        window = _pyramid_window(source_hw, n)
        kh, kw, sh, sw = window or (0, 0, 0, 0)
        rows.append((n, -1 if finer is None else computed[finer], int(columns[j]), sum(len(b) for b in hbins),
                     kh, kw, sh, sw, sum(len(c) for c in corners)))
        computed.setdefault(n, len(rows) - 1)
        hbins.append(_adaptive_bins(source_hw[0], n))
        wbins.append(_adaptive_bins(source_hw[1], n))
        if window:
            corners.append((np.arange(n)[:, None] * sh * source_hw[1] + np.arange(n)[None, :] * sw).reshape(-1))
            scales.append(np.full(n * n, 1.0 / (kh * kw)))
    tables = (np.array(rows, dtype=np.intp), np.concatenate(hbins), np.concatenate(wbins),
              np.concatenate(corners or [[]]).astype(np.intc), np.concatenate(scales or [[]]).astype(np.float32))
    for table in tables:
        table.setflags(write=False)
    return (int(columns[-1]),) + tables


# Largest window (per axis) for which an SPP level runs the flat window kernel: it computes
# every position of the plane, a pass per three taps, so large windows (level 1 of a
# 13x13 map: 13x13) are cheaper as bins.
SPP_WINDOW_MAX = 4


def _pyramid_window(in_hw: Tuple[int, int], n: int) -> Optional[Tuple[int, int, int, int]]:
    """(kh, kw, sh, sw) when level n of an in_hw map is a small-plane grid of equal windows, else None."""
    rows, cols = _uniform_window(in_hw[0], n), _uniform_window(in_hw[1], n)
    if (rows and cols and in_hw[0] * in_hw[1] <= _kernels.FLAT_PLANE_MAX and rows[0] <= SPP_WINDOW_MAX
            and cols[0] <= SPP_WINDOW_MAX):
        return rows[0], cols[0], rows[1], cols[1]
    return None


def spatial_pyramid_pool(x: np.ndarray, levels: Sequence[int] = (1, 2, 4), mode: str = "max", *,
                         out: Optional[np.ndarray] = None) -> np.ndarray:
    """SPP-net: for each level n, an n x n adaptive pool; the flattened results concatenated.

    Returns (N, C * sum(n^2)) whatever the input size: level by level, each level laid out
    as (C, n, n) flattened.  Bins are the adaptive ones, so every level has exactly n x n bins
    (the classic window/stride formula does not, see docs/pooling.md)."""
    x = _as_input(x)
    N, C, H, W = x.shape
    width, table, hbins, wbins, corners, scales = _pyramid_plan((H, W), _hashable(levels), mode, C)
    y = check_out(out, (N, width))
    _kernels.pyramid_pool(x, y, table, hbins, wbins, corners, scales, mode == "max", mode == "avg",
                          threads_for(x.size * len(table)))
    return y


def _sppf_kernel(kernel_size: int, repeats: int) -> Tuple[int, int]:
    k, r = int(kernel_size), int(repeats)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"sppf: kernel_size must be an odd int >= 1 (the output keeps the input size), got {kernel_size!r}")
    if r < 1:
        raise ValueError(f"sppf: repeats must be >= 1, got {repeats!r}")
    return k, r


def sppf(x: np.ndarray, kernel_size: int = 5, repeats: int = 3, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """YOLOv5's SPPF: ``concat([x, m(x), m(m(x)), ...], channels)`` with ``m`` a stride-1
    max pool of ``kernel_size`` and padding ``kernel_size // 2`` applied ``repeats`` times.

    Equals concatenating x with max pools of kernels k, 2k-1, 3k-2, ... (5, 9, 13 for k = 5)."""
    x = _as_input(x)
    k, r = _sppf_kernel(kernel_size, repeats)
    N, C, H, W = x.shape
    y = check_out(out, (N, C * (r + 1), H, W))
    y[:, :C] = x
    geo = _geometry("sppf", (H, W), k, 1, k // 2, 1, False)
    for i in range(r):
        _run_window_pool(y[:, i * C:(i + 1) * C], y[:, (i + 1) * C:(i + 2) * C], geo, None, True)
    return y


# ----------------------------------------------------------------------------- RoI pools

def _check_boxes(op: str, boxes, x_shape: Sequence[int], spatial_scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """(boxes as float32 (R, 5), batch indices as intp); ValueError for malformed or out-of-range boxes."""
    boxes = np.asarray(boxes)
    if boxes.dtype.kind not in "fiu":
        raise TypeError(f"{op}: boxes must be a numeric array, got dtype {boxes.dtype}")
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"{op}: boxes must have shape (R, 5) as (batch_index, x1, y1, x2, y2), got {boxes.shape}")
    N, _, H, W = x_shape
    if not np.isfinite(boxes).all():
        raise ValueError(f"{op}: boxes must be finite, got row(s) {np.flatnonzero(~np.isfinite(boxes).all(1)).tolist()}")
    batch = boxes[:, 0]
    bad = np.flatnonzero((batch != np.round(batch)) | (batch < 0) | (batch >= N))
    if bad.size:
        raise ValueError(f"{op}: boxes[{bad[0]}, 0] = {batch[bad[0]]} is not a batch index in [0, {N})")
    x1, y1, x2, y2 = (boxes[:, i] for i in range(1, 5))
    bad = np.flatnonzero((x2 < x1) | (y2 < y1))
    if bad.size:
        raise ValueError(f"{op}: box {bad[0]} has x2 < x1 or y2 < y1: {boxes[bad[0], 1:].tolist()}")
    s = float(spatial_scale)
    if not s > 0:
        raise ValueError(f"{op}: spatial_scale must be > 0, got {spatial_scale!r}")
    bad = np.flatnonzero((x1 * s > W) | (y1 * s > H) | (x2 * s < 0) | (y2 * s < 0))
    if bad.size:
        raise ValueError(
            f"{op}: box {bad[0]} {boxes[bad[0], 1:].tolist()} times spatial_scale {s} lies outside the "
            f"{H}x{W} feature map"
        )
    return boxes, batch.astype(np.intp)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's round(): halves away from zero (NumPy's round is half-to-even)."""
    v = v.astype(np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _roi_pool_bins(start: np.ndarray, end: np.ndarray, pooled: int, size: int) -> np.ndarray:
    """(R, pooled, 2) integer bins of torchvision's roi_pool along one axis (float32 arithmetic as there)."""
    length = np.maximum(end - start + 1, 1).astype(np.float32)
    bin_size = length / np.float32(pooled)
    i = np.arange(pooled, dtype=np.float32)
    lo = np.floor(i[None, :] * bin_size[:, None]).astype(np.intp) + start[:, None].astype(np.intp)
    hi = np.ceil((i[None, :] + 1) * bin_size[:, None]).astype(np.intp) + start[:, None].astype(np.intp)
    return np.stack([np.clip(lo, 0, size), np.clip(hi, 0, size)], axis=2)


def _roi_arguments(op: str, x, boxes, output_size, spatial_scale: float, out: Optional[np.ndarray]):
    """(x, checked boxes, their batch indices, the (R, C, PH, PW) output) of a RoI op."""
    x = _as_input(x)
    PH, PW = int_pair(output_size, "output_size", 1)
    boxes, image_of = _check_boxes(op, boxes, x.shape, spatial_scale)
    return x, boxes, image_of, check_out(out, (boxes.shape[0], x.shape[1], PH, PW))


def roi_pool(x: np.ndarray, boxes: np.ndarray, output_size: IntPair, spatial_scale: float = 1.0, *,
             out: Optional[np.ndarray] = None) -> np.ndarray:
    """Fast R-CNN RoI max pooling (torchvision ``roi_pool``) -> (R, C, PH, PW).

    Box corners are scaled and rounded to the nearest cell; the box (both ends inclusive)
    is cut into PH x PW integer bins (floor/ceil); empty bins give 0."""
    x, boxes, image_of, y = _roi_arguments("roi_pool", x, boxes, output_size, spatial_scale, out)
    PH, PW = y.shape[2:]
    if boxes.shape[0] == 0:
        return y
    corners = _round_half_away(boxes[:, 1:] * np.float32(spatial_scale))
    hbins = _roi_pool_bins(corners[:, 1], corners[:, 3], PH, x.shape[2])
    wbins = _roi_pool_bins(corners[:, 0], corners[:, 2], PW, x.shape[3])
    return _run_bin_pool(x, y, image_of, np.ascontiguousarray(hbins), np.ascontiguousarray(wbins), "max")


def _roi_align_taps(start: np.ndarray, length: np.ndarray, pooled: int, size: int,
                    sampling_ratio: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps of torchvision's roi_align along one axis, for all boxes at once.

    Box r's output index i averages ``grid[r]`` sample points; each point contributes
    two taps (low, high cell) with weights (1 - frac, frac), zero outside [-1, size].
    Returns (ptr (R, pooled + 1) into the tap arrays, tap index, tap weight, grid)."""
    R = start.shape[0]
    bin_size = length / np.float32(pooled)
    if sampling_ratio > 0:
        grid = np.full(R, sampling_ratio, dtype=np.intp)
    else:
        grid = np.ceil(length / np.float32(pooled)).astype(np.intp)
    samples_per_box = pooled * grid
    first = np.concatenate([[0], np.cumsum(samples_per_box)])
    box = np.repeat(np.arange(R), samples_per_box)
    local = np.arange(first[-1]) - first[box]
    g = grid[box]
    i, k = local // g, local % g
    pos = (start[box] + i.astype(np.float32) * bin_size[box]
           + (k.astype(np.float32) + np.float32(0.5)) * bin_size[box] / g.astype(np.float32))
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, np.float32(0))
    low = pos.astype(np.intp)
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    frac = np.where(at_edge, np.float32(0), pos - low.astype(np.float32)) * valid
    index = np.stack([low, high], axis=1).reshape(-1)
    weight = np.stack([(1 - frac) * valid, frac], axis=1).reshape(-1).astype(np.float32)
    ptr = 2 * (first[:-1, None] + np.arange(pooled + 1)[None, :] * grid[:, None])
    return np.ascontiguousarray(ptr, dtype=np.intp), index.astype(np.intp), weight, grid


def roi_align(x: np.ndarray, boxes: np.ndarray, output_size: IntPair, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Mask R-CNN RoI Align (torchvision ``roi_align``) -> (R, C, PH, PW).

    Each bin averages a grid of bilinear samples (``sampling_ratio`` per axis, or
    ceil(box size / output size) when <= 0).  ``aligned=True`` shifts the box by -0.5
    cell (pixel-centre model); ``aligned=False`` stretches boxes to at least 1 cell."""
    x, boxes, image_of, y = _roi_arguments("roi_align", x, boxes, output_size, spatial_scale, out)
    PH, PW = y.shape[2:]
    if boxes.shape[0] == 0:
        return y
    offset = np.float32(0.5 if aligned else 0.0)
    corners = boxes[:, 1:] * np.float32(spatial_scale) - offset
    size = corners[:, 2:] - corners[:, :2]  # (width, height)
    if not aligned:
        size = np.maximum(size, np.float32(1))
    ratio = int(sampling_ratio)
    y_ptr, y_row, y_w, y_grid = _roi_align_taps(corners[:, 1], size[:, 1], PH, x.shape[2], ratio)
    x_ptr, x_col, x_w, x_grid = _roi_align_taps(corners[:, 0], size[:, 0], PW, x.shape[3], ratio)
    inv_count = (1.0 / np.maximum(y_grid * x_grid, 1)).astype(np.float32)
    work = y.size * 4 * max(int(y_grid.max()) * int(x_grid.max()), 1)
    _kernels.roi_align_taps(x, y, image_of, y_ptr, y_row, y_w, x_ptr, x_col, x_w, inv_count, threads_for(work))
    return y


# ----------------------------------------------------------------------------- registry

def _prepare(fn):
    """Executor binding that writes straight into the planned output buffer."""
    def prepare(weights, attrs):
        def call(*inputs, out=None):
            return fn(*inputs, **weights, **attrs, out=out)
        return call
    return prepare


def _spatial(shape: Sequence[int], op: str) -> Tuple[int, int]:
    if len(shape) != 4:
        raise ValueError(f"{op}: input must be NCHW (4-D), got shape {tuple(shape)}")
    return tuple(shape[2:])


def _window_shape(op: str, dilated: bool):
    def infer(input_shapes, weight_shapes, attrs) -> List[Tuple[int, ...]]:
        shape = input_shapes[0]
        geo = _geometry(op, _spatial(shape, op), attrs["kernel_size"], attrs["stride"], attrs["padding"],
                        attrs["dilation"] if dilated else 1, attrs["ceil_mode"])
        return [tuple(shape[:2]) + geo.out_hw]
    return infer


def _window_of(dilated: bool):
    def window(attrs, weight_shapes) -> Window:
        kernel = int_pair(attrs["kernel_size"], "kernel_size", 1)
        dilation = int_pair(attrs["dilation"], "dilation", 1) if dilated else (1, 1)
        return Window(kernel=kernel, stride=_stride_pair(attrs.get("stride"), kernel), dilation=dilation)
    return window


def _per_output_count(kind: str, taps):
    """Counts for pools doing ``taps(input_shape, output_shape, attrs)`` reads per output element."""
    def count(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
        outputs = int(np.prod(output_shapes[0]))
        work = outputs * taps(input_shapes[0], output_shapes[0], attrs)
        return Counts(macs=work) if kind == "macs" else Counts(adds=work)
    return count


def _kernel_taps(input_shape, output_shape, attrs) -> int:
    kh, kw = int_pair(attrs["kernel_size"], "kernel_size", 1)
    return kh * kw


def _bin_taps(input_shape, output_shape, attrs) -> int:
    return -(-input_shape[2] // output_shape[2]) * -(-input_shape[3] // output_shape[3])


def _global_shape(input_shapes, weight_shapes, attrs):
    _spatial(input_shapes[0], "global pool")
    return [tuple(input_shapes[0][:2]) + (1, 1)]


def _plane_taps(input_shape, output_shape, attrs) -> int:
    return input_shape[2] * input_shape[3]


def _adaptive_shape(input_shapes, weight_shapes, attrs):
    hw = _spatial(input_shapes[0], "adaptive pool")
    return [tuple(input_shapes[0][:2]) + _adaptive_output_size("adaptive pool", attrs["output_size"], hw)]


def _spp_shape(input_shapes, weight_shapes, attrs):
    shape = input_shapes[0]
    _spatial(shape, "spatial_pyramid_pool")
    return [(shape[0], shape[1] * sum(n * n for n in _check_levels(attrs["levels"])))]


def _spp_count(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
    N, C, H, W = input_shapes[0]
    return Counts(adds=N * C * H * W * len(attrs["levels"]))


def _sppf_shape(input_shapes, weight_shapes, attrs):
    N, C, H, W = input_shapes[0]
    k, r = _sppf_kernel(attrs["kernel_size"], attrs["repeats"])
    _geometry("sppf", (H, W), k, 1, k // 2, 1, False)
    return [(N, C * (r + 1), H, W)]


def _sppf_window(attrs, weight_shapes) -> Window:
    k, r = _sppf_kernel(attrs["kernel_size"], attrs["repeats"])
    span = r * (k - 1) + 1  # the widest branch: r chained k x k stride-1 pools
    return Window(kernel=(span, span))


def _sppf_count(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
    N, C, H, W = input_shapes[0]
    k, r = _sppf_kernel(attrs["kernel_size"], attrs["repeats"])
    return Counts(adds=N * C * H * W * r * (k * k - 1))


def _roi_shape(input_shapes, weight_shapes, attrs):
    x_shape, box_shape = input_shapes
    _spatial(x_shape, "roi pool")
    if len(box_shape) != 2 or box_shape[1] != 5:
        raise ValueError(f"roi pool: boxes must have shape (R, 5), got {tuple(box_shape)}")
    return [(box_shape[0], x_shape[1]) + int_pair(attrs["output_size"], "output_size", 1)]


def _roi_align_count(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
    ratio = attrs["sampling_ratio"] if attrs["sampling_ratio"] > 0 else 2
    return Counts(macs=int(np.prod(output_shapes[0])) * 4 * ratio * ratio)


def _register(fn, infer_shape, **fields) -> None:
    """Register ``fn`` under its own name with its reference and an ``out=``-aware prepare."""
    register(OpSpec(fn.__name__, fn, infer_shape, prepare=_prepare(fn), reference=getattr(_reference, fn.__name__),
                    doc=fn.__doc__ or "", **fields))


_WINDOW_ATTRS = {"kernel_size": REQUIRED, "stride": None, "padding": 0, "ceil_mode": False}

_register(max_pool2d, _window_shape("max_pool2d", True), attrs={**_WINDOW_ATTRS, "dilation": 1},
          count=_per_output_count("adds", _kernel_taps), window=_window_of(True))
_register(avg_pool2d, _window_shape("avg_pool2d", False),
          attrs={**_WINDOW_ATTRS, "count_include_pad": True, "divisor_override": None},
          count=_per_output_count("adds", _kernel_taps), window=_window_of(False))
_register(lp_pool2d, _window_shape("lp_pool2d", False), attrs={"p": REQUIRED, **_WINDOW_ATTRS, "convention": "onnx"},
          count=_per_output_count("macs", _kernel_taps), window=_window_of(False))
# Global and adaptive pools have no window attribute: their window follows the input size.
_register(global_max_pool2d, _global_shape, count=_per_output_count("adds", _plane_taps))
_register(global_avg_pool2d, _global_shape, count=_per_output_count("adds", _plane_taps))
_register(global_lp_pool2d, _global_shape, attrs={"p": 2.0}, count=_per_output_count("macs", _plane_taps))
_register(adaptive_max_pool2d, _adaptive_shape, attrs={"output_size": REQUIRED},
          count=_per_output_count("adds", _bin_taps))
_register(adaptive_avg_pool2d, _adaptive_shape, attrs={"output_size": REQUIRED},
          count=_per_output_count("adds", _bin_taps))
_register(spatial_pyramid_pool, _spp_shape, attrs={"levels": [1, 2, 4], "mode": "max"}, count=_spp_count)
_register(sppf, _sppf_shape, attrs={"kernel_size": 5, "repeats": 3}, count=_sppf_count, window=_sppf_window)
# RoI ops: box sizes are data, so counts are estimates (roi_pool: a box covering the whole
# map; roi_align: a 2x2 sampling grid when it is adaptive).
_register(roi_pool, _roi_shape, inputs=2, attrs={"output_size": REQUIRED, "spatial_scale": 1.0},
          count=_per_output_count("adds", _bin_taps))
_register(roi_align, _roi_shape, inputs=2,
          attrs={"output_size": REQUIRED, "spatial_scale": 1.0, "sampling_ratio": -1, "aligned": False},
          count=_roi_align_count)
