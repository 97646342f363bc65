"""The `released` preset computes what the study's released code computed; `paper` what its text says.

Every expected value below is derived by hand from the code's rules (see the README's table of
differences), not read back from our implementation.
"""

import numpy as np
import pytest
import torch
from torch import nn

from engine import attacks, protocol, results
from engine.attacks.mlalp import ReleasedThresholds
from engine.errors import UserError
from engine.report import render
from engine.runtime import runner
from engine.runtime.runspec import RunSpec


# ------------------------------------------------------------------ ladder and rules per preset
@pytest.mark.parametrize("l, avg, floor, ceil", [
    # VOC at avgLabels 1.4: the code's int(avg + 2^n) against Eq. 3's ceiling
    (20, 1.4, [2, 3, 5, 9, 17, 20], [3, 4, 6, 10, 18, 20]),
    # COCO val_anno's mean label count 2.905 (80 labels, n = 0..7 as the code's eight rungs)
    (80, 2.905, [3, 4, 6, 10, 18, 34, 66, 80], [4, 5, 7, 11, 19, 35, 67, 80]),
    # NUS-WIDE: the committed ML-GCN list averages 1.351 labels; the code's thresholds 2,3,5,9,17,33,65,81
    (81, 1.351, [2, 3, 5, 9, 17, 33, 65, 81], [3, 4, 6, 10, 18, 34, 66, 81]),
])
def test_ladder_floor_and_ceil(l, avg, floor, ceil):
    assert protocol.exp_labels(l, avg, "floor") == floor
    assert protocol.exp_labels(l, avg, "ceil") == ceil


def test_presets_pick_their_rules_and_overrides_win():
    rel = RunSpec(attack="pgd", preset="released")
    pap = RunSpec(attack="pgd", preset="paper")
    assert (rel.order, rel.rounding) == ("first", "floor")
    assert (pap.order, pap.rounding) == ("seeded", "ceil")
    assert RunSpec(attack="mlcw", preset="demo").rounding == "ceil"  # shortened presets follow the text
    mixed = RunSpec(attack="pgd", preset="released", order="seeded", rounding="ceil")
    assert (mixed.order, mixed.rounding) == ("seeded", "ceil")
    with pytest.raises(UserError, match="unknown rounding 'round'"):
        RunSpec(attack="pgd", rounding="round")


@pytest.mark.parametrize("attack, preset, family, dataset, n", [
    ("pgd", "released", "mlgcn", "voc2007", 200),  # adv[0:200] of the first 1000
    ("pgd", "released", "mlgcn", "voc2012", 200),
    ("pgd", "released", "mlgcn", "coco", 1000),
    ("mlcw", "released", "mlliw", "coco", 200),  # count < 200
    ("pgd", "released", "mlliw", "nuswide", 200),  # y[0:200]
    ("mlalp", "released", "mlgcn", "coco", 1000),  # the code has no MLA-LP count of its own
    ("mlalp", "paper", "mlgcn", "voc2007", 200),  # the text's 200
    ("pgd", "paper", "mlgcn", "voc2007", 1000),
    ("pgd", "released", "mlgcn", "demo", 1000),  # a data set the code never ran: its defaults
])
def test_samples_per_cell(attack, preset, family, dataset, n):
    assert RunSpec(attack=attack, preset=preset).samples(family, dataset) == n
    assert RunSpec(attack=attack, preset=preset, n=7).samples(family, dataset) == 7


def test_avg_labels_basis():
    assert protocol.avg_labels_basis("released", "mlgcn", "voc2007") == 1000  # y.npy: all selected
    assert protocol.avg_labels_basis("released", "mlliw", "coco") == 200
    assert protocol.avg_labels_basis("paper", "mlliw", "coco") == protocol.PROTOCOL_N


def test_first_order_is_file_order():
    cand = np.array([3, 8, 11, 20, 21, 40])
    assert protocol.select(cand, 4, seed=5, order="first").tolist() == [3, 8, 11, 20]
    seeded = protocol.select(cand, 4, seed=5, order="seeded")
    assert len(set(seeded.tolist())) == 4 and set(seeded.tolist()) <= set(cand.tolist())


