"""The .npz model format: round trips, versioning, validation errors, hostile files."""
import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

import pyconv
from pyconv import registry
from pyconv.errors import FormatVersionError, ModelError, UnsafeFileError, UnsupportedOpError
from pyconv.graph import format as fmt
from pyconv.graph.builder import GraphBuilder
from pyconv.graph.format import GRAPH_KEY, read_graph, save_graph
from pyconv.graph.validate import ModelWarning, validate

pytestmark = pytest.mark.skipif(
    any(op not in registry.all_ops() for op in ("conv2d", "relu", "add")), reason="conv2d/relu/add not registered yet")


def conv_relu_graph(rng=None):
    rng = rng or np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("input", ["N", 3, "H", "W"])
    y = b.conv2d(x, weight=rng.standard_normal((4, 3, 3, 3)), bias=rng.standard_normal(4), padding=1,
                 activation=None, name="conv")
    b.output(b.relu(y, name="act"), alias="output")
    return b.build(metadata={"labels": ["a", "b"], "preprocess": {"resize": 256, "crop": [224, 224],
                                                                  "mean": [0.5] * 3, "std": [0.25] * 3,
                                                                  "channel_order": "RGB", "scale": 1 / 255}})


def write_raw(path, doc, arrays=None):
    """An .npz holding exactly ``doc`` as the graph JSON and ``arrays``."""
    payload = {GRAPH_KEY: np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8), **(arrays or {})}
    with open(path, "wb") as f:
        np.savez(f, **payload)
    return path


def doc_and_arrays(graph):
    return graph.to_json(), dict(graph.weights)


# ---------------------------------------------------------------- round trip

def test_save_load_round_trips_exactly(tmp_path):
    graph = conv_relu_graph()
    path = tmp_path / "m.npz"
    save_graph(graph, path)
    again = read_graph(path)
    assert again == graph
    assert again.metadata["preprocess"]["scale"] == 1 / 255  # floats survive JSON exactly
    save_graph(again, tmp_path / "m2.npz")
    assert read_graph(tmp_path / "m2.npz") == graph
    model = pyconv.load(path)
    assert model.metadata == graph.metadata


def test_file_is_a_plain_npz_without_pickles(tmp_path):
    path = tmp_path / "m.npz"
    save_graph(conv_relu_graph(), path)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted([GRAPH_KEY, "conv.weight", "conv.bias"])
        doc = json.loads(data[GRAPH_KEY].tobytes().decode("utf-8"))
    assert doc["format"] == "pyconv" and doc["version"] == fmt.FORMAT_VERSION
    assert doc["nodes"][0]["weights"] == {"weight": "conv.weight", "bias": "conv.bias"}


def test_equality_sees_weight_and_attribute_changes():
    a, b = conv_relu_graph(), conv_relu_graph()
    assert a == b
    b.weights["conv.bias"] = b.weights["conv.bias"].copy()
    b.weights["conv.bias"][0] += 1
    assert a != b
    c = conv_relu_graph()
    c.nodes[0].attrs["padding"] = 0
    assert a != c


def test_newer_format_version_asks_for_newer_pyconv(tmp_path):
    doc, arrays = doc_and_arrays(conv_relu_graph())
    doc.update(version=fmt.FORMAT_VERSION + 1, requires="9.3.0")
    with pytest.raises(FormatVersionError, match=r"needs pyconv >= 9\.3\.0"):
        pyconv.load(write_raw(tmp_path / "new.npz", doc, arrays))


@pytest.mark.parametrize("change, message", [
    ({"format": "onnx"}, "not a pyconv model"),
    ({"version": "1"}, "version must be a positive integer"),
    ({"nodes": {}}, "'nodes' must be a list"),
    ({"outputs": []}, "non-empty"),
])
def test_malformed_documents(tmp_path, change, message):
    doc, arrays = doc_and_arrays(conv_relu_graph())
    doc.update(change)
    with pytest.raises(ModelError, match=message):
        pyconv.load(write_raw(tmp_path / "bad.npz", doc, arrays))


