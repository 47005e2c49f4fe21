"""GoogLeNet / Inception-v1 (Szegedy et al. 2015), torchvision layout, and one Inception block.

Every conv is torchvision's BasicConv2d (conv without bias + BN, eps 1e-3, +
ReLU); max pools use ceil mode; no auxiliary classifiers (inference).
torchvision's "5x5" branch uses a 3x3 kernel (6,624,904 parameters, the
number its trained weights have); ``paper_5x5=True`` builds the paper's 5x5.
"""
from __future__ import annotations

from typing import Sequence

from models.layers import IMAGENET_PREPROCESS, Net, imagenet_net

BN_EPS = 1e-3

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) of the paper's table 1
INCEPTION_3A = (64, 96, 128, 16, 32, 32)
STAGES = [
    ("inception3a", INCEPTION_3A), ("inception3b", (128, 128, 192, 32, 96, 64)), ("maxpool3", None),
    ("inception4a", (192, 96, 208, 16, 48, 64)), ("inception4b", (160, 112, 224, 24, 64, 64)),
    ("inception4c", (128, 128, 256, 24, 64, 64)), ("inception4d", (112, 144, 288, 32, 64, 64)),
    ("inception4e", (256, 160, 320, 32, 128, 128)), ("maxpool4", None),
    ("inception5a", (256, 160, 320, 32, 128, 128)), ("inception5b", (384, 192, 384, 48, 128, 128)),
]


def basic_conv(net: Net, x: str, out_channels: int, kernel_size: int, name: str, stride: int = 1) -> str:
    return net.conv_bn(x, out_channels, kernel_size, f"{name}.conv", f"{name}.bn", stride=stride, eps=BN_EPS)


def inception(net: Net, x: str, widths: Sequence[int], name: str, paper_5x5: bool = False) -> str:
    """Four parallel branches (1x1; 1x1-3x3; 1x1-5x5; 3x3 max pool-1x1) concatenated."""
    c1, c3r, c3, c5r, c5, pool_proj = widths
    b1 = basic_conv(net, x, c1, 1, f"{name}.branch1")
    b2 = basic_conv(net, basic_conv(net, x, c3r, 1, f"{name}.branch2.0"), c3, 3, f"{name}.branch2.1")
    b3 = basic_conv(net, basic_conv(net, x, c5r, 1, f"{name}.branch3.0"), c5, 5 if paper_5x5 else 3,
                    f"{name}.branch3.1")
    pooled = net.max_pool(x, 3, 1, padding=1, ceil_mode=True)
    b4 = basic_conv(net, pooled, pool_proj, 1, f"{name}.branch4.1")
    return net.concat(b1, b2, b3, b4)


def inception_block(seed: int = 0, size: int = 28, paper_5x5: bool = True, state_dict=None) -> Net:
    """Inception (3a) on a [N, 192, 28, 28] map; with the paper's 5x5 it costs the paper's 128 M MACs."""
    net = Net("Inception-v1 block (3a)", ["N", 192, size, size], seed=seed, state_dict=state_dict)
    net.output(inception(net, net.input, INCEPTION_3A, "inception3a", paper_5x5), "features")
    return net


def googlenet(seed: int = 0, num_classes: int = 1000, paper_5x5: bool = False, state_dict=None) -> Net:
    net = imagenet_net("GoogLeNet", seed=seed, state_dict=state_dict)
    x = basic_conv(net, net.input, 64, 7, "conv1", stride=2)
    x = net.max_pool(x, 3, 2, ceil_mode=True)
    x = basic_conv(net, x, 64, 1, "conv2")
    x = basic_conv(net, x, 192, 3, "conv3")
    x = net.max_pool(x, 3, 2, ceil_mode=True)
    for name, widths in STAGES:
        if widths is None:
            x = net.max_pool(x, 3 if name == "maxpool3" else 2, 2, ceil_mode=True)
        else:
            x = inception(net, x, widths, name, paper_5x5)
    net.output(net.classifier(x, num_classes, "fc"))
    net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    return net
