"""Your own model and data: a torchvision ResNet-18 on the demo images, given as a Python factory,
a TorchScript file and a torchvision checkpoint, on the generic CSV data set; swept into a store
and reported; and the bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from cli.main import main
from engine import data, results
from engine.errors import UserError
from engine.models import sources
from engine.runtime import sweep as sw
from engine.runtime.sweep.worker import SweepWorker

SIZE = 32
FACTORY_MODULE = "sml_test_own_models"  # a module name no other test uses

# The user's module: a ResNet-18 with its ImageNet normalisation inside, as the contract asks.
FACTORY_SOURCE = '''
import torch
import torchvision
from torch import nn

LABELS = {labels!r}


class Net(nn.Module):
    def __init__(self, n=len(LABELS)):
        super().__init__()
        self.body = torchvision.models.resnet18(weights=None, num_classes=n)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.input_size = {size}

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


def build(weights):
    net = Net()
    net.body.load_state_dict(torch.load(weights, weights_only=True))
    return net, LABELS


class Probabilities(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.input_size = net.input_size

    def forward(self, x):
        return torch.sigmoid(self.net(x))


def build_probabilities(weights):
    net, labels = build(weights)
    return Probabilities(net), labels


def build_wrong_count(weights):
    net, labels = build(weights)
    return net, labels[:-1]
'''


def _fit_head(x: torch.Tensor, y: torch.Tensor, n: int) -> dict:
    """A random ResNet-18 whose BatchNorm statistics are set on the images and whose last layer is
    fitted to their labels: it predicts them exactly right, cheaply (a few seconds on a CPU)."""
    import torchvision

    torch.manual_seed(0)
    body = torchvision.models.resnet18(weights=None, num_classes=n)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    fc, body.fc = body.fc, nn.Identity()
    with torch.no_grad():
        for m in body.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # a plain mean over the one pass
        body.train()
        body((x - mean) / std)
        body.eval()
        feats = body((x - mean) / std)
    opt = torch.optim.Adam(fc.parameters(), lr=1e-2)
    for _ in range(200):
        loss = nn.functional.binary_cross_entropy_with_logits(fc(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    body.fc = fc
    return body.state_dict()


@pytest.fixture(scope="module")
def own(tmp_path_factory, demo_root):
    """A CSV data set of demo images, the fitted model in three forms, and the factory's module."""
    base = tmp_path_factory.mktemp("own")
    names = json.loads((demo_root / "dataset.json").read_text())["label_names"]
    folder = base / "data"
    (folder / "img").mkdir(parents=True)
    rows = []
    for split, src in (("test", "test"), ("train", "train")):
        with open(demo_root / f"{src}.csv", newline="") as f:
            for r in list(csv.DictReader(f))[: 120 if split == "test" else 20]:
                shutil.copy(demo_root / src / r["filename"], folder / "img" / f"{split}-{r['filename']}")
                rows.append([f"img/{split}-{r['filename']}", r["labels"], split])
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "labels", "split"], *rows])
    ds = data.load("csv", root=folder, size=SIZE, label_names=names)
    x = torch.stack([ds.image(i) for i in range(len(ds))])
    sd = _fit_head(x, torch.from_numpy(ds.labels).float(), len(names))

    torch.save(sd, base / "weights.pt")
    torch.save({"state_dict": sd, "label_names": names}, base / "tv.pt")
    (base / "labels.txt").write_text("\n".join(names) + "\n")
    pkg = base / "pkg"
    pkg.mkdir()
    (pkg / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE.format(labels=names, size=SIZE))
    sys.path.insert(0, str(pkg))
    try:
        net, _ = __import__(FACTORY_MODULE).build(str(base / "weights.pt"))
        torch.jit.save(torch.jit.script(net.eval()), str(base / "model.ts"))
        yield {"base": base, "data": folder, "names": names, "pkg": pkg}
    finally:
        sys.path.remove(str(pkg))


