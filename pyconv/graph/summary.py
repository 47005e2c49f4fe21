"""Per-layer summary of a model: op, output shape, parameters, MACs, receptive field.

Everything is read from the op registry (``count`` and ``window``) on the
graph as stored in the file (before folding and fusion), so parameter counts
are the model's own: a bias counts only where the file has one.

Receptive field: a tensor's field (in input pixels) grows by ``(k_eff - 1) * jump``
through each windowed op, ``k_eff = dilation * (kernel - 1) + 1``, and the jump
(distance in input pixels between neighbouring positions) multiplies by the stride.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from pyconv import registry
from pyconv.graph.format import Graph
from pyconv.graph.shapes import Shape, infer_shapes, symbolic_shapes, topological_order, weight_shapes

GLOBAL = math.inf  # receptive field of a layer that sees the whole input (after global pooling)


@dataclass
class LayerRow:
    name: str
    op: str
    output_shapes: List[Shape]
    params: int
    macs: int
    adds: int
    receptive_field: Optional[Tuple[float, float]]  # (height, width) in input pixels; None when not spatial
    symbolic_shapes: Optional[List[Tuple[Union[int, str], ...]]] = None  # e.g. ("N", 64, "H/2", "W/2")

    def field_text(self) -> Optional[str]:
        if self.receptive_field is None:
            return None
        h, w = self.receptive_field
        return "global" if GLOBAL in (h, w) else f"{int(h)}x{int(w)}"


def _reduces_to_a_point(in_shapes: List[Shape], out_shapes: List[Shape]) -> bool:
    return (len(in_shapes) == 1 and len(in_shapes[0]) == 4 and in_shapes[0][2:] != (1, 1)
            and all(len(s) == 4 and s[2:] == (1, 1) for s in out_shapes))


def summarize(graph: Graph, input_shapes: Mapping[str, Shape], symbolic: bool = False) -> List[LayerRow]:
    """One row per node, in execution order; ``symbolic`` adds shapes in terms of the input symbols."""
    order = topological_order(graph)
    shapes = infer_shapes(graph, input_shapes, order)
    named = symbolic_shapes(graph, order) if symbolic else None
    field: Dict[str, Tuple[int, int, int, int]] = {t: (1, 1, 1, 1) for t in input_shapes}  # rh, rw, jump h, w
    rows = []
    for node in order:
        spec = registry.get(node.op)
        attrs = spec.resolve_attrs(node.attrs)
        in_shapes = [shapes[t] for t in node.inputs]
        out_shapes = [shapes[t] for t in node.outputs]
        w_shapes = weight_shapes(graph, node)
        counts = spec.count(in_shapes, w_shapes, attrs, out_shapes)
        known = [field[t] for t in node.inputs if t in field]
        rf = tuple(max(f[i] for f in known) for i in range(4)) if known else (1, 1, 1, 1)
        window = spec.window(attrs, w_shapes) if spec.window is not None else None
        if window is not None:
            (kh, kw), (sh, sw), (dh, dw) = window.kernel, window.stride, window.dilation
            rf = (rf[0] + dh * (kh - 1) * rf[2], rf[1] + dw * (kw - 1) * rf[3], rf[2] * sh, rf[3] * sw)
        elif _reduces_to_a_point(in_shapes, out_shapes):  # global pooling: every input pixel counts
            rf = (GLOBAL, GLOBAL, rf[2], rf[3])
        spatial = all(len(s) == 4 for s in out_shapes)
        for t in node.outputs:
            if spatial:
                field[t] = rf
        rows.append(LayerRow(node.name, node.op, out_shapes, int(counts.params), int(counts.macs), int(counts.adds),
                             (rf[0], rf[1]) if spatial else None,
                             [named[t] for t in node.outputs] if named is not None else None))
    return rows


def totals(rows: List[LayerRow]) -> Dict[str, int]:
    return {"params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows),
            "adds": sum(r.adds for r in rows), "layers": len(rows)}


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def rows_as_json(rows: List[LayerRow]) -> List[Dict[str, Any]]:
    return [{"name": r.name, "op": r.op, "output_shapes": [list(s) for s in r.output_shapes], "params": r.params,
             "macs": r.macs, "adds": r.adds,
             "receptive_field": r.field_text(),
             **({"symbolic_shapes": [list(sh) for sh in r.symbolic_shapes]} if r.symbolic_shapes else {})}
            for r in rows]


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


def describe_inputs(graph: Graph, input_shapes: Mapping[str, Shape]) -> str:
    """One line per input: its declared shape and the sizes this summary is computed for."""
    return "\n".join(f"input {t.name!r}: {' x '.join(str(d) for d in t.shape)}, summarised at "
                     f"{_dims(input_shapes[t.name])}" for t in graph.inputs)


def format_summary(rows: List[LayerRow], memory: Optional[Mapping[str, Any]] = None, header: str = "") -> str:
    """A text table with a totals line (and the memory plan when given), after ``header``."""
    # "adds": additions, comparisons and other operations that are not multiply-adds
    # (an adder conv's |x - w| accumulations, pooling, elementwise ops).
    table = [("layer", "op", "output shape", "params", "MACs", "adds", "receptive field")]
    for r in rows:
        shape = ", ".join(_dims(s) for s in (r.symbolic_shapes or r.output_shapes))
        rf = r.field_text() or "-"
        table.append((r.name, r.op, shape, f"{r.params:,}", _human(r.macs), _human(r.adds), rf))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]

    def aligned(row) -> str:  # text columns left, numbers right
        return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = ([header] if header else []) + [aligned(table[0]), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [aligned(row) for row in table[1:]]
    t = totals(rows)
    lines.append("-" * len(lines[-len(rows) - 1]))
    lines.append(f"total: {t['layers']} layers, {t['params']:,} parameters, {_human(t['macs'])} MACs "
                 f"({t['macs']:,}), {_human(t['adds'])} adds and other ops")
    if memory:
        lines.append(f"memory: weights {memory['weight_bytes'] / 2**20:.2f} MiB, peak activations "
                     f"{memory['activation_bytes'] / 2**20:.2f} MiB in {memory['buffers']} buffers "
                     f"(unplanned {memory['unplanned_activation_bytes'] / 2**20:.2f} MiB); "
                     f"{memory['nodes']} nodes after fusion (file: {memory['nodes_in_file']})")
    return "\n".join(lines)
