"""The AdderNet paper's trained ResNet-20 for CIFAR-10 as a pyconv model.

The weights (``resnet20_addernet_cifar10.pth``, 91.8 % top-1 reported) were
published with the paper's reference code (huawei-noah/AdderNet, BSD-3-Clause)
as a legacy (non-zip) PyTorch pickle of a ``DataParallel`` state_dict; they are
read without torch by :mod:`pyconv.io.pth`, the ``module.`` prefix dropped, and
the network built by :func:`models.shift_adder.addernet_resnet20` with the
CIFAR-10 class names and test normalisation embedded.

    python -m models.addernet_cifar10 --out addernet_resnet20_cifar10.npz
    pyconv run addernet_resnet20_cifar10.npz photo.jpg
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from models.layers import Net
from models.shift_adder import addernet_resnet20
from pyconv.io.pth import load_state_dict

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PTH = ROOT.parent / "shared" / "data" / "addernet" / "resnet20_addernet_cifar10.pth"
SHA256 = "fe3ad7c15573d34cddd9b3ec2eed12d9c2c818e59cd7d0797a954d6f76ea375b"


def strip_data_parallel(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Names without the ``module.`` prefix that ``torch.nn.DataParallel`` adds."""
    return {key[len("module."):] if key.startswith("module.") else key: value for key, value in state_dict.items()}


def build(state_dict: Mapping[str, np.ndarray]) -> Net:
    """AdderNet ResNet-20 filled with the reference state_dict (every weight must be used)."""
    net = addernet_resnet20(state_dict=strip_data_parallel(state_dict))
    net.require_all_weights_used()
    net.metadata.update({
        "description": "AdderNet ResNet-20 (Chen et al., CVPR 2020) trained on CIFAR-10 "
                       "(91.8 % top-1 reported); adder layers use no multiplications",
        "source": "resnet20_addernet_cifar10.pth from the AdderNet reference code (huawei-noah/AdderNet, "
                  "BSD-3-Clause), converted without torch by pyconv.io.pth",
    })
    return net


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.addernet_cifar10",
                                     description="Write the trained AdderNet ResNet-20 (CIFAR-10) as a pyconv model.")
    parser.add_argument("--pth", default=str(DEFAULT_PTH), help=f"the .pth file (default {DEFAULT_PTH})")
    parser.add_argument("--out", default="addernet_resnet20_cifar10.npz", help="output .npz")
    args = parser.parse_args(argv)
    if not Path(args.pth).is_file():
        print(f"error: {args.pth} not found (sha256 {SHA256})", file=sys.stderr)
        return 1
    build(load_state_dict(args.pth)).save(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