def test_slide_paper_step_is_advertorchs_default():
    assert attacks.make_config("slide", "paper").step == 0.01  # SparseL1DescentAttack's eps_iter
    assert attacks.make_config("slide", "released").step == 300.0


# ------------------------------------------------------------------ MLA-LP: the code's thresholds
def _thr(attacked, p_clean):
    a = torch.tensor(attacked)
    return ReleasedThresholds(a, torch.tensor(p_clean, dtype=torch.float64), 0.5, 0.05)


def test_mlalp_threshold_trace_one_label():
    # One sample, one attacked label; probabilities 0.1 (clean), 0.1, 0.2, 0.2, 0.3 after steps 0..3:
    # "did not fall or below 0.6" holds each time, so T drops by 0.05 per step, in float64.
    t = _thr([[True, False]], [[0.1, 0.9]])
    seq = [0.1, 0.1, 0.2, 0.2, 0.3]
    for it in range(4):
        cur = torch.tensor([[seq[it] + 1e-9, 0.9]])  # clamped current; never equal to the new value here
        new = torch.tensor([[seq[it + 1], 0.9]])
        stuck, failed = t.update(it, [False], [False], cur, new)
        assert stuck == [] and failed == []
    assert t.trace == [0.5, 0.45, 0.4, 0.35000000000000003, 0.30000000000000004]
    # Only attacked labels carry T; the others keep the base threshold.
    assert t.thresholds(torch.full((1, 2), 0.5, dtype=torch.float64)).tolist() == [[0.30000000000000004, 0.5]]


def test_mlalp_threshold_floor_and_condition():
    t = _thr([[True]], [[0.2]])
    for it in range(10):
        t.update(it, [False], [False], torch.tensor([[0.1]]), torch.tensor([[0.3]]))
    # 0.10000000000000007 > 0.1, so a ninth decrement happens: the code's floor is ~0.05, not 0.1.
    assert t.trace[-2:] == [0.05000000000000007, 0.05000000000000007]
    assert t.trace[8] == 0.10000000000000007
    t = _thr([[True]], [[0.7]])
    t.update(0, [False], [False], torch.tensor([[0.7]]), torch.tensor([[0.65]]))  # fell and >= 0.6: keep
    assert t.value == 0.5
    t.update(1, [False], [False], torch.tensor([[0.65]]), torch.tensor([[0.59]]))  # below 0.6: lower
    assert t.value == 0.45


def test_mlalp_threshold_shared_by_the_batch_and_indexed_flat():
    # Three samples, all conditions true: one decrement per sample in the first step.
    t = _thr([[True], [True], [True]], [[0.1], [0.1], [0.1]])
    t.update(0, [False] * 3, [False] * 3, torch.full((3, 1), 0.1), torch.full((3, 1), 0.2))
    assert t.value == 0.35000000000000003
    # Sample i looks at the i-th attacked pair of the flattened batch: here sample 0 -> (0,1),
    # sample 1 -> (0,2), not at its own labels (1,0), (1,2).
    attacked = [[False, True, True], [True, False, True]]
    t = _thr(attacked, [[0.9, 0.1, 0.7], [0.1, 0.9, 0.1]])
    cur = torch.tensor([[0.9, 0.1, 0.7], [0.1, 0.9, 0.1]])
    new = torch.tensor([[0.9, 0.2, 0.65], [0.4, 0.9, 0.4]])  # (0,1) rose; (0,2) fell and >= 0.6
    t.update(0, [False, False], [False, False], cur, new)
    assert t.value == 0.45  # sample 1's own labels rose, but its check read (0,2)


def test_mlalp_stuck_and_failed_rules():
    t = _thr([[True], [True], [True]], [[0.1], [0.1], [0.1]])
    done = [False, False, True]  # sample 2 already finished: skipped
    cur = torch.tensor([[0.2], [0.3], [0.4]])
    new = torch.tensor([[0.2], [0.35], [0.4]])
    # iteration 4: equality does not count yet; sample 1's r was all zero -> failed
    stuck, failed = t.update(4, done, [False, True, False], cur, new)
    assert (stuck, failed, done) == ([], [1], [False, True, True])
    assert t.value == 0.45  # sample 0 decremented; 1 failed before its check; 2 skipped
    done = [False, False, False]
    # iteration 5: a new probability equal to the current one (0.2, 0.4) means stuck; sample 1's
    # 0.35 did not fall from the previous step's 0.35 -> one decrement
    stuck, failed = t.update(5, done, [False, False, False], cur, new)
    assert (stuck, failed, done) == ([0, 2], [], [True, False, True])
    assert t.value == 0.4


