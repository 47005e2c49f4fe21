"""adder2d against the AdderNet reference formula written as plain float64 loops.

The reference unfolds the zero-padded input (as the paper's code does), so a
padded position contributes -|w|.  Tolerance: the kernel sums K float32
abs-differences; compared with rtol = 1e-5 and atol = 1e-5 * max|y| (the sums
are all of one sign, so the relative error stays near K * eps)."""
import numpy as np
import pytest

import pyconv
from pyconv import ops, registry


def adder_loops(x, w, bias, stride, pads, groups):
    """y[n,o,i,j] = -sum_{c,u,v} |xpad[n, g*Cg+c, i*sh+u, j*sw+v] - w[o,c,u,v]| (+ bias)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    top, left, bottom, right = pads
    xp = np.zeros((x.shape[0], x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right))
    xp[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    co, cg, kh, kw = w.shape
    sh, sw = stride
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    y = np.zeros((x.shape[0], co, ho, wo))
    for o in range(co):
        g = o // (co // groups)
        for i in range(ho):
            for j in range(wo):
                window = xp[:, g * cg:(g + 1) * cg, i * sh:i * sh + kh, j * sw:j * sw + kw]
                y[:, o, i, j] = -np.abs(window - w[o]).sum(axis=(1, 2, 3))
        if bias is not None:
            y[:, o] += bias[o]
    return y


CASES = [  # x shape, out channels, kernel, stride, padding, groups
    ((1, 3, 5, 5), 4, (3, 3), 1, 1, 1),
    ((3, 6, 9, 7), 10, (3, 3), 2, (1, 0, 2, 1), 2),     # asymmetric padding, groups, H != W
    ((1, 17, 11, 13), 19, (3, 3), 1, 1, 1),              # channels not a multiple of 8/16
    ((2, 4, 1, 1), 3, (1, 1), 1, 0, 1),                  # 1x1 input, 1x1 kernel
    ((1, 4, 1, 1), 5, (3, 3), 1, 1, 1),                  # 1x1 input, only the centre tap is real
    ((1, 8, 6, 6), 8, (3, 3), 2, 1, 4),
    ((1, 16, 8, 8), 32, (1, 1), 2, 0, 1),                # ResNet shortcut: 1x1 stride 2
    ((3, 5, 7, 6), 9, (2, 3), (2, 1), (0, 1), 1),        # rectangular kernel and stride
    ((1, 12, 15, 15), 24, (5, 5), 1, 2, 3),
    ((1, 33, 20, 17), 40, (3, 3), 1, 1, 1),              # several pixel blocks and channel blocks
]


@pytest.mark.parametrize("shape,out_channels,kernel,stride,padding,groups", CASES)
def test_adder2d_matches_formula(shape, out_channels, kernel, stride, padding, groups, nthreads):
    rng = np.random.default_rng(out_channels * 7 + shape[1])
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out_channels, shape[1] // groups) + kernel).astype(np.float32)
    b = rng.standard_normal(out_channels).astype(np.float32)
    st = (stride, stride) if isinstance(stride, int) else stride
    pads = pyconv.ops._args.padding4(padding)
    for bias in (None, b):
        want = adder_loops(x, w, bias, st, pads, groups)
        got = ops.adder2d(x, w, bias, stride=stride, padding=padding, groups=groups)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        ref = registry.get("adder2d").reference(x, w, bias, stride, padding, groups)
        np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-9)


def test_padding_contributes_minus_abs_weight():
    """A zero input with padding: every output is -sum|w| over the whole window."""
    w = np.arange(-4, 5, dtype=np.float32).reshape(1, 1, 3, 3)
    y = ops.adder2d(np.zeros((1, 1, 2, 2), np.float32), w, padding=1)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), -np.abs(w).sum()))


def test_scale_activation_and_batch_norm_folding(nthreads):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 6, 7, 7)).astype(np.float32)
    w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    mean, var = rng.standard_normal(5), rng.random(5) + 0.5
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    raw = adder_loops(x, w, None, (1, 1), (1, 1, 1, 1), 1)
    bn = (raw - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    scale, bias = ops.fold_batch_norm_into_adder(None, None, mean, var, gamma, beta, 1e-5)
    got = ops.adder2d(x, w, bias, padding=1, scale=scale, activation="relu")
    want = np.maximum(bn, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(bn).max())
    ref = registry.get("adder2d").reference(x, w, bias, 1, 1, scale=scale, activation="relu")
    np.testing.assert_allclose(ref, want, rtol=1e-6, atol=1e-5)


def test_registry_shapes_counts_window_and_prepared_call():
    spec = registry.get("adder2d")
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 8, 9, 9)).astype(np.float32)
    weights = {"weight": rng.standard_normal((16, 4, 3, 3)).astype(np.float32),
               "bias": rng.standard_normal(16).astype(np.float32)}
    wshapes = {k: v.shape for k, v in weights.items()}
    attrs = spec.resolve_attrs({"stride": 2, "padding": 1, "groups": 2})
    shapes = spec.infer_shape([x.shape], wshapes, attrs)
    assert shapes == [(3, 16, 5, 5)]
    counts = spec.count([x.shape], wshapes, attrs, shapes)
    assert counts == registry.Counts(params=16 * 4 * 9 + 16, macs=0, adds=3 * 16 * 25 * 36)
    assert spec.window(attrs, wshapes) == registry.Window(kernel=(3, 3), stride=(2, 2))
    run = spec.bind(weights, attrs)
    out = np.empty(shapes[0], np.float32)
    assert run(x, out=out) is out
    want = adder_loops(x, weights["weight"], weights["bias"], (2, 2), (1, 1, 1, 1), 2)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert spec.infer_shape([("N", 8, 9, 9)], wshapes, attrs)[0] == ("N", 16, 5, 5)
    with pytest.raises(ValueError):
        spec.infer_shape([(1, 6, 9, 9)], wshapes, attrs)


def test_float64_input_is_converted():
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3))
    y = ops.adder2d(x, w, padding=1)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, adder_loops(x, w, None, (1, 1), (1,) * 4, 1), rtol=1e-5)


@pytest.mark.parametrize("kwargs,error", [
    (dict(x=np.ones((1, 4, 5, 5), np.int64)), TypeError),
    (dict(x=np.ones((4, 5, 5), np.float32)), ValueError),
    (dict(weight=np.ones((6, 4, 3), np.float32)), ValueError),
    (dict(weight=np.ones((6, 3, 3, 3), np.float32)), ValueError),    # input channels mismatch
    (dict(groups=3), ValueError),                                    # does not divide 4
    (dict(groups=0), ValueError),
    (dict(weight=np.ones((5, 2, 3, 3), np.float32), groups=2), ValueError),  # 5 outputs, 2 groups
    (dict(bias=np.ones(5, np.float32)), ValueError),
    (dict(scale=np.ones((6, 1), np.float32)), ValueError),
    (dict(stride=0), ValueError),
    (dict(padding=-1), ValueError),
    (dict(padding=(1, 2, 3)), ValueError),
    (dict(weight=np.ones((6, 4, 7, 7), np.float32)), ValueError),    # kernel larger than input
    (dict(activation="gelu"), ValueError),
    (dict(out=np.empty((1, 6, 5, 5), np.float64)), ValueError),
])
def test_bad_arguments(kwargs, error):
    args = dict(x=np.ones((1, 4, 5, 5), np.float32), weight=np.ones((6, 4, 3, 3), np.float32))
    args.update(kwargs)
    with pytest.raises(error):
        ops.adder2d(args.pop("x"), args.pop("weight"), **args)


def test_graph_folds_batch_norm_and_relu_into_adder(tmp_path):
    """adder2d -> batch_norm -> relu runs as one adder2d node (scale, bias, fused ReLU)."""
    from pyconv.graph.passes import optimize

    rng = np.random.default_rng(12)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    mean, var = rng.standard_normal(6), rng.random(6) + 0.5
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    b = pyconv.GraphBuilder()
    y = b.adder2d(b.input("input", ["N", 4, 7, 7]), weight=w, stride=2, padding=1)
    y = b.relu(b.batch_norm(y, mean=mean, var=var, weight=gamma, bias=beta, eps=1e-5))
    b.output(y, "out")
    graph = b.save(tmp_path / "adder.npz")
    assert [(n.op, n.attrs.get("activation")) for n in optimize(graph).nodes] == [("adder2d", "relu")]
    x = rng.standard_normal((3, 4, 7, 7)).astype(np.float32)
    got = pyconv.load(tmp_path / "adder.npz")(x)
    raw = adder_loops(x, w, None, (2, 2), (1, 1, 1, 1), 1)
    k = (gamma / np.sqrt(var + 1e-5))[:, None, None]
    want = np.maximum((raw - mean[:, None, None]) * k + beta[:, None, None], 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_empty_tensors():
    """No input channels: the sum is empty (bias + activation only); no images: empty output."""
    bias = np.array([-1, 0, 1, 2], np.float32)
    y = ops.adder2d(np.ones((2, 0, 3, 3), np.float32), np.ones((4, 0, 1, 1), np.float32), bias, activation="relu")
    np.testing.assert_array_equal(y, np.broadcast_to(np.maximum(bias, 0)[None, :, None, None], (2, 4, 3, 3)))
    assert ops.adder2d(np.ones((0, 5, 3, 3), np.float32), np.ones((4, 5, 1, 1), np.float32)).shape == (0, 4, 3, 3)
