"""Check a graph against the op registry before anything runs.

Problems are collected and reported together, each naming the node and what
to fix.  Unknown ops come first, as :class:`UnsupportedOpError` listing every
one of them; then structure (names, inputs, weights, attributes); then cycles
and shapes, which only make sense once the structure is sound.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, NamedTuple

import numpy as np

from pyconv import registry
from pyconv.errors import ModelError, UnsupportedOpError
from pyconv.graph.format import GRAPH_KEY, Graph, Node
from pyconv.graph.shapes import Shape, infer_shapes, input_shapes_for, probe_symbols, topological_order

JSON_SCALARS = (int, float, str, bool, type(None))
MAX_LISTED = 20  # problems spelled out in one error message


class ModelWarning(UserWarning):
    """A model loads but something in it is suspicious (e.g. non-finite weights)."""


def _is_json_value(value, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if isinstance(value, JSON_SCALARS):
        return True
    if isinstance(value, list):
        return all(_is_json_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v, depth + 1) for k, v in value.items())
    return False


def _raise(problems: List[str], exc_type=ModelError) -> None:
    if len(problems) == 1:
        raise exc_type(problems[0])
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise exc_type(f"{len(problems)} problems in the model:\n  - " + "\n  - ".join(shown) + more)


def check_ops(graph: Graph) -> None:
    """UnsupportedOpError listing every node whose op pyconv does not implement."""
    known = registry.all_ops()
    unknown = [f"node {n.name!r} uses op {n.op!r}" for n in graph.nodes if n.op not in known]
    if unknown:
        missing_ops = sorted({n.op for n in graph.nodes if n.op not in known})
        raise UnsupportedOpError(
            f"{len(unknown)} node(s) use ops pyconv does not implement ({', '.join(missing_ops)}):\n  - "
            + "\n  - ".join(unknown) + f"\npyconv implements: {', '.join(sorted(known))}")


def _structure_problems(graph: Graph) -> List[str]:
    problems: List[str] = []
    known = registry.all_ops()
    produced: Dict[str, str] = {}
    for t in graph.inputs:
        if t.name in produced:
            problems.append(f"graph input {t.name!r} is declared twice")
        produced[t.name] = "graph input"
    node_names = set()
    for n in graph.nodes:
        if n.name in node_names:
            problems.append(f"node name {n.name!r} is used twice; node names must be unique")
        node_names.add(n.name)
        for t in n.outputs:
            if t in produced:
                problems.append(f"node {n.name!r} ({n.op}): output tensor {t!r} is already produced by "
                                f"{produced[t]}; give it a unique name")
            else:
                produced[t] = f"node {n.name!r}"
    used_keys = set()
    for n in graph.nodes:
        spec = known[n.op]
        where = f"node {n.name!r} ({n.op})"
        lo, hi = spec.input_range
        if len(n.inputs) < lo or (hi is not None and len(n.inputs) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            problems.append(f"{where}: takes {want} input(s), got {len(n.inputs)}: {n.inputs}")
        for t in n.inputs:
            if t not in produced:
                problems.append(f"{where}: input tensor {t!r} is not a graph input nor any node's output")
        try:
            attrs = spec.resolve_attrs(n.attrs, f"{where}: ")
        except ModelError as exc:
            problems.append(str(exc))
            attrs = None
        bad_attrs = [k for k, v in n.attrs.items() if not _is_json_value(v)]
        if bad_attrs:
            problems.append(f"{where}: attribute(s) {bad_attrs} are not JSON values")
        if attrs is not None:
            try:
                expected = spec.outputs_for(attrs)
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(f"{where}: bad attributes: {exc}")
                expected = len(n.outputs)
            if expected != len(n.outputs):
                problems.append(f"{where}: produces {expected} output(s) but names {len(n.outputs)}: {n.outputs}")
        for role in spec.required_weights:
            if role not in n.weights:
                problems.append(f"{where}: missing weight {role!r} (expected array key "
                                f"'{n.name}.{role}')")
        weight_names = spec.weight_names
        for role, key in n.weights.items():
            if role not in weight_names:
                problems.append(f"{where}: op {n.op!r} has no weight {role!r}; its weights are "
                                f"{list(weight_names)}")
            if key not in graph.weights:
                problems.append(f"{where}: weight {role!r} refers to array {key!r}, which the file does not hold")
                continue
            used_keys.add(key)
            arr = graph.weights[key]
            if arr.dtype != np.float32:
                problems.append(f"{where}: weight {role!r} ({key!r}) has dtype {arr.dtype}; store float32 "
                                "(e.g. array.astype(np.float32))")
    unused = sorted(set(graph.weights) - used_keys - {GRAPH_KEY})
    if unused:
        problems.append(f"array(s) {unused[:10]}{' ...' if len(unused) > 10 else ''} are not used by any node; "
                        "remove them or attach them to a node's 'weights'")
    out_names = set()
    for o in graph.outputs:
        if o.name in out_names:
            problems.append(f"graph output name {o.name!r} is used twice")
        out_names.add(o.name)
        if o.tensor not in produced:
            problems.append(f"graph output {o.name!r} reads tensor {o.tensor!r}, which nothing produces")
    if not graph.inputs and not any(registry.all_ops()[n.op].input_range[0] == 0 for n in graph.nodes):
        problems.append("the graph declares no inputs")
    return problems


def warn_non_finite(graph: Graph) -> None:
    """Warn (ModelWarning) about weight arrays holding NaN or infinity."""
    # min and max are NaN when any element is, and +-inf when any element is: no temporaries
    bad = [k for k, a in graph.weights.items()
           if a.dtype.kind == "f" and a.size and not (np.isfinite(a.min()) and np.isfinite(a.max()))]
    if bad:
        owners = {key: n.name for n in graph.nodes for key in n.weights.values()}
        listed = ", ".join(f"{k!r} (node {owners.get(k, '?')!r})" for k in bad[:10])
        warnings.warn(f"weights hold NaN or infinity: {listed}; outputs will not be finite", ModelWarning,
                      stacklevel=3)


class Checked(NamedTuple):
    """What validation computed on the way: later load steps reuse it instead of recomputing."""

    order: List[Node]  # topological order
    shapes: Dict[str, Shape]  # every tensor's shape at the probe sizes of symbolic dimensions


def validate(graph: Graph, check_values: bool = True) -> Checked:
    """Raise a ModelError subclass describing every problem; warn about non-finite weights.

    Checks: known ops, unique node/tensor names, inputs that exist, input counts,
    attributes, missing/unknown/unused weights and their dtypes, cycles, and shape
    inference (weight shapes vs attributes) at probe values of symbolic dimensions.
    ``check_values=False`` leaves out the one check that reads weight values
    (:func:`warn_non_finite`), for callers that run it once the file's CRCs are verified."""
    check_ops(graph)
    problems = _structure_problems(graph)
    if problems:
        _raise(problems)
    order = topological_order(graph)
    symbols = probe_symbols(graph)
    try:
        shapes = infer_shapes(graph, input_shapes_for(graph, symbols), order)
    except ModelError as exc:
        if symbols:
            probe = ", ".join(f"{k}={v}" for k, v in symbols.items())
            raise ModelError(f"{exc} (symbolic input dimensions probed with {probe})") from None
        raise
    if check_values:
        warn_non_finite(graph)
    return Checked(order, shapes)
