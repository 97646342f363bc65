"""Models: ``build`` from a config, ``load`` from a checkpoint (eval mode, returns logits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.config import ModelConfig
from engine.errors import UserError
from engine.models import backbones, checkpoints
from engine.models.conventions import HALF, IMAGENET_MEAN, IMAGENET_STD, confidence, predict
from engine.models.feed import fed
from engine.models.mlgcn import MLGCN, correlation_matrix
from engine.models.mlliw import MLLIW

FAMILIES = ("mlgcn", "mlliw")


def build(
    cfg: ModelConfig,
    num_labels: int,
    *,
    correlation: np.ndarray | None = None,
    embedding: np.ndarray | None = None,
    load_backbone_weights: bool = True,
) -> nn.Module:
    """A fresh model. ML-GCN needs the correlation matrix; its embedding defaults to one-hot."""
    if cfg.input_size < backbones.MIN_INPUT[cfg.backbone]:
        raise UserError(
            f"input_size {cfg.input_size} is too small for {cfg.backbone} "
            f"(needs >= {backbones.MIN_INPUT[cfg.backbone]} px)"
        )
    weights = cfg.backbone_weights if load_backbone_weights else None
    features, feat_dim = backbones.build(cfg.backbone, weights)
    norm = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": (HALF, HALF)}.get(cfg.normalization)
    if cfg.family == "mlliw":
        mean, std = norm or (HALF, HALF)
        return MLLIW(features, feat_dim, num_labels, mean=mean, std=std)
    mean, std = norm or (IMAGENET_MEAN, IMAGENET_STD)
    if correlation is None:
        correlation = np.eye(num_labels, dtype=np.float32)
    if embedding is None:
        # Fallback when no word vectors are given: one-hot label embeddings (the ML-GCN paper
        # reports this variant too; it keeps the graph, drops the semantic prior).
        embedding = np.eye(num_labels, dtype=np.float32)
    return MLGCN(
        features,
        feat_dim,
        torch.as_tensor(embedding),
        torch.as_tensor(correlation),
        hidden=cfg.gcn_hidden,
        mean=mean,
        std=std,
    )


def from_checkpoint(ck: dict[str, Any]) -> nn.Module:
    cfg = ModelConfig.from_dict(ck["model"])
    n = len(ck["label_names"])
    sd = ck["state_dict"]
    emb = sd["inp"].numpy() if "inp" in sd else None
    model = build(cfg, n, embedding=emb, load_backbone_weights=False)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise UserError(f"checkpoint does not fit the {cfg.family}/{cfg.backbone} architecture it names "
                        f"(made by another version of the engine?): {str(e).splitlines()[0]} ...") from None
    model.label_names = list(ck["label_names"])
    model.input_size = cfg.input_size
    model.eval()
    return model


def load(path: str | Path, embedding: str | Path | None = None, label_names: list[str] | None = None) -> nn.Module:
    """The model stored in a checkpoint, in eval mode, returning logits; ``.label_names`` set.

    ``path`` may be one of our checkpoints or an ML-GCN release checkpoint (``embedding`` and
    ``label_names`` are for the latter: see :func:`engine.models.checkpoints.read`).
    """
    model = from_checkpoint(checkpoints.read(path, embedding=embedding, label_names=label_names))
    model.checkpoint_path = str(path)
    return model


def prepare_for_attack(model: nn.Module) -> nn.Module:
    """Eval mode, parameters frozen; precomputes what does not depend on the input."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if hasattr(model, "freeze"):
        model.freeze()
    return model


__all__ = [
    "FAMILIES",
    "HALF",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MLGCN",
    "MLLIW",
    "build",
    "confidence",
    "correlation_matrix",
    "fed",
    "from_checkpoint",
    "load",
    "predict",
    "prepare_for_attack",
]
