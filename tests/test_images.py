"""pyconv.io.images: decoding every kind of image Pillow writes, and preprocessing like torchvision."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pyconv import ImageError
from pyconv.io.images import load_image

RNG = np.random.default_rng(1234)


def _rgb(height: int = 7, width: int = 10) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(tmp_path, image: Image.Image, name: str = "img.png", **kwargs) -> str:
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def test_rgb_png_exact(tmp_path):
    pixels = _rgb(5, 9)
    out = load_image(_save(tmp_path, Image.fromarray(pixels)))
    assert out.dtype == np.float32 and out.shape == (3, 5, 9) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pixels.transpose(2, 0, 1))


def test_grayscale_repeated_to_three_channels(tmp_path):
    gray = RNG.integers(0, 256, (6, 4), dtype=np.uint8)
    out = load_image(_save(tmp_path, Image.fromarray(gray, mode="L")))
    assert out.shape == (3, 6, 4)
    for channel in out:
        np.testing.assert_array_equal(channel, gray)


def test_grayscale_option_gives_one_channel_luma(tmp_path):
    pixels = _rgb(6, 5)
    out = load_image(_save(tmp_path, Image.fromarray(pixels)), {"grayscale": True})
    assert out.shape == (1, 6, 5)
    luma = pixels.astype(np.float64) @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(out[0], luma, atol=1e-3)
    pillow_luma = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float64)  # rounds to uint8
    np.testing.assert_allclose(out[0], pillow_luma, atol=1.0)


def test_one_bit_image(tmp_path):
    bits = RNG.integers(0, 2, (4, 8)).astype(bool)
    out = load_image(_save(tmp_path, Image.fromarray(bits)))
    np.testing.assert_array_equal(out[1], np.where(bits, 255, 0))


def test_rgba_composited_on_white(tmp_path):
    pixels = np.zeros((1, 3, 4), np.uint8)
    pixels[0, 0] = (10, 20, 30, 255)   # opaque: the colour itself
    pixels[0, 1] = (10, 20, 30, 0)     # transparent: white
    pixels[0, 2] = (0, 100, 200, 51)   # 20 % opaque: 0.2 * colour + 0.8 * 255
    out = load_image(_save(tmp_path, Image.fromarray(pixels, mode="RGBA")))
    assert out.shape == (3, 1, 3)
    np.testing.assert_allclose(out[:, 0, 0], (10, 20, 30))
    np.testing.assert_allclose(out[:, 0, 1], (255, 255, 255))
    np.testing.assert_allclose(out[:, 0, 2], 0.2 * np.array([0, 100, 200]) + 0.8 * 255, rtol=1e-5)


def test_gray_alpha_composited_on_white(tmp_path):
    pixels = np.array([[[0, 0], [100, 255]]], np.uint8)
    out = load_image(_save(tmp_path, Image.fromarray(pixels, mode="LA")))
    np.testing.assert_allclose(out[:, 0, 0], 255)
    np.testing.assert_allclose(out[:, 0, 1], 100)


def test_palette_image(tmp_path):
    pixels = _rgb(6, 6)
    palette_image = Image.fromarray(pixels).quantize(colors=16)
    expected = np.asarray(palette_image.convert("RGB")).transpose(2, 0, 1)
    out = load_image(_save(tmp_path, palette_image))
    np.testing.assert_array_equal(out, expected)


def test_palette_with_transparency(tmp_path):
    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.putdata([0, 1, 0])
    path = _save(tmp_path, palette_image, transparency=1)  # index 1 (blue) is transparent
    out = load_image(path)
    np.testing.assert_array_equal(out[:, 0, 0], (255, 0, 0))
    np.testing.assert_array_equal(out[:, 0, 1], (255, 255, 255))


def test_sixteen_bit_gray_scaled_to_255(tmp_path):
    values = np.array([[0, 257, 65535, 32896]], np.uint16)
    path = _save(tmp_path, Image.fromarray(values))
    assert Image.open(path).mode in ("I;16", "I")
    out = load_image(path)
    np.testing.assert_allclose(out[0, 0], (0, 1, 255, 128), rtol=1e-5)


def test_cmyk_jpeg(tmp_path):
    path = _save(tmp_path, Image.new("CMYK", (4, 3), (0, 255, 255, 0)), "red.jpg", quality=100)
    out = load_image(path)
    assert out.shape == (3, 3, 4)
    np.testing.assert_allclose(out[:, 1, 1], (255, 0, 0), atol=3)


@pytest.mark.parametrize("orientation, transform", [(3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)),
                                                    (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_applied(tmp_path, orientation, transform):
    pixels = _rgb(4, 6)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, Image.fromarray(pixels), exif=exif)
    out = load_image(path)
    np.testing.assert_array_equal(out, transform(pixels).transpose(2, 0, 1))


@pytest.mark.parametrize("size, shape", [(20, (20, 40)), (5, (5, 10))])
def test_resize_shorter_side(tmp_path, size, shape):
    path = _save(tmp_path, Image.fromarray(_rgb(50, 100)))
    assert load_image(path, {"resize": size}).shape == (3, *shape)
    path = _save(tmp_path, Image.fromarray(_rgb(100, 50)), "tall.png")
    assert load_image(path, {"resize": size}).shape == (3, shape[1], shape[0])


def test_resize_matches_pillow_antialiased_bilinear(tmp_path):
    pixels = _rgb(57, 83)
    out = load_image(_save(tmp_path, Image.fromarray(pixels)), {"resize": [27, 40]})
    expected = np.asarray(Image.fromarray(pixels).resize((40, 27), Image.BILINEAR), np.float32).transpose(2, 0, 1)
    assert out.shape == (3, 27, 40)
    assert np.abs(out - expected).max() <= 1.0  # Pillow rounds its 8-bit result; pyconv keeps float
    naive = pixels[::2, ::2].astype(np.float32).transpose(2, 0, 1)[:, :27, :40]
    assert np.abs(out - naive).mean() > 5  # antialiased, not decimated


def test_resize_upsampling_preserves_constant(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (3, 2), (10, 200, 30)))
    out = load_image(path, {"resize": [9, 11]})
    np.testing.assert_allclose(out, np.broadcast_to(np.array([10, 200, 30], np.float32)[:, None, None], out.shape),
                               rtol=1e-5)


@pytest.mark.parametrize("height, width, crop", [(9, 12, [4, 5]), (8, 8, [3, 3]), (7, 10, [7, 10]), (5, 6, [1, 1])])
def test_center_crop_offsets_like_torchvision(tmp_path, height, width, crop):
    pixels = _rgb(height, width)
    out = load_image(_save(tmp_path, Image.fromarray(pixels)), {"crop": crop})
    top, left = int(round((height - crop[0]) / 2.0)), int(round((width - crop[1]) / 2.0))
    np.testing.assert_array_equal(out, pixels[top:top + crop[0], left:left + crop[1]].transpose(2, 0, 1))


def test_crop_larger_than_image_pads_with_zeros(tmp_path):
    pixels = _rgb(2, 3)
    out = load_image(_save(tmp_path, Image.fromarray(pixels)), {"crop": [4, 5]})
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out[:, 1:3, 1:4], pixels.transpose(2, 0, 1))
    assert out[:, 0].sum() == 0 and out[:, :, 0].sum() == 0


def test_torchvision_pipeline_scale_mean_std(tmp_path):
    pixels = _rgb(30, 40)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pre = {"resize": 16, "crop": [12, 12], "scale": 1 / 255, "mean": mean, "std": std, "channel_order": "RGB"}
    out = load_image(_save(tmp_path, Image.fromarray(pixels)), pre)
    raw = load_image(_save(tmp_path, Image.fromarray(pixels)), {"resize": 16, "crop": [12, 12]})
    expected = (raw / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert out.shape == (3, 12, 12)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_bgr_order_then_mean_in_model_order(tmp_path):
    pixels = _rgb(3, 4)
    out = load_image(_save(tmp_path, Image.fromarray(pixels)), {"channel_order": "BGR", "mean": [1, 2, 3]})
    expected = pixels[..., ::-1].transpose(2, 0, 1) - np.array([1, 2, 3])[:, None, None]
    np.testing.assert_allclose(out, expected)


def test_unknown_keys_ignored(tmp_path):
    path = _save(tmp_path, Image.fromarray(_rgb(3, 3)))
    assert load_image(path, {"input_size": [3, 3, 3]}).shape == (3, 3, 3)


@pytest.mark.parametrize("pre, message", [
    ({"resize": 0}, "resize"), ({"resize": [4]}, "resize"), ({"resize": "big"}, "resize"),
    ({"crop": [0, 3]}, "crop"), ({"crop": 3}, "crop"), ({"channel_order": "RBG"}, "channel_order"),
    ({"mean": [1, 2]}, "mean"), ({"std": [1, 0, 1]}, "std"), ({"scale": "1/255"}, "scale"),
    ({"mean": [float("nan")] * 3}, "mean")])
def test_bad_preprocess_raises_value_error(tmp_path, pre, message):
    path = _save(tmp_path, Image.fromarray(_rgb(3, 3)))
    with pytest.raises(ValueError, match=message):
        load_image(path, pre)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_truncated_image(tmp_path):
    path = _save(tmp_path, Image.fromarray(_rgb(64, 64)))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(path)


def test_image_error_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_image(tmp_path / "missing.png")
