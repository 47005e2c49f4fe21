"""ONNX -> pyconv: walk the ONNX graph once, fold what is constant
(:mod:`~pyconv.convert.folding`), map every other node onto registered pyconv
ops (:mod:`~pyconv.convert.onnx_ops`), fuse exporter patterns
(:mod:`~pyconv.convert.fusion`), then emit the result through
:class:`pyconv.GraphBuilder`.

``onnx`` is imported only here (an optional dependency); the runtime never needs it.
Every unsupported node is collected and reported in a single
:class:`pyconv.UnsupportedOpError` at the end of the walk.
"""
from __future__ import annotations

import ast
import json
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pyconv import registry
from pyconv.convert import fusion
from pyconv.convert.folding import Dim, NotFoldable, fold, has_symbols
from pyconv.convert.ir import Graph, Node, Shape, static
from pyconv.convert.onnx_ops import HANDLERS, Unsupported
from pyconv.errors import ModelError, UnsupportedOpError

InputShapes = Mapping[str, Sequence[Union[int, str]]]

MIN_OPSET, MAX_OPSET = 7, 21
_EXAMPLES_PER_OP = 3


class _Failures:
    """Every node that cannot be converted, grouped by op type, for one error at the end."""

    def __init__(self) -> None:
        self.by_op: "OrderedDict[str, List[Tuple[str, str]]]" = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self.by_op)

    def add(self, op: str, node_name: str, reason: str) -> None:
        self.by_op.setdefault(op, []).append((node_name, reason))

    def error(self, context: str) -> UnsupportedOpError:
        total = sum(len(v) for v in self.by_op.values())
        lines = [f"cannot convert {total} node(s) of {len(self.by_op)} op type(s) ({context}):"]
        for op, items in self.by_op.items():
            names = ", ".join(n for n, _ in items[:_EXAMPLES_PER_OP])
            more = ", ..." if len(items) > _EXAMPLES_PER_OP else ""
            reasons = sorted({r for _, r in items})
            lines.append(f"  {op} x{len(items)} (e.g. {names}{more}): {'; '.join(reasons[:2])}")
        return UnsupportedOpError("\n".join(lines))


def _import_onnx():
    try:
        import onnx  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
        import onnx.shape_inference  # noqa: F401
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError('converting ONNX models needs the onnx package: pip install "pyconv[onnx]"') from None
    return onnx


# --------------------------------------------------------------------------- reading the ONNX model

def _attr_values(node) -> Dict[str, Any]:
    onnx = _import_onnx()
    values = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        values[attr.name] = value
    return values


_INPUT_DIM_NAMES = {0: "N", 2: "H", 3: "W"}


