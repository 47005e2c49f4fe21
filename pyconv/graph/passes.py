"""Graph rewrites applied at load time (the file itself is never changed).

* ``drop_identities``: identity nodes (dropout at inference) are bypassed.
* ``fold_batch_norms``: conv2d (or conv_transpose2d, shift_conv1x1) -> batch_norm becomes
  one conv with rescaled weights and a bias; adder2d -> batch_norm becomes one adder2d
  with a per-channel output scale and a bias.
* ``fuse_residual_adds``: conv2d -> add(conv, r) becomes conv2d(x, r): the kernel adds
  the residual in its epilogue, while the output row is still in cache.
* ``fuse_activations``: conv -> relu / relu6 / clip / leaky_relu moves the activation
  into the conv's epilogue (any op with an ``activation`` attribute).
* ``fuse_max_pools``: conv2d -> max_pool2d with a 2x2 kernel (floor mode) or a 3x3
  one, stride 2 and no padding, becomes one conv2d with ``pool="max2x2"``,
  ``"max3x3s2"`` or ``"max3x3s2_ceil"``: the GEMM conv (and Winograd, 2x2) pools in
  its output loop, so only the pooled quarter reaches memory (VGG's blocks,
  SqueezeNet's first layer).
* ``fuse_concat_shuffles``: concat (channels) -> channel_shuffle becomes one
  concat_shuffle, which copies each plane once (ShuffleNetV2's unit tail).

A rewrite applies only when the intermediate tensor has a single consumer and
is not a graph output, so no tensor a user can observe changes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from pyconv import registry
from pyconv.errors import ModelError
from pyconv.graph.format import Graph, Node, OutputInfo, TensorInfo
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
    """A working copy of a graph (nodes in topological order) with consumer look-ups.

    Every rewrite updates the look-ups locally, so a pass is linear in the graph size."""

    def __init__(self, graph: Graph, order: List[Node], weights: Dict[str, Any]) -> None:
        # nodes are copied (rewrites change their fields); attribute values are JSON data
        # that rewrites replace, never mutate, so the attribute dicts are copied shallowly
        nodes = [Node(n.name, n.op, list(n.inputs), list(n.outputs), dict(n.weights), dict(n.attrs))
                 for n in order]
        self.graph = Graph([TensorInfo(t.name, tuple(t.shape), t.dtype) for t in graph.inputs],
                           [OutputInfo(o.name, o.tensor) for o in graph.outputs], nodes, weights, graph.metadata)
        self.graph_outputs = {o.tensor for o in graph.outputs}
        self.position = {t: i for i, n in enumerate(nodes) for t in n.outputs}  # producer's place in the order
        self.removed: set = set()
        self.consumers: Dict[str, List[Node]] = {}
        self.key_users: Dict[str, int] = {}  # weight key -> live nodes using it
        for n in nodes:
            for t in n.inputs:
                self.consumers.setdefault(t, []).append(n)
            for key in n.weights.values():
                self.key_users[key] = self.key_users.get(key, 0) + 1

    def live_nodes(self, op: Optional[str] = None) -> List[Node]:
        return [n for n in self.graph.nodes if n.name not in self.removed and (op is None or n.op == op)]

    def sole_consumer(self, node: Node) -> Optional[Node]:
        """The one node reading ``node``'s single output, if it is not also a graph output."""
        if len(node.outputs) != 1 or node.outputs[0] in self.graph_outputs:
            return None
        readers = self.consumers.get(node.outputs[0], [])
        return readers[0] if len(readers) == 1 and readers[0].inputs.count(node.outputs[0]) == 1 else None

    def remove(self, node: Node) -> None:
        self.removed.add(node.name)
        for t in node.inputs:
            self.consumers[t] = [n for n in self.consumers[t] if n is not node]
        self.set_weights(node, {})

    def set_weights(self, node: Node, weights: Dict[str, str]) -> None:
        """Point ``node`` at other arrays; arrays no live node uses any more are dropped at once
        (a loaded model's file arrays are freed as the rewrites replace them)."""
        for key in weights.values():
            self.key_users[key] = self.key_users.get(key, 0) + 1
        for key in node.weights.values():
            self.key_users[key] -= 1
            if not self.key_users[key]:
                self.graph.weights.pop(key, None)
        node.weights = weights

    def absorb(self, node: Node, consumer: Node) -> None:
        """``node`` takes over ``consumer``'s output (and its other inputs); ``consumer`` disappears."""
        self.remove(consumer)
        for t in consumer.outputs:
            self.position[t] = self.position[node.outputs[0]]
        node.outputs = list(consumer.outputs)

    def add_input(self, node: Node, tensor: str) -> None:
        node.inputs = node.inputs + [tensor]
        self.consumers.setdefault(tensor, []).append(node)

    def computed_before(self, tensor: str, node: Node) -> bool:
        """Whether ``tensor`` is a graph input or produced earlier in the order than ``node``:
        then it cannot depend on ``node``'s output (reading it adds no cycle)."""
        return self.position.get(tensor, -1) < self.position[node.outputs[0]]

    def result(self) -> Graph:
        self.graph.nodes = self.live_nodes()
        return self.graph


