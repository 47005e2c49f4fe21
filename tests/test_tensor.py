"""Tensor ops: arithmetic with broadcasting, concat/split/slice, shape ops, linear, pad, resize."""
import numpy as np
import pytest

from pyconv import ops, registry

MY_OPS = ["add", "sub", "mul", "div", "concat", "split", "slice", "channel_shuffle", "concat_shuffle", "flatten",
          "reshape", "transpose", "linear", "pad", "resize", "identity", "constant"]


def _rand(shape, seed=0, low=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) + low).astype(np.float32)


def _close(y, ref, rtol=1e-6):
    ref = np.asarray(ref, np.float64)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max(initial=0))))


def _onnx_session(op, inputs, initializers=(), opset=13, **attrs):
    """An onnxruntime session running one node on named float inputs."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    names = [name for name, _ in inputs]
    node = helper.make_node(op, names + [n for n, _ in initializers], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(inputs))[0]


# ---------------------------------------------------------------- arithmetic

PAIRS = [
    ((3, 5, 4, 6), (3, 5, 4, 6)),      # residual add (same shape)
    ((3, 5, 4, 6), (3, 5, 1, 1)),      # squeeze-and-excitation weighting
    ((3, 5, 4, 6), (1, 5, 1, 1)),
    ((3, 5, 4, 6), (5, 1, 1)),
    ((3, 5, 4, 6), (3, 1, 1, 1)),
    ((3, 5, 1, 1), (3, 5, 4, 6)),      # per-channel operand first
    ((3, 5, 4, 6), (6,)),              # general broadcasting (NumPy path)
    ((3, 1, 4, 6), (1, 5, 1, 1)),
    ((3, 5, 4, 6), ()),
    ((1, 1, 1, 1), (1, 1, 1, 1)),
    ((2, 7), (2, 1)),
    ((1, 64, 56, 56), (1, 64, 56, 56)),  # threaded
    ((2, 64, 28, 28), (2, 64, 1, 1)),
]


@pytest.mark.parametrize("op, ufunc", [("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                                       ("div", np.divide)])
@pytest.mark.parametrize("shapes", PAIRS, ids=str)
def test_binary_broadcasting(op, ufunc, shapes):
    a, b = _rand(shapes[0], 1), _rand(shapes[1], 2, low=3.0)  # b away from 0 for div
    y = getattr(ops, op)(a, b)
    expected = ufunc(a.astype(np.float64), b.astype(np.float64))
    assert y.shape == expected.shape and y.dtype == np.float32
    _close(y, expected, rtol=1e-6 if op != "div" else 1e-5)
    spec = registry.get(op)
    assert spec.infer_shape([shapes[0], shapes[1]], {}, {}) == [expected.shape]
    if expected.shape == a.shape:  # in place into the first operand
        buf = a.copy()
        assert getattr(ops, op)(buf, b, out=buf) is buf
        np.testing.assert_array_equal(buf, y)


def test_division_follows_ieee_without_warnings():
    a = np.array([[1.0, -1.0, 0.0]], np.float32)
    with np.errstate(all="raise"):
        for b in (np.zeros((1, 3), np.float32), np.zeros((1, 1), np.float32), np.zeros(3, np.float32)):
            y = ops.div(a, b)
            assert y[0, 0] == np.inf and y[0, 1] == -np.inf and np.isnan(y[0, 2])


def test_binary_bad_arguments():
    with pytest.raises(ValueError, match="broadcast"):
        ops.add(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))
    with pytest.raises(TypeError):
        ops.mul(np.ones(3, np.float32), np.ones(3, np.int32))
    with pytest.raises(ValueError, match="out"):
        ops.add(np.ones((2, 1), np.float32), np.ones((1, 3), np.float32), out=np.empty((2, 1), np.float32))
    with pytest.raises(ValueError, match="broadcast"):
        registry.get("add").infer_shape([(2, 3), (4, 3)], {}, {})


# ---------------------------------------------------------------- concat / split / slice

def test_concat():
    xs = [_rand((2, c, 3, 4), c) for c in (1, 5, 2)]
    y = ops.concat(*xs)
    assert y.shape == (2, 8, 3, 4)
    np.testing.assert_array_equal(y[:, :1], xs[0])
    np.testing.assert_array_equal(y[:, 1:6], xs[1])
    np.testing.assert_array_equal(y[:, 6:], xs[2])
    np.testing.assert_array_equal(ops.concat(xs[0], xs[0], axis=-1), np.concatenate([xs[0]] * 2, axis=3))
    np.testing.assert_array_equal(ops.concat(xs[1]), xs[1])
    assert registry.get("concat").infer_shape([x.shape for x in xs], {}, {"axis": 1}) == [(2, 8, 3, 4)]
    with pytest.raises(ValueError, match="match"):
        ops.concat(xs[0], _rand((2, 1, 3, 5)))
    with pytest.raises(ValueError, match="dimensions"):
        ops.concat(xs[0], _rand((2, 1, 3)))
    with pytest.raises(ValueError, match="at least one"):
        ops.concat()
    with pytest.raises(ValueError, match="axis"):
        ops.concat(xs[0], axis=4)


@pytest.mark.parametrize("sizes_or_count, axis, expected", [
    (2, 1, [3, 3]), (3, 3, [3, 3, 1]), ([1, 0, 5], 1, [1, 0, 5]), (1, 2, [5]), (5, -1, None),
])
def test_split(sizes_or_count, axis, expected):
    x = _rand((2, 6, 5, 7), 3)
    if expected is None:  # 7 into 5 parts of ceil(7/5) = 2 leaves an empty last part
        with pytest.raises(ValueError, match="non-empty"):
            ops.split(x, sizes_or_count, axis=axis)
        return
    parts = ops.split(x, sizes_or_count, axis=axis)
    assert [p.shape[axis] for p in parts] == expected
    assert all(p.flags.c_contiguous for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts, axis=axis), x)
    spec = registry.get("split")
    attrs = {"sizes_or_count": sizes_or_count, "axis": axis}
    assert spec.outputs_for(attrs) == len(expected)
    assert spec.infer_shape([x.shape], {}, attrs) == [p.shape for p in parts]
    outs = [np.empty_like(p) for p in parts]
    assert all(a is b for a, b in zip(ops.split(x, sizes_or_count, axis=axis, out=outs), outs))


def test_split_bad_arguments():
    x = _rand((2, 6))
    with pytest.raises(ValueError, match="sum"):
        ops.split(x, [2, 3])
    with pytest.raises(ValueError, match=">= 1"):
        ops.split(x, 0)
    with pytest.raises(TypeError):
        ops.split(x, "2")
    with pytest.raises(ValueError, match="buffers"):
        ops.split(x, 2, out=[np.empty((2, 3), np.float32)])


SLICES = [
    dict(starts=[1], ends=[3]),
    dict(starts=[0, -3], ends=[100, -1], axes=[1, 3]),
    dict(starts=[-1, 2], ends=[-1000, 1000], axes=[2, 1], steps=[-1, 2]),
    dict(starts=[1000], ends=[-1000], axes=[-1], steps=[-3]),
    dict(starts=[4], ends=[2], axes=[3]),  # empty
    dict(starts=[-100, 0], ends=[2, 1], axes=[0, 2], steps=[1, 1]),
]


@pytest.mark.parametrize("kw", SLICES, ids=str)
def test_slice_onnx_semantics(kw):
    x = _rand((3, 5, 4, 6), 4)
    y = ops.slice(x, **kw)
    np.testing.assert_array_equal(y, registry.get("slice").reference(x, **kw))
    assert registry.get("slice").infer_shape([x.shape], {}, registry.get("slice").resolve_attrs(kw)) == [y.shape]
    if y.size:
        n = len(kw["starts"])
        inits = [("starts", np.array(kw["starts"], np.int64)), ("ends", np.array(kw["ends"], np.int64)),
                 ("axes", np.array(kw.get("axes", range(n)), np.int64)),
                 ("steps", np.array(kw.get("steps", [1] * n), np.int64))]
        np.testing.assert_array_equal(y, _onnx_session("Slice", [("x", x)], inits))


def test_slice_bad_arguments():
    x = _rand((2, 3))
    with pytest.raises(ValueError, match="0"):
        ops.slice(x, [0], [1], steps=[0])
    with pytest.raises(ValueError, match="equal lengths"):
        ops.slice(x, [0, 1], [1])
    with pytest.raises(ValueError, match="repeat"):
        ops.slice(x, [0, 0], [1, 1], axes=[1, -1])
    with pytest.raises(ValueError, match="axes"):
        ops.slice(x, [0], [1], axes=[2])


# ---------------------------------------------------------------- shape ops

@pytest.mark.parametrize("shape, groups", [((2, 6, 3, 5), 2), ((2, 6, 3, 5), 3), ((1, 8, 1, 1), 8),
                                           ((3, 4, 2, 2), 1), ((1, 116, 28, 28), 2), ((2, 6), 3)])
def test_channel_shuffle(shape, groups):
    x = _rand(shape, 5)
    y = ops.channel_shuffle(x, groups)
    per_group = shape[1] // groups
    for c in range(shape[1]):  # output channel c = j * groups + g takes input channel g * per_group + j
        np.testing.assert_array_equal(y[:, c], x[:, (c % groups) * per_group + c // groups])
    expected = x.reshape((shape[0], groups, per_group) + shape[2:]).swapaxes(1, 2).reshape(shape)
    np.testing.assert_array_equal(y, expected)


def test_channel_shuffle_bad_arguments():
    x = _rand((1, 6, 2, 2))
    with pytest.raises(ValueError, match="divid"):
        ops.channel_shuffle(x, 4)
    with pytest.raises(ValueError, match="divid"):
        ops.channel_shuffle(x, 0)
    with pytest.raises(ValueError, match="in place"):
        ops.channel_shuffle(x, 2, out=x)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels, groups, spatial", [((3, 5), 2, (4, 3)), ((58, 58), 2, (28, 28)),
                                                         ((2, 1, 3), 3, (1, 1)), ((4,), 4, (2, 5)), ((6, 6), 3, ())])
def test_concat_shuffle_equals_concat_then_shuffle(channels, groups, spatial, threads):
    import pyconv

    xs = [_rand((3, c) + spatial, 20 + i) for i, c in enumerate(channels)]
    before = pyconv.get_num_threads()
    pyconv.set_num_threads(threads)
    try:
        y = ops.concat_shuffle(*xs, groups=groups)
    finally:
        pyconv.set_num_threads(before)
    np.testing.assert_array_equal(y, ops.channel_shuffle(np.concatenate(xs, axis=1), groups))
    spec = registry.get("concat_shuffle")
    np.testing.assert_array_equal(y, spec.reference(*xs, groups=groups))
    assert spec.infer_shape([x.shape for x in xs], {}, {"groups": groups}) == [y.shape]


def test_concat_shuffle_bad_arguments():
    a, b = _rand((1, 3, 2, 2)), _rand((1, 2, 2, 2))
    with pytest.raises(ValueError, match="divid"):
        ops.concat_shuffle(a, b, groups=2)          # 5 channels
    with pytest.raises(ValueError, match="matching"):
        ops.concat_shuffle(a, _rand((1, 3, 2, 3)), groups=2)
    with pytest.raises(ValueError, match="in place"):
        out = np.empty((1, 6, 2, 2), np.float32)
        ops.concat_shuffle(out[:, :3], a, groups=2, out=out)
    with pytest.raises(ValueError, match="at least one"):
        ops.concat_shuffle(groups=2)


def test_flatten_pytorch_and_onnx_forms():
    x = _rand((2, 3, 4, 5))
    assert ops.flatten(x).shape == (2, 60)
    assert ops.flatten(x, start_dim=0).shape == (120,)
    assert ops.flatten(x, start_dim=1, end_dim=2).shape == (2, 12, 5)
    assert ops.flatten(x, axis=0).shape == (1, 120)
    assert ops.flatten(x, axis=2).shape == (6, 20)
    assert ops.flatten(x, axis=4).shape == (120, 1)
    assert ops.flatten(x, axis=-1).shape == (24, 5)
    np.testing.assert_array_equal(ops.flatten(x, axis=2).ravel(), x.ravel())
    spec = registry.get("flatten")
    assert spec.infer_shape([x.shape], {}, spec.resolve_attrs({"axis": 2})) == [(6, 20)]
    with pytest.raises(ValueError, match="start_dim"):
        ops.flatten(x, start_dim=3, end_dim=1)
    with pytest.raises(ValueError, match="axis"):
        ops.flatten(x, axis=5)


def test_reshape_onnx_rules():
    x = _rand((2, 3, 4, 5))
    assert ops.reshape(x, [0, -1]).shape == (2, 60)
    assert ops.reshape(x, [0, 0, -1]).shape == (2, 3, 20)
    assert ops.reshape(x, [-1, 5, 1]).shape == (24, 5, 1)
    assert ops.reshape(np.zeros((0, 3), np.float32), [0, 3], allowzero=1).shape == (0, 3)
    np.testing.assert_array_equal(ops.reshape(x, [6, 20]).ravel(), x.ravel())
    out = np.empty((6, 20), np.float32)
    assert ops.reshape(x, [6, 20], out=out) is out
    for bad in ([-1, -1], [7, -1], [0, 0, 0, 0, 0], [5, 5], [-2, 60]):
        with pytest.raises(ValueError):
            ops.reshape(x, bad)


def test_transpose():
    x = _rand((2, 3, 4, 5))
    y = ops.transpose(x, [0, 2, 3, 1])
    assert y.flags.c_contiguous
    np.testing.assert_array_equal(y, np.transpose(x, (0, 2, 3, 1)))
    np.testing.assert_array_equal(ops.transpose(x), x.T)
    assert registry.get("transpose").infer_shape([x.shape], {}, {"perm": [3, 0, 1, 2]}) == [(5, 2, 3, 4)]
    with pytest.raises(ValueError, match="permutation"):
        ops.transpose(x, [0, 1, 1, 2])


@pytest.mark.parametrize("x_shape", [(4, 11), (1, 11), (2, 3, 11), (11,)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(x_shape, with_bias):
    x, w = _rand(x_shape, 6), _rand((7, 11), 7)
    b = _rand(7, 8) if with_bias else None
    y = ops.linear(x, w, b)
    expected = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
    _close(y, expected, rtol=1e-5)
    spec = registry.get("linear")
    weights = {"weight": w.shape, **({"bias": b.shape} if with_bias else {})}
    assert spec.infer_shape([x.shape], weights, {}) == [y.shape]
    counts = spec.count([x.shape], weights, {}, [y.shape])
    assert counts.macs == y.size * 11 and counts.params == 77 + 7 * with_bias


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 3])   # one row: matrix-vector product
def test_linear_split_across_threads(threads, rows):
    """Enough work for threads_for to use both threads; 1001 features split unevenly."""
    import pyconv

    x, w, b = _rand((rows, 257), 9), _rand((1001, 257), 10), _rand(1001, 11)
    before = pyconv.get_num_threads()
    pyconv.set_num_threads(threads)
    try:
        y = ops.linear(x, w, b)
    finally:
        pyconv.set_num_threads(before)
    _close(y, x.astype(np.float64) @ w.T.astype(np.float64) + b, rtol=1e-5)


def test_linear_bad_arguments():
    with pytest.raises(ValueError, match="match"):
        ops.linear(_rand((2, 10)), _rand((7, 11)))
    with pytest.raises(ValueError, match="bias"):
        ops.linear(_rand((2, 11)), _rand((7, 11)), _rand(6))
    with pytest.raises(ValueError, match="dimensions"):
        ops.linear(_rand((2, 11)), _rand((7, 11, 1)))


# ---------------------------------------------------------------- pad

PADS = [[1, 2, 3, 0], [0, 0, 0, 0], [2, 2, 2, 2], [0, 1, 0, 1, 1, 0, 2, 3], [0, 0, -1, 2, 0, 0, 1, -2]]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", PADS, ids=str)
def test_pad_matches_onnxruntime(mode, pads):
    x = _rand((2, 3, 4, 5), 9)
    y = ops.pad(x, pads, mode=mode, value=1.5)
    np.testing.assert_array_equal(y, registry.get("pad").reference(x, pads, mode=mode, value=1.5))
    onnx_pads = pads if len(pads) == 8 else [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
    inits = [("pads", np.array(onnx_pads, np.int64))] + ([("value", np.array(1.5, np.float32))]
                                                          if mode == "constant" else [])
    np.testing.assert_array_equal(y, _onnx_session("Pad", [("x", x)], inits, mode=mode))
    spec = registry.get("pad")
    assert spec.infer_shape([x.shape], {}, spec.resolve_attrs({"pads": pads, "mode": mode})) == [y.shape]


def test_pad_replicate_alias_and_bad_arguments():
    x = _rand((1, 1, 3, 3))
    np.testing.assert_array_equal(ops.pad(x, [1, 1, 1, 1], mode="replicate"), ops.pad(x, [1, 1, 1, 1], mode="edge"))
    with pytest.raises(ValueError, match="smaller"):
        ops.pad(x, [3, 0, 0, 0], mode="reflect")
    with pytest.raises(ValueError, match="mode"):
        ops.pad(x, [1, 1, 1, 1], mode="circular")
    with pytest.raises(ValueError, match="pads"):
        ops.pad(x, [1, 1, 1])
    with pytest.raises(ValueError, match="crop"):
        ops.pad(x, [0, 0, -4, 0, 0, 0, 0, 0])


# ---------------------------------------------------------------- resize

RESIZE_TARGETS = [dict(scales=[2.0, 2.0]), dict(scales=[0.5, 1.5]), dict(scales=[2.5, 0.6]), dict(scales=[3.0, 3.0]),
                  dict(scales=[1, 1, 0.75, 1.25]), dict(sizes=[3, 13]), dict(sizes=[1, 1]), dict(sizes=[10, 14]),
                  dict(sizes=[2, 3]), dict(sizes=[2, 3, 9, 5])]
MODES = [("nearest", n) for n in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")] + [("linear", None)]


def _ort_resize(x, scales=None, sizes=None, **attrs):
    if scales is not None:
        inits = [("roi", np.zeros(0, np.float32)), ("scales", np.array(([1, 1] + list(scales))[-4:], np.float32))]
    else:
        inits = [("roi", np.zeros(0, np.float32)), ("", None),
                 ("sizes", np.array((list(x.shape[:2]) + list(sizes))[-4:], np.int64))]
    return _onnx_session("Resize", [("x", x)], inits, opset=19, **attrs)


@pytest.mark.parametrize("coordinates", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                                         "tf_half_pixel_for_nn", "half_pixel_symmetric"])
@pytest.mark.parametrize("mode, nearest_mode", MODES)
def test_resize_matches_onnxruntime(coordinates, mode, nearest_mode):
    x = _rand((2, 3, 5, 7), 10)
    attrs = dict(mode=mode, coordinate_transformation_mode=coordinates)
    if nearest_mode:
        attrs["nearest_mode"] = nearest_mode
    spec = registry.get("resize")
    compared = 0
    for target in RESIZE_TARGETS:
        y = ops.resize(x, **target, **attrs)
        expected = _ort_resize(x, **target, **attrs)
        assert y.shape == expected.shape, target
        _close(y, spec.reference(x, **target, **attrs), rtol=1e-6)
        assert spec.infer_shape([x.shape], {}, spec.resolve_attrs({**target, **attrs})) == [y.shape]
        if nearest_mode and _nearest_tie(x.shape, target, coordinates, nearest_mode):
            continue  # float32 rounding decides a tie; onnxruntime's arithmetic order may differ
        _close(y, expected, rtol=1e-6)
        compared += 1
    assert compared >= len(RESIZE_TARGETS) - 2


def _nearest_tie(x_shape, target, coordinates, nearest_mode) -> bool:
    """Whether float32 rounding decides some nearest-mode index: the index computed from float64
    coordinates differs from pyconv's (float32, onnxruntime's order).  onnxruntime's compiled arithmetic
    does not always round such ties the way its source reads, so they are compared with the reference only."""
    positions = np.arange(int(np.prod(x_shape[2:])), dtype=np.float32).reshape(x_shape[2:])
    y = ops.resize(np.broadcast_to(positions, x_shape), coordinate_transformation_mode=coordinates,
                   nearest_mode=nearest_mode, **target)
    out_h, out_w = y.shape[2:]
    scales = target.get("scales")
    indices = []
    for axis, (out_len, in_len) in enumerate(((out_h, x_shape[2]), (out_w, x_shape[3]))):
        s = float(scales[-2 + axis]) if scales is not None else out_len / in_len
        i = np.arange(out_len, dtype=np.float64)
        c = {"half_pixel": (i + 0.5) / s - 0.5, "asymmetric": i / s, "tf_half_pixel_for_nn": (i + 0.5) / s,
             "pytorch_half_pixel": (i + 0.5) / s - 0.5 if out_len > 1 else 0 * i,
             "align_corners": i * (in_len - 1) / max(out_len - 1, 1),
             "half_pixel_symmetric": in_len / 2 * (1 - out_len / (s * in_len)) + (i + 0.5) / s - 0.5}[coordinates]
        r = {"floor": np.floor(c), "ceil": np.ceil(c), "round_prefer_floor": np.ceil(c - 0.5),
             "round_prefer_ceil": np.floor(c + 0.5)}[nearest_mode]
        indices.append(np.clip(r, 0, in_len - 1).astype(int))
    return not np.array_equal(y[0, 0], indices[0][:, None] * x_shape[3] + indices[1][None, :])


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_of_a_single_pixel(mode):
    x = _rand((3, 2, 1, 1), 14)
    for target in (dict(scales=[3.0, 2.0]), dict(sizes=[4, 1])):
        y = ops.resize(x, mode=mode, **target)
        np.testing.assert_array_equal(y, np.broadcast_to(x, y.shape))
        _close(y, _ort_resize(x, mode=mode, **target))


def test_resize_large_threaded_bilinear():
    x = _rand((1, 32, 40, 40), 11)
    y = ops.resize(x, scales=[2, 2], mode="bilinear")
    _close(y, registry.get("resize").reference(x, scales=[2, 2], mode="bilinear"), rtol=1e-6)


def test_upsample_pytorch_semantics():
    x = _rand((2, 3, 4, 5), 12)
    # nearest, integer factor: every pixel repeated
    np.testing.assert_array_equal(ops.upsample(x, scale_factor=2), x.repeat(2, axis=2).repeat(2, axis=3))
    # bilinear with align_corners: the corners are kept and a 2x2 -> 3x3 grid puts averages in between
    small = np.array([[[[0.0, 2.0], [4.0, 6.0]]]], np.float32)
    np.testing.assert_allclose(ops.upsample(small, size=3, mode="bilinear", align_corners=True)[0, 0],
                               [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    # bilinear without align_corners (half-pixel centres, edges clamped), by hand for 2 -> 4
    np.testing.assert_allclose(ops.upsample(small, scale_factor=2, mode="bilinear")[0, 0, 0],
                               [0.0, 0.5, 1.5, 2.0])
    # an output of length 1 samples the centre, as PyTorch does: (0 + 1/2) * 2 - 1/2 = 0.5
    np.testing.assert_allclose(ops.upsample(small, size=1, mode="bilinear")[0, 0, 0], [3.0])


def test_resize_bad_arguments():
    x = _rand((1, 2, 4, 4))
    with pytest.raises(ValueError, match="exactly one"):
        ops.resize(x)
    with pytest.raises(ValueError, match="exactly one"):
        ops.resize(x, scales=[2, 2], sizes=[8, 8])
    with pytest.raises(ValueError, match="positive"):
        ops.resize(x, scales=[0, 2])
    with pytest.raises(ValueError, match="empty"):
        ops.resize(x, scales=[0.1, 1.0])
    with pytest.raises(ValueError, match="N and C"):
        ops.resize(x, scales=[2, 1, 2, 2])
    with pytest.raises(ValueError, match="coordinate_transformation_mode"):
        ops.resize(x, scales=[2, 2], coordinate_transformation_mode="tf_crop_and_resize")
    with pytest.raises(ValueError, match="coordinate_transformation_mode"):
        ops.resize(x, scales=[2, 2], coordinate_transformation_mode="Half_Pixel")
    with pytest.raises(ValueError, match="nearest_mode"):
        ops.resize(x, scales=[2, 2], nearest_mode="round")
    with pytest.raises(ValueError, match="mode"):
        ops.resize(x, scales=[2, 2], mode="cubic")
    with pytest.raises(ValueError, match="dimensions"):
        ops.resize(x[0], scales=[2, 2])
    with pytest.raises(ValueError, match="align_corners"):
        ops.upsample(x, scale_factor=2, align_corners=True)


# ---------------------------------------------------------------- identity / constant / registry

def test_identity_and_constant():
    x = _rand((2, 3))
    assert ops.identity(x) is x
    out = np.empty_like(x)
    assert ops.identity(x, out=out) is out and np.array_equal(out, x)
    value = _rand((4, 1), 13)
    np.testing.assert_array_equal(ops.constant(value), value)
    spec = registry.get("constant")
    assert spec.input_range == (0, 0) and spec.infer_shape([], {"value": (4, 1)}, {}) == [(4, 1)]
    call = spec.bind({"value": value}, {})
    np.testing.assert_array_equal(call(), value)


def test_every_op_is_registered_with_a_reference():
    for name in MY_OPS:
        spec = registry.get(name)
        assert spec.reference is not None and spec.window is None, name


INPLACE_CASES = [
    ("relu", [(2, 3, 4, 5)], {}, {}), ("sigmoid", [(2, 3, 4, 5)], {}, {}), ("gelu", [(2, 3, 4, 5)], {}, {}),
    ("softmax", [(2, 3, 4, 5)], {}, {"axis": 1}), ("log_softmax", [(2, 30)], {}, {"axis": 1}),
    ("prelu", [(2, 3, 4, 5)], {"slope": (3,)}, {}),
    ("batch_norm", [(2, 3, 4, 5)], {"mean": (3,), "var": (3,), "weight": (3,), "bias": (3,)}, {}),
    ("add", [(2, 3, 4, 5), (2, 3, 4, 5)], {}, {}), ("mul", [(2, 3, 4, 5), (2, 3, 1, 1)], {}, {}),
    ("div", [(2, 3, 4, 5), (5,)], {}, {}),
    ("identity", [(2, 3, 4, 5)], {}, {}), ("flatten", [(2, 3, 4, 5)], {}, {}),
    ("reshape", [(2, 3, 4, 5)], {}, {"shape": [0, -1, 5]}),
]


@pytest.mark.parametrize("name, input_shapes, weight_shapes, attrs", INPLACE_CASES, ids=[c[0] for c in INPLACE_CASES])
def test_inplace_ops_write_over_their_first_input_buffer(name, input_shapes, weight_shapes, attrs):
    """As the executor runs them: the output is a different view object of the first input's buffer."""
    spec = registry.get(name)
    assert spec.inplace
    rng = np.random.default_rng(15)
    inputs = [rng.standard_normal(s).astype(np.float32) + (3 if i else 0) for i, s in enumerate(input_shapes)]
    weights = {k: (rng.random(s) + 0.5).astype(np.float32) for k, s in weight_shapes.items()}
    attrs = spec.resolve_attrs(attrs)
    (out_shape,) = spec.infer_shape(input_shapes, weight_shapes, attrs)
    expected = spec.reference(*inputs, **weights, **attrs)
    call = spec.bind(weights, attrs)
    buffer = inputs[0].reshape(-1).copy()
    first, out = buffer.reshape(input_shapes[0]), buffer[: int(np.prod(out_shape))].reshape(out_shape)
    result = call(first, *inputs[1:], out=out)
    if result is not out:
        np.copyto(out, result)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
