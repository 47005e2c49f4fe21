"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018, torchvision layout).

V1: a 3x3 stride-2 conv then 13 depthwise-separable blocks (3x3 depthwise +
BN + ReLU, 1x1 pointwise + BN + ReLU), global pool, FC: 4.23 M parameters,
569 M MACs at width 1.0.
V2: inverted residuals (1x1 expand x6, 3x3 depthwise, 1x1 linear projection)
with ReLU6, residual connections where stride is 1 and widths match; node
names are torchvision's, so its trained state_dict maps directly.
"""
from __future__ import annotations

from models.layers import IMAGENET_PREPROCESS, Net, imagenet_net

# (output channels, stride) of V1's depthwise-separable blocks
MOBILENET_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
    [(1024, 2), (1024, 1)]

# (expansion t, output channels c, repeats n, first stride s), the paper's table 2
MOBILENET_V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v1(seed: int = 0, num_classes: int = 1000, state_dict=None) -> Net:
    net = imagenet_net("MobileNetV1", seed=seed, state_dict=state_dict)
    x = net.conv_bn(net.input, 32, 3, "features.0.conv", "features.0.bn", stride=2)
    for i, (channels, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        name = f"features.{i}"
        x = net.conv_bn(x, net.channels(x), 3, f"{name}.dw", f"{name}.dw_bn", stride=stride, groups=net.channels(x))
        x = net.conv_bn(x, channels, 1, f"{name}.pw", f"{name}.pw_bn")
    net.output(net.classifier(x, num_classes, "classifier"))
    net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    return net


def inverted_residual(net: Net, x: str, out_channels: int, stride: int, expansion: int, name: str) -> str:
    """MobileNetV2 block; module indices follow torchvision's ``InvertedResidual.conv``."""
    in_channels = net.channels(x)
    hidden = in_channels * expansion
    y, index = x, 0
    if expansion != 1:
        y = net.conv_bn(y, hidden, 1, f"{name}.conv.0.0", f"{name}.conv.0.1", act="relu6")
        index = 1
    y = net.conv_bn(y, hidden, 3, f"{name}.conv.{index}.0", f"{name}.conv.{index}.1", stride=stride,
                    groups=hidden, act="relu6")
    y = net.conv_bn(y, out_channels, 1, f"{name}.conv.{index + 1}", f"{name}.conv.{index + 2}", act=None)
    if stride == 1 and in_channels == out_channels:
        y = net.add(y, x)
    return y


def mobilenet_v2(seed: int = 0, num_classes: int = 1000, state_dict=None) -> Net:
    net = imagenet_net("MobileNetV2", seed=seed, state_dict=state_dict)
    x = net.conv_bn(net.input, 32, 3, "features.0.0", "features.0.1", stride=2, act="relu6")
    index = 1
    for expansion, channels, repeats, first_stride in MOBILENET_V2_SETTINGS:
        for i in range(repeats):
            x = inverted_residual(net, x, channels, first_stride if i == 0 else 1, expansion, f"features.{index}")
            index += 1
    x = net.conv_bn(x, 1280, 1, f"features.{index}.0", f"features.{index}.1", act="relu6")
    net.output(net.classifier(x, num_classes, "classifier.1"))
    net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    return net
