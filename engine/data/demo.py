"""The embedded demo data set: procedurally drawn multi-label images, no download.

Each label is a (shape, colour family) pair, e.g. ``red_circle``. An image holds 1-3 objects
drawn at a random position and scale, with the colour jittered inside its family, over a smooth
random background with clutter (thin strokes and dots in *any* colour, class colours included, so
that colour alone does not give the label away) and pixel noise. A CNN has to find the shapes.

Label co-occurrence has real structure, so ML-GCN's label graph has something to learn:
labels fall into "scenes" of four; a second or third object comes from the first one's scene
with probability 0.7; labels of neighbouring scenes never appear together; label frequencies are
Zipf-like. With P(1, 2, 3 objects) = (0.6, 0.3, 0.1) the mean is about 1.5 labels per image
(the study's data sets: 1.2-1.6).

Layout on disk (``sml data demo --out DIR``)::

    DIR/dataset.json      {"format": "showmanylabels-demo", "version": 1, "config": {...},
                           "label_names": [...], "splits": {"train": N, "test": M}}
    DIR/train.csv         filename,labels   (labels: label names joined by ';')
    DIR/test.csv
    DIR/train/000000.png  RGB PNG, width and height each in [size, 2*size]
    DIR/test/000000.png

Determinism: every image is drawn from its own generator seeded by (seed, split, index), and
PNGs are written with fixed encoder settings, so the same config gives the same bytes, and
changing ``n_train`` does not change the test images.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from engine.config import DemoDataConfig
from engine.data.base import ImageListDataset
from engine.data.loader import Loader, register
from engine.errors import UserError
from engine.util import umask_mode

FORMAT = "showmanylabels-demo"
VERSION = 1
SPLITS = ("train", "test")
SPLIT_IDS = {"train": 1, "test": 2}
SCENE = 4  # labels per scene (co-occurrence group)

# Hue in degrees, saturation, value: families far enough apart that jitter never crosses over.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0, 0.85, 0.9),
    "green": (120, 0.8, 0.75),
    "blue": (230, 0.85, 0.9),
    "yellow": (55, 0.85, 0.95),
    "magenta": (300, 0.75, 0.85),
    "cyan": (180, 0.8, 0.85),
    "orange": (28, 0.9, 0.95),
    "purple": (270, 0.7, 0.6),
    "white": (0, 0.0, 0.97),
    "black": (0, 0.0, 0.08),
}


def _circle(dx, dy, r):
    return dx * dx + dy * dy <= r * r


def _square(dx, dy, r):
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r


def _triangle(dx, dy, r):  # apex up
    return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.55)


def _cross(dx, dy, r):
    ax, ay = np.abs(dx), np.abs(dy)
    return ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r))


def _ring(dx, dy, r):
    d2 = dx * dx + dy * dy
    return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)


def _diamond(dx, dy, r):
    return np.abs(dx) + np.abs(dy) <= r


def _bar(dx, dy, r):
    return (np.abs(dy) <= r / 3.5) & (np.abs(dx) <= r)


def _star(dx, dy, r):
    theta = np.arctan2(dy, dx)
    return np.hypot(dx, dy) <= r * (0.6 + 0.4 * np.cos(5 * theta + np.pi / 2))


SHAPES: dict[str, Callable[..., np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "diamond": _diamond,
    "bar": _bar,
    "star": _star,
}


def label_names(num_labels: int) -> list[str]:
    """``colour_shape`` names; the grid is as square as possible (20 -> 5 shapes x 4 colours)."""
    n_shapes = min(len(SHAPES), max(4, math.ceil(math.sqrt(num_labels))))
    n_colours = math.ceil(num_labels / n_shapes)
    if n_colours > len(COLOURS):
        raise UserError(f"labels must be <= {len(SHAPES) * len(COLOURS)}, got {num_labels}")
    shapes, colours = list(SHAPES)[:n_shapes], list(COLOURS)[:n_colours]
    return [f"{c}_{s}" for c in colours for s in shapes][:num_labels]


class _Structure:
    """Label frequencies, scenes and exclusions, fixed by the seed."""

    def __init__(self, num_labels: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.num_labels = num_labels
        perm = rng.permutation(num_labels)
        freq = 1.0 / (np.arange(num_labels) + 1.0) ** 0.7
        self.freq = np.empty(num_labels)
        self.freq[perm] = freq / freq.sum()
        order = rng.permutation(num_labels)
        self.scene = np.empty(num_labels, dtype=int)
        self.scene[order] = np.arange(num_labels) // SCENE
        n_scenes = int(self.scene.max()) + 1
        # Neighbouring scenes (s, s+1) exclude each other: pairs that never co-occur.
        self.forbidden = np.zeros((num_labels, num_labels), dtype=bool)
        if n_scenes >= 2:
            for s in range(0, n_scenes - 1, 2):
                a, b = self.scene == s, self.scene == s + 1
                self.forbidden |= np.outer(a, b) | np.outer(b, a)

    def sample(self, rng: np.random.Generator) -> list[int]:
        k = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
        chosen = [int(rng.choice(self.num_labels, p=self.freq))]
        while len(chosen) < k:
            allowed = ~self.forbidden[chosen].any(axis=0)
            allowed[chosen] = False
            if rng.random() < 0.7:
                same = allowed & (self.scene == self.scene[chosen[0]])
                if same.any():
                    allowed = same
            if not allowed.any():
                break
            w = self.freq * allowed
            chosen.append(int(rng.choice(self.num_labels, p=w / w.sum())))
        return chosen


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    h = (h % 360) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return np.array(rgb) + (v - c)


def _jitter_colour(name: str, rng: np.random.Generator) -> np.ndarray:
    h, s, v = COLOURS[name]
    if s == 0:  # white / black: vary brightness only
        return np.full(3, np.clip(v + rng.uniform(-0.06, 0.06), 0, 1))
    return _hsv_to_rgb(h + rng.uniform(-12, 12), s * rng.uniform(0.8, 1.0), v * rng.uniform(0.8, 1.0))


def _render(labels: list[int], names: list[str], size: int, rng: np.random.Generator) -> tuple:
    w, h = (int(v) for v in rng.integers(size, 2 * size + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Background: a smooth, desaturated gradient between two random greys-with-a-tint.
    c0 = rng.uniform(0.25, 0.75) + rng.uniform(-0.08, 0.08, 3)
    c1 = rng.uniform(0.25, 0.75) + rng.uniform(-0.08, 0.08, 3)
    ang = rng.uniform(0, 2 * np.pi)
    t = ((xx / w - 0.5) * np.cos(ang) + (yy / h - 0.5) * np.sin(ang) + 0.5).clip(0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    # Clutter: thin strokes and dots in any colour (class colours included).
    palette = list(COLOURS)
    for _ in range(int(rng.integers(2, 6))):
        col = _jitter_colour(palette[int(rng.integers(len(palette)))], rng)
        if rng.random() < 0.5:
            x0, y0, x1, y1 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)
            n = np.array([y1 - y0, x0 - x1])
            n /= max(np.linalg.norm(n), 1e-9)
            dist = np.abs((xx - x0) * n[1] + (yy - y0) * n[0])
            seg = ((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0)) / max((x1 - x0) ** 2 + (y1 - y0) ** 2, 1e-9)
            mask = (dist <= 0.6) & (seg >= 0) & (seg <= 1)
        else:
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.8, 1.6)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img[mask] = col
    # Objects: keep their boxes from overlapping much so that each stays recognisable.
    boxes: list[tuple[float, float, float]] = []
    drawn: list[int] = []
    side = min(w, h)
    for lab in labels:
        colour, shape = names[lab].split("_", 1)
        for _ in range(20):
            r = rng.uniform(0.17, 0.3) * side
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            if all(abs(cx - bx) > 0.8 * (r + br) or abs(cy - by) > 0.8 * (r + br) for bx, by, br in boxes):
                break
        else:
            continue  # no room: the object is not drawn, so it is not labelled either
        mask = SHAPES[shape](xx - cx, yy - cy, r)
        img[mask] = _jitter_colour(colour, rng)
        boxes.append((cx, cy, r))
        drawn.append(lab)
    img = img + rng.normal(0, 0.035, img.shape)
    return (img.clip(0, 1) * 255 + 0.5).astype(np.uint8), sorted(drawn)


def _generate_split(out: Path, split: str, n: int, cfg: DemoDataConfig, names: list[str], progress=None):
    struct = _Structure(cfg.labels, cfg.seed)
    (out / split).mkdir()
    rows = []
    for i in range(n):
        rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], i])
        arr, drawn = _render(struct.sample(rng), names, cfg.size, rng)
        fname = f"{i:06d}.png"
        Image.fromarray(arr).save(out / split / fname, format="PNG", compress_level=6, optimize=False)
        rows.append((fname, ";".join(names[j] for j in drawn)))
        if progress is not None:
            progress(1)
    with open(out / f"{split}.csv", "w", newline="") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["filename", "labels"])
        wr.writerows(rows)


def _read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        return None


def generate(out: str | Path, cfg: DemoDataConfig, *, progress=None) -> tuple[Path, bool]:
    """Write the demo data set to ``out``; returns (path, created).

    An ``out`` that already holds the same demo data set is reused (created = False). Anything else
    already there is an error: nothing is overwritten. The set is built in a temporary sibling
    folder and renamed into place, so an interrupted run never leaves a half-written data set.
    """
    out = Path(out)
    names = label_names(cfg.labels)
    if out.exists():
        meta = _read_meta(out)
        if meta is not None and meta.get("format") == FORMAT and meta.get("config") == cfg.to_dict():
            return out, False
        if not out.is_dir() or any(out.iterdir()):
            what = "a different demo data set" if meta and meta.get("format") == FORMAT else "other files"
            raise UserError(f"{out}: --out already exists and holds {what}; choose an empty or new folder")
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(umask_mode(directory=True))  # mkdtemp's 0700 would hide it from colleagues
        for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
            _generate_split(tmp, split, n, cfg, names, progress)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "config": cfg.to_dict(),
            "label_names": names,
            "splits": {"train": cfg.n_train, "test": cfg.n_test},
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, True


def _read(root: Path, split: str, size: int | None, allow_missing: bool, *, cache: bool) -> ImageListDataset:
    """Read a demo data set written by :func:`generate` (a split's CSV + PNG files). Nothing is ever
    skipped (``allow_missing`` changes nothing): :func:`generate` writes a data set whole or not at all."""
    if not root.is_dir():
        raise UserError(f"{root}: demo data directory does not exist (create it with `sml data demo --out`)")
    meta = _read_meta(root)
    if meta is None:
        if not any(root.iterdir()):
            raise UserError(f"{root}: demo data directory is empty (expected dataset.json, *.csv, images)")
        raise UserError(f"{root}/dataset.json: missing or not valid JSON; expected a demo data set")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(
            f"{root}/dataset.json: format {meta.get('format')!r} v{meta.get('version')} is not "
            f"{FORMAT!r} v{VERSION}"
        )
    names = meta["label_names"]
    index = {n: j for j, n in enumerate(names)}
    csv_path = root / f"{split}.csv"
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        raise UserError(f"{csv_path}: split file missing") from None
    paths, labels = [], np.zeros((len(rows), len(names)), dtype=np.uint8)
    for i, row in enumerate(rows):
        if "filename" not in row or "labels" not in row:
            raise UserError(f"{csv_path}: expected columns 'filename,labels'")
        for lab in filter(None, row["labels"].split(";")):
            if lab not in index:
                raise UserError(f"{csv_path}, row {i + 2}: unknown label {lab!r}")
            labels[i, index[lab]] = 1
        p = root / split / row["filename"]
        if not p.is_file():
            raise UserError(f"{p}: image listed in {csv_path.name} does not exist")
        paths.append(p)
    return ImageListDataset(
        name="demo", root=root, split=split, paths=paths, labels=labels, label_names=names, size=size, cache=cache
    )


LOADER = register(Loader(
    name="demo", read=_read, size=32, train_split="train", test_split="test", splits=SPLITS,
    options={"cache": True},  # 5,000 images of 32 px: decoded once, kept in memory (about 60 MB)
    doc=__doc__,
))
load = LOADER.load
