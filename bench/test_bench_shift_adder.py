"""Shift and adder convolutions against baselines measured in the same run.

    python -m pytest bench/test_bench_shift_adder.py                 # pytest-benchmark table
    python -m pytest bench/test_bench_shift_adder.py -k ratios -s    # interleaved medians -> ratio tables

Three tables (1 and 2 threads; ``PYCONV_BENCH_TABLE=path`` also writes them):

* adder 3x3 64->64 @56 vs the same-shaped multiplying conv (pyconv's im2col +
  GEMM path, and its automatic choice) vs a NumPy unfold implementation, with
  throughput in G abs-diff-accumulates/s beside the conv's GFLOP/s;
* fused shift + 1x1 vs the 1x1 conv alone (target: within 1.15x) and vs the
  unfused shift2d followed by the 1x1 conv;
* the Shift paper's comparison on this CPU: a 3x3 conv, a depthwise-separable
  block and a shift block mapping C -> C channels at one resolution, with the
  parameters and MACs that ``pyconv summary`` reports (read from the registry).

The ratio tests interleave the competitors round by round and take medians, so
a noisy, shared machine slows all of them alike; 1-thread runs are timed in
thread CPU time (``time.thread_time``), which other processes cannot inflate,
2-thread runs in wall time.  Nothing is asserted about speed.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Tuple

import numpy as np
import pytest

from pyconv import registry
from pyconv.ops import conv as C

from harness import clock_for, emit_table, interleaved_samples, threads_set  # noqa: E402  (bench/ is on sys.path)

threadpoolctl = pytest.importorskip("threadpoolctl")

ROUNDS = int(os.environ.get("PYCONV_BENCH_ROUNDS", "15"))
RNG = np.random.default_rng(0)


def randn(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def interleaved_times(funcs: Dict[str, Callable], rounds: int, threads: int) -> Dict[str, Tuple[float, float]]:
    """(median, best) seconds per competitor.

    The best time is printed beside the median: on a shared 2-core machine a
    2-thread run is often stalled by a descheduled thread, which the median
    alone does not survive when the machine is busy."""
    samples = interleaved_samples(funcs, rounds, clock=clock_for(threads))
    return {name: (float(np.median(t)), float(np.min(t))) for name, t in samples.items()}


def node(op: str, weights: Dict[str, np.ndarray], **attrs) -> Callable:
    """The op prepared as the executor prepares it (weights packed once)."""
    spec = registry.get(op)
    return spec.bind(weights, spec.resolve_attrs(attrs))


def counts(op: str, x_shape, weights: Dict[str, np.ndarray], **attrs) -> registry.Counts:
    spec = registry.get(op)
    attrs = spec.resolve_attrs(attrs)
    shapes = {k: v.shape for k, v in weights.items()}
    return spec.count([x_shape], shapes, attrs, spec.infer_shape([x_shape], shapes, attrs))


def check(funcs: Dict[str, Callable], reference: np.ndarray) -> None:
    scale = np.abs(reference).max()
    for name, fn in funcs.items():
        err = np.abs(fn() - reference).max() / scale
        assert err < 1e-4, (name, err)




# ----------------------------------------------------------------------------- adder vs multiply conv

def numpy_unfold_adder(x: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """The paper's formulation in NumPy: unfold the zero-padded input, -sum |cols - w| per output channel."""
    xp = np.pad(x[0], ((0, 0), (padding, padding), (padding, padding)))
    co, ci, kh, kw = w.shape
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    ho, wo = windows.shape[1:3]
    cols = windows.transpose(0, 3, 4, 1, 2).reshape(ci * kh * kw, ho * wo)
    out = np.empty((co, ho * wo), np.float32)
    for o in range(co):  # one output channel at a time keeps the temporary at K x P
        out[o] = -np.abs(cols - w[o].reshape(-1, 1)).sum(axis=0)
    return out.reshape(1, co, ho, wo)


def adder_competitors(channels: int = 64, size: int = 56):
    x, w = randn(1, channels, size, size), randn(channels, channels, 3, 3)
    out = np.empty((1, channels, size, size), np.float32)
    adder = node("adder2d", {"weight": w}, padding=1)
    im2col = C.prepare_conv2d(w, padding=1, algorithm="im2col")
    auto = C.prepare_conv2d(w, padding=1)
    fast = {
        "pyconv adder2d": lambda: adder(x, out=out),
        "pyconv conv2d im2col+GEMM": lambda: im2col(x, out=out),
        f"pyconv conv2d auto ({auto.algorithm})": lambda: auto(x, out=out),
    }
    slow = {"numpy unfold adder": lambda: numpy_unfold_adder(x, w, 1)}
    check({k: v for k, v in fast.items() if "adder" in k}, registry.get("adder2d").reference(x, w, padding=1))
    check({k: v for k, v in fast.items() if "conv2d" in k}, C.conv2d_reference(x, w, padding=1))
    check(slow, registry.get("adder2d").reference(x, w, padding=1))
    work = counts("adder2d", x.shape, {"weight": w}, padding=1).adds
    return fast, slow, work


