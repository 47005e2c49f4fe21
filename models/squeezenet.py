"""SqueezeNet 1.1 (Iandola et al. 2016; v1.1 from the authors' repository), torchvision layout.

Fire modules: 1x1 squeeze + ReLU, then 1x1 and 3x3 expands + ReLU,
concatenated; convs have biases and there is no batch norm.  The classifier
is a 1x1 conv to the classes + ReLU, then a global average pool.
"""
from __future__ import annotations

from models.layers import IMAGENET_PREPROCESS, Net, imagenet_net

# torchvision features.<index>: (squeeze, expand1x1, expand3x3); "M" = 3x3/2 max pool (ceil mode)
LAYOUT = [("M", 2), ((16, 64, 64), 3), ((16, 64, 64), 4), ("M", 5), ((32, 128, 128), 6), ((32, 128, 128), 7),
          ("M", 8), ((48, 192, 192), 9), ((48, 192, 192), 10), ((64, 256, 256), 11), ((64, 256, 256), 12)]


def fire(net: Net, x: str, squeeze: int, expand1x1: int, expand3x3: int, name: str) -> str:
    s = net.conv_act(x, squeeze, 1, f"{name}.squeeze")
    return net.concat(net.conv_act(s, expand1x1, 1, f"{name}.expand1x1"),
                      net.conv_act(s, expand3x3, 3, f"{name}.expand3x3"))


def squeezenet1_1(seed: int = 0, num_classes: int = 1000, state_dict=None) -> Net:
    net = imagenet_net("SqueezeNet 1.1", seed=seed, state_dict=state_dict)
    x = net.conv_act(net.input, 64, 3, "features.0", stride=2, padding=0)
    for item, index in LAYOUT:
        if item == "M":
            x = net.max_pool(x, 3, 2, ceil_mode=True)
        else:
            x = fire(net, x, *item, f"features.{index}")
    x = net.conv_act(x, num_classes, 1, "classifier.1")
    net.output(net.global_pool_flatten(x))
    net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    return net
