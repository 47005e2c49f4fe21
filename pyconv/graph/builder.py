"""``GraphBuilder``: write valid model files from Python.

    b = GraphBuilder()
    x = b.input("input", ["N", 3, 224, 224])
    y = b.conv2d(x, weight=w, bias=bias, padding=1, activation="relu")
    y = b.global_avg_pool2d(y)
    b.output(b.flatten(y), alias="logits")
    b.save("model.npz", metadata={"labels": [...]})

Every registered op is a method (``b.<op>(*inputs, name=None, **weights_and_attrs)``);
keyword arguments named like the op's weights become weight arrays (stored
as ``"<node>.<weight>"``), the others attributes.  Mistakes (unknown op,
unknown input, bad attribute, shapes that do not fit) raise at the call that
makes them, whenever the input shapes are known (the batch dimension is
probed as 1; other symbolic dimensions take the sizes given as ``probe`` to
``input``, or defer shape checks to ``build``).  A fully convolutional network
declares ``["N", 3, "H", "W"]`` with ``probe={"H": 224, "W": 224}``: it is
built and checked at 224 x 224 and runs at any size its layers allow.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from pyconv import registry
from pyconv.errors import ModelError
from pyconv.graph.format import Graph, Node, OutputInfo, TensorInfo, save_graph
from pyconv.graph.shapes import BATCH_SYMBOLS, Shape, infer_node
from pyconv.graph.validate import validate


def _jsonable(value: Any, where: str) -> Any:
    """Attribute values as JSON values: tuples -> lists, NumPy scalars/arrays -> Python."""
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    raise ModelError(f"{where}: attribute value {value!r} ({type(value).__name__}) cannot be stored as JSON")


class GraphBuilder:
    """Build a :class:`~pyconv.graph.format.Graph` node by node (see the module docstring)."""

    def __init__(self) -> None:
        self._inputs: List[TensorInfo] = []
        self._outputs: List[OutputInfo] = []
        self._nodes: List[Node] = []
        self._weights: Dict[str, np.ndarray] = {}
        self._shapes: Dict[str, Optional[Shape]] = {}  # probe shapes; None when not known yet
        self._node_names: set = set()
        self._counters: Dict[str, int] = {}

    # ------------------------------------------------------------------ graph inputs/outputs
    def input(self, name: str, shape: Sequence[Union[int, str]], dtype: str = "float32",
              probe: Optional[Mapping[str, int]] = None) -> str:
        """Declare a graph input; dimensions are ints or symbolic names ("N", "H", "W").

        ``probe`` gives symbolic dimensions a size to build with (shape checks, ``shape()``);
        the graph keeps the symbols.  The batch dimension is probed as 1."""
        probe = dict(probe or {})
        for symbol, size in probe.items():
            if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0):
                raise ModelError(f"input {name!r}: probe size of {symbol!r} must be a positive int, got {size!r}")
            if symbol not in shape:
                raise ModelError(f"input {name!r}: probe names {symbol!r}, which is not a dimension of {list(shape)}")
        self._check_new_tensor(name, f"input {name!r}")
        dims = []
        for d in shape:
            if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0:
                dims.append(int(d))
            elif isinstance(d, str) and d:
                dims.append(d)
            else:
                raise ModelError(f"input {name!r}: dimensions must be positive ints or symbolic names, got {shape!r}")
        self._inputs.append(TensorInfo(name, tuple(dims), dtype))
        probed = [d if isinstance(d, int) else 1 if d in BATCH_SYMBOLS or axis == 0 else probe.get(d)
                  for axis, d in enumerate(dims)]
        self._shapes[name] = None if None in probed else tuple(int(d) for d in probed)
        return name

    def output(self, name: str, alias: Optional[str] = None) -> str:
        """Mark tensor ``name`` as a graph output, published as ``alias`` (default: its own name)."""
        if name not in self._shapes:
            raise ModelError(f"output {name!r} is not a tensor of this graph")
        public = alias or name
        if any(o.name == public for o in self._outputs):
            raise ModelError(f"graph output {public!r} is declared twice")
        self._outputs.append(OutputInfo(public, name))
        return public

    # ------------------------------------------------------------------ nodes
    def add_node(self, op: str, inputs: Sequence[str], weights: Optional[Mapping[str, Any]] = None,
                 name: Optional[str] = None, **attrs: Any) -> Union[str, List[str]]:
        """Add one op call; returns its output tensor name (a list for multi-output ops)."""
        spec = registry.get(op)
        if isinstance(inputs, str):
            inputs = [inputs]
        name = name or self._fresh_name(op)
        where = f"node {name!r} ({op})"
        if name in self._node_names:
            raise ModelError(f"{where}: a node named {name!r} already exists")
        for t in inputs:
            if t not in self._shapes:
                raise ModelError(f"{where}: input {t!r} is not a tensor of this graph (use the names "
                                 "returned by input() and the op methods)")
        attrs = {k: _jsonable(v, where) for k, v in attrs.items()}
        resolved = spec.resolve_attrs(attrs, f"{where}: ")
        weights = dict(weights or {})
        for role in weights:
            if role not in spec.weight_names:
                raise ModelError(f"{where}: op {op!r} has no weight {role!r}; "
                                 f"its weights are {list(spec.weight_names)}")
        missing = [r for r in spec.required_weights if weights.get(r) is None]
        if missing:
            raise ModelError(f"{where}: missing weight(s) {missing}")
        n_out = spec.outputs_for(resolved)
        outputs = [name] if n_out == 1 else [f"{name}:{i}" for i in range(n_out)]
        for t in outputs:
            self._check_new_tensor(t, where)
        arrays = {}
        for role, value in weights.items():
            if value is None:
                continue
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiub":
                raise ModelError(f"{where}: weight {role!r} must be a numeric array, got dtype {arr.dtype}")
            arrays[f"{name}.{role}"] = np.array(arr, dtype=np.float32, order="C")  # a copy the caller can't mutate
        node = Node(name, op, list(inputs), outputs, {role: f"{name}.{role}" for role in weights
                                                        if weights[role] is not None}, attrs)
        in_shapes = [self._shapes[t] for t in inputs]
        if all(s is not None for s in in_shapes):
            out_shapes: List[Optional[Shape]] = list(infer_node(Graph([], [], [], arrays), node, in_shapes))
        else:
            out_shapes = [None] * n_out
        self._weights.update(arrays)
        self._nodes.append(node)
        self._node_names.add(name)
        self._shapes.update(zip(outputs, out_shapes))
        return outputs[0] if n_out == 1 else outputs

    def __getattr__(self, op: str):
        if op.startswith("_"):
            raise AttributeError(op)
        try:
            spec = registry.get(op)
        except ModelError:
            raise AttributeError(f"GraphBuilder has no method {op!r} and pyconv has no op of that name") from None

        def add(*inputs: str, name: Optional[str] = None, **kwargs: Any):
            weights = {k: kwargs.pop(k) for k in list(kwargs) if k in spec.weight_names}
            return self.add_node(op, list(inputs), weights=weights, name=name, **kwargs)

        add.__name__ = op
        add.__doc__ = f"Add a {op!r} node. {spec.doc}"
        return add

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(registry.names()))

    def shape(self, tensor: str) -> Optional[Shape]:
        """Shape of ``tensor`` with batch 1 (and the probe sizes), or None when it depends on
        symbolic dimensions without one."""
        return self._shapes[tensor]

    # ------------------------------------------------------------------ results
    def build(self, metadata: Optional[Mapping[str, Any]] = None) -> Graph:
        """The validated graph (a ModelError describes what is wrong otherwise)."""
        if not self._outputs:
            raise ModelError("the graph has no outputs; mark them with output(name)")
        graph = Graph(list(self._inputs), list(self._outputs), list(self._nodes), dict(self._weights),
                      _jsonable(dict(metadata or {}), "metadata"))
        validate(graph)
        return graph

    def save(self, path: Union[str, os.PathLike], metadata: Optional[Mapping[str, Any]] = None) -> Graph:
        """Build, validate and write the model to ``path`` (.npz); returns the graph."""
        graph = self.build(metadata)
        save_graph(graph, path)
        return graph

    # ------------------------------------------------------------------ helpers
    def _fresh_name(self, op: str) -> str:
        while True:
            self._counters[op] = self._counters.get(op, 0) + 1
            name = f"{op}_{self._counters[op]}"
            if name not in self._node_names and name not in self._shapes:
                return name

    def _check_new_tensor(self, name: str, where: str) -> None:
        if not isinstance(name, str) or not name:
            raise ModelError(f"{where}: tensor names must be non-empty strings, got {name!r}")
        if name in self._shapes:
            raise ModelError(f"{where}: tensor {name!r} already exists; names must be unique")
