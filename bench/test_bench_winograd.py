"""Winograd kernel benchmarks: F(2x2), F(4x4), F(6x6) against onnxruntime and NumPy im2col.

Calls the kernel directly (filters transformed once, output preallocated), the
way the executor runs a prepared conv2d, with its per-position GEMMs as the engine
chooses them (the blocked loop for wide layers on AVX-512 CPUs, else sgemm).
Layers: conv3x3 64->64 @56x56 and
256->256 @14x14, batch 1, padding 1, at 1 and 2 threads.

    python -m pytest bench/test_bench_winograd.py                  # pytest-benchmark table
    python -m pytest bench/test_bench_winograd.py -k ratios -s     # interleaved medians -> ratio table

The ratio test runs the competitors round-robin in short bursts and reports
medians, so load from other processes slows all of them alike.  onnxruntime runs one Conv node
with ``intra_op_num_threads`` = threads and thread spinning off (its spinning
pool would otherwise steal the core from whatever runs next); the NumPy
baseline always runs on one BLAS thread for the same reason.  Nothing about
speed is asserted; each competitor's result is checked once.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict

import numpy as np
import pytest

from pyconv._core.winograd import winograd_conv, winograd_pack
from pyconv.ops import conv as conv_ops
from pyconv.ops._args import parse_activation

from harness import interleaved_medians, threads_set  # noqa: E402  (bench/ is on sys.path)

LAYERS = {"conv3x3 64->64 @56": (64, 56), "conv3x3 256->256 @14": (256, 14)}
TILES = (2, 4, 6)
PADS = (1, 1, 1, 1)
ROUNDS = int(os.environ.get("PYCONV_BENCH_ROUNDS", "15"))


def layer_arrays(name: str):
    channels, size = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
    w = (rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2.0 / (9 * channels))).astype(np.float32)
    return x, w


def numpy_im2col(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))
    ho, wo = windows.shape[1:3]
    cols = windows.transpose(0, 3, 4, 1, 2).reshape(-1, ho * wo)
    return np.matmul(w.reshape(w.shape[0], -1), cols).reshape(1, w.shape[0], ho, wo)


def onnxruntime_session(w: np.ndarray, threads: int):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=list(PADS))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return numpy_im2col(x.astype(np.float64), w.astype(np.float64))


def competitors(name: str, threads: int) -> Dict[str, Callable[[], object]]:
    """Implementation name -> zero-argument callable; each result checked against float64 once."""
    x, w = layer_arrays(name)
    out = np.empty((1, w.shape[0], x.shape[2], x.shape[3]), np.float32)
    no_act = parse_activation(None)
    # the per-position GEMMs as the engine runs them (pyconv/ops/conv.py's rule)
    blocked = (w.shape[0] * w.shape[1] >= conv_ops._WINOGRAD_BLOCKED_MIN_FILTER
               and conv_ops._blocked_loop_pays())
    funcs: Dict[str, Callable[[], object]] = {}
    for tile in TILES:
        packed = winograd_pack(w, tile, panels=blocked)
        funcs[f"pyconv F({tile}x{tile},3x3)"] = (
            lambda u=packed, m=tile: winograd_conv(x, u, m, None, PADS, no_act, None, out, threads) or out)
    try:
        session = onnxruntime_session(w, threads)
        funcs["onnxruntime"] = lambda: session.run(None, {"x": x})[0]
    except pytest.skip.Exception:
        pass
    funcs["numpy im2col+matmul"] = lambda: numpy_im2col(x, w)
    ref = reference(x, w)
    for impl, fn in funcs.items():
        err = np.abs(fn() - ref).max() / np.abs(ref).max()
        assert err < 1e-4, (name, impl, err)
    return funcs


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("impl", [f"pyconv F({m}x{m},3x3)" for m in TILES] + ["onnxruntime", "numpy im2col+matmul"])
def test_winograd_layer(benchmark, layer, threads, impl):
    with threads_set(threads):
        funcs = competitors(layer, threads)
        if impl not in funcs:
            pytest.skip(f"{impl} not available")
        benchmark.group = f"{layer} / {threads} thread(s)"
        benchmark.pedantic(funcs[impl], rounds=20, warmup_rounds=3)


def test_winograd_ratios():
    """Print a Markdown table: median ms and speed relative to onnxruntime, 2- vs 1-thread speedup."""
    medians = {}
    for layer in LAYERS:
        for threads in (1, 2):
            with threads_set(threads):
                for impl, t in interleaved_medians(competitors(layer, threads), ROUNDS, calls=3).items():
                    medians[layer, threads, impl] = t
    lines = ["| layer | threads | implementation | median ms | onnxruntime / impl | 1 thread / 2 threads |",
             "|---|---|---|---|---|---|"]
    for (layer, threads, impl), t in medians.items():
        ort = medians.get((layer, threads, "onnxruntime"))
        vs_ort = f"{ort / t:.2f}x" if ort else "n/a"
        scaling = f"{medians[layer, 1, impl] / t:.2f}x" if threads == 2 else ""
        lines.append(f"| {layer} | {threads} | {impl} | {t * 1e3:.3f} | {vs_ort} | {scaling} |")
    print("\n" + "\n".join(lines))


CROSSOVER_LAYERS = ((64, 56), (128, 28), (256, 14), (512, 7))
CROSSOVER_ALGORITHMS = ("winograd2", "winograd4", "winograd6", "im2col")


def test_winograd_crossover():
    """Print forced tiles vs ``algorithm="im2col"`` (prepared conv2d, batch 1) on ResNet's
    3x3 layers, for the ``auto`` rule: median ms at 1 and 2 threads, onnxruntime alongside."""
    from pyconv.registry import get

    conv = get("conv2d")
    lines = ["| layer | threads | " + " | ".join(CROSSOVER_ALGORITHMS) + " | onnxruntime |",
             "|---|---|" + "---|" * (len(CROSSOVER_ALGORITHMS) + 1)]
    for channels, size in CROSSOVER_LAYERS:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
        w = (rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2.0 / (9 * channels))).astype(np.float32)
        out = np.empty_like(x)
        for threads in (1, 2):
            with threads_set(threads):
                funcs = {}
                for algorithm in CROSSOVER_ALGORITHMS:
                    bound = conv.bind({"weight": w}, {"padding": 1, "algorithm": algorithm})
                    funcs[algorithm] = lambda f=bound: f(x, out=out)
                try:
                    session = onnxruntime_session(w, threads)
                    funcs["onnxruntime"] = lambda: session.run(None, {"x": x})
                except pytest.skip.Exception:
                    pass
                medians = interleaved_medians(funcs, max(3, ROUNDS // 3), calls=3)
            cells = [f"{medians[name] * 1e3:.3f}" if name in medians else "n/a"
                     for name in CROSSOVER_ALGORITHMS + ("onnxruntime",)]
            lines.append(f"| {channels}->{channels} @{size} | {threads} | " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))


RESNET50_3X3 = ((64, 3), (128, 4), (256, 6), (512, 3))  # (channels, layers) of ResNet-50's 3x3 convs


def test_winograd_pack_resnet50():
    """Print winograd_pack's time per layer size and for all of ResNet-50's 3x3 layers."""
    rng = np.random.default_rng(0)
    weights = {c: rng.standard_normal((c, c, 3, 3)).astype(np.float32) for c, _ in RESNET50_3X3}
    lines = ["| tile | " + " | ".join(f"{c}x{c}" for c, _ in RESNET50_3X3) + " | all 16 layers |",
             "|---|" + "---|" * (len(RESNET50_3X3) + 1)]
    for tile in TILES:
        total, cells = 0.0, []
        for channels, count in RESNET50_3X3:
            times = []
            for _ in range(count):
                start = time.perf_counter()
                winograd_pack(weights[channels], tile)
                times.append(time.perf_counter() - start)
            total += sum(times)
            cells.append(f"{np.median(times) * 1e3:.1f} ms")
        lines.append(f"| F({tile}) | " + " | ".join(cells) + f" | {total * 1e3:.0f} ms |")
    print("\n" + "\n".join(lines))
