"""Whole networks from the zoo against onnxruntime, same weights, same run.

ResNet-18, MobileNetV2, SqueezeNet 1.1, ShuffleNetV2 x1.0 and VGG-11 without
its classifier, 224x224, batch 1, at 1 and 2 threads.  Each network is built
with seeded random weights, saved as .npz and exported to ONNX
(bench/onnx_export.py); both engines must agree before anything is timed.
Timing interleaves the engines round by round (the machine is shared) and
reports medians and the pyconv/onnxruntime ratio (< 1: pyconv faster).  Peak
RSS is measured in a fresh process per engine (load + 5 runs; VmHWM, Linux), load time of
the .npz as the median of 5 loads.  A table is printed at the end
(``-s`` to see it).

    python -m pytest bench/test_bench_networks.py --benchmark-disable -s
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import pyconv

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the baseline")
from onnx_export import to_onnx  # noqa: E402  (bench/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {
    "resnet18": ("resnet18", {}),
    "mobilenet_v2": ("mobilenet_v2", {}),
    "squeezenet1_1": ("squeezenet1_1", {}),
    "shufflenet_v2_x1_0": ("shufflenet_v2_x1_0", {}),
    "vgg11_no_fc": ("vgg11", {"include_classifier": False}),
}
THREADS = (1, 2)
ROUNDS = 7
RESULTS: dict = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("networks")


@functools.lru_cache(maxsize=None)
def _files(name: str, directory: str):
    """(npz path, onnx path) of network ``name`` with seed-0 weights."""
    from models.zoo import ZOO

    builder, kwargs = NETWORKS[name]
    net = ZOO[builder](**kwargs)
    npz, onnx_path = Path(directory) / f"{name}.npz", Path(directory) / f"{name}.onnx"
    graph = net.save(npz)
    onnx_path.write_bytes(to_onnx(graph).SerializeToString())
    return npz, onnx_path


def _ort_session(path: Path, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning: an idle pool must not steal the core from pyconv's next round (bench/README.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _seconds_per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_latency_vs_onnxruntime(benchmark, workdir, name, threads):
    npz, onnx_path = _files(name, str(workdir))
    previous = pyconv.get_num_threads()
    pyconv.set_num_threads(threads)
    try:
        model = pyconv.load(npz)
        session = _ort_session(onnx_path, threads)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        ours, theirs = model(x), session.run(None, {"input": x})[0]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())
        single = _seconds_per_call(lambda: model(x), 1)
        calls = max(1, min(10, int(0.3 / max(single, 1e-4))))
        t_pyconv, t_ort = [], []
        for _ in range(ROUNDS):  # interleaved: both engines see the same machine load
            t_pyconv.append(_seconds_per_call(lambda: model(x), calls))
            t_ort.append(_seconds_per_call(lambda: session.run(None, {"input": x}), calls))
        ms_pyconv, ms_ort = 1e3 * float(np.median(t_pyconv)), 1e3 * float(np.median(t_ort))
        ratio = ms_pyconv / ms_ort
        RESULTS.setdefault(name, {})[threads] = (ms_pyconv, ms_ort, ratio)
        benchmark.extra_info.update(pyconv_ms=ms_pyconv, onnxruntime_ms=ms_ort, ratio=ratio)
        print(f"\n{name} {threads} thread(s): pyconv {ms_pyconv:.1f} ms, onnxruntime {ms_ort:.1f} ms, "
              f"ratio {ratio:.2f}")
        benchmark.pedantic(model, args=(x,), rounds=1, iterations=1)
    finally:
        pyconv.set_num_threads(previous)


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    engine, path = sys.argv[1], sys.argv[2]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    if engine == "pyconv":
        import pyconv
        pyconv.set_num_threads(1)
        loads = []
        for _ in range(5):
            start = time.perf_counter(); model = pyconv.load(path); loads.append(time.perf_counter() - start)
        run = lambda: model(x)
    else:
        import onnxruntime as ort
        options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        loads = []
        for _ in range(5):
            start = time.perf_counter()
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            loads.append(time.perf_counter() - start)
        run = lambda: session.run(None, {"input": x})
    for _ in range(5):
        run()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest) through fork + exec
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": peak_kb / 1024,
                      "load_ms": 1e3 * sorted(loads)[len(loads) // 2]}))
""")


def _measure_process(engine: str, path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, engine, str(path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_peak_rss_and_load_time(benchmark, workdir, name):
    npz, onnx_path = _files(name, str(workdir))
    ours, theirs = _measure_process("pyconv", npz), _measure_process("onnxruntime", onnx_path)
    RESULTS.setdefault(name, {})["rss"] = (ours["peak_rss_mb"], theirs["peak_rss_mb"])
    RESULTS[name]["load"] = (ours["load_ms"], theirs["load_ms"])
    benchmark.extra_info.update(pyconv_peak_rss_mb=ours["peak_rss_mb"], onnxruntime_peak_rss_mb=theirs["peak_rss_mb"],
                                pyconv_load_ms=ours["load_ms"], onnxruntime_load_ms=theirs["load_ms"])
    print(f"\n{name}: peak RSS pyconv {ours['peak_rss_mb']:.0f} MB, onnxruntime {theirs['peak_rss_mb']:.0f} MB; "
          f"load pyconv {ours['load_ms']:.0f} ms, onnxruntime session {theirs['load_ms']:.0f} ms")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_report_table():
    """Print the markdown table recorded in bench/README.md ("Networks")."""
    if not RESULTS:
        pytest.skip("no network was measured")
    lines = ["| network | threads | pyconv ms | onnxruntime ms | ratio | 2-thread speed-up (pyconv / ort) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, res in RESULTS.items():
        for threads in THREADS:
            if threads not in res:
                continue
            ms_p, ms_o, ratio = res[threads]
            speedup = ""
            if threads > 1 and 1 in res:
                speedup = f"{res[1][0] / ms_p:.2f}x / {res[1][1] / ms_o:.2f}x"
            lines.append(f"| {name} | {threads} | {ms_p:.1f} | {ms_o:.1f} | {ratio:.2f} | {speedup} |")
    lines += ["", "| network | peak RSS pyconv MB | peak RSS onnxruntime MB | load pyconv ms | session onnxruntime ms |",
              "| --- | --- | --- | --- | --- |"]
    for name, res in RESULTS.items():
        if "rss" in res:
            lines.append(f"| {name} | {res['rss'][0]:.0f} | {res['rss'][1]:.0f} | {res['load'][0]:.0f} | "
                         f"{res['load'][1]:.0f} |")
    print("\n" + "\n".join(lines))
