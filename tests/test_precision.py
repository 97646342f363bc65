"""The clean pass the driver shares with the first step, and the precision option (fp32 | tf32 | bf16)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import cli.main
from engine import attacks, data, models, protocol, results
from engine.attacks import losses, precision, targets
from engine.attacks.driver import run_iterative, sample_noise
from engine.errors import UserError
from engine.runtime.runner import attack_checkpoint
from engine.runtime.runspec import RunSpec
from engine.runtime.sweep.sweepfile import load_sweep

# Every registered attack, with its spec's ``quick`` parameters (the paper preset, shortened).
ATTACKS = attacks.names()
ITERATIVE = [n for n in ATTACKS if attacks.get(n).kind == "iterative"]


@pytest.fixture(scope="module")
def batch(trained, demo_root):
    ds = data.load("demo", root=demo_root, size=20)
    idx = protocol.correctly_predicted(models.load(trained["mlgcn"]), ds)[:8].tolist()
    x, _ = data.stack(ds, idx)
    return x, idx


class Counting(nn.Module):
    """The model, counting its forward passes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


# ---------------------------------------------------------------- the clean pass shared with step 1
@pytest.mark.parametrize("name", ATTACKS)
def test_model_passes_are_what_the_attack_spec_says(name, trained, batch):
    """Iterative attacks: exactly the spec's passes (a one-step attack: one gradient pass, whose
    logits give the targets, and the forward that scores x_adv). Solvers: at most the spec's."""
    x, idx = batch
    model = Counting(models.load(trained["mlgcn"]))
    spec = attacks.get(name)
    cfg = attacks.make_config(name, "paper", **spec.quick)
    ctx = None
    if spec.universal:  # the spec prices the scored samples; the fit (once per run) is counted apart
        delta, _ = attacks.fit_universal(model.model, x, name, sample_ids=idx, **spec.quick)
        ctx = {"universal_delta": delta}
    attacks.run(model, x, name, sample_ids=idx, ctx=ctx, **spec.quick)
    p = spec.passes(cfg, 8)
    forwards = p.grad + p.fwd  # a Jacobian is one forward and l backward passes
    if spec.kind == "iterative":
        assert model.calls == forwards
        # A random start (PGD's) needs a clean forward of its own; every other start shares step 1's.
        assert spec.starts_at_x0(cfg) == (not getattr(cfg, "rand_init", False))
        assert p.fwd == (1 if spec.starts_at_x0(cfg) else 2)
    else:
        assert model.calls <= forwards


@pytest.mark.parametrize("name", ITERATIVE)
@pytest.mark.parametrize("target", ["show-many", "hiding-single", "extreme"])
def test_shared_clean_pass_gives_the_results_of_a_separate_one(name, target, trained, batch):
    """Targets from the first gradient pass's logits, bit for bit what a separate clean forward
    gave (also where some samples are not eligible: their batch-mates then run as before)."""
    x, idx = batch
    model = models.prepare_for_attack(models.load(trained["mlgcn"]))
    spec = attacks.get(name)
    cfg = attacks.make_config(name, "paper", **spec.quick)
    ours = attacks.run(model, x, name, target=target, seed=3, sample_ids=idx, **spec.quick)
    with torch.no_grad():
        y_star, eligible = targets.build(target, model(x) >= 0, idx, 3)
    before = run_iterative(model, x, y_star, eligible, spec, cfg, loss_fn=losses.get(cfg.loss, cfg.prob_clamp),
                           noise=sample_noise(x, idx, 3))
    for field in ("x_adv", "label_count_final", "label_count_best", "y_star", "eligible", "success", "iters"):
        assert torch.equal(getattr(ours, field), getattr(before, field)), field


# ---------------------------------------------------------------- precision
def test_fp32_is_the_model_untouched_and_out_of_every_identity():
    model = nn.Linear(2, 2)
    with precision.applied(model, "fp32", "cpu") as net:
        assert net is model
    with precision.applied(model, "tf32", "cpu") as net:  # no TF32 on CPU: fp32 there
        assert net is model
    cfg = attacks.make_config("fgsm")
    # The dict fingerprints and sweep records are made from: as before the option existed.
    assert cfg.to_dict() == {"loss": "bce", "prob_clamp": 1e-6, "eps": 0.3}
    assert attacks.make_config("fgsm", precision="fp32") == cfg
    assert RunSpec(attack="fgsm").key == "fgsm"
    bf = attacks.make_config("fgsm", precision="bf16")
    assert bf.to_dict()["precision"] == "bf16" and bf != cfg
    # A parameter set on top of the preset names the run: bf16 lives beside fp32 in one store.
    assert RunSpec(attack="fgsm", params={"precision": "bf16"}).key == "fgsm@precision=bf16"
    assert attacks.make_config("fgsm", **bf.to_dict()) == bf  # round trip