def _dims(type_proto, tensor: str, graph_input: bool = False) -> Optional[Shape]:
    """A declared shape; unnamed dynamic dims get a unique symbol (on inputs: N, H, W by position)."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for i, d in enumerate(type_proto.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            unnamed = _INPUT_DIM_NAMES.get(i, f"{tensor}_d{i}") if graph_input else f"{tensor}:{i}"
            dims.append(Dim(d.dim_param or unnamed))
    return tuple(dims)


_SMALL_INITIALIZER = 1024  # elements; shape-like constants that data propagation may need


def _without_big_weights(model):
    """``model`` for shape inference: big initializers become typed inputs (inference serializes
    the whole model twice; weights would dominate its cost on large networks)."""
    onnx = _import_onnx()
    graph = model.graph
    light = onnx.GraphProto(name=graph.name)
    light.node.extend(graph.node)
    light.input.extend(graph.input)
    light.output.extend(graph.output)
    light.value_info.extend(graph.value_info)
    declared = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if np.prod(tensor.dims, dtype=np.int64) <= _SMALL_INITIALIZER:
            light.initializer.append(tensor)
        elif tensor.name not in declared:
            light.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    copy = onnx.ModelProto(ir_version=model.ir_version, graph=light)
    copy.opset_import.extend(model.opset_import)
    return copy


def _anonymous(dim) -> bool:
    """A dim ONNX shape inference left unknown or named itself (``unk__3``)."""
    return not dim.HasField("dim_value") and (not dim.dim_param or dim.dim_param.startswith("unk__"))


def _fix_input_shapes(model, input_shapes: Optional[InputShapes], real_inputs: List[Any]) -> None:
    """Overwrite the declared shapes of graph inputs (``--input-shape``)."""
    if not input_shapes:
        return
    by_name = {i.name: i for i in real_inputs}
    if len(input_shapes) == 1 and len(real_inputs) == 1 and next(iter(input_shapes)) in ("", None):
        input_shapes = {real_inputs[0].name: next(iter(input_shapes.values()))}
    for name, shape in input_shapes.items():
        if not name and len(by_name) > 1:
            raise ModelError(f"the model has several inputs {sorted(by_name)}: name the one each shape is for")
        if name not in by_name:
            raise ModelError(f"--input-shape names {name!r}, but the model's inputs are {sorted(by_name)}")
        dims = by_name[name].type.tensor_type.shape
        del dims.dim[:]
        for d in shape:
            entry = dims.dim.add()
            if isinstance(d, str) and not d.isdigit():
                entry.dim_param = d
            else:
                entry.dim_value = int(d)


# --------------------------------------------------------------------------- the converter

class _Importer:
    """One conversion: ONNX graph -> :class:`pyconv.convert.ir.Graph`."""

    def __init__(self, model, input_shapes: Optional[InputShapes]):
        onnx = _import_onnx()
        self.model = model
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MAX_OPSET)
        init_names = {t.name for t in graph.initializer}
        self.consts: Dict[str, np.ndarray] = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        real_inputs = [i for i in graph.input if i.name not in init_names]
        _fix_input_shapes(model, input_shapes, real_inputs)
        self.shapes: Dict[str, Optional[Shape]] = {}
        self.partial_shapes: Dict[str, Shape] = {}  # ONNX-inferred shapes with anonymous dims
        self._infer_shapes()
        self.inputs = [i.name for i in real_inputs]
        self.input_shapes = {i.name: _dims(i.type, i.name, graph_input=True) for i in real_inputs}
        self.input_dtypes = {i.name: i.type.tensor_type.elem_type for i in real_inputs}
        self.skipped: set = set()  # indices of ONNX nodes made redundant before the walk
        # (protobuf hands out fresh wrapper objects: their id() is not stable)
        self.nodes: List[Node] = []
        self.alias: Dict[str, str] = {}  # Identity/Dropout outputs -> their input
        self.poisoned: set = set()  # outputs of nodes that failed (their users are not reported again)
        self.failures = _Failures()
        # IR tensor -> (ONNX node, IR op, reason): reported if that IR op still produces it after fusion
        self.deferred: Dict[str, Tuple[Any, str, str]] = {}
        self._counter = 0
        # tensors something reads: optional outputs nobody reads (Dropout mask, MaxPool indices) are ignored
        self.used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}

    def _infer_shapes(self) -> None:
        onnx = _import_onnx()
        try:
            inferred = onnx.shape_inference.infer_shapes(_without_big_weights(self.model), data_prop=True).graph
        except Exception:  # noqa: BLE001 - shape inference is best effort; handlers say when they need a shape
            inferred = self.model.graph
        inputs = {i.name for i in inferred.input}
        for info in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
            shape = _dims(info.type, info.name, graph_input=info.name in inputs)
            anonymous = shape is not None and any(_anonymous(d) for d in info.type.tensor_type.shape.dim)
            if anonymous and info.name not in inputs:
                # dims ONNX could not relate to the inputs: pyconv's own inference (which follows the
                # input symbols through transposes and reshapes) is preferred; this is the fallback
                self.partial_shapes[info.name] = shape
            elif shape is not None or info.name not in self.shapes:
                self.shapes[info.name] = shape

    # ---- helpers for handlers

    def name(self, tensor: str) -> str:
        return self.alias.get(tensor, tensor)

    def const(self, tensor: str) -> Optional[np.ndarray]:
        return self.consts.get(self.name(tensor)) if tensor else None

    def need_const(self, node, index: int, what: str) -> np.ndarray:
        value = self.const(node.input[index]) if index < len(node.input) else None
        if value is None:
            raise Unsupported(f"{what} (input {index}) must be a constant (initializer or Constant node)")
        if has_symbols(value):
            raise Unsupported(f"{what} depends on a dynamic input dimension ({value.tolist()}); "
                              "fix the input shape with --input-shape")
        return value

    def optional_const(self, node, index: int, what: str) -> Optional[np.ndarray]:
        if index >= len(node.input) or not node.input[index]:
            return None
        return self.need_const(node, index, what)

    def shape(self, tensor: str) -> Optional[Shape]:
        tensor = self.name(tensor)
        if tensor in self.consts:
            return tuple(self.consts[tensor].shape)
        shape = self.shapes.get(tensor)
        return shape if shape is not None else self.partial_shapes.get(tensor)

    def rank(self, tensor: str) -> int:
        shape = self.shape(tensor)
        if shape is None:
            raise Unsupported(f"the rank of {tensor!r} is unknown (ONNX shape inference found no shape)")
        return len(shape)

    def spatial(self, tensor: str, what: str) -> Tuple[int, int]:
        shape = self.shape(tensor)
        if shape is None or len(shape) != 4 or not static(shape[2:]):
            raise Unsupported(f"{what} needs the static spatial size of {tensor!r} (got {shape}); "
                              "fix the input shape with --input-shape")
        return int(shape[2]), int(shape[3])

    def fresh(self, base: str) -> str:
        self._counter += 1
        return f"{base}__{self._counter}"

    def emit(self, op: str, inputs: Sequence[str], outputs: Sequence[str], node=None,
             weights: Optional[Mapping[str, np.ndarray]] = None, **attrs) -> Node:
        ir = Node(op, [self.name(i) for i in inputs], list(outputs),
                  {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (weights or {}).items() if v is not None},
                  attrs, name=(node.name if node is not None and node.name else ""))
        self.nodes.append(ir)
        if any(self.shapes.get(o) is None for o in ir.outputs):
            self._infer_missing_shapes(ir)
        return ir

    def _infer_missing_shapes(self, ir: Node) -> None:
        """Output shapes ONNX shape inference did not give, from pyconv's own shape rules.

        Symbolic dims are probed with two different sets of values: a dim that follows the probe
        is that symbol, one that stays fixed is static, any other becomes a fresh symbol."""
        in_shapes = [self.shape(i) for i in ir.inputs]
        if any(s is None for s in in_shapes):
            return
        symbols = sorted({d for s in in_shapes for d in s if isinstance(d, Dim)}, key=lambda d: d.name)
        runs = []
        for base in (1009, 2003):
            probe = {d: base + 2 * k for k, d in enumerate(symbols)}
            concrete = [tuple(probe.get(d, d) if isinstance(d, Dim) else int(d) for d in s) for s in in_shapes]
            try:
                spec = registry.get(ir.op)
                outs = spec.infer_shape(concrete, {k: v.shape for k, v in ir.weights.items()},
                                        spec.resolve_attrs(ir.attrs))
            except Exception:  # noqa: BLE001 - best effort; handlers report when they need a shape
                return
            runs.append(({v: d for d, v in probe.items()}, outs))
        (back1, outs1), (back2, outs2) = runs
        for o, s1, s2 in zip(ir.outputs, outs1, outs2):
            if self.shapes.get(o) is None:
                self.shapes[o] = tuple(
                    int(a) if a == b else back1[a] if a in back1 and back1[a] == back2.get(b) else Dim(f"{o}:{i}")
                    for i, (a, b) in enumerate(zip(s1, s2)))

    # ---- the walk

    def absorb_nhwc_inputs(self) -> Dict[str, str]:
        """Inputs read only through Transpose(0, 3, 1, 2) (Keras/TensorFlow exports) become NCHW inputs.

        Returns ``{input: "NHWC"}`` for the inputs changed; their Transpose nodes are skipped."""
        readers: Dict[str, List[int]] = {}
        for index, node in enumerate(self.model.graph.node):
            for name in node.input:
                readers.setdefault(name, []).append(index)
        outputs = {o.name for o in self.model.graph.output}
        changed = {}
        for name in self.inputs:
            users, shape = readers.get(name, []), self.input_shapes.get(name)
            if len(users) != 1 or name in outputs or shape is None or len(shape) != 4:
                continue
            node = self.model.graph.node[users[0]]
            attrs = _attr_values(node)
            if node.op_type == "Transpose" and list(attrs.get("perm", [])) == [0, 3, 1, 2]:
                nchw = (shape[0], shape[3], shape[1], shape[2])
                self.input_shapes[name] = self.shapes[name] = nchw
                self.alias[node.output[0]] = name
                self.skipped.add(users[0])
                changed[name] = "NHWC"
        return changed

    def run(self) -> Graph:
        """Walk every node; failures are collected (see :meth:`check_deferred`), not raised."""
        for name, elem_type in self.input_dtypes.items():
            if elem_type not in (0, 1, 10, 11):  # undefined, float, float16, double
                raise ModelError(f"input {name!r} has ONNX element type {elem_type}; pyconv models take float "
                                 "tensors (NCHW float32)")
        for index, node in enumerate(self.model.graph.node):
            if index in self.skipped:
                continue
            self._convert_node(node)
        outputs = [self.name(o.name) for o in self.model.graph.output]
        return Graph(self.nodes, self.consts, self.shapes, self.inputs, outputs,
                     [o.name for o in self.model.graph.output])

    def _convert_node(self, node) -> None:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        attrs = _attr_values(node)
        inputs = [self.name(i) for i in node.input]
        poisoned = any(i in self.poisoned for i in inputs)
        if not poisoned and self._try_fold(node, op, attrs, inputs):
            return
        handler = HANDLERS.get(op)
        if handler is None:
            self._fail(node, op, "no pyconv counterpart")
            return
        if poisoned:
            self.poisoned.update(node.output)
            return
        try:
            handler(self, node, attrs)
        except Unsupported as exc:
            self._fail(node, op, str(exc))

    def _try_fold(self, node, op: str, attrs: Dict[str, Any], inputs: List[str]) -> bool:
        if op in ("Shape", "Size"):
            return self._fold_shape(node, op, attrs, inputs[0])
        values = [self.consts.get(i) if i else None for i in inputs]
        if any(v is None for v, i in zip(values, inputs) if i):
            return False
        try:
            results = fold(op, values, attrs, self.opset)
        except NotFoldable as exc:
            if any(v is not None and has_symbols(v) for v in values):
                self._fail(node, op, str(exc))  # shape arithmetic the runtime graph cannot express
                return True
            return False
        for name, value in zip(node.output, results):
            if name:
                self.consts[name] = value
        return True

    def _fold_shape(self, node, op: str, attrs: Dict[str, Any], tensor: str) -> bool:
        shape = self.shape(tensor)
        if shape is None:
            self._fail(node, op, f"the shape of {tensor!r} is unknown; fix the input shape with --input-shape")
            return True
        if op == "Size":
            if not static(shape):
                self._fail(node, op, "Size of a tensor with dynamic dimensions; fix them with --input-shape")
                return True
            self.consts[node.output[0]] = np.asarray(int(np.prod(shape)), dtype=np.int64)
            return True
        dims = list(shape)[attrs.get("start", 0):attrs.get("end", len(shape))]
        self.consts[node.output[0]] = np.asarray(dims, dtype=np.int64 if static(dims) else object)
        return True

    def check_deferred(self, graph: Graph) -> None:
        """Raise the one error listing every failure: those of the walk, and nodes the walk could not
        express on their own (deferred) that fusion did not remove."""
        remaining = {(n.outputs[0], n.op) for n in graph.nodes}
        for tensor, (node, ir_op, reason) in self.deferred.items():
            if (tensor, ir_op) in remaining:
                self._fail(node, node.op_type, reason)
        if self.failures:
            raise self.failures.error(f"model opset {self.opset}")

    def _fail(self, node, op: str, reason: str) -> None:
        self.failures.add(op, node.name or f"<{op} -> {node.output[0]}>", reason)
        self.poisoned.update(node.output)


# --------------------------------------------------------------------------- metadata and emission

def _onnx_metadata(model) -> Dict[str, Any]:
    """``metadata_props`` plus producer info; labels recognised under common keys."""
    props = {p.key: p.value for p in model.metadata_props}
    meta: Dict[str, Any] = {"source": {"format": "onnx", "producer": model.producer_name,
                                       "producer_version": model.producer_version,
                                       "opset": next((o.version for o in model.opset_import
                                                      if o.domain in ("", "ai.onnx")), None)}}
    if props:
        meta["onnx_metadata"] = props
    for key in ("labels", "classes", "class_names", "names"):
        if key in props:
            labels = _parse_labels(props[key])
            if labels:
                meta["labels"] = labels
                break
    return meta


def _parse_labels(text: str) -> Optional[List[str]]:
    """Labels stored as a JSON list, a JSON {index: name} dict (YOLO), or one per line / comma separated."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)  # Ultralytics writes a Python dict repr
        except (ValueError, SyntaxError):
            value = None
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        try:
            return [str(value[k]) for k in sorted(value, key=lambda k: int(k))]
        except (TypeError, ValueError):
            return None
    sep = "\n" if "\n" in text else ","
    items = [s.strip() for s in text.split(sep)]
    return [s for s in items if s] or None