def _sweep_text(own, models: str, n: int = 4) -> str:
    return textwrap.dedent(f"""\
        [protocol]
        n = {n}
        chunk_size = 4
        batch_size = 0  # automatic: measured on each kind of model (TorchScript takes no hooks)

        {models}

        [[attack]]
        name = "pgd"
        params = {{ iterations = 2 }}
        """)


def _three_models(own) -> str:
    b, d = own["base"], own["data"]
    return textwrap.dedent(f"""\
        [[model]]
        factory = "{FACTORY_MODULE}:build"
        checkpoint = "{b / 'weights.pt'}"
        key = "fac"
        dataset = "csv"
        root = "{d}"

        [[model]]
        torchscript = "{b / 'model.ts'}"
        label_names = "{b / 'labels.txt'}"
        input_size = {SIZE}
        key = "ts"
        dataset = "csv"
        root = "{d}"

        [[model]]
        torchvision = "resnet18"
        checkpoint = "{b / 'tv.pt'}"
        input_size = {SIZE}
        key = "tv"
        dataset = "csv"
        root = "{d}"
        """)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_three_kinds_of_own_model_agree_sweep_and_report(own, tmp_path, capsys):
    """The same network as a factory, a TorchScript file and a torchvision checkpoint: one sweep
    into one store gives the same results for all three, and `sml report` reports them."""
    toml = tmp_path / "own.toml"
    toml.write_text(_sweep_text(own, _three_models(own)))
    out = tmp_path / "own.zarr"
    res = sw.run_sweep(toml, out, local=True, progress=False)
    assert res["shards_done"] == res["shards_total"] == 3  # one shard of 4 samples per model
    root = zarr.open_group(str(out), mode="r")
    runs = {model: run for model, _, _, run in results.iter_runs(root)}
    counts = {k: np.asarray(runs[k]["label_count_final"][:]) for k in ("fac", "ts", "tv")}
    assert len(counts["fac"]) == 4
    assert np.array_equal(counts["fac"], counts["ts"]) and np.array_equal(counts["fac"], counts["tv"])
    g = root["fac/csv"].attrs
    assert g["family"] == "factory" and g["model_source"]["factory"] == f"{FACTORY_MODULE}:build"
    assert g["num_test_samples"] == 120  # the test rows of labels.csv, not its train rows
    assert root["tv/csv"].attrs["family"] == "resnet18" and g["label_names"] == own["names"]
    # Each model is identified by what it is made of; three different digests, resumable as one sweep.
    digests = [m["digest"] for m in root.attrs["sweep"]["models"]]
    assert len(set(digests)) == 3
    assert sw.run_sweep(toml, out, local=True, progress=False)["shards_run"] == 0

    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--format", "md"]) == 0
    tables = (tmp_path / "rep" / "tables.md").read_text()
    for key in ("fac", "ts", "tv"):
        assert f"({key})" in tables
    assert "csv" in tables


def test_factory_source_is_part_of_the_identity(own, tmp_path):
    """Editing the factory's module gives another digest: a store made by the old code refuses it."""
    mod = tmp_path / "sml_test_tiny_factory.py"
    mod.write_text("import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), "
                   "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), ['a', 'b']\n")
    sys.path.insert(0, str(tmp_path))
    try:
        first = sources.load(None, {"factory": "sml_test_tiny_factory:build"})
        assert first.label_names == ["a", "b"] and first.input_size is None  # none given: the data set's
        mod.write_text(mod.read_text() + "# edited\n")
        again = sources.load(None, {"factory": "sml_test_tiny_factory:build"})
        assert again.digest != first.digest
        sized = sources.load(None, {"factory": "sml_test_tiny_factory:build", "input_size": 4})
        assert sized.digest not in (first.digest, again.digest)
    finally:
        sys.path.remove(str(tmp_path))


