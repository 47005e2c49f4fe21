"""shift2d and shift_conv1x1 against plain float64 loops written from the definitions.

Tolerances: shift2d only copies, so it must match exactly; shift_conv1x1 sums C
float32 products (sgemm), compared with atol = rtol = 1e-5 relative to the
output's largest magnitude."""
import numpy as np
import pytest

import pyconv
from pyconv import ops, registry


def expected_offsets(channels, k, assignment):
    """(dy, dx) per channel written out from the documented rules (independent of shift_table)."""
    taps = k * k
    shifted = channels // taps * taps
    offsets = []
    for c in range(channels):
        if c >= shifted:
            offsets.append((0, 0))
            continue
        number = c % taps if assignment == "interleaved" else c // (shifted // taps)
        offsets.append((number // k - k // 2, number % k - k // 2))
    return offsets


def shift_loops(x, offsets, dilation):
    """y[n, c, h, w] = x[n, c, h + dy*d, w + dx*d], 0 outside (explicit loops, float64)."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, h, w))
    for ci, (dy, dx) in enumerate(offsets):
        for i in range(h):
            for j in range(w):
                si, sj = i + dy * dilation, j + dx * dilation
                if 0 <= si < h and 0 <= sj < w:
                    y[:, ci, i, j] = x[:, ci, si, sj]
    return y


def conv1x1_loops(x, weight, bias, stride, activation):
    sh, sw = stride
    xs = x[:, :, ::sh, ::sw]
    y = np.zeros((x.shape[0], weight.shape[0]) + xs.shape[2:])
    for o in range(weight.shape[0]):
        for c in range(x.shape[1]):
            y[:, o] += weight[o, c, 0, 0] * xs[:, c]
        if bias is not None:
            y[:, o] += bias[o]
    if activation == "relu":
        y = np.maximum(y, 0)
    return y


SHAPES = [  # n, c, h, w
    (1, 9, 5, 5),
    (3, 20, 7, 4),     # C not a multiple of k*k: channels 18, 19 stay unshifted
    (1, 5, 6, 9),      # C < k*k: nothing is shifted
    (2, 33, 1, 1),     # 1x1 spatial
    (1, 50, 11, 13),   # odd, H != W
    (1, 17, 2, 3),     # smaller than the dilated window
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k,dilation", [(3, 1), (3, 2), (5, 1), (1, 1)])
@pytest.mark.parametrize("assignment", ["interleaved", "grouped"])
def test_shift2d_matches_loops(shape, k, dilation, assignment, nthreads):
    rng = np.random.default_rng(hash((shape, k, dilation)) % 2**32)
    x = rng.standard_normal(shape).astype(np.float32)
    want = shift_loops(x.astype(np.float64), expected_offsets(shape[1], k, assignment), dilation)
    got = ops.shift2d(x, kernel_size=k, dilation=dilation, assignment=assignment)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, want.astype(np.float32))
    np.testing.assert_array_equal(registry.get("shift2d").reference(x, k, dilation, assignment), want)


def test_shift_ordering_is_the_reference_cuda_kernels():
    """Shift number s samples tap (s // k, s % k) of the k x k window: channel 0 reads up-left."""
    x = np.arange(9 * 9, dtype=np.float32).reshape(1, 9, 3, 3) % 9 + 1  # every pixel of a plane distinct
    y = ops.shift2d(x)
    # channel 0: (dy, dx) = (-1, -1) -> y[1, 1] = x[0, 0]; row 0 and column 0 are zero fill
    assert y[0, 0, 1, 1] == x[0, 0, 0, 0] and not y[0, 0, 0].any() and not y[0, 0, :, 0].any()
    np.testing.assert_array_equal(y[0, 4], x[0, 4])  # centre tap: no shift
    assert y[0, 8, 1, 1] == x[0, 8, 2, 2]  # channel 8: (+1, +1)


def test_shift_equals_one_hot_depthwise_cross_correlation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 18, 6, 7))
    table = ops.shift_table(18, 3)
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for c, (dy, dx) in enumerate(table):
        kernel = np.zeros((3, 3))
        kernel[1 + dy, 1 + dx] = 1
        corr = sum(kernel[u, v] * pad[0, c, u:u + 6, v:v + 7] for u in range(3) for v in range(3))
        np.testing.assert_array_equal(ops.shift2d(x)[0, c], corr.astype(np.float32))


def test_explicit_table():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    table = [[1, 0], [0, -1], [-1, 1], [0, 0]]
    np.testing.assert_array_equal(ops.shift2d(x, assignment=table), shift_loops(x, table, 1))
    np.testing.assert_array_equal(ops.shift2d(x, dilation=2, assignment=np.array(table)), shift_loops(x, table, 2))


@pytest.mark.parametrize("shape,out_channels", [((1, 9, 5, 5), 4), ((3, 20, 7, 4), 13), ((1, 5, 6, 9), 3),
                                                ((2, 33, 1, 1), 7), ((1, 70, 23, 19), 17), ((1, 64, 16, 16), 40)])
@pytest.mark.parametrize("stride", [1, 2, (1, 2)])
@pytest.mark.parametrize("k,dilation,assignment", [(3, 1, "interleaved"), (3, 2, "grouped"), (5, 1, "interleaved")])
def test_shift_conv1x1_matches_loops(shape, out_channels, stride, k, dilation, assignment, nthreads):
    rng = np.random.default_rng(out_channels)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out_channels, shape[1], 1, 1)).astype(np.float32)
    b = rng.standard_normal(out_channels).astype(np.float32)
    shifted = shift_loops(x.astype(np.float64), expected_offsets(shape[1], k, assignment), dilation)
    st = (stride, stride) if isinstance(stride, int) else stride
    for bias, act in [(None, None), (b, "relu")]:
        want = conv1x1_loops(shifted, w, bias, st, act)
        got = ops.shift_conv1x1(x, w, bias, kernel_size=k, dilation=dilation, assignment=assignment,
                                stride=stride, activation=act)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        ref = registry.get("shift_conv1x1").reference(x, w, bias, k, dilation, assignment, stride, act)
        np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-12)


