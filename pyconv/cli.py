"""The ``pyconv`` command (also ``python -m pyconv``): run, summary, bench, info, convert.

Exit codes: 0 success, 1 a model, image or input problem (the message says
which and what to do), 2 a usage error or a missing file, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
PROGRESS_FROM = 5  # show a progress bar from this many images on


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


# ---------------------------------------------------------------------------- helpers

def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        import pyconv

        pyconv.set_num_threads(threads)


def _load_model(path: str, args: argparse.Namespace):
    import pyconv

    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return pyconv.load(path, winograd=not getattr(args, "no_winograd", False))


def _parse_shape(text: str, input_names: Sequence[str]) -> Dict[str, tuple]:
    """``"1,3,224,224"`` (single-input models) or ``"name=1,3,224,224;other=..."``."""
    shapes = {}
    for part in text.split(";"):
        name, _, dims = part.rpartition("=")
        name = name or (input_names[0] if len(input_names) == 1 else "")
        if not name:
            raise UsageError(f"--input-shape: this model has inputs {list(input_names)}; write name=N,C,H,W")
        if name not in input_names:
            raise UsageError(f"--input-shape: the model has no input {name!r}; its inputs are {list(input_names)}")
        try:
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            raise UsageError(f"--input-shape: cannot read {part!r}; write e.g. 1,3,224,224") from None
    return shapes


def _image_paths(items: Sequence[str]) -> List[str]:
    """Files as given; folders expanded to the images they hold (sorted, not recursive)."""
    paths: List[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UsageError(f"folder {item!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            paths.extend(found)
        elif not os.path.exists(item):
            raise FileNotFoundError(item)
        else:
            paths.append(item)
    return paths


class _Progress:
    """A one-line progress bar on stderr (only for many items)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.start = total, enabled, time.perf_counter()

    def clear(self) -> None:
        """Erase the bar so a result line printed next does not land after it."""
        if self.enabled and sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // self.total
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} ({rate:.1f} img/s)")
        if done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max()
    e = np.exp(x)
    return e / e.sum()


def _looks_like_probabilities(v: np.ndarray) -> bool:
    return bool(v.min() >= 0 and v.max() <= 1 and abs(v.sum() - 1) < 1e-3)


def _classify(output: np.ndarray, labels: Optional[List[str]], top: int) -> List[Dict[str, Any]]:
    scores = output.reshape(-1).astype(np.float64)
    probs = scores if _looks_like_probabilities(scores) else _softmax(scores)
    best = np.argsort(-probs, kind="stable")[:top]
    return [{"index": int(i), "label": labels[i] if labels and i < len(labels) else str(int(i)),
             "probability": float(probs[i])} for i in best]


def _is_classifier(model, output: np.ndarray) -> bool:
    labels = model.metadata.get("labels")
    task = model.metadata.get("task")
    if task is not None and task != "classification":
        return False
    flat = output.shape[0] == 1 and int(np.prod(output.shape[1:])) == max(output.shape[1:], default=0)
    return flat and (task == "classification" or (isinstance(labels, list) and len(labels) == output.size))


def _statistics(output: np.ndarray) -> Dict[str, Any]:
    return {"shape": list(output.shape), "min": float(output.min()), "max": float(output.max()),
            "mean": float(output.mean()), "std": float(output.std())}


# ---------------------------------------------------------------------------- run

