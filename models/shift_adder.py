"""Networks built from shift and adder convolutions.

* ``shift_resnet20``: ShiftResNet-20 for CIFAR-10 (Wu et al., CVPR 2018): ResNet-20
  whose 3x3 convs are CSC modules — 1x1 conv (expansion ``expansion``) + BN + ReLU,
  shift, 1x1 conv (the stride) + BN — run as ``conv2d`` + fused ``shift_conv1x1``.
* ``addernet_resnet20``: AdderNet ResNet-20 for CIFAR-10 (Chen et al., CVPR 2020),
  laid out as the paper's reference code: the first conv and the final 1x1
  classifier multiply, every other layer is an adder followed by BatchNorm,
  shortcuts that change shape are 1x1 adders with stride + BatchNorm.
  Weights are looked up under the reference code's names (``layer1.0.conv1.adder``).
* ``shiftnet_imagenet``: a ShiftNet-style ImageNet network: 3x3 stem, four stages of
  CSC modules (expansion 4, stride on the fused shift + 1x1), global pool, linear.
  It follows the paper's recipe, not the exact ShiftNet-A/B/C tables.

    python -m models.shift_adder NAME --out model.npz [--seed S]   # random weights
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from models.layers import IMAGENET_PREPROCESS, Net, imagenet_net

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-10 test normalisation of the AdderNet reference code; photos are resized
# (short side) and centre-cropped to 32x32
CIFAR10_PREPROCESS = {
    "resize": 32, "crop": [32, 32], "scale": 1 / 255, "channel_order": "RGB",
    "mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010],
}


# ----------------------------------------------------------------------------- layers

def adder_bn(net: Net, x: str, out_channels: int, kernel_size: int, adder_name: str, bn_name: str,
             stride: int = 1, act: Optional[str] = "relu") -> str:
    """Adder conv ("same" zero padding, no bias) + BatchNorm + optional activation."""
    shape = (out_channels, net.channels(x), kernel_size, kernel_size)
    weight = net.param(f"{adder_name}.adder", shape, "he")
    y = net.builder.adder2d(x, weight=weight, stride=stride, padding=kernel_size // 2, name=adder_name)
    return net.activation(net.batch_norm(y, bn_name), act)


def csc_module(net: Net, x: str, out_channels: int, expansion: int, stride: int, name: str,
               act: Optional[str] = None) -> str:
    """ShiftNet's CSC module: 1x1 expand + BN + ReLU, shift (3x3, interleaved), 1x1 (stride) + BN."""
    mid = out_channels * expansion
    y = net.conv_bn(x, mid, 1, f"{name}.conv1", f"{name}.bn1")
    weight = net.param(f"{name}.conv2.weight", (out_channels, mid, 1, 1), "he")
    y = net.builder.shift_conv1x1(y, weight=weight, kernel_size=3, stride=stride, name=f"{name}.conv2")
    return net.activation(net.batch_norm(y, f"{name}.bn2"), act)


def _residual(net: Net, y: str, shortcut: str) -> str:
    return net.activation(net.add(y, shortcut), "relu")


# ----------------------------------------------------------------------------- CIFAR-10 ResNet-20s

def _cifar_resnet20(net: Net, block: Callable[[Net, str, int, int, str], str]) -> str:
    """ResNet-20's body: three stages of three blocks (16, 32, 64 channels; stride 2 entering 2 and 3)."""
    x = net.conv_bn(net.input, 16, 3, "conv1", "bn1")
    for stage, channels in enumerate((16, 32, 64)):
        for i in range(3):
            x = block(net, x, channels, 2 if stage > 0 and i == 0 else 1, f"layer{stage + 1}.{i}")
    return net.avg_pool(x, 8, 1)


