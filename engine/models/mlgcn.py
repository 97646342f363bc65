"""ML-GCN (Chen, Wei, Wang, Guo, CVPR 2019), as in its public repository (Megvii-Nanjing/ML-GCN).

backbone -> global max pool -> image feature (B, D). Label embeddings (C, E) go through two graph
convolutions over the re-weighted label correlation matrix, E -> hidden (LeakyReLU 0.2) -> D, giving
one classifier per label; logits = feature @ classifiers^T. There is no sigmoid in the model.

Parameter names follow the repository (``features.*``, ``gc1.weight``, ``gc2.weight``, ``A``) so
its released checkpoints load unchanged. Two departures, both harmless for those checkpoints:
the repository passes the embedding to ``forward``, ours holds it as a buffer ``inp``; and the
repository's fixed ``MaxPool2d(14)`` (a global max pool only at 448 px) is a global max pool here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from engine.models.conventions import IMAGENET_MEAN, IMAGENET_STD, Normalize


def correlation_matrix(labels: np.ndarray, t: float = 0.4, p: float = 0.25) -> np.ndarray:
    """The re-weighted correlation matrix A from training labels (N, C) in {0,1}.

    Follows the repository's ``gen_A``: co-occurrence counts with a zero diagonal divided by the
    per-label counts (row i is P(j | i)), binarised at ``t``, columns re-weighted so that the
    neighbours of a node share weight ``p``, then the identity added (the repository adds 1 on the
    diagonal, not the paper's 1 - p). Labels with no positive sample get no edges.
    """
    y = np.asarray(labels, dtype=np.float64)
    counts = y.T @ y
    nums = np.diag(counts).copy()
    np.fill_diagonal(counts, 0)
    cond = counts / np.maximum(nums, 1)[:, None]
    a = (cond >= t).astype(np.float64)
    a = a * p / (a.sum(0, keepdims=True) + 1e-6)
    return (a + np.eye(len(nums))).astype(np.float32)


def propagation_matrix(a: torch.Tensor) -> torch.Tensor:
    """The repository's ``gen_adj``: (A D)^T D with D = diag(rowsum(A)^-1/2); note the transpose."""
    d = torch.diag(a.sum(1).pow(-0.5))
    return (a @ d).t() @ d


class GraphConvolution(nn.Module):
    """adj @ (x @ W), no bias, W uniform in +-1/sqrt(out) (the repository's init)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        bound = 1.0 / math.sqrt(out_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return adj @ (x @ self.weight)


class MLGCN(nn.Module):
    family = "mlgcn"

    def __init__(
        self,
        features: nn.Module,
        feat_dim: int,
        embedding: torch.Tensor,
        correlation: torch.Tensor,
        hidden: int = 1024,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        num_labels, emb_dim = embedding.shape
        if correlation.shape != (num_labels, num_labels):
            raise ValueError(f"correlation {tuple(correlation.shape)} does not match {num_labels} labels")
        self.normalize = Normalize(mean, std)
        self.features = features
        self.gc1 = GraphConvolution(emb_dim, hidden)
        self.gc2 = GraphConvolution(hidden, feat_dim)
        self.relu = nn.LeakyReLU(0.2)
        self.register_buffer("A", correlation.float().clone())
        self.register_buffer("inp", embedding.float().clone())
        self._frozen: torch.Tensor | None = None

    @property
    def num_labels(self) -> int:
        return self.A.shape[0]

    def classifiers(self) -> torch.Tensor:
        """(C, D) label classifiers from the GCN."""
        adj = propagation_matrix(self.A)
        return self.gc2(self.relu(self.gc1(self.inp, adj)), adj)

    def freeze(self) -> None:
        """Precompute the classifiers: they do not depend on the image, so attacks skip the GCN."""
        with torch.no_grad():
            self._frozen = self.classifiers().detach()

    def train(self, mode: bool = True) -> MLGCN:
        self._frozen = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # .to()/.cuda() move the cached classifiers too
        self._frozen = None
        return super()._apply(fn, recurse)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Image feature (B, D): backbone then global max pool."""
        return torch.amax(self.features(self.normalize(x)), dim=(2, 3))

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        w = self._frozen if self._frozen is not None else self.classifiers()
        return feat @ w.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))
