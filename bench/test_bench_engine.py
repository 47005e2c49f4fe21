"""Executor overhead per node: a 100-node graph of tiny ops.

Baseline, measured in the same run and interleaved: the same ops called
directly through the functional API on preallocated arrays (what a careful
hand-written script would do).  Reported: the executor/direct time ratio and
the executor's overhead per node in microseconds.

    python -m pytest bench/test_bench_engine.py --benchmark-disable -s
"""
import time

import numpy as np
import pytest

import pyconv
from pyconv import ops, registry
from pyconv.graph.builder import GraphBuilder

NODES = 100
SHAPE = (1, 8, 4, 4)  # 128 floats: kernel time is negligible, overhead dominates
REPEATS = 15
CALLS = 50

pytestmark = pytest.mark.skipif(any(op not in registry.all_ops() for op in ("relu", "add", "sigmoid")),
                                reason="relu/add/sigmoid not registered yet")


def build_chain():
    """relu, sigmoid and add (with the previous tensor) in turn: 100 nodes."""
    b = GraphBuilder()
    prev = cur = b.input("x", list(SHAPE))
    for i in range(NODES):
        kind = i % 3
        nxt = b.relu(cur) if kind == 0 else b.sigmoid(cur) if kind == 1 else b.add(cur, prev)
        prev, cur = cur, nxt
    b.output(cur)
    return pyconv.Model(b.build(), optimize=False)


def direct_chain(x, buffers):
    """The same computation through the functional API, on preallocated buffers."""
    prev = cur = x
    for i in range(NODES):
        out = buffers[i]
        kind = i % 3
        if kind == 0:
            ops.relu(cur, out=out)
        elif kind == 1:
            ops.sigmoid(cur, out=out)
        else:
            ops.add(cur, prev, out=out)
        prev, cur = cur, out
    return cur.copy()


def _median_seconds(fn, calls=CALLS):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def test_executor_overhead_per_node(benchmark):
    model = build_chain()
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    buffers = [np.empty(SHAPE, np.float32) for _ in range(NODES)]
    np.testing.assert_allclose(model(x), direct_chain(x, buffers), rtol=1e-6)
    engine, direct = [], []
    for _ in range(REPEATS):  # interleaved: both see the same machine load
        engine.append(_median_seconds(lambda: model(x)))
        direct.append(_median_seconds(lambda: direct_chain(x, buffers)))
    t_engine, t_direct = float(np.median(engine)), float(np.median(direct))
    ratio = t_engine / t_direct
    per_node_us = (t_engine - t_direct) / NODES * 1e6
    benchmark.extra_info.update(ratio_engine_over_direct=ratio, overhead_per_node_us=per_node_us,
                                engine_per_node_us=t_engine / NODES * 1e6)
    print(f"\n{NODES}-node graph of {SHAPE} ops: engine {t_engine * 1e6:.0f} us, direct calls "
          f"{t_direct * 1e6:.0f} us, ratio {ratio:.2f}, overhead per node {per_node_us:+.2f} us")
    benchmark(model, x)
    # the executor must not cost more than calling the ops by hand (plus a small margin for noise)
    assert ratio < 1.5
