"""``pyconv convert``: options, metadata written, exit codes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onnx_testing import OnnxNet, make_model, node, rand, run_onnxruntime

import onnx  # noqa: E402

import pyconv  # noqa: E402
from pyconv.cli import main  # noqa: E402
from pyconv.convert.command import parse_input_shapes  # noqa: E402

X = "x"


@pytest.fixture
def onnx_file(tmp_path):
    net = OnnxNet(seed=3)
    y = net.conv_bn_act(net.input(X, 3), 4, 3, 2)
    y = net.op("Flatten", [net.op("GlobalAveragePool", [y])])
    model = net.model({X: ["N", 3, "H", "W"]}, [y], metadata={"labels": "p\nq\nr\ns"})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path, model


def test_convert_writes_model_metadata_and_preprocessing(onnx_file, tmp_path, capsys):
    path, model = onnx_file
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"cat\r\ndog\r\nfox\r\nowl\r\n\r\n")  # Windows line endings, a blank line at the end
    out = tmp_path / "m.npz"
    code = main(["convert", str(path), str(out), "--labels", str(labels), "--mean", "0.485,0.456,0.406",
                 "--std", "0.229,0.224,0.225", "--scale", "1/255", "--size", "64,48", "--channel-order", "BGR"])
    assert code == 0
    assert "parameters" in capsys.readouterr().out
    converted = pyconv.load(out)
    assert converted.metadata["labels"] == ["cat", "dog", "fox", "owl"]  # the option overrides the file's
    assert converted.metadata["preprocess"] == {"resize": [64, 48], "scale": pytest.approx(1 / 255),
                                                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                                "channel_order": "BGR"}
    x = rand(2, 3, 20, 12)
    np.testing.assert_allclose(converted.run({X: x})[model.graph.output[0].name],
                               run_onnxruntime(model, {X: x})[model.graph.output[0].name], rtol=1e-4, atol=1e-5)


def test_convert_input_shape_json_and_verify(onnx_file, tmp_path, capsys):
    path, _ = onnx_file
    out = tmp_path / "fixed.npz"
    assert main(["convert", str(path), str(out), "--input-shape", "x:2x3x16x16", "--json", "--verify"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == {"x": [2, 3, 16, 16]} and report["labels"] == 4
    assert max(report["max_abs_difference"].values()) < 1e-4
    assert list(pyconv.load(out).graph.inputs[0].shape) == [2, 3, 16, 16]


def test_unsupported_model_exits_1_listing_the_ops(tmp_path, capsys):
    model = make_model([node("Softplus", [X], ["e"], name="e1"), node("Softplus", ["e"], ["y"], name="e2")],
                       {X: [1, 3, 4, 4]}, ["y"])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    assert main(["convert", str(path), str(tmp_path / "bad.npz")]) == 1
    err = capsys.readouterr().err
    assert "Softplus x2 (e.g. e1, e2)" in err
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize("option", [["--scale", "1/0"], ["--mean", "1,2"], ["--size", "0,3"],
                                    ["--input-shape", "x:1x3x?x4"], ["--std", "1,0,1"]])
def test_bad_options_exit_2(onnx_file, tmp_path, option, capsys):
    path, _ = onnx_file
    assert main(["convert", str(path), str(tmp_path / "o.npz"), *option]) == 2
    assert "error" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "none.onnx"), str(tmp_path / "o.npz")]) == 2


def test_parse_input_shapes():
    assert parse_input_shapes(["1x3x224x224"]) == {"": [1, 3, 224, 224]}
    assert parse_input_shapes(["a:Nx3xHxW;b:1,1,8,8"]) == {"a": ["N", 3, "H", "W"], "b": [1, 1, 8, 8]}
    assert parse_input_shapes(["x:0:1,3,max_h,max_w"]) == {"x:0": [1, 3, "max_h", "max_w"]}
    with pytest.raises(Exception, match="name each input"):
        parse_input_shapes(["1x3x8x8", "b:1x1x8x8"])


def test_summary_and_bench_work_on_a_converted_model(onnx_file, tmp_path, capsys):
    path, _ = onnx_file
    out = tmp_path / "m.npz"
    assert main(["convert", str(path), str(out), "--size", "32,32"]) == 0
    capsys.readouterr()
    assert main(["summary", str(out), "--input-shape", "1,3,32,32"]) == 0
    assert "conv2d" in capsys.readouterr().out
    assert main(["bench", str(out), "--runs", "2", "--warmup", "1", "--input-shape", "1,3,32,32", "--json"]) == 0
    assert "latency" in capsys.readouterr().out


def test_runtime_never_imports_onnx(tmp_path, onnx_file):
    import subprocess
    import sys

    path, _ = onnx_file
    out = tmp_path / "m.npz"
    assert main(["convert", str(path), str(out)]) == 0
    code = ("import sys, numpy as np, pyconv, pyconv.cli, pyconv.convert\n"
            f"m = pyconv.load({str(out)!r}); m.run({{'x': np.zeros((1, 3, 8, 8), np.float32)}})\n"
            "assert 'onnx' not in sys.modules, 'the runtime imported onnx'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_onnx_package_gives_install_hint(monkeypatch, onnx_file):
    import sys

    from pyconv.convert import from_onnx

    path, _ = onnx_file
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match='pip install "pyconv\\[onnx\\]"'):
        from_onnx(str(path))


def test_pyconv_run_uses_the_converted_labels_and_preprocessing(onnx_file, tmp_path, capsys):
    from PIL import Image

    path, _ = onnx_file
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfox\nowl\n")
    out = tmp_path / "m.npz"
    assert main(["convert", str(path), str(out), "--labels", str(labels), "--size", "24,20", "--scale", "1/255",
                 "--mean", "0.5", "--std", "0.25"]) == 0
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert main(["run", str(out), str(image), "--json", "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert any(name in text for name in ("cat", "dog", "fox", "owl")), text
