"""PASCAL VOC 2007 and 2012 from local files (nothing is downloaded): the official VOCdevkit, or the
classification CSVs that the ML-GCN repository writes and the study's repository ships.

Official layout (as the tarballs extract)::

    VOCdevkit/VOC2007/JPEGImages/000005.jpg
    VOCdevkit/VOC2007/ImageSets/Main/aeroplane_trainval.txt   lines "000005 -1", "000007  1", "000009  0"
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt             one image id per line
    VOCdevkit/VOC2007/Annotations/000005.xml                  <object><name>chair</name><difficult>0</difficult>
    VOCdevkit/VOC2012/...                                     the same for 2012 (ids like 2008_000008)

Classification CSVs ``classification_<split>.csv`` (``train``, ``val``, ``trainval``; VOC2007 also
``test``): a header ``name,aeroplane,...,tvmonitor`` then one row per image, e.g.
``2008_000043,-1,...,1,...,0,...`` with the same values as the per-class txt files (1 / -1 / 0 =
difficult), rows in the order of ``aeroplane_<split>.txt``. They are found (first match wins) in

- ``ROOT/``: the study's repository (``data/VOC2012/classification_val.csv``), or any folder holding them
  (not one named for another year: ``VOC2012/`` for VOC2007);
- ``ROOT/files/VOC<year>/``: where the ML-GCN repository writes them;
- above a ``VOCdevkit`` or ``VOC<year>`` folder given as ROOT: ``../files/VOC<year>/`` (ML-GCN's, from
  ``VOCdevkit`` or ``VOCdevkit/VOC<year>``), and the parent itself when it is named ``VOC<year>`` (the
  study's ``data/VOC2012/`` above its ``VOC2012/`` subfolder). CSV names carry no year, so no other
  folder is searched.

The image folder is the first of these (C: the CSV's folder) that holds the CSV's first image, else
the first that exists: ``TOP/VOCdevkit/VOC<year>/JPEGImages`` when C is ``TOP/files/VOC<year>``
(ML-GCN), ``C/VOC2007/files/test`` (VOC2007 ``test`` only: the study's test images),
``C/VOC<year>/files/JPEGImages`` (the study's ``data/data_voc.py`` for VOC2007), ``C/files/JPEGImages``
(the same for VOC2012), ``C/VOCdevkit/VOC<year>/JPEGImages``, ``C/VOC<year>/JPEGImages`` and
``C/JPEGImages``. Class columns are matched by name (they must be exactly VOC's 20); rows keep the file's
order (the released code takes the first N correctly classified images of it). VOC2007 names of fewer
than 6 digits are zero-padded (``5`` -> ``000005``), as ML-LIW's loader does for CSVs saved by a
spreadsheet. ``root`` may be the ``VOCdevkit`` folder, the ``VOC2007`` / ``VOC2012`` folder itself, or the
folder holding the CSVs.

Labels. ``source="csv"``: from the CSVs above. ``source="txt"``: from the per-class files
``ImageSets/Main/<class>_<split>.txt`` (1 positive, -1 negative, 0 "difficult": the class appears only
as difficult objects). ``source="xml"``: from ``Annotations/<id>.xml`` (the object names and their
``<difficult>`` flags, only direct ``<object>`` children: the person-layout ``<part>`` names are not
labels) for the ids in ``ImageSets/Main/<split>.txt``. All three give the same labels. ``source="auto"``
(default) takes the CSVs when every CSV the split needs is found (``train`` and ``val`` for the
``study-*`` splits), else the txt files when all 20 exist, else the XML files. CSVs come first because
they are the files the study's code reads, so their row order is the one its first-N selection saw;
they are written from the txt files, which are derived from the XML files, so where several exist the
labels agree.

Difficult. ``difficult="positive"`` (default) counts a class shown only by difficult objects as
present, as the ML-GCN repository does when it trains (it turns 0 into 1); ``"negative"`` counts it
absent (what the study's attack and evaluation scripts do: they map only -1 to 0). An "ignore" option
is not offered: the {0,1} label matrix has no third state.

Splits: VOC2007 ``trainval`` (the study's train) / ``test``, and ``train`` / ``val``; VOC2012 the study's
seeded ``study-train`` / ``study-test`` (see :mod:`engine.data.split`; the same ids, so the same split,
whichever source), and the official ``train`` / ``val`` / ``trainval``.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from engine.config import VOC_DIFFICULT, VOC_SOURCES
from engine.data.base import ImageListDataset
from engine.data.loader import Loader, register
from engine.data.split import STUDY_SPLITS, Record, build, select_study
from engine.errors import UserError

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SPLITS = {
    2007: ("trainval", "test", "train", "val"),
    2012: (*STUDY_SPLITS, "train", "val", "trainval"),
}
DIFFICULT = VOC_DIFFICULT
SOURCES = VOC_SOURCES  # (declared with the CLI's choices, torch-free)
_VALUES = {"-1": -1, "0": 0, "1": 1}


def csv_name(split: str) -> str:
    return f"classification_{split}.csv"


def resolve_root(root: Path, year: int, also: str = "") -> Path:
    """The ``VOC<year>`` folder, given it or the ``VOCdevkit`` folder above it.

    ``also``: what else was looked for (the CSVs, with ``source="auto"``), for the error message.
    """
    folder = f"VOC{year}"
    if not root.is_dir():
        raise UserError(f"{root}: folder does not exist; expected a VOCdevkit folder (holding {folder}/) "
                        f"or the {folder} folder itself")
    if (root / folder).is_dir():
        return root / folder
    if re.fullmatch(r"VOC\d{4}", root.name) and root.name != folder:
        raise UserError(f"{root}: this is {root.name}, but data set voc{year} needs {folder}")
    if any((root / d).is_dir() for d in ("ImageSets", "Annotations", "JPEGImages")):
        return root
    raise UserError(f"{root}: neither a VOCdevkit folder (no {folder}/ inside) nor a {folder} folder "
                    f"(no ImageSets/, Annotations/ or JPEGImages/ inside){also}")


def _check_class_files(main: Path, split: str) -> None:
    """Per-class files for a class VOC does not have mean a different class list: refuse them."""
    for p in sorted(main.glob(f"*_{split}.txt")):
        cls = p.name[: -len(f"_{split}.txt")]
        if cls not in VOC_CLASSES:
            raise UserError(f"{p}: class {cls!r} is not one of the 20 VOC classes (class list mismatch); "
                            f"expected only {', '.join(VOC_CLASSES)}")


def _from_txt(base: Path, split: str, difficult: str) -> list[Record]:
    main, images = base / "ImageSets" / "Main", base / "JPEGImages"
    n = len(VOC_CLASSES)
    values: dict[str, list[int | None]] = {}
    bad: dict[str, tuple[str, str]] = {}
    for j, cls in enumerate(VOC_CLASSES):
        p = main / f"{cls}_{split}.txt"
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{p}: cannot read the class label file ({e})") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            tok = line.split()
            if not tok:
                continue
            key = tok[0]
            vals = values.setdefault(key, [None] * n)  # first-seen order, as ML-GCN's CSVs
            where = f"{p.name}:{lineno}"
            v = _VALUES.get(tok[1]) if len(tok) == 2 else None
            if v is None:
                bad.setdefault(key, ("unreadable label lines", where))
            elif vals[j] is not None and vals[j] != v:
                bad.setdefault(key, ("conflicting label lines", where))
            else:
                vals[j] = v
    positive = {1, 0} if difficult == "positive" else {1}
    records = []
    for key, vals in values.items():
        path = images / f"{key}.jpg"
        if key in bad:
            reason, where = bad[key]
            records.append(Record(key, path, None, reason, where))
        elif None in vals:
            cls = VOC_CLASSES[vals.index(None)]
            records.append(Record(key, path, None, "ids not listed in every class file",
                                  f"{key} (no line in {cls}_{split}.txt)"))
        else:
            records.append(Record(key, path, np.array([v in positive for v in vals], dtype=np.uint8)))
    return records


def _from_xml(base: Path, split: str, difficult: str) -> list[Record]:
    main, ann, images = base / "ImageSets" / "Main", base / "Annotations", base / "JPEGImages"
    listing = main / f"{split}.txt"
    if not listing.is_file():
        raise UserError(f"{listing}: split list missing; expected one image id per line (needed to read the "
                        f"labels of split {split!r} from Annotations/)")
    if not ann.is_dir():
        raise UserError(f"{ann}: annotation folder missing; expected Annotations/<id>.xml for split {split!r}")
    index = {c: j for j, c in enumerate(VOC_CLASSES)}
    records, seen = [], set()
    for line in listing.read_text().splitlines():
        tok = line.split()
        if not tok:
            continue
        key = tok[0]
        path, xml = images / f"{key}.jpg", ann / f"{key}.xml"
        if key in seen:
            records.append(Record(key, path, None, "duplicate entries", f"{listing.name}: {key}"))
            continue
        seen.add(key)
        try:
            tree = ET.parse(xml)
        except FileNotFoundError:
            records.append(Record(key, path, None, "annotation files missing", str(xml)))
            continue
        except (ET.ParseError, OSError):
            records.append(Record(key, path, None, "unreadable annotation files", str(xml)))
            continue
        labels = np.zeros(len(VOC_CLASSES), dtype=np.uint8)
        for obj in tree.getroot().findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise UserError(f"{xml}: object class {name!r} is not one of the 20 VOC classes "
                                f"(class list mismatch); expected one of {', '.join(VOC_CLASSES)}")
            is_difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
            if not is_difficult or difficult == "positive":
                labels[index[name]] = 1
        records.append(Record(key, path, labels))
    return records


# ---------------------------------------------------------------- classification CSVs


def _csv_folders(root: Path, year: int) -> list[Path]:
    """Where ``classification_<split>.csv`` may be, in order (see the module docstring).

    The CSVs' names do not say the year, so a folder is only taken for the year it belongs to: ROOT
    unless it is named for another year, a folder above ROOT only when named ``VOC<year>``.
    """
    v = f"VOC{year}"
    other = re.fullmatch(r"VOC\d{4}", root.name) is not None and root.name != v
    out = [] if other else [root]
    out.append(root / "files" / v)
    if root.name in ("VOCdevkit", v):
        up = root.absolute().parent
        ups = [up, up.parent] if root.name == v and up.name == "VOCdevkit" else [up]
        for top in ups:
            out += [top] if top.name == v else []
            out.append(top / "files" / v)
    return list(dict.fromkeys(out))


def _looked_for(root: Path, year: int, parts: tuple[str, ...]) -> str:
    names = " + ".join(csv_name(p) for p in parts)
    return f"{names} in {', '.join(str(f) for f in _csv_folders(root, year))}"


def find_csvs(root: Path, year: int, parts: tuple[str, ...]) -> list[Path] | None:
    """The CSVs of the official splits ``parts``, all from one folder; None when no folder has any."""
    for folder in _csv_folders(root, year):
        found = [folder / csv_name(p) for p in parts if (folder / csv_name(p)).is_file()]
        if len(found) == len(parts):
            return found
        if found:
            lacking = [csv_name(p) for p in parts if not (folder / csv_name(p)).is_file()]
            raise UserError(f"{folder}: has {', '.join(f.name for f in found)} but not {', '.join(lacking)}; the "
                            f"split needs {' and '.join(csv_name(p) for p in parts)} (or read the VOCdevkit files: "
                            f"source='txt' or 'xml', --annotations txt|xml)")
    return None


def _image_folders(folder: Path, year: int, split: str) -> list[Path]:
    """Candidate image folders for the CSVs in ``folder`` (see the module docstring), in order."""
    v = f"VOC{year}"
    out = []
    if folder.name == v and folder.parent.name == "files":
        out.append(folder.parent.parent / "VOCdevkit" / v / "JPEGImages")  # ML-GCN
    if year == 2007 and split == "test":
        out.append(folder / v / "files" / "test")  # the study's VOC2007 test images
    out += [folder / v / "files" / "JPEGImages", folder / "files" / "JPEGImages",
            folder / "VOCdevkit" / v / "JPEGImages", folder / v / "JPEGImages", folder / "JPEGImages"]
    return out


def _from_csv(path: Path, year: int, split: str, difficult: str) -> list[Record]:
    """The records of one classification CSV, in its row order."""
    positive = {1, 0} if difficult == "positive" else {1}
    rows: list[tuple[str, np.ndarray | None, str | None, str]] = []  # key, labels, reason, where
    seen: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next((r for r in reader if r), None)
            if header is None:
                raise UserError(f"{path}: empty file; expected a VOC classification CSV with header "
                                f"name,{','.join(VOC_CLASSES)}")
            header = [h.strip() for h in header]
            if header[0] != "name":
                raise UserError(f"{path}: not a VOC classification CSV: its header starts with {header[0]!r}, "
                                f"expected name,{','.join(VOC_CLASSES)}")
            cols = header[1:]
            unknown = [c for c in cols if c not in VOC_CLASSES]
            missing = [c for c in VOC_CLASSES if c not in cols]
            twice = sorted({c for c in cols if cols.count(c) > 1})
            if unknown or missing or twice:
                raise UserError(f"{path}: class columns differ from VOC's 20 (class list mismatch): unknown "
                                f"{unknown or 'none'}, missing {missing or 'none'}"
                                + (f", repeated {twice}" if twice else ""))
            at = [header.index(c) for c in VOC_CLASSES]
            for row in reader:
                if not row or not any(c.strip() for c in row):
                    continue
                where = f"{path.name}:{reader.line_num}"
                key = row[0].strip()
                if year == 2007 and key.isdigit() and len(key) < 6:
                    key = key.zfill(6)
                if not key or key in (".", "..") or "/" in key or "\\" in key:
                    rows.append((key or where, None, "bad name values", f"{where} ({row[0]!r})"))
                    continue
                if len(row) != len(header):
                    rows.append((key, None, "lines with the wrong number of fields",
                                 f"{where} ({len(row)} fields, expected {len(header)})"))
                    continue
                if key in seen:
                    rows.append((key, None, "duplicate entries", f"{where}: {key} (first on line {seen[key]})"))
                    continue
                seen[key] = reader.line_num
                vals = [_VALUES.get(row[j].strip()) for j in at]
                if None in vals:
                    j = vals.index(None)
                    rows.append((key, None, "label values other than 1, -1, 0",
                                 f"{where} ({VOC_CLASSES[j]} = {row[at[j]]!r})"))
                    continue
                rows.append((key, np.array([v in positive for v in vals], dtype=np.uint8), None, where))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read the CSV ({e})") from None
    candidates = _image_folders(path.parent, year, split)
    first = next((k for k, _, reason, _ in rows if reason is None), None)
    images = next((d for d in candidates if first and (d / f"{first}.jpg").is_file()), None)
    images = images or next((d for d in candidates if d.is_dir()), None)
    if images is None:
        raise UserError(f"{path}: no image folder for its rows; expected <name>.jpg in one of "
                        f"{', '.join(str(d) for d in candidates)}")
    log.info("VOC%d: labels of split %r from %s, images in %s", year, split, path, images)
    return [Record(key, images / f"{key}.jpg", labels, reason, where) for key, labels, reason, where in rows]


def _read_split(base: Path, split: str, source: str, difficult: str, also: str = "") -> list[Record]:
    """The records of one official split, from the txt files or the XML annotations."""
    main = base / "ImageSets" / "Main"
    files = [main / f"{c}_{split}.txt" for c in VOC_CLASSES]
    missing = [p for p in files if not p.is_file()]
    if main.is_dir():
        _check_class_files(main, split)
    if source == "auto":
        if not missing:
            source = "txt"
        elif len(missing) < len(files):
            raise UserError(f"{main}: class label files for split {split!r} are incomplete, missing "
                            f"{', '.join(p.name for p in missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                            f"expected <class>_{split}.txt for all 20 classes (or pass source='xml')")
        elif (main / f"{split}.txt").is_file() and (base / "Annotations").is_dir():
            source = "xml"
        else:
            lacking = [str(main / f"<class>_{split}.txt")]
            lacking += [str(p) for p in (main / f"{split}.txt", base / "Annotations") if not p.exists()]
            raise UserError(f"{base}: no labels for split {split!r}: expected ImageSets/Main/<class>_{split}.txt "
                            f"for the 20 VOC classes, or ImageSets/Main/{split}.txt plus the Annotations/ folder "
                            f"(not found: {', '.join(lacking)}){also}")
    elif source == "txt" and missing:
        raise UserError(f"{missing[0]}: class label file missing ({len(missing)} of 20 missing for split "
                        f"{split!r}); expected ImageSets/Main/<class>_{split}.txt for every VOC class")
    log.info("VOC %s: labels of split %r from %s files", base.name, split, source)
    return _from_txt(base, split, difficult) if source == "txt" else _from_xml(base, split, difficult)


def _read(year: int, root: Path, split: str, size: int | None, allow_missing: bool, *, difficult: str, source: str,
          seed: int, cache: bool) -> ImageListDataset:
    """VOC ``year`` split ``split`` (labels in :data:`VOC_CLASSES` order; see the module docstring).

    ``seed`` selects the study's 20% test split (``study-*`` splits of VOC2012 only).
    """
    name = f"voc{year}"
    if difficult not in DIFFICULT:
        raise UserError(f"difficult={difficult!r}; valid: {', '.join(DIFFICULT)}")
    parts = ("train", "val") if split in STUDY_SPLITS else (split,)
    csvs = None
    if source in ("auto", "csv") and root.is_dir():
        csvs = find_csvs(root, year, parts)
        if csvs is None and source == "csv":
            raise UserError(f"{root}: no classification CSV for split {split!r}: looked for "
                            f"{_looked_for(root, year, parts)}")
    if csvs is not None:
        base = csvs[0].parent
        pooled = [r for p, part in zip(csvs, parts) for r in _from_csv(p, year, part, difficult)]
    else:
        also = f"; nor does it hold {_looked_for(root, year, parts)}" if source == "auto" else ""
        base = resolve_root(root, year, also)
        also = f"; no {_looked_for(root, year, parts)} either" if source == "auto" else ""
        pooled = [r for part in parts for r in _read_split(base, part, source, difficult, also)]
        images = base / "JPEGImages"
        if not images.is_dir():
            raise UserError(f"{images}: image folder missing; expected JPEGImages/<id>.jpg for the listed ids")
    records = select_study(pooled, split, seed) if split in STUDY_SPLITS else pooled
    return build(name=name, root=base, split=split, records=records, label_names=VOC_CLASSES, size=size,
                 allow_missing=allow_missing, cache=cache)


def _declare(year: int, train: str, test: str) -> Loader:
    return register(Loader(
        name=f"voc{year}", read=functools.partial(_read, year), size=448, train_split=train, test_split=test,
        splits=SPLITS[year], label_names=VOC_CLASSES, sources=SOURCES,
        options={"difficult": "positive", "seed": 0, "cache": False}, doc=__doc__,
    ))


# The study's splits (engine.data.split): VOC2007 trainval / test; VOC2012 has no labelled test set, so
# a seeded 20% of train + val is the test set.
LOADERS = {2007: _declare(2007, "trainval", "test"), 2012: _declare(2012, "study-train", "study-test")}


def load(root: str | Path, split: str | None = None, size: int | None = None, allow_missing: bool = False, *,
         year: int = 2007, **options) -> ImageListDataset:
    """VOC ``year``: the ``voc<year>`` loader's :meth:`~engine.data.loader.Loader.load`."""
    if year not in LOADERS:
        raise UserError(f"VOC year {year} not supported; valid: {', '.join(map(str, LOADERS))}")
    return LOADERS[year].load(root, split, size, allow_missing, **options)
