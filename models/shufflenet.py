"""ShuffleNetV2 x1.0 (Ma et al. 2018), torchvision layout.

Units of stride 1 split the channels in two halves, transform one
(1x1, 3x3 depthwise, 1x1) and concatenate; stride-2 units transform both
copies of the input; every unit ends with a channel shuffle of 2 groups.
"""
from __future__ import annotations

from models.layers import IMAGENET_PREPROCESS, Net, imagenet_net

STAGE_REPEATS = [4, 8, 4]
STAGE_CHANNELS_X1 = [24, 116, 232, 464, 1024]


def _branch(net: Net, x: str, channels: int, stride: int, name: str) -> str:
    """1x1 conv-BN-ReLU, 3x3 depthwise conv-BN (strided), 1x1 conv-BN-ReLU (``branch2``)."""
    y = net.conv_bn(x, channels, 1, f"{name}.0", f"{name}.1")
    y = net.conv_bn(y, channels, 3, f"{name}.3", f"{name}.4", stride=stride, groups=channels, act=None)
    return net.conv_bn(y, channels, 1, f"{name}.5", f"{name}.6")


def shuffle_unit(net: Net, x: str, out_channels: int, stride: int, name: str) -> str:
    half = out_channels // 2
    if stride == 1:
        kept, transformed = net.builder.split(x, sizes_or_count=2, axis=1)
        y = net.concat(kept, _branch(net, transformed, half, 1, f"{name}.branch2"))
    else:
        channels = net.channels(x)
        left = net.conv_bn(x, channels, 3, f"{name}.branch1.0", f"{name}.branch1.1", stride=stride,
                           groups=channels, act=None)
        left = net.conv_bn(left, half, 1, f"{name}.branch1.2", f"{name}.branch1.3")
        y = net.concat(left, _branch(net, x, half, stride, f"{name}.branch2"))
    return net.builder.channel_shuffle(y, groups=2)


def shufflenet_v2_x1_0(seed: int = 0, num_classes: int = 1000, state_dict=None) -> Net:
    net = imagenet_net("ShuffleNetV2 x1.0", seed=seed, state_dict=state_dict)
    channels = STAGE_CHANNELS_X1
    x = net.conv_bn(net.input, channels[0], 3, "conv1.0", "conv1.1", stride=2)
    x = net.max_pool(x, 3, 2, padding=1)
    for stage, repeats in enumerate(STAGE_REPEATS):
        for i in range(repeats):
            x = shuffle_unit(net, x, channels[stage + 1], 2 if i == 0 else 1, f"stage{stage + 2}.{i}")
    x = net.conv_bn(x, channels[-1], 1, "conv5.0", "conv5.1")
    net.output(net.classifier(x, num_classes, "fc"))
    net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    return net