def _emit(graph: Graph, input_shapes: Dict[str, Optional[Shape]]):
    """Hand the fused IR to pyconv.GraphBuilder."""
    from pyconv.graph.builder import GraphBuilder

    b = GraphBuilder()
    names: Dict[str, str] = {}  # IR tensor -> builder tensor
    for name in graph.inputs:
        shape = input_shapes.get(name)
        if shape is None:
            raise ModelError(f"input {name!r} has no declared shape; give one with --input-shape")
        names[name] = b.input(name, [d.name if isinstance(d, Dim) else int(d) for d in shape])
    taken = set(names)  # the builder names a node's output after the node: names must be unique

    def unique(base: str) -> str:
        name, suffix = base, 1
        while name in taken:
            suffix += 1
            name = f"{base}_{suffix}"
        taken.add(name)
        return name

    def tensor(name: str) -> str:
        if name not in names:
            if name not in graph.consts:
                raise ModelError(f"tensor {name!r} is used before it is produced")
            # 0-d constants are stored as shape (1,): same broadcasting, and what `constant` declares
            value = np.atleast_1d(np.asarray(graph.consts[name], np.float32))
            names[name] = b.add_node("constant", [], weights={"value": value}, name=unique(f"{name}_const"))
        return names[name]

    failures, failed = _Failures(), set()
    for node in graph.nodes:
        if any(i in failed for i in node.inputs):
            failed.update(node.outputs)
            continue
        name = unique(node.name or node.op)
        try:
            outs = b.add_node(node.op, [tensor(i) for i in node.inputs], weights=node.weights or None, name=name,
                              **node.attrs)
        except ModelError as exc:  # pyconv's op rejects these attributes or shapes
            failures.add(f"pyconv {node.op}", node.name or name, str(exc).split(": ", 1)[-1])
            failed.update(node.outputs)
            continue
        outs = [outs] if isinstance(outs, str) else list(outs)
        for onnx_name, ours in zip(node.outputs, outs):
            names[onnx_name] = ours
    if failures:
        raise failures.error("rejected by pyconv's ops")
    for onnx_name, tensor_name in zip(graph.output_names, graph.outputs):
        b.output(tensor(tensor_name), alias=onnx_name)
    return b


