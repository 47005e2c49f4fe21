"""Pooling ops against the float64 references in pyconv/ops/_pool_reference.py.

Tolerances: max pooling must match exactly (it only selects values); sums and
averages within 1e-5 of the output's magnitude (float32 accumulation of at most
a few hundred terms); LP pools and RoI Align within 1e-4 relative (a power and
root, or bilinear weights, in float32)."""

import numpy as np
import pytest

import pyconv
from pyconv import ops, registry
from pyconv.ops import _pool_reference as ref
from pyconv.ops import pool as pool_ops
from pyconv.ops.pool import pool_output_size

RNG = np.random.default_rng(1234)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def assert_close(actual, expected, rtol):
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = ~np.isnan(expected)
    magnitude = max(np.max(np.abs(expected[finite]), initial=0.0), 1e-30)
    err = np.max(np.abs(actual[finite] - expected[finite]), initial=0.0)
    assert err <= rtol * magnitude, f"max error {err} > {rtol} * {magnitude}"


def window_cases(with_dilation, count=48):
    """Random valid (shape, kernel, stride, padding, dilation, ceil_mode) sweeps: odd and 1x1
    sizes, H != W, non-square kernels and strides, overlapping windows, asymmetric padding."""
    cases, rng = [], np.random.default_rng(7)
    while len(cases) < count:
        N, C = rng.choice([1, 3]), rng.integers(1, 6)
        H, W = rng.choice([1, 2, 5, 7, 8, 13, 19], size=2)
        kh, kw = rng.integers(1, 5, size=2)
        sh, sw = rng.integers(1, 4, size=2)
        dh, dw = rng.integers(1, 3, size=2) if with_dilation else (1, 1)
        if rng.random() < 0.5:
            padding = (int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1)))
        else:
            padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in (kh, kw, kh, kw))
        ceil_mode = bool(rng.random() < 0.5)
        pads = padding if len(padding) == 4 else padding * 2
        out_h = pool_output_size(H, kh, sh, pads[0], pads[2], dh, ceil_mode)
        out_w = pool_output_size(W, kw, sw, pads[1], pads[3], dw, ceil_mode)
        if out_h < 1 or out_w < 1:
            continue
        cases.append(((int(N), int(C), int(H), int(W)), (int(kh), int(kw)), (int(sh), int(sw)), padding,
                      (int(dh), int(dw)), ceil_mode))
    return cases


# ----------------------------------------------------------------------------- output size rule

def test_ceil_mode_drops_a_window_starting_in_the_right_padding():
    # size 4, kernel 2, stride 3, padding 1: the third ceil-mode window would start at
    # padded index 6 >= 4 + 1, i.e. entirely in the right padding: PyTorch drops it.
    assert pool_output_size(4, 2, 3, 1, 1, 1, ceil_mode=True) == 2
    assert pool_output_size(5, 2, 2, 0, 0, 1, ceil_mode=True) == 3   # partial window kept
    assert pool_output_size(5, 2, 2, 0, 0, 1, ceil_mode=False) == 2
    x = rand(1, 1, 4, 4)
    assert ops.max_pool2d(x, 2, 3, 1, ceil_mode=True).shape == (1, 1, 2, 2)
    assert ops.avg_pool2d(x, 2, 3, 1, ceil_mode=True).shape == (1, 1, 2, 2)


# ----------------------------------------------------------------------------- max pool

@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,ceil_mode", window_cases(True))
def test_max_pool2d_matches_reference(shape, kernel, stride, padding, dilation, ceil_mode):
    x = rand(*shape)
    y = ops.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    expected = ref.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    np.testing.assert_array_equal(y, expected.astype(np.float32))


@pytest.mark.parametrize("kernel,stride", [(3, 2), ((2, 3), (1, 2)), ((3, 2), (2, 1)), ((5, 3), (4, 2))])
def test_overlapping_non_square_windows(kernel, stride):
    # AlexNet-style overlapping pooling (stride < kernel) with non-square kernels and strides
    x = rand(3, 4, 13, 11)
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel, stride), ref.max_pool2d(x, kernel, stride).astype(np.float32))
    assert_close(ops.avg_pool2d(x, kernel, stride), ref.avg_pool2d(x, kernel, stride), 1e-5)
    assert_close(ops.lp_pool2d(x, 2, kernel, stride), ref.lp_pool2d(x, 2, kernel, stride), 1e-4)


