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
                path: str | Path, *, allow_missing: bool = False, **load_kw) -> ImageListDataset:
    """The split to score a checkpoint on, its labels mapped onto the checkpoint's by name."""
    name = dataset or (ck.get("dataset") or {}).get("name")
    root = root or (ck.get("dataset") or {}).get("root")
    if name is None or root is None:
        raise UserError(f"{path}: this checkpoint records no training data set (e.g. an ML-GCN release "
                        f"checkpoint): pass --dataset and --root")
    ds = datasets.load(name, root=root, split=split, size=ck["model"]["input_size"], allow_missing=allow_missing,
                       **load_kw)
    if len(ds.label_names) != len(ck["label_names"]):
        raise UserError(
            f"{path}: checkpoint has {len(ck['label_names'])} labels but data set {name!r} at {root} has "
            f"{len(ds.label_names)}"
        )
    return ds.with_label_order(ck["label_names"])


def evaluate(checkpoint: str | Path, *, dataset: str | None = None, root: str | Path | None = None,
             split: str | None = None, embedding: str | Path | None = None, label_names: list[str] | None = None,
             trust_pickle: bool = False, allow_missing: bool = False, **load_kw) -> dict[str, Any]:
    ck = checkpoints.read(checkpoint, embedding, label_names, trust_pickle=trust_pickle)
    ds = dataset_for(ck, dataset, root, split, checkpoint, allow_missing=allow_missing, **load_kw)
    model = from_checkpoint(ck)
    logits, y = logits_over(model, ds)
    out = table1(logits, y)
    out.update({"model": ck["model"]["family"], "backbone": ck["model"]["backbone"], "dataset": ds.name,
                "split": ds.split, "checkpoint": str(checkpoint)})
    if ds.skipped.total:
        out["skipped"] = {"total": ds.skipped.total, "reasons": ds.skipped.reasons}
    return out