def cmd_run(args: argparse.Namespace) -> int:
    from pyconv.errors import ImageError, InputError, ModelError
    from pyconv.io.images import load_image

    _set_threads(args.threads)
    model = _load_model(args.model, args)
    if len(model.input_names) != 1:
        raise UsageError(f"pyconv run feeds one image per call; this model has inputs {model.input_names}")
    name = model.input_names[0]
    paths = _image_paths(args.images)
    preprocess = model.metadata.get("preprocess") or {}
    progress = _Progress(len(paths), enabled=len(paths) >= PROGRESS_FROM and not args.quiet)
    entries: List[Optional[Dict[str, Any]]] = [None] * len(paths)
    outputs_of: Dict[int, Dict[str, np.ndarray]] = {}
    pending: List[Tuple[int, np.ndarray]] = []   # decoded images of one shape, not run yet
    shown = 0

    def fail(i: int, exc: Exception) -> None:
        entries[i] = {"image": paths[i], "error": str(exc)}

    def run_one(i: int, x: np.ndarray) -> None:
        try:
            outputs_of[i] = model.run({name: x})
        except (InputError, ModelError) as exc:  # wrong channels, or too small for the network
            fail(i, InputError(f"{paths[i]}: the image (preprocessed to shape {list(x.shape)}) does not fit "
                               f"the model: {exc}"))

    def run_pending() -> None:
        """One model call for the pending images; one call per image when the batch fails (to
        name the image at fault) or an output is not batch-major."""
        batch = list(pending)
        pending.clear()
        if len(batch) > 1:
            try:
                outputs = model.run({name: np.concatenate([x for _, x in batch])})
            except (InputError, ModelError):
                outputs = None
            if outputs is not None and all(v.ndim and v.shape[0] == len(batch) for v in outputs.values()):
                for j, (i, _) in enumerate(batch):
                    outputs_of[i] = {k: v[j:j + 1] for k, v in outputs.items()}
                return
        for i, x in batch:
            run_one(i, x)

    def show_ready() -> None:
        """Report finished images in their order (a batch finishes several at once)."""
        nonlocal shown
        while shown < len(paths) and (entries[shown] is not None or shown in outputs_of):
            i = shown
            if entries[i] is None:
                entries[i] = _result_entry(model, paths[i], outputs_of[i], args.top)
            progress.clear()
            if "error" in entries[i]:
                print(f"error: {entries[i]['error']}", file=sys.stderr)
            elif not args.json:
                _print_result(entries[i], show_name=len(paths) > 1)
            shown += 1
            progress.update(shown)

    for i, path in enumerate(paths):
        try:
            try:
                x = load_image(path, preprocess)[None]
            except ValueError as exc:
                if isinstance(exc, ImageError):
                    raise
                raise InputError(f"the model's preprocessing metadata is invalid: {exc}") from None
        except (ImageError, InputError) as exc:
            fail(i, exc)
            show_ready()
            continue
        if pending and (x.shape != pending[0][1].shape or len(pending) >= args.batch):
            run_pending()
            show_ready()
        pending.append((i, x))
    run_pending()
    show_ready()
    results = [e for e in entries if e is not None]
    if args.json:
        print(json.dumps(results if len(paths) > 1 else results[0], indent=2))
    if args.save:
        saved = {k: [outputs_of[i][k] for i in sorted(outputs_of)] for k in model.output_names}
        _save_outputs(args.save, saved, [paths[i] for i in sorted(outputs_of)])
    return 1 if any("error" in e for e in results) else 0


def _result_entry(model, path: str, outputs: Mapping[str, np.ndarray], top: int) -> Dict[str, Any]:
    """What ``pyconv run`` reports for one image: top-k labels for classifiers, else statistics."""
    entry: Dict[str, Any] = {"image": path}
    first = outputs[model.output_names[0]]
    if _is_classifier(model, first):
        entry["top"] = _classify(first, model.metadata.get("labels"), top)
    else:
        entry["outputs"] = {k: _statistics(v) for k, v in outputs.items()}
    return entry


def _print_result(entry: Mapping[str, Any], show_name: bool) -> None:
    if show_name:
        print(f"{entry['image']}:")
    indent = "  " if show_name else ""
    for item in entry.get("top", []):
        print(f"{indent}{item['probability']:8.4f}  {item['label']} ({item['index']})")
    for name, s in entry.get("outputs", {}).items():
        print(f"{indent}{name}: shape {s['shape']}  min {s['min']:.4g}  max {s['max']:.4g}  "
              f"mean {s['mean']:.4g}  std {s['std']:.4g}")