def test_max_pool2d_large_vector_rows_and_threads():
    # rows wide enough for the vector loops and their rounded-up tails; work big enough for 2 threads
    x = rand(2, 8, 45, 71)
    previous = pyconv.get_num_threads()
    try:
        for threads in (1, 2):
            pyconv.set_num_threads(threads)
            for args in [(3, 2, 1), ((3, 5), (1, 2), (1, 2), (2, 1), True), ((2, 3), (3, 1), 0, 1, False)]:
                np.testing.assert_array_equal(ops.max_pool2d(x, *args), ref.max_pool2d(x, *args).astype(np.float32))
    finally:
        pyconv.set_num_threads(previous)


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
@pytest.mark.parametrize("kernel,padding,dilation", [(3, 1, 1), ((2, 5), (0, 2, 1, 1), (1, 2)), ((4, 3), (2, 0), 1)])
def test_wide_rows_take_the_vector_path(stride, kernel, padding, dilation):
    # interior rows of >= 16 columns run the row-by-row vector kernel (stride phases for
    # strides > 2); smaller planes run the flat-plane kernel covered by the sweeps above
    x = rand(2, 3, 9, 83)
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel, stride, padding, dilation, True),
                                  ref.max_pool2d(x, kernel, stride, padding, dilation, True).astype(np.float32))
    for include in (True, False):
        assert_close(ops.avg_pool2d(x, kernel, stride, padding, True, include),
                     ref.avg_pool2d(x, kernel, stride, padding, True, include), 1e-5)
    assert_close(ops.lp_pool2d(x, 2, kernel, stride, padding), ref.lp_pool2d(x, 2, kernel, stride, padding), 1e-4)


@pytest.mark.parametrize("H,W,ceil_mode", [(40, 36, False), (41, 34, False), (41, 34, True), (33, 35, False)])
def test_2x2_stride_2_pool(H, W, ceil_mode):
    # even W with every window inside runs the column-pairs kernel; odd H drops the last row
    # (floor mode) or keeps a partial window (ceil mode, row kernel); odd W takes the row kernel
    x = rand(2, 3, H, W, scale=100.0)
    x[0, 1, 5, 7] = np.nan
    np.testing.assert_array_equal(ops.max_pool2d(x, 2, 2, ceil_mode=ceil_mode),
                                  ref.max_pool2d(x, 2, 2, 0, 1, ceil_mode).astype(np.float32))
    assert_close(ops.avg_pool2d(x, 2, 2, ceil_mode=ceil_mode), ref.avg_pool2d(x, 2, 2, 0, ceil_mode), 1e-5)
    view = np.concatenate([x, x], axis=1)[:, 2:5]      # a channel slice: strided planes
    np.testing.assert_array_equal(ops.max_pool2d(view, 2), ops.max_pool2d(np.ascontiguousarray(view), 2))


@pytest.mark.parametrize("H,W,padding,ceil_mode", [(40, 37, 0, False), (40, 37, 0, True), (39, 66, 1, False),
                                                    (41, 112, (1, 0, 0, 1), True)])
def test_3x3_stride_2_rows_in_one_pass(H, W, padding, ceil_mode):
    # 3-wide stride-2 windows on rows of >= 16 outputs take one fused pass per row (the
    # rows holding a NaN the general NaN-propagating path); clipped columns stay apart
    x = rand(2, 3, H, W, scale=10.0)
    x[0, 0, 7, 20] = np.nan           # on an even column: the first tap of one window, the last of another
    x[1, 2, H - 1, W - 1] = np.nan    # in the last row and column
    x[1, 1, 3, 5] = -np.inf
    x[1, 1, 4, 6] = np.inf
    np.testing.assert_array_equal(ops.max_pool2d(x, 3, 2, padding, ceil_mode=ceil_mode),
                                  ref.max_pool2d(x, 3, 2, padding, 1, ceil_mode).astype(np.float32))
    y = np.where(np.isnan(x) | np.isinf(x), 1.0, x).astype(np.float32)
    for include in (True, False):
        assert_close(ops.avg_pool2d(y, 3, 2, padding, ceil_mode, include),
                     ref.avg_pool2d(y, 3, 2, padding, ceil_mode, include), 1e-5)


def test_large_plane_with_narrow_output_takes_the_row_path():
    # a plane above the flat-plane size limit whose interior rows are narrower than a vector
    x = rand(1, 2, 70, 70)
    np.testing.assert_array_equal(ops.max_pool2d(x, 5, 5, 1), ref.max_pool2d(x, 5, 5, 1).astype(np.float32))
    assert_close(ops.adaptive_avg_pool2d(x, 7), ref.adaptive_avg_pool2d(x, 7), 1e-5)


def test_max_pool2d_never_selects_padding_for_large_negative_inputs():
    x = np.full((1, 2, 5, 6), -3e38, np.float32)
    x[0, 1] = -np.inf
    y = ops.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    assert np.all(y[0, 0] == np.float32(-3e38))
    assert np.all(y[0, 1] == -np.inf)


