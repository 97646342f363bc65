"""The field's attacks beyond the study's nine, against small independent ports of their reference code.

The ports (bench/reference_ports.py, shared with `make bench`) are written from the paper and a reading of
the reference (never imported: the references hard-code CUDA); where the reference draws from numpy's global
RNG, the port is handed the engine's own per-sample draws instead.
"""

import numpy as np
import pytest
import torch
import zarr
from torch import nn

import cli.main
from bench.reference_ports import jsma_port, kfool_inner_port, mlaede_reference_runs, tkmlapu_inner_port, uap_port
from engine import attacks, data, models, protocol, results
from engine.attacks import mlaede, mljsma, universal
from engine.errors import UserError

# ------------------------------------------------------------------ a small model with a known form


class Linear(nn.Module):
    """Logits W x + b on 3 x s x s images: a model with a fixed answer and batch-exact arithmetic."""

    def __init__(self, labels=5, seed=0, bias=-0.5, side=4, scale=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(labels, 3 * side * side, generator=g) * scale)
        self.b = nn.Parameter(torch.full((labels,), bias))
        self.num_labels = labels

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def images(n, seed=1, side=4):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


class NoBackward(torch.autograd.Function):
    """Identity whose backward raises: a model behind it answers queries only."""

    @staticmethod
    def forward(ctx, z):
        return z.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("this model has no backward pass")


