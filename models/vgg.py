"""VGG-11 and VGG-16 (Simonyan & Zisserman 2015, configurations A and D), torchvision layout.

3x3 convs with bias + ReLU, 2x2 max pools; an adaptive 7x7 average pool (the
identity at 224x224; it lets the classifier, 25088-4096-4096-1000, take any
input size of at least 32x32, as in torchvision).  ``include_classifier=False``
stops at the last max pool ([N, 512, H/32, W/32]), the "VGG without FC" used in
benchmarks.
"""
from __future__ import annotations

from typing import List, Union

from models.layers import IMAGENET_PREPROCESS, Net, imagenet_net

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _vgg(config: List[Union[int, str]], title: str, seed: int, num_classes: int, include_classifier: bool,
         state_dict=None) -> Net:
    net = imagenet_net(title, seed=seed, state_dict=state_dict)
    x, index = net.input, 0  # index counts torchvision's features.<i> modules (conv, relu, pool)
    for item in config:
        if item == "M":
            x = net.max_pool(x, 2, 2)
            index += 1
        else:
            x = net.conv_act(x, int(item), 3, f"features.{index}")
            index += 2
    if include_classifier:
        x = net.builder.flatten(net.builder.adaptive_avg_pool2d(x, output_size=7, name="avgpool"))
        x = net.activation(net.linear(x, 4096, "classifier.0"), "relu")
        x = net.activation(net.linear(x, 4096, "classifier.3"), "relu")
        x = net.linear(x, num_classes, "classifier.6")
        net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    net.output(x, "logits" if include_classifier else "features")
    return net


def vgg11(seed: int = 0, num_classes: int = 1000, include_classifier: bool = True, state_dict=None) -> Net:
    return _vgg(CONFIGS["vgg11"], "VGG-11", seed, num_classes, include_classifier, state_dict)


def vgg16(seed: int = 0, num_classes: int = 1000, include_classifier: bool = True, state_dict=None) -> Net:
    return _vgg(CONFIGS["vgg16"], "VGG-16", seed, num_classes, include_classifier, state_dict)