def test_max_pool2d_propagates_nan():
    x = rand(2, 3, 9, 40)
    x[0, 1, 4, 5] = np.nan
    x[1, 2, 0, 39] = np.nan
    y = ops.max_pool2d(x, 3, 2, 1)
    expected = ref.max_pool2d(x, 3, 2, 1)
    np.testing.assert_array_equal(y, expected.astype(np.float32))
    assert np.isnan(y[0, 1, 2, 2]) and np.isnan(y[0, 1, 2, 3]) and np.isnan(y[1, 2, 0, 19])
    assert np.isnan(y).sum() == 3  # only the windows that contain a NaN
    assert np.isnan(ops.global_max_pool2d(x)[0, 1, 0, 0]) and not np.isnan(ops.global_max_pool2d(x)[0, 0, 0, 0])
    assert np.isnan(ops.adaptive_max_pool2d(x, (3, 4))).sum() == 2
    small = rand(1, 2, 7, 9)     # the flat-plane kernel: interior and padding-clipped windows
    small[0, 0, 0, 0] = small[0, 1, 3, 4] = np.nan
    for args in [(3, 2, 1), (2, 1, 0), ((3, 2), (1, 3), (1, 0, 1, 1), (2, 1), True)]:
        np.testing.assert_array_equal(ops.max_pool2d(small, *args), ref.max_pool2d(small, *args).astype(np.float32))
    assert np.isnan(ops.max_pool2d(small, 3, 2, 1)).sum() == 1 + 2


@pytest.mark.parametrize("threads", [1, 2])
def test_max_pools_of_small_planes_propagate_nan_per_chunk(threads, lanes):
    # Small planes are pooled in chunks of planes, each checked for NaN first (plain
    # maxima when it holds none): a NaN in one chunk must reach exactly its windows,
    # whatever the other chunks took.
    x = rand(2, 60, 13, 13)
    x[1, 40, 6, 6] = np.nan       # a chunk of image 1 in the middle of the channels
    x[0, 0, 0, 12] = np.nan       # the first chunk of image 0, a corner cell
    previous = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(threads)
        for args in [(3, 2), (3, 2, 1), (2, 1)]:
            y = ops.max_pool2d(x, *args)
            np.testing.assert_array_equal(y, ref.max_pool2d(x, *args).astype(np.float32))
            assert np.isnan(y[0, 0]).any() and np.isnan(y[1, 40]).any() and np.isnan(y).sum() <= 8
        np.testing.assert_array_equal(ops.adaptive_max_pool2d(x, 6), ref.adaptive_max_pool2d(x, 6).astype(np.float32))
        spp = ops.spatial_pyramid_pool(x, (1, 2, 4), "max")
        np.testing.assert_array_equal(spp, ref.spatial_pyramid_pool(x, (1, 2, 4), "max").astype(np.float32))
        assert np.isnan(spp).any(axis=1).all() and not np.isnan(spp).all(axis=1).any()
        glob = ops.global_max_pool2d(x)
        assert np.isnan(glob).sum() == 2 and np.isnan(glob[1, 40, 0, 0]) and np.isnan(glob[0, 0, 0, 0])
    finally:
        pyconv.set_num_threads(previous)


@pytest.fixture(params=[True, False], ids=["lanes", "flat"])
def lanes(request, monkeypatch):
    """Small planes pooled as vector lanes (where the CPU has AVX-512), or by the flat
    scheme: both, on every CPU."""
    monkeypatch.setattr(pool_ops, "_LANES", request.param)
    return request.param


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,ceil_mode", window_cases(True, 40))
@pytest.mark.parametrize("channels", [16, 35])
def test_blocks_of_16_small_planes_match_reference(shape, kernel, stride, padding, dilation, ceil_mode, channels,
                                                   lanes):
    # 16 or more small planes: blocks of 16 as vector lanes (window_pool_lanes), the
    # last C % 16 planes by the flat kernel; padding-clipped and empty windows included
    x = rand(shape[0], channels, *shape[2:])
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode),
                                  ref.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).astype(np.float32))
    x[-1, 17 % channels, shape[2] // 2, shape[3] // 2] = np.nan
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode),
                                  ref.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).astype(np.float32))
    x[-1, 17 % channels] = 1.0
    if dilation == (1, 1):
        for count_include_pad in (True, False):
            assert_close(ops.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad),
                         ref.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad), 1e-5)


@pytest.mark.parametrize("hw, kernel, stride, dilation", [
    ((13, 13), 3, 2, 1),              # adaptive 6x6 of 13x13: window rows reduced first
    ((7, 7), 2, 1, 1),
    ((19, 17), (3, 2), (2, 1), (2, 1)),   # dilated rows, non-square
    ((16, 16), 3, 1, 1),              # rows exactly one transpose wide
    ((11, 20), (2, 3), (3, 2), 1),    # rows wider than a transpose: two, overlapping
    ((21, 5), (4, 1), (1, 1), 1),     # narrow rows: each transpose overhangs into the next rows
])
@pytest.mark.parametrize("channels", [32, 35])
def test_lanes_reduce_window_rows_first(hw, kernel, stride, dilation, channels, lanes):
    # no padding, no ceil overhang: every window's rows inside, so window_pool_lanes
    # reduces the rows over the planes first and transposes only the rows windows start on
    x = rand(2, channels, *hw)
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel, stride, 0, dilation),
                                  ref.max_pool2d(x, kernel, stride, 0, dilation).astype(np.float32))
    if dilation == 1:
        assert_close(ops.avg_pool2d(x, kernel, stride), ref.avg_pool2d(x, kernel, stride), 1e-5)
    x[1, 20, 0, 0] = np.nan   # the first window of each row of windows starts at column 0
    y = ops.max_pool2d(x, kernel, stride, 0, dilation)
    np.testing.assert_array_equal(y, ref.max_pool2d(x, kernel, stride, 0, dilation).astype(np.float32))
    assert np.isnan(y[1, 20, 0, 0]) and np.isnan(y).sum() == np.isnan(y[1, 20]).sum()


