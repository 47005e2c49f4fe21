"""Every zoo architecture by name: ``ZOO[name](seed=...) -> Net``."""
from __future__ import annotations

from typing import Callable, Dict

from models.densenet import densenet121
from models.googlenet import googlenet, inception_block
from models.layers import Net
from models.lenet import lenet5
from models.mobilenet import mobilenet_v1, mobilenet_v2
from models.resnet import resnet18, resnet50, se_block
from models.shufflenet import shufflenet_v2_x1_0
from models.squeezenet import squeezenet1_1
from models.vgg import vgg11, vgg16

ZOO: Dict[str, Callable[..., Net]] = {
    "lenet5": lenet5,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "inception_block": inception_block,
    "googlenet": googlenet,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "squeezenet1_1": squeezenet1_1,
    "densenet121": densenet121,
    "se_block": se_block,
}
