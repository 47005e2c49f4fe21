"""Shift and adder networks: structure and counts, end-to-end runs against float64
NumPy references, and the AdderNet paper's trained ResNet-20 on a real photo.

The trained-model tests read ``../shared/data/addernet/resnet20_addernet_cifar10.pth``
and scikit-image's ``chelsea.png``; they skip, saying which file is missing,
when either is absent."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import pyconv
from pyconv import registry
from pyconv.graph.format import read_graph
from pyconv.graph.shapes import input_shapes_for, probe_symbols
from pyconv.graph.summary import summarize, totals
from pyconv.io.pth import load_state_dict
from models.addernet_cifar10 import DEFAULT_PTH, build, strip_data_parallel
from models.shift_adder import BUILDERS, CIFAR10_LABELS, addernet_resnet20, shift_resnet20


def run_reference(graph, x: np.ndarray) -> np.ndarray:
    """The graph evaluated node by node with the registry's float64 references."""
    tensors = {graph.inputs[0].name: x.astype(np.float64)}
    for node in graph.nodes:
        spec = registry.get(node.op)
        fn = spec.reference or spec.fn
        weights = {role: graph.weights[key] for role, key in node.weights.items()}
        result = fn(*[tensors[t] for t in node.inputs], **weights, **spec.resolve_attrs(node.attrs))
        tensors[node.outputs[0]] = np.asarray(result, np.float64)
    return tensors[graph.outputs[0].tensor]


def rows_of(graph):
    return summarize(graph, input_shapes_for(graph, probe_symbols(graph)))


@functools.lru_cache(maxsize=None)
def built(name: str):
    return BUILDERS[name]().build()


# ----------------------------------------------------------------------------- builders

def test_addernet_multiplies_only_in_first_conv_and_classifier():
    rows = rows_of(built("addernet_resnet20"))
    ops = [r.op for r in rows]
    assert ops.count("adder2d") == 18 + 2  # 9 blocks x 2, plus two 1x1 shortcuts
    assert ops.count("conv2d") == 2
    assert all(r.macs == 0 for r in rows if r.op == "adder2d")
    conv_macs = sum(r.macs for r in rows if r.op == "conv2d")
    assert conv_macs == 16 * 27 * 32 * 32 + 10 * 64  # stem 3x3 conv and the 1x1 classifier
    adds = sum(r.adds for r in rows if r.op == "adder2d")
    # ResNet-20's 3x3 layers: 6 x 16*16*9*32*32 + (16*32 + 5*32*32)*9*16*16 + (32*64 + 5*64*64)*9*8*8
    # shortcuts 32*16*16*16 + 64*32*8*8
    assert adds == (6 * 16 * 144 * 1024 + (32 * 16 + 5 * 32 * 32) * 9 * 256 + (64 * 32 + 5 * 64 * 64) * 9 * 64
                    + 32 * 16 * 256 + 64 * 32 * 64)
    assert conv_macs < adds / 90  # "almost no multiplications"


def test_shift_resnet20_structure_and_counts():
    graph = built("shift_resnet20")
    rows = rows_of(graph)
    shifts = [r for r in rows if r.op == "shift_conv1x1"]
    assert len(shifts) == 9
    assert not [r for r in rows if r.op == "conv2d" and graph.weights[f"{r.name}.weight"].shape[2] == 3][1:]
    first = shifts[0]  # layer1.0: 16*3 mid channels -> 16 at 32x32
    assert (first.params, first.macs) == (16 * 48, 16 * 48 * 32 * 32)
    assert shift_resnet20(expansion=1).build().weights["layer1.0.conv1.weight"].shape == (16, 16, 1, 1)


def test_shiftnet_imagenet_shapes_and_counts():
    graph = built("shiftnet_imagenet")
    rows = rows_of(graph)
    assert rows[-1].output_shapes[0] == (1, 1000)
    assert {r.op for r in rows} >= {"shift_conv1x1", "conv2d", "linear"}
    assert not [r for r in rows if r.op == "conv2d" and graph.weights[f"{r.name}.weight"].shape[2] == 3][1:]
    total = totals(rows)
    # ShiftNet-A scale (the paper: 4.1 M parameters, 1.4 G FLOPs); this configuration: 6.6 M, 1.36 G MACs
    assert 6e6 < total["params"] < 7e6 and 1.3e9 < total["macs"] < 1.4e9