@pytest.mark.parametrize("hw, padding, ceil_mode", [
    ((27, 27), 0, False),   # above the lanes' plane limit, no window clipped: the flat scheme
    ((28, 28), 0, True),    # the ceil-mode overhang clips the last windows: lanes
    ((27, 25), 1, False),   # padding clips the first windows: lanes
])
def test_larger_small_planes_take_lanes_where_windows_are_clipped(hw, padding, ceil_mode, lanes):
    x = rand(2, 35, *hw)
    np.testing.assert_array_equal(ops.max_pool2d(x, 3, 2, padding, 1, ceil_mode),
                                  ref.max_pool2d(x, 3, 2, padding, 1, ceil_mode).astype(np.float32))
    assert_close(ops.avg_pool2d(x, 3, 2, padding, ceil_mode, False),
                 ref.avg_pool2d(x, 3, 2, padding, ceil_mode, False), 1e-5)


def test_max_pool2d_stride_defaults_to_kernel_and_accepts_float64():
    x = rand(1, 2, 6, 6).astype(np.float64)
    np.testing.assert_array_equal(ops.max_pool2d(x, 2), ref.max_pool2d(x, 2, 2).astype(np.float32))


# ----------------------------------------------------------------------------- average pool

@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,ceil_mode", window_cases(False, 40))
@pytest.mark.parametrize("count_include_pad,divisor_override", [(True, None), (False, None), (True, 3)])
def test_avg_pool2d_matches_reference(shape, kernel, stride, padding, dilation, ceil_mode, count_include_pad,
                                      divisor_override):
    x = rand(*shape)
    y = ops.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    assert_close(y, ref.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override), 1e-5)


def test_avg_pool2d_divisor_counts_padding_but_not_ceil_overhang():
    x = np.ones((1, 1, 5, 5), np.float32)
    # count_include_pad: the corner window covers 2x2 input cells of a 3x3 padded window -> 4/9
    y = ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9)
    # last ceil-mode window: rows 3..5 (padded 4..6): row 5 is padding (counted), row 6 overhang (not)
    y = ops.avg_pool2d(x, 3, 2, 0, ceil_mode=True)
    assert y.shape == (1, 1, 2, 2) and y[0, 0, 1, 1] == pytest.approx(1.0)
    y = ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    assert np.allclose(y, 1.0)
    assert np.allclose(ops.avg_pool2d(x, 2, divisor_override=8), 0.5)


# ----------------------------------------------------------------------------- LP pool

@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,ceil_mode", window_cases(False, 16))
@pytest.mark.parametrize("p", [1, 2, 3, 1.5])
def test_lp_pool2d_onnx_matches_reference(shape, kernel, stride, padding, dilation, ceil_mode, p):
    x = rand(*shape)
    y = ops.lp_pool2d(x, p, kernel, stride, padding, ceil_mode)
    assert_close(y, ref.lp_pool2d(x, p, kernel, stride, padding, ceil_mode), 1e-4)


@pytest.mark.parametrize("p,positive", [(2, False), (3, False), (1, False), (1.5, True), (1.5, False)])
def test_lp_pool2d_torch_convention_matches_reference(p, positive):
    x = rand(2, 3, 7, 9)
    if positive:
        x = np.abs(x)
    for ceil_mode in (False, True):
        y = ops.lp_pool2d(x, p, (2, 3), 2, ceil_mode=ceil_mode, convention="torch")
        assert_close(y, ref.lp_pool2d(x, p, (2, 3), 2, 0, ceil_mode, "torch"), 1e-4)
    if not positive and p == 1.5:
        assert np.isnan(y).any()   # x^1.5 of negative x is NaN in PyTorch too


def test_lp_pool2d_p2_is_l2_norm_of_window():
    x = rand(1, 1, 4, 4)
    y = ops.lp_pool2d(x, 2, 2)
    assert y[0, 0, 1, 0] == pytest.approx(np.linalg.norm(x[0, 0, 2:4, 0:2].astype(np.float64)), rel=1e-5)


# ----------------------------------------------------------------------------- global and adaptive

