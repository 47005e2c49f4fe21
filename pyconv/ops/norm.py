"""Normalisation: batch norm (inference) and its folding into convolutions, local response norm."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from pyconv._core import elementwise as _elementwise
from pyconv._core import lrn as _lrn
from pyconv._threads import threads_for
from pyconv.ops._args import as_float32, check_out
from pyconv.ops._spec_helpers import bind_with_out, numel, per_element_counts, same_shape
from pyconv.registry import REQUIRED, Counts, OpSpec, register

__all__ = ["batch_norm", "fold_batch_norm", "local_response_norm"]


def _channel_vector(value, name: str, channels: int, default: float) -> np.ndarray:
    """A per-channel parameter as float64 of shape (channels,); None -> ``default``."""
    if value is None:
        return np.full(channels, default)
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64).reshape(-1)
    if arr.size != channels:
        raise ValueError(f"{name} must have {channels} elements (one per channel), got shape {np.shape(value)}")
    return arr


def batch_norm_scale_shift(mean, var, weight=None, bias=None, eps: float = 1e-5) -> Tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as y = x * scale + shift (float64 per-channel vectors)."""
    mean_arr = np.asarray(mean)
    if mean_arr.ndim != 1:
        raise ValueError(f"mean must be 1-D (one value per channel), got shape {mean_arr.shape}")
    channels = mean_arr.shape[0]
    mean = _channel_vector(mean, "mean", channels, 0.0)
    var = _channel_vector(var, "var", channels, 1.0)
    if float(eps) < 0 or np.any(var + eps <= 0):
        raise ValueError(f"batch norm needs var + eps > 0, got eps={eps!r} and min(var)={var.min()!r}")
    scale = _channel_vector(weight, "weight", channels, 1.0) / np.sqrt(var + float(eps))
    shift = _channel_vector(bias, "bias", channels, 0.0) - mean * scale
    return scale, shift


def _apply_channel_affine(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, out) -> np.ndarray:
    if x.ndim < 2 or x.shape[1] != scale.shape[0]:
        raise ValueError(f"batch_norm has {scale.shape[0]} channels but x has shape {x.shape} (channels on axis 1)")
    y = check_out(out, x.shape)
    _elementwise.channel_affine(x.reshape(-1), scale, shift, y.reshape(-1), scale.shape[0],
                                numel(x.shape[2:]), threads_for(x.size))
    return y


