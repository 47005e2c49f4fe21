"""Pooling benchmarks: pyconv's kernels against baselines measured in the same run.

Cases (batch 1) from issue 3: max pool 3x3 s2 on 64x112x112, average pool 2x2 s2
on 64x56x56, global average on 512x7x7, adaptive (6x6, avg and max) and SPP
(levels 1, 2, 4) on 256x13x13.  Competitors: the ``scipy.ndimage`` route
(``maximum_filter`` / ``uniform_filter`` over the whole map, then slicing out the
strided window centres), a NumPy implementation (strided slices / reshape /
bin loops), and onnxruntime (a single-node ONNX graph, or the usual MaxPool +
Flatten + Concat graph for SPP) with ``intra_op_num_threads=1``.

    python -m pytest bench/test_bench_pool.py                     # pytest-benchmark table
    python -m pytest bench/test_bench_pool.py -k ratios -s        # interleaved medians -> ratio table

The ratio test runs the competitors round-robin and takes medians, so a shared,
noisy machine slows all of them alike; it prints a Markdown table
(``PYCONV_BENCH_TABLE=path`` also writes it).  Nothing is asserted about speed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import pytest
import scipy.ndimage as ndi

from pyconv import ops

from harness import clock_for, emit_table, interleaved_medians, threads_set  # noqa: E402  (bench/ is on sys.path)

SPP_LEVELS = (1, 2, 4)


# ----------------------------------------------------------------------------- baselines

def scipy_max_pool(x, k, s, p):
    """maximum_filter over the -inf padded map, then the window centres of the strided output."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    ho = (xp.shape[2] - k) // s + 1
    wo = (xp.shape[3] - k) // s + 1
    m = ndi.maximum_filter(xp, size=(1, 1, k, k), mode="nearest")
    c = k // 2
    return m[:, :, c:c + s * ho:s, c:c + s * wo:s]


def scipy_avg_pool(x, k, s):
    """uniform_filter, then the window centres (an even window's centre is its lower-right middle)."""
    m = ndi.uniform_filter(x, size=(1, 1, k, k), mode="constant")
    ho = (x.shape[2] - k) // s + 1
    wo = (x.shape[3] - k) // s + 1
    c = k // 2
    return m[:, :, c:c + s * ho:s, c:c + s * wo:s]


