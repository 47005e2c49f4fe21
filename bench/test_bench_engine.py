"""Engine costs that are not kernel time.

* Executor overhead per node: a 100-node graph of tiny ops.  Baseline, measured in
  the same run and interleaved: the same ops called directly through the functional
  API on preallocated arrays (what a careful hand-written script would do).
  Reported: the executor/direct time ratio and the overhead per node in microseconds.
* ``import pyconv``: fresh interpreters, interleaved with bare ``python -c pass``.
* Load time and peak RSS of ResNet-18 and MobileNetV2 (224x224, batch 1, 1 thread)
  against onnxruntime on the same weights, each engine in its own process: one load
  (median of 5 loads; the previous model is dropped first) and 5 runs, then VmHWM.
* Where ResNet-18's memory goes: RSS and peak RSS after loading and after every step
  of its first run (``-k trace``).

    python -m pytest bench/test_bench_engine.py --benchmark-disable -s
"""
import json
import subprocess
import sys
import textwrap
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


# ---------------------------------------------------------------- import, load, memory

ROUNDS = 7


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)


def test_import_time(benchmark):
    """``import pyconv`` over a bare interpreter start (interleaved, medians); it must not import numpy."""
    bare, with_pyconv = [], []
    for _ in range(ROUNDS):
        for times, code in ((bare, "pass"), (with_pyconv, "import pyconv")):
            start = time.perf_counter()
            assert _python("-c", code).returncode == 0
            times.append(time.perf_counter() - start)
    extra_ms = 1e3 * (float(np.median(with_pyconv)) - float(np.median(bare)))
    tree = _python("-X", "importtime", "-c", "import pyconv, sys; print('numpy' in sys.modules)")
    own_us = max(int(line.split("|")[1]) for line in tree.stderr.splitlines() if line.rstrip().endswith("| pyconv"))
    benchmark.extra_info.update(import_extra_ms=extra_ms, importtime_pyconv_ms=own_us / 1e3)
    print(f"\nimport pyconv: +{extra_ms:.0f} ms over a bare interpreter start (median of {ROUNDS}); "
          f"-X importtime cumulative {own_us / 1e3:.1f} ms")
    assert tree.stdout.strip() == "False"  # numpy (and the kernels) load on first use
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


_PROCESS = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    engine, path = sys.argv[1], sys.argv[2]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    if engine == "pyconv":
        import pyconv, pyconv.ops  # imports are not load time
        pyconv.set_num_threads(1)
        make = lambda: pyconv.load(path)
        run = lambda model: model(x)
    else:
        import onnxruntime as ort
        options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        make = lambda: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        run = lambda session: session.run(None, {"input": x})
    wall, cpu, model = [], [], None
    for _ in range(5):
        model = None  # one model alive at a time
        start, start_cpu = time.perf_counter(), time.process_time()
        model = make()
        wall.append(time.perf_counter() - start); cpu.append(time.process_time() - start_cpu)
    for _ in range(5):
        run(model)
    with open("/proc/self/status") as status:  # VmHWM: ru_maxrss is inherited through fork + exec
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": peak_kb / 1024, "load_ms": 1e3 * float(np.median(wall)),
                      "load_cpu_ms": 1e3 * float(np.median(cpu))}))
""")


@pytest.fixture(scope="module")
def network_files(tmp_path_factory):
    """name -> (npz, onnx) for the networks the load and memory targets name."""
    onnx_export = pytest.importorskip("onnx_export", reason="bench/onnx_export.py (needs onnx) exports the baseline")
    from models.zoo import ZOO

    directory = tmp_path_factory.mktemp("engine_networks")
    files = {}
    for name in ("resnet18", "mobilenet_v2"):
        npz, onnx_path = directory / f"{name}.npz", directory / f"{name}.onnx"
        graph = ZOO[name]().save(npz)
        onnx_path.write_bytes(onnx_export.to_onnx(graph).SerializeToString())
        files[name] = (npz, onnx_path)
    return files


def _measure(engine: str, path) -> dict:
    result = _python("-c", _PROCESS, engine, str(path))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_load_time_and_peak_rss_against_onnxruntime(benchmark, network_files, name):
    pytest.importorskip("onnxruntime", reason="onnxruntime is the baseline")
    npz, onnx_path = network_files[name]
    ours, theirs = _measure("pyconv", npz), _measure("onnxruntime", onnx_path)
    benchmark.extra_info.update({f"pyconv_{k}": v for k, v in ours.items()})
    benchmark.extra_info.update({f"onnxruntime_{k}": v for k, v in theirs.items()})
    print(f"\n{name}: load pyconv {ours['load_ms']:.0f} ms ({ours['load_cpu_ms']:.0f} ms CPU), onnxruntime session "
          f"{theirs['load_ms']:.0f} ms ({theirs['load_cpu_ms']:.0f} ms CPU); peak RSS pyconv "
          f"{ours['peak_rss_mb']:.0f} MB, onnxruntime {theirs['peak_rss_mb']:.0f} MB "
          f"(ratio {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f})")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


_TRACE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import pyconv
    from pyconv.graph.plan import ExecutionState
    def rss_mb():
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    pyconv.set_num_threads(1)
    import pyconv.ops
    rows = [("imports", "", *rss_mb())]
    model = pyconv.load(sys.argv[1])
    rows.append(("load", "", *rss_mb()))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    plan, _ = model._plan((x.shape,))
    state = ExecutionState(model.optimized, plan, model._calls)
    rows.append(("buffers", "", *rss_mb()))
    np.copyto(state.inputs[0], x)
    for (fn, args, out), name, op in zip(state.steps, state.names, state.ops):
        fn(*args, out=out)
        rows.append((name, op, *rss_mb()))
    print(json.dumps(rows))
""")


def test_memory_trace_resnet18(benchmark, network_files):
    """RSS and peak RSS after each step of ResNet-18's first run (where the memory goes)."""
    result = _python("-c", _TRACE, str(network_files["resnet18"][0]))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    print("\nResNet-18, first run at 224x224: RSS / peak RSS (MB) after each step")
    previous = rows[0][3]
    for name, op, rss, peak in rows:
        jump = f"  peak +{peak - previous:.0f}" if peak > previous + 1 else ""
        print(f"  {name:<24} {op:<18} {rss:7.0f} {peak:7.0f}{jump}")
        previous = peak
    benchmark.extra_info.update(peak_rss_mb=rows[-1][3], rss_after_run_mb=rows[-1][2])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