def batch_norm(x, mean, var, weight=None, bias=None, eps: float = 1e-5, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Inference batch norm: (x - mean) / sqrt(var + eps) * weight + bias, per channel (axis 1).

    ``out`` may be ``x`` (in place)."""
    x = as_float32(x)
    scale, shift = batch_norm_scale_shift(mean, var, weight, bias, eps)
    return _apply_channel_affine(x, scale.astype(np.float32), shift.astype(np.float32), out)


def _prepare_batch_norm(weights, attrs):
    """Folds the four vectors into one scale and one shift, once."""
    scale, shift = batch_norm_scale_shift(weights["mean"], weights["var"], weights.get("weight"),
                                          weights.get("bias"), attrs.get("eps", 1e-5))
    scale, shift = scale.astype(np.float32), shift.astype(np.float32)

    def call(x, out=None):
        return _apply_channel_affine(as_float32(x), scale, shift, out)

    return call


def fold_batch_norm(conv_weight, conv_bias, mean, var, weight=None, bias=None, eps: float = 1e-5,
                    axis: int = 0, groups: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Fold an inference batch norm that follows a conv (or linear) layer into its parameters.

    Returns ``(folded_weight, folded_bias)`` (float32) such that
    ``bn(conv(x, w, b)) == conv(x, folded_weight, folded_bias)``.

    ``axis`` is the output-channel axis of ``conv_weight``: 0 for conv2d
    ``[Co, Ci/g, kh, kw]``, conv1d and linear ``[out, in]``; 1 for conv_transpose2d
    ``[Ci, Co/g, kh, kw]``, where ``groups`` tells how the output channels are split
    (output channel ``g * Co/g + j`` is column ``j`` of input-channel group ``g``).
    ``conv_bias`` may be None (a conv without bias)."""
    w = np.asarray(conv_weight)
    if w.dtype.kind != "f":
        raise TypeError(f"conv_weight must be a float array, got dtype {w.dtype}")
    if axis not in (0, 1) or w.ndim < axis + 1:
        raise ValueError(f"axis must be 0 or 1 and within conv_weight's shape {w.shape}, got {axis!r}")
    groups = int(groups)
    if groups < 1 or (axis == 1 and w.shape[0] % groups) or (axis == 0 and groups != 1):
        raise ValueError(f"groups={groups!r} does not fit conv_weight of shape {w.shape} with axis={axis}")
    out_channels = w.shape[0] if axis == 0 else w.shape[1] * groups
    scale, shift = batch_norm_scale_shift(mean, var, weight, bias, eps)
    if scale.shape[0] != out_channels:
        raise ValueError(f"batch norm has {scale.shape[0]} channels but the layer has {out_channels} outputs "
                         f"(conv_weight shape {w.shape}, axis={axis}, groups={groups})")
    if axis == 0:
        view, scale_view = w, scale.reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        view = w.reshape((groups, w.shape[0] // groups) + w.shape[1:])
        scale_view = scale.reshape((groups, 1, w.shape[1]) + (1,) * (w.ndim - 2))
    folded = np.empty(w.shape, dtype=np.float32)
    # Products in float64, rounded once into float32 (NumPy buffers the casts: no float64 copy of w).
    np.multiply(view, scale_view, out=folded.reshape(view.shape), dtype=np.float64, casting="same_kind")
    b = _channel_vector(conv_bias, "conv_bias", out_channels, 0.0)
    return folded, (b * scale + shift).astype(np.float32)


def _lrn_before(size: int) -> int:
    # PyTorch pads size // 2 channels in front and (size - 1) // 2 behind.
    return size // 2


def local_response_norm(x, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                        out: Optional[np.ndarray] = None) -> np.ndarray:
    """LRN across channels (PyTorch ``local_response_norm`` / ONNX ``LRN`` with ``bias`` = k):
    y = x * (k + alpha / size * sum of x^2 over ``size`` neighbouring channels) ^ -beta.

    Channel window: ``size // 2`` before, ``(size - 1) // 2`` after (PyTorch); for odd
    ``size`` this is ONNX's window too.  ``out`` must not be ``x``."""
    x = as_float32(x)
    if x.ndim < 3:
        raise ValueError(f"local_response_norm needs x of shape (N, C, ...) with ndim >= 3, got {x.shape}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if out is not None and np.may_share_memory(out, x):
        raise ValueError("local_response_norm cannot run in place (out shares memory with x)")
    y = check_out(out, x.shape)
    batch, channels, plane = x.shape[0], x.shape[1], numel(x.shape[2:])
    _lrn.lrn_forward(x.reshape(-1), y.reshape(-1), batch, channels, plane, int(size), _lrn_before(int(size)),
                     float(alpha), float(beta), float(k), threads_for(x.size * (int(size) + 10)))
    return y


# ---------------------------------------------------------------- references (float64)

def _batch_norm_ref(x, mean, var, weight=None, bias=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    c = x.shape[1]
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    return ((x - np.asarray(mean, np.float64).reshape(shape)) / np.sqrt(np.asarray(var, np.float64).reshape(shape) + eps)
            * w.reshape(shape) + b.reshape(shape))


def _lrn_ref(x, size, alpha=1e-4, beta=0.75, k=1.0):
    x = np.asarray(x, dtype=np.float64)
    channels = x.shape[1]
    y = np.empty_like(x)
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels - 1, c + (size - 1) // 2)
        sq = np.sum(x[:, lo:hi + 1] ** 2, axis=1)
        y[:, c] = x[:, c] * (k + alpha / size * sq) ** -beta
    return y


def _batch_norm_shape(input_shapes, weight_shapes, attrs):
    x = tuple(input_shapes[0])
    for name, shape in weight_shapes.items():
        if len(x) < 2 or tuple(shape) != (x[1],):
            raise ValueError(f"batch_norm {name} has shape {tuple(shape)}, expected ({x[1] if len(x) > 1 else '?'},) "
                             f"for input {x}")
    return [x]


def _batch_norm_counts(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
    # Running mean and variance are buffers, not parameters (PyTorch's and the
    # papers' counts): only the learned scale and shift count.
    learned = {k: v for k, v in weight_shapes.items() if k in ("weight", "bias")}
    return per_element_counts(adds=0, macs=1)(input_shapes, learned, attrs, output_shapes)


register(OpSpec(
    name="batch_norm",
    fn=batch_norm,
    infer_shape=_batch_norm_shape,
    weights=("mean", "var", "weight?", "bias?"),
    attrs={"eps": 1e-5},
    count=_batch_norm_counts,
    prepare=_prepare_batch_norm,
    reference=_batch_norm_ref,
    inplace=True,
    doc="Inference batch norm (per-channel scale and shift).",
))

register(OpSpec(
    name="local_response_norm",
    fn=local_response_norm,
    infer_shape=same_shape,
    attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "k": 1.0},
    count=lambda i, w, a, o: per_element_counts(adds=1, macs=int(a["size"]) + 1)(i, w, a, o),
    prepare=bind_with_out(local_response_norm),
    reference=_lrn_ref,
    doc="Local response normalisation across channels (AlexNet, GoogLeNet).",
))
