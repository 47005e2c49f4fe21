"""The importer's intermediate graph: pyconv ops over named tensors, before
pattern fusion and before they are handed to :class:`pyconv.GraphBuilder`.

Tensor names are the ONNX ones (new tensors get fresh names), so shapes that
ONNX shape inference found stay attached to them.  Inputs may name constants
(``Graph.consts``); they become ``constant`` nodes or folded weights on emission.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from pyconv.convert.folding import Dim

Shape = Tuple[Any, ...]  # ints and Dim symbols


@dataclass
class Node:
    """One pyconv op: ``op`` and ``attrs`` use pyconv's names (see pyconv.registry)."""

    op: str
    inputs: List[str]
    outputs: List[str]
    weights: Dict[str, np.ndarray] = field(default_factory=dict)
    attrs: Dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class Graph:
    """Nodes in topological order plus what the passes need to know about tensors."""

    nodes: List[Node]
    consts: Dict[str, np.ndarray]
    shapes: Dict[str, Optional[Shape]]
    inputs: List[str]
    outputs: List[str]  # tensors read by the graph outputs
    output_names: List[str] = field(default_factory=list)  # their public (ONNX) names
    _counter: int = 0
    _removed: Dict[int, Node] = field(default_factory=dict)  # holding the nodes keeps their ids unique

    def fresh(self, base: str) -> str:
        """A tensor name not used anywhere yet."""
        self._counter += 1
        return f"{base}__{self._counter}"

    def producers(self) -> Dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> Dict[str, List[Node]]:
        users: Dict[str, List[Node]] = defaultdict(list)
        for node in self.nodes:
            for name in node.inputs:
                users[name].append(node)
        return users

    def protected(self) -> Set[str]:
        """Tensors that must survive fusion (graph outputs)."""
        return set(self.outputs)

    def shape(self, name: str) -> Optional[Shape]:
        if name in self.consts:
            return tuple(self.consts[name].shape)
        return self.shapes.get(name)

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def replace(self, remove: List[Node], new: Node) -> None:
        """Put ``new`` where the last of ``remove`` was (its inputs come earlier) and drop the rest."""
        ids = {id(n) for n in remove}
        last = max(i for i, n in enumerate(self.nodes) if id(n) in ids)
        self.nodes[last] = new
        self.nodes = [n for n in self.nodes if id(n) not in ids]
        self._removed.update((id(n), n) for n in remove)

    def alive(self, node: Node) -> bool:
        """False once a pass has replaced ``node`` (passes iterate over snapshots)."""
        return id(node) not in self._removed


def static(shape: Optional[Shape]) -> bool:
    """True when every dimension of ``shape`` is a known int."""
    return shape is not None and all(not isinstance(d, Dim) for d in shape)
