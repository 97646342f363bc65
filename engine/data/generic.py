"""Your own data set (name ``csv``): a folder of images and a CSV of their labels.

    ROOT/labels.csv   path,labels[,split]          labels: names joined by ';' ("cat;dog"; empty: none)
               or     path,cat,dog,...[,split]     one 0/1 column per label
    ROOT/...          the images (anything PIL reads), ``path`` relative to ROOT

Splits: the rows whose ``split`` column names the split; or one CSV per split (ROOT/test.csv,
ROOT/train.csv ...), used when it exists; a CSV without a ``split`` column holds only the test
split. The ``csv_name`` option names another CSV (inside ROOT). Every path must stay inside ROOT.

Label names, i.e. the label columns and their order: the ``label_names`` option (a list, or a
file inside ROOT with one name per line), else the model's (``engine.data.load`` passes them),
else the ones the CSV uses (its 0/1 columns in order, or the names of the labels column sorted).
A label outside a given list is an error naming the file and line, never dropped.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from engine.data.base import ImageListDataset, SkipReport
from engine.data.loader import Loader, register
from engine.errors import UserError

NAME = "csv"
DEFAULT_CSV = "labels.csv"
PATH_COLUMNS = ("path", "filename")  # the first one a CSV has names the image
SPLIT_COLUMN = "split"
LABELS_COLUMN = "labels"


def inside(root: Path, value: str, where: str) -> Path:
    """``root / value``, which must not lead out of ``root`` (``..``, absolute paths, links)."""
    p = root / value
    if not p.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{where}: {value!r} lies outside the data root {root}")
    return p


def _names(value, root: Path) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        f = inside(root, value, "label_names")
        try:
            value = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        except OSError:
            raise UserError(f"{f}: label names file not found") from None
    names = [str(n) for n in value]
    dup = sorted({n for n in names if names.count(n) > 1})
    if not names or dup:
        raise UserError(f"label_names: {'empty' if not names else f'repeated: {dup}'}")
    return names


def _pick_csv(root: Path, split: str, csv_name: str | None) -> tuple[Path, bool]:
    """(the CSV, whether all its rows are this split)."""
    if csv_name is not None:
        return inside(root, csv_name, "csv"), False
    own = root / f"{split}.csv"
    if own.is_file():
        return own, True
    return root / DEFAULT_CSV, False


def _read(root: Path, split: str, size: int | None, allow_missing: bool, *, csv_name: str | None,
          label_names: list[str] | str | None, cache: bool) -> ImageListDataset:
    """Split ``split`` of the CSV data set at ``root`` (see the module docstring)."""
    if not root.is_dir():
        raise UserError(f"{root}: data folder does not exist")
    path, whole = _pick_csv(root, split, csv_name)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(r.line_num, row) for r in [csv.reader(f)] for row in r]
    except FileNotFoundError:
        raise UserError(f"{path}: no such CSV (expected {DEFAULT_CSV} or {split}.csv in {root}, or a csv_name "
                        f"option)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read as CSV ({type(e).__name__}: {e})") from None
    if not rows:
        raise UserError(f"{path}: empty CSV; expected a header such as 'path,labels,split'")
    header = [h.strip() for h in rows[0][1]]
    col = next((c for c in PATH_COLUMNS if c in header), None)
    if col is None:
        raise UserError(f"{path}:1: no image column: the header needs one of {', '.join(PATH_COLUMNS)}")
    i_path = header.index(col)
    i_split = header.index(SPLIT_COLUMN) if SPLIT_COLUMN in header else None
    if i_split is None and not whole and split != "test":
        raise UserError(f"{path}: no '{SPLIT_COLUMN}' column, so its rows are the test split only; add a split "
                        f"column or a {split}.csv to read split {split!r}")
    wide = LABELS_COLUMN not in header
    label_cols = [j for j, h in enumerate(header) if j not in (i_path, i_split)]
    if not wide and len(label_cols) != 1:
        others = [header[j] for j in label_cols if header[j] != LABELS_COLUMN]
        raise UserError(f"{path}:1: unexpected column(s) {others} next to '{LABELS_COLUMN}' (a labels column, "
                        f"or one 0/1 column per label, not both)")
    if wide and not label_cols:
        raise UserError(f"{path}:1: no label columns: give '{LABELS_COLUMN}' (names joined by ';') or one 0/1 "
                        f"column per label")
    body = [(line, row) for line, row in rows[1:] if any(c.strip() for c in row)]
    for line, row in body:
        if len(row) != len(header):
            raise UserError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
    given = _names(label_names, root)
    if wide:
        names = given or [header[j] for j in label_cols]
        unknown = [header[j] for j in label_cols if header[j] not in names]
        if unknown:
            raise UserError(f"{path}:1: label column(s) {unknown} not among the {len(names)} label names "
                            f"({', '.join(names[:8])}{' ...' if len(names) > 8 else ''})")
    else:
        j = label_cols[0]
        names = given or sorted({n.strip() for _, row in body for n in row[j].split(";") if n.strip()})
    if not names:
        raise UserError(f"{path}: no sample has a label, and no label_names were given")
    index = {n: k for k, n in enumerate(names)}
    skipped = SkipReport()
    paths, labels = [], []
    for line, row in body:
        if i_split is not None and row[i_split].strip() != split:
            continue
        y = np.zeros(len(names), dtype=np.uint8)
        if wide:
            for j in label_cols:
                v = row[j].strip()
                if v not in ("0", "1"):
                    raise UserError(f"{path}:{line}: column {header[j]!r} is {v!r}; expected 0 or 1")
                y[index[header[j]]] = v == "1"
        else:
            for n in (n.strip() for n in row[label_cols[0]].split(";")):
                if not n:
                    continue
                if n not in index:
                    raise UserError(f"{path}:{line}: unknown label {n!r} (not among the {len(names)} label names: "
                                    f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''})")
                y[index[n]] = 1
        img = inside(root, row[i_path].strip(), f"{path}:{line}")
        if not img.is_file():
            if not allow_missing:
                raise UserError(f"{path}:{line}: image {row[i_path].strip()!r} not found under {root} "
                                f"(--allow-missing skips such rows)")
            skipped.add("missing image", f"line {line}")
            continue
        paths.append(img)
        labels.append(y)
    if not paths:
        raise UserError(f"{path}: no sample of split {split!r}"
                        + (f" (split column values: {sorted({r[i_split].strip() for _, r in body})})"
                           if i_split is not None else ""))
    return ImageListDataset(name=NAME, root=root, split=split, paths=paths, labels=np.stack(labels),
                            label_names=names, size=size, cache=cache, skipped=skipped)


# 224 px unless the model says otherwise.
LOADER = register(Loader(
    name=NAME, read=_read, size=224, train_split="train", test_split="test", splits=("train", "test"),
    more_splits=f"every value of the '{SPLIT_COLUMN}' column, or a <split>.csv in the data folder",
    options={"csv_name": None, "label_names": None, "cache": False}, doc=__doc__,
))
load = LOADER.load
