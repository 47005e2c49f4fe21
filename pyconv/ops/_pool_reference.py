"""Plain float64 NumPy references of the pooling ops (for tests and the registry).

Written window by window from the PyTorch / torchvision / ONNX definitions,
independently of the kernels' separable two-pass scheme and of pool.py's
helpers.  Slow on purpose: clarity over speed.  The RoI box arithmetic is done
in float32 because torchvision does it in the input's dtype (bin edges depend on it).
"""
from __future__ import annotations

import math

import numpy as np


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else tuple(int(a) for a in v)


def _pads(padding):
    if np.isscalar(padding):
        return (int(padding),) * 4
    p = tuple(int(a) for a in padding)
    return p if len(p) == 4 else (p[0], p[1], p[0], p[1])


def _out_len(size, k, s, before, after, d, ceil_mode):
    span = d * (k - 1) + 1
    numerator = size + before + after - span
    if ceil_mode:
        n = math.ceil(numerator / s) + 1
        if (n - 1) * s >= size + before:  # PyTorch: no window may start in the right padding
            n -= 1
        return n
    return numerator // s + 1


def _geometry(x, kernel_size, stride, padding, dilation, ceil_mode):
    kh, kw = _pair(kernel_size)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    dh, dw = _pair(dilation)
    pt, pl, pb, pr = _pads(padding)
    H, W = x.shape[2:]
    Ho = _out_len(H, kh, sh, pt, pb, dh, ceil_mode)
    Wo = _out_len(W, kw, sw, pl, pr, dw, ceil_mode)
    return (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr), (Ho, Wo)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    x = np.asarray(x, np.float64)
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr), (Ho, Wo) = _geometry(x, kernel_size, stride, padding,
                                                                          dilation, ceil_mode)
    N, C, H, W = x.shape
    y = np.empty((N, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            rows = [i * sh - pt + a * dh for a in range(kh)]
            cols = [j * sw - pl + b * dw for b in range(kw)]
            rows = [r for r in rows if 0 <= r < H]
            cols = [c for c in cols if 0 <= c < W]
            if not rows or not cols:
                y[:, :, i, j] = -np.inf
                continue
            y[:, :, i, j] = x[:, :, rows][:, :, :, cols].max(axis=(2, 3))  # np.max propagates NaN
    return y


def _avg_divisors(H, W, i, j, kernel, stride, pads, count_include_pad):
    """(clipped input window, PyTorch divisor) of output (i, j)."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = kernel, stride, pads
    h0, w0 = i * sh - pt, j * sw - pl
    h1, w1 = min(h0 + kh, H + pb), min(w0 + kw, W + pr)
    padded_size = (h1 - h0) * (w1 - w0)
    h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
    return (h0, h1, w0, w1), padded_size if count_include_pad else (h1 - h0) * (w1 - w0)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    x = np.asarray(x, np.float64)
    kernel, stride, _, pads, (Ho, Wo) = _geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    N, C, H, W = x.shape
    y = np.empty((N, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            (h0, h1, w0, w1), divisor = _avg_divisors(H, W, i, j, kernel, stride, pads, count_include_pad)
            if divisor_override is not None:
                divisor = divisor_override
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / divisor
    return y


def lp_pool2d(x, p, kernel_size, stride=None, padding=0, ceil_mode=False, convention="onnx"):
    x = np.asarray(x, np.float64)
    kernel, stride, _, pads, (Ho, Wo) = _geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    N, C, H, W = x.shape
    y = np.empty((N, C, Ho, Wo))
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(Ho):
            for j in range(Wo):
                (h0, h1, w0, w1), divisor = _avg_divisors(H, W, i, j, kernel, stride, pads, True)
                window = x[:, :, h0:h1, w0:w1]
                if convention == "onnx":
                    y[:, :, i, j] = (np.abs(window) ** p).sum(axis=(2, 3)) ** (1.0 / p)
                else:  # PyTorch LPPool2d: avg_pool2d(x^p) * kh * kw, then ^(1/p)
                    mean = (window ** p).sum(axis=(2, 3)) / divisor
                    y[:, :, i, j] = (mean * kernel[0] * kernel[1]) ** (1.0 / p)
    return y


def global_max_pool2d(x):
    x = np.asarray(x, np.float64)
    return x.max(axis=(2, 3), keepdims=True)


def global_avg_pool2d(x):
    x = np.asarray(x, np.float64)
    return x.mean(axis=(2, 3), keepdims=True)


def global_lp_pool2d(x, p=2.0):
    x = np.asarray(x, np.float64)
    return (np.abs(x) ** p).sum(axis=(2, 3), keepdims=True) ** (1.0 / p)


def _adaptive(x, output_size, reduce):
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    Ho, Wo = _pair(output_size)
    y = np.empty((N, C, Ho, Wo))
    for i in range(Ho):
        h0, h1 = math.floor(i * H / Ho), math.ceil((i + 1) * H / Ho)
        for j in range(Wo):
            w0, w1 = math.floor(j * W / Wo), math.ceil((j + 1) * W / Wo)
            y[:, :, i, j] = reduce(x[:, :, h0:h1, w0:w1], axis=(2, 3))
    return y


def adaptive_max_pool2d(x, output_size):
    return _adaptive(x, output_size, np.max)


def adaptive_avg_pool2d(x, output_size):
    return _adaptive(x, output_size, np.mean)


def spatial_pyramid_pool(x, levels=(1, 2, 4), mode="max"):
    pool = adaptive_max_pool2d if mode == "max" else adaptive_avg_pool2d
    x = np.asarray(x, np.float64)
    return np.concatenate([pool(x, n).reshape(x.shape[0], -1) for n in levels], axis=1)


def sppf(x, kernel_size=5, repeats=3):
    """As its equivalent SPP form: x and max pools of kernels k, 2k-1, 3k-2, ... ('same' padding)."""
    x = np.asarray(x, np.float64)
    branches = [x]
    for r in range(1, repeats + 1):
        k = r * (kernel_size - 1) + 1
        branches.append(max_pool2d(x, k, 1, k // 2))
    return np.concatenate(branches, axis=1)


def roi_pool(x, boxes, output_size, spatial_scale=1.0):
    x = np.asarray(x, np.float64)
    boxes = np.asarray(boxes, np.float32)
    PH, PW = _pair(output_size)
    N, C, H, W = x.shape
    f32 = np.float32
    y = np.zeros((len(boxes), C, PH, PW))
    for r, (b, x1, y1, x2, y2) in enumerate(boxes):
        # torchvision: std::round (halves away from zero) of the scaled corners, inclusive ends
        x1, y1, x2, y2 = (int(math.floor(abs(float(v * f32(spatial_scale))) + 0.5))
                          * (1 if v >= 0 else -1) for v in (x1, y1, x2, y2))
        bin_h = f32(max(y2 - y1 + 1, 1)) / f32(PH)
        bin_w = f32(max(x2 - x1 + 1, 1)) / f32(PW)
        for i in range(PH):
            h0 = min(max(int(math.floor(f32(i) * bin_h)) + y1, 0), H)
            h1 = min(max(int(math.ceil(f32(i + 1) * bin_h)) + y1, 0), H)
            for j in range(PW):
                w0 = min(max(int(math.floor(f32(j) * bin_w)) + x1, 0), W)
                w1 = min(max(int(math.ceil(f32(j + 1) * bin_w)) + x1, 0), W)
                if h1 > h0 and w1 > w0:
                    y[r, :, i, j] = x[int(b), :, h0:h1, w0:w1].max(axis=(1, 2))
    return y


def _bilinear(plane, yy, xx):
    """torchvision's bilinear_interpolate on a (C, H, W) array at float32 (yy, xx)."""
    H, W = plane.shape[1:]
    if yy < -1.0 or yy > H or xx < -1.0 or xx > W:
        return 0.0
    yy, xx = max(float(yy), 0.0), max(float(xx), 0.0)
    y0, x0 = int(yy), int(xx)
    if y0 >= H - 1:
        y0 = y1 = H - 1
        yy = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        xx = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = yy - y0, xx - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * plane[:, y0, x0] + hy * lx * plane[:, y0, x1]
            + ly * hx * plane[:, y1, x0] + ly * lx * plane[:, y1, x1])


def roi_align(x, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    x = np.asarray(x, np.float64)
    boxes = np.asarray(boxes, np.float32)
    PH, PW = _pair(output_size)
    C = x.shape[1]
    f32 = np.float32
    offset = f32(0.5) if aligned else f32(0.0)
    y = np.zeros((len(boxes), C, PH, PW))
    for r, (b, x1, y1, x2, y2) in enumerate(boxes):
        start_w, start_h = x1 * f32(spatial_scale) - offset, y1 * f32(spatial_scale) - offset
        width = x2 * f32(spatial_scale) - offset - start_w
        height = y2 * f32(spatial_scale) - offset - start_h
        if not aligned:
            width, height = max(width, f32(1)), max(height, f32(1))
        bin_h, bin_w = height / f32(PH), width / f32(PW)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(height / f32(PH)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(width / f32(PW)))
        count = max(grid_h * grid_w, 1)
        plane = x[int(b)]
        for i in range(PH):
            for j in range(PW):
                total = np.zeros(C)
                for a in range(grid_h):
                    yy = start_h + f32(i) * bin_h + f32(a + 0.5) * bin_h / f32(grid_h)
                    for c in range(grid_w):
                        xx = start_w + f32(j) * bin_w + f32(c + 0.5) * bin_w / f32(grid_w)
                        total = total + _bilinear(plane, yy, xx)
                y[r, :, i, j] = total / count
    return y