def test_mlalp_released_end_to_end_trace(trained, demo_root):
    from engine import data, models

    model = models.load(trained["mlgcn"])
    ds = data.load("demo", root=demo_root, size=20)
    x = torch.stack([ds.image(i) for i in range(6)])
    ctx = {"trace": []}
    res = attacks.run(model, x, "mlalp", preset="released", iterations=3, ctx=ctx)
    tr = ctx["trace"]
    assert tr[0] == 0.5 and len(tr) >= 2
    steps = np.diff(tr)
    assert (steps <= 0).all() and np.allclose(steps / 0.05, np.round(steps / 0.05))
    assert (res.norms[:, 3] <= 1 + 1e-6).all()


# ------------------------------------------------------------------ ML-CW: the code's constant schedule
class MeanModel(nn.Module):
    """Two labels, both with logit 100 (mean(x) - 0.5): bright images show both, dark ones cannot
    get there in a few Adam steps (their sigmoid is saturated)."""

    def forward(self, x):
        z = 100 * (x.mean((1, 2, 3)) - 0.5)
        return z[:, None].expand(-1, 2)


BRIGHT = torch.full((1, 3, 4, 4), 0.9)
DARK = torch.full((1, 3, 4, 4), 0.1)
ALWAYS = [1e5 / 2**s for s in range(10)]  # S at every step: halve (lo = 0)
NEVER = [1e5 * 10**s for s in range(10)]  # F at every step: x10 until an upper bound exists (never)


def _cw_trace(x, preset, **kw):
    ctx = {"trace": []}
    attacks.run(MeanModel(), x, "mlcw", preset=preset, iterations=5, ctx=ctx, **kw)
    return np.array(ctx["trace"])  # [binary step, sample]


def test_mlcw_constant_trace_released_vs_paper():
    rel = _cw_trace(torch.cat([BRIGHT, DARK]), "released")
    assert rel[:, 1].tolist() == NEVER  # ..., 1e13, 1e14: the code's last step is no repeat at the upper bound
    # In the same batch, the dark sample's c reaches 1e10 at step 5: the batch's summed loss then
    # exceeds 0.9999 x 1e10 at iteration 0 of every later step and the code stops the whole batch
    # before recording anything, so the bright sample fails steps 5-9 too and c climbs back.
    assert rel[:, 0].tolist() == [1e5, 5e4, 2.5e4, 12500, 6250, 3125, 4687.5, 5468.75, 5859.375, 6054.6875]
    alone = _cw_trace(BRIGHT, "released")
    assert alone[:, 0].tolist() == ALWAYS  # ..., 390.625, 195.3125
    pap = _cw_trace(torch.cat([BRIGHT, DARK]), "paper")
    # C&W's repeat: the last step runs at the upper bound (390.625, the c of the last success) ...
    assert pap[:, 0].tolist() == ALWAYS[:9] + [390.625]
    assert pap[:, 1].tolist() == NEVER[:9] + [1e10]  # ... and at 1e10 (no bound found)
    # ... and each sample stops on its own loss: batch-mates change nothing.
    assert _cw_trace(BRIGHT, "paper")[:, 0].tolist() == pap[:, 0].tolist()


# ------------------------------------------------------------------ ML-DP: the code's tie-break and precision
def test_mldp_released_settings():
    cfg = attacks.make_config("mldp", "released")
    assert (cfg.tie_break, cfg.accumulate, cfg.overshoot) == ("image", "float64", 0.0)
    assert attacks.make_config("mldp", "paper").tie_break == "perturbation"
    with pytest.raises(UserError, match="unknown tie_break 'l2'; valid: perturbation, image"):
        attacks.make_config("mldp", "paper", tie_break="l2")


