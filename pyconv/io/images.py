"""Decode an image file with Pillow and preprocess it into a model input.

Decoding rules (every image ends up as float32 values on the 0..255 scale):

- EXIF orientation is applied (a phone photo comes out upright);
- palette images are expanded to RGB (RGBA when the palette has transparency);
- alpha is composited on a **white** background (what viewers show and what a
  photo of the printed image would look like), not dropped: dropping alpha
  reveals whatever colour the encoder left under transparent pixels;
- 16-bit images (``I;16``, ``I``) are scaled by 255/65535 so they land on the
  same 0..255 scale as 8-bit ones; float (``F``) images are taken as 0..255;
- CMYK, YCbCr, LAB, HSV and 1-bit images are converted by Pillow to RGB or L;
- grayscale images are repeated to 3 channels unless ``grayscale`` is true,
  and colour images become 1 channel (ITU-R 601 luma) when it is.

Preprocessing (the keys of ``preprocess``, all optional, applied in this order):

``resize``
    int: the shorter side becomes this size, the longer one
    ``int(size * long / short)`` (torchvision's ``Resize(int)``); ``[H, W]``:
    exactly that size; null: unchanged.  Bilinear **with antialiasing** (Pillow's
    filter widens its support when shrinking), which is what torchvision does
    for PIL images; it is computed per channel in float, so it differs from
    torchvision's 8-bit result only by that rounding.
``crop``
    ``[H, W]`` centre crop, offsets rounded like torchvision's ``CenterCrop``;
    an image smaller than the crop is padded with zeros first (as torchvision).
``channel_order``
    ``"RGB"`` (default) or ``"BGR"`` (Caffe-trained models).
``scale``
    multiplies the raw 0..255 values (``1/255`` for torchvision models); default 1.
``mean``, ``std``
    per channel, in the model's channel order: ``(x * scale - mean) / std``.
``grayscale``
    bool: produce 1 channel.

Other keys (e.g. ``input_size``) are ignored: they describe the model, not the
decoding.  Any failure to read or decode raises :class:`pyconv.ImageError`.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pyconv.errors import ImageError

__all__ = ["load_image", "decode_image", "preprocess_image"]

_WHITE = 255.0
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_GRAY_MODES = ("L", "1") + _SIXTEEN_BIT_MODES + ("F",)


def _open(path: str) -> Image.Image:
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refusing a suspiciously large image ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data, unreadable file
        raise ImageError(f"{path}: cannot decode image ({exc})") from None
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # a malformed EXIF block must not make an otherwise good image unreadable
        return image


def _to_float_channels(image: Image.Image, grayscale: bool) -> np.ndarray:
    """Pillow image -> float32 [H, W, C] on the 0..255 scale (C = 1 or 3)."""
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        image = image.convert("RGBA" if image.mode.startswith("RGB") else "LA")
        pixels = np.asarray(image, dtype=np.float32)
        alpha = pixels[..., -1:] / 255.0
        pixels = pixels[..., :-1] * alpha + _WHITE * (1.0 - alpha)
    elif image.mode in _GRAY_MODES:
        if image.mode == "1":
            image = image.convert("L")
        pixels = np.asarray(image).astype(np.float32)[..., None]
        if image.mode in _SIXTEEN_BIT_MODES:
            pixels *= 255.0 / 65535.0
    else:
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.asarray(image, dtype=np.float32)
    if grayscale and pixels.shape[-1] == 3:
        pixels = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    elif not grayscale and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def decode_image(path: Union[str, os.PathLike], grayscale: bool = False) -> np.ndarray:
    """Decode ``path`` to float32 [C, H, W] on the 0..255 scale (C = 3, or 1 with ``grayscale``)."""
    path = os.fspath(path)
    return np.ascontiguousarray(_to_float_channels(_open(path), grayscale).transpose(2, 0, 1))


def _resized_size(height: int, width: int, resize: Any) -> Tuple[int, int]:
    if isinstance(resize, (int, np.integer)) and not isinstance(resize, bool):
        if resize < 1:
            raise ValueError(f"preprocess 'resize' must be positive, got {resize}")
        if height <= width:
            return int(resize), int(resize * width / height)
        return int(resize * height / width), int(resize)
    return _pair(resize, "resize")


def _pair(value: Any, key: str) -> Tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ValueError(f"preprocess {key!r} must be [H, W] with positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _resize_bilinear(chw: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    height, width = size
    if chw.shape[1:] == (height, width):
        return chw
    planes = [np.asarray(Image.fromarray(plane, mode="F").resize((width, height), Image.BILINEAR))
              for plane in chw]
    return np.stack(planes)


def _center_crop(chw: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    crop_h, crop_w = size
    _, height, width = chw.shape
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        chw = np.pad(chw, ((0, 0), (pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)))
        height, width = chw.shape[1:]
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return chw[:, top:top + crop_h, left:left + crop_w]


def _per_channel(value: Any, channels: int, key: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size not in (1, channels) or not np.isfinite(arr).all():
        raise ValueError(f"preprocess {key!r} must be 1 or {channels} finite numbers, got {value!r}")
    return arr.reshape(-1, 1, 1)


def preprocess_image(chw: np.ndarray, preprocess: Optional[Mapping[str, Any]] = None) -> np.ndarray:
    """Apply resize, crop, channel order, scale and mean/std (see the module doc) to float [C, H, W]."""
    pre = dict(preprocess or {})
    if pre.get("resize") is not None:
        chw = _resize_bilinear(chw, _resized_size(chw.shape[1], chw.shape[2], pre["resize"]))
    if pre.get("crop") is not None:
        chw = _center_crop(chw, _pair(pre["crop"], "crop"))
    order = pre.get("channel_order") or "RGB"
    if order not in ("RGB", "BGR"):
        raise ValueError(f"preprocess 'channel_order' must be 'RGB' or 'BGR', got {order!r}")
    if order == "BGR" and chw.shape[0] == 3:
        chw = chw[::-1]
    scale = pre.get("scale")
    if scale is not None:
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
            raise ValueError(f"preprocess 'scale' must be a finite number, got {scale!r}")
        chw = chw * np.float32(scale)
    if pre.get("mean") is not None:
        chw = chw - _per_channel(pre["mean"], chw.shape[0], "mean")
    if pre.get("std") is not None:
        std = _per_channel(pre["std"], chw.shape[0], "std")
        if (std == 0).any():
            raise ValueError(f"preprocess 'std' must not contain 0, got {pre['std']!r}")
        chw = chw / std
    return np.ascontiguousarray(chw, dtype=np.float32)


def load_image(path: Union[str, os.PathLike], preprocess: Optional[Mapping[str, Any]] = None) -> np.ndarray:
    """Read an image file and preprocess it: float32 [C, H, W] ready to stack into a batch.

    ``preprocess`` is the dict stored in a model's metadata (keys described in
    the module doc); None gives the decoded image on the 0..255 scale.
    Raises :class:`pyconv.ImageError` when the file is missing or not a
    readable image, ValueError for a malformed ``preprocess``.
    """
    grayscale = bool((preprocess or {}).get("grayscale", False))
    return preprocess_image(decode_image(path, grayscale=grayscale), preprocess)