# ---------------------------------------------------------------- validation

def load_modified(tmp_path, edit):
    doc, arrays = doc_and_arrays(conv_relu_graph())
    edit(doc, arrays)
    return pyconv.load(write_raw(tmp_path / "m.npz", doc, arrays))


def test_unknown_ops_are_all_listed_with_node_names(tmp_path):
    def edit(doc, arrays):
        doc["nodes"][1]["op"] = "frobnicate"
        doc["nodes"].append({"name": "zz", "op": "teleport", "inputs": ["act"], "outputs": ["zz"]})

    with pytest.raises(UnsupportedOpError) as info:
        load_modified(tmp_path, edit)
    text = str(info.value)
    assert "'act' uses op 'frobnicate'" in text and "'zz' uses op 'teleport'" in text


@pytest.mark.parametrize("edit, message", [
    (lambda d, a: (a.pop("conv.weight"), d["nodes"][0]["weights"].pop("weight")), "missing weight 'weight'"),
    (lambda d, a: a.pop("conv.bias"), "does not hold"),
    (lambda d, a: a.update(stray=np.zeros(3, np.float32)), r"\['stray'\] are not used"),
    (lambda d, a: a.update({"conv.weight": a["conv.weight"].astype(np.float64)}), "dtype float64"),
    (lambda d, a: a.update({"conv.bias": np.zeros(5, np.float32)}), "node 'conv'.*bias must have shape"),
    (lambda d, a: d["nodes"][0]["weights"].update(kernel="conv.bias"), "has no weight 'kernel'"),
    (lambda d, a: d["nodes"][1].update(inputs=["nowhere"]), "'nowhere' is not a graph input"),
    (lambda d, a: d["nodes"][1].update(outputs=["conv"]), "'conv' is already produced"),
    (lambda d, a: d["nodes"][1].update(name="conv"), "node name 'conv' is used twice"),
    (lambda d, a: d["nodes"][1].update(inputs=["conv", "conv", "conv"]), "takes 1 input"),
    (lambda d, a: d["nodes"][0]["attrs"].update(stride="two"), "node 'conv'"),
    (lambda d, a: d["nodes"][0]["attrs"].update(kernel_size=3), "no attribute"),
    (lambda d, a: d["outputs"].append({"name": "extra", "tensor": "ghost"}), "'ghost', which nothing produces"),
    (lambda d, a: d["inputs"][0].update(shape=[1, 3, 0, 4]), "positive ints"),
    (lambda d, a: d["inputs"][0].update(shape=["N", 4, "H", "W"]), "node 'conv'.*channels"),
])
def test_validation_errors_name_the_problem(tmp_path, edit, message):
    with pytest.raises(ModelError, match=message):
        load_modified(tmp_path, edit)


def test_cycles_are_reported(tmp_path):
    def edit(doc, arrays):
        doc["nodes"][0]["inputs"] = ["loop"]
        doc["nodes"].append({"name": "back", "op": "add", "inputs": ["act", "input"], "outputs": ["loop"]})

    with pytest.raises(ModelError, match="cycle"):
        load_modified(tmp_path, edit)


def test_shapes_that_cannot_be_inferred(tmp_path):
    def edit(doc, arrays):
        doc["inputs"][0]["shape"] = [1, 3, 2, 2]
        doc["nodes"][0]["attrs"]["padding"] = 0

    with pytest.raises(ModelError, match="node 'conv' .*cannot infer"):
        load_modified(tmp_path, edit)


def test_several_problems_are_reported_together(tmp_path):
    def edit(doc, arrays):
        doc["nodes"][1]["inputs"] = ["nowhere"]
        arrays["stray"] = np.zeros(1, np.float32)

    with pytest.raises(ModelError, match="2 problems") as info:
        load_modified(tmp_path, edit)
    assert "nowhere" in str(info.value) and "stray" in str(info.value)


