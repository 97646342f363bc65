"""PASCAL VOC 2007 and 2012 from a local VOCdevkit (nothing is downloaded).

Layout (as the official tarballs extract)::

    VOCdevkit/VOC2007/JPEGImages/000005.jpg
    VOCdevkit/VOC2007/ImageSets/Main/aeroplane_trainval.txt   lines "000005 -1", "000007  1", "000009  0"
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt             one image id per line
    VOCdevkit/VOC2007/Annotations/000005.xml                  <object><name>chair</name><difficult>0</difficult>
    VOCdevkit/VOC2012/...                                     the same for 2012 (ids like 2008_000008)

``root`` may be the ``VOCdevkit`` folder or the ``VOC2007`` / ``VOC2012`` folder itself.

Labels. With ``source="txt"`` they come from the per-class files ``ImageSets/Main/<class>_<split>.txt``
(1 positive, -1 negative, 0 "difficult": the class appears only as difficult objects). With
``source="xml"`` they come from ``Annotations/<id>.xml`` (the object names and their ``<difficult>``
flags, only direct ``<object>`` children: the person-layout ``<part>`` names are not labels) for the
ids in ``ImageSets/Main/<split>.txt``; both give the same labels. ``source="auto"`` (default) uses the
txt files when all 20 exist, else the XML files.

Difficult. ``difficult="positive"`` (default) counts a class shown only by difficult objects as
present, as the ML-GCN repository does when it trains (it turns 0 into 1); ``"negative"`` counts it
absent. An "ignore" option is not offered: the {0,1} label matrix has no third state.

Splits: VOC2007 ``trainval`` (the study's train) / ``test``, and ``train`` / ``val``; VOC2012 the study's
seeded ``study-train`` / ``study-test`` (see :mod:`engine.data.split`), and the official ``train`` /
``val`` / ``trainval``.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from engine.data.base import ImageListDataset
from engine.data.split import STUDY_SPLITS, Record, build, check_split, select_study
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
DIFFICULT = ("positive", "negative")
SOURCES = ("auto", "txt", "xml")
_VALUES = {"-1": -1, "0": 0, "1": 1}


def resolve_root(root: Path, year: int) -> Path:
    """The ``VOC<year>`` folder, given it or the ``VOCdevkit`` folder above it."""
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
                    f"(no ImageSets/, Annotations/ or JPEGImages/ inside)")


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


def _read_split(base: Path, split: str, source: str, difficult: str) -> list[Record]:
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
                            f"(not found: {', '.join(lacking)})")
    elif source == "txt" and missing:
        raise UserError(f"{missing[0]}: class label file missing ({len(missing)} of 20 missing for split "
                        f"{split!r}); expected ImageSets/Main/<class>_{split}.txt for every VOC class")
    log.info("VOC %s: labels of split %r from %s files", base.name, split, source)
    return _from_txt(base, split, difficult) if source == "txt" else _from_xml(base, split, difficult)


def load(
    root: str | Path,
    split: str = "test",
    size: int | None = 448,
    allow_missing: bool = False,
    *,
    year: int = 2007,
    difficult: str = "positive",
    source: str = "auto",
    seed: int = 0,
    cache: bool = False,
) -> ImageListDataset:
    """VOC ``year`` split ``split`` as an :class:`ImageListDataset` (labels in :data:`VOC_CLASSES` order).

    Unusable samples (image missing, unreadable label line, ...) raise a :class:`UserError` listing them,
    unless ``allow_missing``: then they are left out and counted in the data set's ``.skipped``.
    ``seed`` selects the study's 20% test split (``study-*`` splits of VOC2012 only).
    """
    if year not in SPLITS:
        raise UserError(f"VOC year {year} not supported; valid: {', '.join(map(str, SPLITS))}")
    name = f"voc{year}"
    check_split(name, split, SPLITS[year])
    if difficult not in DIFFICULT:
        raise UserError(f"difficult={difficult!r}; valid: {', '.join(DIFFICULT)}")
    if source not in SOURCES:
        raise UserError(f"source={source!r}; valid: {', '.join(SOURCES)}")
    base = resolve_root(Path(root).expanduser(), year)
    if split in STUDY_SPLITS:
        pooled = _read_split(base, "train", source, difficult) + _read_split(base, "val", source, difficult)
        records = select_study(pooled, split, seed)
    else:
        records = _read_split(base, split, source, difficult)
    images = base / "JPEGImages"
    if not images.is_dir():
        raise UserError(f"{images}: image folder missing; expected JPEGImages/<id>.jpg for the listed ids")
    return build(name=name, root=base, split=split, records=records, label_names=VOC_CLASSES, size=size,
                 allow_missing=allow_missing, cache=cache)
