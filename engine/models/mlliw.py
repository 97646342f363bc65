"""ML-LIW (Song, Jin, Huang, Hu, ICDM 2018): Inception-v3 with a sigmoid output layer, trained
with instance-wise + label-wise loss.

Architecture as in the public reimplementation used by the study (hinanmu/MLALP ``ml_liw_model``):
the backbone's ``fc`` replaced by Linear(2048, C), input normalised as (x - 0.5) / 0.5, global
average pool and dropout 0.5 before ``fc`` as in torchvision's Inception-v3. The model returns
logits z; the sigmoid is applied by the loss, and the study's confidence is tanh(z/2) = 2 sigma(z) - 1.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.conventions import HALF, Normalize


class MLLIW(nn.Module):
    family = "mlliw"

    def __init__(
        self,
        features: nn.Module,
        feat_dim: int,
        num_labels: int,
        mean: tuple[float, ...] = HALF,
        std: tuple[float, ...] = HALF,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feat_dim, num_labels)

    @property
    def num_labels(self) -> int:
        return self.fc.out_features

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Image feature (B, D): backbone then global average pool."""
        return self.features(self.normalize(x)).mean(dim=(2, 3))

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(feat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def liw_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Instance-wise + label-wise exponential pairwise loss on o = sigmoid(logits).

    Formulation of the public reimplementation (hinanmu/MLALP ``ml_liw_model/train.py``, reused by
    the study's repository), after Song et al. 2018: with Y_i / Ybar_i the positive / negative
    labels of instance i and P_k / N_k the positive / negative instances of label k in the batch,

        L = 1/2 * sum_i  1/(|Y_i||Ybar_i|) sum_{k in Y_i, l in Ybar_i} exp(-(o_ik - o_il))
            +     sum_k  1/(|P_k||N_k|)    sum_{i in P_k, j in N_k}    exp(-(o_ik - o_jk))

    (the code's ``0.5 * instance_wise_loss + label_wise_loss``: the 1/2 weighs the instance term
    only), summed, not averaged, over the batch,
    the first a smooth instance-AUC (ranking) surrogate, the second a label-wise AUC surrogate that
    counters label imbalance. Rows/columns without both kinds are skipped. exp(-(a - b)) =
    exp(-a) exp(b) factorises, so each term is O(B C) instead of O(B C^2).
    """
    o = torch.sigmoid(logits)
    pos = (targets > 0.5).to(o.dtype)
    neg = 1.0 - pos
    e_pos, e_neg = torch.exp(-o) * pos, torch.exp(o) * neg

    def term(dim: int) -> torch.Tensor:
        pairs = pos.sum(dim) * neg.sum(dim)
        s = e_pos.sum(dim) * e_neg.sum(dim)
        return torch.where(pairs > 0, s / pairs.clamp(min=1), torch.zeros_like(s)).sum()

    return 0.5 * term(1) + term(0)
