"""What a `released` run feeds its model (engine.protocol.Feed, engine.models.feed): raw pixels for
the study's ML-GCN, labels shown at float32 sigmoid >= 0.5, ML-DP's Gram in float64 on NUS-WIDE.

Each rule is checked against a small port of what the study's code does (its model called without
normalisation, its torch.sigmoid(...) >= 0.5, its Gram in float64), not against our own output.
"""

import numpy as np
import pytest
import torch
from torch import nn

from engine import attacks, data, models, protocol, results
from engine.errors import UserError
from engine.models.conventions import Normalize
from engine.models.feed import code_logits
from engine.report import render
from engine.runtime import runner
from engine.runtime.runspec import RunSpec


# ------------------------------------------------------------------ the cells
@pytest.mark.parametrize("preset, family, dataset, want", [
    ("released", "mlgcn", "voc2007", {"input": "raw", "shown": "sigmoid"}),
    ("released", "mlgcn", "nuswide", {"input": "raw", "shown": "sigmoid", "gram": "float64"}),
    ("released", "mlgcn", "demo", {"input": "raw", "shown": "sigmoid"}),  # the family's choice
    ("released", "mlliw", "coco", {"shown": "sigmoid"}),
    ("released", "mlliw", "nuswide", {"shown": "sigmoid", "gram": "float64"}),
    ("released", "own", "demo", {"shown": "sigmoid"}),
    ("paper", "mlgcn", "nuswide", {}),
])
def test_feed_per_cell(preset, family, dataset, want):
    assert protocol.feed(preset, family, dataset).changed() == want


def test_gram_reaches_the_attack_config_only_where_it_has_the_field():
    rel = RunSpec(attack="mldp", preset="released")
    assert rel.config_for("mlliw", "nuswide").gram == "float64"
    assert rel.config_for("mlliw", "coco").gram == "float32"
    assert "gram" not in rel.config_for("mlliw", "coco").to_dict()  # left out at its default
    assert RunSpec(attack="mldp", preset="paper").config_for("mlgcn", "nuswide").gram == "float32"
    # a value set in params wins over the cell's
    assert RunSpec(attack="mldp", preset="released", params={"gram": "float32"}).config_for(
        "mlgcn", "nuswide").gram == "float32"
    assert RunSpec(attack="pgd", preset="released").config_for("mlgcn", "nuswide") == \
        RunSpec(attack="pgd", preset="released").config


@pytest.mark.parametrize("dataset, columns", [("voc2007", 6), ("coco", 8), ("nuswide", 8)])
def test_ladder_columns_as_the_code_prints_them(dataset, columns):
    # The code prints `columns` levels k = 1, 2, 4, ...: int(avg + k) capped at l, so the last repeats.
    l = {"voc2007": 20, "coco": 80, "nuswide": 81}[dataset]
    avg = 11.5
    code = [min(int(avg + 2**n), l) for n in range(columns)]
    assert protocol.exp_labels(l, avg, "floor", protocol.ladder_columns("released", "mlgcn", dataset)) == code
    assert protocol.ladder_columns("paper", "mlgcn", dataset) is None


def test_inferred_cells_are_the_four_and_warn():
    inferred = {k for k, c in protocol.RELEASED_CELLS.items() if c.inferred}
    assert inferred == {("mlgcn", "voc2012"), ("mlliw", "voc2012"), ("mlliw", "coco"), ("mlliw", "nuswide")}
    assert "inferred" in protocol.inferred_note("released", "mlliw", "coco")
    assert protocol.inferred_note("paper", "mlliw", "coco") is None
    assert protocol.inferred_note("released", "mlgcn", "voc2007") is None


# ------------------------------------------------------------------ the shown-label rule
def test_code_logits_show_what_the_codes_sigmoid_shows():
    # Logits just below 0: float32 sigmoid rounds some of them to exactly 0.5 (shown by the code).
    z = torch.cat([-torch.arange(0, 400, dtype=torch.float32) * 2.0**-30, torch.randn(1000)]).requires_grad_()
    code = torch.sigmoid(z.detach().float()) >= 0.5  # the code's rule
    ours = code_logits(z)
    assert torch.equal(ours.detach() >= 0, code)
    assert bool((code & (z.detach() < 0)).any())  # the rules do differ here
    assert bool((z.detach() < 0)[code.logical_not()].all())
    assert torch.equal(ours.detach()[ours.detach() != 0], z.detach()[ours.detach() != 0])
    ours.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # the gradient of the logit itself


# ------------------------------------------------------------------ raw input
class Scaled(nn.Module):
    """Linear in its normalised input, with an observable normalisation (x - 0.5) / 0.25."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.lin = nn.Linear(12, 3)

    def forward(self, x):
        return self.lin(self.normalize(x).flatten(1))


def test_raw_input_skips_the_models_normalisation_only_for_that_run():
    torch.manual_seed(0)
    m = Scaled()
    x = torch.rand(5, 3, 2, 2)
    raw = models.fed(m, "raw", "logit")
    with torch.no_grad():
        assert torch.allclose(raw(x), m.lin(x.flatten(1)))  # the code's model: no normalisation
        assert torch.allclose(m(x), m.lin(((x - 0.5) / 0.25).flatten(1)))  # the model itself unchanged
    assert models.fed(m) is m and models.fed(m, "raw", "logit") is raw
    assert raw.lin is m.lin  # the same weights
    with pytest.raises(UserError, match="input = raw needs a model that normalises"):
        models.fed(nn.Linear(12, 3), "raw", "logit")


def _code_logits_raw(model, x):
    """The study's ML-GCN on raw pixels: its backbone, max pooling and GCN classifiers, no Normalize."""
    with torch.no_grad():
        return torch.amax(model.features(x), dim=(2, 3)) @ model.classifiers().t()


