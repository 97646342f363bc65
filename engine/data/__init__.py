"""Data sets: ``load(name, root=..., split=...)`` returns an :class:`ImageListDataset`."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.base import ImageListDataset, SkipReport, stack
from engine.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    module: str
    size: int  # default input size: the study warps every image to 448 x 448
    train_split: str
    test_split: str
    # Keyword arguments always passed to the module's ``load`` (one module can serve several data sets).
    options: tuple[tuple[str, Any], ...] = ()


# The study's splits (engine.data.split): VOC2007 trainval/test, COCO train2014/val2014; VOC2012 and
# NUS-WIDE have no labelled test set, so a seeded 20% of train + val is the test set ("study-test").
DATASETS: dict[str, DatasetInfo] = {
    "demo": DatasetInfo("engine.data.demo", 32, "train", "test"),
    "voc2007": DatasetInfo("engine.data.voc", 448, "trainval", "test", options=(("year", 2007),)),
    "voc2012": DatasetInfo("engine.data.voc", 448, "study-train", "study-test", options=(("year", 2012),)),
    "coco": DatasetInfo("engine.data.coco", 448, "train2014", "val2014"),
    "nuswide": DatasetInfo("engine.data.nuswide", 448, "study-train", "study-test"),
    # Your own: a folder of images and a CSV of their labels (engine.data.generic); 224 px unless the
    # model says otherwise.
    "csv": DatasetInfo("engine.data.generic", 224, "train", "test"),
}


def names() -> list[str]:
    return list(DATASETS)


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def load(name: str, *, root: str | Path, split: str | None = None, size: int | None = None,
         allow_missing: bool = False, model_labels: list[str] | None = None, **kw) -> ImageListDataset:
    """Load split ``split`` (default: the test split) of data set ``name`` stored at ``root``.

    ``allow_missing``: proceed without unusable samples (missing images, unreadable labels), which are
    then counted in the data set's ``.skipped``, instead of raising. Loaders that cannot skip anything
    (the demo) do not take it.

    ``source``: which annotation files to read (``sml --annotations``); each loader's ``SOURCES`` lists
    what it reads (VOC: auto, csv, txt, xml; COCO: auto, instances, mlgcn); loaders of a single format
    accept only ``"auto"``. Checked here, so that every data set answers a wrong value the same way.

    ``model_labels``: the model's label names, for loaders whose label set is not fixed (they take a
    ``label_names`` option: the CSV data set), so that a label the model does not know is an error
    naming its file and line; an explicit ``label_names`` option wins. Others ignore it.
    """
    meta = info(name)
    module = importlib.import_module(meta.module)
    kw = {**dict(meta.options), **kw}
    params = inspect.signature(module.load).parameters
    if "source" in kw:
        valid = getattr(module, "SOURCES", ("auto",))
        if kw["source"] not in valid:
            raise UserError(f"annotation source (--annotations) {kw['source']!r} is not valid for data set "
                            f"{name!r}; valid: {', '.join(valid)}")
        if "source" not in params:
            del kw["source"]
    unknown = sorted(k for k in kw if k not in params)
    if unknown:
        valid = [k for k in params if k not in ("root", "split", "size", "allow_missing", "source")]
        raise UserError(f"data set {name!r} takes no option {', '.join(map(repr, unknown))}; its options: "
                        f"{', '.join(valid) or 'none'}")
    if model_labels is not None and "label_names" in params and kw.get("label_names") is None:
        kw["label_names"] = list(model_labels)
    if "allow_missing" in params:
        kw["allow_missing"] = allow_missing
    return module.load(Path(root).expanduser(), split=split or meta.test_split, size=size or meta.size, **kw)


__all__ = ["DATASETS", "DatasetInfo", "ImageListDataset", "SkipReport", "info", "load", "names", "stack"]