def test_attack_and_evaluate_cli_with_probabilities(own, tmp_path, capsys, caplog):
    """`sml attack --factory`: a model that outputs probabilities is warned about when declared as
    logits (and then finds no correctly predicted sample), and works with --output probabilities."""
    b, d = own["base"], own["data"]
    common = ["--checkpoint", str(b / "weights.pt"), "--dataset", "csv", "--root", str(d), "--attack", "fgsm",
              "--n", "4", "--chunk-size", "4", "--no-progress"]
    with caplog.at_level("WARNING"):
        err = _one_line_error(capsys, ["attack", "--factory", f"{FACTORY_MODULE}:build_probabilities",
                                       "--out", str(tmp_path / "a.zarr"), *common])
    assert "predicts no test sample" in err
    assert any("every clean output lies in [0, 1]" in r.getMessage() for r in caplog.records)
    out = tmp_path / "b.zarr"
    assert main(["attack", "--factory", f"{FACTORY_MODULE}:build_probabilities", "--output", "probabilities",
                 "--out", str(out), *common]) == 0
    capsys.readouterr()
    g = zarr.open_group(str(out), mode="r")[f"{FACTORY_MODULE}.build_probabilities/csv"]
    assert g.attrs["model_source"]["output"] == "probabilities" and len(g["candidates"][:]) > 100

    assert main(["evaluate", "--torchscript", str(b / "model.ts"), "--label-names", str(b / "labels.txt"),
                 "--input-size", str(SIZE), "--dataset", "csv", "--root", str(d), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == "torchscript" and row["num_samples"] == 120 and row["hamming_loss"] < 0.05


def test_bad_own_model_inputs_are_one_line_and_write_nothing(own, tmp_path, capsys):
    b, d = own["base"], own["data"]
    out = tmp_path / "never.zarr"
    common = ["--dataset", "csv", "--root", str(d), "--attack", "fgsm", "--out", str(out), "--no-progress"]
    err = _one_line_error(capsys, ["attack", "--factory", "sml_no_such_module:build", *common])
    assert "module 'sml_no_such_module' does not import" in err and "PYTHONPATH" in err
    err = _one_line_error(capsys, ["attack", "--factory", f"{FACTORY_MODULE}:build_wrong_count",
                                   "--checkpoint", str(b / "weights.pt"), *common])
    assert f"gives (1, {len(own['names'])}) for one image, but has {len(own['names']) - 1} label names" in err
    err = _one_line_error(capsys, ["attack", "--torchvision", "resnet18", *common])
    assert "needs a checkpoint" in err
    err = _one_line_error(capsys, ["attack", "--checkpoint", str(b / "tv.pt"), "--output", "probabilities", *common])
    assert "for your own models" in err
    # A CSV with a label the model does not know: its file and line.
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    lines = (bad / "labels.csv").read_text().splitlines()
    path, labels, split = lines[4].split(",")
    lines[4] = f"{path},{labels};purple_blob,{split}"
    (bad / "labels.csv").write_text("\n".join(lines) + "\n")
    err = _one_line_error(capsys, ["attack", "--torchvision", "resnet18", "--checkpoint", str(b / "tv.pt"),
                                   "--input-size", str(SIZE), *common[:3], str(bad), *common[4:]])
    assert f"{bad / 'labels.csv'}:5: unknown label 'purple_blob'" in err
    assert not out.exists()

    # The same through a sweep: the driver checks before the store exists.
    for model, expect in (('factory = "sml_no_such_module:build"', r"bad\.toml:\d+: .*'sml_no_such_module' does not"),
                          (f'factory = "{FACTORY_MODULE}:build_wrong_count"\ncheckpoint = "{b / "weights.pt"}"',
                           r"'m': .*but has \d+ label names")):
        toml = tmp_path / "bad.toml"
        toml.write_text(_sweep_text(own, f'[[model]]\n{model}\nkey = "m"\ndataset = "csv"\nroot = "{d}"\n'))
        with pytest.raises(UserError, match=expect):
            sw.run_sweep(toml, out, local=True, progress=False)
        assert not out.exists()
    err = _one_line_error(capsys, ["sweep", str(toml), "--out", str(out), "--local", "--no-progress"])
    assert "label names" in err and not out.exists()


def test_every_actor_imports_the_factory(own, tmp_path):
    """An actor on a node where the factory's module does not import answers its first job with a
    one-line error naming the module (the driver turns it into exit 2)."""
    out = tmp_path / "s.zarr"
    zarr.open_group(str(out), mode="w", zarr_format=3)
    models = [{"key": "m", "checkpoint": None, "digest": "x", "dataset": "csv", "root": str(own["data"]),
               "split": None, "load_kw": {}, "own_model": {"factory": "sml_missing_on_this_node:build"}}]
    runs = [{"model": 0, "key": "fgsm", "spec": {"attack": "fgsm"}}]
    w = SweepWorker(str(out), models, runs)
    res = w.plan(0)
    assert "module 'sml_missing_on_this_node' does not import on" in res["error"]
    assert len(res["error"].splitlines()) == 1
    assert "m" not in zarr.open_group(str(out), mode="r")  # nothing of the model group written


# ---------------------------------------------------------------- the CSV data set
def test_csv_formats_splits_and_label_names(tmp_path):
    from PIL import Image

    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 6), (i * 40, 0, 0)).save(root / "a" / f"{i}.png")
    # One 0/1 column per label, one CSV per split.
    (root / "test.csv").write_text("path,cat,dog\na/0.png,1,0\na/1.png,1,1\n")
    (root / "train.csv").write_text("path,cat,dog\na/2.png,0,1\n")
    ds = data.load("csv", root=root, size=5)
    assert ds.label_names == ["cat", "dog"] and ds.labels.tolist() == [[1, 0], [1, 1]]
    assert ds.image(0).shape == (3, 5, 5) and ds.split == "test" and ds.name == "csv"
    assert data.load("csv", root=root, split="train").labels.tolist() == [[0, 1]]
    # The model's label names fix the columns' order (engine.data.load passes them).
    assert data.load("csv", root=root, model_labels=["dog", "cat", "bird"]).labels.tolist() == [[0, 1, 0], [1, 1, 0]]
    with pytest.raises(UserError, match=r"test\.csv:1: label column\(s\) \['cat'\] not among"):
        data.load("csv", root=root, model_labels=["dog"])
    # A labels column and a split column in one CSV.
    for f in ("test.csv", "train.csv"):
        (root / f).unlink()
    (root / "labels.csv").write_text("path,labels,split\na/0.png,cat,test\na/1.png,dog;cat,test\na/2.png,,test\n"
                                     "a/3.png,dog,val\n")
    ds = data.load("csv", root=root)
    assert ds.label_names == ["cat", "dog"] and ds.labels.tolist() == [[1, 0], [1, 1], [0, 0]]
    assert len(data.load("csv", root=root, split="val")) == 1
    with pytest.raises(UserError, match=r"labels\.csv:3: unknown label 'dog'"):
        data.load("csv", root=root, label_names=["cat"])
    (root / "labels.csv").write_text("path,labels,split\n../outside.png,cat,test\n")
    with pytest.raises(UserError, match=r"labels\.csv:2: '\.\./outside\.png' lies outside the data root"):
        data.load("csv", root=root)
    (root / "labels.csv").write_text("path,labels\na/0.png,cat\na/9.png,cat\n")
    with pytest.raises(UserError, match=r"labels\.csv:3: image 'a/9\.png' not found"):
        data.load("csv", root=root)
    ds = data.load("csv", root=root, allow_missing=True)
    assert len(ds) == 1 and ds.skipped.total == 1
    with pytest.raises(UserError, match="no 'split' column"):
        data.load("csv", root=root, split="train")
