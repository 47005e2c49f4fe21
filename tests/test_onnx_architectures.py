"""ONNX importer on whole architectures: generated ONNX graphs with random weights
(ResNet, MobileNetV2, ShuffleNet, SqueezeNet, Inception, DenseNet, squeeze-and-excitation,
a YOLO-style neck, a DBNet-style FPN, a YOLOv5 head, ConvMixer) compared with onnxruntime, and the model-zoo
topologies shipped inside the onnx package (constant weights: structure coverage)."""
from __future__ import annotations

import glob
import os
import time

import numpy as np
import pytest

from onnx_testing import OnnxNet, assert_close, check_against_onnxruntime, convert, rand, run_onnxruntime

import onnx  # noqa: E402

X = "x"
# deep float32 stacks (Winograd included) against onnxruntime: relative to the output's magnitude
ARCH_RTOL = 1e-3


def _head(net: OnnxNet, x: str, classes: int = 10) -> str:
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    c = net.channels[x]
    return net.op("Gemm", [pooled, net.weight(classes, c), net.weight(classes, scale=0.1)], transB=1)


def resnet() -> tuple:
    net = OnnxNet(seed=1)
    x = net.conv_bn_act(net.input(X, 3), 8, k=7, s=2)
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    def basic(x, cout, stride):
        y = net.conv_bn_act(x, cout, 3, stride)
        y = net.conv_bn_act(y, cout, 3, 1, act=None)
        short = x if stride == 1 and net.channels[x] == cout else net.conv_bn_act(x, cout, 1, stride, act=None)
        return net.op("Relu", [net.op("Add", [y, short])])

    def bottleneck(x, mid, cout, stride):
        y = net.conv_bn_act(x, mid, 1)
        y = net.conv_bn_act(y, mid, 3, stride)
        y = net.conv_bn_act(y, cout, 1, act=None)
        short = net.conv_bn_act(x, cout, 1, stride, act=None)
        return net.op("Relu", [net.op("Sum", [y, short])])

    x = basic(basic(x, 8, 1), 16, 2)
    x = bottleneck(x, 8, 24, 2)
    return net.model({X: [2, 3, 32, 32]}, [_head(net, x)]), (2, 3, 32, 32)


def mobilenet_v2() -> tuple:
    net = OnnxNet(seed=2, opset=11)
    x = net.conv_bn_act(net.input(X, 3), 8, 3, 2, act="Relu6")

    def inverted(x, cout, stride, expand):
        cin = net.channels[x]
        y = net.conv_bn_act(x, cin * expand, 1, act="Relu6") if expand != 1 else x
        y = net.conv_bn_act(y, cin * expand, 3, stride, groups=cin * expand, act="Relu6")
        y = net.conv_bn_act(y, cout, 1, act=None)
        return net.op("Add", [x, y]) if stride == 1 and cin == cout else y

    for cout, stride, expand in ((8, 1, 1), (12, 2, 6), (12, 1, 6), (16, 2, 6), (16, 1, 6)):
        x = inverted(x, cout, stride, expand)
    x = net.conv_bn_act(x, 32, 1, act="Relu6")
    return net.model({X: [1, 3, 32, 32]}, [_head(net, x)]), (1, 3, 32, 32)


