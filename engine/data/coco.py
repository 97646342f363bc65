"""MS-COCO 2014 as a multi-label data set, from the official files (nothing is downloaded).

Layout (as the official zips extract)::

    ROOT/annotations/instances_train2014.json
    ROOT/annotations/instances_val2014.json
    ROOT/train2014/COCO_train2014_000000000009.jpg
    ROOT/val2014/COCO_val2014_000000000042.jpg

An image's labels are the categories of all its instance annotations (crowd ones included, as ML-GCN
does). Label order: the 80 category *names sorted alphabetically* (airplane 0, apple 1, ...), the order
of ML-GCN's ``category.json`` and so of its released COCO checkpoint; category ids (1-90, with gaps)
are only used to join annotations to names. The categories must be exactly COCO's 80.

Images without any annotation are dropped, as the ML-GCN loader does (val2014: 40,504 -> 40,137
images): that is the benchmark's definition, so they are counted in ``.skipped`` as
:data:`engine.data.split.NO_ANNOTATIONS` but never block a run. Listed images whose file is missing
do block it, unless ``allow_missing``.

Splits: ``train2014`` (the study's train) and ``val2014`` (its test); ``train`` / ``val`` are aliases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.base import ImageListDataset, SkipReport
from engine.data.split import NO_ANNOTATIONS, Record, build, check_split
from engine.errors import UserError

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
        raise UserError(f"{path}: expected a JSON object with keys images, annotations, categories")
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


def load(
    root: str | Path,
    split: str = "val2014",
    size: int | None = 448,
    allow_missing: bool = False,
    *,
    cache: bool = False,
) -> ImageListDataset:
    """COCO 2014 ``split`` as an :class:`ImageListDataset` (labels in :data:`LABEL_NAMES` order)."""
    check_split("coco", split, SPLITS)
    split = _ALIASES.get(split, split)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: folder does not exist; expected a COCO folder with annotations/ and {split}/")
    path = root / "annotations" / f"instances_{split}.json"
    obj = _read_json(path)
    column = _category_index(path, obj["categories"])
    images_dir = root / split
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

    skipped = SkipReport()
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
    return build(name="coco", root=root, split=split, records=records, label_names=LABEL_NAMES, size=size,
                 allow_missing=allow_missing, cache=cache, skipped=skipped)
