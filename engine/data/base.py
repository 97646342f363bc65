"""The one data set interface every loader returns.

A data set is a list of image files plus a {0,1} label matrix whose columns are named. Images are
decoded with PIL, converted to RGB and warped (resized without keeping the aspect ratio, as the
ML-GCN repository's ``Warp`` does) to ``size x size``; pixels become float32 in [0, 1]. Models do
their own normalisation, so attacks work in this [0, 1] space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from engine.errors import UserError


@dataclass
class SkipReport:
    """Samples a loader could not use, with the reason for each (never dropped silently)."""

    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, item: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(item)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        parts = [f"{n} {r} (e.g. {', '.join(self.examples[r])})" for r, n in self.reasons.items()]
        return "; ".join(parts)


def read_image(path: Path, size: int | None) -> torch.Tensor:
    """Decode one image file to float32 [3, size, size] in [0, 1]."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: image file listed by the data set does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: cannot decode image ({e}); expected a readable JPEG/PNG file") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageListDataset(Dataset):
    """(image float32 [3,H,W] in [0,1], labels float32 {0,1}^l) over a list of files."""

    def __init__(
        self,
        *,
        name: str,
        root: Path,
        split: str,
        paths: Sequence[Path],
        labels: np.ndarray,
        label_names: Sequence[str],
        size: int | None,
        cache: bool = False,
        skipped: SkipReport | None = None,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape != (len(paths), len(label_names)):
            raise ValueError(f"labels shape {labels.shape} != ({len(paths)}, {len(label_names)})")
        if len(paths) == 0:
            raise UserError(f"{root}: split {split!r} of data set {name!r} has no samples")
        self.name = name
        self.root = Path(root)
        self.split = split
        self.paths = [Path(p) for p in paths]
        self.labels = labels.astype(np.uint8)
        self.label_names = list(label_names)
        self.size = size
        self.skipped = skipped or SkipReport()
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def image(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        x = read_image(self.paths[i], self.size)
        if self._cache is not None:
            self._cache[i] = x
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(i), torch.from_numpy(self.labels[i].astype(np.float32))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "root": str(self.root),
            "split": self.split,
            "num_samples": len(self),
            "label_names": self.label_names,
            "size": self.size,
        }

    def with_label_order(self, names: Sequence[str]) -> ImageListDataset:
        """The same samples with label columns mapped onto ``names`` by name (a checkpoint's order)."""
        names = list(names)
        if names == self.label_names:
            return self
        missing = [n for n in names if n not in self.label_names]
        extra = [n for n in self.label_names if n not in names]
        if missing or extra:
            raise UserError(
                f"data set {self.name!r} at {self.root} has labels that do not match the checkpoint's: "
                f"missing from the data set {missing or 'none'}, not in the checkpoint {extra or 'none'} "
                f"(checkpoint has {len(names)} labels, data set {len(self.label_names)})"
            )
        idx = [self.label_names.index(n) for n in names]
        out = ImageListDataset(
            name=self.name,
            root=self.root,
            split=self.split,
            paths=self.paths,
            labels=self.labels[:, idx],
            label_names=names,
            size=self.size,
            skipped=self.skipped,
        )
        out._cache = self._cache
        return out

    def subset(self, indices: Sequence[int]) -> ImageListDataset:
        idx = list(indices)
        out = ImageListDataset(
            name=self.name,
            root=self.root,
            split=self.split,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            label_names=self.label_names,
            size=self.size,
            skipped=self.skipped,
        )
        return out


def stack(ds: Dataset, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load samples into two tensors (images [N,3,H,W], labels [N,l])."""
    idx = range(len(ds)) if indices is None else indices
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs), torch.stack(ys)
