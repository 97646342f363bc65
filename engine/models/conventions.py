"""The models' conventions, shared by both families: images in [0, 1] normalized inside the model
(Normalize), a label shown where its logit is >= 0 (predict)."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class Normalize(nn.Module):
    """(x - mean) / std inside the model, so that attacks see images in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """The study's f(x) = tanh(logit / 2) = 2 sigmoid(logit) - 1 in [-1, 1], threshold 0."""
    return torch.tanh(logits / 2)


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Shown labels: f_i(x) >= 0, i.e. logit_i >= 0 (Eq. 1)."""
    return logits >= 0
