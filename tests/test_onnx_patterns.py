"""ONNX importer: exporter patterns fused into pyconv ops, the single error listing
every unsupported node, and metadata carried over."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onnx_testing import OnnxNet, check_against_onnxruntime, const_node, convert, make_model, node, rand

from onnx import helper  # noqa: E402

from pyconv.convert.onnx_import import onnx_to_ir  # noqa: E402
from pyconv.errors import UnsupportedOpError  # noqa: E402

X = "x"


def _ops(converted):
    return [n.op for n in converted.graph.nodes]


def _check(model, shape=(2, 4, 6, 5), **kwargs):
    x = rand(*shape, seed=3) * 3
    return check_against_onnxruntime(model, {X: x}, **kwargs)


def test_silu_fused():
    net = OnnxNet()
    y = net.conv_bn_act(net.input(X, 4), 6, act="SiLU")
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert "silu" in _ops(converted) and "sigmoid" not in _ops(converted) and "mul" not in _ops(converted)


def test_sigmoid_with_a_second_user_is_not_fused():
    net = OnnxNet()
    x = net.input(X, 4)
    s = net.op("Sigmoid", [x])
    y = net.op("Add", [net.op("Mul", [x, s]), s])
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert "silu" not in _ops(converted)


@pytest.mark.parametrize("form", ["div_last", "div_gate", "mul_sixth", "hardsigmoid", "opset9_clip_attrs"])
def test_hardswish_fused(form):
    net = OnnxNet(opset=9 if form == "opset9_clip_attrs" else 13)
    x = net.conv(net.input(X, 4), 6, k=1)
    if form == "hardsigmoid":
        y = net.op("Mul", [x, net.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)])
    else:
        gate = net.clip(net.op("Add", [x, net.const(3.0)]), 0.0, 6.0)
        if form in ("div_last", "opset9_clip_attrs"):
            y = net.op("Div", [net.op("Mul", [x, gate]), net.const(6.0)])
        elif form == "div_gate":
            y = net.op("Mul", [x, net.op("Div", [gate, net.const(6.0)])])
        else:
            y = net.op("Mul", [net.op("Mul", [gate, net.const(1.0 / 6.0)]), x])
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert _ops(converted) == ["conv2d", "hardswish"], _ops(converted)


def test_hardsigmoid_pattern_fused():
    net = OnnxNet()
    x = net.input(X, 4)
    y = net.op("Div", [net.clip(net.op("Add", [x, net.const(3.0)]), 0.0, 6.0), net.const(6.0)])
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert _ops(converted) == ["hardsigmoid"]


def _shuffle(net: OnnxNet, x: str, groups: int, channels: int, hw, dynamic_batch: bool) -> str:
    if dynamic_batch:  # x.view(x.size(0), g, c // g, h, w) as PyTorch exports it
        shape = net.op("Shape", [x])
        n = net.op("Unsqueeze", [net.op("Gather", [shape, net.const(0, np.int64)], axis=0), net.const([0], np.int64)])
        split = net.op("Concat", [n, net.const([groups, channels // groups, *hw], np.int64)], axis=0)
        merge = net.op("Concat", [n, net.const([channels, *hw], np.int64)], axis=0)
    else:
        split = net.const([-1, groups, channels // groups, *hw], np.int64)
        merge = net.const([-1, channels, *hw], np.int64)
    t = net.op("Transpose", [net.op("Reshape", [x, split])], perm=[0, 2, 1, 3, 4])
    return net.op("Reshape", [t, merge])


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_channel_shuffle_fused(dynamic_batch):
    net = OnnxNet()
    x = net.conv(net.input(X, 4), 6, k=1)
    y = _shuffle(net, x, 3, 6, (6, 5), dynamic_batch)
    converted = _check(net.model({X: ["N" if dynamic_batch else 2, 4, 6, 5]}, [y]))
    assert _ops(converted) == ["conv2d", "channel_shuffle"], _ops(converted)
    assert converted.graph.nodes[1].attrs["groups"] == 3


def test_channel_shuffle_of_any_size_as_pytorch_exports_it():
    """torchvision's channel_shuffle with dynamic N, H, W: every dim comes from Shape, and the
    5-D reshape alone is not expressible; fused, it is."""
    net = OnnxNet()
    x = net.conv(net.input(X, 4), 6, k=1)
    shape = net.op("Shape", [x])
    dims = [net.op("Unsqueeze", [net.op("Gather", [shape, net.const(i, np.int64)], axis=0),
                                 net.const([0], np.int64)]) for i in range(4)]
    per_group = net.op("Div", [dims[1], net.const([3], np.int64)])
    split = net.op("Concat", [dims[0], net.const([3], np.int64), per_group, dims[2], dims[3]], axis=0)
    t = net.op("Transpose", [net.op("Reshape", [x, split])], perm=[0, 2, 1, 3, 4])
    y = net.op("Reshape", [t, net.op("Concat", [dims[0], dims[1], dims[2], dims[3]], axis=0)])
    model = net.model({X: ["N", 4, "H", "W"]}, [y])
    converted = convert(model)
    assert _ops(converted) == ["conv2d", "channel_shuffle"], _ops(converted)
    from onnx_testing import assert_close, run_onnxruntime

    for shape in ((1, 4, 5, 7), (2, 4, 3, 3)):
        xv = rand(*shape)
        assert_close(converted.run({X: xv})[y], run_onnxruntime(model, {X: xv})[y])


def test_inexpressible_reshape_is_reported_after_fusion():
    net = OnnxNet()
    x = net.input(X, 4)
    shape = net.op("Shape", [x])
    dims = [net.op("Unsqueeze", [net.op("Gather", [shape, net.const(i, np.int64)], axis=0),
                                 net.const([0], np.int64)]) for i in range(4)]
    swapped = net.op("Concat", [dims[0], dims[1], dims[3], dims[2]], axis=0)  # a reshape, not a transpose
    y = net.op("Reshape", [x, swapped])
    with pytest.raises(UnsupportedOpError, match="Reshape x1 .*--input-shape"):
        convert(net.model({X: ["N", 4, "H", "W"]}, [y]))


@pytest.mark.parametrize("const_shape", [(1, 6, 1, 1), (6, 1, 1)])
def test_batch_norm_decomposed_into_mul_add(const_shape):
    net = OnnxNet()
    x = net.conv(net.input(X, 4), 6, k=3)
    scale = net.const(np.abs(rand(*const_shape, seed=5)) + 0.5)
    shift = net.const(rand(*const_shape, seed=6))
    y = net.op("Relu", [net.op("Add", [net.op("Mul", [x, scale]), shift])])
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert _ops(converted) == ["conv2d", "batch_norm", "relu"], _ops(converted)


def test_batch_norm_then_scale_and_shift_merge_into_one():
    net = OnnxNet(opset=9)  # DenseNet/Inception-v2 (Caffe2) style: BN, then Mul/Add of unsqueezed vectors
    x = net.bn(net.conv(net.input(X, 4), 6, k=1))
    s = net.op("Unsqueeze", [net.const(np.abs(rand(6, seed=5)) + 0.5)], axes=[1, 2])
    b = net.op("Unsqueeze", [net.const(rand(6, seed=6))], axes=[1, 2])
    y = net.op("Sub", [net.op("Mul", [x, s]), b])
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert _ops(converted) == ["conv2d", "batch_norm"], _ops(converted)


def test_global_average_pool_as_reduce_mean_then_flatten():
    net = OnnxNet()
    x = net.conv(net.input(X, 4), 6, k=1)
    y = net.op("ReduceMean", [x], axes=[-1, -2], keepdims=0)
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert _ops(converted)[1] == "global_avg_pool2d"


# --------------------------------------------------------------------------- unsupported models

def test_every_unsupported_node_is_listed_in_one_error():
    w = rand(4, 3, 3, 3)
    nodes = [
        node("Conv", [X, "w"], ["c1"], pads=[1, 1, 1, 1]),
        node("Softplus", ["c1"], ["e1"], name="softplus_a"),
        node("Softplus", ["e1"], ["e2"], name="softplus_b"),  # fed by a failed node: still counted (its type fails)
        node("Erf", ["c1"], ["erf"], name="lonely_erf"),     # only GELU's Erf converts: decided after fusion
        node("Conv", ["c1", "e2"], ["c2"], name="conv_runtime_weight"),  # poisoned input: not reported again
        helper.make_node("FancyOp", ["c1"], ["f"], domain="com.example", name="fancy"),
        node("Conv", ["c1", "c1"], ["c3"], name="conv_weight_from_data"),
        node("TopK", ["c1", "k"], ["tv", "ti"], name="topk"),
        node("Add", ["c2", "f"], ["a"]),
        node("Add", ["a", "c3"], ["a2"]),
        node("Add", ["a2", "erf"], ["y"]),
    ]
    model = make_model(nodes, {X: [1, 3, 5, 5]}, ["y", "tv"], {"w": w, "k": np.array([2], np.int64)})
    with pytest.raises(UnsupportedOpError) as info:
        convert(model)
    message = str(info.value)
    assert "Softplus x2 (e.g. softplus_a, softplus_b)" in message
    assert "Erf x1 (e.g. lonely_erf): Erf is supported only inside GELU" in message
    assert "com.example.FancyOp x1 (e.g. fancy)" in message
    assert "TopK x1 (e.g. topk)" in message
    assert "Conv x1 (e.g. conv_weight_from_data): the weight (input 1) must be a constant" in message
    assert "conv_runtime_weight" not in message
    assert message.count("\n") == 5  # a header and one line per op type


def _resize_by_shape_arithmetic(net: OnnxNet, x: str, tail) -> str:
    """sizes = Concat(Shape(x)[:2], tail(Shape(x)[2:])) as older PyTorch exports F.interpolate."""
    shape = net.op("Shape", [x])
    nc = net.op("Slice", [shape, net.const([0], np.int64), net.const([2], np.int64)])
    hw = net.op("Slice", [shape, net.const([2], np.int64), net.const([4], np.int64)])
    sizes = net.op("Concat", [nc, tail(hw)], axis=0)
    return net.op("Resize", [x, "", "", sizes], mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor")


def test_resize_to_a_multiple_of_a_dynamic_size():
    from onnx_testing import assert_close, run_onnxruntime
    from onnx import TensorProto

    net = OnnxNet()
    x = net.conv(net.input(X, 4), 6, k=3)

    def doubled(hw):
        scaled = net.op("Mul", [net.op("Cast", [hw], to=TensorProto.FLOAT), net.const([2.0, 2.0])])
        return net.op("Cast", [net.op("Floor", [scaled])], to=TensorProto.INT64)

    y = _resize_by_shape_arithmetic(net, x, doubled)
    model = net.model({X: ["N", 4, "H", "W"]}, [y])
    converted = convert(model)
    assert converted.graph.nodes[-1].attrs["scales"] == [2.0, 2.0]
    for shape in ((1, 4, 5, 7), (2, 4, 6, 3)):
        xv = rand(*shape)
        assert_close(converted.run({X: xv})[y], run_onnxruntime(model, {X: xv})[y])


def test_resize_to_a_non_multiple_of_a_dynamic_size_asks_for_input_shape():
    net = OnnxNet()
    x = net.input(X, 4)
    y = _resize_by_shape_arithmetic(net, x, lambda hw: net.op("Add", [hw, net.const([1, 1], np.int64)]))
    with pytest.raises(UnsupportedOpError, match="Resize x1 .*--input-shape"):
        convert(net.model({X: ["N", 4, "H", "W"]}, [y]))
    converted = convert(net.model({X: ["N", 4, "H", "W"]}, [y]), input_shapes={X: ["N", 4, 5, 6]})
    assert converted.graph.nodes[-1].attrs["sizes"] == [6, 7]


def test_flattening_the_spatial_dims_of_a_dynamic_input():
    """x.view(n, c, h * w): the product of two symbols is the reshape's one inferred dim."""
    net = OnnxNet()
    x = net.conv(net.input(X, 4), 6, k=1)
    shape = net.op("Shape", [x])
    n, c, h, w = (net.op("Unsqueeze", [net.op("Gather", [shape, net.const(i, np.int64)], axis=0),
                                       net.const([0], np.int64)]) for i in range(4))
    target = net.op("Concat", [n, c, net.op("Mul", [h, w])], axis=0)
    y = net.op("Softmax", [net.op("Reshape", [x, target])], axis=-1)
    model = net.model({X: ["N", 4, "H", "W"]}, [y])
    converted = convert(model)
    assert converted.graph.nodes[1].attrs["shape"] == [0, 6, -1]
    from onnx_testing import assert_close, run_onnxruntime

    for shape in ((1, 4, 5, 7), (2, 4, 3, 3)):
        xv = rand(*shape)
        assert_close(converted.run({X: xv})[y], run_onnxruntime(model, {X: xv})[y])