def _save_outputs(path: str, saved: Mapping[str, List[np.ndarray]], images: List[str]) -> None:
    """Outputs stacked over images (one array per output), or one array per image when shapes differ."""
    arrays: Dict[str, np.ndarray] = {"images": np.array(images, dtype=str)}
    for name, values in saved.items():
        if values and all(v.shape == values[0].shape for v in values):
            arrays[name] = np.concatenate(values)
        else:
            arrays.update({f"{name}/{i}": v for i, v in enumerate(values)})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# ---------------------------------------------------------------------------- summary

def cmd_summary(args: argparse.Namespace) -> int:
    """Reads and validates the model but does not prepare its ops (no weight transforms)."""
    from pyconv.graph import passes
    from pyconv.graph.format import available_memory, read_graph
    from pyconv.graph.plan import memory_report, plan_buffers
    from pyconv.graph.shapes import bind_symbols, input_shapes_for, probe_symbols
    from pyconv.graph.summary import describe_inputs, format_summary, rows_as_json, summarize, totals
    from pyconv.graph.validate import validate

    graph = read_graph(args.model)
    checked = validate(graph)
    if args.input_shape:
        shapes = _parse_shape(args.input_shape, [t.name for t in graph.inputs])
        bind_symbols(graph, shapes)
    else:
        shapes = input_shapes_for(graph, probe_symbols(graph))
    rows = summarize(graph, shapes, symbolic=not args.input_shape)
    optimized = passes.optimize(graph, checked.order, checked.shapes)  # reuses validation's order and shapes
    memory = memory_report(plan_buffers(optimized, shapes, available_memory()), len(graph.nodes),
                           len(optimized.nodes))
    if args.json:
        print(json.dumps({"layers": rows_as_json(rows), "totals": totals(rows), "memory": memory,
                          "input_shapes": {k: list(v) for k, v in shapes.items()}}, indent=2))
    else:
        print(format_summary(rows, memory, describe_inputs(graph, shapes)))
    return 0


# ---------------------------------------------------------------------------- bench

