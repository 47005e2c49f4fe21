"""DenseNet-121 (Huang et al. 2017, DenseNet-BC, k=32), torchvision layout.

Each dense layer sees the concatenation of every earlier feature map of its
block: BN-ReLU-1x1 conv (4k) then BN-ReLU-3x3 conv (k) — pre-activation, so
the batch norms sit before the convs.  Transitions halve channels (1x1 conv)
and resolution (2x2 average pool).
"""
from __future__ import annotations

from models.layers import IMAGENET_PREPROCESS, Net, imagenet_net

GROWTH_RATE = 32
BN_SIZE = 4
BLOCKS_121 = (6, 12, 24, 16)


def _bn_relu_conv(net: Net, x: str, out_channels: int, kernel_size: int, bn_name: str, conv_name: str) -> str:
    y = net.activation(net.batch_norm(x, bn_name), "relu")
    return net.conv(y, out_channels, kernel_size, conv_name)


def dense_block(net: Net, x: str, layers: int, name: str) -> str:
    features = [x]
    for i in range(1, layers + 1):
        layer = f"{name}.denselayer{i}"
        joined = features[0] if len(features) == 1 else net.concat(*features)
        y = _bn_relu_conv(net, joined, BN_SIZE * GROWTH_RATE, 1, f"{layer}.norm1", f"{layer}.conv1")
        features.append(_bn_relu_conv(net, y, GROWTH_RATE, 3, f"{layer}.norm2", f"{layer}.conv2"))
    return net.concat(*features)


def densenet121(seed: int = 0, num_classes: int = 1000, state_dict=None) -> Net:
    net = imagenet_net("DenseNet-121", seed=seed, state_dict=state_dict)
    x = net.conv_bn(net.input, 64, 7, "features.conv0", "features.norm0", stride=2)
    x = net.max_pool(x, 3, 2, padding=1)
    for i, layers in enumerate(BLOCKS_121, start=1):
        x = dense_block(net, x, layers, f"features.denseblock{i}")
        if i < len(BLOCKS_121):
            name = f"features.transition{i}"
            x = _bn_relu_conv(net, x, net.channels(x) // 2, 1, f"{name}.norm", f"{name}.conv")
            x = net.avg_pool(x, 2, 2)
    x = net.activation(net.batch_norm(x, "features.norm5"), "relu")
    net.output(net.classifier(x, num_classes, "classifier"))
    net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    return net
