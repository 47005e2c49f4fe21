"""Helpers shared by the ONNX importer tests: build small ONNX graphs with
``onnx.helper`` and compare pyconv's conversion with onnxruntime."""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import pyconv  # noqa: E402
from pyconv.convert import from_onnx  # noqa: E402
from pyconv.graph.format import save_graph  # noqa: E402

# float32 kernels against onnxruntime's float32 kernels: differences come from summation order
# (and Winograd for 3x3 convs), so tolerances are relative to the output's magnitude.
RTOL = 1e-4


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def make_model(nodes: Sequence, inputs: Mapping[str, Optional[Sequence]], outputs: Iterable[str],
               initializers: Optional[Mapping[str, np.ndarray]] = None, opset: int = 13,
               metadata: Optional[Mapping[str, str]] = None):
    """An ONNX model from nodes; ``inputs`` maps names to shapes (ints or symbolic strings)."""
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 18 else 9  # what this onnxruntime reads for any opset
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs):
    return helper.make_node(op_type, list(inputs), list(outputs), **attrs)


def const_node(name: str, value) -> "onnx.NodeProto":
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def run_onnxruntime(model, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


def convert(model, tmp_path=None, input_shapes=None, winograd: bool = True) -> "pyconv.Model":
    """from_onnx + (optionally) a save/load round trip, as the CLI does."""
    graph = from_onnx(model, input_shapes=input_shapes)
    if tmp_path is not None:
        path = tmp_path / "model.npz"
        save_graph(graph, path)
        return pyconv.load(path, winograd=winograd)
    from pyconv.graph.executor import Model

    return Model(graph, winograd=winograd)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL, what: str = "") -> None:
    """Max abs error within ``rtol`` times the output's magnitude (plus a tiny floor)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), 1e-3)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected))) if expected.size else 0.0
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} x {scale:.3g}"


def check_against_onnxruntime(model, feeds: Mapping[str, np.ndarray], rtol: float = RTOL, tmp_path=None,
                              input_shapes=None) -> "pyconv.Model":
    """Convert ``model``, run both engines on ``feeds`` and compare every output."""
    expected = run_onnxruntime(model, feeds)
    converted = convert(model, tmp_path, input_shapes)
    actual = converted.run(dict(feeds))
    for name, value in expected.items():
        assert name in actual, f"output {name!r} missing; pyconv has {sorted(actual)}"
        assert_close(actual[name], value, rtol, what=name)
    return converted


class OnnxNet:
    """Writes ONNX graphs layer by layer with random weights (what an exporter would emit)."""

    def __init__(self, seed: int = 0, opset: int = 13):
        self.nodes: list = []
        self.inits: Dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self._count = 0
        self.channels: Dict[str, int] = {}

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}{self._count}"

    def weight(self, *shape: int, scale: Optional[float] = None, positive: bool = False) -> str:
        name = self._name("w")
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = self.rng.standard_normal(shape) * (scale if scale is not None else 1.0 / np.sqrt(fan_in))
        self.inits[name] = (np.abs(value) + 0.5 if positive else value).astype(np.float32)
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, channels: Optional[int] = None, **attrs):
        outs = [self._name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self._name(op_type + "_"), **attrs))
        if channels is None and inputs and inputs[0] in self.channels:
            channels = self.channels[inputs[0]]
        for o in outs:
            if channels is not None:
                self.channels[o] = channels
        return outs[0] if n_out == 1 else outs

    def input(self, name: str, channels: int) -> str:
        self.channels[name] = channels
        return name

    def conv(self, x: str, cout: int, k: int = 3, s: int = 1, p: Optional[int] = None, groups: int = 1,
             bias: bool = True, dilation: int = 1) -> str:
        cin = self.channels[x]
        p = (k // 2) * dilation if p is None else p
        inputs = [x, self.weight(cout, cin // groups, k, k)]
        if bias:
            inputs.append(self.weight(cout, scale=0.1))
        return self.op("Conv", inputs, channels=cout, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4,
                       group=groups, dilations=[dilation, dilation])

    def bn(self, x: str) -> str:
        c = self.channels[x]
        return self.op("BatchNormalization", [x, self.weight(c, scale=0.3, positive=True), self.weight(c, scale=0.1),
                                              self.weight(c, scale=0.1), self.weight(c, scale=0.2, positive=True)],
                       epsilon=1e-5)

    def conv_bn_act(self, x: str, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: Optional[str] = "Relu"):
        y = self.bn(self.conv(x, cout, k, s, groups=groups, bias=False))
        if act == "Relu6":
            return self.clip(y, 0.0, 6.0)
        if act == "SiLU":
            return self.op("Mul", [y, self.op("Sigmoid", [y])])
        return self.op(act, [y]) if act else y

    def const(self, value, dtype=np.float32) -> str:
        name = self._name("c")
        self.inits[name] = np.asarray(value, dtype)
        return name

    def clip(self, x: str, lo: float, hi: float) -> str:
        if self.opset < 11:
            return self.op("Clip", [x], min=lo, max=hi)
        return self.op("Clip", [x, self.const(lo), self.const(hi)])

    def model(self, inputs: Mapping[str, Sequence], outputs: Sequence[str], metadata=None):
        return make_model(self.nodes, inputs, outputs, self.inits, self.opset, metadata)
