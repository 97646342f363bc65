"""The published models (engine.models.mldecoder, engine.models.q2l): their heads equal the authors'
head code on the same weights (tests/data/published_heads.pt, made once by
tests/fixtures_src/make_heads_fixture.py from the authors' repositories), their checkpoints load as
saved (the authors' InPlaceABN TResNet layout included), and bad input is one line, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from cli.main import main
from engine.data.coco import COCO_CATEGORIES
from engine.data.coco import LABEL_NAMES as COCO_NAMES
from engine.errors import UserError
from engine.models import mldecoder, published, q2l, sources
from engine.models.conventions import IMAGENET_MEAN, IMAGENET_STD
from engine.runtime.sweep.sweepfile import load_sweep

FIXTURE = Path(__file__).parent / "data" / "published_heads.pt"
TOL = 1e-5


@pytest.fixture(scope="module")
def heads():
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def test_mldecoder_head_equals_authors(heads):
    case = heads["mldecoder"]
    head = mldecoder.MLDecoderHead.from_state(case["state_dict"], FIXTURE, "fixture")
    published.fit(head, case["state_dict"], FIXTURE, "fixture")
    assert head.num_classes == case["config"]["num_classes"] and head.decoder.duplicate_pooling.shape[2] == 3
    with torch.no_grad():
        out = head.eval()(case["input"])
    assert out.shape == case["output"].shape
    torch.testing.assert_close(out, case["output"], atol=TOL, rtol=0)
    # the comparison can fail: another weight gives other logits
    with torch.no_grad():
        head.decoder.duplicate_pooling_bias[0] += 1
        assert (head(case["input"]) - case["output"]).abs().max() > 0.5


def test_q2l_head_equals_authors(heads):
    case = heads["q2l"]
    cfg = case["config"]
    net = q2l.from_state(case["state_dict"], nn.Identity(), cfg["channels"], FIXTURE, "fixture")
    published.fit(net, case["state_dict"], FIXTURE, "fixture")
    layers = net.transformer.decoder.layers
    assert layers[0].self_attn is not None and layers[1].self_attn is None  # both kinds of layer compared
    assert net.input_size == cfg["feature_hw"] * q2l.STRIDE
    with torch.no_grad():
        out = net.eval()(case["input"])
    torch.testing.assert_close(out, case["output"], atol=TOL, rtol=0)


def _authors_tresnet_layout(net: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``net``'s state dict with its timm TResNet under ``prefix`` renamed into the authors' InPlaceABN
    layout (conv2d_ABN = Sequential(conv, abn), wrapped once more with an anti-alias layer) and the
    InPlaceABN weight w = bn weight - 1e-5 (inplace_abn uses |w| + eps)."""
    out = {}
    for k, v in net.state_dict().items():
        m = re.match(rf"^({re.escape(prefix)}.*?)\.(conv|bn)\.(\w+)$", k)
        if not m:
            out[k] = v
            continue
        aa = getattr(net.get_submodule(m[1]), "aa", None)
        wrapped = isinstance(aa, nn.Module) and not isinstance(aa, nn.Identity)
        index = ("0." if wrapped else "") + ("0" if m[2] == "conv" else "1")
        out[f"{m[1]}.{index}.{m[3]}"] = v - 1e-5 if (m[2], m[3]) == ("bn", "weight") else v
    return out


def _positive_bn(net: nn.Module) -> None:
    """Random BatchNorm statistics and positive weights (InPlaceABN's |w| + eps round trip)."""
    g = torch.Generator().manual_seed(1)
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data = torch.rand(mod.weight.shape, generator=g) + 0.5
            mod.running_mean.data = torch.randn(mod.running_mean.shape, generator=g) * 0.1
            mod.running_var.data = torch.rand(mod.running_var.shape, generator=g) + 0.5


@pytest.fixture(scope="module")
def mld_files(tmp_path_factory):
    """An ML-Decoder on tresnet_m with random weights, saved as the authors save it and in timm's layout."""
    torch.manual_seed(0)
    head = mldecoder.MLDecoderHead(5, 5, 32, 2048, 1, dim_feedforward=64)
    net = mldecoder.MLDecoderNet(published.tresnet_body(*mldecoder.BACKBONES["tresnet_m"]), head).eval()
    _positive_bn(net)
    d = tmp_path_factory.mktemp("mld")
    names = {i: f"class{i}" for i in range(5)}
    torch.save({"model": _authors_tresnet_layout(net, "body."), "idx_to_class": names}, d / "authors.pth")
    torch.save({"model": net.state_dict(), "idx_to_class": names}, d / "timm.pth")
    return net, d


def test_mldecoder_source_loads_authors_checkpoint(mld_files):
    net, d = mld_files
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)  # raw pixels: the authors normalise nothing
        for f in ("authors.pth", "timm.pth"):
            m = sources.load(d / f, {"mldecoder": "tresnet_m", "input_size": 64})
            assert m.label_names == [f"class{i}" for i in range(5)] and m.family == "mldecoder"
            torch.testing.assert_close(m.model(x), ref, atol=1e-4, rtol=1e-4)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_name_and_mismatch_are_one_line(mld_files, heads, capsys, tmp_path):
    _, d = mld_files
    common = ["evaluate", "--checkpoint", str(d / "timm.pth"), "--dataset", "demo", "--root", str(tmp_path)]
    err = _one_line_error(capsys, [*common[:1], "--mldecoder", "tresnet_lx", *common[1:]])
    assert "tresnet_lx" in err and "did you mean tresnet_l" in err
    err = _one_line_error(capsys, [*common[:1], "--q2l", "resnet-101", *common[1:]])
    assert "did you mean resnet101" in err
    # an ML-Decoder checkpoint on a deeper backbone: the first missing keys, how many more
    err = _one_line_error(capsys, [*common[:1], "--mldecoder", "tresnet_l", *common[1:]])
    assert re.search(r"missing keys body\.layer\S+, .* \(\+\d+ more\); unexpected keys none"
                     r"(; keys of another shape .*)?$", err), err
    # a Query2Label file given as ML-Decoder
    torch.save({"state_dict": heads["q2l"]["state_dict"]}, tmp_path / "q2l.pth")
    err = _one_line_error(capsys, ["evaluate", "--mldecoder", "tresnet_m", "--checkpoint", str(tmp_path / "q2l.pth"),
                                   "--dataset", "demo", "--root", str(tmp_path)])
    assert "missing key head.decoder.duplicate_pooling; the file's first keys: backbone.1.pe, " in err
    with pytest.raises(UserError, match="needs a checkpoint"):
        sources.check(None, {"q2l": "resnet101"})
    with pytest.raises(UserError, match="give one of"):
        sources.check(d / "timm.pth", {"q2l": "resnet101", "mldecoder": "tresnet_m"})