def test_non_finite_weights_warn(tmp_path):
    def edit(doc, arrays):
        arrays["conv.bias"] = np.array([0, np.nan, 0, np.inf], np.float32)

    with pytest.warns(ModelWarning, match="'conv.bias' \\(node 'conv'\\)"):
        load_modified(tmp_path, edit)


def test_builder_reports_mistakes_where_they_happen():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    with pytest.raises(UnsupportedOpError):
        b.add_node("frobnicate", [x])
    with pytest.raises(AttributeError):
        b.frobnicate(x)
    assert "conv2d" in dir(b) and "relu" in dir(b)  # every op is a method (tab completion)
    with pytest.raises(ModelError, match="not a tensor"):
        b.relu("y")
    with pytest.raises(ModelError, match="channels"):
        b.conv2d(x, weight=np.zeros((2, 4, 3, 3)))
    with pytest.raises(ModelError, match="missing weight"):
        b.conv2d(x)
    with pytest.raises(ModelError, match="JSON"):
        b.conv2d(x, weight=np.zeros((2, 3, 1, 1)), padding=object())
    y = b.relu(x, name="r")
    with pytest.raises(ModelError, match="already exists"):
        b.relu(y, name="r")
    with pytest.raises(ModelError, match="no outputs"):
        b.build()
    b.output(y)
    graph = b.build()
    assert [n.name for n in graph.nodes] == ["r"] and not graph.weights  # failed calls left nothing behind


def test_builder_probes_symbolic_sizes():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, "H", "W"], probe={"H": 9, "W": 7})
    y = b.conv2d(x, weight=np.zeros((2, 3, 3, 3)), stride=2)
    assert b.shape(x) == (1, 3, 9, 7) and b.shape(y) == (1, 2, 4, 3)
    with pytest.raises(ModelError, match="channels"):   # checked at the call, as for fixed sizes
        b.conv2d(x, weight=np.zeros((2, 4, 3, 3)))
    b.output(y)
    assert b.build().inputs[0].shape == ("N", 3, "H", "W")   # the graph keeps the symbols
    unprobed = GraphBuilder()
    assert unprobed.shape(unprobed.input("x", ["N", 3, "H", "W"], probe={"H": 9})) is None
    for probe, message in [({"H": 0, "W": 7}, "positive int"), ({"H": 9.5}, "positive int"),
                           ({"D": 4}, "not a dimension")]:
        with pytest.raises(ModelError, match=message):
            GraphBuilder().input("x", ["N", 3, "H", "W"], probe=probe)


def test_non_json_values_are_refused_on_save(tmp_path):
    graph = conv_relu_graph()
    graph.metadata["threshold"] = float("inf")
    with pytest.raises(ModelError, match="finite"):
        save_graph(graph, tmp_path / "inf.npz")
    graph = conv_relu_graph()
    graph.weights[GRAPH_KEY] = np.zeros(1, np.float32)
    with pytest.raises(ModelError, match="reserved"):
        save_graph(graph, tmp_path / "reserved.npz")


def test_builder_weights_are_copied_float32_and_tuples_become_lists():
    w = np.ones((2, 3, 1, 1))
    b = GraphBuilder()
    y = b.conv2d(b.input("x", ["N", 3, 4, 4]), weight=w, stride=(1, 1))
    w[:] = 7
    b.output(y)
    graph = b.build()
    assert graph.weights[f"{y}.weight"].dtype == np.float32 and graph.weights[f"{y}.weight"].max() == 1
    assert graph.nodes[0].attrs["stride"] == [1, 1]
    assert b.shape(y) == (1, 2, 4, 4)


# ---------------------------------------------------------------- hostile files

class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pyconv_pwned_by_test",))


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    doc, arrays = doc_and_arrays(conv_relu_graph())
    evil = np.empty(1, dtype=object)
    evil[0] = _Boom()
    payload = {GRAPH_KEY: np.frombuffer(json.dumps(doc).encode(), np.uint8), **arrays, "evil": evil}
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        np.savez(f, **payload)  # numpy pickles object arrays
    if os.path.exists("/tmp/pyconv_pwned_by_test"):
        os.remove("/tmp/pyconv_pwned_by_test")
    with pytest.raises(UnsafeFileError, match="object"):
        pyconv.load(path)
    assert not os.path.exists("/tmp/pyconv_pwned_by_test")


