"""Execution plans: ops prepared once per model, buffers planned once per input shape.

``prepare_ops`` binds every node's weights and attributes through its op's
prepare hook (conv weights are transformed and packed there, once; the conv
op's rule picks each layer's algorithm unless the user overrides it).

``plan_buffers`` lays out memory for concrete input shapes: each tensor lives
from the step that writes it to the last step that reads it; a tensor whose
life is over returns its buffer to a free list and a later tensor reuses it
(best fit, growing the largest free buffer when none fits).  An op declared
``inplace`` writes over its first input when that input dies at this step and
nothing else lives in its buffer.  The outputs of view ops (reshape, flatten,
identity, a split into contiguous runs) are aliases of their input's memory,
and the inputs of a concat into contiguous slices are written straight into the
concatenation: those nodes never run, and a buffer is freed when the last tensor
in it dies.
(Every step costs ~20-40 us of Python and interpreter state fetched back into
cache after a conv has streamed megabytes through it; a flatten is all overhead.)
Graph inputs are copied into their own buffers and outputs get dedicated
buffers (copied out), so a run touches only memory the plan owns.

An :class:`ExecutionState` holds one set of buffers and the flat list of
``(callable, input views, output view)`` steps; the run loop is just calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pyconv import registry
from pyconv.errors import ModelError
from pyconv.graph.format import Graph
from pyconv.graph.shapes import Shape, infer_shapes, nbytes

Step = Tuple[Callable[..., Any], Tuple[np.ndarray, ...], Any]


def _multi_output(call: Callable[..., Any]) -> Callable[..., Any]:
    """Adapter for ops with several outputs: their results are copied into the planned buffers."""

    def run(*inputs, out):
        for buf, result in zip(out, call(*inputs)):
            np.copyto(buf, result)
        return out

    return run


def prepare_ops(graph: Graph, attrs_for: Mapping[str, Dict[str, Any]]) -> List[Callable[..., Any]]:
    """One bound callable per node (``graph.nodes`` order), weights transformed once."""
    calls = []
    for node in graph.nodes:
        spec = registry.get(node.op)
        weights = {role: graph.weights[key] for role, key in node.weights.items()}
        try:
            call = spec.bind(weights, attrs_for[node.name])
        except (ValueError, TypeError) as exc:
            raise ModelError(f"node {node.name!r} ({node.op}): cannot prepare the op: {exc}") from None
        calls.append(_multi_output(call) if len(node.outputs) > 1 else call)
    return calls


@dataclass
class BufferPlan:
    """Where every tensor lives for one set of input shapes."""

    shapes: Dict[str, Shape]
    buffer_sizes: List[int]  # elements of each float32 buffer
    tensor_buffer: Dict[str, int]  # tensor -> buffer index
    tensor_offset: Dict[str, int]  # tensor -> first element within its buffer (views of a split)
    constant_steps: List[int]  # nodes run once per state (no inputs: stored constants)
    run_steps: List[int]  # nodes run on every call, in order (view nodes are not run)
    weight_bytes: int

    @property
    def activation_bytes(self) -> int:
        return 4 * sum(self.buffer_sizes)


def plan_buffers(graph: Graph, input_shapes: Mapping[str, Shape], memory_limit: int) -> BufferPlan:
    """Assign every tensor to a buffer by liveness (see the module docstring)."""
    shapes = infer_shapes(graph, input_shapes, graph.nodes)
    steps = list(range(len(graph.nodes)))
    constant = [i for i in steps if not graph.nodes[i].inputs]
    running = [i for i in steps if graph.nodes[i].inputs]
    pinned = {o.tensor for o in graph.outputs} | {t for i in constant for t in graph.nodes[i].outputs}
    last_use: Dict[str, int] = {}
    for position, i in enumerate(running):
        for t in graph.nodes[i].inputs:
            last_use[t] = position

    sizes: List[int] = []
    where: Dict[str, int] = {}
    offset: Dict[str, int] = {}
    holders: Dict[int, int] = {}  # buffer -> live tensors in it
    free: List[int] = []

    def place(tensor: str, b: int, start: int = 0) -> None:
        where[tensor], offset[tensor] = b, start
        holders[b] = holders.get(b, 0) + 1

    def allocate(tensor: str) -> None:
        need = max(1, math.prod(shapes[tensor]))
        fitting = [b for b in free if sizes[b] >= need]
        if fitting:
            b = min(fitting, key=lambda b: sizes[b])
        elif free:
            b = max(free, key=lambda b: sizes[b])
            sizes[b] = need
        else:
            sizes.append(need)
            b = len(sizes) - 1
        if b in free:
            free.remove(b)
        place(tensor, b)

    def new_buffer(tensor: str) -> None:
        sizes.append(max(1, math.prod(shapes[tensor])))
        place(tensor, len(sizes) - 1)

    for t in sorted(pinned):  # outputs and constants are never overwritten
        if t in shapes and t not in where and t not in input_shapes:
            new_buffer(t)
    for t in input_shapes:
        new_buffer(t)
    gathered, gathering = _gathered_concats(graph, running, shapes, pinned)
    executed = []
    for position, i in enumerate(running):
        node, spec = graph.nodes[i], registry.get(graph.nodes[i].op)
        first = node.inputs[0]
        starts = None
        if spec.view is not None and not any(t in where for t in node.outputs):
            starts = spec.view(shapes[first], [shapes[t] for t in node.outputs], spec.resolve_attrs(node.attrs))
        if starts is not None:   # aliases of the input: nothing runs
            for t, start in zip(node.outputs, starts):
                place(t, where[first], offset[first] + start)
        elif i in gathering:
            pass                 # a concat whose inputs were written into it: nothing runs
        else:
            executed.append(i)
            for k, t in enumerate(node.outputs):
                if t in where:
                    continue
                if t in gathered:    # written straight into its slice of the concatenation
                    whole, start = gathered[t]
                    if whole not in where:
                        allocate(whole)
                    place(t, where[whole], offset[whole] + start)
                elif (k == 0 and spec.inplace and last_use.get(first) == position and first not in pinned
                        and holders[where[first]] == 1 and offset[first] == 0
                        and node.inputs.count(first) == 1 and math.prod(shapes[first]) == math.prod(shapes[t])):
                    place(t, where[first])
                else:
                    allocate(t)
        # tensors read for the last time here, and outputs nobody reads, give up their buffers;
        # a buffer is free once no live tensor is left in it
        for t in dict.fromkeys(node.inputs + node.outputs):
            if last_use.get(t, position) == position and t not in pinned:
                b = where[t]
                holders[b] -= 1
                if holders[b] == 0:
                    free.append(b)
    total = 4 * sum(sizes)
    if total > memory_limit:  # checked before any buffer exists
        biggest = max(shapes, key=lambda t: nbytes(shapes[t]))
        raise ModelError(f"input shapes {dict(input_shapes)} need {total / 2**20:.0f} MiB of activations "
                         f"(largest: {biggest!r} {shapes[biggest]}), more than the {memory_limit / 2**20:.0f} MiB "
                         "available; use smaller inputs")
    weight_bytes = sum(a.nbytes for a in graph.weights.values())
    return BufferPlan(shapes, sizes, where, offset, constant, executed, weight_bytes)


def _gathered_concats(graph: Graph, running: Sequence[int], shapes: Mapping[str, Shape],
                      pinned: set) -> Tuple[Dict[str, Tuple[str, int]], set]:
    """Concats whose inputs can be written straight into their slice of the output:
    ``({input tensor: (concat output, element offset)}, {concat node index})``.

    The slices must be contiguous runs (every axis before the concat axis of length 1,
    e.g. channels at batch 1), and each input a distinct tensor that an executed op (not
    a view, not another such concat, one output) writes and only this concat reads; the
    output is not a graph output.  SqueezeNet's fire modules, Inception branches and
    DenseNet blocks concatenate this way."""
    producer = {t: i for i in running for t in graph.nodes[i].outputs}
    readers: Dict[str, int] = {}
    for i in running:
        for t in graph.nodes[i].inputs:
            readers[t] = readers.get(t, 0) + 1
    members: Dict[str, Tuple[str, int]] = {}
    nodes = set()

    def writable(t: str) -> bool:
        maker = graph.nodes[producer[t]] if t in producer else None
        return (maker is not None and t not in pinned and t not in members and readers[t] == 1
                and producer[t] not in nodes     # a concat that does not run writes nothing
                and len(maker.outputs) == 1 and registry.get(maker.op).view is None)

    for i in running:
        node = graph.nodes[i]
        if node.op != "concat" or node.outputs[0] in pinned:
            continue
        out_shape = shapes[node.outputs[0]]
        axis = registry.get("concat").resolve_attrs(node.attrs)["axis"] % len(out_shape)
        if math.prod(out_shape[:axis]) != 1 or len(set(node.inputs)) != len(node.inputs):
            continue
        if not all(writable(t) for t in node.inputs):
            continue
        start = 0
        for t in node.inputs:
            members[t] = (node.outputs[0], start)
            start += math.prod(shapes[t])
        nodes.add(i)
    return members, nodes


def memory_report(plan: BufferPlan, nodes_in_file: int, nodes_planned: int) -> Dict[str, Any]:
    """What ``Model.memory_plan()`` returns: planned vs unplanned activation bytes, weight bytes."""
    return {
        "activation_bytes": plan.activation_bytes,
        "buffers": len(plan.buffer_sizes),
        "unplanned_activation_bytes": sum(nbytes(s) for s in plan.shapes.values()),
        "weight_bytes": plan.weight_bytes,
        "nodes": nodes_planned,
        "nodes_in_file": nodes_in_file,
    }


class ExecutionState:
    """One set of buffers and the prepared steps that run on them (one per concurrent caller)."""

    def __init__(self, graph: Graph, plan: BufferPlan, calls: Sequence[Callable[..., Any]]) -> None:
        buffers = [np.empty(n, dtype=np.float32) for n in plan.buffer_sizes]
        views = {}
        for t, b in plan.tensor_buffer.items():
            start = plan.tensor_offset[t]
            views[t] = buffers[b][start:start + math.prod(plan.shapes[t])].reshape(plan.shapes[t])

        def step(i: int) -> Step:
            node = graph.nodes[i]
            out = views[node.outputs[0]] if len(node.outputs) == 1 else tuple(views[t] for t in node.outputs)
            args = tuple(views[t] for t in node.inputs)
            bind = getattr(calls[i], "bind_step", None)  # ops that can skip their per-call checks on these buffers
            bound = bind(args, out) if bind is not None else None
            return (calls[i], args, out) if bound is None else (bound, (), out)

        self.inputs = [views[t.name] for t in graph.inputs]
        self.outputs = [views[o.tensor] for o in graph.outputs]
        self.steps: List[Step] = [step(i) for i in plan.run_steps]
        self.names = [graph.nodes[i].name for i in plan.run_steps]
        self.ops = [graph.nodes[i].op for i in plan.run_steps]
        self.has_run = False  # the executor trims the heap after a state's first run
        for fn, args, out in (step(i) for i in plan.constant_steps):
            _store(fn(*args, out=out), out)


def _store(result: Any, out: Any) -> None:
    if result is not out:
        np.copyto(out, result)


def run_steps(state: ExecutionState, inputs: Sequence[np.ndarray],
              timings: Optional[List[float]] = None) -> List[np.ndarray]:
    """Copy ``inputs`` in, run every step, return copies of the outputs (``timings``: seconds per step).

    An op refusing its arguments (ValueError/TypeError: an attribute its shape rule
    did not check) becomes a ModelError naming the node."""
    for buf, x in zip(state.inputs, inputs):
        np.copyto(buf, x)
    steps = state.steps
    step: Any = None
    try:
        if timings is None:
            for step in steps:
                fn, args, out = step
                result = fn(*args, out=out)
                if result is not out:  # an op that returned another array: store it in the planned buffer
                    np.copyto(out, result)
        else:
            for step in steps:
                fn, args, out = step
                start = perf_counter()
                _store(fn(*args, out=out), out)
                timings.append(perf_counter() - start)
    except (ValueError, TypeError) as exc:
        index = next(i for i, s in enumerate(steps) if s is step)
        name, op = state.names[index], state.ops[index]
        raise ModelError(f"node {name!r} ({op}) failed: {exc}; check its attributes") from exc
    return [o.copy() for o in state.outputs]