def test_q2l_source_resnet101_normalises_and_reads_input_size(tmp_path):
    """Query2Label on ResNet-101 (frozen BatchNorm), a small transformer: the loaded source equals
    the same network on ImageNet-normalised pixels, at the size its position embedding fixes."""
    torch.manual_seed(0)
    backbone, channels = q2l.body("resnet101")
    net = q2l.Query2Label(backbone, channels, labels=3, d=16, ff=32, pe_shape=(1, 16, 2, 2), encoders=1,
                          self_attn=[False], proj=True).eval()
    with torch.no_grad():
        for p in net.transformer.parameters():
            p.normal_(0, 0.3)
        net.backbone[1].pe.normal_()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3, "arch": "Q2L"},
               tmp_path / "q2l.pth")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    m = sources.load(tmp_path / "q2l.pth", {"q2l": "resnet101", "label_names": str(tmp_path / "labels.txt")})
    assert m.input_size == 64 and m.label_names == ["a", "b", "c"]
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m.model(x), net((x - mean) / std), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="position embedding is for 2 x 2"):
        sources.load(tmp_path / "q2l.pth", {"q2l": "resnet101", "input_size": 96, "label_names": ["a", "b", "c"]})
    with pytest.raises(UserError, match="no label names"):
        sources.load(tmp_path / "q2l.pth", {"q2l": "resnet101"})


def test_q2l_source_tresnet_l_reads_authors_layout(tmp_path):
    """Query2Label on the ASL TResNet-L: its body under backbone.0.body.body in the authors' InPlaceABN
    layout loads into timm's TResNet, and the model equals the network it was saved from."""
    torch.manual_seed(0)
    backbone, channels = q2l.body("tresnet_l")
    assert channels == 2432
    net = q2l.Query2Label(backbone, channels, labels=2, d=16, ff=32, pe_shape=(1, 16, 1, 1), encoders=0,
                          self_attn=[False], proj=True).eval()
    _positive_bn(net)
    torch.save({"state_dict": _authors_tresnet_layout(net, q2l.BODY + "body.")}, tmp_path / "q2l.pth")
    m = sources.load(tmp_path / "q2l.pth", {"q2l": "tresnet_l", "label_names": ["a", "b"]})
    assert m.input_size == 32
    x = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m.model(x), net((x - mean) / std), atol=1e-4, rtol=1e-4)


def test_sweep_file_takes_published_models(mld_files, tmp_path):
    """[[model]] mldecoder / q2l keys: loaded as the CLI loads them; a bad name names its line."""
    _, d = mld_files
    (tmp_path / "data").mkdir()
    text = (f'[[model]]\nmldecoder = "tresnet_m"\ncheckpoint = "{d / "timm.pth"}"\ndataset = "demo"\n'
            f'root = "{tmp_path / "data"}"\ninput_size = 64\n\n[[attack]]\nname = "fgsm"\n')
    (tmp_path / "ok.toml").write_text(text)
    sweep = load_sweep(tmp_path / "ok.toml")
    assert sweep.models[0].own_model() == {"mldecoder": "tresnet_m", "input_size": 64}
    assert sweep.models[0].key == "timm"  # the checkpoint's stem
    (tmp_path / "bad.toml").write_text(text.replace('"tresnet_m"', '"tresnet_s"'))
    with pytest.raises(UserError, match=r"bad\.toml:2: .*mldecoder 'tresnet_s': unknown architecture; did you mean"):
        load_sweep(tmp_path / "bad.toml")


# src/demo_asl_coco.py: the ASL COCO model's outputs (COCO category-id order, its idx_to_class) put
# in ML-GCN's order (names sorted) by an explicit index list; models here map labels by name.
ASL_TO_MLGCN_COCO = [4, 47, 24, 46, 34, 35, 21, 59, 13, 1, 14, 8, 73, 39, 45, 50, 5, 55, 2, 51, 15, 67, 56, 74, 57,
                     19, 41, 60, 16, 54, 20, 10, 42, 29, 23, 78, 26, 17, 52, 66, 33, 43, 63, 68, 3, 64, 49, 69, 12, 0,
                     53, 58, 72, 65, 48, 76, 18, 71, 36, 30, 31, 44, 32, 11, 28, 37, 77, 38, 27, 70, 61, 79, 9, 6, 7,
                     62, 25, 75, 40, 22]


def test_label_order_by_name_is_the_study_asl_coco_mapping():
    asl_order = [COCO_CATEGORIES[i] for i in sorted(COCO_CATEGORIES)]  # idx_to_class of ASL's COCO model
    assert [asl_order.index(n) for n in COCO_NAMES] == ASL_TO_MLGCN_COCO
