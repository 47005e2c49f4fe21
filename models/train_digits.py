"""Train the tiny CNN shipped as ``models/trained/digits_cnn.npz`` on scikit-learn's 8x8 digits.

    python -m models.train_digits [--out models/trained/digits_cnn.npz] [--epochs 40]

Plain NumPy (forward and backward by hand, Adam), no deep-learning framework;
needs scikit-learn for the dataset.  Architecture (3,818 parameters):
conv 3x3 1->8 + ReLU, conv 3x3 8->16 + ReLU, 2x2 max pool, linear 256->10.
Input: [N, 1, 8, 8] pixel intensities scaled to 0..1 (the dataset's 0..16
divided by 16), ink bright on a dark background.  The held-out split is
:func:`load_split` (25 %, stratified, fixed seed); the test suite checks the
shipped model's accuracy on it through ``pyconv.load``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from models.layers import Net

DEFAULT_OUT = Path(__file__).resolve().parent / "trained" / "digits_cnn.npz"
SPLIT_SEED = 0


def load_split() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); x float32 [N, 1, 8, 8] in 0..1."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, stratify=digits.target,
                                                        random_state=SPLIT_SEED)
    return x_train, y_train, x_test, y_test


def digits_cnn(state_dict: Optional[Dict[str, np.ndarray]] = None, seed: int = 0) -> Net:
    """The architecture, as a zoo builder (random weights, or trained ones by PyTorch-style name)."""
    net = Net("tiny CNN for scikit-learn's 8x8 digits", ["N", 1, 8, 8], seed=seed, state_dict=state_dict)
    x = net.conv_act(net.input, 8, 3, "conv1")
    x = net.conv_act(x, 16, 3, "conv2")
    x = net.builder.flatten(net.max_pool(x, 2, 2))
    net.output(net.linear(x, 10, "fc"))
    net.classification_metadata([str(d) for d in range(10)],
                                {"grayscale": True, "resize": [8, 8], "scale": 1 / 255})
    return net


# ---------------------------------------------------------------- NumPy training (3x3 convs, padding 1)

def _patches(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, H, W, C*9] 3x3 neighbourhoods (zero padding 1)."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # N, C, H, W, 3, 3
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n, h, w, c * 9)


def _patches_backward(grad: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Adjoint of :func:`_patches`: scatter-add [N, H, W, C*9] back to [N, C, H, W]."""
    n, c, h, w = shape
    grad = grad.reshape(n, h, w, c, 3, 3)
    padded = np.zeros((n, c, h + 2, w + 2), grad.dtype)
    for i in range(3):
        for j in range(3):
            padded[:, :, i:i + h, j:j + w] += grad[..., i, j].transpose(0, 3, 1, 2)
    return padded[:, :, 1:-1, 1:-1]


def _forward(params: Dict[str, np.ndarray], x: np.ndarray):
    p1 = _patches(x)
    a1 = np.maximum(p1 @ params["conv1.weight"].reshape(8, -1).T + params["conv1.bias"], 0)  # N, 8, 8, 8 (NHWC)
    a1_nchw = a1.transpose(0, 3, 1, 2)
    p2 = _patches(a1_nchw)
    a2 = np.maximum(p2 @ params["conv2.weight"].reshape(16, -1).T + params["conv2.bias"], 0)  # N, 8, 8, 16
    n = x.shape[0]
    blocks = a2.reshape(n, 4, 2, 4, 2, 16)
    pooled = blocks.max(axis=(2, 4))  # N, 4, 4, 16
    flat = pooled.transpose(0, 3, 1, 2).reshape(n, -1)  # NCHW flatten order, as pyconv's flatten
    logits = flat @ params["fc.weight"].T + params["fc.bias"]
    return logits, (p1, a1, a1_nchw, p2, a2, blocks, pooled, flat)


def _loss_and_grads(params, x, y):
    logits, (p1, a1, a1_nchw, p2, a2, blocks, pooled, flat) = _forward(params, x)
    n = x.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(n), y] + 1e-12).mean()
    d_logits = probs
    d_logits[np.arange(n), y] -= 1
    d_logits /= n
    grads = {"fc.weight": d_logits.T @ flat, "fc.bias": d_logits.sum(0)}
    d_pooled = (d_logits @ params["fc.weight"]).reshape(n, 16, 4, 4).transpose(0, 2, 3, 1)
    mask = blocks == pooled[:, :, None, :, None, :]
    d_a2 = (mask * d_pooled[:, :, None, :, None, :]).reshape(a2.shape) * (a2 > 0)
    grads["conv2.weight"] = (d_a2.reshape(-1, 16).T @ p2.reshape(-1, 72)).reshape(16, 8, 3, 3)
    grads["conv2.bias"] = d_a2.sum(axis=(0, 1, 2))
    d_a1 = _patches_backward(d_a2 @ params["conv2.weight"].reshape(16, -1), a1_nchw.shape)
    d_a1 = d_a1.transpose(0, 2, 3, 1) * (a1 > 0)
    grads["conv1.weight"] = (d_a1.reshape(-1, 8).T @ p1.reshape(-1, 9)).reshape(8, 1, 3, 3)
    grads["conv1.bias"] = d_a1.sum(axis=(0, 1, 2))
    return loss, grads


def train(x: np.ndarray, y: np.ndarray, epochs: int = 40, batch: int = 64, lr: float = 3e-3,
          seed: int = 0) -> Dict[str, np.ndarray]:
    """Adam on softmax cross-entropy; returns the trained weights by PyTorch-style name."""
    rng = np.random.default_rng(seed)
    graph = digits_cnn(seed=seed).build()  # He-initialised starting point, from the zoo's own init
    params = {f"{node.name}.{role}": graph.weights[key].astype(np.float64)
              for node in graph.nodes for role, key in node.weights.items()}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    beta1, beta2, step = 0.9, 0.999, 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            _, grads = _loss_and_grads(params, x[idx].astype(np.float64), y[idx])
            step += 1
            for key, g in grads.items():
                m, v = moments[key]
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                params[key] -= lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + 1e-8)
    return {k: v.astype(np.float32) for k, v in params.items()}


def accuracy(params: Dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    logits, _ = _forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64))
    return float((logits.argmax(1) == y).mean())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train_digits", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output .npz (default {DEFAULT_OUT})")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load_split()
    params = train(x_train, y_train, epochs=args.epochs, seed=args.seed)
    held_out = accuracy(params, x_test, y_test)
    net = digits_cnn(state_dict=params)
    net.metadata["source"] = (f"models/train_digits.py, {args.epochs} epochs of Adam in NumPy, seed {args.seed}; "
                              f"held-out accuracy {held_out:.4f} on {len(y_test)} images")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    net.save(args.out)
    print(f"train accuracy {accuracy(params, x_train, y_train):.4f}, held-out {held_out:.4f}; wrote {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