def scipy_global_avg(x):
    k = x.shape[2]
    return ndi.uniform_filter(x, size=(1, 1, k, x.shape[3]), mode="constant")[:, :, k // 2:k // 2 + 1,
                                                                             x.shape[3] // 2:x.shape[3] // 2 + 1]


def scipy_spp_max(x):
    """Each level as a maximum_filter of the level's bin size, sampled at the bin centres
    (valid for 13x13, where the adaptive bins all have one size per level)."""
    n_img, channels, size = x.shape[0], x.shape[1], x.shape[2]
    parts = []
    for n in SPP_LEVELS:
        k = -(-size // n)
        starts = [i * size // n for i in range(n)]
        centres = [s + k // 2 for s in starts]
        m = ndi.maximum_filter(x, size=(1, 1, k, k), mode="nearest")
        parts.append(m[:, :, centres][:, :, :, centres].reshape(n_img, channels * n * n))
    return np.concatenate(parts, axis=1)


def numpy_max_pool(x, k, s, p):
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    ho = (xp.shape[2] - k) // s + 1
    wo = (xp.shape[3] - k) // s + 1
    return np.maximum.reduce([xp[:, :, a:a + s * ho:s, b:b + s * wo:s] for a in range(k) for b in range(k)])


def numpy_avg_pool_2x2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def numpy_adaptive(x, out, reduce):
    """Bin loop: start = floor(i * in / out), end = ceil((i + 1) * in / out)."""
    h, w = x.shape[2:]
    y = np.empty(x.shape[:2] + (out, out), np.float32)
    for i in range(out):
        for j in range(out):
            y[:, :, i, j] = reduce(x[:, :, i * h // out:-(-(i + 1) * h // out), j * w // out:-(-(j + 1) * w // out)],
                                   axis=(2, 3))
    return y


def numpy_spp_max(x):
    return np.concatenate([numpy_adaptive(x, n, np.max).reshape(x.shape[0], -1) for n in SPP_LEVELS], axis=1)


def onnxruntime_session(nodes, x_shape):
    """An onnxruntime session on one thread for a graph ``x -> y`` made of ``nodes``."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def ort_node(op, **attrs):
    from onnx import helper

    return [helper.make_node(op, ["x"], ["y"], **attrs)]


def ort_spp_nodes(size):
    """The classic SPP export: one MaxPool per level (valid when the bins are uniform), Flatten, Concat."""
    from onnx import helper

    nodes, flat = [], []
    for n in SPP_LEVELS:
        k, s = -(-size // n), size // n
        nodes.append(helper.make_node("MaxPool", ["x"], [f"p{n}"], kernel_shape=[k, k], strides=[s, s]))
        nodes.append(helper.make_node("Flatten", [f"p{n}"], [f"f{n}"], axis=1))
        flat.append(f"f{n}")
    nodes.append(helper.make_node("Concat", flat, ["y"], axis=1))
    return nodes


# ----------------------------------------------------------------------------- cases

@dataclass
class Case:
    name: str
    shape: tuple
    pyconv: Callable          # (x, out) -> y
    scipy: Callable
    numpy: Callable
    ort_nodes: Optional[Callable] = None   # () -> list of ONNX nodes
    out_shape: tuple = ()


CASES = [
    Case("maxpool 3x3 s2 p1 @ 64x112x112", (1, 64, 112, 112),
         lambda x, out: ops.max_pool2d(x, 3, 2, 1, out=out),
         lambda x: scipy_max_pool(x, 3, 2, 1), lambda x: numpy_max_pool(x, 3, 2, 1),
         lambda: ort_node("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (1, 64, 56, 56)),
    Case("avgpool 2x2 s2 @ 64x56x56", (1, 64, 56, 56),
         lambda x, out: ops.avg_pool2d(x, 2, 2, out=out),
         lambda x: scipy_avg_pool(x, 2, 2), numpy_avg_pool_2x2,
         lambda: ort_node("AveragePool", kernel_shape=[2, 2], strides=[2, 2]), (1, 64, 28, 28)),
    Case("global avg @ 512x7x7", (1, 512, 7, 7),
         lambda x, out: ops.global_avg_pool2d(x, out=out),
         scipy_global_avg, lambda x: x.mean(axis=(2, 3), keepdims=True),
         lambda: ort_node("GlobalAveragePool"), (1, 512, 1, 1)),
    # on 13x13 the adaptive 6x6 bins are exactly 3x3 windows with stride 2 (an ONNX AveragePool / MaxPool)
    Case("adaptive avg 6x6 @ 256x13x13", (1, 256, 13, 13),
         lambda x, out: ops.adaptive_avg_pool2d(x, 6, out=out),
         lambda x: scipy_avg_pool(x, 3, 2), lambda x: numpy_adaptive(x, 6, np.mean),
         lambda: ort_node("AveragePool", kernel_shape=[3, 3], strides=[2, 2]), (1, 256, 6, 6)),
    Case("adaptive max 6x6 @ 256x13x13", (1, 256, 13, 13),
         lambda x, out: ops.adaptive_max_pool2d(x, 6, out=out),
         lambda x: scipy_max_pool(x, 3, 2, 0), lambda x: numpy_adaptive(x, 6, np.max),
         lambda: ort_node("MaxPool", kernel_shape=[3, 3], strides=[2, 2]), (1, 256, 6, 6)),
    Case("SPP max (1,2,4) @ 256x13x13", (1, 256, 13, 13),
         lambda x, out: ops.spatial_pyramid_pool(x, SPP_LEVELS, "max", out=out),
         scipy_spp_max, numpy_spp_max, lambda: ort_spp_nodes(13), (1, 256 * 21)),
]


def competitors(case: Case) -> Dict[str, Callable[[], np.ndarray]]:
    """name -> zero-argument callable (each checked against pyconv once)."""
    x = np.random.default_rng(0).standard_normal(case.shape).astype(np.float32)
    out = np.empty(case.out_shape, np.float32)
    funcs = {
        "pyconv": lambda: case.pyconv(x, out),
        "onnxruntime": None,
        "numpy": lambda: case.numpy(x),
        "scipy.ndimage": lambda: case.scipy(x),
    }
    try:
        run = onnxruntime_session(case.ort_nodes(), case.shape)
        funcs["onnxruntime"] = lambda: run(x)
    except pytest.skip.Exception:
        del funcs["onnxruntime"]
    expected = np.array(case.pyconv(x, None))
    for name, fn in funcs.items():
        np.testing.assert_allclose(np.asarray(fn()).reshape(expected.shape), expected, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{case.name}: {name}")
    return funcs


# ----------------------------------------------------------------------------- pytest-benchmark

@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("who", ["pyconv", "onnxruntime", "numpy", "scipy.ndimage"])
def test_pool(benchmark, case, who):
    with threads_set(1):
        funcs = competitors(case)
        if who not in funcs:
            pytest.skip(f"{who} not available")
        benchmark.group = case.name
        benchmark.pedantic(funcs[who], rounds=30, warmup_rounds=3)


# ----------------------------------------------------------------------------- interleaved ratio table

def test_pool_ratios():
    rounds = int(os.environ.get("PYCONV_BENCH_ROUNDS", "31"))
    lines = ["| case | pyconv ms | onnxruntime ms | onnxruntime / pyconv | numpy / pyconv | scipy.ndimage / pyconv |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    with threads_set(1):
        for case in CASES:
            funcs = competitors(case)
            for fn in funcs.values():
                fn()
            t = interleaved_medians(funcs, rounds, calls=10, clock=clock_for(1))
            ours = t["pyconv"]
            ort = t.get("onnxruntime")
            cells = [case.name, f"{ours * 1e3:.4f}", f"{ort * 1e3:.4f}" if ort else "-",
                     f"{ort / ours:.2f}x" if ort else "-", f"{t['numpy'] / ours:.1f}x",
                     f"{t['scipy.ndimage'] / ours:.1f}x"]
            lines.append("| " + " | ".join(cells) + " |")
    emit_table(lines)
