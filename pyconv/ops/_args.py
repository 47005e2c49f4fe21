"""Argument checking and normalisation shared by every op family.

Conventions (PyTorch's): tensors are NCHW float32; float64 and non-contiguous
inputs are converted (a copy), other dtypes raise TypeError; bad shapes or
values raise ValueError naming the argument.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

IntPair = Union[int, Sequence[int]]
Activation = Union[None, str, Tuple]

# (kind, lo, hi, slope); kinds match pyconv/_core/epilogue.pxd
ACT_NONE, ACT_CLIP, ACT_LEAKY = 0, 1, 2
NO_ACTIVATION = (ACT_NONE, 0.0, 0.0, 0.0)


def as_float32(x, name: str = "x", ndim: Optional[int] = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 array (float64/float16 converted, others refused)."""
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64, np.float16):
        raise TypeError(f"{name} must be a float32 array (float64 is converted), got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def as_nchw(x, name: str = "x") -> np.ndarray:
    """A 4-D NCHW float32 C-contiguous array."""
    return as_float32(x, name, ndim=4)


def int_pair(value: IntPair, name: str, minimum: int = 0) -> Tuple[int, int]:
    """An int or a pair of ints as ``(h, w)``, each at least ``minimum``."""
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(int(v) for v in value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def padding4(value, name: str = "padding") -> Tuple[int, int, int, int]:
    """Padding as ``(top, left, bottom, right)``.

    Accepts an int, ``(ph, pw)`` (symmetric, PyTorch) or ``(top, left, bottom, right)``
    (ONNX ``pads`` order for 2-D)."""
    if isinstance(value, (int, np.integer)):
        pads = (int(value),) * 4
    else:
        try:
            items = tuple(int(v) for v in value)
        except TypeError:
            raise TypeError(f"{name} must be an int, (ph, pw) or (top, left, bottom, right), got {value!r}") from None
        if len(items) == 2:
            pads = (items[0], items[1], items[0], items[1])
        elif len(items) == 4:
            pads = items
        else:
            raise ValueError(f"{name} must be an int, (ph, pw) or (top, left, bottom, right), got {value!r}")
    if min(pads) < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return pads


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int) -> int:
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    span = dilation * (kernel - 1) + 1
    return (size + pad_before + pad_after - span) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                     dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a pooling window along one axis, PyTorch's rule.

    With ``ceil_mode`` a partial last window is kept, except when it would start
    in the right padding (``(out - 1) * stride >= size + pad_before``): then it is
    dropped.  Returns 0 or less when the window does not fit the padded input."""
    span = dilation * (kernel - 1) + 1
    room = size + pad_before + pad_after - span
    if room < 0:
        return 0
    if not ceil_mode:
        return room // stride + 1
    out = -(-room // stride) + 1
    if (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def parse_activation(activation: Activation) -> Tuple[int, float, float, float]:
    """Fused activation spec -> ``(kind, lo, hi, slope)`` for the kernels' epilogue.

    Accepts None, ``"relu"``, ``"relu6"``, ``("clip", lo, hi)``, ``("leaky_relu", slope)``."""
    if activation is None or activation == "none":
        return NO_ACTIVATION
    if activation == "relu":
        return (ACT_CLIP, 0.0, math.inf, 0.0)
    if activation == "relu6":
        return (ACT_CLIP, 0.0, 6.0, 0.0)
    if isinstance(activation, (tuple, list)) and activation:
        kind, *params = activation
        if kind == "clip" and len(params) == 2:
            lo = -math.inf if params[0] is None else float(params[0])
            hi = math.inf if params[1] is None else float(params[1])
            if lo > hi:
                raise ValueError(f"activation clip bounds must satisfy lo <= hi, got {activation!r}")
            return (ACT_CLIP, lo, hi, 0.0)
        if kind == "leaky_relu" and len(params) == 1:
            return (ACT_LEAKY, 0.0, 0.0, float(params[0]))
    raise ValueError(
        "activation must be None, 'relu', 'relu6', ('clip', lo, hi) or ('leaky_relu', slope), "
        f"got {activation!r}"
    )


def apply_activation_reference(y: np.ndarray, activation: Activation) -> np.ndarray:
    """NumPy version of the fused epilogue's activation (for references and fallbacks)."""
    kind, lo, hi, slope = parse_activation(activation)
    if kind == ACT_CLIP:
        return np.clip(y, lo, hi)
    if kind == ACT_LEAKY:
        return np.where(y >= 0, y, y * slope)
    return y


def check_out(out: Optional[np.ndarray], shape: Tuple[int, ...], name: str = "out") -> np.ndarray:
    """A caller-supplied output buffer checked against ``shape``, or a new one."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.dtype != np.float32 or out.shape != tuple(shape) or not out.flags.c_contiguous:
        raise ValueError(
            f"{name} must be a C-contiguous float32 array of shape {tuple(shape)}, "
            f"got {out.dtype} {out.shape}"
        )
    return out
