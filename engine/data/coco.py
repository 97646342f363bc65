"""MS-COCO 2014 as a multi-label data set, from the official files or from ML-GCN's annotation lists
(nothing is downloaded).

Official layout (as the zips extract), ``source="instances"``::

    ROOT/annotations/instances_train2014.json
    ROOT/annotations/instances_val2014.json
    ROOT/train2014/COCO_train2014_000000000009.jpg
    ROOT/val2014/COCO_val2014_000000000042.jpg

An image's labels are the categories of all its instance annotations (crowd ones included, as ML-GCN
does). Label order: the 80 category *names sorted alphabetically* (airplane 0, apple 1, ...), the order
of ML-GCN's ``category.json`` and so of its released COCO checkpoint; category ids (1-90, with gaps)
are only used to join annotations to names. The categories must be exactly COCO's 80.

ML-GCN's layout, ``source="mlgcn"`` (written by its ``download_coco2014``; the study's repository ships
``data/COCO/val_anno.json`` and ``category.json`` this way)::

    ROOT/train_anno.json    [{"file_name": "COCO_train2014_000000000009.jpg", "labels": [7, 45, 46, 50]}, ...]
    ROOT/val_anno.json      the same for val2014
    ROOT/category.json      {"airplane": 0, "apple": 1, ..., "zebra": 79}: name -> label column
    ROOT/train2014/, ROOT/val2014/   the images, as above

``labels`` are indices into ``category.json``; the label order is its names sorted by index (the real
file is alphabetical, so the same order as above; any other order is mapped onto a checkpoint's by
name). ``category.json`` must hold COCO's 80 names with the indices 0..79, each once. The lists keep
the instances file's image order (ML-GCN writes them from it), and that order is kept here.

Both layouts may also be one level down, in ``ROOT/data/`` (where ML-GCN's own download puts them).
``source="auto"`` (default) takes ``annotations/instances_<split>.json`` when present (in ROOT, else in
ROOT/data), else ``<train|val>_anno.json``: the official file first, since the lists are derived from it
(the same images, labels and order) and it is what the checks of the category ids rest on.

Images without any annotation are dropped, as the ML-GCN loader does (val2014: 40,504 -> 40,137
images): that is the benchmark's definition, so they are counted in ``.skipped`` as
:data:`engine.data.split.NO_ANNOTATIONS` but never block a run. ML-GCN's lists never hold such images
(its generator leaves them out); an entry with an empty ``labels`` list is dropped the same way, so
both sources give the same samples (ML-GCN's loader would keep it as an image with no label). Listed
images whose file is missing, or whose file name leaves the image folder, block a run unless
``allow_missing``.

Splits: ``train2014`` (the study's train) and ``val2014`` (its test); ``train`` / ``val`` are aliases.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from engine.config import COCO_SOURCES
from engine.data.base import ImageListDataset, SkipReport
from engine.data.loader import Loader, register
from engine.data.split import NO_ANNOTATIONS, Record, build
from engine.errors import UserError

log = logging.getLogger(__name__)

# Official category id -> name (instances_*2014.json). Only the names are relied on.
COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}
LABEL_NAMES: tuple[str, ...] = tuple(sorted(COCO_CATEGORIES.values()))  # ML-GCN's order
SPLITS = ("train2014", "val2014", "train", "val")
_ALIASES = {"train": "train2014", "val": "val2014"}
SOURCES = COCO_SOURCES  # (declared with the CLI's choices, torch-free)
CATEGORY_FILE = "category.json"  # ML-GCN's name -> label column map

# Fields each section's entries must have, with their JSON types.
_SCHEMA: dict[str, dict[str, type]] = {
    "images": {"id": int, "file_name": str},
    "annotations": {"image_id": int, "category_id": int},
    "categories": {"id": int, "name": str},
}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: annotation file missing; expected the COCO 2014 instances JSON "
                        f"(annotations/{path.name} from annotations_trainval2014.zip)")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        hint = " (an ML-GCN annotation list is named <train|val>_anno.json)" if isinstance(obj, list) else ""
        raise UserError(f"{path}: not a COCO instances file: expected a JSON object with keys images, "
                        f"annotations, categories, got a JSON {_kind(obj)}{hint}")
    for section, fields in _SCHEMA.items():
        if section not in obj:
            raise UserError(f"{path}: missing key {section!r}; a COCO instances file has images, annotations, "
                            f"categories")
        items = obj[section]
        if not isinstance(items, list):
            raise UserError(f"{path}: {section!r} must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise UserError(f"{path}: {section}[{i}] must be an object, got {type(item).__name__}")
            for key, typ in fields.items():
                if key not in item:
                    raise UserError(f"{path}: {section}[{i}] has no key {key!r} (expected {', '.join(fields)})")
                v = item[key]
                if not isinstance(v, typ) or isinstance(v, bool):
                    raise UserError(f"{path}: {section}[{i}][{key!r}] = {v!r} must be {typ.__name__}")
    return obj


def _category_index(path: Path, categories: list[dict]) -> dict[int, int]:
    """Category id -> column in :data:`LABEL_NAMES`; the names must be COCO's 80."""
    by_id: dict[int, str] = {}
    for c in categories:
        if c["id"] in by_id:
            raise UserError(f"{path}: category id {c['id']} appears twice")
        by_id[c["id"]] = c["name"]
    names = list(by_id.values())
    unknown = sorted(set(names) - set(LABEL_NAMES))
    absent = sorted(set(LABEL_NAMES) - set(names))
    if unknown or absent or len(names) != len(LABEL_NAMES):
        raise UserError(f"{path}: categories are not COCO's 80 (class list mismatch): {len(names)} categories, "
                        f"unknown {unknown or 'none'}, missing {absent or 'none'}")
    col = {n: j for j, n in enumerate(LABEL_NAMES)}
    return {cid: col[name] for cid, name in by_id.items()}


