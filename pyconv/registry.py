"""The op registry: every op pyconv knows is declared here once.

An :class:`OpSpec` says what an op takes (activation inputs, named weights,
attributes with defaults), how its output shape follows from its inputs, what
it costs (parameters, multiply-accumulates, additions), how it widens the
receptive field, and which function computes it.  The functional API
(``pyconv.ops``), the model loader, shape inference, the executor's planner,
``pyconv summary``, the ONNX importer and the op tests all read the registry
instead of repeating that knowledge.

Ops register themselves when their family module in ``pyconv.ops`` is
imported; :func:`get` and :func:`all_ops` import ``pyconv.ops`` first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pyconv.errors import ModelError, UnsupportedOpError

Shape = Tuple[int, ...]
REQUIRED = object()  # attribute default meaning "must be given"


@dataclass(frozen=True)
class Counts:
    """Cost of one op call: parameters, multiply-accumulates and plain additions/comparisons."""

    params: int = 0
    macs: int = 0
    adds: int = 0


@dataclass(frozen=True)
class Window:
    """How an op maps output positions to input positions (for receptive fields)."""

    kernel: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)


def _weights_only_counts(input_shapes, weight_shapes, attrs, output_shapes) -> Counts:
    return Counts(params=sum(int(np.prod(s)) for s in weight_shapes.values()))


@dataclass(frozen=True)
class OpSpec:
    """Declaration of one op.

    fn:          the functional API, called as ``fn(*inputs, **weights, **attrs)``.
    inputs:      number of activation inputs, or ``(min, max)``; ``max=None`` is variadic.
    weights:     names of parameter arrays; a trailing ``?`` marks an optional one.
    attrs:       attribute name -> default (``REQUIRED`` when it must be given).
    infer_shape: ``(input_shapes, weight_shapes, attrs) -> list of output shapes``;
                 raises ValueError for inconsistent shapes.
    count:       ``(input_shapes, weight_shapes, attrs, output_shapes) -> Counts``.
    window:      ``(attrs, weight_shapes) -> Window`` for ops with a spatial window;
                 None for pointwise ops (receptive field unchanged).
    prepare:     ``(weights, attrs) -> callable(*inputs, out=None)``; lets the executor
                 transform weights once (Winograd, packing). Default: bind ``fn``.
    reference:   plain float64 NumPy implementation with ``fn``'s signature (tests).
    num_outputs: ``attrs -> int`` for ops with several outputs (split).
    inplace:     the output may share memory with the first input.
    view:        ``(input shape, output shapes, attrs) -> element offsets or None``: for ops
                 whose every output is a contiguous run of the first input's memory
                 (reshape, flatten, identity, a split of whole leading blocks), where each
                 output starts within the input; None when this call is not such a view.
                 The executor then aliases the outputs and never runs the op.
    """

    name: str
    fn: Callable[..., Any]
    infer_shape: Callable[..., List[Shape]]
    inputs: Any = 1
    weights: Tuple[str, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)
    count: Callable[..., Counts] = _weights_only_counts
    window: Optional[Callable[..., Window]] = None
    prepare: Optional[Callable[..., Callable[..., Any]]] = None
    reference: Optional[Callable[..., Any]] = None
    num_outputs: Optional[Callable[[Mapping[str, Any]], int]] = None
    inplace: bool = False
    view: Optional[Callable[..., Optional[List[int]]]] = None
    doc: str = ""

    @property
    def input_range(self) -> Tuple[int, Optional[int]]:
        if isinstance(self.inputs, int):
            return self.inputs, self.inputs
        return tuple(self.inputs)  # type: ignore[return-value]

    @property
    def required_weights(self) -> Tuple[str, ...]:
        return tuple(w for w in self.weights if not w.endswith("?"))

    @property
    def weight_names(self) -> Tuple[str, ...]:
        return tuple(w.rstrip("?") for w in self.weights)

    def outputs_for(self, attrs: Mapping[str, Any]) -> int:
        return 1 if self.num_outputs is None else self.num_outputs(attrs)

    def resolve_attrs(self, attrs: Mapping[str, Any], where: str = "") -> Dict[str, Any]:
        """Attributes with defaults filled in; unknown or missing ones raise ModelError."""
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise ModelError(f"{where}op {self.name!r} has no attribute(s) {unknown}; known: {sorted(self.attrs)}")
        resolved = {}
        for key, default in self.attrs.items():
            if key in attrs:
                resolved[key] = attrs[key]
            elif default is REQUIRED:
                raise ModelError(f"{where}op {self.name!r} needs attribute {key!r}")
            else:
                resolved[key] = default
        return resolved

    def bind(self, weights: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Callable[..., Any]:
        """A callable ``f(*inputs, out=None)`` with weights and attributes bound (prepared once)."""
        if self.prepare is not None:
            return self.prepare(dict(weights), dict(attrs))
        fn, bound = self.fn, {**weights, **attrs}

        def call(*inputs, out=None):
            result = fn(*inputs, **bound)
            if out is not None and result is not out:
                np.copyto(out, result)
                return out
            return result

        return call


_REGISTRY: Dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    """Add an op to the registry (each name once)."""
    if spec.name in _REGISTRY:
        raise RuntimeError(f"op {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_ops() -> None:
    import pyconv.ops  # noqa: F401  (family modules register their ops on import)


def get(name: str) -> OpSpec:
    """The spec of op ``name``; UnsupportedOpError when pyconv has no such op."""
    _load_ops()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedOpError(f"unknown op {name!r}; pyconv has: {', '.join(sorted(_REGISTRY))}") from None


def all_ops() -> Dict[str, OpSpec]:
    """Every registered op by name."""
    _load_ops()
    return dict(_REGISTRY)


def names() -> Sequence[str]:
    return sorted(all_ops())
