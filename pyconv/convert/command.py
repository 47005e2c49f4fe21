"""``pyconv convert model.onnx out.npz``: the command-line front of the ONNX importer.

Imported by ``pyconv.cli`` only when the subcommand is used (it needs ``onnx``).
Preprocessing options are stored in the model's metadata (``preprocess``, read by
``pyconv run``; keys documented in :mod:`pyconv.io.images`), ``--labels`` as
``labels``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence, Union

_DIM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _usage_error(message: str) -> Exception:
    from pyconv.cli import UsageError

    return UsageError(message)


def parse_input_shapes(items: Optional[Sequence[str]]) -> Dict[str, List[Union[int, str]]]:
    """``["input:1x3x224x224", "mask:1,1,H,W"]`` (``;`` also separates) -> ``{name: dims}``.

    A shape without ``NAME:`` applies to the model's only input (key ``""``); dims are
    ints or symbolic names (which stay dynamic)."""
    shapes: Dict[str, List[Union[int, str]]] = {}
    for item in items or ():
        for part in filter(None, (p.strip() for p in item.split(";"))):
            name, _, dims_text = part.rpartition(":")  # input names may hold ":" (TensorFlow's "x:0")
            dims: List[Union[int, str]] = []
            for d in dims_text.split(",") if "," in dims_text else dims_text.split("x"):
                if d.isdigit() and int(d) > 0:
                    dims.append(int(d))
                elif _DIM.match(d):
                    dims.append(d)
                else:
                    raise _usage_error(f"--input-shape: cannot read {part!r}; write NAME:1x3x224x224 "
                                       "(dims are positive ints or names such as N, H, W)")
            if name in shapes:
                raise _usage_error(f"--input-shape: {name or 'the input'!r} is given twice")
            shapes[name] = dims
    if "" in shapes and len(shapes) > 1:
        raise _usage_error("--input-shape: with several shapes, name each input (NAME:1x3x224x224)")
    return shapes


def _numbers(text: str, option: str, count: Optional[int] = None) -> List[float]:
    try:
        values = [float(Fraction(v.strip())) for v in text.split(",")]
    except (ValueError, ZeroDivisionError):
        raise _usage_error(f"{option}: cannot read {text!r}; write comma-separated numbers") from None
    if count is not None and len(values) not in (1, count) or any(not math.isfinite(v) for v in values):
        raise _usage_error(f"{option}: expected 1 or {count} finite numbers, got {text!r}")
    return values


def _size(text: str, option: str) -> List[int]:
    try:
        values = [int(v) for v in re.split(r"[x,]", text)]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise _usage_error(f"{option}: write H,W (or one number for a square), got {text!r}")
    return values


def read_labels(path: str) -> List[str]:
    """Class names: a JSON list (``.json``) or one per line (blank lines at the end ignored)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        value = json.loads(text)
        if isinstance(value, dict):
            value = [value[k] for k in sorted(value, key=lambda k: int(k))]
        if not isinstance(value, list):
            raise _usage_error(f"--labels: {path} must hold a JSON list of names")
        return [str(v) for v in value]
    lines = text.splitlines()  # any line ending; blank lines inside keep their index
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def preprocess_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The ``preprocess`` metadata the options ask for (only the keys given)."""
    pre: Dict[str, Any] = {}
    if args.size and args.resize:
        raise _usage_error("--size and --resize both resize the image; give one")
    if args.size:
        pre["resize"] = _size(args.size, "--size")
    if args.resize:
        pre["resize"] = _size(args.resize, "--resize")[0] if re.fullmatch(r"\d+", args.resize) else \
            _size(args.resize, "--resize")
    if args.crop:
        pre["crop"] = _size(args.crop, "--crop")
    if args.channel_order:
        pre["channel_order"] = args.channel_order.upper()
    if args.scale:
        pre["scale"] = _numbers(args.scale, "--scale", 1)[0]
    if args.mean:
        pre["mean"] = _numbers(args.mean, "--mean", 3)
    if args.std:
        pre["std"] = _numbers(args.std, "--std", 3)
        if 0.0 in pre["std"]:
            raise _usage_error("--std must not contain 0")
    if args.grayscale:
        pre["grayscale"] = True
    return pre


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pyconv convert``."""
    parser.add_argument("onnx_model", help="the ONNX file to convert")
    parser.add_argument("output", help="the pyconv model to write (.npz)")
    parser.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                        help="fix input dimensions (names such as N, H, W stay dynamic); repeat for several inputs")
    parser.add_argument("--labels", metavar="labels.txt", help="class names, one per line (or a JSON list)")
    group = parser.add_argument_group("preprocessing stored in the model (used by `pyconv run`)")
    group.add_argument("--size", metavar="H,W", help="resize images to exactly H x W")
    group.add_argument("--resize", metavar="S|H,W", help="torchvision-style resize: shorter side to S (or H,W)")
    group.add_argument("--crop", metavar="H,W", help="centre crop after resizing")
    group.add_argument("--mean", metavar="R,G,B", help="per-channel mean subtracted after --scale")
    group.add_argument("--std", metavar="R,G,B", help="per-channel standard deviation divided by")
    group.add_argument("--scale", metavar="1/255", help="factor applied to the 0..255 pixel values first")
    group.add_argument("--channel-order", choices=["RGB", "BGR", "rgb", "bgr"], help="channel order the model expects")
    group.add_argument("--grayscale", action="store_true", help="the model takes one grayscale channel")
    parser.add_argument("--keep-nhwc", action="store_true",
                        help="keep NHWC inputs as they are (by default an input the model transposes to NCHW "
                             "right away becomes an NCHW input)")
    parser.add_argument("--verify", action="store_true",
                        help="run the ONNX model with onnxruntime and the converted one on a random input and "
                             "report the largest difference")
    parser.add_argument("--json", action="store_true", help="print the conversion report as JSON")


