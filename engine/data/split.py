"""The study's splits, and what the real-data loaders share (sample records, skip checks).

Splits per data set (the study, section 5.1):

- VOC2007: the official ``trainval`` (train) and ``test`` (test).
- COCO 2014: ``train2014`` (train) and ``val2014`` (test).
- VOC2012 and NUS-WIDE have no labelled test set: "we randomly select 20% of the data from the training
  and validation sets to serve as the test set". Here that is the pair of splits ``study-train`` /
  ``study-test``; the official splits keep their own names (``train``, ``val``, ...), so both stay
  addressable. (``train`` alone would be ambiguous: VOC2012 and NUS-WIDE both have an official
  ``train`` split that is not the study's training set.)

The seeded 20% split, exactly (reproducible in any language, no RNG implementation involved):

1. The pool is every sample *listed* in the official ``train`` and ``val`` splits, keyed by its image
   id (VOC: ``2008_000008``; NUS-WIDE: the ``filepath`` column as written, e.g.
   ``images/0001_2124494179.jpg``). Samples that will later turn out unusable (image file missing,
   unreadable label) stay in the pool, so a missing file never moves any other sample across the split.
2. ``n_test = floor(0.2 * N + 0.5)`` for the N distinct keys.
3. Each key gets the rank string ``sha256(f"{seed}:{key}")`` (UTF-8, lowercase hex); keys are sorted by
   (rank, key); the first ``n_test`` are the test set, the others the training set. Default seed 0.

Because the ranks do not depend on the listing order, re-ordering the annotation files does not change
the split, and adding samples changes it only where the new keys land.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.base import ImageListDataset, SkipReport
from engine.errors import UserError

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2
STUDY_TRAIN = "study-train"
STUDY_TEST = "study-test"
STUDY_SPLITS = (STUDY_TRAIN, STUDY_TEST)

# Skip reasons that are part of a benchmark's definition rather than a problem with the user's files:
# they are reported (in ``.skipped`` and the log) but never block a run.
NO_ANNOTATIONS = "images without annotations (dropped, as ML-GCN does)"
BENIGN = frozenset({NO_ANNOTATIONS})


def rank(key: str, seed: int) -> str:
    """The sort key of one sample in the seeded split (see the module docstring)."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def draw_test_keys(keys: Iterable[str], seed: int = 0, fraction: float = TEST_FRACTION) -> set[str]:
    """The keys of the study's test set drawn from ``keys`` (duplicates count once)."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"test fraction must be in (0, 1), got {fraction}")
    uniq = sorted(set(keys))
    n_test = math.floor(fraction * len(uniq) + 0.5)
    ordered = sorted(uniq, key=lambda k: (rank(k, seed), k))
    return set(ordered[:n_test])


def study_mask(keys: Sequence[str], part: str, seed: int = 0, fraction: float = TEST_FRACTION) -> np.ndarray:
    """Boolean mask over ``keys`` selecting ``part`` (``study-train`` or ``study-test``)."""
    if part not in STUDY_SPLITS:
        raise ValueError(part)
    test = draw_test_keys(keys, seed, fraction)
    is_test = np.array([k in test for k in keys], dtype=bool)
    return is_test if part == STUDY_TEST else ~is_test


@dataclass
class Record:
    """One listed sample: its key, its image path, its labels, or why it cannot be used."""

    key: str
    path: Path | None
    labels: np.ndarray | None  # {0,1} vector in the loader's label order
    reason: str | None = None  # set when the sample is unusable (labels may then be None)
    where: str = ""  # the file/line a reason refers to (for the skip report's examples)


def check_skipped(name: str, root: Path, split: str, listed: int, skipped: SkipReport, allow_missing: bool) -> None:
    """Raise unless every skip is benign or ``allow_missing``; log what is skipped either way."""
    blocking = {r: n for r, n in skipped.reasons.items() if r not in BENIGN}
    for r, n in skipped.reasons.items():
        if r in BENIGN:
            log.info("%s %s at %s: %d %s", name, split, root, n, r)
    if not blocking:
        return
    parts = [f"{n} {r} (e.g. {', '.join(skipped.examples[r])})" for r, n in blocking.items()]
    msg = (f"{root}: data set {name!r}, split {split!r}: {sum(blocking.values())} of {listed} listed samples "
           f"cannot be used: {'; '.join(parts)}")
    if not allow_missing:
        raise UserError(msg + "; fix the files, or pass allow_missing=True (--allow-missing) to run without them")
    log.warning("%s; continuing without them (allow_missing)", msg)


def build(
    *,
    name: str,
    root: Path,
    split: str,
    records: Sequence[Record],
    label_names: Sequence[str],
    size: int | None,
    allow_missing: bool,
    cache: bool = False,
    skipped: SkipReport | None = None,
) -> ImageListDataset:
    """The data set of the usable ``records``; unusable ones go to the skip report (never silently).

    A usable record whose image file does not exist becomes unusable here ("image files missing"), so
    every loader reports missing images the same way.
    """
    skipped = skipped if skipped is not None else SkipReport()
    paths, rows = [], []
    for r in records:
        if r.reason is not None:
            skipped.add(r.reason, r.where or r.key)
            continue
        if r.path is None or not r.path.is_file():
            skipped.add("image files missing", str(r.path or r.key))
            continue
        paths.append(r.path)
        rows.append(r.labels)
    check_skipped(name, root, split, len(records), skipped, allow_missing)
    labels = np.stack(rows).astype(np.uint8) if rows else np.zeros((0, len(label_names)), np.uint8)
    return ImageListDataset(name=name, root=root, split=split, paths=paths, labels=labels,
                            label_names=label_names, size=size, cache=cache, skipped=skipped)


def select_study(records: Sequence[Record], split: str, seed: int) -> list[Record]:
    """The records of ``split`` (``study-train`` / ``study-test``) from the pooled official splits.

    Duplicated keys (the same image listed twice) count once in the split and the later copies are
    marked unusable, so nothing is counted twice or dropped silently.
    """
    seen: set[str] = set()
    out: list[Record] = []
    for r in records:
        if r.key in seen:
            out.append(Record(r.key, r.path, None, "duplicate entries", r.where or r.key))
        else:
            seen.add(r.key)
            out.append(r)
    mask = study_mask([r.key for r in out], split, seed)
    # A duplicate follows its key's side of the split, so it is reported where the key went.
    return [r for r, m in zip(out, mask) if m]


def check_split(name: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise UserError(f"unknown split {split!r} for data set {name!r}; valid: {', '.join(valid)}")
