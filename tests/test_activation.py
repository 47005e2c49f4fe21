"""Activations and softmax against float64 references written with NumPy and math."""
import math

import numpy as np
import pytest

from pyconv import ops, registry

SHAPES = [(1, 1, 1, 1), (3, 5, 7, 9), (2, 17), (13,), (1, 64, 56, 56)]  # the last one runs threaded
POINTWISE = ["relu", "relu6", "clip", "leaky_relu", "elu", "sigmoid", "tanh", "silu", "hardsigmoid",
             "hardswish", "gelu"]
ATTRS = {"clip": {"min": -0.5, "max": 2.0}, "leaky_relu": {"negative_slope": 0.2}, "elu": {"alpha": 0.7}}


def _input(shape, seed=0, scale=4.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    flat = x.reshape(-1)
    # large magnitudes, both signs, and exact kinks
    extremes = np.array([-1e4, -100.0, -30.0, -3.0, 0.0, 3.0, 6.0, 30.0, 100.0, 1e4], np.float32)
    flat[: min(flat.size, extremes.size)] = extremes[: flat.size]
    return x


def _scalar_formula(name, v, **attrs):
    """One element in double precision with the math module (independent of the NumPy references)."""
    if name == "relu":
        return max(v, 0.0)
    if name == "relu6":
        return min(max(v, 0.0), 6.0)
    if name == "clip":
        return min(max(v, attrs["min"]), attrs["max"])
    if name == "leaky_relu":
        return v if v >= 0 else attrs["negative_slope"] * v
    if name == "elu":
        return v if v > 0 else attrs["alpha"] * math.expm1(v)
    if name == "sigmoid":
        return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
    if name == "tanh":
        return math.tanh(v)
    if name == "silu":
        return v * _scalar_formula("sigmoid", v)
    if name == "hardsigmoid":
        return min(max(v / 6.0 + 0.5, 0.0), 1.0)
    if name == "hardswish":
        return v * min(max(v + 3.0, 0.0), 6.0) / 6.0
    if name == "gelu":
        return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    raise KeyError(name)


def _close(y, ref, rtol=2e-6, atol_scale=2e-7):
    """Elementwise relative tolerance plus an absolute one relative to the output's magnitude."""
    ref = np.asarray(ref, np.float64)
    atol = atol_scale * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", POINTWISE)
@pytest.mark.parametrize("shape", SHAPES)
def test_pointwise_matches_math(name, shape):
    x = _input(shape)
    attrs = ATTRS.get(name, {})
    y = getattr(ops, name)(x, **attrs)
    assert y.dtype == np.float32 and y.shape == x.shape
    flat = x.reshape(-1).astype(np.float64)
    sample = np.unique(np.r_[np.arange(min(flat.size, 64)), np.linspace(0, flat.size - 1, 200).astype(int)])
    expected = [_scalar_formula(name, float(flat[i]), **attrs) for i in sample]
    # per element: relative 5e-6, absolute 1e-6 (outputs near zero; float32 eps is 1.2e-7)
    np.testing.assert_allclose(y.reshape(-1)[sample], expected, rtol=5e-6, atol=1e-6)
    np.testing.assert_allclose(y, registry.get(name).reference(x, **attrs), rtol=5e-6, atol=1e-6)


@pytest.mark.parametrize("name", POINTWISE + ["softmax", "log_softmax"])
def test_in_place_equals_out_of_place(name):
    x = _input((2, 6, 5, 7), seed=1)
    attrs = ATTRS.get(name, {})
    expected = getattr(ops, name)(x, **attrs)
    buf = x.copy()
    result = getattr(ops, name)(buf, out=buf, **attrs)
    assert result is buf
    np.testing.assert_array_equal(buf, expected)
    assert registry.get(name).inplace


@pytest.mark.parametrize("name", POINTWISE + ["softmax"])
def test_prepared_call_writes_into_out(name):
    spec = registry.get(name)
    x = _input((1, 3, 4, 4), seed=2)
    call = spec.bind({}, spec.resolve_attrs(ATTRS.get(name, {})))
    out = np.empty_like(x)
    assert call(x, out=out) is out
    np.testing.assert_array_equal(out, getattr(ops, name)(x, **ATTRS.get(name, {})))


def test_sigmoid_and_silu_saturate_without_nan():
    x = np.array([-1e30, -1e4, -100.0, -88.0, 88.0, 100.0, 1e4, 1e30], np.float32)
    s = ops.sigmoid(x)
    assert np.all(np.isfinite(s))
    np.testing.assert_array_equal(s[[0, 1]], 0.0)
    assert 0 < s[2] < 1e-40  # exp(-100) is a float32 subnormal
    np.testing.assert_array_equal(s[-4:], 1.0)
    np.testing.assert_allclose(s[3], math.exp(-88.0), rtol=1e-5)
    silu = ops.silu(x)
    assert np.all(np.isfinite(silu))
    np.testing.assert_array_equal(silu[-3:], x[-3:])
    assert np.all(ops.tanh(x)[:3] == -1.0) and np.all(ops.tanh(x)[-3:] == 1.0)


def test_nan_propagates():
    x = np.array([np.nan, -1.0, 1.0], np.float32)
    for name in POINTWISE:
        y = getattr(ops, name)(x, **ATTRS.get(name, {}))
        assert np.isnan(y[0]), name
        assert not np.isnan(y[1:]).any(), name


def test_hardsigmoid_onnx_and_pytorch_forms():
    x = np.linspace(-6, 6, 49, dtype=np.float32)
    np.testing.assert_allclose(ops.hardsigmoid(x), np.clip(x / 6 + 0.5, 0, 1), atol=1e-7)
    np.testing.assert_allclose(ops.hardsigmoid(x, alpha=0.2, beta=0.5), np.clip(0.2 * x + 0.5, 0, 1), atol=1e-7)


def test_gelu_tanh_form():
    x = _input((3, 4, 5), seed=3, scale=3.0).astype(np.float64)
    expected = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in x.ravel()]
    _close(ops.gelu(x.astype(np.float32), approximate="tanh").ravel(), expected, rtol=5e-6)
    # the two forms differ by up to ~1e-3 in [-3, 3]: make sure the flag is not ignored
    assert np.abs(ops.gelu(x, approximate="tanh") - ops.gelu(x)).max() > 1e-5


