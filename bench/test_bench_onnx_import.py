"""ONNX import: conversion time against onnxruntime's session creation for the same file.

Both read the same .onnx from disk and prepare it to run (pyconv: parse, fold,
map, fuse, build and validate the graph; onnxruntime: parse, optimise the graph
and create its kernels), so the ratio says how conversion compares with what a
user already waits for in the other engine. Round-robin repeats, medians; a
Markdown table is printed (``-s``).

    python -m pytest bench/test_bench_onnx_import.py -s
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the baseline")
from onnx_export import to_onnx  # noqa: E402  (bench/ is on sys.path under pytest)

from pyconv.convert import from_onnx  # noqa: E402

ZOO_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
REPEATS = 5


def _zoo_model(name: str, directory: Path) -> Path:
    from models.zoo import ZOO

    path = directory / f"{name}.onnx"
    path.write_bytes(to_onnx(ZOO[name]().build()).SerializeToString())
    return path


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_conversion_time_ratios(tmp_path):
    models = {name: _zoo_model(name, tmp_path) for name in ("mobilenet_v2", "resnet50", "shufflenet_v2_x1_0")}
    models["onnx-zoo resnet50 (opset 9)"] = ZOO_DIR / "light_resnet50.onnx"
    times = {name: {"pyconv": [], "onnxruntime": []} for name in models}
    for _ in range(REPEATS):  # round-robin: load from other processes hits both engines alike
        for name, path in models.items():
            start = time.perf_counter()
            from_onnx(path)
            times[name]["pyconv"].append(time.perf_counter() - start)
            start = time.perf_counter()
            _session(path)
            times[name]["onnxruntime"].append(time.perf_counter() - start)
    lines = ["| model | size (MB) | pyconv convert (ms) | onnxruntime session (ms) | ratio |", "|---|---|---|---|---|"]
    for name, t in times.items():
        ours, theirs = statistics.median(t["pyconv"]), statistics.median(t["onnxruntime"])
        size = os.path.getsize(models[name]) / 1e6
        lines.append(f"| {name} | {size:.1f} | {ours * 1e3:.0f} | {theirs * 1e3:.0f} | {ours / theirs:.2f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if os.environ.get("PYCONV_BENCH_TABLE"):
        with open(os.environ["PYCONV_BENCH_TABLE"], "a") as f:
            f.write(table + "\n")
