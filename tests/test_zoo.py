"""The timm and ASL model sources (engine.models.zoo) against timm's own forward, on random weights:
the timm source equals timm's model after timm's normalisation; the ASL source equals timm's
TResNet on the same weights, given in timm's layout and in the authors' (Alibaba-MIIL/ASL) layout;
bad names and checkpoints are one-line errors with exit 2."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from cli.main import main
from engine import attacks, data
from engine.config import DemoDataConfig, LossConfig
from engine.data import demo
from engine.errors import UserError
from engine.models import fit, sources, zoo
from engine.runtime.sweep import plan as pl
from engine.runtime.sweep.sweepfile import load_sweep

SIZE = 64
LABELS = [f"label{i}" for i in range(5)]


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, BatchNorm statistics included (eval mode uses them), and BatchNorm
    scales away from 0 so that the authors' |w| + eps round-trips."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith(("bn.weight", "running_var")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.1 if t.dim() < 2 else (2.0 / t[0].numel()) ** 0.5))
    return net.eval()


class Box:
    """A pickled object of a class: the weights-only loader refuses to build it."""


@pytest.fixture(scope="module")
def tresnet():
    return _randomize(timm.create_model("tresnet_m", num_classes=len(LABELS)))


def test_timm_source_equals_timms_forward_after_its_normalisation(tmp_path):
    net = _randomize(timm.create_model("resnet10t", num_classes=len(LABELS)))
    path = tmp_path / "r10t.pt"
    torch.save({"state_dict": net.state_dict(), "label_names": LABELS, "input_size": SIZE}, path)
    m = sources.load(path, {"timm": "resnet10t"})
    assert (m.family, m.backbone, m.label_names, m.input_size) == ("timm", "resnet10t", LABELS, SIZE)
    x = torch.rand(2, 3, SIZE, SIZE)
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1)
    assert not torch.equal(mean, torch.zeros_like(mean))  # the check below would not see a missing normalisation
    with torch.no_grad():
        want, got = net((x - mean) / std), m.model(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # A bare state dict needs the label names from outside (--label-names), one per head row.
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    assert sources.load(tmp_path / "bare.pt", {"timm": "resnet10t"}, label_names=LABELS).label_names == LABELS
    with pytest.raises(UserError, match="no label names"):
        sources.load(tmp_path / "bare.pt", {"timm": "resnet10t"})
    with pytest.raises(UserError, match="has 5 labels but 3 label names"):
        sources.load(tmp_path / "bare.pt", {"timm": "resnet10t"}, label_names=LABELS[:3])


def test_asl_layout_conversion_names_the_authors_keys(tresnet):
    """The authors' key names (their src/models/tresnet/tresnet.py): conv2d_ABN = Sequential(conv,
    InPlaceABN) -> .0 / .1, wrapped with the anti-aliasing layer in stride-2 blocks -> .0.0 / .0.1."""
    asl = zoo.timm_to_asl(tresnet.state_dict(), tresnet)
    for key in ("body.conv1.0.weight", "body.conv1.1.running_var", "body.layer1.0.conv1.0.weight",
                "body.layer2.0.conv1.0.0.weight", "body.layer2.0.conv1.0.1.bias", "body.layer2.0.conv2.1.weight",
                "body.layer2.0.downsample.1.0.weight", "body.layer2.0.downsample.1.1.running_mean",
                "body.layer3.0.conv1.0.weight", "body.layer3.0.conv2.0.0.weight", "body.layer3.0.conv3.1.weight",
                "body.layer3.0.se.fc1.weight", "head.fc.weight"):
        assert key in asl, key
    assert not any(k.endswith(("num_batches_tracked", ".conv.weight", ".bn.weight")) for k in asl)
    back = zoo.asl_to_timm(asl)
    assert set(back) == set(tresnet.state_dict())
    w = "body.layer2.0.conv1.bn.weight"
    # InPlaceABN scales by |w| + eps: a negative saved weight reads as its magnitude.
    neg = zoo.asl_to_timm({**asl, "body.layer2.0.conv1.0.1.weight": -asl["body.layer2.0.conv1.0.1.weight"]})
    torch.testing.assert_close(neg[w], tresnet.state_dict()[w], rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", ["timm", "authors"])
def test_asl_source_equals_timms_tresnet(tresnet, tmp_path, layout):
    sd = tresnet.state_dict()
    if layout == "authors":
        obj = {"model": zoo.timm_to_asl(sd, tresnet), "num_classes": len(LABELS),
               "idx_to_class": {str(i): n for i, n in enumerate(LABELS)}}
        names = None
    else:
        obj, names = sd, LABELS
    torch.save(obj, tmp_path / "asl.pth")
    m = sources.load(tmp_path / "asl.pth", {"asl": "tresnet_m", "input_size": SIZE}, label_names=names)
    assert (m.family, m.backbone, m.label_names, m.input_size) == ("asl", "tresnet_m", LABELS, SIZE)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(m.model(x), tresnet(x), rtol=0, atol=1e-5)


def test_bad_names_and_checkpoints_are_one_line_errors(tresnet, tmp_path, capsys):
    torch.save(tresnet.state_dict(), tmp_path / "t.pth")
    base = ["evaluate", "--checkpoint", str(tmp_path / "t.pth"), "--dataset", "demo", "--root", str(tmp_path)]
    assert main([*base, "--timm", "resnet10x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "timm has no architecture 'resnet10x'" in err and "resnet10t" in err
    assert main([*base, "--asl", "tresnet_s"]) == 2
    assert "expected one of tresnet_m, tresnet_l, tresnet_xl" in capsys.readouterr().err
    # TResNet-M weights for TResNet-L: the first missing and unexpected keys, in one line.
    assert main([*base, "--asl", "tresnet_l", "--label-names", str(_names_file(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not fit asl tresnet_l" in err and "keys of another shape" in err
    assert main([*base, "--timm", "resnet10t", "--label-names", str(_names_file(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no classifier fc.weight" in err
    with pytest.raises(UserError, match="needs a checkpoint"):
        sources.load(None, {"timm": "resnet10t"})


def test_checkpoint_that_needs_code_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "pickled.pth"
    net = _randomize(timm.create_model("resnet10t", num_classes=2))
    torch.save({"state_dict": net.state_dict(), "label_names": ["a", "b"], "extra": Box()}, path)
    with pytest.raises(UserError, match="trust_pickle"):
        sources.load(path, {"timm": "resnet10t"})
    assert sources.load(path, {"timm": "resnet10t"}, trust_pickle=True).label_names == ["a", "b"]


def _names_file(tmp_path):
    p = tmp_path / "names.txt"
    p.write_text("\n".join(LABELS) + "\n")
    return p


def test_asl_loss_follows_the_paper():
    """Ridnik et al. 2021, Eq. 1-5, written out per element; with no focusing and no margin it is
    binary cross-entropy."""
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(4, 6, generator=g) * 3, (torch.rand(4, 6, generator=g) < 0.4).float()
    cfg = LossConfig(gamma_neg=4, gamma_pos=1, clip=0.05)
    want = 0.0
    for z, t in zip(logits.flatten().tolist(), y.flatten().tolist()):
        p = 1 / (1 + math.exp(-z))
        pm = max(p - cfg.clip, 0.0)
        want -= (1 - p) ** 1 * math.log(p) if t else pm**4 * math.log(1 - pm)
    assert fit.asl_loss(cfg)(logits, y).item() == pytest.approx(want / 4, rel=1e-5)
    plain = LossConfig(gamma_neg=0, gamma_pos=0, clip=0)
    assert fit.asl_loss(plain)(logits, y).item() == pytest.approx(fit.bce_loss(logits, y).item(), rel=1e-5)


@pytest.mark.parametrize("kind, arch", [("timm", "test_resnet"),
                                        pytest.param("asl", "tresnet_m", marks=pytest.mark.slow)])  # ~50 s
def test_train_writes_what_the_source_reads(kind, arch, tmp_path, capsys):
    root = tmp_path / "data"
    demo.generate(root, DemoDataConfig(n_train=16, n_test=8, size=16, labels=4, seed=0))
    out = tmp_path / f"{arch}.pt"
    args = ["train", f"--{kind}", arch, "--root", str(root), "--out", str(out), "--input-size", "32",
            "--batch-size", "8", "--no-progress"]
    assert main([*args, "--epochs", "1"]) == 0
    m = sources.load(out, {kind: arch})
    assert m.input_size == 32 and m.label_names == data.load("demo", root=root, split="test").label_names
    before = out.read_bytes()
    assert main([*args, "--epochs", "2", "--resume"]) == 0  # one more epoch
    assert torch.load(out, weights_only=True)["epoch"] == 2 and out.read_bytes() != before
    assert main([*args, "--resume", "--gamma-neg", "2"]) == 2  # another loss: refused, nothing written
    assert "another loss" in capsys.readouterr().err
    assert main([*args, "--model", "mlgcn"]) == 2


def test_plan_prices_an_asl_model_from_its_profile_entry(tresnet, tmp_path):
    """The study's grid on an ASL TResNet, priced from the entry `python -m bench --only tresnet` writes
    for it (backbone tresnet_m, family asl, its input size)."""
    torch.save({"model": zoo.timm_to_asl(tresnet.state_dict(), tresnet), "num_classes": len(LABELS),
                "idx_to_class": dict(enumerate(LABELS))}, tmp_path / "asl.pth")
    (tmp_path / "grid.toml").write_text("\n".join([
        "[protocol]", "n = 10", "chunk_size = 5", "",
        "[[model]]", 'asl = "tresnet_m"', f'checkpoint = "{tmp_path / "asl.pth"}"',
        f"input_size = {SIZE}", 'dataset = "demo"', f'root = "{tmp_path}"', "",
        "[[attack]]", 'name = "pgd"', "params = { iterations = 5 }"]) + "\n")
    profile = tmp_path / "profile.json"
    pl.write_profile(profile, "cuda", "Test GPU", [
        {"backbone": "tresnet_m", "family": "asl", "size": SIZE, "batch": 2, "fwd_bwd_s_per_image": 0.5,
         "fwd_s_per_image": 0.2}])
    res = pl.plan_sweep(tmp_path / "grid.toml", device_profile=profile)
    (row,) = res["rows"]
    assert (row["model"], row["size"], row["labels"], row["fwd_bwd_s_per_image"]) == ("asl", SIZE, 5, 0.5)
    assert row["device_seconds"] == pytest.approx(10 * row["passes_per_sample"] * 0.5)


@pytest.mark.slow  # torch.compile on the CPU: about a minute
def test_timm_source_goes_through_the_compiled_and_reduced_precision_paths(tmp_path):
    net = _randomize(timm.create_model("test_resnet", num_classes=len(LABELS)))
    torch.save({"state_dict": net.state_dict(), "label_names": LABELS}, tmp_path / "t.pt")
    model = sources.load(tmp_path / "t.pt", {"timm": "test_resnet"}).model
    x = torch.rand(3, 3, 32, 32)
    eager = attacks.run(model, x, "pgd", iterations=3)
    comp = attacks.run(model, x, "pgd", iterations=3, compile=True)
    torch.testing.assert_close(comp.x_adv, eager.x_adv, atol=1e-4, rtol=0)
    assert torch.equal(comp.label_count_final, eager.label_count_final)
    half = attacks.run(model, x, "pgd", iterations=3, precision="bf16")
    assert float((half.x_adv - x).abs().max()) <= attacks.make_config("pgd").eps + 1e-6


def test_sweep_file_names_a_bad_timm_architecture_in_one_line(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "s.toml").write_text("\n".join([
        "[[model]]", 'timm = "resnet10x"', f'checkpoint = "{tmp_path / "w.pt"}"', 'dataset = "demo"',
        f'root = "{tmp_path}"', "", "[[attack]]", 'name = "fgsm"']) + "\n")
    with pytest.raises(UserError) as e:
        load_sweep(tmp_path / "s.toml")
    assert "\n" not in str(e.value) and "resnet10x" in str(e.value) and "resnet10t" in str(e.value)
