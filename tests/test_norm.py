"""Batch norm, its folding into conv/linear parameters, and local response norm."""
import numpy as np
import pytest

from pyconv import ops, registry
from pyconv.ops import fold_batch_norm


def _bn_params(channels, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        mean=rng.standard_normal(channels).astype(np.float32),
        var=rng.random(channels).astype(np.float32) + 0.1,
        weight=rng.standard_normal(channels).astype(np.float32),
        bias=rng.standard_normal(channels).astype(np.float32),
    )


def _bn64(x, mean, var, weight=None, bias=None, eps=1e-5, axis=1):
    shape = [1] * x.ndim
    shape[axis] = -1
    c = len(mean)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    r = lambda v: np.asarray(v, np.float64).reshape(shape)
    return (np.asarray(x, np.float64) - r(mean)) / np.sqrt(r(var) + eps) * r(w) + r(b)


def _close(y, ref, rtol=1e-5):
    ref = np.asarray(ref, np.float64)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max(initial=0))))


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (1, 1, 1, 1), (2, 7), (1, 64, 56, 56), (2, 3, 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(shape, affine):
    p = _bn_params(shape[1])
    if not affine:
        p["weight"] = p["bias"] = None
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 3
    y = ops.batch_norm(x, **p, eps=1e-3)
    _close(y, _bn64(x, **p, eps=1e-3))
    buf = x.copy()
    assert ops.batch_norm(buf, **p, eps=1e-3, out=buf) is buf
    np.testing.assert_array_equal(buf, y)


def test_batch_norm_prepared_and_registered():
    spec = registry.get("batch_norm")
    p = _bn_params(4, seed=2)
    x = np.random.default_rng(3).standard_normal((2, 4, 3, 3)).astype(np.float32)
    call = spec.bind(p, spec.resolve_attrs({"eps": 1e-4}))
    out = np.empty_like(x)
    assert call(x, out=out) is out
    _close(out, spec.reference(x, **p, eps=1e-4))
    assert spec.inplace and spec.weight_names == ("mean", "var", "weight", "bias")
    assert spec.infer_shape([(2, 4, 3, 3)], {k: v.shape for k, v in p.items()}, {"eps": 1e-5}) == [(2, 4, 3, 3)]
    with pytest.raises(ValueError):
        spec.infer_shape([(2, 5, 3, 3)], {k: v.shape for k, v in p.items()}, {"eps": 1e-5})


def test_batch_norm_bad_arguments():
    p = _bn_params(3)
    x = np.ones((2, 4, 2, 2), np.float32)
    with pytest.raises(ValueError, match="channels"):
        ops.batch_norm(x, **p)
    with pytest.raises(ValueError, match="var"):
        ops.batch_norm(np.ones((1, 3), np.float32), p["mean"], -np.ones(3, np.float32), eps=1e-5)
    with pytest.raises(ValueError, match="var"):
        ops.batch_norm(np.ones((1, 3), np.float32), p["mean"], np.ones(2, np.float32))
    with pytest.raises(TypeError):
        ops.batch_norm(np.ones((1, 3), np.int64), p["mean"], p["var"])


# ---------------------------------------------------------------- folding

def _conv2d(x, w, b, groups):
    """Direct grouped convolution, stride 1, no padding (float64 loops over the kernel taps)."""
    n, ci, h, wd = x.shape
    co, cig, kh, kw = w.shape
    cog = co // groups
    y = np.zeros((n, co, h - kh + 1, wd - kw + 1))
    for g in range(groups):
        xs = x[:, g * cig:(g + 1) * cig]
        for p in range(kh):
            for q in range(kw):
                patch = xs[:, :, p:p + y.shape[2], q:q + y.shape[3]]
                y[:, g * cog:(g + 1) * cog] += np.einsum("nchw,oc->nohw", patch, w[g * cog:(g + 1) * cog, :, p, q])
    return y + b.reshape(1, -1, 1, 1)


def _conv_transpose2d(x, w, b, groups):
    """Direct grouped transposed convolution, stride 1, no padding; w is [Ci, Co/g, kh, kw]."""
    n, ci, h, wd = x.shape
    _, cog, kh, kw = w.shape
    cig = ci // groups
    y = np.zeros((n, cog * groups, h + kh - 1, wd + kw - 1))
    for g in range(groups):
        xs = x[:, g * cig:(g + 1) * cig]
        for p in range(kh):
            for q in range(kw):
                y[:, g * cog:(g + 1) * cog, p:p + h, q:q + wd] += np.einsum(
                    "nchw,co->nohw", xs, w[g * cig:(g + 1) * cig, :, p, q])
    return y + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_into_conv2d(groups, with_bias):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 7, 5))
    w = rng.standard_normal((9, 6 // groups, 3, 2)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32) if with_bias else None
    p = _bn_params(9, seed=5)
    fw, fb = fold_batch_norm(w, b, **p, eps=1e-5)
    assert fw.dtype == fb.dtype == np.float32 and fw.shape == w.shape and fb.shape == (9,)
    expected = _bn64(_conv2d(x, w.astype(np.float64), np.zeros(9) if b is None else b.astype(np.float64), groups), **p)
    _close(_conv2d(x, fw.astype(np.float64), fb.astype(np.float64), groups), expected)


@pytest.mark.parametrize("groups", [1, 2])
def test_fold_into_conv_transpose2d(groups):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 3, 4))
    w = rng.standard_normal((4, 3, 2, 3)).astype(np.float32)  # Co = 3 * groups
    b = rng.standard_normal(3 * groups).astype(np.float32)
    p = _bn_params(3 * groups, seed=7)
    fw, fb = fold_batch_norm(w, b, **p, eps=1e-5, axis=1, groups=groups)
    expected = _bn64(_conv_transpose2d(x, w.astype(np.float64), b.astype(np.float64), groups), **p)
    _close(_conv_transpose2d(x, fw.astype(np.float64), fb.astype(np.float64), groups), expected)


