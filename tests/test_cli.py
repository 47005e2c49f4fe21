"""The ``pyconv`` command: run, summary, bench, info, --version, errors and exit codes."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from pyconv import __version__, registry
from pyconv.cli import main
from pyconv.graph.builder import GraphBuilder

pytestmark = pytest.mark.skipif(
    any(op not in registry.all_ops() for op in ("conv2d", "global_avg_pool2d", "flatten", "linear", "relu")),
    reason="conv2d/global_avg_pool2d/flatten/linear/relu not registered yet")
Image = pytest.importorskip("PIL.Image")

LABELS = ["cat", "dog", "fish"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """Scores the mean of (red, green, blue): a red image is a 'cat', a blue one a 'fish'."""
    b = GraphBuilder()
    x = b.input("input", ["N", 3, 8, 8])
    y = b.flatten(b.global_avg_pool2d(b.conv2d(x, weight=np.eye(3).reshape(3, 3, 1, 1))))
    b.output(b.linear(y, weight=10 * np.eye(3), bias=np.zeros(3)), alias="logits")
    path = tmp_path_factory.mktemp("models") / "clf.npz"
    b.save(path, metadata={"labels": LABELS, "task": "classification",
                           "preprocess": {"resize": [8, 8], "crop": None, "scale": 1 / 255, "mean": [0, 0, 0],
                                          "std": [1, 1, 1], "channel_order": "RGB"}})
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("green", (0, 255, 0))):
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", (20, 12), color).save(paths[name])
    return paths


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_prints_top_labels(capsys, classifier, images):
    code, out, err = run_cli(capsys, "run", classifier, images["red"], "--top", "2")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[1] == "cat"
    assert float(lines[0].split()[0]) > 0.9


def test_run_json_and_save_for_several_images(capsys, classifier, images, tmp_path):
    saved = tmp_path / "out.npz"
    code, out, err = run_cli(capsys, "run", classifier, images["red"], images["blue"], "--json", "--top", "1",
                             "--save", saved, "--threads", "1")
    assert code == 0, err
    results = json.loads(out)
    assert [r["top"][0]["label"] for r in results] == ["cat", "fish"]
    with np.load(saved, allow_pickle=False) as data:
        assert data["logits"].shape == (2, 3)
        assert list(data["images"]) == [str(images["red"]), str(images["blue"])]


def test_run_on_a_folder_shows_a_progress_bar(capsys, classifier, tmp_path):
    for i in range(6):
        Image.new("RGB", (9, 9), (0, 40 * i, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image, and skipped: not an image extension")
    code, out, err = run_cli(capsys, "run", classifier, tmp_path, "--top", "1")
    assert code == 0, err
    assert "6/6" in err and out.count("dog") == 5  # the black image scores equal: first label wins


def test_run_reports_missing_and_broken_images(capsys, classifier, images, tmp_path):
    code, _, err = run_cli(capsys, "run", classifier, tmp_path / "missing.png")
    assert code == 2 and "no such file" in err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    code, out, err = run_cli(capsys, "run", classifier, broken, images["blue"])
    assert code == 1 and "broken.png" in err and "fish" in out  # other images still run


def test_run_batches_images_of_one_size_with_the_same_results(capsys, classifier, tmp_path):
    # 7 images: sizes differ (no resize in this model, so they batch by size), one is broken;
    # every batch size gives the same per-image results, in the order given
    b = GraphBuilder()
    x = b.input("input", ["N", 3, "H", "W"])
    y = b.flatten(b.global_avg_pool2d(b.conv2d(x, weight=np.eye(3).reshape(3, 3, 1, 1))))
    b.output(b.linear(y, weight=10 * np.eye(3), bias=np.zeros(3)), alias="logits")
    model = tmp_path / "any_size.npz"
    b.save(model, metadata={"labels": LABELS, "task": "classification", "preprocess": {"scale": 1 / 255}})
    files = []
    for i, (size, color) in enumerate([((9, 9), (200, 0, 0)), ((9, 9), (0, 0, 90)), ((9, 9), (0, 70, 0)),
                                        ((5, 7), (10, 0, 0)), (None, None), ((9, 9), (0, 0, 255)),
                                        ((9, 9), (30, 30, 0))]):
        files.append(tmp_path / f"img{i}.png")
        if size is None:
            files[-1].write_bytes(b"not a png")
        else:
            Image.new("RGB", size, color).save(files[-1])
    runs = {}
    for batch in (1, 2, 8):
        saved = tmp_path / f"out{batch}.npz"
        code, out, err = run_cli(capsys, "run", model, *files, "--json", "--top", "3", "--batch", batch,
                                 "--save", saved, "--quiet")
        assert code == 1 and err.count("error:") == 1 and "img4.png" in err
        with np.load(saved, allow_pickle=False) as data:
            runs[batch] = (json.loads(out), data["logits"], list(data["images"]))
    for batch in (2, 8):
        assert [r["image"] for r in runs[batch][0]] == [str(f) for f in files]
        for mine, ref in zip(runs[batch][0], runs[1][0]):
            assert ("error" in mine) == ("error" in ref)
            for a, b_ in zip(mine.get("top", []), ref.get("top", [])):
                assert a["label"] == b_["label"] and abs(a["probability"] - b_["probability"]) < 1e-5
        np.testing.assert_allclose(runs[batch][1], runs[1][1], rtol=1e-5, atol=1e-6)
        assert runs[batch][2] == runs[1][2] == [str(f) for i, f in enumerate(files) if i != 4]


def test_run_reports_model_image_mismatch(capsys, tmp_path, images):
    b = GraphBuilder()
    b.output(b.relu(b.input("input", [1, 1, 8, 8])))
    path = tmp_path / "gray.npz"
    b.save(path, metadata={"preprocess": {"resize": [8, 8]}})  # forgot "grayscale": true
    code, _, err = run_cli(capsys, "run", path, images["red"])
    assert code == 1 and "does not fit the model" in err and "axis 1 is 3" in err
    b = GraphBuilder()
    b.output(b.conv2d(b.input("input", [1, 3, "H", "W"]), weight=np.ones((1, 3, 16, 16))))
    b.save(path, metadata={"task": "segmentation"})
    code, out, err = run_cli(capsys, "run", path, images["red"], images["blue"])  # 12x20 < 16x16 kernel
    assert code == 1 and err.count("does not fit the model") == 2 and "conv2d" in err


def test_run_shows_statistics_for_non_classifiers(capsys, tmp_path, images):
    b = GraphBuilder()
    b.output(b.relu(b.input("input", [1, 3, "H", "W"])), alias="map")
    path = tmp_path / "fcn.npz"
    b.save(path, metadata={"task": "segmentation", "preprocess": {"scale": 1 / 255}})
    code, out, err = run_cli(capsys, "run", path, images["green"], "--json")
    assert code == 0, err
    stats = json.loads(out)["outputs"]["map"]
    assert stats["shape"] == [1, 3, 12, 20] and stats["max"] == 1.0


def test_missing_or_corrupt_model(capsys, tmp_path, images):
    code, _, err = run_cli(capsys, "run", tmp_path / "none.npz", images["red"])
    assert code == 2 and "no such file" in err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "summary", bad)
    assert code == 1 and "not a pyconv model" in err
    code, _, err = run_cli(capsys, "summary", tmp_path)
    assert code == 2 and "directory" in err


def test_summary_table_and_json(capsys, classifier):
    code, out, err = run_cli(capsys, "summary", classifier)
    assert code == 0, err
    assert "conv2d" in out and "Nx3x8x8" in out and "total: 4 layers, 21 parameters" in out
    code, out, err = run_cli(capsys, "summary", classifier, "--json", "--input-shape", "2,3,8,8")
    data = json.loads(out)
    assert data["totals"]["params"] == 9 + 9 + 3  # conv without bias, linear with bias
    assert data["layers"][0]["macs"] == 2 * 3 * 8 * 8 * 3 and data["layers"][0]["receptive_field"] == "1x1"


def test_bench_reports_latency_throughput_memory(capsys, classifier):
    code, out, err = run_cli(capsys, "bench", classifier, "--runs", "3", "--per-layer", "--json", "--threads", "1")
    assert code == 0, err
    report = json.loads(out)
    assert report["latency_ms"]["median"] > 0 and report["throughput_per_s"] > 0
    assert report["memory"]["weights_bytes"] == 4 * 21
    assert [layer["op"] for layer in report["layers"]][0] == "conv2d"
    code, out, err = run_cli(capsys, "bench", classifier, "--runs", "2", "--per-layer")
    assert code == 0 and "latency: median" in out and "share" in out


def test_info_and_bad_arguments(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "openmp:" in out and "conv2d" in out
    for bad in (["bench", "m.npz", "--runs", "0"], ["run", "m.npz", "x.png", "--batch", "0"]):
        with pytest.raises(SystemExit) as info:
            main(bad)
        assert info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_version_via_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "pyconv", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"pyconv {__version__}"


@pytest.mark.skipif(importlib.util.find_spec("pyconv.convert.command") is None,
                    reason="pyconv.convert.command (ONNX helper) not written yet")
def test_convert_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert", "--help"])
    assert info.value.code == 0 and "usage" in capsys.readouterr().out
