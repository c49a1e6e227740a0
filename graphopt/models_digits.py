"""Small models trained on scikit-learn's digits (8x8 images, 10 classes, shipped with sklearn):
the real-weights fixtures of the pruning and quantization tests and of benchmarks/bench_quant.py.

Everything is seeded, so a model trains to the same weights on every run (a few seconds on one
thread). Needs scikit-learn (a test extra).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

TRAIN = 1400  # of 1797; the other 397 images are the test set (1 point = 4 images)


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: pixels scaled to [0, 1], a fixed permutation."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:TRAIN]], y[perm[:TRAIN]], x[perm[TRAIN:]], y[perm[TRAIN:]]


def batches(x, y, seed: int, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` mini-batches of ``size`` in a seeded random order."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i: i + size]], y[order[i: i + size]]) for i in range(0, len(x), size)]


def cnn() -> nn.Module:
    """Two conv + BN + ReLU blocks, max-pool, two linears (input: flat 64 pixels)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU(), nn.Linear(64, 10))


def vgg() -> nn.Module:
    """VGG-style: three blocks of two 3x3 conv + BN + ReLU layers (32, 64, 128 channels), each
    block ending in a 2x2 max-pool (8x8 -> 1x1), then two linears (input: flat 64 pixels)."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 8, 8))]
    channels = 1
    for width in (32, 64, 128):
        for _ in range(2):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def train(model: nn.Module, x, y, epochs: int, seed: int = 0) -> nn.Module:
    """Adam on cross-entropy, seeded (``seed`` picks the batch orders); returns the model in
    eval mode."""
    torch.manual_seed(seed)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(epochs):
        for xb, yb in batches(x, y, seed=seed * 1000 + epoch):
            optim.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optim.step()
    return model.eval()


def trained_cnn(epochs: int = 6) -> nn.Module:
    """The CNN trained on the training split (>95% test accuracy)."""
    x_train, y_train, _, _ = load_digits_split()
    torch.manual_seed(0)
    return train(cnn(), x_train, y_train, epochs)
