"""Data sets: ``load(name, root=..., split=...)`` returns an :class:`ImageListDataset`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from engine.data.base import ImageListDataset, SkipReport, stack
from engine.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    module: str
    size: int  # default input size: the study warps every image to 448 x 448
    train_split: str
    test_split: str


DATASETS: dict[str, DatasetInfo] = {
    "demo": DatasetInfo("engine.data.demo", 32, "train", "test"),
}


def names() -> list[str]:
    return list(DATASETS)


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def load(name: str, *, root: str | Path, split: str | None = None, size: int | None = None, **kw) -> ImageListDataset:
    """Load split ``split`` (default: the test split) of data set ``name`` stored at ``root``."""
    meta = info(name)
    module = importlib.import_module(meta.module)
    return module.load(Path(root).expanduser(), split=split or meta.test_split, size=size or meta.size, **kw)


__all__ = ["DATASETS", "DatasetInfo", "ImageListDataset", "SkipReport", "info", "load", "names", "stack"]
