import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from engine import data
from engine.config import DemoDataConfig
from engine.data import demo
from engine.errors import UserError


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_demo_is_deterministic(tmp_path):
    cfg = DemoDataConfig(n_train=30, n_test=10, size=16, labels=8, seed=5)
    demo.generate(tmp_path / "a", cfg)
    demo.generate(tmp_path / "b", cfg)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    demo.generate(tmp_path / "c", cfg.replace(seed=6))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    # Changing the training set size leaves the test images alone.
    demo.generate(tmp_path / "d", cfg.replace(n_train=40))
    for f in (tmp_path / "a" / "test").iterdir():
        assert f.read_bytes() == (tmp_path / "d" / "test" / f.name).read_bytes()


def test_demo_reuses_and_never_overwrites(tmp_path):
    cfg = DemoDataConfig(n_train=5, n_test=5, size=16, labels=8)
    _, created = demo.generate(tmp_path / "a", cfg)
    assert created
    _, created = demo.generate(tmp_path / "a", cfg)
    assert not created
    with pytest.raises(UserError, match="different demo data set"):
        demo.generate(tmp_path / "a", cfg.replace(seed=1))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="other files"):
        demo.generate(tmp_path / "other", cfg)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def test_demo_statistics_and_structure(demo_root):
    ds = data.load("demo", root=demo_root, split="train")
    y = ds.labels
    assert 1.2 <= y.sum(1).mean() <= 2.0
    assert (y.sum(1) >= 1).all()
    co = y.T.astype(int) @ y.astype(int)
    np.fill_diagonal(co, 1)
    assert (co == 0).sum() >= 4  # some label pairs never appear together
    assert y.mean(0).max() > 3 * y.mean(0).min()  # imbalanced, like real data sets


def test_loader_reads_the_real_layout(demo_root):
    ds = data.load("demo", root=demo_root, split="test", size=20)
    x, lab = ds[0]
    assert x.shape == (3, 20, 20) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert lab.shape == (8,) and set(lab.tolist()) <= {0.0, 1.0}
    # The PNG on disk is the source: raw size in [size, 2*size], same pixels at native size.
    im = Image.open(ds.paths[0])
    assert 20 <= im.size[0] <= 40 and 20 <= im.size[1] <= 40
    line = (demo_root / "test.csv").read_text().splitlines()[1]
    names = line.split(",", 1)[1].split(";")
    assert sorted(names) == sorted(ds.label_names[j] for j in np.nonzero(ds.labels[0])[0])


def test_label_order_is_mapped_by_name(demo_root):
    ds = data.load("demo", root=demo_root)
    names = list(reversed(ds.label_names))
    ds2 = ds.with_label_order(names)
    assert np.array_equal(ds2.labels, ds.labels[:, ::-1])
    with pytest.raises(UserError, match="missing from the data set"):
        ds.with_label_order(names[:-1] + ["zebra"])


def test_bad_data_dirs(tmp_path, demo_root):
    with pytest.raises(UserError, match="does not exist"):
        data.load("demo", root=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        data.load("demo", root=tmp_path / "empty")
    with pytest.raises(UserError, match="unknown data set"):
        data.load("imagenet", root=tmp_path)
    with pytest.raises(UserError, match=r"size must be in 16\.\.1024, got 8"):
        DemoDataConfig(size=8)


def test_corrupt_image_names_the_file(tmp_path):
    cfg = DemoDataConfig(n_train=3, n_test=3, size=16, labels=8)
    root, _ = demo.generate(tmp_path / "d", cfg)
    bad = root / "test" / "000001.png"
    bad.write_bytes(b"not a png")
    ds = data.load("demo", root=root, cache=False)
    ds[0]
    with pytest.raises(UserError, match="000001.png: cannot decode"):
        ds[1]
    bad.unlink()
    with pytest.raises(UserError, match="000001.png: image listed"):
        data.load("demo", root=root)