def test_released_mlgcn_run_records_picks_and_attacks_raw_input(trained, demo_root, tmp_path):
    out = tmp_path / "s.zarr"
    runner.attack_checkpoint(trained["mlgcn"], "fgsm", out, preset="released", params={"eps": 0.0}, n=6,
                             chunk_size=6, root=demo_root, progress=False)
    runner.attack_checkpoint(trained["mlgcn"], "fgsm", out, params={"eps": 0.0}, n=6, chunk_size=6, root=demo_root,
                             progress=False)
    root = results.open_store(out, "r")
    group = root["mlgcn/demo"]
    rel_key = RunSpec(attack="fgsm", preset="released", params={"eps": 0.0}).key
    rel, pap = dict(group[rel_key].attrs), dict(group[RunSpec(attack="fgsm", params={"eps": 0.0}).key].attrs)
    assert rel["feed"] == {"input": "raw", "shown": "sigmoid"} and rel["fingerprint"]["feed"] == rel["feed"]
    assert "feed" not in pap and "feed" not in pap["fingerprint"]
    # picked: the samples the code's model (no normalisation, sigmoid >= 0.5) predicts exactly right
    model = models.load(trained["mlgcn"])
    ds = data.load("demo", root=demo_root, split="test")
    x = torch.stack([ds.image(i) for i in range(len(ds))])
    y = torch.from_numpy(ds.labels).bool()
    shown = torch.sigmoid(_code_logits_raw(model, x)) >= 0.5
    want = np.nonzero(((shown == y).all(1) & y.any(1)).numpy())[0]
    assert np.asarray(group["candidates_raw_sigmoid"][:]).tolist() == want.tolist()
    assert np.asarray(group[f"{rel_key}/sample_index"][:]).tolist() == want[:6].tolist()
    # attacked and scored on raw pixels: at eps 0 the final prediction is the code model's own
    p = runner.plan(trained["mlgcn"], results.open_store(tmp_path / "t.zarr", "a"), root=demo_root)
    idx = np.arange(len(ds))
    rows, _, _ = runner.attack_samples(p, RunSpec(attack="fgsm", preset="released", params={"eps": 0.0}), idx,
                                       device="cpu", ctx=None, progress=None, compile=False, keep_delta=False)
    assert np.array_equal(rows["pred"], shown[idx].numpy())
    assert not np.array_equal(rows["pred"], (model(x[idx]) >= 0).detach().numpy())  # the feed is observable
    render(out, tmp_path / "rep", ("md",))
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert ("no test sample predicted exactly right" in md) == (len(want) == 0)


# ------------------------------------------------------------------ ML-DP's Gram matrix
class NearlyParallel(nn.Module):
    """Three labels, linear in x, with nearly parallel gradients: W W^T is ill-conditioned, so its
    float32 rounding shows in the step."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        v, w, u = (torch.randn(48, generator=gen) for _ in range(3))
        self.register_buffer("A", torch.stack([v, v + 0.02 * w, v - 0.03 * u]))
        self.register_buffer("b", -0.5 - 0.5 * self.A.sum(1))

    def forward(self, x):
        return x.flatten(1) @ self.A.t() + self.b


def _code_mldp_step(model, x0):
    """One iteration of the code's ml_deepfool on one image, y* = all ones as int64 (NUS-WIDE's y):
    P = W (-y) and everything after it in float64 (numpy's promotion), W from float32 autograd."""
    x = x0.clone().requires_grad_()
    out = torch.sigmoid(model(x))
    J = np.stack([torch.autograd.grad(out[0, i], x, retain_graph=True)[0].flatten().numpy() for i in range(3)])
    y = np.ones(3, dtype=np.int64)
    P = J.T * (-y)
    q = (-y * 0.5 - (-y * out.detach().numpy()[0])).reshape(-1, 1)
    r = P @ np.linalg.inv(P.T @ P) @ q
    return torch.from_numpy(np.clip(r.reshape(x0.shape) + x0.double().numpy(), 0, 1)).float()


def test_mldp_float64_gram_is_the_codes_step_on_int64_targets():
    m, x0 = NearlyParallel(), torch.full((1, 3, 4, 4), 0.5)
    code = _code_mldp_step(m, x0)
    f64 = attacks.run(m, x0, "mldp", preset="released", iterations=1, gram="float64")
    f32 = attacks.run(m, x0, "mldp", preset="released", iterations=1, gram="float32")
    assert f64.label_count_final.item() == 3  # the step was kept (every label shown)
    assert torch.equal(f64.x_adv, code)
    assert not torch.equal(f32.x_adv, code)  # float32's W W^T moves the step


def test_a_run_on_an_inferred_cell_warns_in_its_attributes_and_the_report(trained, demo_root, tmp_path, monkeypatch,
                                                                          caplog):
    # The demo stands in for one of the four cells whose sample lists the code does not make.
    monkeypatch.setitem(protocol.RELEASED_CELLS, ("mlliw", "demo"), protocol.Cell(inferred=True))
    out = tmp_path / "s.zarr"
    runner.attack_checkpoint(trained["mlliw"], "fgsm", out, preset="released", n=4, chunk_size=4, root=demo_root,
                             progress=False)
    runner.attack_checkpoint(trained["mlliw"], "fgsm", out, n=4, chunk_size=4, root=demo_root, progress=False)
    group = results.open_store(out, "r")["mlliw/demo"]
    note = group[RunSpec(attack="fgsm", preset="released").key].attrs["warning"]
    assert "inferred" in note and note in caplog.text
    assert "warning" not in group[RunSpec(attack="fgsm").key].attrs
    render(out, tmp_path / "rep", ("md",))
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert "**Inferred cells**" in md and note in md