def test_csc_block_is_conv1x1_then_shift_conv1x1():
    """ShiftNet CSC block (1x1 expand + ReLU -> shift -> 1x1) expressed with the fused op."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    w1 = rng.standard_normal((48, 16, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((16, 48, 1, 1)).astype(np.float32)
    hidden = np.maximum(np.einsum("oc,nchw->nohw", w1[:, :, 0, 0], x.astype(np.float64)), 0)
    want = conv1x1_loops(shift_loops(hidden, expected_offsets(48, 3, "interleaved"), 1), w2, None, (1, 1), None)
    got = ops.shift_conv1x1(np.maximum(np.einsum("oc,nchw->nohw", w1[:, :, 0, 0], x), 0).astype(np.float32), w2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_registry_shapes_counts_window_and_prepared_call():
    spec = registry.get("shift2d")
    assert spec.infer_shape([(1, 20, 7, 4)], {}, dict(spec.attrs)) == [(1, 20, 7, 4)]
    assert spec.count([(1, 20, 7, 4)], {}, dict(spec.attrs), [(1, 20, 7, 4)]) == registry.Counts(0, 0, 0)
    assert spec.window({**spec.attrs, "dilation": 2}, {}).dilation == (2, 2)

    spec = registry.get("shift_conv1x1")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 20, 7, 5)).astype(np.float32)
    weights = {"weight": rng.standard_normal((6, 20, 1, 1)).astype(np.float32),
               "bias": rng.standard_normal(6).astype(np.float32)}
    attrs = spec.resolve_attrs({"stride": 2, "activation": ["clip", -0.5, 0.5], "assignment": "grouped"})
    shapes = spec.infer_shape([x.shape], {k: v.shape for k, v in weights.items()}, attrs)
    assert shapes == [(2, 6, 4, 3)]
    counts = spec.count([x.shape], {k: v.shape for k, v in weights.items()}, attrs, shapes)
    assert counts == registry.Counts(params=6 * 20 + 6, macs=2 * 6 * 4 * 3 * 20, adds=0)
    run = spec.bind(weights, attrs)
    out = np.empty(shapes[0], np.float32)
    assert run(x, out=out) is out
    np.testing.assert_allclose(out, spec.reference(x, **weights, **attrs), rtol=1e-5, atol=1e-5)
    assert spec.infer_shape([("N", 20, 7, 5)], {"weight": (6, 20, 1, 1)}, attrs)[0][0] == "N"


def test_float64_input_is_converted():
    x = np.random.default_rng(5).standard_normal((1, 9, 4, 4))
    assert ops.shift2d(x).dtype == np.float32


@pytest.mark.parametrize("call,error", [
    (lambda x, w: ops.shift2d(x.astype(np.int32)), TypeError),
    (lambda x, w: ops.shift2d(x[0]), ValueError),
    (lambda x, w: ops.shift2d(x, kernel_size=2), ValueError),
    (lambda x, w: ops.shift2d(x, kernel_size=0), ValueError),
    (lambda x, w: ops.shift2d(x, dilation=0), ValueError),
    (lambda x, w: ops.shift2d(x, assignment="random"), ValueError),
    (lambda x, w: ops.shift2d(x, assignment=[[0, 0]] * 3), ValueError),      # wrong length
    (lambda x, w: ops.shift2d(x, assignment=[[2, 0]] * 10), ValueError),     # beyond k//2
    (lambda x, w: ops.shift2d(x, assignment=[[0.5, 0]] * 10), ValueError),   # not integers
    (lambda x, w: ops.shift2d(x, out=np.empty((1, 10, 5, 4), np.float32)), ValueError),
    (lambda x, w: ops.shift_conv1x1(x, w[:, :9]), ValueError),
    (lambda x, w: ops.shift_conv1x1(x, np.ones((3, 10, 3, 3), np.float32)), ValueError),
    (lambda x, w: ops.shift_conv1x1(x, w, bias=np.ones(4, np.float32)), ValueError),
    (lambda x, w: ops.shift_conv1x1(x, w, stride=0), ValueError),
    (lambda x, w: ops.shift_conv1x1(x, w, activation="swish"), ValueError),
])
def test_bad_arguments(call, error):
    x = np.ones((1, 10, 5, 5), np.float32)
    w = np.ones((3, 10, 1, 1), np.float32)
    with pytest.raises(error):
        call(x, w)


def test_graph_with_shift_table_attribute_and_folded_batch_norm(tmp_path):
    """A CSC block in a model file: the explicit table is a list attribute (no weight), and
    shift_conv1x1 -> batch_norm -> relu runs as one node."""
    from pyconv.graph.passes import optimize

    rng = np.random.default_rng(13)
    w1 = rng.standard_normal((12, 4, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((5, 12, 1, 1)).astype(np.float32)
    mean, var = rng.standard_normal(5), rng.random(5) + 0.5
    table = rng.integers(-1, 2, size=(12, 2)).tolist()
    b = pyconv.GraphBuilder()
    y = b.conv2d(b.input("input", ["N", 4, 6, 6]), weight=w1, activation="relu")
    y = b.shift_conv1x1(y, weight=w2, assignment=table, stride=2)
    y = b.relu(b.batch_norm(y, mean=mean, var=var, eps=1e-5))
    b.output(y, "out")
    graph = b.save(tmp_path / "csc.npz")
    assert [n.op for n in optimize(graph).nodes] == ["conv2d", "shift_conv1x1"]
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    got = pyconv.load(tmp_path / "csc.npz")(x)
    hidden = np.maximum(np.einsum("oc,nchw->nohw", w1[:, :, 0, 0], x.astype(np.float64)), 0)
    y = conv1x1_loops(shift_loops(hidden, table, 1), w2, None, (2, 2), None)
    want = np.maximum((y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5), 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_empty_tensors():
    """No channels: the 1x1 sum is empty (bias + activation only); no images: empty outputs."""
    bias = np.array([-1, 0, 1, 2], np.float32)
    y = ops.shift_conv1x1(np.ones((2, 0, 3, 3), np.float32), np.ones((4, 0, 1, 1), np.float32), bias,
                          activation="relu")
    np.testing.assert_array_equal(y, np.broadcast_to(np.maximum(bias, 0)[None, :, None, None], (2, 4, 3, 3)))
    assert ops.shift_conv1x1(np.ones((0, 5, 3, 3), np.float32), np.ones((4, 5, 1, 1), np.float32)).shape == (0, 4, 3, 3)
    assert ops.shift2d(np.ones((0, 5, 3, 3), np.float32)).shape == (0, 5, 3, 3)
    assert ops.shift2d(np.ones((1, 0, 3, 3), np.float32)).shape == (1, 0, 3, 3)