def _plain_conv(node: Node) -> bool:
    """A conv2d with one input and no activation yet: fusions may still be added."""
    return node.op == "conv2d" and len(node.inputs) == 1 and node.attrs.get("activation") is None


def drop_identities(rw: _Rewriter) -> None:
    for node in rw.live_nodes("identity"):
        src, dst = node.inputs[0], node.outputs[0]
        if dst in rw.graph_outputs:
            continue
        readers = rw.consumers.pop(dst, [])
        for reader in readers:
            reader.inputs = [src if t == dst else t for t in reader.inputs]
        rw.remove(node)
        rw.consumers.setdefault(src, []).extend(readers)


# output-channel axis of the weight of layers a following batch norm folds into
FOLD_AXIS = {"conv2d": 0, "conv_transpose2d": 1, "shift_conv1x1": 0}


def fold_batch_norms(rw: _Rewriter) -> None:
    from pyconv.ops import fold_batch_norm

    for conv in [n for n in rw.live_nodes() if n.op in FOLD_AXIS and len(n.inputs) == 1
                 and n.attrs.get("activation") is None]:
        bn = rw.sole_consumer(conv)
        if bn is None or bn.op != "batch_norm":
            continue
        w = rw.graph.weights
        bn_attrs = registry.get("batch_norm").resolve_attrs(bn.attrs)
        get = (lambda node, role: w[node.weights[role]] if role in node.weights else None)
        try:
            weight, bias = fold_batch_norm(get(conv, "weight"), get(conv, "bias"), get(bn, "mean"), get(bn, "var"),
                                           get(bn, "weight"), get(bn, "bias"), bn_attrs["eps"],
                                           axis=FOLD_AXIS[conv.op],
                                           groups=conv.attrs.get("groups", 1) if FOLD_AXIS[conv.op] else 1)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"node {bn.name!r} (batch_norm): cannot fold into {conv.name!r}: {exc}") from None
        folded = {"weight": f"{conv.name}.weight+{bn.name}", "bias": f"{conv.name}.bias+{bn.name}"}
        w[folded["weight"]], w[folded["bias"]] = weight, bias
        rw.set_weights(conv, folded)
        rw.absorb(conv, bn)


def fold_batch_norms_into_adders(rw: _Rewriter) -> None:
    """adder2d -> batch_norm becomes one adder2d with a per-channel scale and a bias
    (BN's scale cannot move into the weights of an L1 distance)."""
    from pyconv.ops import fold_batch_norm_into_adder

    for adder in [n for n in rw.live_nodes("adder2d") if n.attrs.get("activation") is None]:
        bn = rw.sole_consumer(adder)
        if bn is None or bn.op != "batch_norm":
            continue
        w = rw.graph.weights
        eps = registry.get("batch_norm").resolve_attrs(bn.attrs)["eps"]
        get = (lambda node, role: w[node.weights[role]] if role in node.weights else None)
        scale, bias = fold_batch_norm_into_adder(get(adder, "scale"), get(adder, "bias"), get(bn, "mean"),
                                                 get(bn, "var"), get(bn, "weight"), get(bn, "bias"), eps)
        folded = {"weight": adder.weights["weight"], "scale": f"{adder.name}.scale+{bn.name}",
                  "bias": f"{adder.name}.bias+{bn.name}"}
        w[folded["scale"]], w[folded["bias"]] = scale, bias
        rw.set_weights(adder, folded)
        rw.absorb(adder, bn)


