"""ONNX importer, op by op: every supported ONNX op and attribute combination as a
generated graph with random weights, converted and compared with onnxruntime
(tolerance: onnx_testing.RTOL of the output's magnitude unless stated)."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_testing import (assert_close, check_against_onnxruntime, const_node, convert, make_model, node, rand, rng,
                          run_onnxruntime)

from onnx import TensorProto, helper  # noqa: E402  (onnx_testing skipped the module without it)

X = "x"


def _single(op_type, x_shape, attrs=None, inits=None, extra_inputs=(), opset=13, outputs=("y",)):
    """A one-node model ``op_type(x, *extra_inputs)`` and its feed."""
    inits = dict(inits or {})
    model = make_model([node(op_type, [X, *extra_inputs], list(outputs), **(attrs or {}))],
                       {X: list(x_shape)}, outputs, inits, opset)
    return model, {X: rand(*x_shape, seed=1)}


# --------------------------------------------------------------------------- convolutions

CONV_CASES = {
    "plain3x3": ((2, 5, 9, 7), (6, 5, 3, 3), dict(pads=[1, 1, 1, 1])),
    "stride2_asym_pads": ((1, 4, 10, 9), (3, 4, 3, 3), dict(strides=[2, 2], pads=[0, 1, 2, 1])),
    "dilation": ((1, 3, 11, 12), (4, 3, 3, 3), dict(dilations=[2, 3], pads=[2, 3, 2, 3])),
    "groups": ((1, 6, 8, 8), (9, 2, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    "depthwise_stride2": ((1, 7, 9, 9), (7, 1, 3, 3), dict(group=7, strides=[2, 2], pads=[1, 1, 1, 1])),
    "1x1": ((3, 10, 5, 4), (6, 10, 1, 1), {}),
    "rect_kernel": ((1, 3, 9, 11), (5, 3, 1, 5), dict(pads=[0, 2, 0, 2])),
    "same_upper_s1": ((1, 3, 8, 7), (4, 3, 4, 4), dict(auto_pad="SAME_UPPER")),
    "same_upper_s2": ((1, 3, 9, 8), (4, 3, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower_s2": ((1, 3, 8, 9), (4, 3, 4, 4), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    "valid": ((1, 3, 8, 9), (4, 3, 3, 3), dict(auto_pad="VALID", strides=[2, 1])),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case, bias):
    x_shape, w_shape, attrs = CONV_CASES[case]
    inits = {"w": rand(*w_shape, seed=2)}
    extra = ["w"]
    if bias:
        inits["b"] = rand(w_shape[0], seed=3)
        extra.append("b")
    model, feeds = _single("Conv", x_shape, attrs, inits, extra, opset=11)
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_weights_dequantized_at_conversion(per_channel):
    """Weight-only QDQ: int8 weights behind DequantizeLinear (per tensor or per output channel)."""
    q = rng(5).integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    scale = np.linspace(0.01, 0.02, 4).astype(np.float32) if per_channel else np.array(0.015, np.float32)
    zero = np.zeros(4, np.int8) if per_channel else np.array(3, np.int8)
    nodes = [node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0), node("Conv", [X, "w"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, {X: [1, 3, 6, 6]}, ["y"], {"q": q, "s": scale, "z": zero})
    check_against_onnxruntime(model, {X: rand(1, 3, 6, 6)})


def test_conv_weights_from_constant_nodes():
    w, b = rand(4, 3, 3, 3, seed=2), rand(4, seed=3)
    model = make_model([const_node("w", w), const_node("b", b), node("Conv", [X, "w", "b"], ["y"], pads=[1, 1, 1, 1])],
                       {X: [1, 3, 6, 6]}, ["y"])
    check_against_onnxruntime(model, {X: rand(1, 3, 6, 6)})


CONV_T_CASES = {
    "stride2": ((1, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2])),
    "pads_output_padding": ((2, 4, 5, 5), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    "k4s2p1": ((1, 6, 4, 5), (6, 2, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "groups": ((1, 6, 5, 5), (6, 2, 3, 3), dict(group=3, strides=[2, 2], pads=[1, 1, 1, 1])),
    "dilation": ((1, 3, 5, 4), (3, 2, 3, 3), dict(dilations=[2, 2])),
    "output_shape": ((1, 4, 5, 5), (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 10])),
    "same_upper": ((1, 4, 5, 6), (4, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
}


@pytest.mark.parametrize("case", sorted(CONV_T_CASES))
def test_conv_transpose(case):
    x_shape, w_shape, attrs = CONV_T_CASES[case]
    inits = {"w": rand(*w_shape, seed=2), "b": rand(w_shape[1] * attrs.get("group", 1), seed=3)}
    model, feeds = _single("ConvTranspose", x_shape, attrs, inits, ["w", "b"], opset=11)
    check_against_onnxruntime(model, feeds)


def test_batch_normalization():
    c = 5
    inits = {"s": rand(c, seed=2), "bb": rand(c, seed=3), "m": rand(c, seed=4),
             "v": np.abs(rand(c, seed=5)) + 0.5}
    model, feeds = _single("BatchNormalization", (2, c, 4, 3), dict(epsilon=1e-3), inits, ["s", "bb", "m", "v"])
    check_against_onnxruntime(model, feeds)


# --------------------------------------------------------------------------- activations

ACT_CASES = {
    "Relu": ({}, 13), "Sigmoid": ({}, 13), "Tanh": ({}, 13), "HardSwish": ({}, 14),
    "LeakyRelu": (dict(alpha=0.2), 13), "Elu": (dict(alpha=0.7), 13),
    "HardSigmoid": (dict(alpha=0.3, beta=0.4), 13),
}


@pytest.mark.parametrize("op_type", sorted(ACT_CASES))
def test_activation(op_type):
    attrs, opset = ACT_CASES[op_type]
    model, feeds = _single(op_type, (2, 3, 5, 4), attrs, opset=opset)
    feeds[X] *= 4
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), (1, 3, 1, 1)])
def test_prelu(slope_shape):
    model, feeds = _single("PRelu", (2, 3, 5, 4), inits={"s": rand(*slope_shape, seed=2)}, extra_inputs=["s"])
    check_against_onnxruntime(model, feeds)


def test_prelu_per_width_slope_is_reported():
    from pyconv.errors import UnsupportedOpError

    model, _ = _single("PRelu", (2, 3, 5, 4), inits={"s": rand(4, seed=2)}, extra_inputs=["s"])
    with pytest.raises(UnsupportedOpError, match="per-channel slope"):
        convert(model)


@pytest.mark.parametrize("opset,bounds", [
    (9, dict(min=-0.5, max=0.7)), (9, dict(min=0.0)), (9, dict(min=0.0, max=6.0)),
    (13, (-0.5, 0.7)), (13, (0.0, None)), (13, (None, 0.3)), (13, (0.0, 6.0)),
])
def test_clip(opset, bounds):
    if opset < 11:
        model, feeds = _single("Clip", (1, 3, 4, 4), bounds, opset=opset)
    else:
        lo, hi = bounds
        inits = {k: np.float32(v) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
        extra = ["lo" if lo is not None else "", "hi"] if hi is not None else ["lo"]
        model, feeds = _single("Clip", (1, 3, 4, 4), inits=inits, extra_inputs=extra, opset=opset)
    feeds[X] *= 5
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis,shape", [
    (13, 1, (2, 5, 3, 2)), (13, -1, (2, 7)), (11, 1, (2, 5, 3, 2)), (11, 1, (2, 6)), (11, 1, (2, 10, 1, 1)),
])
def test_softmax(op_type, opset, axis, shape):
    model, feeds = _single(op_type, shape, dict(axis=axis), opset=opset)
    check_against_onnxruntime(model, feeds)


# --------------------------------------------------------------------------- elementwise

@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("other_shape", [(2, 4, 3, 5), (1, 4, 1, 1), (4, 1, 1), (1,), (5,), (1, 1, 3, 1)])
def test_binary_two_runtime_inputs(op_type, other_shape):
    model = make_model([node(op_type, [X, "z"], ["y"])], {X: [2, 4, 3, 5], "z": list(other_shape)}, ["y"])
    z = rand(*other_shape, seed=4)
    if op_type == "Div":
        z = np.abs(z) + 0.5
    check_against_onnxruntime(model, {X: rand(2, 4, 3, 5), "z": z})


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("const_shape", [(1, 4, 1, 1), (4, 1, 1), (), (1, 1, 3, 5), (2, 4, 3, 5)])
@pytest.mark.parametrize("const_first", [False, True])
def test_binary_with_constant(op_type, const_shape, const_first):
    c = np.abs(rand(*const_shape, seed=4)) + 0.5
    inputs = ["c", X] if const_first else [X, "c"]
    model = make_model([node(op_type, inputs, ["y"])], {X: [2, 4, 3, 5]}, ["y"], {"c": c})
    x = rand(2, 4, 3, 5)
    if op_type == "Div" and const_first:
        x = np.abs(x) + 0.5
    check_against_onnxruntime(model, {X: x})


def test_sum_of_three():
    model = make_model([node("Sum", [X, "a", "b"], ["y"])], {X: [1, 3, 4, 4], "a": [1, 3, 4, 4], "b": [1, 3, 1, 1]},
                       ["y"], opset=9)
    feeds = {X: rand(1, 3, 4, 4), "a": rand(1, 3, 4, 4, seed=2), "b": rand(1, 3, 1, 1, seed=3)}
    check_against_onnxruntime(model, feeds)


# --------------------------------------------------------------------------- tensor ops

def test_concat_negative_axis_and_constant_input():
    model = make_model([node("Concat", [X, "a", "c"], ["y"], axis=-3)], {X: [2, 3, 4, 5], "a": [2, 2, 4, 5]}, ["y"],
                       {"c": rand(2, 1, 4, 5, seed=9)})
    check_against_onnxruntime(model, {X: rand(2, 3, 4, 5), "a": rand(2, 2, 4, 5, seed=2)})


@pytest.mark.parametrize("opset,how", [(11, "attr"), (13, "input"), (13, "equal"), (18, "num_outputs")])
def test_split(opset, how):
    attrs, inits, extra = {"axis": 1}, {}, []
    outputs = ["y0", "y1", "y2"]
    if how == "attr":
        attrs["split"] = [1, 3, 2]
    elif how == "input":
        inits["s"], extra = np.array([2, 1, 3], np.int64), ["s"]
    elif how == "num_outputs":
        attrs["num_outputs"] = 3
    model, feeds = _single("Split", (2, 6, 3, 4), attrs, inits, extra, opset=opset, outputs=outputs)
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("opset,params", [
    (9, dict(starts=[1, 0], ends=[3, 100], axes=[1, 3])),
    (13, ([0, 1], [100, -1], [2, 3], None)),
    (13, ([1], [5], [1], [2])),
    (13, ([-1], [-100], [3], [-2])),
    (13, ([0, 2], [2, 5], None, None)),
])
def test_slice(opset, params):
    if opset < 10:
        model, feeds = _single("Slice", (2, 5, 6, 7), params, opset=opset)
    else:
        starts, ends, axes, steps = params
        inits = {"st": np.array(starts, np.int64), "en": np.array(ends, np.int64)}
        extra = ["st", "en"]
        if axes is not None:
            inits["ax"] = np.array(axes, np.int64)
            extra.append("ax")
        if steps is not None:
            inits["sp"] = np.array(steps, np.int64)
            extra.append("sp")
        model, feeds = _single("Slice", (2, 5, 6, 7), inits=inits, extra_inputs=extra, opset=opset)
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("axis", [1, 2, 0])
def test_flatten(axis):
    model, feeds = _single("Flatten", (2, 3, 4, 5), dict(axis=axis))
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("target", [[2, -1], [0, 12, 5], [-1, 3, 20], [0, 0, -1]])
def test_reshape(target):
    model, feeds = _single("Reshape", (2, 3, 4, 5), inits={"s": np.array(target, np.int64)}, extra_inputs=["s"])
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 1, 3, 2], [1, 0, 2, 3]])
def test_transpose(perm):
    model, feeds = _single("Transpose", (2, 3, 4, 5), dict(perm=perm))
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset):
    if opset < 13:
        nodes = [node("Squeeze", [X], ["s"], axes=[2, 3]), node("Unsqueeze", ["s"], ["y"], axes=[2, -1])]
        inits = {}
    else:
        nodes = [node("Squeeze", [X, "a1"], ["s"]), node("Unsqueeze", ["s", "a2"], ["y"])]
        inits = {"a1": np.array([2, 3], np.int64), "a2": np.array([2, -1], np.int64)}
    model = make_model(nodes, {X: [2, 6, 1, 1]}, ["y"], inits, opset)
    check_against_onnxruntime(model, {X: rand(2, 6, 1, 1)})


def test_squeeze_without_axes_and_dropout_identity():
    nodes = [node("GlobalAveragePool", [X], ["g"]), node("Squeeze", ["g"], ["s"]),
             node("Dropout", ["s"], ["d"], ratio=0.3), node("Identity", ["d"], ["y"])]
    model = make_model(nodes, {X: [3, 4, 5, 5]}, ["y"], opset=11)
    check_against_onnxruntime(model, {X: rand(3, 4, 5, 5)})


# --------------------------------------------------------------------------- pooling and normalisation

POOL_CASES = {
    "max_basic": ("MaxPool", (1, 3, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2])),
    "max_pads_ceil": ("MaxPool", (2, 3, 10, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0],
                                                     ceil_mode=1)),
    "max_dilations": ("MaxPool", (1, 2, 11, 10), dict(kernel_shape=[3, 2], dilations=[2, 2], pads=[2, 1, 2, 1])),
    "max_same_upper": ("MaxPool", (1, 2, 9, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "max_asym": ("MaxPool", (1, 2, 8, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])),
    "avg_exclude_pad": ("AveragePool", (1, 3, 9, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "avg_include_pad": ("AveragePool", (1, 3, 9, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                          count_include_pad=1)),
    "avg_ceil": ("AveragePool", (2, 3, 10, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "avg_ceil_pads": ("AveragePool", (1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                                                        pads=[1, 1, 1, 1], count_include_pad=1)),
    "avg_big_pads_include": ("AveragePool", (1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[2, 2, 2, 2],
                                                              count_include_pad=1)),
    "avg_same_lower": ("AveragePool", (1, 2, 7, 8), dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")),
    "lp_p2": ("LpPool", (1, 3, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2], p=2)),
    "lp_p3_pads": ("LpPool", (1, 3, 7, 7), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], p=3)),
    "global_avg": ("GlobalAveragePool", (2, 3, 5, 7), {}),
    "global_max": ("GlobalMaxPool", (2, 3, 5, 7), {}),
    "global_lp": ("GlobalLpPool", (2, 3, 5, 7), dict(p=3)),
    "lrn": ("LRN", (2, 7, 4, 5), dict(size=5, alpha=1e-2, beta=0.75, bias=2.0)),
    "lrn_size3": ("LRN", (1, 6, 3, 3), dict(size=3, alpha=1e-1, beta=0.5, bias=1.0)),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool_and_lrn(case):
    op_type, shape, attrs = POOL_CASES[case]
    model, feeds = _single(op_type, shape, attrs, opset=18 if op_type == "LpPool" else 11)
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("opset,keepdims", [(13, 1), (13, 0), (18, 1), (18, 0)])
def test_reduce_over_spatial_axes(op_type, opset, keepdims):
    if opset < 18:
        model, feeds = _single(op_type, (2, 5, 4, 3), dict(axes=[2, 3], keepdims=keepdims), opset=opset)
    else:
        model, feeds = _single(op_type, (2, 5, 4, 3), dict(keepdims=keepdims),
                               inits={"ax": np.array([-2, -1], np.int64)}, extra_inputs=["ax"], opset=opset)
    converted = check_against_onnxruntime(model, feeds)
    ops = [n.op for n in converted.graph.nodes]
    assert ops[0] == ("global_avg_pool2d" if op_type == "ReduceMean" else "global_max_pool2d"), ops


# --------------------------------------------------------------------------- linear layers

@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [
    (1, 1.0, 1.0, (6,)), (0, 1.0, 1.0, (6,)), (1, 0.5, 2.0, (1, 6)), (0, 1.5, 0.5, (1,)), (1, 1.0, 1.0, None),
])
def test_gemm(trans_b, alpha, beta, c_shape):
    b = rand(6, 10, seed=2) if trans_b else rand(10, 6, seed=2)
    inits, extra = {"b": b}, ["b"]
    if c_shape is not None:
        inits["c"], extra = rand(*c_shape, seed=3), ["b", "c"]
    model, feeds = _single("Gemm", (3, 10), dict(transB=trans_b, alpha=alpha, beta=beta), inits, extra, opset=11)
    check_against_onnxruntime(model, feeds)


def test_gemm_trans_a():
    inits = {"b": rand(10, 6, seed=2), "c": rand(6, seed=3)}
    model, feeds = _single("Gemm", (10, 3), dict(transA=1), inits, ["b", "c"], opset=11)
    check_against_onnxruntime(model, feeds)


def test_matmul_constant_weight():
    model, feeds = _single("MatMul", (4, 7), inits={"w": rand(7, 5, seed=2)}, extra_inputs=["w"])
    check_against_onnxruntime(model, feeds)


# --------------------------------------------------------------------------- resize, pad

RESIZE_CASES = {
    # name: (opset, mode, coordinate mode, nearest mode, scales, sizes)
    "nearest_asym_floor_x2": (13, "nearest", "asymmetric", "floor", [1, 1, 2, 2], None),
    "nearest_default": (13, "nearest", None, None, [1, 1, 2, 3], None),
    "nearest_half_pixel_sizes": (13, "nearest", "half_pixel", "round_prefer_ceil", None, [2, 3, 7, 9]),
    "linear_half_pixel": (13, "linear", "half_pixel", None, [1, 1, 2, 2], None),
    "linear_align_corners": (13, "linear", "align_corners", None, [1, 1, 2, 1.5], None),
    "linear_pytorch_half_pixel_down": (13, "linear", "pytorch_half_pixel", None, [1, 1, 0.5, 0.5], None),
    "linear_asymmetric_sizes": (11, "linear", "asymmetric", None, None, [2, 3, 9, 5]),
    "opset10_nearest": (10, "nearest", None, None, [1, 1, 2, 2], None),
    "opset10_linear": (10, "linear", None, None, [1, 1, 2, 2], None),
    "opset10_nearest_down": (10, "nearest", None, None, [1, 1, 0.6, 0.75], None),
    "opset10_nearest_fractional": (10, "nearest", None, None, [1, 1, 1.5, 2.5], None),
    "opset18_nearest": (18, "nearest", "asymmetric", "floor", [1, 1, 2, 2], None),
    "opset11_tf_half_pixel_for_nn": (11, "nearest", "tf_half_pixel_for_nn", None, [1, 1, 2, 1.5], None),
    "opset19_half_pixel_symmetric_linear": (19, "linear", "half_pixel_symmetric", None, [1, 1, 2, 0.5], None),
    "opset19_half_pixel_symmetric_nearest": (19, "nearest", "half_pixel_symmetric", None, None, [2, 3, 7, 9]),
}


@pytest.mark.parametrize("case", sorted(RESIZE_CASES))
def test_resize(case):
    opset, mode, coord, nearest, scales, sizes = RESIZE_CASES[case]
    attrs = {"mode": mode}
    if coord:
        attrs["coordinate_transformation_mode"] = coord
    if nearest:
        attrs["nearest_mode"] = nearest
    inits = {}
    if opset == 10:
        inits["scales"] = np.array(scales, np.float32)
        extra = ["scales"]
    else:
        inits["roi"] = np.array([], np.float32)
        if scales is not None:
            inits["scales"] = np.array(scales, np.float32)
            extra = ["roi", "scales"]
        else:
            inits["sizes"] = np.array(sizes, np.int64)
            inits["no_scales"] = np.array([], np.float32)  # opset 11 needs the input present, even empty
            extra = ["roi", "no_scales", "sizes"]
    model, feeds = _single("Resize", (2, 3, 4, 6), attrs, inits, extra, opset=opset)
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_opset8_scales_attribute(mode):
    model, feeds = _single("Upsample", (1, 2, 3, 4), dict(mode=mode, scales=[1.0, 1.0, 2.0, 3.0]), opset=8)
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 2.5]])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_opset9(mode, scales):
    model, feeds = _single("Upsample", (1, 2, 3, 4), dict(mode=mode), {"s": np.array(scales, np.float32)}, ["s"],
                           opset=9)
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("opset,mode,value", [(9, "constant", 0.5), (11, "constant", 1.5), (11, "reflect", None),
                                              (13, "edge", None), (18, "constant", None)])
def test_pad(opset, mode, value):
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    if opset < 11:
        model, feeds = _single("Pad", (1, 3, 4, 5), dict(mode=mode, pads=pads, value=value), opset=opset)
    else:
        inits, extra = {"p": np.array(pads, np.int64)}, ["p"]
        if value is not None:
            inits["v"], extra = np.array(value, np.float32), ["p", "v"]
        model, feeds = _single("Pad", (1, 3, 4, 5), dict(mode=mode), inits, extra, opset=opset)
    check_against_onnxruntime(model, feeds)


# --------------------------------------------------------------------------- shape sub-graphs and dynamic dims

def _flatten_by_shape_subgraph():
    """x.view(x.size(0), -1) as PyTorch exports it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [
        node("Conv", [X, "w"], ["c"], pads=[1, 1, 1, 1]),
        node("Shape", ["c"], ["shape"]),
        const_node("zero", np.array(0, np.int64)),
        node("Gather", ["shape", "zero"], ["n"], axis=0),
        const_node("axes", np.array([0], np.int64)),
        node("Unsqueeze", ["n", "axes"], ["n1"]),
        const_node("minus1", np.array([-1], np.int64)),
        node("Concat", ["n1", "minus1"], ["target"], axis=0),
        node("Cast", ["target"], ["target64"], to=TensorProto.INT64),
        node("Reshape", ["c", "target64"], ["y"]),
    ]
    return make_model(nodes, {X: ["N", 3, 5, 5]}, ["y"], {"w": rand(4, 3, 3, 3, seed=2)})