class DarkerModel(nn.Module):
    """Label 0 shown iff mean(x) >= 0.4 (shown on the grey clean image); label 1 never (no gradient)."""

    def forward(self, x):
        z0 = 5 * (x.mean((1, 2, 3)) - 0.4)
        return torch.stack([z0, torch.full_like(z0, -30.0) + 0 * z0], 1)


def test_mldp_tie_break_image_norm_keeps_a_darker_iterate():
    # ML-DP puts label 0 on its boundary (mean 0.4): from then on its iterates match as many labels as
    # the clean image (1 of 2), a tie. The code's tie-break (smaller image norm) takes such a darker
    # iterate over the clean image; ours (smaller perturbation) never does.
    x = torch.full((1, 3, 2, 2), 0.5)
    img = attacks.run(DarkerModel(), x, "mldp", preset="released", iterations=20)
    pert = attacks.run(DarkerModel(), x, "mldp", preset="released", tie_break="perturbation", iterations=20)
    assert img.label_count_final.item() == pert.label_count_final.item() == 1
    assert torch.equal(pert.x_adv, x) and pert.norms[0, 2] == 0
    assert img.x_adv.mean() < 0.45 and img.norms[0, 2] > 0


# ------------------------------------------------------------------ runs, store and report
def test_released_run_first_n_floor_ladder_and_report(trained, demo_root, tmp_path):
    out = tmp_path / "s.zarr"
    rel = runner.attack_checkpoint(trained["mlliw"], "fgsm", out, preset="released", n=6, chunk_size=3,
                                   root=demo_root, progress=False)
    pap = runner.attack_checkpoint(trained["mlliw"], "fgsm", out, n=6, chunk_size=3, root=demo_root, progress=False)
    root = results.open_store(out, "r")
    group = root["mlliw/demo"]
    # ML-LIW is fed its own input under `released` too, its labels shown at sigmoid >= 0.5 (tests/test_feed.py)
    cand = np.asarray(group["candidates_model_sigmoid"][:])
    assert cand.tolist() == np.asarray(group["candidates"][:]).tolist()  # no logit of it within 6e-8 below 0
    run = group["fgsm.released.show-many"]
    assert np.asarray(run["sample_index"][:]).tolist() == cand[:6].tolist()  # the first 6, in file order
    a = dict(run.attrs)
    labels = np.asarray(results.open_store(out, "r")["mlliw/demo/fgsm/labels_true"][:])
    assert labels.shape[0] == 6
    assert a["rounding"] == "floor" and a["order"] == "first"
    # avgLabels: one per (model, data set), over min(1000, all) selected samples, whatever N the run has
    assert a["avg_labels_samples"] == min(1000, len(cand))
    assert rel["avg_labels"] == pap["avg_labels"]  # both over every candidate here (fewer than 1000)
    assert rel["exp_labels"] == protocol.exp_labels(8, rel["avg_labels"], "floor")
    assert pap["exp_labels"] == protocol.exp_labels(8, pap["avg_labels"], "ceil")
    render(out, tmp_path / "rep", ("md", "json"))
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert "int(), floor; avgLabels" in md and "ceil; avgLabels" in md
    assert "6 first" in md and "6 seeded" in md


def test_splits_of_one_model_live_side_by_side(trained, demo_root, tmp_path):
    out = tmp_path / "s.zarr"
    runner.attack_checkpoint(trained["mlgcn"], "fgsm", out, n=4, chunk_size=4, root=demo_root, progress=False)
    runner.attack_checkpoint(trained["mlgcn"], "fgsm", out, n=4, chunk_size=4, root=demo_root, split="train",
                             progress=False)
    root = results.open_store(out, "r")
    assert root["mlgcn/demo"].attrs["split"] == "test"
    assert root["mlgcn/demo@train"].attrs["split"] == "train"


def test_code_batch_needs_aligned_chunks(trained, demo_root, tmp_path):
    # Under `released` ML-CW's results depend on the batch: the code's batches (10 by default) must
    # not straddle two chunks.
    with pytest.raises(UserError, match="not a multiple of the released code's batch 10"):
        runner.attack_checkpoint(trained["mlgcn"], "mlcw", tmp_path / "s.zarr", preset="released", n=8,
                                 chunk_size=4, root=demo_root, progress=False)
