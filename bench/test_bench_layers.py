"""Benchmarks of the non-convolution layers against NumPy/SciPy and onnxruntime, measured in the same run.

    python -m pytest bench/test_bench_layers.py                 # pytest-benchmark table
    python -m pytest bench/test_bench_layers.py -k ratios -s    # interleaved medians -> ratio table

Everything runs on one thread (pyconv, NumPy's BLAS, onnxruntime's intra-op pool) so
the ratios compare kernels, not thread pools, on a shared machine.  The ratio test
interleaves competitors round by round and takes medians; nothing is asserted about speed.
"""
from __future__ import annotations

import os
from typing import Callable, Dict

import numpy as np
import pytest
import scipy.special

import pyconv
from pyconv import ops

from harness import clock_for, emit_table, interleaved_medians  # noqa: E402  (bench/ is on sys.path)

_rng = np.random.default_rng(0)
X112 = _rng.standard_normal((1, 64, 112, 112)).astype(np.float32)
X56 = _rng.standard_normal((1, 256, 56, 56)).astype(np.float32)
SE = _rng.random((1, 256, 1, 1)).astype(np.float32)
SEG = _rng.standard_normal((1, 21, 128, 128)).astype(np.float32)
LOGITS = _rng.standard_normal((8, 1000)).astype(np.float32)
X64 = _rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
ALEX = _rng.standard_normal((1, 96, 55, 55)).astype(np.float32)
SHUF = _rng.standard_normal((1, 232, 28, 28)).astype(np.float32)
MEAN, VAR = _rng.standard_normal(64).astype(np.float32), _rng.random(64).astype(np.float32) + 0.5


def _numpy_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _numpy_lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    sq = np.pad(x * x, ((0, 0), (size // 2, (size - 1) // 2), (0, 0), (0, 0)))
    window = np.lib.stride_tricks.sliding_window_view(sq, size, axis=1).sum(axis=-1)
    return x * (k + alpha / size * window) ** -beta


def _ort(op: str, x: np.ndarray, initializers=(), opset: int = 14, **attrs):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(op, ["x"] + [n for n, _ in initializers], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in initializers])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})[0]


def _resize_inputs(scale):
    return [("roi", np.zeros(0, np.float32)), ("scales", np.array([1, 1, scale, scale], np.float32))]


