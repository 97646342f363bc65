"""The annotation files the study's repository and the ML-GCN repository ship, next to the official ones.

Fixtures are written in the real on-disk formats: VOC ``classification_<split>.csv`` (header ``name`` +
the 20 classes, values 1 / -1 / 0) in the study's layout (CSVs in ``data/VOC2012/``, images in
``files/JPEGImages``; VOC2007 images in ``VOC2007/files/JPEGImages`` and ``VOC2007/files/test``) and in
ML-GCN's (``files/VOC2007/`` beside ``VOCdevkit/``); COCO ``val_anno.json`` (a list of
``{"file_name", "labels"}``) with ``category.json`` (name -> index). The writers are in tests/fixtures.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import (
    ANNO,
    VOC2007,
    VOC2012,
    expected_labels,
    make_coco,
    make_mlgcn,
    make_voc,
    study_voc2007,
    study_voc2012,
    write_csv,
)

import cli.main
from engine import data
from engine.config import ModelConfig
from engine.data import coco, split, voc
from engine.errors import UserError
from engine.models import checkpoints

# ---------------------------------------------------------------- VOC classification CSVs


# Not in id order, so that keeping the file's order is visible.
SHUFFLED = dict(reversed(list(VOC2007["trainval"].items())))


def test_voc_csv_labels_difficult_and_file_order(tmp_path):
    root = study_voc2007(tmp_path / "VOC2007", {"trainval": SHUFFLED, "test": VOC2007["test"]})
    ds = data.load("voc2007", root=root, split="trainval")
    assert [p.stem for p in ds.paths] == list(SHUFFLED)  # the CSV's row order, not sorted
    assert all(p.parent == root / "VOC2007" / "files" / "JPEGImages" for p in ds.paths)
    np.testing.assert_array_equal(ds.labels, expected_labels(SHUFFLED))
    row = [p.stem for p in ds.paths].index("000005")
    assert ds.labels[row, voc.VOC_CLASSES.index("pottedplant")] == 1  # 0 (difficult) -> positive by default
    neg = voc.load(root, split="trainval", source="csv", difficult="negative")
    np.testing.assert_array_equal(neg.labels, expected_labels(SHUFFLED, difficult_positive=False))
    assert neg.labels[row, voc.VOC_CLASSES.index("pottedplant")] == 0
    # VOC2007 test: the study keeps its test images in VOC2007/files/test.
    test = data.load("voc2007", root=root)
    assert [p.parent.name for p in test.paths] == ["test"] * 3
    np.testing.assert_array_equal(test.labels, expected_labels(VOC2007["test"]))
    x, _ = test[0]
    assert x.shape == (3, 448, 448)
    # A name that lost its leading zeros (a spreadsheet) still finds its image, as ML-LIW's loader does.
    write_csv(root / voc.csv_name("trainval"), SHUFFLED, names={"000016": "16"})
    assert "000016.jpg" in {p.name for p in voc.load(root, split="trainval").paths}


def test_voc_csv_auto_precedence_and_roots(tmp_path):
    top = tmp_path / "mlgcn"
    make_voc(top / "VOCdevkit", 2007, VOC2007)  # txt + xml + JPEGImages
    # ML-GCN's CSV beside the devkit, with a label the txt files do not have and another row order.
    changed = {k: dict(v) for k, v in SHUFFLED.items()}
    changed["000007"]["sofa"] = 1
    write_csv(top / "files" / "VOC2007" / voc.csv_name("trainval"), changed)
    for root in (top, top / "VOCdevkit", top / "VOCdevkit" / "VOC2007"):
        ds = voc.load(root, split="trainval")  # auto: the CSV wins
        assert [p.stem for p in ds.paths] == list(changed), root
        np.testing.assert_array_equal(ds.labels, expected_labels(changed))
        assert ds.paths[0].parent == top / "VOCdevkit" / "VOC2007" / "JPEGImages"
    txt = voc.load(top / "VOCdevkit", split="trainval", source="txt")
    assert [p.stem for p in txt.paths] == list(VOC2007["trainval"])
    np.testing.assert_array_equal(txt.labels, expected_labels(VOC2007["trainval"]))
    # No CSV: auto falls back to the txt files, then to the XML files.
    (top / "files" / "VOC2007" / voc.csv_name("trainval")).unlink()
    np.testing.assert_array_equal(voc.load(top / "VOCdevkit", split="trainval").labels, txt.labels)
    for p in (top / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main").glob("*_trainval.txt"):
        p.unlink()
    np.testing.assert_array_equal(voc.load(top / "VOCdevkit", split="trainval").labels, txt.labels)
    with pytest.raises(UserError, match=r"no classification CSV for split 'trainval': looked for "
                                        r"classification_trainval\.csv in .*files/VOC2007"):
        voc.load(top / "VOCdevkit", split="trainval", source="csv")


def test_voc2012_study_split_is_the_same_from_csv_and_txt(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    make_voc(devkit, 2012, VOC2012)
    study = study_voc2012(tmp_path / "study" / "VOC2012", VOC2012)
    for part in ("study-train", "study-test"):
        a = data.load("voc2012", root=devkit, split=part, source="txt")
        b = data.load("voc2012", root=study, split=part)  # auto -> the study's CSVs
        assert b.paths[0].parent == study / "files" / "JPEGImages"
        assert [p.stem for p in a.paths] == [p.stem for p in b.paths] and len(a) > 0
        np.testing.assert_array_equal(a.labels, b.labels)
    # The study's repository also holds a VOC2012/ subfolder: given as root, the CSVs above it are found.
    (study / "VOC2012" / "ImageSets").mkdir(parents=True)
    assert len(data.load("voc2012", root=study / "VOC2012", split="val")) == 5
    # A split needs both of its CSVs from one folder.
    (study / voc.csv_name("val")).unlink()
    with pytest.raises(UserError, match=r"has classification_train\.csv but not classification_val\.csv"):
        data.load("voc2012", root=study, split="study-test")


def test_voc_csv_errors(tmp_path):
    root = study_voc2007(tmp_path / "VOC2007", {"trainval": VOC2007["trainval"]})
    path = root / voc.csv_name("trainval")
    good = path.read_text()

    path.write_text(good.replace("tvmonitor", "tv", 1))
    with pytest.raises(UserError, match=r"classification_trainval\.csv: class columns differ from VOC's 20 "
                                        r"\(class list mismatch\): unknown \['tv'\], missing \['tvmonitor'\]"):
        voc.load(root, split="trainval")
    path.write_text(good.replace("name,", "id,", 1))
    with pytest.raises(UserError, match=r"classification_trainval\.csv: not a VOC classification CSV"):
        voc.load(root, split="trainval")

    lines = good.splitlines(keepends=True)
    cat = 1 + voc.VOC_CLASSES.index("cat")
    cells = lines[2].rstrip("\n").split(",")  # line 3: 000007
    cells[cat] = "2"
    lines[2] = ",".join(cells) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(UserError, match=r"1 of 5 listed samples cannot be used: 1 label values other than 1, -1, "
                                        r"0 \(e\.g\. classification_trainval\.csv:3 \(cat = '2'\)\)"):
        voc.load(root, split="trainval")
    ds = voc.load(root, split="trainval", allow_missing=True)
    assert len(ds) == 4 and "000007" not in {p.stem for p in ds.paths}

    path.write_text(good + good.splitlines(keepends=True)[1])  # 000005 again, as line 7
    with pytest.raises(UserError, match=r"duplicate entries \(e\.g\. classification_trainval\.csv:7: 000005 "
                                        r"\(first on line 2\)\)"):
        voc.load(root, split="trainval")

    path.write_text(good)
    (root / "VOC2007" / "files" / "JPEGImages" / "000009.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image files missing \(e\.g\. .*JPEGImages/000009\.jpg\)"):
        voc.load(root, split="trainval")
    assert len(voc.load(root, split="trainval", allow_missing=True)) == 4

    shutil.rmtree(root / "VOC2007")
    with pytest.raises(UserError, match=r"classification_trainval\.csv: no image folder for its rows; expected "
                                        r"<name>\.jpg in one of .*files/JPEGImages"):
        voc.load(root, split="trainval")


def test_voc_root_with_neither_format(tmp_path):
    with pytest.raises(UserError, match=r"neither a VOCdevkit folder .*; nor does it hold classification_test\.csv "
                                        r"in .*files/VOC2007") as e:
        voc.load(tmp_path, split="test")
    assert "\n" not in str(e.value)
    # CSV names carry no year: the study's VOC2012 folder is not read as VOC2007.
    study = study_voc2012(tmp_path / "VOC2012", {"train": VOC2012["train"]})
    with pytest.raises(UserError, match=r"this is VOC2012, but data set voc2007 needs VOC2007"):
        voc.load(study, split="train", year=2007)


# ---------------------------------------------------------------- COCO in ML-GCN's format

# (file name, labels as category names); the second image has no annotation, as in the instances fixture.
def _names(ds) -> list[list[str]]:
    return [[ds.label_names[j] for j in np.flatnonzero(row)] for row in ds.labels]


def test_coco_mlgcn_labels_by_name_and_order(tmp_path):
    order = list(reversed(coco.LABEL_NAMES))  # category.json in another order than the checkpoint's
    root = make_mlgcn(tmp_path / "COCO", order=order)
    ds = data.load("coco", root=root)
    assert ds.label_names == order and ds.split == "val2014"
    assert [p.name for p in ds.paths] == [ANNO[0][0], ANNO[2][0], ANNO[3][0]]  # the list's order
    assert ds.skipped.reasons == {split.NO_ANNOTATIONS: 1}  # the empty label list, as instances
    mapped = ds.with_label_order(coco.LABEL_NAMES)  # a checkpoint's order, mapped by name
    assert mapped.label_names == list(coco.LABEL_NAMES)
    assert _names(mapped) == [["person", "toothbrush"], ["dog", "person"], ["motorcycle"]]
    assert mapped.labels[0, coco.LABEL_NAMES.index("toothbrush")] == 1 and mapped.labels[0].sum() == 2
    # The same images and labels as the official instances file describes (tests/test_real_data.py).
    inst = coco.load(make_coco(tmp_path / "official"), source="instances")
    by_file = dict(zip((p.name for p in inst.paths), _names(inst)))
    assert all(by_file[p.name] == n for p, n in zip(mapped.paths, _names(mapped)))


def test_coco_auto_detection(tmp_path):
    root = make_coco(tmp_path / "coco")  # the official layout
    make_mlgcn(root, rows=[(ANNO[2][0], ["cat"])])  # and a (different) ML-GCN list beside it
    assert len(coco.load(root)) == 4  # auto: the instances file first
    only = coco.load(root, source="mlgcn")
    assert len(only) == 1 and _names(only) == [["cat"]]
    shutil.rmtree(root / "annotations")
    assert len(coco.load(root, split="val")) == 1  # auto: the ML-GCN list
    with pytest.raises(UserError, match=r"instances_val2014\.json: annotation file missing"):
        coco.load(root, source="instances")
    # ML-GCN's own download puts everything in ROOT/data/.
    nested = tmp_path / "nested"
    make_mlgcn(nested / "data")
    ds = coco.load(nested)
    assert len(ds) == 3 and ds.root == nested / "data" and ds.paths[0].parent == nested / "data" / "val2014"
    # Neither format: one line naming what was looked for, and where.
    with pytest.raises(UserError, match=r"instances_train2014\.json: annotation file missing; expected the COCO "
                                        r"2014 instances JSON .* or ML-GCN's train_anno\.json with category\.json "
                                        r"\(looked in .*nested and .*nested/data\)"):
        coco.load(nested, split="train2014")


def test_coco_mlgcn_errors(tmp_path):
    root = make_mlgcn(tmp_path / "COCO")
    cat, anno = root / "category.json", root / "val_anno.json"
    good_cat, good_anno = json.loads(cat.read_text()), json.loads(anno.read_text())

    cat.write_text(json.dumps({n: i + 1 for n, i in good_cat.items()}))  # 1..80
    with pytest.raises(UserError, match=r"category\.json: label indices must be 0\.\.79, each once; out of range "
                                        r"or repeated: \[80\]"):
        coco.load(root)
    cat.write_text(json.dumps({**good_cat, "zebra": 0}))
    with pytest.raises(UserError, match=r"category\.json: .*repeated: \[0\]"):
        coco.load(root)
    cat.write_text(json.dumps({("human" if n == "person" else n): i for n, i in good_cat.items()}))
    with pytest.raises(UserError, match=r"category\.json: categories are not COCO's 80 \(class list mismatch\).*"
                                        r"unknown \['human'\], missing \['person'\]"):
        coco.load(root)
    cat.write_text(json.dumps(good_cat))

    def check(entries, pattern):
        anno.write_text(json.dumps(entries))
        with pytest.raises(UserError, match=pattern) as e:
            coco.load(root)
        assert "\n" not in str(e.value)

    bad = json.loads(json.dumps(good_anno))
    bad[2]["labels"].append(80)
    check(bad, r"val_anno\.json: entry \[2\] \(COCO_val2014_000000000042\.jpg\) has label 80; expected an index "
               r"0-79 into category\.json")
    bad[2]["labels"][-1] = "5"
    check(bad, r"entry \[2\] .*has label '5'")
    check([*good_anno[:3], "COCO_val2014_000000000073.jpg"], r"val_anno\.json: entry \[3\] must be an object")
    check([{"file_name": good_anno[0]["file_name"]}], r"val_anno\.json: entry \[0\] has no key 'labels'")
    check([*good_anno, good_anno[0]], r"val_anno\.json: entry \[4\]: file_name 'COCO_val2014_000000000136\.jpg' "
                                      r"appears twice \(first at entry \[0\]\)")
    check({"images": [], "annotations": [], "categories": []},
          r"val_anno\.json: not an ML-GCN annotation list: .*got a JSON object \(a COCO instances file belongs")
    # A file name that leaves the image folder blocks, unless allow_missing.
    bad = json.loads(json.dumps(good_anno))
    bad[3]["file_name"] = "../secret.jpg"
    check(bad, r"1 file names outside the image folder \(e\.g\. val_anno\.json\[3\]: \.\./secret\.jpg\)")
    assert len(coco.load(root, allow_missing=True)) == 2
    # An instances file that is an annotation list.
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(good_anno))
    with pytest.raises(UserError, match=r"instances_val2014\.json: not a COCO instances file: .*got a JSON list"):
        coco.load(root)


# ---------------------------------------------------------------- the CLI's --annotations


def _sml(capsys, *argv) -> tuple[int, str]:
    rc = cli.main.main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


@pytest.fixture
def untrained(tmp_path) -> Path:
    """A checkpoint that loads (the data set is read right after it); the model is never built."""
    path = tmp_path / "untrained.pt"
    torch.save({"format": checkpoints.FORMAT, "version": checkpoints.VERSION,
                "model": ModelConfig(family="mlliw", input_size=32).to_dict(),
                "label_names": list(voc.VOC_CLASSES), "state_dict": {}}, path)
    return path


@pytest.mark.parametrize("dataset,value,valid", [
    ("coco", "txt", "auto, instances, mlgcn"),
    ("voc2012", "mlgcn", "auto, csv, txt, xml"),
    ("nuswide", "csv", "auto"),
    ("demo", "instances", "auto"),
])
def test_cli_annotations_not_valid_for_the_data_set(untrained, tmp_path, capsys, dataset, value, valid):
    rc, err = _sml(capsys, "evaluate", "--checkpoint", untrained, "--dataset", dataset, "--root", tmp_path,
                   "--annotations", value)
    assert rc == 2 and "\n" not in err
    assert err == (f"sml: error: annotation source (--annotations) {value!r} is not valid for data set "
                   f"{dataset!r}; valid: {valid}")


def test_cli_annotations_reach_the_loader(untrained, tmp_path, capsys):
    root = study_voc2012(tmp_path / "VOC2012", VOC2012)
    # CSVs only: asking for the txt files fails in the VOC loader, naming the folder.
    rc, err = _sml(capsys, "evaluate", "--checkpoint", untrained, "--dataset", "voc2012", "--root", root,
                   "--annotations", "txt")
    assert rc == 2 and "\n" not in err and "neither a VOCdevkit folder" in err and "classification" not in err
    # auto reads the CSVs; the (empty) model is what fails then, after the data loaded.
    rc, err = _sml(capsys, "evaluate", "--checkpoint", untrained, "--dataset", "voc2012", "--root", root)
    assert rc == 2 and "checkpoint does not fit" in err
    with pytest.raises(SystemExit) as e:
        cli.main.main(["evaluate", "--checkpoint", str(untrained), "--annotations", "json"])
    assert e.value.code == 2