def _channel_shuffle(net: OnnxNet, x: str, groups: int, hw) -> str:
    c = net.channels[x]
    y = net.op("Reshape", [x, net.const([1, groups, c // groups, *hw], np.int64)])
    y = net.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return net.op("Reshape", [y, net.const([1, c, *hw], np.int64)], channels=c)


def shufflenet_v2() -> tuple:
    net = OnnxNet(seed=3)
    x = net.conv_bn_act(net.input(X, 3), 16, 3, 2)  # 12x12

    def branch(x, cout, stride):
        y = net.conv_bn_act(x, cout, 1)
        y = net.conv_bn_act(y, cout, 3, stride, groups=cout, act=None)
        return net.conv_bn_act(y, cout, 1)

    def unit(x, hw):
        c = net.channels[x]
        a, b = net.op("Split", [x, net.const([c // 2, c // 2], np.int64)], n_out=2, axis=1)
        net.channels[a] = net.channels[b] = c // 2
        y = net.op("Concat", [a, branch(b, c // 2, 1)], axis=1, channels=c)
        return _channel_shuffle(net, y, 2, hw)

    def down_unit(x, cout, hw):
        left = net.conv_bn_act(net.conv_bn_act(x, net.channels[x], 3, 2, groups=net.channels[x], act=None),
                               cout // 2, 1)
        y = net.op("Concat", [left, branch(x, cout // 2, 2)], axis=1, channels=cout)
        return _channel_shuffle(net, y, 2, hw)

    x = unit(unit(x, (12, 12)), (12, 12))
    x = unit(down_unit(x, 32, (6, 6)), (6, 6))
    return net.model({X: [1, 3, 24, 24]}, [_head(net, x)]), (1, 3, 24, 24)


def squeezenet() -> tuple:
    net = OnnxNet(seed=4, opset=9)
    x = net.op("Relu", [net.conv(net.input(X, 3), 16, 3, 2, p=0)])
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])

    def fire(x, squeeze, expand):
        s = net.op("Relu", [net.conv(x, squeeze, 1)])
        return net.op("Concat", [net.op("Relu", [net.conv(s, expand, 1)]), net.op("Relu", [net.conv(s, expand, 3)])],
                      axis=1, channels=2 * expand)

    x = fire(fire(x, 4, 8), 4, 8)
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    x = fire(x, 6, 12)
    x = net.op("Dropout", [x], ratio=0.5)
    x = net.op("Relu", [net.conv(x, 10, 1)])
    y = net.op("Softmax", [net.op("GlobalAveragePool", [x])], axis=1)  # opset 9: coerced to 2-D
    return net.model({X: [2, 3, 33, 33]}, [y]), (2, 3, 33, 33)


def inception() -> tuple:
    net = OnnxNet(seed=5)
    x = net.conv_bn_act(net.input(X, 3), 16, 3, 2)

    def block(x):
        b1 = net.conv_bn_act(x, 8, 1)
        b2 = net.conv_bn_act(net.conv_bn_act(x, 6, 1), 8, 3)
        b3 = net.conv_bn_act(net.conv_bn_act(net.conv_bn_act(x, 4, 1), 6, 3), 6, 3)
        pool = net.op("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        b4 = net.conv_bn_act(pool, 6, 1)
        mp = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        b5 = net.conv_bn_act(mp, 4, 1)
        return net.op("Concat", [b1, b2, b3, b4, b5], axis=1, channels=32)

    x = block(block(x))
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    return net.model({X: [1, 3, 30, 30]}, [_head(net, x)]), (1, 3, 30, 30)


def densenet() -> tuple:
    net = OnnxNet(seed=6)
    x = net.conv_bn_act(net.input(X, 3), 12, 3, 2)
    for _ in range(2):  # two dense blocks with a transition between
        for _ in range(3):
            y = net.op("Relu", [net.bn(x)])
            y = net.op("Relu", [net.bn(net.conv(y, 16, 1, bias=False))])
            y = net.conv(y, 6, 3, bias=False)
            x = net.op("Concat", [x, y], axis=1, channels=net.channels[x] + 6)
        x = net.conv(net.op("Relu", [net.bn(x)]), net.channels[x] // 2, 1, bias=False)
        x = net.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    return net.model({X: [1, 3, 32, 32]}, [_head(net, x)]), (1, 3, 32, 32)


def squeeze_excitation() -> tuple:
    net = OnnxNet(seed=7, opset=14)
    x = net.conv_bn_act(net.input(X, 3), 16, 3, 1)
    # SE with 1x1 convs (torchvision style) ...
    s = net.op("ReduceMean", [x], axes=[2, 3], keepdims=1)
    s = net.op("Sigmoid", [net.conv(net.op("Relu", [net.conv(s, 4, 1)]), 16, 1)])
    x = net.op("Mul", [x, s])
    # ... and with Gemm + reshape (Keras/timm style), gated by a hard sigmoid (MobileNetV3)
    s = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    s = net.op("Relu", [net.op("Gemm", [s, net.weight(4, 16), net.weight(4, scale=0.1)], transB=1)])
    s = net.op("HardSigmoid", [net.op("Gemm", [s, net.weight(4, 16), net.weight(16, scale=0.1)])],
               alpha=1.0 / 6.0, beta=0.5)
    s = net.op("Reshape", [s, net.const([-1, 16, 1, 1], np.int64)])
    x = net.op("Mul", [s, x], channels=16)
    x = net.op("HardSwish", [net.conv(x, 16, 3)])
    return net.model({X: [2, 3, 12, 12]}, [x]), (2, 3, 12, 12)


def yolo_neck() -> tuple:
    net = OnnxNet(seed=8, opset=13)
    p3 = net.conv_bn_act(net.conv_bn_act(net.input(X, 3), 8, 3, 2, act="SiLU"), 16, 3, 2, act="SiLU")   # /4
    p4 = net.conv_bn_act(p3, 24, 3, 2, act="SiLU")   # /8
    p5 = net.conv_bn_act(p4, 32, 3, 2, act="SiLU")   # /16
    # SPPF
    y = net.conv_bn_act(p5, 16, 1, act="SiLU")
    m1 = net.op("MaxPool", [y], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    m2 = net.op("MaxPool", [m1], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    m3 = net.op("MaxPool", [m2], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    p5 = net.conv_bn_act(net.op("Concat", [y, m1, m2, m3], axis=1, channels=64), 32, 1, act="SiLU")
    # top-down with nearest upsampling
    up = net.op("Resize", [net.conv_bn_act(p5, 24, 1, act="SiLU"), "", net.const([1, 1, 2, 2])], mode="nearest")
    p4 = net.conv_bn_act(net.op("Concat", [up, p4], axis=1, channels=48), 24, 3, act="SiLU")
    up = net.op("Resize", [net.conv_bn_act(p4, 16, 1, act="SiLU"), "", net.const([1, 1, 2, 2])], mode="nearest")
    out3 = net.conv_bn_act(net.op("Concat", [up, p3], axis=1, channels=32), 16, 3, act="SiLU")
    # bottom-up
    down = net.conv_bn_act(out3, 16, 3, 2, act="SiLU")
    out4 = net.conv_bn_act(net.op("Concat", [down, p4], axis=1, channels=40), 24, 3, act="SiLU")
    heads = [net.conv(out3, 9, 1), net.conv(out4, 9, 1)]
    return net.model({X: ["N", 3, "H", "W"]}, heads), (1, 3, 32, 32)


def dbnet_fpn() -> tuple:
    net = OnnxNet(seed=9, opset=11)
    c2 = net.conv_bn_act(net.conv_bn_act(net.input(X, 3), 8, 3, 2), 8, 3, 2)   # /4
    c3 = net.conv_bn_act(c2, 16, 3, 2)   # /8
    c4 = net.conv_bn_act(c3, 24, 3, 2)   # /16
    lat = [net.conv(c, 8, 1, bias=False) for c in (c2, c3, c4)]
    p4 = lat[2]
    up = lambda t, f: net.op("Resize", [t, net.const([], np.float32), net.const([1, 1, f, f])],  # noqa: E731
                             mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    p3 = net.op("Add", [lat[1], up(p4, 2)])
    p2 = net.op("Add", [lat[0], up(p3, 2)])
    outs = [net.conv(p, 4, 3, bias=False) for p in (p2, p3, p4)]
    fused = net.op("Concat", [outs[0], up(outs[1], 2), up(outs[2], 4)], axis=1, channels=12)
    y = net.conv_bn_act(fused, 8, 3)
    w1 = net.weight(8, 8, 2, 2)
    y = net.op("Relu", [net.bn(net.op("ConvTranspose", [y, w1, net.weight(8, scale=0.1)], channels=8,
                                      kernel_shape=[2, 2], strides=[2, 2]))])
    w2 = net.weight(8, 1, 2, 2)
    y = net.op("Sigmoid", [net.op("ConvTranspose", [y, w2], channels=1, kernel_shape=[2, 2], strides=[2, 2])])
    return net.model({X: ["N", 3, "H", "W"]}, [y]), (1, 3, 32, 32)


def yolov5_head() -> tuple:
    """YOLOv5's Detect layer as exported: 5-D reshape/transpose, sigmoid, grid/anchor arithmetic
    (Mul, Sub, Add, Pow with constants), Split, Concat and a final flattening Reshape."""
    net = OnnxNet(seed=10, opset=13)
    x = net.conv_bn_act(net.conv_bn_act(net.input(X, 3), 8, 3, 2, act="SiLU"), 16, 3, 2, act="SiLU")  # 4x4
    na, no, ny, nx, stride = 3, 6, 4, 4, 8.0
    p = net.conv(x, na * no, 1)
    p = net.op("Transpose", [net.op("Reshape", [p, net.const([1, na, no, ny, nx], np.int64)])], perm=[0, 1, 3, 4, 2])
    y = net.op("Sigmoid", [p])
    xy, wh, conf = net.op("Split", [y, net.const([2, 2, no - 4], np.int64)], n_out=3, axis=4)
    gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    grid = np.stack((gx, gy), -1).reshape(1, 1, ny, nx, 2).astype(np.float32) - 0.5
    anchors = (np.array([[10, 13], [16, 30], [33, 23]], np.float32)).reshape(1, na, 1, 1, 2)
    xy = net.op("Mul", [net.op("Add", [net.op("Mul", [xy, net.const(2.0)]), net.const(grid)]), net.const(stride)])
    wh = net.op("Mul", [net.op("Pow", [net.op("Mul", [wh, net.const(2.0)]), net.const(2.0)]), net.const(anchors)])
    out = net.op("Concat", [xy, wh, conf], axis=4)
    out = net.op("Reshape", [out, net.const([1, -1, no], np.int64)])
    return net.model({X: [1, 3, 16, 16]}, [out]), (1, 3, 16, 16)


def convmixer() -> tuple:
    """ConvMixer as PyTorch exports it before opset 20: GELU spelled with Erf, then BatchNorm;
    depthwise mixing with a residual, pointwise mixing."""
    net = OnnxNet(seed=16, opset=13)

    def gelu_bn(x):
        e = net.op("Erf", [net.op("Div", [x, net.const(1.4142135)])])
        return net.bn(net.op("Mul", [net.op("Mul", [x, net.op("Add", [e, net.const(1.0)])]), net.const(0.5)]))

    x = gelu_bn(net.conv(net.input(X, 3), 16, k=4, s=4, p=0))
    for _ in range(2):
        x = net.op("Add", [gelu_bn(net.conv(x, 16, k=5, groups=16)), x])
        x = gelu_bn(net.conv(x, 16, k=1))
    return net.model({X: [2, 3, 24, 24]}, [_head(net, x)]), (2, 3, 24, 24)


ARCHITECTURES = {f.__name__: f for f in (resnet, mobilenet_v2, shufflenet_v2, squeezenet, inception, densenet,
                                         squeeze_excitation, yolo_neck, dbnet_fpn, yolov5_head, convmixer)}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_matches_onnxruntime(name, tmp_path):
    model, shape = ARCHITECTURES[name]()
    check_against_onnxruntime(model, {X: rand(*shape, seed=11)}, rtol=ARCH_RTOL, tmp_path=tmp_path)


def test_shufflenet_shuffles_become_channel_shuffle_ops():
    model, _ = shufflenet_v2()
    ops = [n.op for n in convert(model).graph.nodes]
    assert ops.count("channel_shuffle") == 4 and "transpose" not in ops


def test_yolo_neck_sppf_becomes_one_op():
    model, _ = yolo_neck()
    ops = [n.op for n in convert(model).graph.nodes]
    assert ops.count("sppf") == 1 and "max_pool2d" not in ops and ops.count("silu") == 12


@pytest.mark.parametrize("name", ["yolo_neck", "dbnet_fpn"])
def test_fully_convolutional_architectures_run_at_any_size(name):
    model, _ = ARCHITECTURES[name]()
    converted = convert(model)
    for shape in ((1, 3, 48, 32), (2, 3, 16, 64)):
        x = rand(*shape, seed=12)
        expected = run_onnxruntime(model, {X: x})
        actual = converted.run({X: x})
        for key, value in expected.items():
            assert_close(actual[key], value, ARCH_RTOL, what=f"{name} {shape} {key}")


# --------------------------------------------------------------------------- model zoo topologies

ZOO_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
ZOO = sorted(os.path.basename(p)[len("light_"):-len(".onnx")] for p in glob.glob(os.path.join(ZOO_DIR, "light_*.onnx")))


# VGG-19 (20 GMACs, 143 M parameters) is converted, checked structurally and run, but not compared
# with onnxruntime: a second engine's pass would cost more than the rest of the zoo together.
NOT_COMPARED = {"vgg19": {"conv2d": 16, "relu": 18, "max_pool2d": 5, "reshape": 1, "linear": 3, "softmax": 1}}


@pytest.mark.parametrize("name", [n for n in ZOO if n in NOT_COMPARED])
def test_model_zoo_topology_converts_and_runs_structure_only(name):
    converted = convert(os.path.join(ZOO_DIR, f"light_{name}.onnx"), winograd=False)
    ops = {}
    for n in converted.graph.nodes:
        ops[n.op] = ops.get(n.op, 0) + 1
    assert ops == NOT_COMPARED[name]
    (feed,) = converted.input_names
    (out,) = converted.run({feed: rand(1, 3, 224, 224, seed=13)}).values()
    assert out.shape == (1, 1000) and np.all(np.isfinite(out))


def _logits(model):
    """The model with a final Softmax's input as its output.  With every weight the same,
    the classes tie: their logits (about 1e8 here) differ only by float32 rounding, which
    depends on each engine's summation order, and softmax turns a few units of difference
    into probabilities of 0 against 0.002."""
    last = model.graph.node[-1]
    if last.op_type == "Softmax":
        model.graph.node.remove(last)
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize("name", [n for n in ZOO if n not in NOT_COMPARED])
def test_model_zoo_topology_converts_and_runs(name):
    model = _logits(onnx.load(os.path.join(ZOO_DIR, f"light_{name}.onnx")))
    # Winograd is covered by the architectures above; its weight transform would cost seconds per
    # zoo model here, and these runs are about structure.
    converted = convert(model, winograd=False)
    (feed,) = converted.input_names
    x = rand(1, 3, 224, 224, seed=13)
    actual = converted.run({feed: x})
    expected = run_onnxruntime(model, {feed: x})
    for key, value in expected.items():
        # every weight is the constant 0.02, so activations grow layer after layer: compare relatively
        assert np.all(np.isfinite(actual[key])) == np.all(np.isfinite(value))
        finite = np.isfinite(value)
        assert_close(np.where(finite, actual[key], 0), np.where(finite, value, 0), 1e-3, what=f"{name} {key}")


def test_conversion_of_a_mobilenet_v2_sized_model_is_fast():
    """MobileNetV2 proper: 17 inverted residual blocks, 3.5 M parameters, 224 x 224."""
    net = OnnxNet(seed=14, opset=13)
    x = net.conv_bn_act(net.input(X, 3), 32, 3, 2, act="Relu6")
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    for t, c, n, s in settings:
        for i in range(n):
            cin = net.channels[x]
            y = net.conv_bn_act(x, cin * t, 1, act="Relu6") if t != 1 else x
            y = net.conv_bn_act(y, cin * t, 3, s if i == 0 else 1, groups=cin * t, act="Relu6")
            y = net.conv_bn_act(y, c, 1, act=None)
            x = net.op("Add", [x, y]) if (s == 1 or i > 0) and cin == c else y
    x = net.conv_bn_act(x, 1280, 1, act="Relu6")
    model = net.model({X: ["N", 3, 224, 224]}, [_head(net, x, 1000)])
    start = time.perf_counter()
    graph = __import__("pyconv.convert", fromlist=["from_onnx"]).from_onnx(model)
    elapsed = time.perf_counter() - start
    assert sum(int(np.prod(w.shape)) for w in graph.weights.values()) > 3_000_000
    assert elapsed < 2.0, f"conversion took {elapsed:.2f} s"


def test_keras_style_nhwc_model_with_same_padding():
    """What tf2onnx writes for a Keras MobileNet: NHWC input transposed once, SAME_UPPER convs with
    stride 2, Relu6 as Clip, a spatial ReduceMean, MatMul + Add, Softmax."""
    net = OnnxNet(seed=15, opset=13)
    x = net.op("Transpose", [net.input("image", 3)], perm=[0, 3, 1, 2])
    for cout, stride, groups in ((8, 2, 1), (8, 1, 8), (16, 1, 1), (16, 2, 16), (24, 1, 1)):
        cin = net.channels[x]
        w = net.weight(cout, cin // groups, 3 if groups > 1 or cout == 8 and stride == 2 else 1,
                       3 if groups > 1 or cout == 8 and stride == 2 else 1)
        k = net.inits[w].shape[2]
        x = net.op("Conv", [x, w, net.weight(cout, scale=0.1)], channels=cout, kernel_shape=[k, k],
                   strides=[stride, stride], group=groups, auto_pad="SAME_UPPER")
        x = net.clip(x, 0.0, 6.0)
    x = net.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    y = net.op("Softmax", [net.op("Add", [net.op("MatMul", [x, net.weight(24, 10)]), net.const(rand(10, seed=2))])],
               axis=-1)
    model = net.model({"image": [1, 19, 17, 3]}, [y])
    converted = convert(model)
    assert list(converted.graph.inputs[0].shape) == [1, 3, 19, 17]
    assert {"transpose", "add", "mul"}.isdisjoint(n.op for n in converted.graph.nodes)
    x = rand(1, 3, 19, 17, seed=3)
    expected = run_onnxruntime(model, {"image": x.transpose(0, 2, 3, 1)})[y]
    assert_close(converted.run({"image": x})[y], expected, ARCH_RTOL)
