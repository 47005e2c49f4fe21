"""Graph order and shape inference, with symbolic input dimensions.

Inputs may declare symbolic dimensions ("N", "H", "W").  Shapes are inferred
for concrete values of those symbols: the ones of an actual call (planning),
or probe values when a file is validated (batch 1, spatial sizes from the
model's preprocessing metadata, else 224).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from pyconv import registry
from pyconv.errors import InputError, ModelError
from pyconv.graph.format import Graph, Node

Shape = Tuple[int, ...]
BATCH_SYMBOLS = ("N", "batch", "B")
DEFAULT_SPATIAL_PROBE = 224


def topological_order(graph: Graph) -> List[Node]:
    """Nodes ordered so every tensor is produced before it is read (stable w.r.t. file order).

    Raises ModelError naming the nodes on a cycle."""
    producer = {t: n for n in graph.nodes for t in n.outputs}
    pending = {n.name: sum(1 for t in n.inputs if t in producer) for n in graph.nodes}
    consumers: Dict[str, List[Node]] = {}
    for n in graph.nodes:
        for t in n.inputs:
            if t in producer:
                consumers.setdefault(producer[t].name, []).append(n)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    ready = sorted((n for n in graph.nodes if pending[n.name] == 0), key=lambda n: index[n.name], reverse=True)
    order: List[Node] = []
    while ready:
        node = ready.pop()
        order.append(node)
        released = []
        for c in consumers.get(node.name, ()):
            pending[c.name] -= 1
            if pending[c.name] == 0:
                released.append(c)
        ready.extend(sorted(released, key=lambda n: index[n.name], reverse=True))
    if len(order) != len(graph.nodes):
        stuck = sorted(name for name, count in pending.items() if count > 0)
        raise ModelError(f"the graph has a cycle through node(s) {stuck}; every tensor must be computed "
                         "from the inputs without depending on itself")
    return order


def probe_symbols(graph: Graph) -> Dict[str, int]:
    """Example values for every symbolic input dimension (used to validate and summarise)."""
    crop = (graph.metadata.get("preprocess") or {}).get("crop") if isinstance(graph.metadata, dict) else None
    values: Dict[str, int] = {}
    for t in graph.inputs:
        for axis, d in enumerate(t.shape):
            if isinstance(d, str) and d not in values:
                if d in BATCH_SYMBOLS or axis == 0:
                    values[d] = 1
                elif (isinstance(crop, list) and len(crop) == 2 and len(t.shape) == 4 and axis >= 2
                      and all(isinstance(c, int) and c > 0 for c in crop)):
                    values[d] = crop[axis - 2]
                else:
                    values[d] = DEFAULT_SPATIAL_PROBE
    return values


def input_shapes_for(graph: Graph, symbols: Mapping[str, int]) -> Dict[str, Shape]:
    """Concrete input shapes for given symbol values."""
    return {t.name: tuple(symbols[d] if isinstance(d, str) else d for d in t.shape) for t in graph.inputs}


def bind_symbols(graph: Graph, shapes: Mapping[str, Sequence[int]]) -> Dict[str, int]:
    """Symbol values implied by actual input shapes; InputError when they contradict the model."""
    symbols: Dict[str, int] = {}
    for t in graph.inputs:
        shape = tuple(shapes[t.name])
        if len(shape) != len(t.shape):
            raise InputError(f"input {t.name!r} must have {len(t.shape)} dimensions {list(t.shape)}, "
                             f"got shape {shape}")
        for axis, (want, got) in enumerate(zip(t.shape, shape)):
            if isinstance(want, int):
                if want != got:
                    raise InputError(f"input {t.name!r} must have shape {list(t.shape)}: axis {axis} is {got}, "
                                     f"the model needs {want}")
            elif symbols.setdefault(want, got) != got:
                raise InputError(f"input {t.name!r}: dimension {want!r} is {got} here but "
                                 f"{symbols[want]} elsewhere; equal symbols must have equal sizes")
            if got < 1:
                raise InputError(f"input {t.name!r} has an empty axis {axis} (shape {shape})")
    return symbols


def weight_shapes(graph: Graph, node: Node) -> Dict[str, Shape]:
    return {role: tuple(graph.weights[key].shape) for role, key in node.weights.items()}


def infer_node(graph: Graph, node: Node, in_shapes: List[Shape]) -> List[Shape]:
    """Output shapes of one node; ModelError naming the node when they cannot be inferred."""
    spec = registry.get(node.op)
    where = f"node {node.name!r} ({node.op}): "
    attrs = spec.resolve_attrs(node.attrs, where)
    try:
        outs = [tuple(int(d) for d in s) for s in spec.infer_shape(in_shapes, weight_shapes(graph, node), attrs)]
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:
        raise ModelError(f"{where}cannot infer the output shape from input shapes {in_shapes}: {exc}") from None
    if len(outs) != len(node.outputs):
        raise ModelError(f"{where}produces {len(outs)} output(s) but names {len(node.outputs)}: {node.outputs}")
    for s in outs:
        if any(d < 1 for d in s):
            raise ModelError(f"{where}output shape {s} has an empty axis for input shapes {in_shapes}; "
                             "the input is too small for this layer")
    return outs


def infer_shapes(graph: Graph, input_shapes: Mapping[str, Shape],
                 order: Optional[List[Node]] = None) -> Dict[str, Shape]:
    """Shape of every tensor for concrete input shapes."""
    shapes: Dict[str, Shape] = {name: tuple(s) for name, s in input_shapes.items()}
    for node in order if order is not None else topological_order(graph):
        for t, s in zip(node.outputs, infer_node(graph, node, [shapes[t] for t in node.inputs])):
            shapes[t] = s
    return shapes


def nbytes(shape: Shape, itemsize: int = 4) -> int:
    return math.prod(shape) * itemsize


def _dim_expression(symbol: str, s0: int, d0: int, s1: int, d1: int) -> str:
    """The affine expression ``a*symbol + c`` through (s0, d0) and (s1, d1), e.g. "H/2", "W-2", "2*N"."""
    from fractions import Fraction  # summaries only: keeps it (and decimal) out of loading

    slope = Fraction(d1 - d0, s1 - s0)
    offset = d0 - slope * s0
    if offset.denominator != 1 or slope <= 0:
        return "?"
    if slope == 1:
        term = symbol
    elif slope.denominator == 1:
        term = f"{slope.numerator}*{symbol}"
    elif slope.numerator == 1:
        term = f"{symbol}/{slope.denominator}"
    else:
        term = f"{slope.numerator}*{symbol}/{slope.denominator}"
    return term + (f"{int(offset):+d}" if offset else "")


def symbolic_shapes(graph: Graph, order: Optional[List[Node]] = None) -> Dict[str, Tuple[Union[int, str], ...]]:
    """Every tensor's shape in terms of the input symbols: ``("N", 64, "H/2", "W/2")``.

    Inferred at the probe values and again with each symbol doubled: a dimension that
    does not move is an int; one that moves with one symbol is written as that symbol,
    an affine expression of it ("H/2", "W/2-2", "2*N"), exact for sizes the strides
    divide; anything else is "?".  A symbol the graph cannot vary (e.g. a
    classifier's fixed input size behind ``flatten``) is treated as its probe value."""
    order = order if order is not None else topological_order(graph)
    base = probe_symbols(graph)
    reference = infer_shapes(graph, input_shapes_for(graph, base), order)
    variants: Dict[str, Tuple[int, Dict[str, Shape]]] = {}
    for symbol, value in base.items():
        moved = {**base, symbol: 2 * value}
        try:
            variants[symbol] = (2 * value, infer_shapes(graph, input_shapes_for(graph, moved), order))
        except ModelError:
            continue
    result = {}
    for tensor, shape in reference.items():
        dims: List[Union[int, str]] = []
        for axis, d0 in enumerate(shape):
            movers = [s for s, (_, shapes) in variants.items() if shapes[tensor][axis] != d0]
            if not movers:
                dims.append(d0)
            elif len(movers) == 1:
                s1, shapes = variants[movers[0]]
                dims.append(_dim_expression(movers[0], base[movers[0]], d0, s1, shapes[tensor][axis]))
            else:
                dims.append("?")
        result[tensor] = tuple(dims)
    return result