def _verify(onnx_path: str, graph) -> Dict[str, float]:
    """Max |difference| per output between onnxruntime and pyconv on one random input."""
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        raise _usage_error("--verify needs onnxruntime (pip install onnxruntime)") from None
    from pyconv.graph.executor import Model

    model = Model(graph)
    rng = np.random.default_rng(0)
    feeds = {}
    for t in graph.inputs:
        dims = [d if isinstance(d, int) else (1 if i == 0 else 224) for i, d in enumerate(t.shape)]
        feeds[t.name] = rng.standard_normal(dims).astype(np.float32)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    layouts = graph.metadata.get("source", {}).get("input_layout", {})
    onnx_feeds = {k: v.transpose(0, 2, 3, 1) if layouts.get(k) == "NHWC" else v for k, v in feeds.items()}
    expected = dict(zip(names, session.run(names, onnx_feeds)))
    actual = model.run(feeds)
    return {k: float(np.max(np.abs(actual[k].astype(np.float64) - v))) if v.size else 0.0
            for k, v in expected.items()}


def run(args: argparse.Namespace) -> int:
    """Convert ``args.onnx_model`` to ``args.output``; prints a short report."""
    from pyconv.convert.onnx_import import emit_graph, onnx_to_ir
    from pyconv.graph.format import save_graph

    if not os.path.isfile(args.onnx_model):
        raise FileNotFoundError(args.onnx_model)
    extra: Dict[str, Any] = {}
    preprocess = preprocess_from_args(args)
    if preprocess:
        extra["preprocess"] = preprocess
    if args.labels:
        if not os.path.isfile(args.labels):
            raise FileNotFoundError(args.labels)
        extra["labels"] = read_labels(args.labels)
    shapes = parse_input_shapes(args.input_shape)

    start = time.perf_counter()
    ir, input_shapes, metadata, fused = onnx_to_ir(args.onnx_model, shapes, nchw_inputs=not args.keep_nhwc)
    metadata.update(extra)
    graph = emit_graph(ir, input_shapes, metadata)
    save_graph(graph, args.output)
    elapsed = time.perf_counter() - start

    params = sum(int(w.size) for w in graph.weights.values())
    ops: Dict[str, int] = {}
    for node in graph.nodes:
        ops[node.op] = ops.get(node.op, 0) + 1
    report: Dict[str, Any] = {
        "input": args.onnx_model, "output": args.output, "seconds": round(elapsed, 3),
        "inputs": {t.name: list(t.shape) for t in graph.inputs}, "outputs": [o.name for o in graph.outputs],
        "nodes": len(graph.nodes), "parameters": params, "ops": ops,
        "fused": {k: v for k, v in fused.items() if v}, "labels": len(metadata.get("labels") or []),
    }
    if args.verify:
        report["max_abs_difference"] = _verify(args.onnx_model, graph)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.onnx_model} -> {args.output} in {elapsed:.2f} s")
    print(f"  inputs:     {', '.join(f'{k} {v}' for k, v in report['inputs'].items())}")
    print(f"  outputs:    {', '.join(report['outputs'])}")
    print(f"  nodes:      {report['nodes']} ({', '.join(f'{k} x{v}' for k, v in sorted(ops.items()))})")
    print(f"  parameters: {params:,}")
    if report["fused"]:
        print(f"  fused:      {', '.join(f'{k} x{v}' for k, v in report['fused'].items())}")
    if report["labels"]:
        print(f"  labels:     {report['labels']}")
    if preprocess:
        print(f"  preprocess: {json.dumps(preprocess)}")
    if args.verify:
        worst = max(report["max_abs_difference"].values(), default=0.0)
        print(f"  verify:     max |pyconv - onnxruntime| = {worst:.3g} on a random input")
    sys.stdout.flush()
    return 0
