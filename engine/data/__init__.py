"""Data sets: ``load(name, root=..., split=...)`` returns an :class:`ImageListDataset`.

Each loader declares itself (engine.data.loader.Loader: its splits, label names, annotation formats,
default input size and options) and ``load`` checks every call against that declaration.

>>> from engine import data
>>> data.names()
['demo', 'voc2007', 'voc2012', 'coco', 'nuswide', 'csv']
"""

from __future__ import annotations

from engine.data import coco, demo, generic, nuswide, voc  # noqa: F401 - importing registers them
from engine.data.base import ImageListDataset, SkipReport, stack
from engine.data.loader import LOADERS, Loader, info, load, names

__all__ = ["LOADERS", "ImageListDataset", "Loader", "SkipReport", "info", "load", "names", "stack"]
