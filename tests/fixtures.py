"""Data set fixtures in the real on-disk formats (nothing is downloaded), one place for every test:

- VOC: a VOCdevkit with per-class txt files and XML annotations (``make_voc``); the classification CSVs
  of ML-GCN and the study's repository (``write_csv``, ``study_voc2007``, ``study_voc2012``);
- COCO 2014: an instances JSON with its gappy category ids (``make_coco``); ML-GCN's annotation lists
  with ``category.json`` (``make_mlgcn``);
- NUS-WIDE: the ASL distribution's ``nus_wid_data.csv`` (``make_nuswide``);
- the demo data set (``engine.data.demo.generate``) and a CSV data set of your own (``make_csv``).

``DATA_WRITERS`` maps every registered data set loader (engine.data.names()) to a writer of a tiny data
set holding each of its declared splits: the loader contract tests (tests/test_contracts.py) load it.
A new loader gets its writer here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from engine.config import DemoDataConfig
from engine.data import coco, demo, voc

# ---------------------------------------------------------------- VOC: the VOCdevkit


def jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (14, 20, 3), dtype=np.uint8)).save(path, format="JPEG", quality=90)


# id -> {class: 1 (a non-difficult object) or 0 (difficult objects only)}; every other class is -1.
VOC2007 = {
    "trainval": {
        "000005": {"chair": 1, "pottedplant": 0},
        "000007": {"car": 1},
        "000009": {"horse": 1, "person": 1, "dog": 0},
        "000012": {"car": 1},
        "000016": {"bicycle": 1},
    },
    "test": {
        "000001": {"dog": 1, "person": 1},
        "000002": {"train": 1},
        "000004": {"car": 1, "person": 0},
    },
}
VOC2012 = {
    "train": {f"2008_{i:06d}": {voc.VOC_CLASSES[i % 20]: 1} for i in (8, 15, 23, 28, 33, 36)},
    "val": {f"2008_{i:06d}": {voc.VOC_CLASSES[i % 20]: 1, "person": 0} for i in (9, 16, 21, 26, 29)},
}


def _voc_xml(key: str, objects: dict[str, int], year: int) -> str:
    objs = []
    for cls, v in objects.items():
        # A present class gets a clear object and a difficult one; a "difficult" class only the latter.
        flags = [0, 1] if v == 1 else [1]
        for d in flags:
            part = "<part><name>head</name><bndbox><xmin>1</xmin></bndbox></part>" if cls == "person" else ""
            objs.append(f"\t<object>\n\t\t<name>{cls}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0"
                        f"</truncated>\n\t\t<difficult>{d}</difficult>\n\t\t<bndbox><xmin>2</xmin><ymin>3</ymin>"
                        f"<xmax>9</xmax><ymax>8</ymax></bndbox>{part}\n\t</object>")
    return (f"<annotation>\n\t<folder>VOC{year}</folder>\n\t<filename>{key}.jpg</filename>\n\t<source>\n"
            f"\t\t<database>The VOC{year} Database</database>\n\t</source>\n\t<size><width>20</width>"
            f"<height>14</height><depth>3</depth></size>\n\t<segmented>0</segmented>\n" + "\n".join(objs)
            + "\n</annotation>\n")


def make_voc(devkit: Path, year: int, splits: dict[str, dict[str, dict[str, int]]]) -> Path:
    base = devkit / f"VOC{year}"
    main = base / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (base / "Annotations").mkdir()
    seed = 0
    for name, samples in splits.items():
        (main / f"{name}.txt").write_text("".join(f"{k}\n" for k in samples))
        for cls in voc.VOC_CLASSES:
            lines = []
            for key, objs in samples.items():
                v = objs.get(cls, -1)
                lines.append(f"{key} -1\n" if v == -1 else f"{key}  {v}\n")  # the real spacing
            (main / f"{cls}_{name}.txt").write_text("".join(lines))
        for key, objs in samples.items():
            (base / "Annotations" / f"{key}.xml").write_text(_voc_xml(key, objs, year))
            jpeg(base / "JPEGImages" / f"{key}.jpg", seed)
            seed += 1
    return base


def expected_labels(samples: dict[str, dict[str, int]], difficult_positive: bool = True) -> np.ndarray:
    out = np.zeros((len(samples), 20), dtype=np.uint8)
    for i, objs in enumerate(samples.values()):
        for cls, v in objs.items():
            if v == 1 or difficult_positive:
                out[i, voc.VOC_CLASSES.index(cls)] = 1
    return out


# ---------------------------------------------------------------- VOC: classification CSVs


def write_csv(path: Path, samples: dict[str, dict[str, int]], names: dict[str, str] | None = None) -> Path:
    """``classification_<split>.csv`` as ML-GCN's write_object_labels_csv writes it (rows in ``samples`` order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["name", *voc.VOC_CLASSES])
        for key, objs in samples.items():
            w.writerow([(names or {}).get(key, key), *(objs.get(c, -1) for c in voc.VOC_CLASSES)])
    return path