def _load_model(model):
    onnx = _import_onnx()
    if isinstance(model, (str, os.PathLike)):
        try:
            return onnx.load(os.fspath(model))
        except Exception as exc:  # noqa: BLE001 - protobuf raises assorted types
            raise ModelError(f"cannot read ONNX model {os.fspath(model)!r}: {exc}") from None
    if isinstance(model, bytes):
        try:
            return onnx.load_from_string(model)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise ModelError(f"the bytes given are not an ONNX model: {exc}") from None
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"from_onnx takes a path, bytes or an onnx.ModelProto, got {type(model).__name__}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # input shapes are rewritten in place
    return copy


def onnx_to_ir(model, input_shapes: Optional[InputShapes] = None, nchw_inputs: bool = True):
    """Convert and fuse without emitting: ``(ir Graph, input shapes, metadata, rewrites per pass)``.

    ``nchw_inputs``: an input read only through ``Transpose(0, 3, 1, 2)`` (an NHWC model) is
    declared NCHW instead and the transpose dropped (``--input-shape`` still uses the file's layout)."""
    proto = _load_model(model)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        raise ModelError(f"ONNX opset {opset} is older than the oldest supported ({MIN_OPSET})")
    importer = _Importer(proto, input_shapes)
    layouts = importer.absorb_nhwc_inputs() if nchw_inputs else {}
    graph = importer.run()
    counts = fusion.run_passes(graph)
    importer.check_deferred(graph)
    metadata = _onnx_metadata(proto)
    if layouts:
        metadata["source"]["input_layout"] = layouts  # the file's layout; the pyconv model takes NCHW
    return graph, importer.input_shapes, metadata, counts


def from_onnx(model, input_shapes: Optional[InputShapes] = None, metadata: Optional[Mapping[str, Any]] = None,
              nchw_inputs: bool = True):
    """Convert an ONNX model (path, bytes or ``onnx.ModelProto``) to a pyconv graph.

    ``input_shapes`` fixes input dimensions (``{"input": [1, 3, 224, 224]}``; strings stay symbolic);
    ``metadata`` is merged over what the ONNX file carries (labels, preprocessing).
    ``nchw_inputs``: NHWC inputs that the model immediately transposes to NCHW become NCHW
    inputs (see :func:`onnx_to_ir`).
    Raises :class:`pyconv.UnsupportedOpError` listing every node that cannot be converted.
    """
    graph, shapes, meta, _ = onnx_to_ir(model, input_shapes, nchw_inputs)
    meta.update(metadata or {})
    return emit_graph(graph, shapes, meta)


def emit_graph(graph: Graph, input_shapes: Dict[str, Optional[Shape]], metadata: Mapping[str, Any]):
    """The validated pyconv graph (:class:`pyconv.graph.format.Graph`) for a fused IR."""
    return _emit(graph, input_shapes).build(metadata=metadata)