def test_shape_gather_concat_reshape_folded_with_dynamic_batch():
    model = _flatten_by_shape_subgraph()
    converted = convert(model)
    assert {n.op for n in converted.graph.nodes} <= {"conv2d", "reshape", "flatten"}
    for batch in (1, 3):
        x = rand(batch, 3, 5, 5, seed=batch)
        assert_close(converted.run({X: x})["y"], run_onnxruntime(model, {X: x})["y"])


def test_constant_of_shape_feeds_an_add():
    nodes = [const_node("shp", np.array([1, 3, 1, 1], np.int64)),
             helper.make_node("ConstantOfShape", ["shp"], ["ones"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])),
             node("Add", [X, "ones"], ["y"])]
    model = make_model(nodes, {X: [2, 3, 4, 4]}, ["y"])
    check_against_onnxruntime(model, {X: rand(2, 3, 4, 4)})


def test_fully_convolutional_model_keeps_dynamic_spatial_dims():
    nodes = [node("Conv", [X, "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]), node("Relu", ["c"], ["r"]),
             node("Resize", ["r", "roi", "sc"], ["y"], mode="nearest")]
    inits = {"w": rand(4, 3, 3, 3, seed=2), "roi": np.array([], np.float32),
             "sc": np.array([1, 1, 2, 2], np.float32)}
    model = make_model(nodes, {X: ["N", 3, "H", "W"]}, ["y"], inits)
    converted = convert(model)
    assert [str(d) for d in converted.graph.inputs[0].shape] == ["N", "3", "H", "W"]
    for shape in ((1, 3, 8, 8), (2, 3, 12, 6)):
        x = rand(*shape)
        assert_close(converted.run({X: x})["y"], run_onnxruntime(model, {X: x})["y"])


def test_input_shape_fixes_dynamic_dims():
    model = _flatten_by_shape_subgraph()
    converted = convert(model, input_shapes={X: [2, 3, 5, 5]})
    assert list(converted.graph.inputs[0].shape) == [2, 3, 5, 5]
    x = rand(2, 3, 5, 5)
    assert_close(converted.run({X: x})["y"], run_onnxruntime(model, {X: x})["y"])


def test_input_shape_for_unknown_input_is_an_error():
    from pyconv.errors import ModelError

    with pytest.raises(ModelError, match="inputs are"):
        convert(_flatten_by_shape_subgraph(), input_shapes={"image": [1, 3, 5, 5]})


def test_resize_sizes_taken_from_shape_with_dynamic_batch():
    """F.interpolate(x, size=(9, 10)) exports sizes as Concat(Shape(x)[:2], [9, 10])."""
    nodes = [node("Shape", [X], ["s"]),
             node("Slice", ["s", "st", "en"], ["nc"]),
             node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             node("Resize", [X, "", "", "sizes"], ["y"], mode="linear")]
    inits = {"st": np.array([0], np.int64), "en": np.array([2], np.int64), "hw": np.array([9, 10], np.int64)}
    model = make_model(nodes, {X: ["N", 3, 4, 5]}, ["y"], inits)
    converted = convert(model)
    for batch in (1, 2):
        x = rand(batch, 3, 4, 5)
        assert_close(converted.run({X: x})["y"], run_onnxruntime(model, {X: x})["y"])


def test_gelu_opset20_and_float_cast():
    model = make_model([node("Cast", [X], ["c"], to=TensorProto.FLOAT), node("Gelu", ["c"], ["y"], approximate="tanh")],
                       {X: [2, 3, 4, 4]}, ["y"], opset=20)
    check_against_onnxruntime(model, {X: rand(2, 3, 4, 4) * 3})


@pytest.mark.parametrize("opset", [9, 15, 21])
def test_small_net_across_opsets(opset):
    """One net through the opset-specific spellings: Clip, Split, Squeeze/Unsqueeze, Pad, ReduceMean, Resize."""
    from onnx_testing import OnnxNet

    net = OnnxNet(seed=4, opset=opset)
    x = net.op("Relu", [net.conv(net.input(X, 3), 8, 3)])
    x = net.clip(x, 0.0, 6.0)
    if opset < 13:
        a, b = net.op("Split", [x], n_out=2, axis=1, split=[4, 4])
    else:
        a, b = net.op("Split", [x, net.const([4, 4], np.int64)], n_out=2, axis=1)
    if opset < 11:
        p = net.op("Pad", [a], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="edge")
        up = net.op("Upsample", [b, net.const([1, 1, 2, 2])], mode="nearest")
    else:
        p = net.op("Pad", [a, net.const([0, 0, 1, 1, 0, 0, 1, 1], np.int64)], mode="edge")
        up = net.op("Resize", [b, net.const([], np.float32), net.const([1, 1, 2, 2])], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if opset < 18:
        m = net.op("ReduceMean", [up], axes=[2, 3], keepdims=0)
    else:
        m = net.op("ReduceMean", [up, net.const([2, 3], np.int64)], keepdims=0)
    if opset < 13:
        m = net.op("Unsqueeze", [m], axes=[2, 3])
    else:
        m = net.op("Unsqueeze", [m, net.const([2, 3], np.int64)])
    y = net.op("Mul", [net.op("MaxPool", [p], kernel_shape=[3, 3], strides=[1, 1]), net.op("Sigmoid", [m])])
    model = net.model({X: [2, 3, 6, 7]}, [y, up])
    check_against_onnxruntime(model, {X: rand(2, 3, 6, 7)})


@pytest.mark.parametrize("attrs", [dict(pads=[1, 2]), dict(strides=[2], dilations=[2], pads=[2, 2]),
                                   dict(auto_pad="SAME_UPPER"), dict(group=2)])
def test_conv1d(attrs):
    model, feeds = _single("Conv", (2, 4, 11), attrs, {"w": rand(6, 4 // attrs.get("group", 1), 4, seed=2),
                                                       "b": rand(6, seed=3)}, ["w", "b"])
    check_against_onnxruntime(model, feeds)


@pytest.mark.parametrize("op_type,constants", [("Pow", [2.0]), ("Pow", [1.0]), ("Neg", []), ("Max", [0.25]),
                                               ("Min", [0.5, 1.5]), ("Max", [-1.0, 0.0])])
def test_elementwise_with_implicit_constants(op_type, constants):
    inits = {f"c{i}": np.array(v, np.float32) for i, v in enumerate(constants)}
    model, feeds = _single(op_type, (2, 3, 4, 5), inits=inits, extra_inputs=list(inits), opset=13)
    check_against_onnxruntime(model, feeds)


def test_pow_with_other_exponent_is_reported():
    from pyconv.errors import UnsupportedOpError

    model, _ = _single("Pow", (1, 3, 4, 4), inits={"e": np.array(3.0, np.float32)}, extra_inputs=["e"])
    with pytest.raises(UnsupportedOpError, match="exponents 1 and 2"):
        convert(model)


@pytest.mark.parametrize("attrs,message", [
    (dict(mode="cubic"), "mode='cubic'"),
    (dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"), "tf_crop_and_resize"),
])
def test_unsupported_resize_variants_are_reported(attrs, message):
    from pyconv.errors import UnsupportedOpError

    inits = {"roi": np.array([], np.float32), "s": np.array([1, 1, 2, 2], np.float32)}
    model, _ = _single("Resize", (1, 2, 3, 3), attrs, inits, ["roi", "s"], opset=19)
    with pytest.raises(UnsupportedOpError, match=message):
        convert(model)


@pytest.mark.parametrize("op_type,mode,shape", [("DepthToSpace", "DCR", (2, 8, 3, 4)),
                                                ("DepthToSpace", "CRD", (1, 12, 2, 3)),
                                                ("SpaceToDepth", None, (2, 3, 4, 6))])
def test_depth_to_space_and_back(op_type, mode, shape):
    attrs = {"blocksize": 2}
    if mode:
        attrs["mode"] = mode
    model, feeds = _single(op_type, shape, attrs)
    check_against_onnxruntime(model, feeds)