def study_voc2007(root: Path, splits: dict[str, dict[str, dict[str, int]]]) -> Path:
    """The study's data/VOC2007: CSVs at the top, images in VOC2007/files/JPEGImages (test: files/test)."""
    seed = 0
    for name, samples in splits.items():
        write_csv(root / voc.csv_name(name), samples)
        images = root / "VOC2007" / "files" / ("test" if name == "test" else "JPEGImages")
        for key in samples:
            jpeg(images / f"{key}.jpg", seed)
            seed += 1
    return root


def study_voc2012(root: Path, splits: dict[str, dict[str, dict[str, int]]]) -> Path:
    """The study's data/VOC2012: CSVs at the top, images in files/JPEGImages."""
    for name, samples in splits.items():
        write_csv(root / voc.csv_name(name), samples)
        for i, key in enumerate(samples):
            jpeg(root / "files" / "JPEGImages" / f"{key}.jpg", 300 + i)
    return root


# ---------------------------------------------------------------- COCO 2014


# COCO val2014 mini: image id -> category ids of its annotations (none for 133).
COCO_IMAGES = {42: [18, 1], 73: [4], 74: [18, 18, 5], 133: [], 136: [90, 1]}


def make_coco(root: Path, split_name: str = "val2014", images: dict[int, list[int]] = COCO_IMAGES) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    imgs, anns = [], []
    for i, (image_id, cats) in enumerate(images.items()):
        fname = f"COCO_{split_name}_{image_id:012d}.jpg"
        imgs.append({"license": 3, "file_name": fname, "coco_url": f"http://images.cocodataset.org/x/{fname}",
                     "height": 14, "width": 20, "date_captured": "2013-11-14 16:28:13", "id": image_id})
        jpeg(root / split_name / fname, 100 + i)
        for c in cats:
            anns.append({"segmentation": [[1.0, 2.0, 8.0, 2.0, 8.0, 9.0]], "area": 42.0, "iscrowd": 0,
                         "image_id": image_id, "bbox": [1.0, 2.0, 7.0, 7.0], "category_id": c,
                         "id": 1000 + len(anns)})
    cats = [{"supercategory": "thing", "id": cid, "name": name} for cid, name in coco.COCO_CATEGORIES.items()]
    doc = {"info": {"description": "COCO 2014 Dataset"}, "images": imgs, "licenses": [], "annotations": anns,
           "categories": cats}
    (root / "annotations" / f"instances_{split_name}.json").write_text(json.dumps(doc))
    return root


ANNO = [
    ("COCO_val2014_000000000136.jpg", ["person", "toothbrush"]),
    ("COCO_val2014_000000000133.jpg", []),
    ("COCO_val2014_000000000042.jpg", ["dog", "person"]),
    ("COCO_val2014_000000000073.jpg", ["motorcycle"]),
]


