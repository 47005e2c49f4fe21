"""Building blocks shared by every zoo architecture.

:class:`Net` wraps :class:`pyconv.GraphBuilder` with the layers CNN papers are
made of (conv, batch norm, conv-BN-activation, linear, pooling, squeeze-and-
excitation) and with where weights come from: seeded random initialisation, or
a trained PyTorch state_dict.  Nodes are named like torchvision's modules
(``layer1.0.conv1``, ``features.3.conv.1.0``), and a weight is looked up in a
state_dict under PyTorch's name for it (``<module>.weight``,
``<module>.running_var``, ...), so importing trained torchvision weights
needs no per-layer mapping table.

Random initialisation: convolutions He (variance 2/fan_in), linear layers
LeCun (1/fan_in), both drawn uniform; biases small; batch norm with realistic
statistics (gamma around 1, beta and running mean around 0, running variance
around 1), so activations stay O(1) through deep random networks.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np

from pyconv.graph.builder import GraphBuilder

# ImageNet networks that end in a global (or adaptive) pool run at any input size their
# strides allow, as in torchvision: they declare symbolic H and W and are built (shapes
# checked, MACs counted) at 224 x 224.
IMAGENET_INPUT = ("N", 3, "H", "W")
IMAGENET_PROBE = {"H": 224, "W": 224}

IMAGENET_PREPROCESS = {
    "resize": 256, "crop": [224, 224], "scale": 1 / 255, "channel_order": "RGB",
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}

# PyTorch parameter name of each batch_norm weight role
_BN_TORCH_NAMES = {"mean": "running_mean", "var": "running_var", "weight": "weight", "bias": "bias"}


def imagenet_net(name: str, seed: int = 0, state_dict: Optional[Mapping[str, np.ndarray]] = None) -> "Net":
    """A :class:`Net` on ``IMAGENET_INPUT``, built at ``IMAGENET_PROBE`` (see there)."""
    return Net(name, IMAGENET_INPUT, seed=seed, state_dict=state_dict, probe=IMAGENET_PROBE)


class Net:
    """A network under construction: graph builder + weight source + metadata.

    ``state_dict`` (PyTorch names -> arrays) supplies trained weights; when it
    is None weights are drawn from ``np.random.default_rng(seed)``.  Tensors are
    the names returned by the layer methods.  ``probe`` sizes symbolic input
    dimensions while building (see :meth:`pyconv.GraphBuilder.input`).
    """

    def __init__(self, name: str, input_shape: Sequence[Union[int, str]], seed: int = 0,
                 state_dict: Optional[Mapping[str, np.ndarray]] = None,
                 probe: Optional[Mapping[str, int]] = None):
        self.name = name
        self.builder = GraphBuilder()
        self.input = self.builder.input("input", list(input_shape), probe=probe)
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.state_dict = state_dict
        self.used: Set[str] = set()
        self.metadata: Dict[str, Any] = {
            "description": name,
            "source": f"pyconv model zoo, random weights (He init, seed {seed})" if state_dict is None else "",
        }

    # ------------------------------------------------------------------ weights
    def param(self, key: str, shape: Tuple[int, ...], init: str) -> np.ndarray:
        """Weight ``key`` (PyTorch name) of ``shape``: from the state_dict, else drawn by ``init``."""
        if self.state_dict is not None:
            if key not in self.state_dict:
                raise KeyError(f"{self.name}: the state_dict has no {key!r}")
            value = np.asarray(self.state_dict[key], dtype=np.float32)
            if value.shape != tuple(shape):
                raise ValueError(f"{self.name}: {key!r} has shape {value.shape}, the architecture needs {shape}")
            self.used.add(key)
            return value
        return self._draw(shape, init)

    def _draw(self, shape: Tuple[int, ...], init: str) -> np.ndarray:
        rng = self.rng
        if init in ("he", "linear"):
            # uniform with the variance of He (2/fan_in, ReLU gain) or LeCun (1/fan_in) init:
            # several times faster to draw than normals, which matters for VGG's 10^8 weights
            fan_in = int(np.prod(shape[1:]))
            bound = np.float32(np.sqrt(3.0 * (2.0 if init == "he" else 1.0) / fan_in))
            weights = rng.random(shape, dtype=np.float32)
            weights *= 2 * bound
            weights -= bound
            return weights
        if init == "bias":
            return rng.uniform(-0.05, 0.05, shape).astype(np.float32)
        if init == "gamma":
            return rng.uniform(0.8, 1.2, shape).astype(np.float32)
        if init == "beta":
            return rng.normal(0.0, 0.05, shape).astype(np.float32)
        if init == "running_mean":
            return rng.normal(0.0, 0.1, shape).astype(np.float32)
        if init == "running_var":
            return rng.uniform(0.7, 1.3, shape).astype(np.float32)
        raise ValueError(f"unknown init {init!r}")

    def unused_weights(self) -> Sequence[str]:
        """State_dict entries the architecture did not take (``num_batches_tracked`` excluded)."""
        if self.state_dict is None:
            return []
        return sorted(k for k in self.state_dict if k not in self.used and not k.endswith("num_batches_tracked"))

    def require_all_weights_used(self) -> None:
        """ValueError naming the state_dict entries the architecture left unused (a converter's
        check that the weights belong to this network)."""
        unused = self.unused_weights()
        if unused:
            raise ValueError(f"the state_dict has weights {self.name} does not use: {list(unused[:5])}")

    # ------------------------------------------------------------------ shapes
    def channels(self, x: str) -> int:
        return self.builder.shape(x)[1]

    def shape(self, x: str) -> Tuple[int, ...]:
        return self.builder.shape(x)

    # ------------------------------------------------------------------ layers
    def conv(self, x: str, out_channels: int, kernel_size: int, name: str, stride: int = 1,
             padding: Optional[int] = None, groups: int = 1, bias: bool = False, dilation: int = 1) -> str:
        """Conv2d; ``padding`` defaults to "same" for odd kernels (``dilation * (k // 2)``)."""
        in_channels = self.channels(x)
        weight = self.param(f"{name}.weight", (out_channels, in_channels // groups, kernel_size, kernel_size), "he")
        b = self.param(f"{name}.bias", (out_channels,), "bias") if bias else None
        if padding is None:
            padding = dilation * (kernel_size // 2)
        return self.builder.conv2d(x, weight=weight, bias=b, stride=stride, padding=padding, dilation=dilation,
                                   groups=groups, name=name)

    def batch_norm(self, x: str, name: str, eps: float = 1e-5) -> str:
        shape = (self.channels(x),)
        inits = {"mean": "running_mean", "var": "running_var", "weight": "gamma", "bias": "beta"}
        weights = {role: self.param(f"{name}.{_BN_TORCH_NAMES[role]}", shape, init) for role, init in inits.items()}
        return self.builder.batch_norm(x, eps=eps, name=name, **weights)

    def activation(self, x: str, kind: Optional[str]) -> str:
        """``kind`` is the name of a registered pointwise op ("relu", "relu6", "sigmoid", ...) or None."""
        return x if kind is None else getattr(self.builder, kind)(x)

    def conv_bn(self, x: str, out_channels: int, kernel_size: int, conv_name: str, bn_name: str,
                stride: int = 1, groups: int = 1, act: Optional[str] = "relu", eps: float = 1e-5,
                padding: Optional[int] = None) -> str:
        """Conv (no bias) + batch norm + optional activation: the unit of every modern CNN."""
        y = self.conv(x, out_channels, kernel_size, conv_name, stride=stride, groups=groups, padding=padding)
        return self.activation(self.batch_norm(y, bn_name, eps=eps), act)

    def conv_act(self, x: str, out_channels: int, kernel_size: int, name: str, stride: int = 1,
                 padding: Optional[int] = None, act: Optional[str] = "relu") -> str:
        """Conv with bias + activation (pre-BatchNorm networks: VGG, SqueezeNet, LeNet)."""
        y = self.conv(x, out_channels, kernel_size, name, stride=stride, padding=padding, bias=True)
        return self.activation(y, act)

    def linear(self, x: str, out_features: int, name: str, bias: bool = True) -> str:
        in_features = self.shape(x)[1]
        weight = self.param(f"{name}.weight", (out_features, in_features), "linear")
        b = self.param(f"{name}.bias", (out_features,), "bias") if bias else None
        return self.builder.linear(x, weight=weight, bias=b, name=name)

    def max_pool(self, x: str, kernel_size: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> str:
        return self.builder.max_pool2d(x, kernel_size=kernel_size, stride=stride, padding=padding,
                                       ceil_mode=ceil_mode)

    def avg_pool(self, x: str, kernel_size: int, stride: int, padding: int = 0) -> str:
        return self.builder.avg_pool2d(x, kernel_size=kernel_size, stride=stride, padding=padding)

    def global_pool_flatten(self, x: str) -> str:
        """Global average pool to [N, C] (torchvision's ``avgpool`` + ``flatten``)."""
        return self.builder.flatten(self.builder.global_avg_pool2d(x))

    def classifier(self, x: str, num_classes: int, name: str = "fc") -> str:
        """Global average pool + linear layer, the head of most ImageNet networks."""
        return self.linear(self.global_pool_flatten(x), num_classes, name)

    def add(self, a: str, b: str) -> str:
        return self.builder.add(a, b)

    def concat(self, *xs: str) -> str:
        return self.builder.concat(*xs, axis=1)

    def squeeze_excitation(self, x: str, name: str, reduction: int = 16) -> str:
        """Squeeze-and-excitation (Hu et al. 2018): x * sigmoid(W2 relu(W1 avgpool(x))).

        The two fully connected layers are 1x1 convs on the pooled [N, C, 1, 1]
        tensor (no flatten/reshape needed); the product broadcasts over H, W.
        """
        channels = self.channels(x)
        squeezed = self.builder.global_avg_pool2d(x)
        s = self.conv_act(squeezed, max(channels // reduction, 1), 1, f"{name}.fc1", act="relu")
        s = self.conv_act(s, channels, 1, f"{name}.fc2", act="sigmoid")
        return self.builder.mul(x, s)

    # ------------------------------------------------------------------ results
    def output(self, x: str, name: str = "logits") -> str:
        return self.builder.output(x, name)

    def build(self):
        """The validated :class:`pyconv.graph.format.Graph`."""
        return self.builder.build(self.metadata)

    def save(self, path: Union[str, os.PathLike]):
        """Write the model file; returns the graph."""
        return self.builder.save(path, metadata=self.metadata)

    def classification_metadata(self, labels: Optional[Sequence[str]] = None,
                                preprocess: Optional[Mapping[str, Any]] = None) -> None:
        """Mark the model as a classifier with the given labels and preprocessing."""
        self.metadata["task"] = "classification"
        if labels is not None:
            self.metadata["labels"] = list(labels)
        if preprocess is not None:
            self.metadata["preprocess"] = dict(preprocess)
