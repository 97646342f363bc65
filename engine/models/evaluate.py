"""Table 1 for a checkpoint: logits over a split, then the five metrics (+ mAP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import data as datasets
from engine.data.base import ImageListDataset
from engine.models import sources
from engine.models.metrics import table1


@torch.no_grad()
def logits_over(model: nn.Module, ds: ImageListDataset, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, ys = [], []
    for s in range(0, len(ds), batch_size):
        xb, yb = datasets.stack(ds, range(s, min(s + batch_size, len(ds))))
        outs.append(model(xb))
        ys.append(yb)
    return torch.cat(outs), torch.cat(ys)


# The split to score one of our checkpoints on (engine.models.sources, with your own models).
dataset_for = sources.checkpoint_dataset


def evaluate(checkpoint: str | Path | None, *, dataset: str | None = None, root: str | Path | None = None,
             split: str | None = None, embedding: str | Path | None = None, label_names: list[str] | None = None,
             trust_pickle: bool = False, allow_missing: bool = False, own_model: dict | None = None,
             **load_kw) -> dict[str, Any]:
    """Table 1 of a checkpoint, or of your own model (``own_model``: see engine.models.sources)."""
    m = sources.load(checkpoint, own_model, embedding=embedding, label_names=label_names, trust_pickle=trust_pickle)
    ds = m.dataset_for(dataset, root, split, allow_missing=allow_missing, **load_kw)
    logits, y = logits_over(m.model, ds)
    m.check_outputs(logits)
    out = table1(logits, y)
    out.update({"model": m.family, "backbone": m.backbone, "dataset": ds.name, "split": ds.split,
                "checkpoint": m.what})
    if ds.skipped.total:
        out["skipped"] = {"total": ds.skipped.total, "reasons": ds.skipped.reasons}
    return out