def _zip_with(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy_bytes(arr):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_giant_declared_shape_is_refused_before_reading(tmp_path):
    doc, _ = doc_and_arrays(conv_relu_graph())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 30, 1 << 30)})
    members = {f"{GRAPH_KEY}.npy": _npy_bytes(np.frombuffer(json.dumps(doc).encode(), np.uint8)),
               "conv.weight.npy": header.getvalue() + b"\0" * 64}
    with pytest.raises(UnsafeFileError, match="declares shape"):
        pyconv.load(_zip_with(tmp_path / "giant.npz", members))


def test_zip_bomb_is_refused_from_declared_sizes(tmp_path):
    doc, arrays = doc_and_arrays(conv_relu_graph())
    bomb = np.zeros(4 << 20, np.float32)  # 16 MiB of zeros deflate to ~16 KiB
    members = {f"{GRAPH_KEY}.npy": _npy_bytes(np.frombuffer(json.dumps(doc).encode(), np.uint8)),
               **{f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}, "bomb.npy": _npy_bytes(bomb)}
    path = _zip_with(tmp_path / "bomb.npz", members)
    with pytest.raises(UnsafeFileError, match="more than the"):
        pyconv.load(path, max_bytes=1 << 20)


def test_high_compression_ratio_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "COMPRESSION_CHECK_ABOVE", 1 << 20)
    doc, arrays = doc_and_arrays(conv_relu_graph())
    members = {f"{GRAPH_KEY}.npy": _npy_bytes(np.frombuffer(json.dumps(doc).encode(), np.uint8)),
               "bomb.npy": _npy_bytes(np.zeros(2 << 20, np.float32))}
    with pytest.raises(UnsafeFileError, match="zip bomb"):
        pyconv.load(_zip_with(tmp_path / "ratio.npz", members))


def test_oversized_graph_json_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "MAX_GRAPH_JSON_BYTES", 256)
    doc, arrays = doc_and_arrays(conv_relu_graph())
    with pytest.raises(UnsafeFileError, match="graph JSON"):
        pyconv.load(write_raw(tmp_path / "big.npz", doc, arrays))


@pytest.mark.parametrize("content, message", [
    (b"not a zip at all", "not a pyconv model"),
    (None, "plain .npz"),
])
def test_files_that_are_not_models(tmp_path, content, message):
    path = tmp_path / "x.npz"
    if content is None:
        np.savez(path, a=np.zeros(2))
    else:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        pyconv.load(path)