def _kind(obj: Any) -> str:
    """The JSON type name of a parsed value, for messages."""
    if isinstance(obj, bool):
        return "boolean"
    if obj is None:
        return "null"
    return {dict: "object", list: "list", str: "string", int: "number", float: "number"}.get(type(obj), "value")


def _parse(path: Path, what: str, **kw) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, **kw)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); expected {what}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def read_categories(path: Path) -> list[str]:
    """ML-GCN's ``category.json``: COCO's 80 names, returned in the order of their indices 0..79."""
    what = "a JSON object mapping each of COCO's 80 category names to its label index 0-79"
    if not path.is_file():
        raise UserError(f"{path}: file missing; expected ML-GCN's {CATEGORY_FILE}, {what}")
    obj = _parse(path, what, object_pairs_hook=_unique_keys)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected {what}, got a JSON {_kind(obj)}")
    for name, idx in obj.items():
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise UserError(f"{path}: index of {name!r} is {idx!r}; expected an integer 0-79")
    unknown = sorted(set(obj) - set(LABEL_NAMES))
    absent = sorted(set(LABEL_NAMES) - set(obj))
    if unknown or absent:
        raise UserError(f"{path}: categories are not COCO's 80 (class list mismatch): {len(obj)} categories, "
                        f"unknown {unknown or 'none'}, missing {absent or 'none'}")
    idx = sorted(obj.values())
    if idx != list(range(len(LABEL_NAMES))):
        bad = sorted({i for i in idx if not 0 <= i < len(LABEL_NAMES) or idx.count(i) > 1})
        raise UserError(f"{path}: label indices must be 0..{len(LABEL_NAMES) - 1}, each once; out of range or "
                        f"repeated: {bad}")
    return sorted(obj, key=obj.__getitem__)


