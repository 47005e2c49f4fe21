"""Convolution benchmarks: pyconv's algorithms against baselines measured in the same run.

Layers (batch 1) from issue 2; competitors: every applicable pyconv algorithm,
``scipy.signal.correlate2d`` looped over channel pairs, ``scipy.signal.fftconvolve``,
NumPy im2col + ``np.matmul``, and onnxruntime (when installed) — at 1 and 2 threads.

    python -m pytest bench/test_bench_conv.py                 # pytest-benchmark table
    python -m pytest bench/test_bench_conv.py -k ratios -s    # interleaved medians -> ratio table

The ratio test interleaves the competitors round by round and takes medians, so
a noisy, shared machine slows all of them alike (1 thread: CPU time of the
calling thread, where all of them compute; 2 threads: wall time); it prints a Markdown table
(``PYCONV_BENCH_TABLE=path`` also writes it to a file).  Nothing is asserted
about speed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np
import pytest
import scipy.signal

from pyconv.ops import conv as C

from harness import clock_for, emit_table, interleaved_medians, threads_set  # noqa: E402  (bench/ is on sys.path)

threadpoolctl = pytest.importorskip("threadpoolctl")


@dataclass(frozen=True)
class Layer:
    name: str
    cin: int
    cout: int
    size: int
    kernel: int
    stride: int = 1
    depthwise: bool = False

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def groups(self) -> int:
        return self.cin if self.depthwise else 1

    def arrays(self):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, self.cin, self.size, self.size)).astype(np.float32)
        w = rng.standard_normal((self.cout, self.cin // self.groups, self.kernel, self.kernel)).astype(np.float32)
        return x, w * np.float32(1.0 / np.sqrt(w[0].size))


LAYERS = [
    Layer("conv3x3 64->64 @56", 64, 64, 56, 3),
    Layer("conv3x3 256->256 @14", 256, 256, 14, 3),
    Layer("conv3x3 s2 64->128 @56", 64, 128, 56, 3, stride=2),
    Layer("conv1x1 256->64 @56", 256, 64, 56, 1),
    Layer("depthwise3x3 144 @56", 144, 144, 56, 3, depthwise=True),
]


def pyconv_algorithms(layer: Layer) -> List[str]:
    algos = ["auto"]
    if layer.depthwise:
        algos.append("depthwise")
    if layer.kernel == 1:
        algos.append("1x1")
    if layer.kernel == 3 and layer.stride == 1 and not layer.depthwise and C._winograd_kernels() is not None:
        algos += ["winograd2", "winograd4", "winograd6"]
    return algos + ["im2col"]


# ----------------------------------------------------------------------------- baselines

def padded(layer: Layer, x: np.ndarray) -> np.ndarray:
    p = layer.padding
    return np.pad(x[0], ((0, 0), (p, p), (p, p)))


def correlate2d_loop(layer: Layer, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xp = padded(layer, x)
    s = layer.stride
    out = []
    for co in range(layer.cout):
        cins = [co * layer.cin // layer.cout] if layer.depthwise else range(layer.cin)
        acc = sum(scipy.signal.correlate2d(xp[ci], w[co, ci if not layer.depthwise else 0], mode="valid")
                  for ci in cins)
        out.append(acc[::s, ::s])
    return np.stack(out)[None]


def fftconvolve(layer: Layer, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xp = padded(layer, x)
    flipped = w[:, :, ::-1, ::-1]
    s = layer.stride
    if layer.depthwise:
        y = scipy.signal.fftconvolve(xp, flipped[:, 0], mode="valid", axes=(1, 2))
    else:
        y = scipy.signal.fftconvolve(xp[None], flipped, mode="valid", axes=(2, 3)).sum(axis=1)
    return y[None, :, ::s, ::s]


def numpy_im2col(layer: Layer, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xp = padded(layer, x)
    k, s = layer.kernel, layer.stride
    windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::s, ::s]
    ho, wo = windows.shape[1:3]
    if layer.depthwise:  # batched (C, P, k*k) @ (C, k*k, 1)
        cols = windows.reshape(layer.cin, ho * wo, k * k)
        return np.matmul(cols, w.reshape(layer.cin, k * k, 1)).reshape(1, layer.cout, ho, wo)
    cols = windows.transpose(0, 3, 4, 1, 2).reshape(layer.cin * k * k, ho * wo)
    return np.matmul(w.reshape(layer.cout, -1), cols).reshape(1, layer.cout, ho, wo)


def onnxruntime_session(layer: Layer, w: np.ndarray, threads: int):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    p, s = layer.padding, layer.stride
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[s, s], pads=[p] * 4, group=layer.groups)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, layer.cin, layer.size, layer.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # a spinning thread pool would keep a core busy into the next competitor's turn
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def competitors(layer: Layer, threads: int, slow: bool = True, only: str = "") -> Dict[str, Callable[[], np.ndarray]]:
    """name -> zero-argument callable computing the layer (each checked against the reference once);
    ``only``: keep just the names starting with it."""
    x, w = layer.arrays()
    funcs: Dict[str, Callable[[], np.ndarray]] = {}
    for algo in pyconv_algorithms(layer):
        prepared = C.prepare_conv2d(w, stride=layer.stride, padding=layer.padding, groups=layer.groups,
                                    algorithm=algo)
        out = np.empty(prepared.output_shape(x.shape), np.float32)
        funcs[f"pyconv {prepared.algorithm}" if algo != "auto" else f"pyconv auto ({prepared.algorithm})"] = (
            lambda p=prepared, o=out: p(x, out=o))
    funcs["numpy im2col+matmul"] = lambda: numpy_im2col(layer, x, w)
    funcs["scipy fftconvolve"] = lambda: fftconvolve(layer, x, w)
    if slow:
        funcs["scipy correlate2d loop"] = lambda: correlate2d_loop(layer, x, w)
    try:
        session = onnxruntime_session(layer, w, threads)
        funcs["onnxruntime"] = lambda: session.run(None, {"x": x})[0]
    except pytest.skip.Exception:
        pass
    funcs = {name: fn for name, fn in funcs.items() if name.startswith(only)}
    reference = C.conv2d_reference(x, w, stride=layer.stride, padding=layer.padding, groups=layer.groups)
    scale = np.abs(reference).max()
    for name, fn in funcs.items():
        with threadpoolctl.threadpool_limits(threads):
            err = np.abs(fn() - reference).max() / scale
        assert err < 1e-4, (layer.name, name, err)
    return funcs




# ----------------------------------------------------------------------------- pytest-benchmark

FAST_NAMES = ["pyconv", "onnxruntime", "numpy im2col+matmul", "scipy fftconvolve"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer.name for layer in LAYERS])
@pytest.mark.parametrize("who", FAST_NAMES)
def test_conv_layer(benchmark, layer, threads, who):
    with threads_set(threads):
        funcs = competitors(layer, threads, slow=False, only=who)
        if not funcs:
            pytest.skip(f"{who} not available")
        name, fn = next(iter(funcs.items()))  # pyconv: the auto choice
        benchmark.group = f"{layer.name} / {threads} thread(s)"
        benchmark.extra_info["impl"] = name
        benchmark.pedantic(fn, rounds=15, warmup_rounds=2)


# ----------------------------------------------------------------------------- interleaved ratio table

def test_conv_ratios():
    rounds = int(os.environ.get("PYCONV_BENCH_ROUNDS", "21"))  # PYCONV_BENCH_THREADS="1" for one column
    lines = ["| layer | implementation | 1T ms | 1T: onnxruntime / this | 1T: correlate2d loop / this "
             "| 2T ms | 2T: onnxruntime / this | 2T speed-up |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    thread_counts = [int(t) for t in os.environ.get("PYCONV_BENCH_THREADS", "1,2").split(",")]
    for layer in LAYERS:
        results = {1: {}, 2: {}}
        for threads in thread_counts:
            with threads_set(threads):
                # the correlate2d loop is single-threaded and takes up to seconds: 1 thread, 2 rounds
                funcs = competitors(layer, threads, slow=threads == 1)
                slow = {"scipy correlate2d loop": funcs.pop("scipy correlate2d loop")} if threads == 1 else {}
                for fn in funcs.values():
                    fn()  # warm-up
                results[threads] = interleaved_medians(funcs, rounds, clock=clock_for(threads))
                if slow:
                    results[threads].update(interleaved_medians(slow, 2, clock=clock_for(threads)))
        ort1, ort2 = results[1].get("onnxruntime"), results[2].get("onnxruntime")
        loop = results[1].get("scipy correlate2d loop")
        for name, t1 in results[1].items():
            t2 = results[2].get(name)
            cells = [layer.name, name, f"{t1 * 1e3:.3f}", f"{ort1 / t1:.2f}x" if ort1 else "-", f"{loop / t1:.0f}x" if loop else "-",
                     f"{t2 * 1e3:.3f}" if t2 else "-", f"{ort2 / t2:.2f}x" if ort2 and t2 else "-",
                     f"{t1 / t2:.2f}x" if t2 else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    emit_table(lines)
