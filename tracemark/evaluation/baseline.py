"""A DIAGNOSIS-style baseline detector (Wang et al., ICLR 2024), for side-by-side comparisons.

DIAGNOSIS coats protected images with a subtle warp, trains a binary classifier on coated vs
clean images, and flags a model when at least ``threshold`` (0.75) of its generations are
classified as coated. It has no p-value: the threshold is a heuristic. We keep exactly that
decision rule, with a small CNN (the paper uses a ResNet) so it trains in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.75


def _tensor(images: Sequence[np.ndarray], size: int):
    import torch
    import torch.nn.functional as F

    x = torch.stack([torch.as_tensor(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) for im in images])
    x = x / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _net(channels: int = 32):
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * channels, 1),
    )


@dataclass
class Flag:
    fraction_coated: float
    flagged: bool
    threshold: float
    n_images: int


class DiagnosisDetector:
    """Binary coated-vs-clean classifier with DIAGNOSIS's fraction-over-threshold decision."""

    def __init__(self, size: int = 32, channels: int = 32, seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)
        self.size = size
        self.model = _net(channels)
        self.seed = seed

    def fit(self, clean: Sequence[np.ndarray], coated: Sequence[np.ndarray], epochs: int = 20,
            batch_size: int = 64, lr: float = 1e-3) -> dict:
        """Train on clean (label 0) vs coated (label 1) images; returns the last training accuracy."""
        import torch

        x = torch.cat([_tensor(clean, self.size), _tensor(coated, self.size)])
        y = torch.cat([torch.zeros(len(clean)), torch.ones(len(coated))])
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        self.model.train()
        acc = 0.0
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            correct = 0
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                xb = x[idx]
                if torch.rand(1, generator=g).item() < 0.5:  # flips do not change "coated or not"
                    xb = xb.flip(-1)
                logits = self.model(xb).squeeze(1)
                loss = loss_fn(logits, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                correct += int(((logits > 0).float() == y[idx]).sum())
            acc = correct / len(x)
        return {"train_accuracy": acc}

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        self.model.eval()
        with torch.no_grad():
            return torch.sigmoid(self.model(_tensor(images, self.size)).squeeze(1)).numpy()

    def flag(self, images: Sequence[np.ndarray], threshold: float = DEFAULT_THRESHOLD) -> Flag:
        frac = float((self.predict_proba(images) > 0.5).mean())
        return Flag(frac, frac >= threshold, threshold, len(images))