def _read_anno(path: Path, images_dir: Path, n_labels: int, skipped: SkipReport) -> list[Record]:
    """Records of ML-GCN's ``<phase>_anno.json`` (a list of {file_name, labels}), in the list's order."""
    what = 'a JSON list of {"file_name": ..., "labels": [category indices]} objects (ML-GCN\'s annotation list)'
    obj = _parse(path, what)
    if not isinstance(obj, list):
        hint = ""
        if isinstance(obj, dict) and "images" in obj:
            hint = " (a COCO instances file belongs in annotations/instances_<split>.json)"
        raise UserError(f"{path}: not an ML-GCN annotation list: expected {what}, got a JSON {_kind(obj)}{hint}")
    first: dict[str, int] = {}
    records = []
    for i, row in enumerate(obj):
        if not isinstance(row, dict):
            raise UserError(f"{path}: entry [{i}] must be an object with keys file_name, labels, got a JSON "
                            f"{_kind(row)}")
        for key in ("file_name", "labels"):
            if key not in row:
                raise UserError(f"{path}: entry [{i}] has no key {key!r} (expected file_name, labels)")
        fname, labels = row["file_name"], row["labels"]
        if not isinstance(fname, str) or not fname.strip():
            raise UserError(f"{path}: entry [{i}]['file_name'] = {fname!r}; expected a non-empty file name")
        if not isinstance(labels, list):
            raise UserError(f"{path}: entry [{i}]['labels'] = {labels!r}; expected a list of category indices")
        for v in labels:
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n_labels:
                raise UserError(f"{path}: entry [{i}] ({fname}) has label {v!r}; expected an index 0-{n_labels - 1} "
                                f"into {CATEGORY_FILE}")
        if fname in first:
            raise UserError(f"{path}: entry [{i}]: file_name {fname!r} appears twice (first at entry [{first[fname]}])")
        first[fname] = i
        if not labels:
            skipped.add(NO_ANNOTATIONS, fname)
            continue
        pure = PurePosixPath(fname.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            records.append(Record(fname, None, None, "file names outside the image folder",
                                  f"{path.name}[{i}]: {fname}"))
            continue
        row_labels = np.zeros(n_labels, dtype=np.uint8)
        row_labels[labels] = 1
        records.append(Record(fname, images_dir / pure, row_labels, where=f"{path.name}[{i}]"))
    return records


def _find(root: Path, split: str, source: str) -> tuple[str, Path]:
    """(source, folder holding the annotations) for ``split`` (see the module docstring)."""
    phase = split.removesuffix("2014")
    bases = [root] + ([root / "data"] if (root / "data").is_dir() else [])
    if source in ("auto", "instances"):
        for b in bases:
            if (b / "annotations" / f"instances_{split}.json").is_file():
                return "instances", b
    if source in ("auto", "mlgcn"):
        for b in bases:
            if (b / f"{phase}_anno.json").is_file():
                return "mlgcn", b
    where = " and ".join(str(b) for b in bases)
    official = (f"the COCO 2014 instances JSON (annotations/instances_{split}.json from "
                f"annotations_trainval2014.zip)")
    mlgcn = f"ML-GCN's {phase}_anno.json with {CATEGORY_FILE}"
    if source == "mlgcn":
        raise UserError(f"{root / f'{phase}_anno.json'}: annotation file missing; expected {mlgcn} (looked in {where})")
    alt = f" or {mlgcn}" if source == "auto" else ""
    raise UserError(f"{root / 'annotations' / f'instances_{split}.json'}: annotation file missing; expected "
                    f"{official}{alt} (looked in {where})")


def _read(root: Path, split: str, size: int | None, allow_missing: bool, *, source: str,
          cache: bool) -> ImageListDataset:
    """COCO 2014 ``split`` as an :class:`ImageListDataset`.

    Labels in :data:`LABEL_NAMES` order (``source="instances"``) or ``category.json``'s (``"mlgcn"``).
    """
    split = _ALIASES.get(split, split)
    if not root.is_dir():
        raise UserError(f"{root}: folder does not exist; expected a COCO folder with annotations/ and {split}/")
    source, base = _find(root, split, source)
    images_dir = base / split
    skipped = SkipReport()
    if source == "mlgcn":
        anno = base / f"{split.removesuffix('2014')}_anno.json"
        label_names = read_categories(base / CATEGORY_FILE)
        if not images_dir.is_dir():
            raise UserError(f"{images_dir}: image folder missing; expected {split}/<file_name> for the images "
                            f"listed in {anno.name}")
        records = _read_anno(anno, images_dir, len(label_names), skipped)
        log.info("COCO %s: labels from %s", split, anno)
        return build(name="coco", root=base, split=split, records=records, label_names=label_names, size=size,
                     allow_missing=allow_missing, cache=cache, skipped=skipped)

    path = base / "annotations" / f"instances_{split}.json"
    obj = _read_json(path)
    column = _category_index(path, obj["categories"])
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: image folder missing; expected {split}/<file_name> for the images "
                        f"listed in {path.name}")

    labels: dict[int, np.ndarray] = {}
    files: dict[int, str] = {}
    for i, im in enumerate(obj["images"]):
        if im["id"] in files:
            raise UserError(f"{path}: images[{i}]: image id {im['id']} appears twice")
        files[im["id"]] = im["file_name"]
    for i, a in enumerate(obj["annotations"]):
        if a["category_id"] not in column:
            raise UserError(f"{path}: annotations[{i}] has category_id {a['category_id']}, not in categories")
        if a["image_id"] not in files:
            raise UserError(f"{path}: annotations[{i}] has image_id {a['image_id']}, not in images")
        row = labels.get(a["image_id"])
        if row is None:
            row = labels[a["image_id"]] = np.zeros(len(LABEL_NAMES), dtype=np.uint8)
        row[column[a["category_id"]]] = 1

    records = []
    for image_id, fname in files.items():  # the JSON's image order, as ML-GCN's anno lists
        if image_id not in labels:
            skipped.add(NO_ANNOTATIONS, fname)
            continue
        p = images_dir / fname
        if Path(fname).is_absolute() or ".." in Path(fname).parts:
            records.append(Record(fname, None, None, "file names outside the image folder", fname))
        else:
            records.append(Record(fname, p, labels[image_id]))
    log.info("COCO %s: labels from %s", split, path)
    return build(name="coco", root=base, split=split, records=records, label_names=LABEL_NAMES, size=size,
                 allow_missing=allow_missing, cache=cache, skipped=skipped)


# The study's splits: train2014 to train, val2014 to test.
LOADER = register(Loader(
    name="coco", read=_read, size=448, train_split="train2014", test_split="val2014", splits=SPLITS,
    label_names=LABEL_NAMES, sources=SOURCES, options={"cache": False}, doc=__doc__,
))
load = LOADER.load
