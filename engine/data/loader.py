"""The data set loader contract: what a loader declares, and the one ``load`` that checks a call
against it before the loader reads anything.

A loader is a :class:`Loader` registered under its data set's name (``register``); each module of
engine.data declares its own at the bottom, e.g. ::

    register(Loader(
        name="coco", read=_read, size=448, train_split="train2014", test_split="val2014",
        splits=("train2014", "val2014", "train", "val"), label_names=LABEL_NAMES,
        sources=("auto", "instances", "mlgcn"), options={"cache": False}, doc=__doc__,
    ))

``read(root, split, size, allow_missing, **options)`` gets every declared option (the caller's
value or the declared default) and ``source`` when it declares more than one annotation format; the
split, the options and the source it gets have been checked against the declaration here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.base import ImageListDataset
from engine.data.split import check_split
from engine.errors import UserError


@dataclass(frozen=True)
class Loader:
    name: str  # the data set's name (``sml --dataset``, a sweep's ``dataset``)
    read: Callable[..., ImageListDataset]
    size: int  # default input size (the study warps every image to 448 x 448)
    train_split: str  # the study's training split (``sml train``)
    test_split: str  # the study's test split: the default everywhere else
    # Every split it knows by name (train and test among them) ...
    splits: tuple[str, ...]
    # ... and where further splits come from, when the data can name more ("" = none: ``splits`` is all).
    more_splits: str = ""
    # The fixed label set in its usual order (a source may order it otherwise: the data set's columns
    # are mapped onto a checkpoint's by name), or None when the labels are read from the data.
    label_names: tuple[str, ...] | None = None
    # The annotation formats it reads (``sml --annotations``); "auto" (first) picks one from the files.
    sources: tuple[str, ...] = ("auto",)
    # The options it takes (a sweep's ``options``), with their defaults. A loader with a
    # ``label_names`` option gets the model's label names for it unless the caller gives some.
    options: dict[str, Any] = field(default_factory=dict)
    doc: str = ""

    def __post_init__(self) -> None:
        missing = [s for s in (self.train_split, self.test_split) if s not in self.splits]
        if missing:
            raise ValueError(f"data set {self.name}: splits {missing} are not among its splits {self.splits}")
        if not self.sources or self.sources[0] != "auto":
            raise ValueError(f"data set {self.name}: sources must start with 'auto', got {self.sources}")
        taken = {"root", "split", "size", "allow_missing", "source", "model_labels"} & set(self.options)
        if taken:
            raise ValueError(f"data set {self.name}: {sorted(taken)} are not options (every loader has them)")

    def load(self, root: str | Path, split: str | None = None, size: int | None = None, allow_missing: bool = False,
             *, model_labels: list[str] | None = None, **options: Any) -> ImageListDataset:
        """Split ``split`` (default: the test split) at ``root``, images ``size`` px (default: the
        declared size); ``options`` as declared, plus ``source`` (one of ``sources``).

        ``allow_missing``: proceed without unusable samples (missing images, unreadable labels), which
        are then counted in the data set's ``.skipped``, instead of raising.
        ``model_labels``: the model's label names, for a loader with a ``label_names`` option (its label
        set is not fixed), so that a label the model does not know is an error naming its file and
        line; an explicit ``label_names`` option wins.
        """
        source = options.pop("source", "auto")
        if source not in self.sources:
            raise UserError(f"annotation source (--annotations) {source!r} is not valid for data set "
                            f"{self.name!r}; valid: {', '.join(self.sources)}")
        unknown = sorted(k for k in options if k not in self.options)
        if unknown:
            raise UserError(f"data set {self.name!r} takes no option {', '.join(map(repr, unknown))}; its options: "
                            f"{', '.join(self.options) or 'none'}")
        split = split or self.test_split
        if not self.more_splits:
            check_split(self.name, split, self.splits)
        kw = {**self.options, **options}
        if model_labels is not None and "label_names" in self.options and kw["label_names"] is None:
            kw["label_names"] = list(model_labels)
        if len(self.sources) > 1:
            kw["source"] = source
        return self.read(Path(root).expanduser(), split, size or self.size, allow_missing, **kw)


LOADERS: dict[str, Loader] = {}
# The order of lists and messages: the demo, the study's data sets as its tables list them, your own CSV;
# any other registered loader after them, by name.
ORDER = ("demo", "voc2007", "voc2012", "coco", "nuswide", "csv")


def register(loader: Loader) -> Loader:
    LOADERS[loader.name] = loader
    return loader


def unregister(name: str) -> None:
    """Remove a loader (tests that register an example loader clean up after themselves)."""
    LOADERS.pop(name, None)


def names() -> list[str]:
    return sorted(LOADERS, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def info(name: str) -> Loader:
    """The declared loader of data set ``name``."""
    if name not in LOADERS:
        raise UserError(f"unknown data set {name!r}; valid: {', '.join(names())}")
    return LOADERS[name]


def load(name: str, *, root: str | Path, split: str | None = None, size: int | None = None,
         allow_missing: bool = False, model_labels: list[str] | None = None, **options: Any) -> ImageListDataset:
    """Split ``split`` (default: the test split) of data set ``name`` stored at ``root``
    (:meth:`Loader.load`)."""
    return info(name).load(root, split, size, allow_missing, model_labels=model_labels, **options)