def test_adder_ratios():
    lines = ["| implementation | threads | median ms | / conv im2col (median) | / conv im2col (best) "
             "| throughput (best) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for threads in (1, 2):
        with threads_set(threads):
            fast, slow, work = adder_competitors()
            times = interleaved_times(fast, ROUNDS, threads)
            times.update(interleaved_times(slow, 2, threads))
        base_median, base_best = times["pyconv conv2d im2col+GEMM"]
        for name, (median, best) in times.items():
            rate = work / best / 1e9
            unit = f"{rate:.1f} G abs-diff-acc/s" if "adder" in name else f"{2 * rate:.1f} GFLOP/s"
            lines.append(f"| {name} | {threads} | {median * 1e3:.2f} | {median / base_median:.2f}x | "
                         f"{best / base_best:.2f}x | {unit} |")
    emit_table(lines, "adder2d 3x3 64->64 @56 (batch 1) vs the same-shaped multiplying conv (conv throughput: 2 x MACs / s)")


# ----------------------------------------------------------------------------- fused shift + 1x1

SHIFT_LAYERS = [(64, 64, 56), (192, 64, 28), (384, 96, 14), (32, 192, 56)]  # C_in, C_out, size


def shift_competitors(cin: int, cout: int, size: int):
    x, w = randn(1, cin, size, size), randn(cout, cin, 1, 1) / np.float32(np.sqrt(cin))
    out = np.empty((1, cout, size, size), np.float32)
    shifted = np.empty_like(x)
    fused = node("shift_conv1x1", {"weight": w})
    shift = node("shift2d", {})
    conv = C.prepare_conv2d(w, algorithm="1x1")
    funcs = {
        "shift_conv1x1 (fused)": lambda: fused(x, out=out),
        "conv2d 1x1 alone": lambda: conv(x, out=out),
        "shift2d then conv2d 1x1": lambda: conv(shift(x, out=shifted), out=out),
    }
    reference = registry.get("shift_conv1x1").reference(x, w)
    check({k: v for k, v in funcs.items() if "shift" in k}, reference)
    return funcs


def test_shift_conv1x1_ratios():
    lines = ["| C_in -> C_out @ size | threads | fused ms | 1x1 alone ms | fused / 1x1 | fused / 1x1 (best) "
             "| unfused / 1x1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cin, cout, size in SHIFT_LAYERS:
        for threads in (1, 2):
            with threads_set(threads):
                t = interleaved_times(shift_competitors(cin, cout, size), 2 * ROUNDS, threads)
            fused, alone, unfused = (t[k] for k in ("shift_conv1x1 (fused)", "conv2d 1x1 alone",
                                                    "shift2d then conv2d 1x1"))
            lines.append(f"| {cin} -> {cout} @{size} | {threads} | {fused[0] * 1e3:.3f} | {alone[0] * 1e3:.3f} | "
                         f"{fused[0] / alone[0]:.2f}x | {fused[1] / alone[1]:.2f}x | {unfused[0] / alone[0]:.2f}x |")
    emit_table(lines, "fused shift + 1x1 vs the 1x1 conv alone (medians; target <= 1.15x)")


# ----------------------------------------------------------------------------- the Shift paper's table

def blocks(channels: int, size: int):
    """name -> (callable, [(op, x_shape, weights, attrs)]) for three C -> C spatial modules."""
    x = randn(1, channels, size, size)
    shape = x.shape
    w3 = randn(channels, channels, 3, 3) / np.float32(np.sqrt(9 * channels))
    wdw = randn(channels, 1, 3, 3) / np.float32(3)
    w1 = randn(channels, channels, 1, 1) / np.float32(np.sqrt(channels))
    conv3 = C.prepare_conv2d(w3, padding=1, activation="relu")
    dw = C.prepare_conv2d(wdw, padding=1, groups=channels, activation="relu")
    pw = C.prepare_conv2d(w1, activation="relu")
    shift = node("shift_conv1x1", {"weight": w1}, activation="relu")
    mid = np.empty_like(x)
    out = np.empty_like(x)
    return {
        f"3x3 conv ({conv3.algorithm})": (lambda: conv3(x, out=out),
                                          [("conv2d", shape, {"weight": w3}, {"padding": 1})]),
        "depthwise-separable (dw 3x3 + 1x1)": (lambda: pw(dw(x, out=mid), out=out),
                                               [("conv2d", shape, {"weight": wdw}, {"padding": 1, "groups": channels}),
                                                ("conv2d", shape, {"weight": w1}, {})]),
        "shift + 1x1 (fused)": (lambda: shift(x, out=out),
                                [("shift_conv1x1", shape, {"weight": w1}, {})]),
    }


def test_shift_paper_table_ratios():
    lines = ["| module (C -> C @ size) | params | MACs | 1T ms | 2T ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for channels, size in ((64, 56), (128, 28)):
        results = {}
        for threads in (1, 2):
            with threads_set(threads):
                modules = blocks(channels, size)
                results[threads] = {k: t[0] for k, t in
                                    interleaved_times({k: v[0] for k, v in modules.items()}, ROUNDS, threads).items()}
        for name, (_, ops) in modules.items():
            c = [counts(op, shape, weights, **attrs) for op, shape, weights, attrs in ops]
            params, macs = sum(x.params for x in c), sum(x.macs for x in c)
            lines.append(f"| {name} ({channels} @{size}) | {params:,} | {macs / 1e6:.1f} M | "
                         f"{results[1][name] * 1e3:.3f} | {results[2][name] * 1e3:.3f} |")
    emit_table(lines, "Shift paper's comparison on this CPU (batch 1, ReLU fused)")


# ----------------------------------------------------------------------------- pytest-benchmark

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("who", ["pyconv adder2d", "pyconv conv2d im2col+GEMM"])
def test_adder_layer(benchmark, threads, who):
    with threads_set(threads):
        fast, _, _ = adder_competitors()
        benchmark.group = f"adder 3x3 64->64 @56 / {threads} thread(s)"
        benchmark.pedantic(fast[who], rounds=15, warmup_rounds=2)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("who", ["shift_conv1x1 (fused)", "conv2d 1x1 alone"])
def test_shift_conv1x1_layer(benchmark, threads, who):
    with threads_set(threads):
        fn = shift_competitors(192, 64, 28)[who]
        benchmark.group = f"shift+1x1 192->64 @28 / {threads} thread(s)"
        benchmark.pedantic(fn, rounds=30, warmup_rounds=2)