def test_fold_into_linear():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 11))
    w, b = rng.standard_normal((7, 11)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    p = _bn_params(7, seed=9)
    fw, fb = fold_batch_norm(w, b, p["mean"], p["var"], None, None, eps=1e-3)
    p.update(weight=None, bias=None)
    _close(x @ fw.T.astype(np.float64) + fb, _bn64(x @ w.T.astype(np.float64) + b, **p, eps=1e-3))


def test_fold_bad_arguments():
    p = _bn_params(4)
    w = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="channels"):
        fold_batch_norm(np.ones((5, 2, 3, 3), np.float32), None, **p)
    with pytest.raises(ValueError, match="groups"):
        fold_batch_norm(np.ones((3, 2, 3, 3), np.float32), None, **p, axis=1, groups=2)
    with pytest.raises(ValueError, match="axis"):
        fold_batch_norm(w, None, **p, axis=2)
    with pytest.raises(ValueError, match="conv_bias"):
        fold_batch_norm(w, np.ones(3, np.float32), **p)
    with pytest.raises(TypeError):
        fold_batch_norm(w.astype(np.int32), None, **p)


# ---------------------------------------------------------------- local response norm

def _lrn64(x, size, alpha, beta, k):
    """PyTorch's definition: average of squares over a zero-padded channel window."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    sq = np.concatenate([np.zeros((x.shape[0], size // 2) + x.shape[2:]), x ** 2,
                         np.zeros((x.shape[0], (size - 1) // 2) + x.shape[2:])], axis=1)
    avg = np.stack([sq[:, i:i + size].sum(axis=1) / size for i in range(c)], axis=1)
    return x / (k + alpha * avg) ** beta


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (1, 3, 1, 1), (3, 16, 2, 3), (1, 96, 27, 27)])
def test_local_response_norm(shape, size):
    x = np.random.default_rng(10).standard_normal(shape).astype(np.float32) * 4
    y = ops.local_response_norm(x, size, alpha=1e-2, beta=0.75, k=2.0)
    _close(y, _lrn64(x, size, 1e-2, 0.75, 2.0))


@pytest.mark.parametrize("beta, k", [(0.75, 1.0), (0.6, 1.0), (1.3, 0.5), (0.6, 0.0)])  # 3 kernel paths
def test_local_response_norm_beta_paths_per_element(beta, k):
    """Per-element relative error, with squared sums spanning many orders of magnitude."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((2, 12, 9, 7)) * 10.0 ** rng.uniform(-3, 3, (2, 12, 9, 7))).astype(np.float32)
    y = ops.local_response_norm(x, 5, alpha=0.1, beta=beta, k=k)
    np.testing.assert_allclose(y, _lrn64(x, 5, 0.1, beta, k), rtol=2e-6, atol=0)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_local_response_norm_matches_onnxruntime(size):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    x = np.random.default_rng(11).standard_normal((2, 8, 4, 5)).astype(np.float32) * 3
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.02, beta=0.6, bias=1.5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    _close(ops.local_response_norm(x, size, alpha=0.02, beta=0.6, k=1.5), expected)


def test_local_response_norm_bad_arguments():
    x = np.ones((1, 4, 2, 2), np.float32)
    with pytest.raises(ValueError, match="size"):
        ops.local_response_norm(x, 0)
    with pytest.raises(ValueError, match="ndim"):
        ops.local_response_norm(np.ones((2, 4), np.float32), 3)
    with pytest.raises(ValueError, match="in place"):
        ops.local_response_norm(x, 3, out=x)
    spec = registry.get("local_response_norm")
    with pytest.raises(ValueError):
        spec.resolve_attrs({})  # size is required
