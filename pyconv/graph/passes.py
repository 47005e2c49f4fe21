"""Graph rewrites applied at load time (the file itself is never changed).

* ``drop_identities``: identity nodes (dropout at inference) are bypassed.
* ``fold_batch_norms``: conv2d (or conv_transpose2d) -> batch_norm becomes one conv with
  rescaled weights and a bias.
* ``fuse_residual_adds``: conv2d -> add(conv, r) becomes conv2d(x, r): the kernel adds
  the residual in its epilogue, while the output row is still in cache.
* ``fuse_activations``: conv -> relu / relu6 / clip / leaky_relu moves the activation
  into the conv's epilogue (any op with an ``activation`` attribute).

A rewrite applies only when the intermediate tensor has a single consumer and
is not a graph output, so no tensor a user can observe changes.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from pyconv import registry
from pyconv.graph.format import Graph, Node
from pyconv.graph.shapes import Shape, infer_shapes, input_shapes_for, probe_symbols, topological_order


def _activation_of(node: Node) -> Optional[Any]:
    """The epilogue activation spec equivalent to an activation node, or None if it has none."""
    attrs = node.attrs
    if node.op == "relu":
        return "relu"
    if node.op == "relu6":
        return "relu6"
    if node.op == "clip":
        return ["clip", attrs.get("min"), attrs.get("max")]
    if node.op == "leaky_relu":
        return ["leaky_relu", attrs.get("negative_slope", 0.01)]
    return None


class _Rewriter:
    """A mutable working copy of a graph with producer/consumer look-ups."""

    def __init__(self, graph: Graph) -> None:
        self.graph = Graph(copy.deepcopy(graph.inputs), copy.deepcopy(graph.outputs),
                           [copy.deepcopy(n) for n in topological_order(graph)], dict(graph.weights),
                           graph.metadata)
        self.graph_outputs = {o.tensor for o in graph.outputs}
        self.refresh()

    def refresh(self) -> None:
        self.consumers: Dict[str, List[Node]] = {}
        for n in self.graph.nodes:
            for t in n.inputs:
                self.consumers.setdefault(t, []).append(n)

    def sole_consumer(self, node: Node) -> Optional[Node]:
        """The one node reading ``node``'s single output, if it is not also a graph output."""
        if len(node.outputs) != 1 or node.outputs[0] in self.graph_outputs:
            return None
        readers = self.consumers.get(node.outputs[0], [])
        return readers[0] if len(readers) == 1 and readers[0].inputs.count(node.outputs[0]) == 1 else None

    def absorb(self, node: Node, consumer: Node) -> None:
        """``node`` takes over ``consumer``'s output; ``consumer`` disappears."""
        node.outputs = list(consumer.outputs)
        self.graph.nodes.remove(consumer)
        self.refresh()

    def reaches(self, start: str, target: str) -> bool:
        """Whether tensor ``target`` is computed (transitively) from tensor ``start``."""
        seen, stack = set(), [start]
        while stack:
            t = stack.pop()
            if t == target:
                return True
            for n in self.consumers.get(t, []):
                for out in n.outputs:
                    if out not in seen:
                        seen.add(out)
                        stack.append(out)
        return False

    def result(self) -> Graph:
        used = {key for n in self.graph.nodes for key in n.weights.values()}
        self.graph.weights = {k: v for k, v in self.graph.weights.items() if k in used}
        self.graph.nodes = topological_order(self.graph)  # a fused residual may be computed later in the list
        return self.graph


def _plain_conv(node: Node) -> bool:
    """A conv2d with one input and no activation yet: fusions may still be added."""
    return node.op == "conv2d" and len(node.inputs) == 1 and node.attrs.get("activation") is None


def drop_identities(rw: _Rewriter) -> None:
    for node in [n for n in rw.graph.nodes if n.op == "identity"]:
        src, dst = node.inputs[0], node.outputs[0]
        if dst in rw.graph_outputs:
            continue
        for reader in rw.consumers.get(dst, []):
            reader.inputs = [src if t == dst else t for t in reader.inputs]
        rw.graph.nodes.remove(node)
        rw.refresh()


# output-channel axis of the weight of layers a following batch norm folds into
FOLD_AXIS = {"conv2d": 0, "conv_transpose2d": 1}


def fold_batch_norms(rw: _Rewriter) -> None:
    from pyconv.ops import fold_batch_norm

    for conv in [n for n in rw.graph.nodes if n.op in FOLD_AXIS and len(n.inputs) == 1
                 and n.attrs.get("activation") is None]:
        bn = rw.sole_consumer(conv)
        if bn is None or bn.op != "batch_norm":
            continue
        w = rw.graph.weights
        bn_attrs = registry.get("batch_norm").resolve_attrs(bn.attrs)
        get = (lambda node, role: w[node.weights[role]] if role in node.weights else None)
        weight, bias = fold_batch_norm(get(conv, "weight"), get(conv, "bias"), get(bn, "mean"), get(bn, "var"),
                                       get(bn, "weight"), get(bn, "bias"), bn_attrs["eps"],
                                       axis=FOLD_AXIS[conv.op],
                                       groups=conv.attrs.get("groups", 1) if FOLD_AXIS[conv.op] else 1)
        conv.weights = {"weight": f"{conv.name}.weight+{bn.name}", "bias": f"{conv.name}.bias+{bn.name}"}
        w[conv.weights["weight"]], w[conv.weights["bias"]] = weight, bias
        rw.absorb(conv, bn)


def fuse_residual_adds(rw: _Rewriter, shapes: Dict[str, Shape]) -> None:
    for conv in [n for n in rw.graph.nodes if _plain_conv(n)]:
        add = rw.sole_consumer(conv)
        if add is None or add.op != "add" or len(add.inputs) != 2:
            continue
        residual = add.inputs[1] if add.inputs[0] == conv.outputs[0] else add.inputs[0]
        # same shape (no broadcasting in the epilogue); residual not computed from the conv (no cycle)
        if shapes.get(residual) != shapes.get(conv.outputs[0]) or rw.reaches(conv.outputs[0], residual):
            continue
        conv.inputs = [conv.inputs[0], residual]
        rw.absorb(conv, add)


def fuse_activations(rw: _Rewriter) -> None:
    for node in list(rw.graph.nodes):
        if node not in rw.graph.nodes or "activation" not in registry.get(node.op).attrs:
            continue
        if node.attrs.get("activation") is not None:
            continue
        act = rw.sole_consumer(node)
        spec = _activation_of(act) if act is not None else None
        if spec is None:
            continue
        node.attrs = {**node.attrs, "activation": spec}
        rw.absorb(node, act)


def optimize(graph: Graph) -> Graph:
    """A new graph with every rewrite above applied (``graph`` is left untouched)."""
    rw = _Rewriter(graph)
    drop_identities(rw)
    if "batch_norm" in registry.all_ops():
        fold_batch_norms(rw)
    fuse_residual_adds(rw, infer_shapes(rw.graph, input_shapes_for(rw.graph, probe_symbols(rw.graph)),
                                        rw.graph.nodes))
    fuse_activations(rw)
    return rw.result()