class BlackBox(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return NoBackward.apply(self.inner(x))


def sml(capsys, *argv):
    rc = cli.main.main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


# ------------------------------------------------------------------------------------- MLAE-DE
def test_mlaede_released_equals_the_reference_port():
    model, x, ids = Linear(), images(6), [3, 14, 15, 92, 65, 35]
    cfg = attacks.make_config("mlaede", "released", eps=0.5, pop_size=6, generations=8)
    res = attacks.run(model, x, "mlaede", config=cfg, seed=5, sample_ids=ids)
    ref = mlaede_reference_runs(model, x, ids, 5, cfg)
    want = torch.from_numpy(np.stack([r[0] for r in ref])).float()
    torch.testing.assert_close(res.x_adv, want, atol=1e-6, rtol=0)
    assert res.queries.tolist() == [r[2] for r in ref]
    assert res.success.any() and not res.success.all()  # both of the code's exits are compared
    for r, q in zip(ref, res.queries.tolist()):  # the code's count: no complement forwards, /100 on failure
        assert r[1] in ((q + 6) / 2, (q + 6) / 200)
    # The code's population leaves [-1, 1]^d: released perturbations may exceed eps.
    assert res.norms[:, 3].max() > 0.5


def test_mlaede_paper_stays_within_eps_and_keeps_the_fittest():
    model, x, ids = Linear(), images(6), list(range(6))
    res = attacks.run(model, x, "mlaede", eps=0.3, pop_size=6, generations=8, sample_ids=ids)
    assert (res.norms[:, 3] <= 0.3 + 1e-6).all()
    with torch.no_grad():
        left = mlaede.fitness(model(res.x_adv), torch.ones(6, 5)).sum(1)
        clean = mlaede.fitness(model(x), torch.ones(6, 5)).sum(1)
    assert (left <= clean).all() and (left < clean).any()
    assert (res.queries <= 6 * (2 * 8 - 1)).all() and (res.queries >= 6).all()


def test_mlaede_runs_on_a_model_whose_backward_raises_and_counts_its_queries():
    model, x = BlackBox(Linear()), images(4)
    with pytest.raises(RuntimeError):  # the stand-in really has no backward
        model(x.requires_grad_(True)).sum().backward()
    x = x.detach()
    res = attacks.run(model, x, "mlaede", eps=0.3, pop_size=5, generations=4)
    assert not res.failed.any()
    assert res.label_count_final.float().mean() > (model(x) >= 0).sum(1).float().mean()
    # the first population, then mutants and complements for every generation run
    assert res.queries.tolist() == [5 * (1 + 2 * int(i)) for i in res.iters]


def test_queries_are_stored_for_black_box_attacks_only(trained, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    for name in ("mlaede", "fgsm"):
        rc, err = sml(capsys, "attack", "--checkpoint", trained["mlgcn"], "--attack", name, "--n", 4,
                      "--out", store, "--no-progress", *(("--param", "generations=3") if name == "mlaede" else ()))
        assert rc == 0, err
    demo = zarr.open_group(str(store), mode="r")["mlgcn/demo"]
    q = results.read(demo["mlaede@generations=3"], "queries")
    iters = results.read(demo["mlaede@generations=3"], "iters")
    assert (q == 10 * (1 + 2 * iters)).all() and q.min() >= 10
    assert (results.read(demo["fgsm"], "queries") == -1).all()


def test_mlaede_batches_and_results_do_not_depend_on_batch_mates(trained, demo_root):
    model = models.load(trained["mlgcn"])
    x = images(3, seed=4).repeat_interleave(5, 2).repeat_interleave(5, 3)[:, :, :20, :20]
    whole = attacks.run(model, x, "mlaede", sample_ids=[7, 8, 9], **attacks.get("mlaede").quick)
    alone = attacks.run(model, x[1:2], "mlaede", sample_ids=[8], **attacks.get("mlaede").quick)
    assert whole.queries[1] == alone.queries[0]
    torch.testing.assert_close(whole.x_adv[1:2], alone.x_adv, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------------- ML-JSMA
def test_mljsma_equals_the_reference_port():
    model, x = Linear(bias=-1.0, side=8, scale=2.0), images(5, side=8)
    prob = lambda t: torch.sigmoid(model(t))  # noqa: E731
    for theta, gamma in ((1.0, 3), (0.2, 6)):
        res = attacks.run(model, x, "mljsma", theta=theta, iterations=gamma)
        want = jsma_port(prob, x.numpy(), np.ones((5, 5), dtype=np.float32), theta, gamma)
        torch.testing.assert_close(res.x_adv, torch.from_numpy(want), atol=1e-6, rtol=0)
        changed = (res.x_adv != x).flatten(1).sum(1)
        assert (changed <= gamma * (192 // 100)).all() and (changed > 0).any()
        assert torch.equal(res.norms[:, 0], changed.float())
    assert res.success.any()  # some reached y*, and stopped there
    assert (res.iters[res.success] < gamma).any() or res.success.all()


def test_mljsma_saliency_and_choice():
    J = torch.tensor([[[1.0, -2.0, 0.5, 3.0]], [[0.0, 1.0, 1.0, -1.0]]]).transpose(0, 1).reshape(1, 2, 4)
    # label 0 is wrong (to be shown: dy = +1), label 1 right: S = J0 - J1 where J0 >= 0, else 0
    S = mljsma.saliency(J, torch.tensor([[False, True]]), torch.tensor([[1.0, 1.0]]))
    assert S.tolist() == [[1.0, 0.0, -0.5, 4.0]]
    assert mljsma.chosen(torch.tensor([[1.0, 0.0, 2.0, 2.0, -1.0]]), 2).tolist() == [[False, False, True, True, False]]
    assert mljsma.chosen(torch.tensor([[1.0, 0.0, 0.0, -1.0]]), 3).tolist() == [[True, False, False, False]]


# ------------------------------------------------------------------------ universal perturbations
def test_tkmlapuv_fit_equals_the_reference_port():
    model, x = Linear(labels=6, bias=-0.5, scale=0.3), images(8, seed=2)
    gt = (model(x) >= 0).detach().numpy().astype(np.float32)
    ok = (gt.sum(1) >= 1) & (gt.sum(1) <= 2)
    x, gt = x[ok], gt[ok]
    kw = dict(k=2, eps=3.0, xi=0.99, max_passes=3, iterations=25, lr=0.5)
    delta, info = attacks.fit_universal(model, x, "tkmlapuv", **kw)
    want, rate, passes = uap_port(model, universal.to_space(x, "tanh"), gt, 2, 3.0, 0.99, 3, tkmlapu_inner_port,
                                  maxiter=25, lr=0.5)
    torch.testing.assert_close(delta, want, atol=1e-5, rtol=1e-5)
    assert info["passes"] == passes and info["fooling_rate_fit"] == pytest.approx(rate)
    assert 0 < float(delta.norm()) <= 3.0 + 1e-5


@pytest.mark.parametrize("preset", ["paper", "released"])
def test_kuap_fit_equals_the_reference_port(preset):
    model, x = Linear(labels=6, bias=-0.5, scale=0.3), images(8, seed=2)
    gt = (model(x) >= 0).detach().numpy().astype(np.float32)
    ok = (gt.sum(1) >= 1) & (gt.sum(1) <= 2)
    x, gt = x[ok], gt[ok]
    delta, info = attacks.fit_universal(model, x, "kuap", preset, k=2, eps=2.0, xi=0.99, max_passes=3, iterations=10)
    want, rate, passes = uap_port(model, universal.to_space(x, "tanh"), gt, 2, 2.0, 0.99, 3, kfool_inner_port,
                                  at_clean=preset == "released", maxiter=10)
    torch.testing.assert_close(delta, want, atol=1e-5, rtol=1e-5)
    assert info["passes"] == passes and info["fooling_rate_fit"] == pytest.approx(rate)
    assert float(delta.norm()) > 0


def test_apply_universal_spaces():
    x = images(2)
    d = torch.zeros(3, 4, 4)
    torch.testing.assert_close(attacks.apply_universal(x, d, {"delta_space": "tanh"}), x, atol=2e-6, rtol=0)
    assert torch.equal(attacks.apply_universal(x, d + 2, {"delta_space": "pixel"}), torch.ones_like(x))
    far = attacks.apply_universal(x, d + 50, {"delta_space": "tanh"})
    assert far.max() <= 1 and far.min() >= 0.99  # tanh space saturates inside [0, 1]
    with pytest.raises(UserError, match="delta_space"):
        attacks.apply_universal(x, d, {"delta_space": "box"})


def check_reapplied(run, model, ds, k):
    """The run's stored delta, applied by its delta_space, gives its stored label counts and success."""
    info, delta = dict(run.attrs["universal"]), np.asarray(run["universal_delta"][:])
    x, _ = data.stack(ds, [int(i) for i in results.read(run, "sample_index")])
    with torch.no_grad():
        z = model(attacks.apply_universal(x, delta, info))
    assert (z >= 0).sum(1).numpy().tolist() == results.read(run, "label_count_final").tolist()
    fooled = ~torch.from_numpy(results.read(run, "labels_true")).gather(1, z.topk(k, dim=1).indices).any(1)
    assert fooled.numpy().tolist() == results.read(run, "success").tolist()


@pytest.mark.parametrize("name", ["kuap", "tkmlapuv"])
def test_universal_run_stores_its_delta_and_reapplying_it_gives_the_stored_counts(name, trained, demo_root,
                                                                                   tmp_path, capsys):
    store = tmp_path / "u.zarr"
    quick = attacks.get(name).quick
    params = [a for key, v in quick.items() for a in ("--param", f"{key}={v}")]
    argv = ("attack", "--checkpoint", trained["mlgcn"], "--attack", name, "--n", 12, "--chunk-size", 5,
            "--out", store, "--no-progress", "--param", "k=1", *params)
    rc, err = sml(capsys, *argv)
    assert rc == 0, err
    group = zarr.open_group(str(store), mode="r")["mlgcn/demo"]
    (key,) = [k for k in group.group_keys() if k.startswith(name)]
    run = group[key]
    info = dict(run.attrs["universal"])
    delta = np.asarray(run["universal_delta"][:])
    assert delta.dtype == np.float32 and delta.shape == (3, 20, 20) and np.isfinite(delta).all()
    assert info["fit"] == [0, 8] and info["score"] == [8, 20] and info["delta_space"] == "tanh"
    assert 0 <= info["fooling_rate"] <= 1 and info["passes"] >= 1
    idx = results.read(run, "sample_index")
    cand = np.asarray(group["candidates"][:])
    both = protocol.select(cand, 20, 0, run.attrs["order"])  # the run's candidate order: fit, then scored
    assert list(idx) == list(both[8:]) and info["fit_index"] == list(both[:8])
    check_reapplied(run, models.load(trained["mlgcn"]), data.load("demo", root=demo_root, size=20), k=1)
    # Resumed or rerun, the run reads its delta back instead of fitting again.
    rc, err = sml(capsys, *argv)
    assert rc == 0, err
    assert np.array_equal(np.asarray(zarr.open_group(str(store), mode="r")[run.path]["universal_delta"][:]), delta)


def test_universal_fit_and_score_beyond_the_candidates_is_one_line(trained, tmp_path, capsys):
    rc, err = sml(capsys, "attack", "--checkpoint", trained["mlgcn"], "--attack", "kuap", "--n", 100000,
                  "--out", tmp_path / "u.zarr", "--no-progress", "--param", "fit_n=8")
    assert rc == 2 and len(err.splitlines()) == 1
    assert "fit_n 8 + n 100000" in err and "candidates" in err


def test_the_field_sweep_holds_every_attack_beyond_the_nine():
    from pathlib import Path

    from engine.attacks.registry import ORDER
    from engine.runtime.sweep import sweepfile

    sweep = sweepfile.load_sweep(Path(__file__).parents[1] / "sweeps/field.toml", check_files=False)
    assert {m.key for m in sweep.models} == {"mlgcn", "mlliw"}
    assert {r.spec.attack for r in sweep.runs} == set(attacks.names()) - set(ORDER)
    for name in ("tkmlapu", "tkmlapt", "tkmlapuv"):
        assert sorted(r.spec.config.k for r in sweep.runs if r.spec.attack == name) == [1, 1, 2, 2, 3, 3]  # x 2 models
    universal_runs = [r for r in sweep.runs if r.spec.spec.universal]
    assert universal_runs and all(r.spec.preset == "demo" for r in universal_runs)


def test_a_sweep_fits_each_universal_run_once_and_every_shard_applies_it(trained, demo_root, tmp_path):
    from engine.runtime.sweep import run_sweep

    quick = ", ".join(f"{key} = {v}" for key, v in attacks.get("kuap").quick.items())
    sweep = tmp_path / "u.toml"
    sweep.write_text(f'[sweep]\nname = "u"\n\n[protocol]\nn = 9\nchunk_size = 3\n\n[[model]]\n'
                     f'checkpoint = "{trained["mlgcn"]}"\nkey = "mlgcn"\n\n[[attack]]\nname = "kuap"\n'
                     f'params = {{ k = [1, 2], {quick} }}\n')
    out = tmp_path / "u.zarr"
    res = run_sweep(sweep, out, local=True, progress=False)
    assert res["shards_done"] == res["shards_total"] == 6
    group = zarr.open_group(str(out), mode="r")["mlgcn/demo"]
    model, ds = models.load(trained["mlgcn"]), data.load("demo", root=demo_root, size=20)
    deltas = []
    for key in group.group_keys():
        if key.startswith("kuap"):
            run = group[key]
            assert dict(run.attrs["universal"])["score"] == [8, 17]
            check_reapplied(run, model, ds, k=int(dict(run.attrs["params"])["k"]))
            deltas.append(np.asarray(run["universal_delta"][:]))
    assert len(deltas) == 2 and not np.array_equal(*deltas)  # one delta per run