def fuse_residual_adds(rw: _Rewriter, shapes: Dict[str, Shape]) -> None:
    for conv in [n for n in rw.live_nodes("conv2d") if _plain_conv(n)]:
        add = rw.sole_consumer(conv)
        if add is None or add.op != "add" or len(add.inputs) != 2:
            continue
        residual = add.inputs[1] if add.inputs[0] == conv.outputs[0] else add.inputs[0]
        # the epilogue adds without broadcasting, and the residual must be ready before the conv runs
        if shapes.get(residual) != shapes.get(conv.outputs[0]) or not rw.computed_before(residual, conv):
            continue
        rw.absorb(conv, add)
        rw.add_input(conv, residual)


def fuse_activations(rw: _Rewriter) -> None:
    for node in rw.live_nodes():
        if node.name in rw.removed or "activation" not in registry.get(node.op).attrs:
            continue
        if node.attrs.get("activation") is not None:
            continue
        act = rw.sole_consumer(node)
        spec = _activation_of(act) if act is not None else None
        if spec is None:
            continue
        node.attrs = {**node.attrs, "activation": spec}
        rw.absorb(node, act)


def _fused_pool_kind(node: Node) -> Optional[str]:
    """The conv2d ``pool`` value (ops.conv.POOL_KINDS) that ``node`` is, if it is a
    max_pool2d with stride 2, no padding and dilation 1, else None."""
    from pyconv.ops._args import int_pair, padding4
    from pyconv.ops.conv import POOL_KINDS

    if node.op != "max_pool2d":
        return None
    attrs = registry.get("max_pool2d").resolve_attrs(node.attrs)
    try:
        kernel = int_pair(attrs["kernel_size"], "kernel_size")
        stride = kernel if attrs["stride"] is None else int_pair(attrs["stride"], "stride")
        plain = padding4(attrs["padding"]) == (0,) * 4 and int_pair(attrs["dilation"], "dilation") == (1, 1)
    except (TypeError, ValueError):
        return None   # validation has accepted the node: an odd form is simply not fused
    form = (kernel[0], bool(attrs["ceil_mode"]))
    if not plain or kernel[0] != kernel[1] or stride != (2, 2):
        return None
    return next((name for name, kind in POOL_KINDS.items() if kind == form), None)


def fuse_max_pools(rw: _Rewriter) -> None:
    for conv in rw.live_nodes("conv2d"):
        pool = rw.sole_consumer(conv)
        kind = _fused_pool_kind(pool) if pool is not None else None
        if len(conv.inputs) == 1 and conv.attrs.get("pool") is None and kind is not None:
            conv.attrs = {**conv.attrs, "pool": kind}
            rw.absorb(conv, pool)


def fuse_concat_shuffles(rw: _Rewriter, shapes: Dict[str, Shape]) -> None:
    for concat in rw.live_nodes("concat"):
        shuffle = rw.sole_consumer(concat)
        rank = len(shapes.get(concat.outputs[0], ()))
        if shuffle is None or shuffle.op != "channel_shuffle" or rank < 2:
            continue
        if registry.get("concat").resolve_attrs(concat.attrs)["axis"] not in (1, 1 - rank):
            continue
        groups = shuffle.attrs["groups"]
        rw.absorb(concat, shuffle)
        concat.op, concat.attrs = "concat_shuffle", {"groups": groups}


def optimize(graph: Graph, order: Optional[List[Node]] = None, shapes: Optional[Dict[str, Shape]] = None,
             weights: Optional[Dict[str, Any]] = None) -> Graph:
    """A new graph with every rewrite above applied (``graph`` is left untouched).

    ``order`` (topological) and ``shapes`` (every tensor at the probe sizes) are what
    validation computed; they are recomputed when not given.  ``weights``: a dict the
    optimizer may consume (default: a copy of ``graph.weights``); arrays the rewrites
    replace are removed from it as soon as nothing uses them."""
    order = topological_order(graph) if order is None else order
    rw = _Rewriter(graph, order, dict(graph.weights) if weights is None else weights)
    drop_identities(rw)
    if "batch_norm" in registry.all_ops():
        fold_batch_norms(rw)
        fold_batch_norms_into_adders(rw)
    if shapes is None:  # tensors keep their shapes through the rewrites above
        shapes = infer_shapes(graph, input_shapes_for(graph, probe_symbols(graph)), order)
    fuse_residual_adds(rw, shapes)
    fuse_activations(rw)
    fuse_max_pools(rw)
    if "concat_shuffle" in registry.all_ops():
        fuse_concat_shuffles(rw, shapes)
    return rw.result()