def test_deeply_nested_or_invalid_json_is_a_model_error(tmp_path):
    for text in ("[" * 100000 + "]" * 100000, "{not json", "\xff"):
        data = text.encode("latin-1") if text == "\xff" else text.encode()
        path = tmp_path / "j.npz"
        with open(path, "wb") as f:
            np.savez(f, **{GRAPH_KEY: np.frombuffer(data, np.uint8)})
        with pytest.raises(ModelError):
            pyconv.load(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        pyconv.load(tmp_path / "nope.npz")


def test_validate_accepts_built_graphs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate(conv_relu_graph())


@pytest.mark.parametrize("compressed", [False, True])
def test_corrupted_files_only_raise_model_errors(tmp_path, compressed):
    """Random byte flips and truncations: the reader fails with a ModelError, never another exception."""
    graph = conv_relu_graph()
    path = tmp_path / "m.npz"
    if compressed:
        payload = {GRAPH_KEY: np.frombuffer(json.dumps(graph.to_json()).encode(), np.uint8), **graph.weights}
        np.savez_compressed(path, **payload)
    else:
        save_graph(graph, path)
    data = path.read_bytes()
    rng = np.random.default_rng(1)
    outcomes = set()
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            mutated = mutated[: int(rng.integers(0, len(mutated)))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ModelWarning)
                validate(fmt.graph_from_bytes(bytes(mutated)))
            outcomes.add("loaded")
        except ModelError as exc:
            outcomes.add(type(exc).__name__)
    assert "ModelError" in outcomes


def test_giant_declared_input_shape_is_refused_before_allocating(tmp_path):
    doc, arrays = doc_and_arrays(conv_relu_graph())
    doc["inputs"][0]["shape"] = [1, 3, 1 << 30, 1 << 30]
    model = pyconv.load(write_raw(tmp_path / "giant_input.npz", doc, arrays))  # shapes are inferred, not allocated
    with pytest.raises(ModelError, match="MiB of activations"):
        model.memory_plan()


def test_corrupted_weight_bytes_are_detected(tmp_path):
    graph = conv_relu_graph()
    path = tmp_path / "m.npz"
    save_graph(graph, path)
    data = bytearray(path.read_bytes())
    at = data.find(graph.weights["conv.weight"].tobytes())
    assert at > 0
    data[at + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="CRC"):
        pyconv.load(path)


@pytest.mark.parametrize("arr", [
    np.zeros((3, 4), np.float32), np.zeros(5, np.uint8), np.zeros((), np.float64), np.zeros((1,), np.int64),
    np.zeros((2, 3), np.float32, order="F"), np.zeros(3, ">f4"), np.zeros(2, bool), np.zeros((7, 1, 2), np.float16),
])
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_header_parser_agrees_with_numpy(arr, version):
    """The reader's one-regex fast path and its numpy fallback give numpy's answer."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    data = buf.getvalue()
    length = fmt._npy_header_length(data, "a")
    assert length == len(data) - arr.nbytes
    shape, fortran, dtype = fmt._parse_npy_header(data[:length], "a")
    assert (shape, fortran, dtype) == (arr.shape, arr.flags.f_contiguous and arr.ndim > 1, arr.dtype)


def test_npy_headers_in_other_spellings_use_numpys_parser():
    body = b"{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}"
    header = b"\x93NUMPY\x01\x00" + len(body + b"\n").to_bytes(2, "little") + body + b"\n"
    assert fmt._parse_npy_header(header, "a") == ((2, 3), False, np.dtype("<f4"))
    for bad in (b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }",
                b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }"):
        header = b"\x93NUMPY\x01\x00" + len(bad + b"\n").to_bytes(2, "little") + bad + b"\n"
        with pytest.raises(UnsafeFileError):
            fmt._parse_npy_header(header, "a")
    with pytest.raises(ModelError, match="malformed"):
        fmt._npy_header_length(b"\x93NUMPY\x01\x00\xff\xff", "a")  # longer than the header limit
    unclosed = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3\n"  # numpy raises tokenize's TokenError
    with pytest.raises(ModelError, match="malformed"):
        fmt._parse_npy_header(b"\x93NUMPY\x01\x00" + len(unclosed).to_bytes(2, "little") + unclosed, "a")


def test_crc_is_checked_on_the_helper_thread_too(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt.IntegrityCheck, "THREAD_ABOVE", 0)
    graph = conv_relu_graph()
    path = tmp_path / "m.npz"
    save_graph(graph, path)
    assert read_graph(path) == graph
    data = bytearray(path.read_bytes())
    data[data.find(graph.weights["conv.bias"].tobytes()) + 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="CRC"):
        pyconv.load(path)


def test_loaded_model_keeps_structure_but_not_the_files_arrays(tmp_path):
    graph = conv_relu_graph()
    path = tmp_path / "m.npz"
    save_graph(graph, path)
    model = pyconv.load(path)
    released = model.graph.weights["conv.weight"]
    assert isinstance(released, fmt.ReleasedArray)
    assert released.shape == (4, 3, 3, 3) and released.dtype == np.float32 and released.nbytes == 432
    with pytest.raises(ModelError, match="released"):
        np.asarray(released)
    assert model.graph.to_json() == graph.to_json()
    assert "conv" in model.summary()  # summaries need shapes only