@pytest.mark.parametrize("name", ["addernet_resnet20", "shift_resnet20"])
def test_cifar_networks_run_like_their_references(name, tmp_path):
    path = tmp_path / f"{name}.npz"
    BUILDERS[name](seed=1).save(path)
    model = pyconv.load(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = run_reference(read_graph(path), x)
    got = model(x)
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_shiftnet_imagenet_runs(tmp_path):
    path = tmp_path / "shiftnet.npz"
    BUILDERS["shiftnet_imagenet"]().save(path)
    y = pyconv.load(path)(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    assert y.shape == (1, 1000) and np.isfinite(y).all()


# ----------------------------------------------------------------------------- the trained AdderNet

@functools.lru_cache(maxsize=1)
def trained_state_dict():
    if not DEFAULT_PTH.is_file():
        pytest.skip(f"trained AdderNet weights not found at {DEFAULT_PTH}")
    return strip_data_parallel(load_state_dict(DEFAULT_PTH))


def chelsea_path() -> Path:
    skimage = pytest.importorskip("skimage", reason="scikit-image (for chelsea.png) is not installed")
    path = Path(skimage.__file__).parent / "data" / "chelsea.png"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the scikit-image install")
    return path


def unfold_adder(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """The paper's reference formula: unfold the zero-padded input, Y = -sum |X_col - W_col|."""
    n, c, h, wd = x.shape
    co, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    cols = np.stack([xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
                     for i in range(k) for j in range(k)], axis=2).reshape(n, c * k * k, ho * wo)
    w_col = w.reshape(co, c, k * k).reshape(co, -1)
    y = -np.abs(cols[:, None, :, :] - w_col[None, :, :, None]).sum(axis=2)
    return y.reshape(n, co, ho, wo)


def numpy_addernet(sd, x: np.ndarray) -> np.ndarray:
    """AdderNet ResNet-20 forward in float64 NumPy, straight from the reference code's structure."""
    def bn(y, name):
        scale = sd[f"{name}.weight"] / np.sqrt(sd[f"{name}.running_var"].astype(np.float64) + 1e-5)
        shift = sd[f"{name}.bias"] - sd[f"{name}.running_mean"] * scale
        return y * scale[:, None, None] + shift[:, None, None]

    relu = lambda y: np.maximum(y, 0)  # noqa: E731
    x = x.astype(np.float64)
    w = sd["conv1.weight"].astype(np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = sum(np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, i:i + 32, j:j + 32]) for i in range(3) for j in range(3))
    y = relu(bn(y, "bn1"))
    for stage in range(3):
        for i in range(3):
            name, stride = f"layer{stage + 1}.{i}", 2 if stage > 0 and i == 0 else 1
            z = relu(bn(unfold_adder(y, sd[f"{name}.conv1.adder"], stride, 1), f"{name}.bn1"))
            z = bn(unfold_adder(z, sd[f"{name}.conv2.adder"], 1, 1), f"{name}.bn2")
            if f"{name}.downsample.0.adder" in sd:
                y = bn(unfold_adder(y, sd[f"{name}.downsample.0.adder"], stride, 0), f"{name}.downsample.1")
            y = relu(z + y)
    pooled = y.mean(axis=(2, 3))
    logits = pooled @ sd["fc.weight"][:, :, 0, 0].T.astype(np.float64)
    scale = sd["bn2.weight"] / np.sqrt(sd["bn2.running_var"].astype(np.float64) + 1e-5)
    return (logits - sd["bn2.running_mean"]) * scale + sd["bn2.bias"]


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("addernet") / "addernet_resnet20_cifar10.npz"
    build(trained_state_dict()).save(path)
    return pyconv.load(path)


def test_trained_adder_layer_matches_reference_formula():
    sd = trained_state_dict()
    x = np.random.default_rng(2).standard_normal((2, 16, 32, 32)).astype(np.float32)
    for key, stride, padding in (("layer1.0.conv1.adder", 1, 1), ("layer2.0.conv1.adder", 2, 1),
                                 ("layer3.0.downsample.0.adder", 2, 0)):
        w = sd[key]
        xin = x if w.shape[1] == 16 else np.random.default_rng(3).standard_normal((2, w.shape[1], 16, 16))
        want = unfold_adder(xin.astype(np.float64), w.astype(np.float64), stride, padding)
        got = pyconv.ops.adder2d(xin, w, stride=stride, padding=padding)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_trained_addernet_matches_numpy_forward(trained_model):
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = numpy_addernet(trained_state_dict(), x)
    got = trained_model(x)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_trained_addernet_sees_a_cat(trained_model):
    from pyconv.io.images import load_image

    assert trained_model.metadata["labels"] == CIFAR10_LABELS
    x = load_image(chelsea_path(), trained_model.metadata["preprocess"])[None]
    assert x.shape == (1, 3, 32, 32)
    logits = trained_model(x)[0]
    assert CIFAR10_LABELS[int(np.argmax(logits))] == "cat"
    numpy_logits = numpy_addernet(trained_state_dict(), x)[0]
    assert int(np.argmax(numpy_logits)) == int(np.argmax(logits))


def test_trained_weights_all_used_and_counted():
    sd = trained_state_dict()
    net = addernet_resnet20(state_dict=sd)
    assert net.unused_weights() == []
    params = totals(rows_of(net.build()))["params"]
    # BN running statistics are buffers, not parameters
    buffers = ("num_batches_tracked", "running_mean", "running_var")
    assert params == sum(v.size for k, v in sd.items() if not k.endswith(buffers))
