"""Table 1 for a checkpoint: logits over a split, then the five metrics (+ mAP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import data as datasets
from engine.data.base import ImageListDataset
from engine.errors import UserError
from engine.models import checkpoints, from_checkpoint
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


def dataset_for(ck: dict[str, Any], dataset: str | None, root: str | Path | None, split: str | None,
                path: str | Path) -> ImageListDataset:
    """The split to score a checkpoint on, its labels mapped onto the checkpoint's by name."""
    name = dataset or ck["dataset"]["name"]
    root = root or ck["dataset"]["root"]
    ds = datasets.load(name, root=root, split=split, size=ck["model"]["input_size"])
    if len(ds.label_names) != len(ck["label_names"]):
        raise UserError(
            f"{path}: checkpoint has {len(ck['label_names'])} labels but data set {name!r} at {root} has "
            f"{len(ds.label_names)}"
        )
    return ds.with_label_order(ck["label_names"])


def evaluate(checkpoint: str | Path, *, dataset: str | None = None, root: str | Path | None = None,
             split: str | None = None) -> dict[str, Any]:
    ck = checkpoints.read(checkpoint)
    ds = dataset_for(ck, dataset, root, split, checkpoint)
    model = from_checkpoint(ck)
    logits, y = logits_over(model, ds)
    out = table1(logits, y)
    out.update({"model": ck["model"]["family"], "backbone": ck["model"]["backbone"], "dataset": ds.name,
                "split": ds.split, "checkpoint": str(checkpoint)})
    return out
