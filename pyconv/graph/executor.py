"""``pyconv.load`` and :class:`Model`: run a model file on NumPy arrays.

Data flows one way: file -> validate -> optimize (fold, fuse) -> prepare ops
(weights transformed once) -> plan buffers (once per input shape, cached) ->
run (a flat list of calls).  A model may be called from several Python
threads at once: each concurrent call takes its own set of buffers from a
per-shape pool, and the prepared ops hold only read-only weights.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pyconv import registry
from pyconv.errors import InputError, ModelError
from pyconv.graph import passes
from pyconv.graph.format import Graph, Node, available_memory, open_graph, released
from pyconv.graph.plan import BufferPlan, ExecutionState, memory_report, plan_buffers, prepare_ops, run_steps
from pyconv.graph.shapes import Shape, bind_symbols, input_shapes_for, probe_symbols
from pyconv.graph.validate import Checked, validate, warn_non_finite

MAX_CACHED_PLANS = 8


def _auto_without_winograd(graph: Graph, node: Node, attrs: Mapping[str, Any]) -> str:
    """conv2d's own "auto" rule, with im2col where it would pick Winograd."""
    from pyconv.ops.conv import ConvGeometry, choose_algorithm

    geometry = ConvGeometry.from_args(graph.weights[node.weights["weight"]].shape, None, attrs["stride"],
                                      attrs["padding"], attrs["dilation"], attrs["groups"])
    chosen = choose_algorithm(geometry, "auto")
    return "im2col" if chosen.startswith("winograd") else chosen


def _node_attrs(graph: Graph, winograd: bool, algorithms: Mapping[str, str]) -> Dict[str, Dict[str, Any]]:
    """Resolved attributes per node, with the user's algorithm choices applied."""
    names = {n.name for n in graph.nodes}
    unknown = sorted(set(algorithms) - names)
    if unknown:
        raise ModelError(f"algorithms= names node(s) {unknown} that the model does not have")
    result = {}
    for node in graph.nodes:
        spec = registry.get(node.op)
        attrs = spec.resolve_attrs(node.attrs, f"node {node.name!r} ({node.op}): ")
        if node.name in algorithms:
            if "algorithm" not in attrs:
                raise ModelError(f"algorithms=: node {node.name!r} is a {node.op}, which has no algorithm choice")
            attrs["algorithm"] = algorithms[node.name]
        elif not winograd and node.op == "conv2d" and attrs["algorithm"] == "auto":
            attrs["algorithm"] = _auto_without_winograd(graph, node, attrs)
        result[node.name] = attrs
    return result