# --------------------------------------------------------------------------- metadata

@pytest.mark.parametrize("stored", [json.dumps(["cat", "dog"]), "cat\ndog\n", "{0: 'cat', 1: 'dog'}", "cat,dog"])
def test_labels_in_metadata_props_are_carried_over(stored):
    model = make_model([node("Relu", [X], ["y"])], {X: [1, 2, 3, 3]}, ["y"], metadata={"labels": stored,
                                                                                       "author": "me"})
    converted = convert(model)
    assert converted.metadata["labels"] == ["cat", "dog"]
    assert converted.metadata["onnx_metadata"]["author"] == "me"
    assert converted.metadata["source"]["format"] == "onnx"


def test_metadata_argument_overrides_the_file(tmp_path):
    from pyconv.convert import from_onnx

    model = make_model([node("Relu", [X], ["y"])], {X: [1, 2, 3, 3]}, ["y"], metadata={"labels": "a\nb"})
    graph = from_onnx(model, metadata={"labels": ["x", "y"], "preprocess": {"size": [3, 3]}})
    assert graph.metadata["labels"] == ["x", "y"] and graph.metadata["preprocess"] == {"size": [3, 3]}


def test_ir_conversion_is_separate_from_emission():
    net = OnnxNet()
    y = net.conv_bn_act(net.input(X, 4), 6, act="SiLU")
    graph, shapes, meta, counts = onnx_to_ir(net.model({X: ["N", 4, "H", "W"]}, [y]))
    assert [n.op for n in graph.nodes] == ["conv2d", "batch_norm", "silu"]
    assert counts["fuse_silu"] == 1
    assert [str(d) for d in shapes[X]] == ["N", "4", "H", "W"]