def _adder_basic_block(net: Net, x: str, channels: int, stride: int, name: str) -> str:
    y = adder_bn(net, x, channels, 3, f"{name}.conv1", f"{name}.bn1", stride=stride)
    y = adder_bn(net, y, channels, 3, f"{name}.conv2", f"{name}.bn2", act=None)
    if stride != 1 or net.channels(x) != channels:
        x = adder_bn(net, x, channels, 1, f"{name}.downsample.0", f"{name}.downsample.1", stride=stride, act=None)
    return _residual(net, y, x)


def addernet_resnet20(seed: int = 0, num_classes: int = 10,
                      state_dict: Optional[Mapping[str, np.ndarray]] = None) -> Net:
    """AdderNet ResNet-20 on [N, 3, 32, 32]; head: 8x8 average pool, 1x1 conv (multiply), BN."""
    net = Net("AdderNet ResNet-20 (CIFAR-10)", ["N", 3, 32, 32], seed=seed, state_dict=state_dict)
    x = _cifar_resnet20(net, _adder_basic_block)
    x = net.batch_norm(net.conv(x, num_classes, 1, "fc"), "bn2")
    net.output(net.builder.flatten(x))
    net.classification_metadata(CIFAR10_LABELS if num_classes == 10 else None, CIFAR10_PREPROCESS)
    return net


def shift_resnet20(seed: int = 0, num_classes: int = 10, expansion: int = 3,
                   state_dict: Optional[Mapping[str, np.ndarray]] = None) -> Net:
    """ShiftResNet-20 on [N, 3, 32, 32] with CSC modules of expansion ``expansion`` (the paper's epsilon)."""
    net = Net(f"ShiftResNet-20 (CIFAR-10, expansion {expansion})", ["N", 3, 32, 32], seed=seed,
              state_dict=state_dict)

    def block(net: Net, x: str, channels: int, stride: int, name: str) -> str:
        y = csc_module(net, x, channels, expansion, stride, name)
        if stride != 1 or net.channels(x) != channels:
            x = net.conv_bn(x, channels, 1, f"{name}.shortcut.0", f"{name}.shortcut.1", stride=stride, act=None)
        return _residual(net, y, x)

    x = _cifar_resnet20(net, block)
    net.output(net.linear(net.builder.flatten(x), num_classes, "linear"))
    net.classification_metadata(CIFAR10_LABELS if num_classes == 10 else None, CIFAR10_PREPROCESS)
    return net


# ----------------------------------------------------------------------------- ImageNet

# (output channels, CSC modules, stride of the first) per stage
SHIFTNET_STAGES = [(64, 2, 2), (128, 3, 2), (256, 4, 2), (512, 2, 2)]


def shiftnet_imagenet(seed: int = 0, num_classes: int = 1000, expansion: int = 4,
                      state_dict: Optional[Mapping[str, np.ndarray]] = None) -> Net:
    """ShiftNet-style network on [N, 3, 224, 224] (see the module docstring)."""
    net = imagenet_net("ShiftNet-style ImageNet network", seed=seed, state_dict=state_dict)
    x = net.conv_bn(net.input, 32, 3, "stem.conv", "stem.bn", stride=2)
    for stage, (channels, count, stride) in enumerate(SHIFTNET_STAGES):
        for i in range(count):
            name = f"stage{stage + 1}.{i}"
            s = stride if i == 0 else 1
            y = csc_module(net, x, channels, expansion, s, name)
            x = _residual(net, y, x) if s == 1 and net.channels(x) == channels else net.activation(y, "relu")
    net.output(net.classifier(x, num_classes, "fc"))
    net.classification_metadata(preprocess=IMAGENET_PREPROCESS)
    return net


BUILDERS: Dict[str, Callable[..., Net]] = {
    "shift_resnet20": shift_resnet20,
    "addernet_resnet20": addernet_resnet20,
    "shiftnet_imagenet": shiftnet_imagenet,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.shift_adder",
                                     description="Write a shift/adder network with seeded random weights.")
    parser.add_argument("name", choices=sorted(BUILDERS))
    parser.add_argument("--out", help="output .npz (default NAME.npz)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or f"{args.name}.npz"
    BUILDERS[args.name](seed=args.seed).save(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