@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 7), (2, 3, 1, 9), (1, 17, 20, 3), (1, 4, 6, 5)])
def test_global_pools_match_reference(shape):
    x = rand(*shape)
    np.testing.assert_array_equal(ops.global_max_pool2d(x), ref.global_max_pool2d(x).astype(np.float32))
    assert_close(ops.global_avg_pool2d(x), ref.global_avg_pool2d(x), 1e-5)
    for p in (1, 2, 3.5):
        assert_close(ops.global_lp_pool2d(x, p), ref.global_lp_pool2d(x, p), 1e-4)


@pytest.mark.parametrize("in_hw,out_hw", [((13, 13), (4, 4)), ((7, 10), (3, 4)), ((5, 5), (8, 3)),
                                          ((1, 1), (2, 2)), ((9, 6), (9, 6)), ((13, 13), (6, 6)), ((8, 8), (1, 1))])
def test_adaptive_pools_match_reference(in_hw, out_hw):
    x = rand(3, 4, *in_hw)
    np.testing.assert_array_equal(ops.adaptive_max_pool2d(x, out_hw),
                                  ref.adaptive_max_pool2d(x, out_hw).astype(np.float32))
    assert_close(ops.adaptive_avg_pool2d(x, out_hw), ref.adaptive_avg_pool2d(x, out_hw), 1e-5)


def test_adaptive_output_size_none_keeps_the_input_size():
    x = rand(1, 2, 7, 5)
    assert ops.adaptive_avg_pool2d(x, (None, 2)).shape == (1, 2, 7, 2)
    assert_close(ops.adaptive_avg_pool2d(x, (3, None)), ref.adaptive_avg_pool2d(x, (3, 5)), 1e-5)


# ----------------------------------------------------------------------------- SPP and SPPF

@pytest.mark.parametrize("in_hw", [(13, 13), (10, 7), (3, 3), (1, 1)])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_spatial_pyramid_pool_is_fixed_length(in_hw, mode):
    x = rand(2, 5, *in_hw)
    y = ops.spatial_pyramid_pool(x, (1, 2, 4), mode)
    assert y.shape == (2, 5 * (1 + 4 + 16))
    assert_close(y, ref.spatial_pyramid_pool(x, (1, 2, 4), mode), 1e-5)


def test_spatial_pyramid_pool_layout_is_level_then_channel_then_bin():
    x = rand(1, 3, 8, 8)
    y = ops.spatial_pyramid_pool(x, [1, 2], "max")
    np.testing.assert_array_equal(y[0, :3], x.max(axis=(2, 3))[0])
    np.testing.assert_array_equal(y[0, 3:], ops.adaptive_max_pool2d(x, 2).reshape(-1))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_spatial_pyramid_pool_repeated_and_unsorted_levels(mode):
    # levels are pooled finest first (max: coarser from finer); a repeated level fills both blocks
    x = rand(2, 3, 11, 9)
    for levels in [(2, 2), (4, 1, 2, 4), (3, 6, 1)]:
        assert_close(ops.spatial_pyramid_pool(x, levels, mode), ref.spatial_pyramid_pool(x, levels, mode), 1e-5)


def test_pyramid_and_2x2_kernels_on_two_threads():
    # work above the one-thread limit: planes split across OpenMP threads
    x, wide = rand(2, 200, 13, 13), rand(1, 40, 60, 64)
    previous = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(2)
        for mode in ("max", "avg"):
            assert_close(ops.spatial_pyramid_pool(x, (1, 2, 4), mode), ref.spatial_pyramid_pool(x, (1, 2, 4), mode), 1e-5)
        np.testing.assert_array_equal(ops.max_pool2d(wide, 2), ref.max_pool2d(wide, 2).astype(np.float32))
        assert_close(ops.avg_pool2d(wide, 2), ref.avg_pool2d(wide, 2), 1e-5)
        assert_close(ops.global_avg_pool2d(x), x.mean(axis=(2, 3), keepdims=True, dtype=np.float64), 1e-5)
    finally:
        pyconv.set_num_threads(previous)