@pytest.mark.parametrize("repeats,kernel", [(3, 5), (2, 3)])
def test_sppf_fused(repeats, kernel):
    net = OnnxNet()
    y = net.conv(net.input(X, 4), 6, k=1)
    pools = [y]
    for _ in range(repeats):
        pools.append(net.op("MaxPool", [pools[-1]], kernel_shape=[kernel, kernel], strides=[1, 1],
                            pads=[kernel // 2] * 4))
    out = net.op("Concat", pools, axis=1)
    converted = _check(net.model({X: [2, 4, 6, 5]}, [out]))
    assert _ops(converted) == ["conv2d", "sppf"], _ops(converted)
    assert converted.graph.nodes[1].attrs == {"kernel_size": kernel, "repeats": repeats}


def test_sppf_not_fused_when_a_pool_is_also_an_output():
    net = OnnxNet()
    y = net.input(X, 4)
    m1 = net.op("MaxPool", [y], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    m2 = net.op("MaxPool", [m1], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    out = net.op("Concat", [y, m1, m2], axis=1)
    converted = _check(net.model({X: [2, 4, 6, 5]}, [out, m2]))
    assert "sppf" not in _ops(converted)


def test_integer_input_is_refused():
    from onnx import TensorProto
    from pyconv.errors import ModelError

    graph = helper.make_graph([node("Relu", [X], ["y"])], "g", [helper.make_tensor_value_info(X, TensorProto.INT64,
                                                                                             [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    with pytest.raises(ModelError, match="element type 7"):
        convert(helper.make_model(graph))


def _nhwc_model():
    net = OnnxNet()
    t = net.op("Transpose", ["img"], perm=[0, 3, 1, 2], channels=3)
    return net.model({"img": ["N", 6, 5, 3]}, [net.op("Relu", [net.conv(t, 4, 3)])])


def test_nhwc_input_becomes_nchw():
    from onnx_testing import assert_close, run_onnxruntime

    model = _nhwc_model()
    converted = convert(model)
    assert list(converted.graph.inputs[0].shape) == ["N", 3, 6, 5]
    assert "transpose" not in _ops(converted)
    assert converted.metadata["source"]["input_layout"] == {"img": "NHWC"}
    x = rand(2, 3, 6, 5)
    (name,) = [o.name for o in model.graph.output]
    assert_close(converted.run({"img": x})[name], run_onnxruntime(model, {"img": x.transpose(0, 2, 3, 1)})[name])


def test_nhwc_input_kept_on_request():
    from pyconv.convert import from_onnx

    graph = from_onnx(_nhwc_model(), nchw_inputs=False)
    assert list(graph.inputs[0].shape) == ["N", 6, 5, 3] and graph.nodes[0].op == "transpose"


@pytest.mark.parametrize("bias_shape", [(5,), (1, 5)])
def test_matmul_add_becomes_linear_with_bias(bias_shape):
    net = OnnxNet()
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [net.conv(net.input(X, 4), 6, 1)])])
    y = net.op("Add", [net.const(rand(*bias_shape, seed=8)), net.op("MatMul", [pooled, net.weight(6, 5)])])
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert _ops(converted) == ["conv2d", "global_avg_pool2d", "flatten", "linear"], _ops(converted)


def test_outputs_that_alias_inputs_or_each_other():
    nodes = [node("Identity", [X], ["same"]), node("Relu", [X], ["r"]), node("Dropout", ["r"], ["r2"])]
    model = make_model(nodes, {X: [1, 2, 3, 3]}, ["same", "r", "r2"])
    converted = _check(model, shape=(1, 2, 3, 3))
    assert converted.output_names == ["same", "r", "r2"]


def test_nodes_rejected_by_pyconv_ops_are_listed_together():
    """Attributes pyconv's own ops refuse (checked while emitting) also end in one error."""
    from pyconv.convert.folding import Dim
    from pyconv.convert.ir import Graph, Node
    from pyconv.convert.onnx_import import _emit

    w = rand(4, 3, 3, 3)
    nodes = [Node("conv2d", ["x"], ["a"], {"weight": w}, {"groups": 2}, name="bad_groups"),
             Node("relu", ["a"], ["b"], name="downstream"),
             Node("max_pool2d", ["x"], ["c"], attrs={"kernel_size": [3, 3], "padding": [5, 5, 5, 5]}, name="bad_pad"),
             Node("add", ["b", "c"], ["y"], name="join")]
    graph = Graph(nodes, {}, {}, ["x"], ["y"], ["y"])
    with pytest.raises(UnsupportedOpError) as info:
        _emit(graph, {"x": (Dim("N"), 3, 8, 8)})
    message = str(info.value)
    assert "pyconv conv2d x1 (e.g. bad_groups)" in message and "pyconv max_pool2d x1 (e.g. bad_pad)" in message
    assert "downstream" not in message and "join" not in message


@pytest.mark.parametrize("form", ["torch", "half_first", "half_of_x", "mul_by_rsqrt2"])
def test_erf_gelu_fused(form):
    net = OnnxNet()
    x = net.conv(net.input(X, 4), 6, k=1)
    if form == "mul_by_rsqrt2":
        e = net.op("Erf", [net.op("Mul", [x, net.const(0.70710678)])])
    else:
        e = net.op("Erf", [net.op("Div", [x, net.const(1.4142135)])])
    one_plus = net.op("Add", [e, net.const(1.0)])
    if form in ("torch", "mul_by_rsqrt2"):
        y = net.op("Mul", [net.op("Mul", [x, one_plus]), net.const(0.5)])
    elif form == "half_first":
        y = net.op("Mul", [net.op("Mul", [one_plus, net.const(0.5)]), x])
    else:
        y = net.op("Mul", [net.op("Mul", [x, net.const(0.5)]), one_plus])
    converted = _check(net.model({X: [2, 4, 6, 5]}, [y]))
    assert _ops(converted) == ["conv2d", "gelu"], _ops(converted)


def test_erf_outside_gelu_is_reported():
    net = OnnxNet()
    y = net.op("Erf", [net.input(X, 4)])
    with pytest.raises(UnsupportedOpError, match="Erf x1 .*only inside GELU"):
        convert(net.model({X: [1, 4, 3, 3]}, [y]))


def test_bad_model_arguments(tmp_path):
    from pyconv.convert import from_onnx
    from pyconv.errors import ModelError

    with pytest.raises(ModelError, match="cannot read ONNX model"):
        from_onnx(str(tmp_path / "missing.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(ModelError, match="cannot read ONNX model"):
        from_onnx(str(tmp_path / "junk.onnx"))
    with pytest.raises(ModelError, match="not an ONNX model"):
        from_onnx(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(TypeError, match="path, bytes or an onnx.ModelProto"):
        from_onnx(42)
    old = make_model([node("Relu", [X], ["y"])], {X: [1, 2, 3, 3]}, ["y"], opset=6)
    with pytest.raises(ModelError, match="opset 6 is older"):
        from_onnx(old)


def test_constant_graph_output_is_kept():
    """Detectors sometimes export anchors as an output computed from constants only."""
    nodes = [node("Relu", [X], ["y"]), const_node("base", np.arange(6, dtype=np.float32).reshape(2, 3)),
             node("Mul", ["base", "two"], ["anchors"])]
    model = make_model(nodes, {X: [1, 2, 3, 3]}, ["y", "anchors"], {"two": np.float32(2)})
    converted = _check(model, shape=(1, 2, 3, 3))
    assert [n.op for n in converted.graph.nodes] == ["relu", "constant"]
