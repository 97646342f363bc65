"""Losses L(y*, f(x)) that the attacks minimise, one value per sample (summed over labels).

``bce`` is the study's released code's loss for all AdverTorch-based attacks: binary cross-entropy
on sigmoid probabilities clamped to [clamp, 1 - clamp] (clamp = 1e-6 there), targets y* in {0,1}.
The clamp zeroes the gradient of any label whose probability is below 1e-6 (or above 1 - 1e-6):
such labels cannot be moved by a gradient attack. ``prob_clamp = 0`` computes the same loss from
the logits without a clamp (numerically stable, every label keeps a gradient).

``hinge`` is ML-CW's term, sum_k max(0, -y*_k (sigmoid(z_k) - 1/2)) with y* in {-1,1}, i.e.
(1/2) sum_k max(0, -y*_k f_k) on the study's f = tanh(z/2) (Eq. 10, no margin).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.errors import UserError

LOSSES = ("bce", "hinge")


def bce(logits: torch.Tensor, y_star: torch.Tensor, prob_clamp: float = 1e-6) -> torch.Tensor:
    if prob_clamp > 0:
        p = torch.sigmoid(logits).clamp(prob_clamp, 1 - prob_clamp)
        per = -(y_star * torch.log(p) + (1 - y_star) * torch.log(1 - p))
    else:
        per = F.binary_cross_entropy_with_logits(logits, y_star, reduction="none")
    return per.sum(1)


def hinge(logits: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    sign = 2 * y_star - 1
    return torch.clamp(-sign * (torch.sigmoid(logits) - 0.5), min=0).sum(1)


def get(name: str, prob_clamp: float = 1e-6):
    """loss(logits [B,l], y_star [B,l] in {0,1}) -> [B]."""
    if name == "bce":
        return lambda z, y: bce(z, y, prob_clamp)
    if name == "hinge":
        return hinge
    raise UserError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
