"""Pattern fusion on the importer's graph: exporters spell some ops as chains of
primitive ones; these passes turn the chains back into pyconv's own ops.

- ``x * sigmoid(x)`` -> silu
- ``x * 0.5 * (1 + erf(x / sqrt(2)))`` -> gelu (the Erf node exists only as a placeholder until then)
- ``clip(x + 3, 0, 6) / 6`` -> hardsigmoid(1/6, 1/2); ``x * hardsigmoid(x)`` and
  ``x * clip(x + 3, 0, 6) / 6`` -> hardswish
- Reshape(N, g, C/g, H, W) -> Transpose(0, 2, 1, 3, 4) -> Reshape(N, C, H, W) -> channel_shuffle
- Concat(x, m(x), m(m(x)), m(m(m(x)))) with m a stride-1 "same" max pool -> sppf
- linear (MatMul) -> Add of a constant over the last axis -> linear with bias
- per-channel Mul/Add/Sub/Div by constants (BatchNormalization decomposed) -> batch_norm, and
  chains of batch_norms merged into one
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import numpy as np

from pyconv.convert.ir import Graph, Node, static
from pyconv.convert.onnx_ops import ERF_PLACEHOLDER

_HARDSIGMOID = (1.0 / 6.0, 0.5)
_BINARY = ("add", "sub", "mul", "div")


def _scalar(graph: Graph, name: str) -> Optional[float]:
    value = graph.consts.get(name)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _close(a: Optional[float], b: float) -> bool:
    return a is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _other(node: Node, name: str) -> Optional[str]:
    """For a 2-input node fed by ``name``, the other input."""
    a, b = node.inputs
    return b if a == name else a if b == name else None


def _only_user(graph: Graph, users, tensor: str, node: Node) -> bool:
    return tensor not in graph.protected() and [id(u) for u in users.get(tensor, [])] == [id(node)]


def _is_relu6(node: Optional[Node]) -> bool:
    if node is None:
        return False
    if node.op == "relu6":
        return True
    return node.op == "clip" and _close(node.attrs.get("min"), 0.0) and _close(node.attrs.get("max"), 6.0)


def _scaled_by_sixth(graph: Graph, node: Node) -> Optional[str]:
    """If ``node`` is ``t / 6`` or ``t * (1/6)`` with a constant, return ``t``."""
    if node.op == "div" and _close(_scalar(graph, node.inputs[1]), 6.0):
        return node.inputs[0]
    if node.op == "mul":
        for i in (0, 1):
            if _close(_scalar(graph, node.inputs[i]), 1.0 / 6.0):
                return node.inputs[1 - i]
    return None


def _plus_three(graph: Graph, node: Optional[Node]) -> Optional[str]:
    """If ``node`` is ``x + 3``, return ``x``."""
    if node is None or node.op != "add":
        return None
    for i in (0, 1):
        if _close(_scalar(graph, node.inputs[i]), 3.0) and not graph.is_const(node.inputs[1 - i]):
            return node.inputs[1 - i]
    return None


def fuse_silu(graph: Graph) -> int:
    """``x * sigmoid(x)`` -> silu(x)."""
    prod, users, count = graph.producers(), graph.consumers(), 0
    for node in list(graph.nodes):
        if node.op != "mul" or not graph.alive(node):
            continue
        for gate in node.inputs:
            sig = prod.get(gate)
            if sig is not None and sig.op == "sigmoid" and _other(node, gate) == sig.inputs[0] \
                    and _only_user(graph, users, gate, node):
                graph.replace([sig, node], Node("silu", [sig.inputs[0]], node.outputs, name=node.name))
                count += 1
                break
    return count


def fuse_hardsigmoid(graph: Graph) -> int:
    """``clip(x + 3, 0, 6) / 6`` -> hardsigmoid(x, alpha=1/6, beta=1/2)."""
    prod, users, count = graph.producers(), graph.consumers(), 0
    for node in list(graph.nodes):
        if not graph.alive(node):
            continue
        clipped = _scaled_by_sixth(graph, node) if node.op in ("div", "mul") else None
        clip = prod.get(clipped) if clipped else None
        if not _is_relu6(clip) or not _only_user(graph, users, clipped, node):
            continue
        add = prod.get(clip.inputs[0])
        x = _plus_three(graph, add)
        if x is None or not _only_user(graph, users, clip.inputs[0], clip):
            continue
        alpha, beta = _HARDSIGMOID
        graph.replace([add, clip, node], Node("hardsigmoid", [x], node.outputs, attrs={"alpha": alpha, "beta": beta},
                                              name=node.name))
        count += 1
    return count


def fuse_hardswish(graph: Graph) -> int:
    """``x * hardsigmoid(x)`` and ``(x * clip(x + 3, 0, 6)) / 6`` -> hardswish(x)."""
    prod, users, count = graph.producers(), graph.consumers(), 0
    for node in list(graph.nodes):
        if not graph.alive(node):
            continue
        if node.op == "mul" and len(node.inputs) == 2:
            for gate in node.inputs:
                hs = prod.get(gate)
                if hs is not None and hs.op == "hardsigmoid" and _other(node, gate) == hs.inputs[0] \
                        and _close(hs.attrs.get("alpha"), _HARDSIGMOID[0]) \
                        and _close(hs.attrs.get("beta"), _HARDSIGMOID[1]) and _only_user(graph, users, gate, node):
                    graph.replace([hs, node], Node("hardswish", [hs.inputs[0]], node.outputs, name=node.name))
                    count += 1
                    break
            else:
                count += _fuse_hardswish_scaled_last(graph, prod, users, node)
        elif node.op == "div":
            count += _fuse_hardswish_scaled_last(graph, prod, users, node)
    return count


def _fuse_hardswish_scaled_last(graph: Graph, prod, users, node: Node) -> int:
    """``(x * clip(x + 3, 0, 6)) / 6``."""
    product = _scaled_by_sixth(graph, node)
    mul = prod.get(product) if product else None
    if mul is None or mul.op != "mul" or not _only_user(graph, users, product, node):
        return 0
    for gate in mul.inputs:
        clip = prod.get(gate)
        if _is_relu6(clip) and _only_user(graph, users, gate, mul):
            add = prod.get(clip.inputs[0])
            x = _plus_three(graph, add)
            if x is not None and x == _other(mul, gate) and _only_user(graph, users, clip.inputs[0], clip):
                graph.replace([add, clip, mul, node], Node("hardswish", [x], node.outputs, name=node.name))
                return 1
    return 0


def _scaled_by(graph: Graph, node: Optional[Node], factor: float) -> Optional[str]:
    """If ``node`` is ``t * factor`` or ``t / (1 / factor)`` with a scalar constant, return ``t``."""
    if node is None:
        return None
    if node.op == "div" and _close(_scalar(graph, node.inputs[1]), 1.0 / factor):
        return node.inputs[0]
    if node.op == "mul":
        for i in (0, 1):
            if _close(_scalar(graph, node.inputs[i]), factor) and not graph.is_const(node.inputs[1 - i]):
                return node.inputs[1 - i]
    return None


def fuse_gelu(graph: Graph) -> int:
    """``x * 0.5 * (1 + erf(x / sqrt(2)))`` (nn.GELU before opset 20), in any product order -> gelu."""
    prod, users, count = graph.producers(), graph.consumers(), 0
    sole = lambda t, n: _only_user(graph, users, t, n)  # noqa: E731
    first_user = lambda t: (users.get(t) or [None])[0]  # noqa: E731
    for erf in list(graph.nodes):
        if erf.op != ERF_PLACEHOLDER or not graph.alive(erf):
            continue
        scaled = prod.get(erf.inputs[0])
        x = _scaled_by(graph, scaled, math.sqrt(0.5))
        add = first_user(erf.outputs[0])
        if x is None or not sole(erf.inputs[0], erf) or add is None or not sole(erf.outputs[0], add) \
                or _plus_constant(graph, add, 1.0) != erf.outputs[0]:
            continue
        mul1 = first_user(add.outputs[0])
        if mul1 is None or mul1.op != "mul" or not sole(add.outputs[0], mul1):
            continue
        other = _other(mul1, add.outputs[0])
        half = prod.get(other)
        if _scaled_by(graph, half, 0.5) == x and sole(other, mul1):  # (1 + erf) * (x * 0.5)
            chain, final = [scaled, erf, add, half, mul1], mul1
        else:  # ((1 + erf) * x) * 0.5 or ((1 + erf) * 0.5) * x
            final = first_user(mul1.outputs[0])
            if final is None or final.op != "mul" or not sole(mul1.outputs[0], final):
                continue
            rest = _other(final, mul1.outputs[0])
            if not ((other == x and _close(_scalar(graph, rest), 0.5))
                    or (_close(_scalar(graph, other), 0.5) and rest == x)):
                continue
            chain = [scaled, erf, add, mul1, final]
        graph.replace(chain, Node("gelu", [x], final.outputs, attrs={"approximate": "none"}, name=final.name))
        count += 1
    return count


def _plus_constant(graph: Graph, node: Node, value: float) -> Optional[str]:
    """If ``node`` is ``t + value`` with a scalar constant, return ``t``."""
    if node.op != "add":
        return None
    for i in (0, 1):
        if _close(_scalar(graph, node.inputs[i]), value):
            return node.inputs[1 - i]
    return None


def fuse_channel_shuffle(graph: Graph) -> int:
    """Reshape(N, g, C/g, H, W) -> Transpose(0, 2, 1, 3, 4) -> Reshape(N, C, H, W) -> channel_shuffle(g)."""
    prod, users, count = graph.producers(), graph.consumers(), 0
    for node in list(graph.nodes):
        if node.op != "reshape" or not graph.alive(node):
            continue
        tr = prod.get(node.inputs[0])
        if tr is None or tr.op != "transpose" or list(tr.attrs.get("perm", ())) != [0, 2, 1, 3, 4]:
            continue
        first = prod.get(tr.inputs[0])
        if first is None or first.op != "reshape":
            continue
        x = first.inputs[0]
        in_shape, split_shape, out_shape = graph.shape(x), graph.shape(first.outputs[0]), graph.shape(node.outputs[0])
        if in_shape is None or split_shape is None or out_shape is None or len(in_shape) != 4 or len(split_shape) != 5:
            continue
        channels_known = static(in_shape[1:2]) and static(split_shape[1:3])
        if not channels_known or split_shape[1] * split_shape[2] != in_shape[1] or tuple(out_shape) != tuple(in_shape) \
                or tuple(split_shape[3:]) != tuple(in_shape[2:]):
            continue
        if not (_only_user(graph, users, first.outputs[0], tr) and _only_user(graph, users, tr.outputs[0], node)):
            continue
        graph.replace([first, tr, node], Node("channel_shuffle", [x], node.outputs,
                                              attrs={"groups": int(split_shape[1])}, name=node.name))
        count += 1
    return count


def _sppf_pool(node, kernel: Optional[int] = None) -> Optional[int]:
    """The kernel size if ``node`` is SPPF's stride-1 "same" max pool (optionally of ``kernel``)."""
    if node is None or node.op != "max_pool2d":
        return None
    a = node.attrs
    k = a.get("kernel_size")
    k = k[0] if isinstance(k, list) and len(k) == 2 and k[0] == k[1] else k
    if not isinstance(k, int) or k % 2 == 0 or (kernel is not None and k != kernel):
        return None
    same = a.get("stride") in ([1, 1], 1) and a.get("padding") in ([k // 2] * 4, k // 2) \
        and a.get("dilation", 1) in ([1, 1], 1) and not a.get("ceil_mode", False)
    return k if same else None


def fuse_sppf(graph: Graph) -> int:
    """Concat(x, m(x), m(m(x)), ...) with m a stride-1 same-size max pool -> sppf (YOLOv5's SPPF)."""
    prod, users, count = graph.producers(), graph.consumers(), 0
    protected = graph.protected()
    for node in list(graph.nodes):
        if node.op != "concat" or node.attrs.get("axis", 1) != 1 or len(node.inputs) < 2 or not graph.alive(node):
            continue
        x, chain = node.inputs[0], [prod.get(t) for t in node.inputs[1:]]
        kernel = _sppf_pool(chain[0])
        if kernel is None or any(_sppf_pool(p, kernel) is None for p in chain):
            continue
        feeds = [x] + node.inputs[1:-1]
        if any(p.inputs[0] != f for p, f in zip(chain, feeds)):
            continue
        # each pooled map is read only by the next pool and the concat
        if any(t in protected or len(users.get(t, [])) != (1 if t == node.inputs[-1] else 2)
               for t in node.inputs[1:]):
            continue
        graph.replace(chain + [node], Node("sppf", [x], node.outputs,
                                           attrs={"kernel_size": kernel, "repeats": len(chain)}, name=node.name))
        count += 1
    return count


def fuse_linear_bias(graph: Graph) -> int:
    """linear -> Add of a constant over the last axis (MatMul + Add exports) -> linear with that bias."""
    prod, users, count = graph.producers(), graph.consumers(), 0
    for node in list(graph.nodes):
        if node.op != "add" or not graph.alive(node):
            continue
        for i in (0, 1):
            lin, const = prod.get(node.inputs[i]), node.inputs[1 - i]
            if lin is None or lin.op != "linear" or not graph.is_const(const):
                continue
            value, out_features = graph.consts[const], lin.weights["weight"].shape[0]
            if value.size != out_features or value.shape[-1:] != (out_features,) \
                    or not _only_user(graph, users, lin.outputs[0], node):
                continue
            bias = value.reshape(-1).astype(np.float32) + lin.weights.get("bias", np.float32(0))
            graph.replace([lin, node], Node("linear", lin.inputs, node.outputs,
                                            weights={**lin.weights, "bias": bias}, name=lin.name))
            count += 1
            break
    return count


def _per_channel(graph: Graph, x: str, const: str) -> Optional[np.ndarray]:
    """The constant as a length-C vector when ``x`` is NCHW and the constant broadcasts per channel only."""
    shape, value = graph.shape(x), graph.consts[const]
    if shape is None or len(shape) != 4 or not static(shape[1:2]) or value.ndim > 4:
        return None
    channels = int(shape[1])
    padded = (1,) * (4 - value.ndim) + tuple(value.shape)
    if padded[0] != 1 or padded[2:] != (1, 1) or padded[1] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()


def _affine_node(name: str, x: str, out: str, scale: np.ndarray, shift: np.ndarray) -> Node:
    """batch_norm computing ``scale * x + shift`` (mean 0, var 1, eps 0)."""
    c = scale.shape[0]
    weights = {"mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32),
               "weight": scale.astype(np.float32), "bias": shift.astype(np.float32)}
    return Node("batch_norm", [x], [out], weights=weights, attrs={"eps": 0.0}, name=name)


def _affine_of(node: Node) -> Tuple[np.ndarray, np.ndarray]:
    """A batch_norm as ``(scale, shift)`` per channel (float64)."""
    w = {k: v.astype(np.float64) for k, v in node.weights.items()}
    c = w["mean"].shape[0]
    scale = w.get("weight", np.ones(c)) / np.sqrt(w["var"] + float(node.attrs.get("eps", 1e-5)))
    return scale, w.get("bias", np.zeros(c)) - w["mean"] * scale


def lower_channel_affine(graph: Graph) -> int:
    """Per-channel constant Mul/Add/Sub/Div on NCHW tensors -> batch_norm (BN exported as Mul/Add)."""
    count = 0
    for i, node in enumerate(graph.nodes):
        if node.op not in _BINARY or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if graph.is_const(a) == graph.is_const(b):
            continue
        x, const, const_first = (b, a, True) if graph.is_const(a) else (a, b, False)
        vec = _per_channel(graph, x, const)
        if vec is None or (const_first and node.op == "div"):
            continue
        ones, zeros = np.ones_like(vec), np.zeros_like(vec)
        if node.op == "mul":
            scale, shift = vec, zeros
        elif node.op == "div":
            if np.any(vec == 0):
                continue
            scale, shift = 1.0 / vec, zeros
        elif node.op == "add":
            scale, shift = ones, vec
        else:  # sub: x - c, or c - x
            scale, shift = (-ones, vec) if const_first else (ones, -vec)
        graph.nodes[i] = _affine_node(node.name, x, node.outputs[0], scale, shift)
        count += 1
    return count


def merge_batch_norms(graph: Graph) -> int:
    """batch_norm -> batch_norm (first one used only there) -> one batch_norm."""
    count = 0
    while True:
        prod, users = graph.producers(), graph.consumers()
        for node in graph.nodes:
            first = prod.get(node.inputs[0]) if node.op == "batch_norm" else None
            if first is None or first.op != "batch_norm" or not _only_user(graph, users, first.outputs[0], node):
                continue
            s1, t1 = _affine_of(first)
            s2, t2 = _affine_of(node)
            merged = _affine_node(node.name, first.inputs[0], node.outputs[0], s1 * s2, t1 * s2 + t2)
            graph.replace([first, node], merged)
            count += 1
            break
        else:
            return count


PASSES: List[Callable[[Graph], int]] = [
    fuse_gelu,
    fuse_silu,
    fuse_hardsigmoid,
    fuse_hardswish,
    fuse_channel_shuffle,
    fuse_sppf,
    fuse_linear_bias,
    lower_channel_affine,
    merge_batch_norms,
]


def run_passes(graph: Graph) -> dict:
    """Apply every pass in order; returns how many rewrites each made."""
    return {p.__name__: p(graph) for p in PASSES}
