"""ResNet-18 and ResNet-50 (He et al. 2016), torchvision layout, and a squeeze-and-excitation block.

Bottlenecks put the stride on the 3x3 conv (torchvision's "ResNet v1.5");
projection shortcuts (1x1 conv + BN) only where the shape changes.
"""
from __future__ import annotations

from typing import Optional, Sequence

from models.layers import IMAGENET_PREPROCESS, Net, imagenet_net


def _shortcut(net: Net, x: str, out_channels: int, stride: int, name: str) -> str:
    if stride == 1 and net.channels(x) == out_channels:
        return x
    return net.conv_bn(x, out_channels, 1, f"{name}.downsample.0", f"{name}.downsample.1", stride=stride, act=None)


def basic_block(net: Net, x: str, channels: int, stride: int, name: str, se_reduction: Optional[int] = None) -> str:
    """Two 3x3 conv-BN with an identity (or projection) shortcut; optional SE before the addition."""
    y = net.conv_bn(x, channels, 3, f"{name}.conv1", f"{name}.bn1", stride=stride)
    y = net.conv_bn(y, channels, 3, f"{name}.conv2", f"{name}.bn2", act=None)
    if se_reduction is not None:
        y = net.squeeze_excitation(y, f"{name}.se", se_reduction)
    return net.activation(net.add(y, _shortcut(net, x, channels, stride, name)), "relu")


def bottleneck(net: Net, x: str, width: int, stride: int, name: str) -> str:
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, with shortcut."""
    out_channels = width * 4
    y = net.conv_bn(x, width, 1, f"{name}.conv1", f"{name}.bn1")
    y = net.conv_bn(y, width, 3, f"{name}.conv2", f"{name}.bn2", stride=stride)
    y = net.conv_bn(y, out_channels, 1, f"{name}.conv3", f"{name}.bn3", act=None)
    return net.activation(net.add(y, _shortcut(net, x, out_channels, stride, name)), "relu")


def _resnet(title: str, block, blocks_per_stage: Sequence[int], seed: int, num_classes: int, state_dict) -> Net:
    net = imagenet_net(title, seed=seed, state_dict=state_dict)
    x = net.conv_bn(net.input, 64, 7, "conv1", "bn1", stride=2)
    x = net.max_pool(x, 3, 2, padding=1)
    for stage, count in enumerate(blocks_per_stage):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            x = block(net, x, 64 * 2 ** stage, stride, f"layer{stage + 1}.{i}")
    net.output(net.classifier(x, num_classes, "fc"))
    net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    return net


def resnet18(seed: int = 0, num_classes: int = 1000, state_dict=None) -> Net:
    return _resnet("ResNet-18", basic_block, [2, 2, 2, 2], seed, num_classes, state_dict)


def resnet50(seed: int = 0, num_classes: int = 1000, state_dict=None) -> Net:
    return _resnet("ResNet-50", bottleneck, [3, 4, 6, 3], seed, num_classes, state_dict)


def se_block(seed: int = 0, channels: int = 64, size: int = 56, reduction: int = 16, state_dict=None) -> Net:
    """One SE-ResNet basic block (Hu et al. 2018, fig. 3) on a [N, channels, size, size] feature map."""
    net = Net("SE-ResNet basic block", ["N", channels, size, size], seed=seed, state_dict=state_dict)
    net.output(basic_block(net, net.input, channels, 1, "block", se_reduction=reduction), "features")
    return net
