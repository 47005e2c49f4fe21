"""pyconv._core.pointwise_panels (GEMM convs on weights packed in panels: 1x1 convs of
small planes, and any kernel as an implicit GEMM on channels-innermost phase planes)
against a float64 reference.  Tolerance: 1e-5 of the output's magnitude (float32
accumulation over at most a few thousand products)."""
import numpy as np
import pytest

from pyconv._core import pointwise_panels as pp
from pyconv.ops._args import parse_activation
from pyconv.ops.conv import conv2d_reference

TOL = 1e-5


def reference(x, wmat, bias, residual, activation):
    return conv2d_reference(x, wmat[:, :, None, None], bias, residual=residual, activation=activation)


def run(x, wmat, bias=None, residual=None, activation=None, nthreads=1):
    n, _, h, w = x.shape
    out_shape = (n, wmat.shape[0], h, w)
    conv = pp.PanelConv1x1(x.shape, pp.pack_panels(wmat), bias, parse_activation(activation), out_shape, nthreads)
    out = np.full(out_shape, np.nan, np.float32)
    conv(x, residual, out, np.zeros(conv.scratch_floats(), np.float32))
    return out


@pytest.mark.parametrize("shape", [
    (1, 320, 1280, 7, 7),   # MobileNetV2's last 1x1: 40 panels
    (3, 17, 40, 3, 5),      # batch 3, two overlapping panels, 15 pixels (a ragged register block)
    (2, 1, 33, 1, 8),       # one input channel, exactly one register block of pixels
    (1, 64, 32, 8, 8),      # exactly one panel
    (2, 96, 100, 9, 7),     # 4 panels, the last one overlapping
    (1, 16, 40, 70, 70),    # a large plane: M in blocks of 23 rows (chunk_rows)
])
@pytest.mark.parametrize("activation", [None, "relu6", ("leaky_relu", 0.1)], ids=str)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_matches_reference(shape, activation, nthreads):
    n, ci, co, h, w = shape
    rng = np.random.default_rng([n, ci, co, h, w, nthreads])
    x = rng.standard_normal((n, ci, h, w)).astype(np.float32)
    wmat = (rng.standard_normal((co, ci)) / np.sqrt(ci)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    residual = rng.standard_normal((n, co, h, w)).astype(np.float32)
    for b, res in ((None, None), (bias, None), (bias, residual)):
        ref = reference(x, wmat, b, res, activation)
        got = run(x, wmat, b, res, activation, nthreads)
        assert np.abs(got - ref).max() <= TOL * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("pixels", range(8, 41))
def test_every_row_count_is_covered(pixels):
    """Each pixel count from the least to 40 has its own mix of 12- and 8-row register
    blocks (blocked_gemm.pxd's row_blocks, overlapping at the end): a row no block
    covers stays NaN, a row two blocks cover must agree.  With 100 input channels, 8
    and 16 pixels (8-row blocks) run every block 64 k at a time (chunked_column)."""
    rng = np.random.default_rng(pixels)
    x = rng.standard_normal((1, 100, 1, pixels)).astype(np.float32)
    wmat = (rng.standard_normal((40, 100)) / 10).astype(np.float32)
    ref = reference(x, wmat, None, None, None)
    assert np.abs(run(x, wmat) - ref).max() <= TOL * max(1.0, np.abs(ref).max())


def test_panels_layout():
    wmat = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    panels = pp.pack_panels(wmat)
    assert panels.shape == (2, 3, 32) and panels.ctypes.data % 64 == 0
    np.testing.assert_array_equal(panels[0], wmat[:32].T)
    np.testing.assert_array_equal(panels[1], wmat[8:].T)   # the last panel ends at Co
    # a kernel: K runs tap by tap (row by row, or in the order given), the input channels inside
    weight = np.arange(40 * 3 * 2 * 2, dtype=np.float32).reshape(40, 3, 2, 2)
    for taps in (None, [(1, 0), (0, 0), (1, 1), (0, 1)]):
        panels = pp.pack_panels(weight, taps)
        assert panels.shape == (2, 12, 32) and panels.ctypes.data % 64 == 0
        for tap, (ki, kj) in enumerate(taps or [(0, 0), (0, 1), (1, 0), (1, 1)]):
            np.testing.assert_array_equal(panels[1, tap * 3:tap * 3 + 3], weight[8:, :, ki, kj].T)
    with pytest.raises(ValueError, match="taps"):
        pp.pack_panels(weight, [(0, 0), (0, 1), (1, 0), (1, 0)])


def test_tap_order_groups_taps_of_one_phase():
    # stride 2: each kernel row's even taps, then its odd ones (one pixel apart in their planes)
    assert pp.tap_order((3, 3), (2, 2), (1, 1)) == [(0, 0), (0, 2), (2, 0), (2, 2), (0, 1), (2, 1),
                                                    (1, 0), (1, 2), (1, 1)]
    assert pp.tap_order((2, 3), (1, 1), (1, 1)) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert pp.tap_order((1, 3), (1, 2), (1, 2)) == [(0, 0), (0, 1), (0, 2)]   # dilation 2, stride 2: one phase


@pytest.mark.parametrize("wmat", [np.zeros((31, 4), np.float32), np.zeros((40, 4), np.float64),
                                  np.zeros((40, 4, 1), np.float32), np.zeros((40, 0), np.float32)])
def test_pack_rejects_bad_weights(wmat):
    with pytest.raises(ValueError):
        pp.pack_panels(wmat)


def good():
    x = np.zeros((1, 4, 3, 3), np.float32)
    return dict(x_shape=x.shape, panels=pp.pack_panels(np.zeros((40, 4), np.float32)), bias=None,
                epilogue=parse_activation(None), out_shape=(1, 40, 3, 3), nthreads=1)


@pytest.mark.parametrize("change", [
    dict(out_shape=(1, 40, 3, 4)),                          # another plane size
    dict(out_shape=(2, 40, 3, 3)),                          # another batch
    dict(out_shape=(1, 72, 3, 3)),                          # panels of other output channels
    dict(x_shape=(1, 5, 3, 3)),                             # panels of other input channels
    dict(x_shape=(1, 4, 2, 3), out_shape=(1, 40, 2, 3)),    # fewer pixels than a register block
    dict(bias=np.zeros(39, np.float32)),
    dict(nthreads=0),
], ids=lambda c: ",".join(c))
def test_bad_construction_raises(change):
    args = good()
    args.update(change)
    with pytest.raises(ValueError):
        pp.PanelConv1x1(**args)


def test_bad_call_arrays_raise():
    conv = pp.PanelConv1x1(**good())
    x, out = np.zeros((1, 4, 3, 3), np.float32), np.zeros((1, 40, 3, 3), np.float32)
    scratch = np.zeros(conv.scratch_floats(), np.float32)
    conv(x, None, out, scratch)
    for args in [(x.astype(np.float64), None, out, scratch), (x, None, out[:, :, :2], scratch),
                 (x, out[:, :1], out, scratch), (x, None, out, scratch[:-1]), ([[0.0]], None, out, scratch)]:
        with pytest.raises((ValueError, TypeError)):
            conv(*args)


def run_implicit(x, weight, bias=None, residual=None, activation=None, stride=1, pads=(0, 0, 0, 0), dilation=1,
                 nthreads=1):
    args = dict(stride=stride, padding=pads, dilation=dilation)
    out_shape = conv2d_reference(x[:1, :1], weight[:1, :1], **args).shape
    out_shape = (x.shape[0], weight.shape[0]) + out_shape[2:]
    pair = (lambda v: (v, v) if isinstance(v, int) else tuple(v))
    taps = pp.tap_order(weight.shape[2:], pair(stride), pair(dilation))
    conv = pp.PanelConv(x.shape, pp.pack_panels(weight, taps), bias, parse_activation(activation),
                        out_shape, weight.shape[2:], pair(stride), pads, pair(dilation), nthreads)
    out = np.full(out_shape, np.nan, np.float32)
    conv(x, residual, out, np.full(conv.scratch_floats(), np.nan, np.float32))   # any scratch content
    return out


@pytest.mark.parametrize("n, ci, co, hw, kernel, stride, pads, dilation", [
    (1, 64, 128, (28, 28), (3, 3), 2, (1, 1, 1, 1), 1),   # ResNet's 3x3 stride 2 (a wide grid of 15 columns)
    (2, 16, 40, (11, 9), (3, 2), (1, 2), (1, 0, 2, 1), (2, 1)),   # batch, asymmetric everything
    (1, 17, 33, (9, 10), (1, 1), 2, (0, 0, 0, 0), 1),     # 1x1 stride 2: one phase plane of four
    (1, 18, 40, (12, 11), (3, 1), 2, (1, 0, 1, 0), 1),    # one column at stride 2: no odd column phase
    (3, 20, 64, (7, 7), (3, 3), 1, (1, 1, 1, 1), 1),      # stride 1 (one phase), Wq > Wo
    (1, 24, 32, (13, 12), (5, 5), 3, (2, 2, 1, 0), 1),    # stride 3: nine phases, one panel
    (1, 19, 70, (4, 5), (2, 2), 1, (0, 0, 0, 0), 1),      # 3 overlapping panels, 12 wide pixels
    (2, 16, 32, (64, 60), (3, 3), 1, (1, 1, 1, 1), 1),    # M in two blocks of output rows, Wq > Wo
    (1, 32, 64, (45, 41), (3, 3), 2, (1, 1, 1, 1), 1),    # rows of 21 (>= 16) gathered one by one
    (2, 3, 40, (29, 31), (7, 7), 2, (3, 3, 3, 3), 1),     # RGB 7x7: runs of 4 and 3 taps (12 and 9 k)
    (1, 16, 32, (293, 5), (3, 3), 1, (1, 1, 1, 1), 1),    # a last row too short for a block joins the one before
])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_implicit_gemm_matches_reference(n, ci, co, hw, kernel, stride, pads, dilation, nthreads):
    rng = np.random.default_rng([n, ci, co, *hw, nthreads])
    x = rng.standard_normal((n, ci) + hw).astype(np.float32)
    weight = (rng.standard_normal((co, ci) + kernel) / np.sqrt(ci * kernel[0] * kernel[1])).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    args = dict(stride=stride, padding=pads, dilation=dilation)
    ref0 = conv2d_reference(x, weight, bias, **args)
    residual = rng.standard_normal(ref0.shape).astype(np.float32)
    for b, res, act in ((None, None, None), (bias, None, "relu6"), (bias, residual, ("leaky_relu", 0.1))):
        ref = conv2d_reference(x, weight, b, residual=res, activation=act, **args)
        got = run_implicit(x, weight, b, res, act, stride, pads, dilation, nthreads)
        assert np.abs(got - ref).max() <= TOL * max(1.0, np.abs(ref).max())


def test_implicit_gemm_bad_construction_and_arrays():
    w = np.zeros((40, 4, 3, 3), np.float32)
    panels = pp.pack_panels(w, pp.tap_order((3, 3), (2, 2), (1, 1)))
    args = dict(x_shape=(1, 4, 6, 6), panels=panels, bias=None, epilogue=parse_activation(None),
                out_shape=(1, 40, 3, 3), kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), dilation=(1, 1),
                nthreads=1)
    conv = pp.PanelConv(**args)
    x, out = np.zeros((1, 4, 6, 6), np.float32), np.zeros((1, 40, 3, 3), np.float32)
    scratch = np.zeros(conv.scratch_floats(), np.float32)
    conv(x, None, out, scratch)
    for change in [dict(out_shape=(2, 40, 3, 3)), dict(out_shape=(1, 40, 1, 1)), dict(kernel=(3, 2)),
                   dict(x_shape=(1, 5, 6, 6)), dict(bias=np.zeros(39, np.float32)), dict(nthreads=0)]:
        with pytest.raises(ValueError):
            pp.PanelConv(**{**args, **change})
    for bad in [(x.astype(np.float64), None, out, scratch), (x, None, out[:, :, :2], scratch),
                (x, out[:, :1], out, scratch), (x, None, out, scratch[:-1])]:
        with pytest.raises((ValueError, TypeError)):
            conv(*bad)
