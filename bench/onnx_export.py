"""Export a pyconv graph to ONNX, for the ops the model zoo uses (benchmark baseline only).

The same weights run in onnxruntime, so a benchmark compares engines, not
models.  Covered: conv2d (with its fused activation/residual/pool forms),
batch_norm, relu, relu6, sigmoid, tanh, max/avg pools (ceil mode),
global average pool, flatten, linear, add, mul, concat, split (equal parts or
sizes), channel_shuffle (reshape-transpose-reshape) and identity.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pyconv import registry
from pyconv.graph.format import Graph, Node
from pyconv.graph.shapes import infer_shapes, input_shapes_for, probe_symbols, topological_order
from pyconv.ops.conv import POOL_KINDS

OPSET = 17


def _pair(value) -> List[int]:
    return [int(value)] * 2 if isinstance(value, (int, np.integer)) else [int(v) for v in value]


def _pads(padding) -> List[int]:
    """pyconv padding (int, pair or (top, left, bottom, right)) -> ONNX [top, left, bottom, right]."""
    values = _pair(padding) if not (isinstance(padding, (list, tuple)) and len(padding) == 4) else list(padding)
    return values * 2 if len(values) == 2 else values


class _Exporter:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.counter = 0

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}__{self.counter}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, node: Node, role: str) -> str:
        key = node.weights[role]
        if not any(t.name == key for t in self.initializers):
            self.const(key, self.graph.weights[key].astype(np.float32))
        return key

    def emit(self, op_type: str, inputs: List[str], outputs: List[str], **attrs: Any) -> None:
        self.nodes.append(helper.make_node(op_type, inputs, outputs, **attrs))

    def activation(self, spec, x: str, out: str) -> None:
        """pyconv activation spec (None, "relu", "relu6", ("clip", lo, hi), ("leaky_relu", s))."""
        if spec is None:
            self.emit("Identity", [x], [out])
            return
        kind = spec if isinstance(spec, str) else spec[0]
        if kind == "relu":
            self.emit("Relu", [x], [out])
        elif kind in ("relu6", "clip"):
            lo, hi = (0.0, 6.0) if kind == "relu6" else (spec[1], spec[2])
            self.emit("Clip", [x, self.const(self.fresh("lo"), np.float32(lo)),
                               self.const(self.fresh("hi"), np.float32(hi))], [out])
        elif kind == "leaky_relu":
            self.emit("LeakyRelu", [x], [out], alpha=float(spec[1]))
        else:
            raise NotImplementedError(f"activation {spec!r}")


def _conv2d(ex: _Exporter, node: Node, attrs: Dict[str, Any]) -> None:
    w = ex.graph.weights[node.weights["weight"]]
    inputs = [node.inputs[0], ex.weight(node, "weight")] + ([ex.weight(node, "bias")] if "bias" in node.weights else [])
    conv_out = ex.fresh(node.name)
    ex.emit("Conv", inputs, [conv_out], kernel_shape=list(w.shape[2:]), strides=_pair(attrs["stride"]),
            pads=_pads(attrs["padding"]), dilations=_pair(attrs["dilation"]), group=int(attrs["groups"]))
    if len(node.inputs) == 2:  # fused residual, added before the activation
        summed = ex.fresh(node.name)
        ex.emit("Add", [conv_out, node.inputs[1]], [summed])
        conv_out = summed
    if attrs.get("pool") is None:
        ex.activation(attrs["activation"], conv_out, node.outputs[0])
        return
    activated = ex.fresh(node.name)   # a fused max pool, after the activation
    ex.activation(attrs["activation"], conv_out, activated)
    window, ceil_mode = POOL_KINDS[attrs["pool"]]
    ex.emit("MaxPool", [activated], node.outputs, kernel_shape=[window, window], strides=[2, 2],
            ceil_mode=int(ceil_mode))


def _batch_norm(ex: _Exporter, node: Node, attrs: Dict[str, Any]) -> None:
    channels = ex.graph.weights[node.weights["mean"]].shape[0]
    scale = ex.weight(node, "weight") if "weight" in node.weights else ex.const(ex.fresh("ones"), np.ones(channels, np.float32))
    bias = ex.weight(node, "bias") if "bias" in node.weights else ex.const(ex.fresh("zeros"), np.zeros(channels, np.float32))
    ex.emit("BatchNormalization", [node.inputs[0], scale, bias, ex.weight(node, "mean"), ex.weight(node, "var")],
            node.outputs, epsilon=float(attrs["eps"]))


def _pool(onnx_op: str) -> Callable[[_Exporter, Node, Dict[str, Any]], None]:
    def export(ex: _Exporter, node: Node, attrs: Dict[str, Any]) -> None:
        kernel = _pair(attrs["kernel_size"])
        stride = _pair(attrs["stride"]) if attrs["stride"] is not None else kernel
        extra = {"count_include_pad": int(attrs["count_include_pad"])} if onnx_op == "AveragePool" else {}
        ex.emit(onnx_op, node.inputs, node.outputs, kernel_shape=kernel, strides=stride,
                pads=_pads(attrs["padding"]), ceil_mode=int(attrs["ceil_mode"]), **extra)
    return export


def _linear(ex: _Exporter, node: Node, attrs: Dict[str, Any]) -> None:
    inputs = [node.inputs[0], ex.weight(node, "weight")] + ([ex.weight(node, "bias")] if "bias" in node.weights else [])
    ex.emit("Gemm", inputs, node.outputs, transB=1)


def _split(ex: _Exporter, node: Node, attrs: Dict[str, Any], shapes) -> None:
    sizes = [shapes[t][attrs["axis"]] for t in node.outputs]
    ex.emit("Split", [node.inputs[0], ex.const(ex.fresh("sizes"), np.array(sizes, np.int64))], node.outputs,
            axis=int(attrs["axis"]))


def _channel_shuffle(ex: _Exporter, node: Node, attrs: Dict[str, Any], shapes) -> None:
    n, c, h, w = shapes[node.inputs[0]]
    g = int(attrs["groups"])
    grouped, swapped = ex.fresh(node.name), ex.fresh(node.name)
    ex.emit("Reshape", [node.inputs[0], ex.const(ex.fresh("shape"), np.array([0, g, c // g, h, w], np.int64))],
            [grouped])
    ex.emit("Transpose", [grouped], [swapped], perm=[0, 2, 1, 3, 4])
    ex.emit("Reshape", [swapped, ex.const(ex.fresh("shape"), np.array([0, c, h, w], np.int64))], node.outputs)


def _simple(onnx_op: str, **fixed: Any) -> Callable[[_Exporter, Node, Dict[str, Any]], None]:
    def export(ex: _Exporter, node: Node, attrs: Dict[str, Any]) -> None:
        ex.emit(onnx_op, node.inputs, node.outputs, **fixed)
    return export


EXPORTERS: Dict[str, Callable[..., None]] = {
    "conv2d": _conv2d,
    "batch_norm": _batch_norm,
    "relu": _simple("Relu"),
    "relu6": lambda ex, node, attrs: ex.activation("relu6", node.inputs[0], node.outputs[0]),
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "max_pool2d": _pool("MaxPool"),
    "avg_pool2d": _pool("AveragePool"),
    "global_avg_pool2d": _simple("GlobalAveragePool"),
    "flatten": _simple("Flatten", axis=1),
    "linear": _linear,
    "add": _simple("Add"),
    "mul": _simple("Mul"),
    "concat": lambda ex, node, attrs: ex.emit("Concat", node.inputs, node.outputs, axis=int(attrs["axis"])),
    "identity": _simple("Identity"),
}
SHAPE_AWARE = {"split": _split, "channel_shuffle": _channel_shuffle}


def to_onnx(graph: Graph) -> onnx.ModelProto:
    """An ONNX model computing ``graph`` (fixed input shapes: symbolic dims probed as pyconv does)."""
    input_shapes = input_shapes_for(graph, probe_symbols(graph))
    order = topological_order(graph)
    shapes = infer_shapes(graph, input_shapes, order)
    ex = _Exporter(graph)
    for node in order:
        attrs = registry.get(node.op).resolve_attrs(node.attrs)
        if node.op in SHAPE_AWARE:
            SHAPE_AWARE[node.op](ex, node, attrs, shapes)
        elif node.op in EXPORTERS:
            EXPORTERS[node.op](ex, node, attrs)
        else:
            raise NotImplementedError(f"no ONNX export for op {node.op!r} (node {node.name!r})")
    # the batch stays symbolic; other dims (the zoo's "H", "W") are fixed at their probe
    # sizes, so onnxruntime plans the very shapes the benchmarks run
    inputs = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT,
                                            [d if axis == 0 else input_shapes[t.name][axis]
                                             for axis, d in enumerate(t.shape)])
              for t in graph.inputs]
    outputs = []
    for out in graph.outputs:
        if out.name != out.tensor:
            ex.emit("Identity", [out.tensor], [out.name])
        outputs.append(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, list(shapes[out.tensor])))
    model = helper.make_model(helper.make_graph(ex.nodes, "pyconv_export", inputs, outputs, ex.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