def test_bad_precision_is_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match="unknown precision 'fp16'; valid: fp32, tf32, bf16"):
        attacks.make_config("pgd", precision="fp16")
    with pytest.raises(UserError, match="precision must be a string"):
        attacks.make_config("pgd", precision=16)
    code = cli.main.main(["attack", "--checkpoint", str(tmp_path / "none.pt"), "--attack", "fgsm", "--out",
                          str(tmp_path / "s.zarr"), "--param", "precision=fp16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown precision 'fp16'" in err


bf16 = pytest.mark.skipif(not precision.bf16_supported("cpu")[0],
                          reason=f"no bf16 autocast on this CPU: {precision.bf16_supported('cpu')[1]}")


@bf16
def test_bf16_runs_in_bf16_and_mostly_agrees_with_fp32(trained, batch):
    x, idx = batch
    model = models.prepare_for_attack(models.load(trained["mlgcn"]))
    with precision.applied(model, "bf16", "cpu") as net, torch.no_grad():
        z16, z32 = net(x), model(x)
    with precision.applied(model, "bf16", "cpu") as again:
        assert again is net  # one wrapper per model: compiled iterations are cached by it
    assert z16.dtype == torch.float32 and not torch.equal(z16, z32)  # computed in bf16, returned as fp32
    torch.testing.assert_close(z16, z32, atol=0.25, rtol=0.05)
    for name in (n for n in ITERATIVE if attacks.get(n).norm == "linf"):
        spec = attacks.get(name)
        a = attacks.run(model, x, name, sample_ids=idx, **spec.quick)
        b = attacks.run(model, x, name, sample_ids=idx, precision="bf16", **spec.quick)
        assert b.x_adv.dtype == torch.float32 and not b.failed.any()
        assert b.norms[:, 3].max() <= getattr(attacks.make_config(name, **spec.quick), spec.bound) + 1e-6
        assert (a.label_count_final == b.label_count_final).float().mean() >= 0.5, name


@bf16
def test_precision_is_in_the_run_name_and_fingerprint(trained, tmp_path):
    out = tmp_path / "s.zarr"
    for p in ({}, {"precision": "bf16"}):
        attack_checkpoint(trained["mlgcn"], "fgsm", out, n=6, chunk_size=6, params=p, progress=False)
    runs = {key: run for _, _, key, run in results.iter_runs(results.open_store(out, "r"))}
    bf = "fgsm@precision=bf16"
    assert set(runs) == {"fgsm", bf}
    assert "precision" not in runs["fgsm"].attrs["fingerprint"]["config"]
    assert runs[bf].attrs["fingerprint"]["config"]["precision"] == "bf16"
    # Same samples, fp32 vs bf16 label counts: mostly the same.
    a, b = (np.asarray(results.read(runs[k], "label_count_final")) for k in ("fgsm", bf))
    assert np.array_equal(results.read(runs["fgsm"], "sample_index"), results.read(runs[bf], "sample_index"))
    assert (a == b).mean() >= 0.5


def test_sweep_file_takes_precision(trained, tmp_path):
    lines = ["[[model]]", f'checkpoint = "{trained["mlgcn"]}"', "", "[[attack]]", 'name = "pgd"', "",
             "[[attack]]", 'name = "pgd"', 'params = { precision = "bf16" }']
    path = tmp_path / "p.toml"
    path.write_text("\n".join(lines) + "\n")
    sw = load_sweep(path)
    assert [r.spec.key for r in sw.runs] == ["pgd", "pgd@precision=bf16"]
    path.write_text("\n".join(lines).replace('"bf16"', '"half"') + "\n")
    with pytest.raises(UserError, match=r"p.toml:9: .*unknown precision 'half'; valid: fp32, tf32, bf16"):
        load_sweep(path)
    assert json.dumps(sw.runs[0].spec.config.to_dict())  # stays JSON for the record
