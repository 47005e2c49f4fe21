"""pyconv._core.pointwise_panels (1x1 convs of small planes on weights packed in panels)
against a float64 reference.  Tolerance: 1e-5 of the output's magnitude (float32
accumulation over at most a few hundred input channels)."""
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


def test_panels_layout():
    wmat = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    panels = pp.pack_panels(wmat)
    assert panels.shape == (2, 3, 32) and panels.ctypes.data % 64 == 0
    np.testing.assert_array_equal(panels[0], wmat[:32].T)
    np.testing.assert_array_equal(panels[1], wmat[8:].T)   # the last panel ends at Co


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


def test_im2col_matrix_and_bad_arrays():
    # conv_gemm.Im2col: the whole-image B of a kxk conv, as pointwise_panels takes it
    from pyconv._core import conv_gemm
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    im2col = conv_gemm.Im2col(x.shape, 3, 2, (2, 1), (1, 0, 1, 1), (1, 2), (4, 5))
    assert im2col.shape == (2, 3 * 3 * 2, 4, 5)
    cols = np.full(im2col.shape, np.nan, np.float32)
    im2col(x, np.zeros(im2col.phase_floats(), np.float32), cols)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1)))
    for c in range(3):
        for i in range(3):
            for j in range(2):
                tap = xp[:, c, i:i + 7:2, 2 * j:2 * j + 5]
                np.testing.assert_array_equal(cols[:, (c * 3 + i) * 2 + j], tap)
    with pytest.raises(ValueError):
        im2col(x, np.zeros(im2col.phase_floats(), np.float32), cols[:1])
    with pytest.raises(ValueError):
        im2col(x, np.zeros(1, np.float32), cols)
