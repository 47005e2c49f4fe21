"""``python -m models NAME --out model.npz [--seed S]``: build a zoo model with seeded random weights.

``python -m models --list`` lists the names.  Trained networks have their own
command (``python -m models.mobilenet_v2_torchvision``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from models.zoo import ZOO


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=sorted(ZOO), metavar="NAME", help="architecture")
    parser.add_argument("--out", help="output .npz path (default NAME.npz)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument("--list", action="store_true", help="list the architectures and exit")
    args = parser.parse_args(argv)
    if args.list or args.name is None:
        print("\n".join(sorted(ZOO)))
        return 0
    net = ZOO[args.name](seed=args.seed)
    out = args.out or f"{args.name}.npz"
    net.save(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