def _peak_rss_bytes() -> Optional[int]:
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cmd_bench(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    start = time.perf_counter()
    # the loader, the kernels and the op registry are imported once per process: timed apart from loading
    import pyconv.graph.executor  # noqa: F401
    import pyconv.ops  # noqa: F401
    import_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model = _load_model(args.model, args)
    load_seconds = time.perf_counter() - start
    shapes = model.resolve_input_shapes(_parse_shape(args.input_shape, model.input_names) if args.input_shape else None)
    if args.batch != 1:
        shapes = {k: (args.batch,) + tuple(v[1:]) for k, v in shapes.items()}
    rng = np.random.default_rng(0)
    feed = {k: rng.standard_normal(v, dtype=np.float32) for k, v in shapes.items()}
    for _ in range(max(args.warmup, 1)):
        model.run(feed)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        model.run(feed)
        times.append(time.perf_counter() - t0)
    times_ms = np.array(times) * 1e3
    import pyconv

    batch = next(iter(shapes.values()))[0]
    memory = model.memory_plan(shapes)
    report: Dict[str, Any] = {
        "model": args.model, "input_shapes": {k: list(v) for k, v in shapes.items()},
        "threads": pyconv.get_num_threads(), "runs": args.runs, "load_ms": load_seconds * 1e3,
        "import_ms": import_seconds * 1e3,
        "latency_ms": {"median": float(np.median(times_ms)), "min": float(times_ms.min()),
                       "p90": float(np.percentile(times_ms, 90)), "p99": float(np.percentile(times_ms, 99)),
                       "mean": float(times_ms.mean())},
        "throughput_per_s": batch * 1e3 / float(np.median(times_ms)),
        "memory": {"weights_bytes": memory["weight_bytes"], "activations_bytes": memory["activation_bytes"],
                   "peak_rss_bytes": _peak_rss_bytes()},
    }
    if args.per_layer:
        report["layers"] = model.profile(feed, runs=max(3, min(args.runs, 10)))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_bench(report)
    return 0


def _print_bench(r: Mapping[str, Any]) -> None:
    lat, mem = r["latency_ms"], r["memory"]
    print(f"model: {r['model']}  inputs: {r['input_shapes']}  threads: {r['threads']}  runs: {r['runs']}")
    print(f"load: {r['load_ms']:.1f} ms (after {r['import_ms']:.1f} ms of one-time imports)")
    print(f"latency: median {lat['median']:.3f} ms  min {lat['min']:.3f}  p90 {lat['p90']:.3f}  "
          f"p99 {lat['p99']:.3f}  mean {lat['mean']:.3f}")
    print(f"throughput: {r['throughput_per_s']:.1f} images/s")
    rss = f"{mem['peak_rss_bytes'] / 2**20:.1f} MiB" if mem["peak_rss_bytes"] else "n/a"
    print(f"memory: weights {mem['weights_bytes'] / 2**20:.2f} MiB, activations "
          f"{mem['activations_bytes'] / 2**20:.2f} MiB, peak RSS {rss}")
    if "layers" in r:
        total = sum(layer["seconds"] for layer in r["layers"]) or 1.0
        width = max(len(layer["node"]) for layer in r["layers"])
        print(f"\n{'node'.ljust(width)}  {'op':<18} {'ms':>9} {'share':>6}")
        for layer in r["layers"]:
            print(f"{layer['node'].ljust(width)}  {layer['op']:<18} {layer['seconds'] * 1e3:9.3f} "
                  f"{100 * layer['seconds'] / total:5.1f}%")


# ---------------------------------------------------------------------------- info

def cmd_info(args: argparse.Namespace) -> int:
    from pyconv import _config, registry

    if args.json:
        print(json.dumps({**_config.config(), "ops": list(registry.names())}, indent=2, default=str))
    else:
        _config.show_config()
        print(f"{'ops:':<16} {', '.join(registry.names())}")
    return 0


# ---------------------------------------------------------------------------- parser

def _add_convert(sub, argv: Sequence[str]) -> None:
    """The convert subcommand lives with the ONNX importer; import it only when it is used."""
    p = sub.add_parser("convert", help="convert an ONNX model to a pyconv .npz (needs the onnx package)")
    if argv[:1] == ["convert"]:
        from pyconv.convert import command

        command.add_arguments(p)
        p.set_defaults(func=command.run)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    from pyconv._version import __version__

    parser = argparse.ArgumentParser(prog="pyconv", description="Run convolutional networks on the CPU.")
    parser.add_argument("--version", action="version", version=f"pyconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True

    p = sub.add_parser("run", help="classify images (or show output statistics)")
    p.add_argument("model", help="model file (.npz)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--top", type=int, default=5, help="labels to show per image (classifiers; default 5)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--threads", type=int, help="threads to use (default: all available CPUs)")
    p.add_argument("--save", metavar="OUT.npz", help="save raw outputs to an .npz file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--batch", type=int, default=1,
                   help="run up to this many images of the same size per model call (default 1)")
    p.add_argument("--no-winograd", action="store_true", help="keep convolutions off Winograd")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("summary", help="per-layer table: op, output shape, parameters, MACs, receptive field")
    p.add_argument("model")
    p.add_argument("--input-shape", help="e.g. 1,3,224,224 (default: batch 1, the model's input size)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("bench", help="latency, throughput and memory of a model")
    p.add_argument("model")
    p.add_argument("--threads", type=int)
    p.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-shape", help="e.g. 1,3,224,224")
    p.add_argument("--per-layer", action="store_true", help="time every node")
    p.add_argument("--no-winograd", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="build configuration and the ops this pyconv implements")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    _add_convert(sub, argv)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pyconv`` console script; returns the exit code."""
    from pyconv.errors import PyconvError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    for option in ("threads", "runs", "top", "batch"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            parser.error(f"--{option} must be at least 1, got {value}")
    try:
        return int(args.func(args) or 0)
    except FileNotFoundError as exc:
        print(f"pyconv: error: no such file: {exc.filename or exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pyconv summary m.npz | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a directory given as a model, no permission, disk errors
        print(f"pyconv: error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"pyconv: error: {exc}", file=sys.stderr)
        return 2
    except PyconvError as exc:
        print(f"pyconv: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyconv: interrupted", file=sys.stderr)
        return 130
