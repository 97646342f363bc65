"""NUS-WIDE in the ASL distribution (the accessible images, as the study uses; nothing is downloaded).

Layout::

    ROOT/nus_wid_data.csv      columns filepath,label,split_name; e.g.
                               images/0001_2124494179.jpg,"['cat', 'water']",train
    ROOT/images/0001_2124494179.jpg

``filepath`` is relative to ROOT. ``label`` is a Python-literal list of tag names; it is parsed with
:func:`ast.literal_eval` (which evaluates literals only, never code) and must be a list of strings.
Rows whose label is not such a list, whose filepath is empty or leaves ROOT, or whose image file is
missing are unusable: they raise a :class:`UserError` listing them unless ``allow_missing``, and are
counted in ``.skipped`` either way. A tag outside the 81 is a class list mismatch, always an error.

The 81 tags are in alphabetical order (:data:`TAGS`), the fixed order of the study's repository
(its ``data/data_nuswide.py``), which is also the sorted order of NUS-WIDE's 81 concept names.

Splits: the study's seeded ``study-train`` / ``study-test`` (80/20 of the rows whose split_name is
``train`` or ``val``; see :mod:`engine.data.split`, key = the filepath column), and every official
``split_name`` value in the file (``train``, ``val``) by its own name.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path, PurePosixPath

import numpy as np

from engine.data.base import ImageListDataset
from engine.data.loader import Loader, register
from engine.data.split import STUDY_SPLITS, Record, build, check_split, select_study
from engine.errors import UserError

TAGS: tuple[str, ...] = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars", "castle",
    "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake", "elk", "fire",
    "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier", "grass", "harbor", "horses",
    "house", "lake", "leaf", "map", "military", "moon", "mountain", "nighttime", "ocean", "person", "plane",
    "plants", "police", "protest", "railroad", "rainbow", "reflection", "road", "rocks", "running", "sand",
    "sign", "sky", "snow", "soccer", "sports", "statue", "street", "sun", "sunset", "surf", "swimmers",
    "tattoo", "temple", "tiger", "tower", "town", "toy", "train", "tree", "valley", "vehicle", "water",
    "waterfall", "wedding", "whales", "window", "zebra",
)
assert len(TAGS) == 81 and list(TAGS) == sorted(TAGS)  # a fixed table: checked once, at import
CSV_NAME = "nus_wid_data.csv"
COLUMNS = ("filepath", "label", "split_name")
POOL = ("train", "val")  # the official splits the study's 20% test set is drawn from
MAX_LABEL_CHARS = 10_000  # far above any real row; bounds literal_eval's work on hostile input


def parse_label(text: str) -> list[str] | None:
    """The tag list of one ``label`` cell, or None if it is not a literal list of strings."""
    if len(text) > MAX_LABEL_CHARS:
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        return None
    return value


def _read_rows(root: Path, csv_path: Path) -> list[tuple[str, Record]]:
    """(split_name, record) for every data row of the CSV, in file order."""
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: file missing; expected the ASL distribution's {CSV_NAME} with columns "
                        f"{','.join(COLUMNS)}")
    index = {t: j for j, t in enumerate(TAGS)}
    rows = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected header "
                                f"{','.join(COLUMNS)} (found {','.join(reader.fieldnames or []) or 'nothing'})")
            for row in reader:
                line = reader.line_num
                fp = (row.get("filepath") or "").strip()
                split_name = (row.get("split_name") or "").strip()
                where = f"{csv_path.name}:{line}"
                pure = PurePosixPath(fp.replace("\\", "/"))
                if not fp or pure.is_absolute() or ".." in pure.parts:
                    rows.append((split_name, Record(fp or where, None, None, "bad filepath values", where)))
                    continue
                path = root / pure
                tags = parse_label(row.get("label") or "")
                if tags is None:
                    rows.append((split_name, Record(fp, path, None, "unreadable labels (not a literal list of "
                                                                  "tag names)", where)))
                    continue
                unknown = [t for t in tags if t not in index]
                if unknown:
                    raise UserError(f"{csv_path}, line {line}: tag(s) {unknown} are not among the 81 NUS-WIDE "
                                    f"tags (class list mismatch)")
                labels = np.zeros(len(TAGS), dtype=np.uint8)
                labels[[index[t] for t in tags]] = 1
                rows.append((split_name, Record(fp, path, labels, where=where)))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{csv_path}: cannot read the CSV ({e})") from None
    return rows


def _read(root: Path, split: str, size: int | None, allow_missing: bool, *, seed: int, csv_name: str,
          cache: bool) -> ImageListDataset:
    """NUS-WIDE ``split`` as an :class:`ImageListDataset` (labels in :data:`TAGS` order)."""
    if not root.is_dir():
        raise UserError(f"{root}: folder does not exist; expected a NUS-WIDE folder with {CSV_NAME} and images/")
    name = PurePosixPath(str(csv_name).replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise UserError(f"csv_name {csv_name!r}: expected a file name inside the data root {root}")
    rows = _read_rows(root, root / name)
    official = sorted({s for s, _ in rows if s})
    check_split("nuswide", split, (*STUDY_SPLITS, *official))
    if split in STUDY_SPLITS:
        records = select_study([r for s, r in rows if s in POOL], split, seed)
    else:
        records = [r for s, r in rows if s == split]
    return build(name="nuswide", root=root, split=split, records=records, label_names=TAGS, size=size,
                 allow_missing=allow_missing, cache=cache)


# No labelled test set: the study's test set is a seeded 20% of train + val (engine.data.split).
LOADER = register(Loader(
    name="nuswide", read=_read, size=448, train_split="study-train", test_split="study-test", splits=STUDY_SPLITS,
    more_splits=f"every split_name value in {CSV_NAME} (train, val)", label_names=TAGS,
    options={"seed": 0, "csv_name": CSV_NAME, "cache": False}, doc=__doc__,
))
load = LOADER.load