@pytest.mark.parametrize("slope_shape", [(1,), (5,)])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 5), (1, 5, 1, 1)])
def test_prelu(shape, slope_shape):
    x = _input(shape, seed=4)
    slope = np.random.default_rng(5).standard_normal(slope_shape).astype(np.float32)
    y = ops.prelu(x, slope)
    s = np.broadcast_to(slope.reshape((1, -1) + (1,) * (len(shape) - 2)) if slope.size > 1 else slope, shape)
    expected = np.where(x >= 0, x.astype(np.float64), x * s.astype(np.float64))
    _close(y, expected)
    buf = x.copy()
    ops.prelu(buf, slope, out=buf)
    np.testing.assert_array_equal(buf, y)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (2, 5, 7, 9), (1, 1000), (1, 3, 1, 1), (2, 600, 3)])
def test_softmax_every_axis(shape, log):
    x = _input(shape, seed=6, scale=20.0)
    fn = ops.log_softmax if log else ops.softmax
    for axis in range(-len(shape), len(shape)):
        y = fn(x, axis=axis)
        x64 = x.astype(np.float64)
        m = x64.max(axis=axis, keepdims=True)
        lse = m + np.log(np.exp(x64 - m).sum(axis=axis, keepdims=True))
        expected = x64 - lse if log else np.exp(x64 - lse)
        _close(y, expected, rtol=1e-5 if log else 2e-6, atol_scale=1e-6)


@pytest.mark.parametrize("shape, axis", [((1, 21, 128, 128), 1), ((256, 1000), 1), ((3, 7, 300, 2), 2)])
def test_softmax_large_threaded(shape, axis):
    x = _input(shape, seed=7, scale=5.0)
    for log in (False, True):
        y = (ops.log_softmax if log else ops.softmax)(x, axis=axis)
        expected = registry.get("log_softmax" if log else "softmax").reference(x, axis=axis)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_softmax_is_stable_for_huge_inputs():
    x = np.array([[1e30, 1e30, -1e30], [-1e4, -1e4 + 1, -np.inf], [3e38, 0, -3e38]], np.float32)
    y = ops.softmax(x, axis=1)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(y[1], [1 / (1 + math.e), math.e / (1 + math.e), 0.0], rtol=1e-6)
    np.testing.assert_allclose(y[2], [1.0, 0.0, 0.0])
    ls = ops.log_softmax(x, axis=1)
    np.testing.assert_allclose(ls[1, :2], [-math.log1p(math.e), -math.log1p(1 / math.e)], rtol=1e-6)
    assert ls[1, 2] == -np.inf


