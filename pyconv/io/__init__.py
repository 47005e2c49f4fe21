"""Reading foreign files: PyTorch state_dicts (:mod:`pyconv.io.pth`) and images (:mod:`pyconv.io.images`)."""
from pyconv.io.pth import load_state_dict

__all__ = ["load_state_dict", "load_image"]


def __getattr__(name: str):
    if name == "load_image":  # Pillow is imported only when images are needed
        from pyconv.io.images import load_image

        return load_image
    raise AttributeError(f"module 'pyconv.io' has no attribute {name!r}")