class Model:
    """A loaded, validated and prepared model (see :func:`load`).

    ``model.graph`` is the graph as given (structure, attributes, metadata, weight shapes:
    its arrays are :class:`~pyconv.graph.format.ReleasedArray` stand-ins, the model keeps
    only the prepared weights); ``model.optimized`` is the rewritten graph that runs."""

    def __init__(self, graph: Graph, winograd: bool = True, algorithms: Optional[Mapping[str, str]] = None,
                 optimize: bool = True) -> None:
        self._prepare(graph, validate(graph), dict(graph.weights), winograd, algorithms, optimize)

    def _prepare(self, graph: Graph, checked: Checked, weights: Dict[str, np.ndarray], winograd: bool,
                 algorithms: Optional[Mapping[str, str]], optimize: bool) -> None:
        """Optimize and prepare; ``weights`` (the graph's arrays) is consumed: arrays that the
        rewrites replace are freed as they go, so a loaded model never holds its file's copy."""
        self.graph = Graph(graph.inputs, graph.outputs, graph.nodes, released(graph.weights), graph.metadata)
        self.metadata: Dict[str, Any] = graph.metadata
        self.input_names: List[str] = [t.name for t in graph.inputs]
        self.output_names: List[str] = [o.name for o in graph.outputs]
        if optimize:
            self.optimized: Graph = passes.optimize(self.graph, checked.order, checked.shapes, weights)
        else:
            self.optimized = Graph(graph.inputs, graph.outputs, checked.order, weights, graph.metadata)
        self.node_attrs = _node_attrs(self.optimized, winograd, dict(algorithms or {}))
        self._calls = prepare_ops(self.optimized, self.node_attrs)
        self._plans: "OrderedDict[Tuple[Shape, ...], Tuple[BufferPlan, List[ExecutionState]]]" = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ running
    def run(self, inputs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        """``{input name: array}`` -> ``{output name: array}`` (float32, NCHW)."""
        self._check_names(inputs)
        return dict(zip(self.output_names, self._execute([inputs[name] for name in self.input_names])))

    def __call__(self, x: Any) -> Union[np.ndarray, Tuple[np.ndarray, ...]]:
        """Run a single-input model; returns the output (a tuple when there are several)."""
        if len(self.input_names) != 1:
            raise InputError(f"this model has inputs {self.input_names}; call model.run({{name: array, ...}})")
        outputs = self._execute([x])
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _execute(self, values: Sequence[Any]) -> List[np.ndarray]:
        """Inputs in ``input_names`` order -> outputs in ``output_names`` order."""
        arrays = self._as_arrays(values)
        key = tuple(a.shape for a in arrays)
        entry = self._plans.get(key)
        if entry is None:  # shapes seen before were checked when they were planned
            bind_symbols(self.graph, dict(zip(self.input_names, key)))
        plan, pool = self._plan(key)
        state = self._take_state(plan, pool)
        try:
            outputs = run_steps(state, arrays)
            if not state.has_run:  # kernels set up lazily (filter transforms, scratch): release their temporaries
                state.has_run = True
                trim_heap()
            return outputs
        finally:
            pool.append(state)

    def profile(self, inputs: Any, runs: int = 5) -> List[Dict[str, Any]]:
        """Median time per node over ``runs`` runs: ``[{"node", "op", "seconds"}]`` in run order.

        Nodes that never run show 0: views (reshape, flatten, identity, contiguous splits:
        their outputs alias the input's memory) and constants (computed once per plan).

        ``inputs`` is an array (single-input models) or a dict like :meth:`run` takes."""
        feed = inputs if isinstance(inputs, Mapping) else {self.input_names[0]: inputs}
        arrays = self._check_inputs(feed)
        plan, pool = self._plan(tuple(a.shape for a in arrays))
        state = self._take_state(plan, pool)
        samples: List[List[float]] = []
        try:
            run_steps(state, arrays)  # warm-up: first-touch of buffers, lazy kernel set-up
            for _ in range(max(1, runs)):
                timings: List[float] = []
                run_steps(state, arrays, timings)
                samples.append(timings)
        finally:
            pool.append(state)
        medians = dict(zip(state.names, np.median(np.array(samples), axis=0) if samples[0] else []))
        return [{"node": n.name, "op": n.op, "seconds": float(medians.get(n.name, 0.0))}
                for n in self.optimized.nodes]

    # ------------------------------------------------------------------ reports
    def memory_plan(self, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> Dict[str, Any]:
        """Peak activation memory (planned buffers) and weight memory, in bytes.

        Without ``input_shapes``, symbolic dimensions take their probe values (batch 1)."""
        shapes = self.resolve_input_shapes(input_shapes)
        plan, _ = self._plan(tuple(shapes[name] for name in self.input_names))
        return {"input_shapes": shapes, **memory_report(plan, len(self.graph.nodes), len(self.optimized.nodes))}

    def summary(self, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> str:
        """Per-layer table (op, output shape, parameters, MACs, receptive field) and totals.

        Without ``input_shapes``, output shapes are written in the input's symbols ("N", "H/2")
        and counts are for the probe sizes named in the header."""
        from pyconv.graph.summary import describe_inputs, format_summary, summarize

        shapes = self.resolve_input_shapes(input_shapes)
        rows = summarize(self.graph, shapes, symbolic=input_shapes is None)
        return format_summary(rows, self.memory_plan(shapes), describe_inputs(self.graph, shapes))

    def __repr__(self) -> str:
        shapes = {t.name: list(t.shape) for t in self.graph.inputs}
        return f"<pyconv.Model inputs={shapes} outputs={self.output_names} nodes={len(self.optimized.nodes)}>"

    def resolve_input_shapes(self, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> Dict[str, Shape]:
        """Concrete input shapes: ``input_shapes`` checked against the model, or the probe values
        of symbolic dimensions (batch 1, the preprocessing crop or 224) when None."""
        if input_shapes is None:
            return input_shapes_for(self.graph, probe_symbols(self.graph))
        shapes = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
        self._check_names(shapes)
        bind_symbols(self.graph, shapes)
        return shapes

    # ------------------------------------------------------------------ internals
    def _check_names(self, inputs: Mapping[str, Any]) -> None:
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise InputError(f"the model takes inputs {self.input_names}; missing {missing}, unknown {extra}")

    def _as_arrays(self, values: Sequence[Any]) -> List[np.ndarray]:
        arrays = [np.asarray(v) for v in values]
        for name, arr in zip(self.input_names, arrays):
            if arr.dtype.char not in "fde":  # float32, float64, float16 (converted on the way in)
                raise InputError(f"input {name!r} must be a float32 array (float64 is converted), "
                                 f"got dtype {arr.dtype}")
        return arrays

    def _check_inputs(self, inputs: Mapping[str, Any]) -> List[np.ndarray]:
        self._check_names(inputs)
        arrays = self._as_arrays([inputs[name] for name in self.input_names])
        bind_symbols(self.graph, {n: a.shape for n, a in zip(self.input_names, arrays)})
        return arrays

    def _plan(self, key: Tuple[Shape, ...]) -> Tuple[BufferPlan, List[ExecutionState]]:
        entry = self._plans.get(key)
        if entry is not None:
            try:
                self._plans.move_to_end(key)  # least recently used plans are dropped first
            except KeyError:  # another thread just dropped it; this call keeps its reference
                pass
        else:
            with self._lock:
                entry = self._plans.get(key)
                if entry is None:
                    shapes = dict(zip(self.input_names, key))
                    entry = (plan_buffers(self.optimized, shapes, available_memory()), [])
                    self._plans[key] = entry
                    while len(self._plans) > MAX_CACHED_PLANS:
                        self._plans.popitem(last=False)
        return entry

    def _take_state(self, plan: BufferPlan, pool: List[ExecutionState]) -> ExecutionState:
        try:
            return pool.pop()  # atomic under the GIL: two threads never get the same state
        except IndexError:
            return ExecutionState(self.optimized, plan, self._calls)


def load(path: Union[str, os.PathLike], winograd: bool = True, algorithms: Optional[Mapping[str, str]] = None,
         optimize: bool = True, max_bytes: Optional[int] = None) -> Model:
    """Read, validate and prepare a model file.

    winograd:   False keeps every conv off Winograd (less weight memory, exact-ish GEMM numerics).
    algorithms: per-layer override, ``{node name: algorithm}`` for conv nodes.
    optimize:   False skips batch-norm folding and activation/residual fusion.
    max_bytes:  cap on the file's total uncompressed array size (default: available memory)."""
    graph, integrity = open_graph(path, max_bytes=max_bytes)
    try:
        checked = validate(graph, check_values=False)  # structure and shapes, while the CRCs are computed
    finally:
        integrity.wait()  # a damaged file is reported as such, whatever else looks wrong
    warn_non_finite(graph)
    weights, graph.weights = graph.weights, released(graph.weights)  # the model takes the only reference
    model = Model.__new__(Model)
    model._prepare(graph, checked, weights, winograd, algorithms, optimize)
    del weights
    trim_heap()
    return model


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Give freed heap memory back to the OS (after loading, and after a buffer set's first run).

    glibc keeps freed heap pages mapped, and after a large temporary is freed it
    serves allocations up to that size from the heap: the float64 temporaries of
    batch-norm folding (at load) and of the Winograd filter transforms (on first
    use) would stay in the process's RSS (~40 and ~60 MB for ResNet-18)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