def test_float64_input_is_converted():
    x = np.linspace(-3, 3, 11)
    y = ops.relu(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.maximum(x, 0).astype(np.float32))


def test_bad_arguments():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32"):
        ops.relu(np.ones(3, np.int32))
    with pytest.raises(ValueError, match="min <= max"):
        ops.clip(x, 2.0, 1.0)
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="axis"):
        ops.softmax(x, axis=2)
    with pytest.raises(ValueError, match="axis"):
        ops.log_softmax(x, axis=1.5)
    with pytest.raises(ValueError, match="slope"):
        ops.prelu(x, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="channel"):
        ops.prelu(np.ones(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="out"):
        ops.relu(x, out=np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="out"):
        ops.sigmoid(x, out=np.empty((2, 3), np.float64))


def test_registry_entries():
    for name in POINTWISE + ["prelu", "softmax", "log_softmax"]:
        spec = registry.get(name)
        assert spec.window is None and spec.reference is not None
        weights = {"slope": (3,)} if name == "prelu" else {}
        assert spec.infer_shape([(2, 3, 4, 5)], weights, spec.resolve_attrs({})) == [(2, 3, 4, 5)]
    assert registry.get("prelu").weights == ("slope",)
    prelu = registry.get("prelu")
    assert prelu.infer_shape([(2, 3, 4, 5)], {"slope": (3,)}, {}) == [(2, 3, 4, 5)]
    with pytest.raises(ValueError, match="slope"):
        prelu.infer_shape([(2, 3, 4, 5)], {"slope": (4,)}, {})
    with pytest.raises(ValueError, match="axis"):
        registry.get("softmax").infer_shape([(2, 3)], {}, {"axis": 2})
    counts = registry.get("relu").count([(2, 3, 4, 5)], {}, {}, [(2, 3, 4, 5)])
    assert counts.adds == 120 and counts.params == 0


def test_vectorised_exp_tanh_erf_accuracy_on_a_dense_grid():
    """The kernels evaluate exp, tanh and erfc with their own polynomials (pyconv/_core/fastmath.h):
    check them everywhere, including the subnormal and saturated ranges."""
    x = np.linspace(-110, 95, 400_001).astype(np.float32)
    x64 = x.astype(np.float64)
    e = np.exp(-np.abs(x64))
    sig = np.where(x64 >= 0, 1 / (1 + e), e / (1 + e))
    normal = sig > 1.2e-38  # below FLT_MIN, float32 itself has fewer significant bits
    np.testing.assert_allclose(ops.sigmoid(x)[normal], sig[normal], rtol=3e-7)
    np.testing.assert_allclose(ops.sigmoid(x)[~normal], sig[~normal], rtol=0, atol=1.5e-45)
    np.testing.assert_allclose(ops.softmax(np.stack([x, np.zeros_like(x)], 1), axis=1)[normal, 0], sig[normal],
                               rtol=4e-7)
    np.testing.assert_allclose(ops.tanh(x), np.tanh(x64), rtol=3e-7, atol=1e-45)
    small = np.linspace(-1, 1, 100_001).astype(np.float32)
    np.testing.assert_allclose(ops.tanh(small), np.tanh(small.astype(np.float64)), rtol=3e-7, atol=1e-45)
    g = np.linspace(-15, 15, 30_001).astype(np.float32)
    erfc = np.vectorize(math.erfc)
    gelu64 = 0.5 * g.astype(np.float64) * erfc(-g.astype(np.float64) / math.sqrt(2))
    core = np.abs(g) < 4  # beyond, float32 rounding of x^2 limits any float32 erfc to ~1e-5 relative
    np.testing.assert_allclose(ops.gelu(g)[core], gelu64[core], rtol=2e-6, atol=1e-37)
    np.testing.assert_allclose(ops.gelu(g), gelu64, rtol=2e-5, atol=1e-37)
