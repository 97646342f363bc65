"""Real data set loaders (VOC, COCO 2014, NUS-WIDE), the study's splits and ML-GCN's released checkpoints.

Every fixture is in the exact on-disk format of the real files (nothing is downloaded): a VOCdevkit with
per-class txt files and XML annotations, a COCO 2014 instances JSON with its gappy category ids, the ASL
distribution's ``nus_wid_data.csv`` (their writers are in tests/fixtures.py), and an ML-GCN checkpoint with
the repository's key names and ResNet-101 shapes, saved as old torch and numpy 1.x wrote it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import shutil
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fixtures import NUS_ROWS, VOC2007, VOC2012, expected_labels, make_coco, make_nuswide, make_voc

from engine import data, models
from engine.data import coco, nuswide, split, voc
from engine.errors import UserError
from engine.models import checkpoints
from engine.models.evaluate import dataset_for, evaluate
from engine.models.mlgcn import correlation_matrix

# ---------------------------------------------------------------- fixtures in the real formats


@pytest.fixture
def voc2007(tmp_path) -> Path:
    make_voc(tmp_path / "VOCdevkit", 2007, VOC2007)
    return tmp_path / "VOCdevkit"


@pytest.fixture(scope="module")
def voc2007_shared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit"
    make_voc(root, 2007, VOC2007)
    return root


@pytest.fixture
def voc2012(tmp_path) -> Path:
    make_voc(tmp_path / "VOCdevkit", 2012, VOC2012)
    return tmp_path / "VOCdevkit"


# ---------------------------------------------------------------- VOC


def test_voc2007_txt_labels_difficult_positive_and_both_roots(voc2007):
    ds = data.load("voc2007", root=voc2007, split="trainval")
    assert ds.name == "voc2007" and ds.label_names == list(voc.VOC_CLASSES)
    assert [p.name for p in ds.paths] == [f"{k}.jpg" for k in VOC2007["trainval"]]
    np.testing.assert_array_equal(ds.labels, expected_labels(VOC2007["trainval"]))
    assert ds.labels[0, voc.VOC_CLASSES.index("pottedplant")] == 1  # "000005  0" (difficult) -> positive
    assert ds.skipped.total == 0
    # The VOC2007 folder itself works as root too.
    same = data.load("voc2007", root=voc2007 / "VOC2007", split="trainval")
    np.testing.assert_array_equal(same.labels, ds.labels)
    neg = voc.load(voc2007, split="trainval", difficult="negative")
    np.testing.assert_array_equal(neg.labels, expected_labels(VOC2007["trainval"], difficult_positive=False))
    # Default split and the study's 448 x 448 input size.
    test = data.load("voc2007", root=voc2007)
    assert test.split == "test" and len(test) == 3 and test.size == 448
    x, y = test[0]
    assert x.shape == (3, 448, 448) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == expected_labels(VOC2007["test"])[0].tolist()


def test_voc_xml_labels_match_txt_and_auto_falls_back(voc2007):
    main = voc2007 / "VOC2007" / "ImageSets" / "Main"
    for difficult in ("positive", "negative"):
        a = voc.load(voc2007, split="trainval", source="txt", difficult=difficult)
        b = voc.load(voc2007, split="trainval", source="xml", difficult=difficult)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.paths == b.paths
    for p in main.glob("*_trainval.txt"):
        p.unlink()
    c = voc.load(voc2007, split="trainval")  # auto: no class files left -> Annotations/*.xml
    np.testing.assert_array_equal(c.labels, expected_labels(VOC2007["trainval"]))
    with pytest.raises(UserError, match="aeroplane_trainval.txt: class label file missing"):
        voc.load(voc2007, split="trainval", source="txt")


def test_voc_missing_folders_name_the_path(voc2007, tmp_path):
    base = voc2007 / "VOC2007"
    shutil.rmtree(base / "Annotations")
    with pytest.raises(UserError, match=r"Annotations: annotation folder missing"):
        voc.load(voc2007, split="trainval", source="xml")
    shutil.rmtree(base / "ImageSets")
    with pytest.raises(UserError, match=r"VOC2007: no labels for split 'trainval'.*Annotations"):
        voc.load(voc2007, split="trainval")
    with pytest.raises(UserError, match="neither a VOCdevkit folder"):
        voc.load(tmp_path, split="test")
    with pytest.raises(UserError, match="does not exist"):
        voc.load(tmp_path / "nowhere", split="test")
    with pytest.raises(UserError, match="unknown split 'val2'.*valid: trainval, test"):
        data.load("voc2007", root=voc2007, split="val2")


def test_voc_listed_image_missing_blocks_unless_allowed(voc2007):
    (voc2007 / "VOC2007" / "JPEGImages" / "000007.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of 5 listed samples cannot be used: 1 image files missing.*000007\.jpg"
                                        r".*allow_missing"):
        data.load("voc2007", root=voc2007, split="trainval")
    ds = data.load("voc2007", root=voc2007, split="trainval", allow_missing=True)
    assert len(ds) == 4 and ds.skipped.reasons == {"image files missing": 1}
    assert "000007.jpg" not in {p.name for p in ds.paths}


def test_voc_unreadable_line_and_class_mismatch(voc2007):
    main = voc2007 / "VOC2007" / "ImageSets" / "Main"
    f = main / "cat_trainval.txt"
    f.write_text(f.read_text().replace("000012 -1", "000012 maybe"))
    with pytest.raises(UserError, match="unreadable label lines"):
        voc.load(voc2007, split="trainval")
    ds = voc.load(voc2007, split="trainval", allow_missing=True)
    assert len(ds) == 4 and ds.skipped.reasons == {"unreadable label lines": 1}
    assert ds.skipped.examples["unreadable label lines"] == ["cat_trainval.txt:4"]
    (main / "unicorn_trainval.txt").write_text("000005 -1\n")
    with pytest.raises(UserError, match="unicorn.*class list mismatch"):
        voc.load(voc2007, split="trainval")
    xml = voc2007 / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<name>train</name>", "<name>tram</name>"))
    with pytest.raises(UserError, match=r"000002\.xml: object class 'tram'.*class list mismatch"):
        voc.load(voc2007, split="test", source="xml")


def test_voc2012_study_split(voc2012):
    pool = [*VOC2012["train"], *VOC2012["val"]]
    tr = data.load("voc2012", root=voc2012, split="study-train")
    te = data.load("voc2012", root=voc2012)  # the default: the study's test split
    assert te.split == "study-test"
    keys_tr, keys_te = {p.stem for p in tr.paths}, {p.stem for p in te.paths}
    assert not keys_tr & keys_te and keys_tr | keys_te == set(pool)
    n_test = math.floor(0.2 * len(pool) + 0.5)
    assert len(keys_te) == n_test == 2
    # The documented procedure, recomputed here from its description.
    ranked = sorted(pool, key=lambda k: (hashlib.sha256(f"0:{k}".encode()).hexdigest(), k))
    assert keys_te == set(ranked[:n_test])
    assert {p.stem for p in voc.load(voc2012, split="study-test", year=2012, seed=1).paths} == set(
        sorted(pool, key=lambda k: (hashlib.sha256(f"1:{k}".encode()).hexdigest(), k))[:n_test])
    # Labels follow their images; the official splits stay addressable.
    full = {p.stem: y for s in ("train", "val") for ds in [data.load("voc2012", root=voc2012, split=s)]
            for p, y in zip(ds.paths, ds.labels)}
    for p, y in zip(te.paths, te.labels):
        np.testing.assert_array_equal(y, full[p.stem])
    assert len(data.load("voc2012", root=voc2012, split="val")) == 5
    # A missing image does not move any other sample across the split.
    gone = sorted(keys_tr)[0]
    (voc2012 / "VOC2012" / "JPEGImages" / f"{gone}.jpg").unlink()
    tr2 = data.load("voc2012", root=voc2012, split="study-train", allow_missing=True)
    te2 = data.load("voc2012", root=voc2012, split="study-test")
    assert {p.stem for p in tr2.paths} == keys_tr - {gone} and {p.stem for p in te2.paths} == keys_te
    assert tr2.skipped.reasons == {"image files missing": 1}


def test_split_procedure_properties():
    keys = [f"images/{i:04d}.jpg" for i in range(37)]
    t = split.draw_test_keys(keys, seed=0)
    assert len(t) == 7 and t <= set(keys)  # floor(7.4 + 0.5)
    assert split.draw_test_keys(list(reversed(keys)) + keys[:5], seed=0) == t  # order and duplicates
    assert len({frozenset(split.draw_test_keys(keys, seed=s)) for s in range(4)}) > 1
    mask = split.study_mask(keys, "study-test")
    assert mask.sum() == 7 and (~split.study_mask(keys, "study-train") == mask).all()


# ---------------------------------------------------------------- COCO


def test_coco_labels_alphabetical_and_no_annotation_images_dropped(tmp_path):
    root = make_coco(tmp_path / "coco")
    ds = data.load("coco", root=root)  # default split val2014, no error for the empty image
    assert ds.split == "val2014" and ds.size == 448 and len(ds) == 4
    assert ds.label_names == sorted(coco.COCO_CATEGORIES.values()) and ds.label_names[:2] == ["airplane", "apple"]
    assert ds.skipped.reasons == {split.NO_ANNOTATIONS: 1}
    assert ds.skipped.examples[split.NO_ANNOTATIONS] == ["COCO_val2014_000000000133.jpg"]
    names = [[ds.label_names[j] for j in np.flatnonzero(row)] for row in ds.labels]
    assert names == [["dog", "person"], ["motorcycle"], ["airplane", "dog"], ["person", "toothbrush"]]
    assert [p.name for p in ds.paths][0] == "COCO_val2014_000000000042.jpg"
    assert len(coco.load(root, split="val")) == 4


def test_coco_missing_image_and_bad_files(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of 4 listed samples cannot be used: 1 image files missing"):
        coco.load(root, split="val2014")
    ds = coco.load(root, split="val2014", allow_missing=True)
    assert len(ds) == 3 and ds.skipped.reasons == {split.NO_ANNOTATIONS: 1, "image files missing": 1}
    with pytest.raises(UserError, match=r"instances_train2014\.json: annotation file missing"):
        coco.load(root, split="train2014")

    path = root / "annotations" / "instances_val2014.json"
    good = json.loads(path.read_text())

    def write(doc):
        path.write_text(json.dumps(doc))

    write({k: v for k, v in good.items() if k != "categories"})
    with pytest.raises(UserError, match=r"instances_val2014\.json: missing key 'categories'"):
        coco.load(root)
    bad = json.loads(json.dumps(good))
    del bad["images"][1]["file_name"]
    write(bad)
    with pytest.raises(UserError, match=r"instances_val2014\.json: images\[1\] has no key 'file_name'"):
        coco.load(root)
    bad = json.loads(json.dumps(good))
    bad["annotations"][0]["category_id"] = "18"
    write(bad)
    with pytest.raises(UserError, match=r"annotations\[0\]\['category_id'\] = '18' must be int"):
        coco.load(root)
    bad = json.loads(json.dumps(good))
    bad["categories"][0]["name"] = "human"
    write(bad)
    with pytest.raises(UserError, match=r"class list mismatch.*unknown \['human'\], missing \['person'\]"):
        coco.load(root)
    bad = json.loads(json.dumps(good))
    bad["categories"] = bad["categories"][:20]
    write(bad)
    with pytest.raises(UserError, match="20 categories"):
        coco.load(root)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        coco.load(root)


# ---------------------------------------------------------------- NUS-WIDE


def test_nuswide_tags_and_official_splits(tmp_path):
    assert len(nuswide.TAGS) == 81 and list(nuswide.TAGS) == sorted(nuswide.TAGS)
    root = make_nuswide(tmp_path / "nus")
    tr = nuswide.load(root, split="train")
    assert len(tr) == 5 and tr.label_names == list(nuswide.TAGS)
    names = [[tr.label_names[j] for j in np.flatnonzero(row)] for row in tr.labels]
    assert names == [["cat", "water"], ["sky"], ["person", "street", "town"], [], ["clouds", "sky", "sunset"]]
    assert tr.paths[0] == root / "images" / "0001_2124494179.jpg"
    te = data.load("nuswide", root=root)
    st = data.load("nuswide", root=root, split="study-train")
    assert te.split == "study-test" and len(te) == 2 and len(st) == 6  # floor(0.2 * 8 + 0.5) = 2
    assert not {p.name for p in te.paths} & {p.name for p in st.paths}
    with pytest.raises(UserError, match="unknown split 'test'.*valid: study-train, study-test, train, val"):
        nuswide.load(root, split="test")
    # The CSV's own name may not leave the data root either (its rows already may not).
    (tmp_path / "outside.csv").write_text((root / nuswide.CSV_NAME).read_text())
    for bad in ("../outside.csv", str(tmp_path / "outside.csv")):
        with pytest.raises(UserError, match="expected a file name inside the data root"):
            nuswide.load(root, split="train", csv_name=bad)


def test_nuswide_malicious_label_is_rejected_not_run(tmp_path):
    marker = tmp_path / "pwned"
    rows = [*NUS_ROWS,
            ("images/0100_1.jpg", f"__import__('os').system('touch {marker}')", "train"),
            ("images/0101_2.jpg", "'person'", "val"),  # a literal, but not a list
            ("images/0102_3.jpg", "[1, 2]", "val")]
    root = make_nuswide(tmp_path / "nus", rows)
    with pytest.raises(UserError, match=r"1 of 6 listed samples cannot be used: 1 unreadable labels"):
        nuswide.load(root, split="train")
    with pytest.raises(UserError, match=r"2 of 5 listed samples cannot be used: 2 unreadable labels"):
        nuswide.load(root, split="val")
    a = nuswide.load(root, split="study-train", allow_missing=True)
    b = nuswide.load(root, split="study-test", allow_missing=True)
    assert a.skipped.total + b.skipped.total == 3 and len(a) + len(b) == 8
    assert not marker.exists()
    assert nuswide.parse_label("__import__('os').system('x')") is None
    assert nuswide.parse_label("['a', 'b']") == ["a", "b"]


def test_nuswide_bad_files(tmp_path):
    root = make_nuswide(tmp_path / "nus", [*NUS_ROWS, ("images/0009_1.jpg", "['sky', 'unicorns']", "val")])
    with pytest.raises(UserError, match=r"nus_wid_data\.csv, line 10: tag\(s\) \['unicorns'\].*class list mismatch"):
        nuswide.load(root)
    (root / "nus_wid_data.csv").write_text("path,labels\nimages/a.jpg,['sky']\n")
    with pytest.raises(UserError, match="missing column.*filepath, label, split_name"):
        nuswide.load(root)
    (root / "nus_wid_data.csv").unlink()
    with pytest.raises(UserError, match=r"nus_wid_data\.csv: file missing"):
        nuswide.load(root)
    root = make_nuswide(tmp_path / "nus2", NUS_ROWS)
    (root / NUS_ROWS[0][0]).unlink()
    with pytest.raises(UserError, match="image files missing"):
        nuswide.load(root, split="train")
    assert len(nuswide.load(root, split="train", allow_missing=True)) == 4


# ---------------------------------------------------------------- ML-GCN's released checkpoints

_FEATURES = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def _counts(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = (rng.random((300, n)) < rng.uniform(0.05, 0.4, n)).astype(np.float64)
    adj = y.T @ y
    nums = np.diag(adj).copy()
    np.fill_diagonal(adj, 0)  # as in ML-GCN's *_adj.pkl
    return y, adj, nums


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """An ML-GCN VOC checkpoint as released: old torch format, DataParallel prefix, no BN counters,
    a numpy-1.x best_score; its GloVe and adjacency pickles beside it."""
    folder = tmp_path_factory.mktemp("mlgcn")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = torchvision.models.resnet101(weights=None).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so every buffer's mapping matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.05)
                m.running_var.uniform_(0.8, 1.2)
    sd = OrderedDict()
    for k, v in net.state_dict().items():
        head, rest = k.split(".", 1)
        if head != "fc" and not k.endswith("num_batches_tracked"):
            sd[f"module.features.{_FEATURES[head]}.{rest}"] = v
    _, adj, nums = _counts(20, rng)
    a = torch.from_numpy(checkpoints.correlation_from_counts(adj, nums))
    gc1 = torch.empty(300, 1024).uniform_(-1 / 32, 1 / 32)
    gc2 = torch.empty(1024, 2048).uniform_(-1 / math.sqrt(2048), 1 / math.sqrt(2048))
    sd["module.A"], sd["module.gc1.weight"], sd["module.gc2.weight"] = a, gc1, gc2
    buf = io.BytesIO()
    torch.save({"epoch": 20, "arch": "resnet101", "state_dict": sd, "best_score": np.float64(94.0)}, buf,
               _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    # numpy 1.x spelled the scalar's module numpy.core.multiarray (protocol-2 GLOBAL opcodes are text).
    assert raw.count(b"cnumpy._core.multiarray\nscalar\n") == 1
    raw = raw.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
    (folder / "voc_checkpoint.pth.tar").write_bytes(raw)
    emb = rng.standard_normal((20, 300)).astype(np.float32)
    with open(folder / "voc_glove_word2vec.pkl", "wb") as f:
        pickle.dump(emb, f)
    with open(folder / "voc_adj.pkl", "wb") as f:
        pickle.dump({"adj": adj.astype(np.int64), "nums": nums.astype(np.int64)}, f)
    return {"path": folder / "voc_checkpoint.pth.tar", "net": net, "emb": emb, "A": a, "gc1": gc1, "gc2": gc2,
            "adj": adj, "nums": nums}


def _reference_logits(release, x: torch.Tensor) -> torch.Tensor:
    """ML-GCN's forward, written out from the repository's description on the torchvision network."""
    net = release["net"]
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    h = (x - mean) / std
    for layer in (net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4):
        h = layer(h)
    feat = torch.nn.MaxPool2d(14, 14)(h).flatten(1)  # the repository's fixed pool, global at 448 px
    a = release["A"]
    d = torch.diag(a.sum(1).pow(-0.5))
    adj = (a @ d).t() @ d
    emb = torch.from_numpy(release["emb"])
    w = adj @ (torch.nn.functional.leaky_relu(adj @ (emb @ release["gc1"]), 0.2) @ release["gc2"])
    return feat @ w.t()


def test_release_checkpoint_loads_and_matches_the_repository_forward(release):
    ck = checkpoints.read(release["path"])  # embedding found beside it
    assert ck["model"]["family"] == "mlgcn" and ck["model"]["backbone"] == "resnet101"
    assert ck["model"]["input_size"] == 448 and ck["model"]["normalization"] == "imagenet"
    assert ck["label_names"] == list(voc.VOC_CLASSES) and ck["dataset"]["name"] is None
    assert ck["source"]["best_score"] == 94.0 and ck["epoch"] == 20
    assert "features.1.num_batches_tracked" in ck["state_dict"] and not any(k.startswith("module.")
                                                                            for k in ck["state_dict"])
    model = models.from_checkpoint(ck)
    assert model.label_names == list(voc.VOC_CLASSES)
    x = torch.rand(1, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(x), _reference_logits(release, x)
    assert ours.shape == (1, 20) and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_release_checkpoint_evaluates_on_voc(release, voc2007_shared):
    res = evaluate(release["path"], dataset="voc2007", root=voc2007_shared, split="test")
    assert res["dataset"] == "voc2007" and res["backbone"] == "resnet101"
    assert 0 <= res["hamming_loss"] <= 1


def test_release_checkpoint_errors(release, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    link = other / "voc_checkpoint.pth.tar"
    os.symlink(release["path"], link)  # the checkpoint without its embedding beside it
    with pytest.raises(UserError, match=r"needs its label embedding.*voc_glove_word2vec\.pkl"):
        checkpoints.read(link)
    emb = tmp_path / "mine.pkl"
    with open(emb, "wb") as f:
        pickle.dump(np.zeros((80, 300), np.float32), f)
    with pytest.raises(UserError, match=r"mine\.pkl: embedding shape \(80, 300\); expected \(20, E\)"):
        checkpoints.read(link, embedding=emb)
    with open(emb, "wb") as f:
        pickle.dump(release["emb"], f)
    ck = checkpoints.read(link, embedding=emb, label_names=[f"l{i}" for i in range(20)])
    assert ck["label_names"][0] == "l0" and ck["model"]["embedding"] == str(emb)
    with pytest.raises(UserError, match="checkpoint has 20 labels but 3 label names were given"):
        checkpoints.read(link, embedding=emb, label_names=["a", "b", "c"])
    # A data set with another label count: the error names the checkpoint and both counts.
    coco_root = make_coco(tmp_path / "coco")
    with pytest.raises(UserError, match=r"voc_checkpoint\.pth\.tar: checkpoint has 20 labels but data set "
                                        r"'coco'.* has 80"):
        dataset_for(ck, "coco", coco_root, "val2014", link)


def test_unsafe_pickles_are_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"A": torch.zeros(2, 2)}, "x": Evil()}, tmp_path / "evil.pth.tar")
    with pytest.raises(UserError, match="safe weights-only loader.*trust_pickle"):
        checkpoints.read(tmp_path / "evil.pth.tar")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(UserError, match="not a pickle of numpy arrays"):
        checkpoints.read_adj_pickle(tmp_path / "evil.pkl")
    with pytest.raises(UserError, match="not a pickle of numpy arrays"):
        checkpoints.load_embedding(tmp_path / "evil.pkl", 20)
    assert not marker.exists()
    # trust_pickle is the explicit opt-in for files the safe loader cannot read (here a harmless Fraction).
    torch.save({"best_score": Fraction(1, 3)}, tmp_path / "odd.pth.tar")
    with pytest.raises(UserError, match="safe weights-only loader"):
        checkpoints.read(tmp_path / "odd.pth.tar")
    with pytest.raises(UserError, match="not a showmanylabels checkpoint.*nor an ML-GCN checkpoint"):
        checkpoints.read(tmp_path / "odd.pth.tar", trust_pickle=True)


def test_adj_pickle_gives_the_correlation_matrix(release, tmp_path):
    adj, nums = checkpoints.read_adj_pickle(release["path"].parent / "voc_adj.pkl")
    np.testing.assert_array_equal(adj, release["adj"])
    y, _, _ = _counts(20, np.random.default_rng(5))
    adj2 = y.T @ y  # with the diagonal: it is ignored
    np.testing.assert_allclose(checkpoints.correlation_from_counts(adj2, np.diag(adj2)), correlation_matrix(y))
    a = checkpoints.correlation_from_counts(adj, nums, t=0.4, p=0.25)
    np.testing.assert_allclose(a, release["A"].numpy())
    with open(tmp_path / "bad_adj.pkl", "wb") as f:
        pickle.dump({"adj": np.zeros((3, 3)), "nums": np.zeros(4)}, f)
    with pytest.raises(UserError, match=r"bad_adj\.pkl: 'adj' has shape \(3, 3\) and 'nums' \(4,\)"):
        checkpoints.read_adj_pickle(tmp_path / "bad_adj.pkl")


def test_release_format_other_backbone_and_bad_features(tmp_path):
    from engine.config import ModelConfig

    emb = np.random.default_rng(2).standard_normal((20, 300)).astype(np.float32)
    m = models.build(ModelConfig(family="mlgcn", backbone="tiny", input_size=16, gcn_hidden=32), 20,
                     correlation=correlation_matrix(np.eye(20)[[0, 1, 2, 2]]), embedding=emb).eval()
    sd = {k: v for k, v in m.state_dict().items() if k != "inp" and not k.startswith("normalize.")}
    path = tmp_path / "ck.pth.tar"
    torch.save({"epoch": 3, "arch": "tiny", "state_dict": sd, "best_score": torch.tensor(50.0)}, path)
    with open(tmp_path / "voc_glove_word2vec.pkl", "wb") as f:
        pickle.dump(emb, f)
    ck = checkpoints.read(path)
    assert ck["model"]["backbone"] == "tiny" and ck["model"]["gcn_hidden"] == 32 and ck["source"]["best_score"] == 50
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(models.load(path)(x), m(x))
    del sd["features.0.weight"]
    torch.save({"epoch": 3, "arch": "tiny", "state_dict": sd, "best_score": 0.5}, path)
    with pytest.raises(UserError, match=r"ck\.pth\.tar: the features\.\* parameters match no known backbone"):
        checkpoints.read(path)