def make_mlgcn(base: Path, rows=ANNO, order: list[str] | None = None, split_name: str = "val2014") -> Path:
    """ML-GCN's ``<phase>_anno.json`` + ``category.json`` in ``base``, the images in ``base/<split>/``."""
    order = order or list(coco.LABEL_NAMES)
    idx = {n: i for i, n in enumerate(order)}
    base.mkdir(parents=True, exist_ok=True)
    (base / "category.json").write_text(json.dumps(idx))
    entries = [{"file_name": f, "labels": [idx[n] for n in names]} for f, names in rows]
    (base / f"{split_name[:-4]}_anno.json").write_text(json.dumps(entries))
    for i, (f, _) in enumerate(rows):
        jpeg(base / split_name / f, 400 + i)
    return base


# ---------------------------------------------------------------- NUS-WIDE


NUS_ROWS = [
    ("images/0001_2124494179.jpg", "['cat', 'water']", "train"),
    ("images/0002_174174086.jpg", "['sky']", "train"),
    ("images/0003_2386494081.jpg", "['person', 'street', 'town']", "train"),
    ("images/0004_2252010814.jpg", "[]", "train"),
    ("images/0005_1184285312.jpg", "['animal', 'zebra']", "val"),
    ("images/0006_2080893183.jpg", "['airport', 'plane', 'sky']", "val"),
    ("images/0007_1467063393.jpg", "['boats', 'harbor', 'water']", "val"),
    ("images/0008_476617163.jpg", "['clouds', 'sky', 'sunset']", "train"),
]


def make_nuswide(root: Path, rows=NUS_ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "nus_wid_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "label", "split_name"])
        w.writerows(rows)
    for i, (fp, _, _) in enumerate(rows):
        jpeg(root / fp, 200 + i)
    return root


# ---------------------------------------------------------------- your own: the CSV data set

CSV_LABELS = ("cat", "dog", "bird")


def make_csv(root: Path, rows: dict[str, list[tuple[str, ...]]]) -> Path:
    """``labels.csv`` (path,labels,split; labels joined by ';') and a PNG per row: split -> [labels of a row]."""
    lines = [["path", "labels", "split"]]
    for split, samples in rows.items():
        for i, labels in enumerate(samples):
            path = f"img/{split}-{i}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (9 + i, 7), (40 * i, 90, 200)).save(root / path)
            lines.append([path, ";".join(labels), split])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(lines)
    return root


# ---------------------------------------------------------------- one tiny data set per loader


def _voc2007(tmp: Path) -> Path:
    trainval = VOC2007["trainval"]
    keys = list(trainval)
    splits = {**VOC2007, "train": {k: trainval[k] for k in keys[:3]}, "val": {k: trainval[k] for k in keys[3:]}}
    make_voc(tmp / "VOCdevkit", 2007, splits)
    return tmp / "VOCdevkit"


def _voc2012(tmp: Path) -> Path:
    make_voc(tmp / "VOCdevkit", 2012, {**VOC2012, "trainval": {**VOC2012["train"], **VOC2012["val"]}})
    return tmp / "VOCdevkit"


def _coco(tmp: Path) -> Path:
    make_coco(tmp / "coco", "train2014", {9: [1, 62], 25: [25], 30: [64, 86]})
    return make_coco(tmp / "coco", "val2014")


def _demo(tmp: Path) -> Path:
    return demo.generate(tmp / "demo", DemoDataConfig(n_train=5, n_test=4, size=16, labels=8, seed=1))[0]


def _csv(tmp: Path) -> Path:
    return make_csv(tmp / "own", {"train": [("cat",), ("dog", "bird")], "test": [("bird",), (), ("cat", "dog")]})


# Data set name -> writer(folder) -> the root to load it from.
DATA_WRITERS: dict[str, Callable[[Path], Path]] = {
    "demo": _demo,
    "voc2007": _voc2007,
    "voc2012": _voc2012,
    "coco": _coco,
    "nuswide": lambda tmp: make_nuswide(tmp / "nus"),
    "csv": _csv,
}