@pytest.mark.parametrize("shape", [(1, 3, 13, 13), (2, 4, 9, 20), (1, 2, 1, 1)])
def test_sppf_equals_spp_with_kernels_5_9_13(shape):
    x = rand(*shape)
    y = ops.sppf(x, 5, 3)
    spp = np.concatenate([x] + [ops.max_pool2d(x, k, 1, k // 2) for k in (5, 9, 13)], axis=1)
    np.testing.assert_array_equal(y, spp)
    chained, branches = x, [x]
    for _ in range(3):
        chained = ops.max_pool2d(chained, 5, 1, 2)
        branches.append(chained)
    np.testing.assert_array_equal(y, np.concatenate(branches, axis=1))
    np.testing.assert_array_equal(ops.sppf(x, 3, 2), ref.sppf(x, 3, 2).astype(np.float32))


# ----------------------------------------------------------------------------- RoI ops

def random_boxes(n_boxes, batch, H, W, scale, rng):
    x1 = rng.uniform(-2, W / scale * 0.8, n_boxes)
    y1 = rng.uniform(-2, H / scale * 0.8, n_boxes)
    x2 = x1 + rng.uniform(0, W / scale * 0.7, n_boxes)
    y2 = y1 + rng.uniform(0, H / scale * 0.7, n_boxes)
    b = rng.integers(0, batch, n_boxes)
    return np.stack([b, x1, y1, x2, y2], axis=1).astype(np.float32)


@pytest.mark.parametrize("spatial_scale,output_size", [(1.0, (3, 2)), (0.5, 7), (0.25, (2, 5))])
def test_roi_pool_matches_reference(spatial_scale, output_size):
    rng = np.random.default_rng(3)
    x = rand(2, 3, 11, 14)
    boxes = random_boxes(9, 2, 11, 14, spatial_scale, rng)
    boxes[0] = [1, 3.5, 2.5, 3.5, 2.5]   # degenerate box: one cell, halves rounded away from zero
    y = ops.roi_pool(x, boxes, output_size, spatial_scale)
    np.testing.assert_array_equal(y, ref.roi_pool(x, boxes, output_size, spatial_scale).astype(np.float32))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
def test_roi_align_matches_reference(aligned, sampling_ratio, spatial_scale):
    rng = np.random.default_rng(5)
    x = rand(2, 3, 9, 12)
    boxes = random_boxes(7, 2, 9, 12, spatial_scale, rng)
    boxes[0] = [0, 4.0, 3.0, 4.0, 3.0]   # zero-size box (aligned: empty grid -> zeros)
    y = ops.roi_align(x, boxes, (3, 4), spatial_scale, sampling_ratio, aligned)
    assert_close(y, ref.roi_align(x, boxes, (3, 4), spatial_scale, sampling_ratio, aligned), 1e-4)


def test_roi_ops_with_no_boxes():
    x = rand(1, 3, 5, 5)
    assert ops.roi_pool(x, np.zeros((0, 5), np.float32), 2).shape == (0, 3, 2, 2)
    assert ops.roi_align(x, np.zeros((0, 5), np.float32), 2).shape == (0, 3, 2, 2)


def test_roi_align_whole_image_box_with_one_sample_per_bin_is_bilinear_sampling():
    x = rand(1, 2, 4, 4)
    # aligned box (0,0)-(4,4) -> pixel centres of a 2x2 grid of 2x2 bins fall at 0.5 and 2.5
    y = ops.roi_align(x, [[0, 0, 0, 4, 4]], 2, 1.0, 1, True)
    expected = x[0][:, [0, 2]][:, :, [0, 2]] * 0.25 + x[0][:, [0, 2]][:, :, [1, 3]] * 0.25 \
        + x[0][:, [1, 3]][:, :, [0, 2]] * 0.25 + x[0][:, [1, 3]][:, :, [1, 3]] * 0.25
    assert_close(y[0], expected, 1e-6)


# ----------------------------------------------------------------------------- out= and registry

def test_out_buffers_are_written_in_place():
    x = rand(2, 3, 8, 8)
    for fn, args, shape in [(ops.max_pool2d, (3, 2, 1), (2, 3, 4, 4)), (ops.avg_pool2d, (2,), (2, 3, 4, 4)),
                            (ops.global_avg_pool2d, (), (2, 3, 1, 1)), (ops.adaptive_max_pool2d, (3,), (2, 3, 3, 3)),
                            (ops.spatial_pyramid_pool, ((1, 2),), (2, 15)), (ops.sppf, (), (2, 12, 8, 8))]:
        out = np.full(shape, 7.0, np.float32)
        assert fn(x, *args, out=out) is out
        np.testing.assert_array_equal(out, fn(x, *args))
    with pytest.raises(ValueError, match="out"):
        ops.max_pool2d(x, 2, out=np.empty((2, 3, 3, 3), np.float32))


@pytest.mark.parametrize("call", [lambda x, out: ops.max_pool2d(x, 3, 2, 1, out=out),
                                  lambda x, out: ops.avg_pool2d(x, 3, 2, 1, out=out),
                                  lambda x, out: ops.adaptive_avg_pool2d(x, 4, out=out)],
                         ids=["max", "avg", "adaptive"])
def test_window_pools_check_out_in_the_kernel(call):
    """The windowed pools check ``out`` in C (pooling.WindowPool): every mismatch is a
    ValueError naming out, and a channel slice of a larger array (rows contiguous) is
    written in place."""
    x = rand(2, 3, 8, 8)
    expected = call(x, None)
    assert expected.shape == (2, 3, 4, 4)
    bad = [np.empty((2, 3, 4, 5), np.float32), np.empty((2, 3, 5, 4), np.float32),   # planes
           np.empty((1, 3, 4, 4), np.float32), np.empty((2, 4, 4, 4), np.float32),   # images, channels
           np.empty((2, 3, 4, 4), np.float64), np.empty((2, 3, 16), np.float32),      # dtype, rank
           np.empty((2, 3, 4, 8), np.float32)[..., ::2]]                              # strided rows
    readonly = np.empty((2, 3, 4, 4), np.float32)
    readonly.setflags(write=False)
    for out in bad + [readonly, [[0.0]]]:
        with pytest.raises(ValueError, match="out"):
            call(x, out)
    wide = np.full((2, 5, 4, 4), 7.0, np.float32)
    assert call(x, wide[:, 1:4]).base is wide
    np.testing.assert_array_equal(wide[:, 1:4], expected)
    np.testing.assert_array_equal(wide[:, [0, 4]], 7.0)


def test_window_pool_object_checks_x_planes():
    pool = pool_ops._kernels.WindowPool((8, 8), (4, 4), (3, 3), (2, 2), 1, 1, (1, 1))
    with pytest.raises(ValueError, match="8x8 planes"):
        pool(rand(1, 2, 8, 9), None, None, True, 1, False)
    with pytest.raises(ValueError, match="x must be a 4-D float32"):
        pool(rand(1, 2, 8, 8).astype(np.float64), None, None, True, 1, False)
    y = pool(rand(1, 2, 8, 8), None, None, True, 1, False)
    assert y.shape == (1, 2, 4, 4) and y.dtype == np.float32


POOL_OPS = ["max_pool2d", "avg_pool2d", "lp_pool2d", "global_max_pool2d", "global_avg_pool2d", "global_lp_pool2d",
            "adaptive_max_pool2d", "adaptive_avg_pool2d", "spatial_pyramid_pool", "sppf", "roi_pool", "roi_align"]

REGISTRY_CASES = {
    "max_pool2d": {"kernel_size": [3, 2], "stride": 2, "padding": [1, 0, 0, 1], "dilation": [1, 2], "ceil_mode": True},
    "avg_pool2d": {"kernel_size": 3, "stride": [2, 1], "padding": 1, "count_include_pad": False},
    "lp_pool2d": {"p": 2, "kernel_size": 2},
    "global_max_pool2d": {}, "global_avg_pool2d": {}, "global_lp_pool2d": {"p": 3},
    "adaptive_max_pool2d": {"output_size": [3, 2]}, "adaptive_avg_pool2d": {"output_size": 4},
    "spatial_pyramid_pool": {"levels": [1, 3], "mode": "avg"}, "sppf": {"kernel_size": 3, "repeats": 2},
    "roi_pool": {"output_size": 2, "spatial_scale": 0.5}, "roi_align": {"output_size": [2, 3], "aligned": True},
}


@pytest.mark.parametrize("name", POOL_OPS)
def test_registered_op_shape_reference_and_prepared_call_agree(name):
    spec = registry.get(name)
    attrs = spec.resolve_attrs(REGISTRY_CASES[name])
    x = rand(2, 3, 9, 10)
    inputs = [x]
    if spec.input_range[0] == 2:
        inputs.append(np.array([[0, 1, 1, 12, 10], [1, 3.3, 0, 8, 17.5]], np.float32))
    (shape,) = spec.infer_shape([i.shape for i in inputs], {}, attrs)
    y = spec.fn(*inputs, **attrs)
    assert y.shape == shape
    assert_close(y, spec.reference(*inputs, **attrs), 1e-4)
    out = np.empty(shape, np.float32)
    assert spec.bind({}, attrs)(*inputs, out=out) is out
    np.testing.assert_array_equal(out, y)
    counts = spec.count([i.shape for i in inputs], {}, attrs, [shape])
    assert counts.params == 0 and counts.adds + counts.macs > 0


def test_windows_for_receptive_field():
    assert registry.get("max_pool2d").window({"kernel_size": 3, "stride": None, "dilation": 2}, {}) == \
        registry.Window((3, 3), (3, 3), (2, 2))
    assert registry.get("avg_pool2d").window({"kernel_size": [2, 3], "stride": 1}, {}) == \
        registry.Window((2, 3), (1, 1), (1, 1))
    assert registry.get("sppf").window({"kernel_size": 5, "repeats": 3}, {}).kernel == (13, 13)


# ----------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("call,match", [
    (lambda x: ops.max_pool2d(x, 7), "larger than the padded input"),
    (lambda x: ops.max_pool2d(x, 3, dilation=3), "larger than the padded input"),
    (lambda x: ops.avg_pool2d(x, (2, 7), padding=(0, 0)), "larger than the padded input"),
    (lambda x: ops.max_pool2d(x, 3, padding=2), "at most half the kernel"),
    (lambda x: ops.avg_pool2d(x, 2, padding=(0, 0, 0, 2)), "right padding 2"),
    (lambda x: ops.max_pool2d(x, 0), "kernel_size must be >= 1"),
    (lambda x: ops.max_pool2d(x, 2, stride=0), "stride must be >= 1"),
    (lambda x: ops.max_pool2d(x, 2, padding=-1), "padding must not be negative"),
    (lambda x: ops.avg_pool2d(x, 2, divisor_override=0), "divisor_override"),
    (lambda x: ops.lp_pool2d(x, 0, 2), "p must be a positive"),
    (lambda x: ops.lp_pool2d(x, -2, 2), "p must be a positive"),
    (lambda x: ops.lp_pool2d(x, float("nan"), 2), "p must be a positive"),
    (lambda x: ops.global_lp_pool2d(x, 0), "p must be a positive"),
    (lambda x: ops.lp_pool2d(x, 2, 2, convention="caffe"), "convention"),
    (lambda x: ops.adaptive_avg_pool2d(x, 0), "output_size must be >= 1"),
    (lambda x: ops.adaptive_max_pool2d(x, (2, 0)), "output_size must be >= 1"),
    (lambda x: ops.spatial_pyramid_pool(x, (1, 0)), "levels"),
    (lambda x: ops.spatial_pyramid_pool(x, (1, 2), mode="sum"), "mode"),
    (lambda x: ops.sppf(x, 4), "odd"),
    (lambda x: ops.sppf(x, 5, 0), "repeats"),
    (lambda x: ops.max_pool2d(x[0], 2), "4 dimensions"),
    (lambda x: ops.roi_pool(x, [[2, 0, 0, 3, 3]], 2), r"batch index in \[0, 2\)"),
    (lambda x: ops.roi_align(x, [[-1, 0, 0, 3, 3]], 2), "batch index"),
    (lambda x: ops.roi_align(x, [[0.5, 0, 0, 3, 3]], 2), "batch index"),
    (lambda x: ops.roi_pool(x, [[0, 4, 0, 3, 3]], 2), "x2 < x1"),
    (lambda x: ops.roi_align(x, [[0, 0, 0, 3, 3, 1]], 2), r"shape \(R, 5\)"),
    (lambda x: ops.roi_align(x, [[0, 20, 1, 30, 3]], 2), "outside"),
    (lambda x: ops.roi_pool(x, [[0, 1, 1, 3, np.inf]], 2), "finite"),
    (lambda x: ops.roi_align(x, [[0, 1, 1, 3, 3]], 0), "output_size must be >= 1"),
    (lambda x: ops.roi_align(x, [[0, 1, 1, 3, 3]], 2, spatial_scale=0), "spatial_scale"),
])
def test_bad_arguments_raise_value_error(call, match):
    x = rand(2, 3, 5, 6)
    with pytest.raises(ValueError, match=match):
        call(x)


def test_integer_input_is_refused():
    with pytest.raises(TypeError):
        ops.max_pool2d(np.ones((1, 1, 4, 4), np.int32), 2)


# ----------------------------------------------------------------------------- onnxruntime

def _ort_run(op, x, **attrs):
    ort = pytest.importorskip("onnxruntime")
    helper = pytest.importorskip("onnx.helper")
    from onnx import TensorProto

    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ONNX's own shape inference uses the older ceil rule: it warns
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("H,W,kernel,stride,pads,ceil_mode", [
    (7, 8, (3, 3), (2, 2), (1, 1, 1, 1), 0), (7, 8, (3, 3), (2, 2), (1, 1, 1, 1), 1),
    (4, 4, (2, 2), (3, 3), (1, 1, 1, 1), 1), (9, 6, (3, 2), (2, 1), (1, 0, 0, 1), 1),
    (5, 11, (2, 3), (3, 2), (0, 1, 1, 0), 0), (1, 1, (1, 1), (1, 1), (0, 0, 0, 0), 1),
])
def test_matches_onnxruntime(H, W, kernel, stride, pads, ceil_mode):
    x = rand(2, 3, H, W)
    common = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pads), ceil_mode=ceil_mode)
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel, stride, pads, ceil_mode=bool(ceil_mode)),
                                  _ort_run("MaxPool", x, **common))
    for include in (0, 1):
        assert_close(ops.avg_pool2d(x, kernel, stride, pads, bool(ceil_mode), bool(include)),
                     _ort_run("AveragePool", x, count_include_pad=include, **common), 1e-5)
    for p in (1, 2, 3):
        assert_close(ops.lp_pool2d(x, p, kernel, stride, pads, bool(ceil_mode)),
                     _ort_run("LpPool", x, p=p, **common), 1e-4)


def test_global_pools_match_onnxruntime():
    x = rand(2, 5, 7, 6)
    np.testing.assert_array_equal(ops.global_max_pool2d(x), _ort_run("GlobalMaxPool", x))
    assert_close(ops.global_avg_pool2d(x), _ort_run("GlobalAveragePool", x), 1e-5)
    assert_close(ops.global_lp_pool2d(x, 3), _ort_run("GlobalLpPool", x, p=3), 1e-4)