# case -> {implementation -> zero-argument callable}; ORT entries are built lazily (optional dependency)
CASES: Dict[str, Dict[str, Callable]] = {
    "relu 64x112x112": {"pyconv": lambda: ops.relu(X112), "numpy": lambda: np.maximum(X112, 0),
                        "onnxruntime": lambda: _ort("Relu", X112)},
    "sigmoid 64x112x112": {"pyconv": lambda: ops.sigmoid(X112), "numpy": lambda: 1 / (1 + np.exp(-X112)),
                           "onnxruntime": lambda: _ort("Sigmoid", X112)},
    "silu 64x112x112": {"pyconv": lambda: ops.silu(X112), "numpy": lambda: X112 / (1 + np.exp(-X112))},
    "hardswish 64x112x112": {"pyconv": lambda: ops.hardswish(X112),
                             "numpy": lambda: X112 * np.clip(X112 / 6 + 0.5, 0, 1),
                             "onnxruntime": lambda: _ort("HardSwish", X112)},
    "gelu 64x112x112": {"pyconv": lambda: ops.gelu(X112),
                        "numpy+scipy erf": lambda: 0.5 * X112 * (1 + scipy.special.erf(X112 / np.sqrt(2)))},
    "softmax axis 1 21x128x128": {"pyconv": lambda: ops.softmax(SEG, axis=1), "numpy": lambda: _numpy_softmax(SEG, 1),
                                  "onnxruntime": lambda: _ort("Softmax", SEG, axis=1)},
    "softmax 8x1000": {"pyconv": lambda: ops.softmax(LOGITS, axis=1), "numpy": lambda: _numpy_softmax(LOGITS, 1),
                       "onnxruntime": lambda: _ort("Softmax", LOGITS, axis=1)},
    "batch_norm 64x112x112": {"pyconv": lambda: ops.batch_norm(X112, MEAN, VAR),
                              "numpy": lambda: (X112 - MEAN[:, None, None]) / np.sqrt(VAR[:, None, None] + 1e-5)},
    "add 256x56x56": {"pyconv": lambda: ops.add(X56, X56), "numpy": lambda: X56 + X56,
                      "onnxruntime": lambda: _ort("Add", X56, [("b", X56)])},
    "mul SE 256x56x56 * 256x1x1": {"pyconv": lambda: ops.mul(X56, SE), "numpy": lambda: X56 * SE,
                                   "onnxruntime": lambda: _ort("Mul", X56, [("b", SE)])},
    "resize nearest 2x 64x56x56": {
        "pyconv": lambda: ops.resize(X64, scales=[2, 2], coordinate_transformation_mode="asymmetric",
                                     nearest_mode="floor"),
        "numpy repeat": lambda: X64.repeat(2, axis=2).repeat(2, axis=3),
        "onnxruntime": lambda: _ort("Resize", X64, _resize_inputs(2), mode="nearest",
                                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")},
    "resize bilinear 2x 64x56x56": {
        "pyconv": lambda: ops.resize(X64, scales=[2, 2], mode="linear"),
        "onnxruntime": lambda: _ort("Resize", X64, _resize_inputs(2), mode="linear")},
    "local_response_norm 5 96x55x55": {"pyconv": lambda: ops.local_response_norm(ALEX, 5),
                                       "numpy": lambda: _numpy_lrn(ALEX),
                                       "onnxruntime": lambda: _ort("LRN", ALEX, size=5)},
    "channel_shuffle 2 232x28x28": {
        "pyconv": lambda: ops.channel_shuffle(SHUF, 2),
        "numpy": lambda: np.ascontiguousarray(SHUF.reshape(1, 2, 116, 28, 28).swapaxes(1, 2)).reshape(SHUF.shape)},
}
_LAZY = {"onnxruntime"}  # entries returning a callable rather than a result


def implementations(case: str) -> Dict[str, Callable]:
    """name -> callable for one case; every result is checked against pyconv's once."""
    funcs = {}
    for name, make in CASES[case].items():
        if name in _LAZY:
            try:
                funcs[name] = make()
            except pytest.skip.Exception:
                continue
        else:
            funcs[name] = make
    expected = funcs["pyconv"]()
    for name, fn in funcs.items():
        np.testing.assert_allclose(fn(), expected, rtol=1e-4, atol=1e-5, err_msg=f"{case}: {name}")
    return funcs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = pyconv.get_num_threads()
    with threadpoolctl.threadpool_limits(1):
        pyconv.set_num_threads(1)
        yield
    pyconv.set_num_threads(before)


@pytest.mark.parametrize("who", ["pyconv", "numpy", "onnxruntime"])
@pytest.mark.parametrize("case", list(CASES))
def test_layer(benchmark, case, who):
    funcs = {k: v for k, v in implementations(case).items() if k.startswith(who)}
    if not funcs:
        pytest.skip(f"no {who} implementation for {case}")
    name, fn = next(iter(funcs.items()))
    benchmark.group = case
    benchmark.extra_info["impl"] = name
    benchmark.pedantic(fn, rounds=20, warmup_rounds=2)


def test_layer_ratios():
    rounds = int(os.environ.get("PYCONV_BENCH_ROUNDS", "31"))
    lines = ["| layer | pyconv ms | competitor | competitor ms | competitor / pyconv |", "| --- | ---: | --- | ---: | ---: |"]
    for case in CASES:
        medians = interleaved_medians(implementations(case), rounds, clock=clock_for(1))
        mine = medians.pop("pyconv")
        for name, t in medians.items():
            lines.append(f"| {case} | {mine * 1e3:.3f} | {name} | {t * 1e3:.3f} | {t / mine:.2f}x |")
    emit_table(lines)
