"""TkML-AP (untargeted, targeted) and kFool against independent ports of the authors' code
(github.com/discovershu/TKML-AP: attack.py, baseline_attacks.py, utils.py), written for this test
from that code (bench/reference_ports.py): one sample at a time, as the code runs, on a small random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.reference_ports import box_model, ref_kfool, ref_targeted, ref_untargeted
from engine import attacks
from engine.attacks import targets

LABELS, K = 6, 2


def _model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, LABELS))
    net.num_labels = LABELS
    return net.eval()


def _inputs(model, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    return x


def _eligible_rows(res):
    return [i for i in range(len(res.eligible)) if bool(res.eligible[i])]


@pytest.mark.parametrize("eps, lr", [(3.0, 1.0), (1.0, 0.3)])  # most succeed; the ball binds, none succeed
def test_tkmlapu_equals_the_reference_loop(eps, lr):
    model = _model()
    f = box_model(model)
    x = _inputs(model)
    kw = dict(k=K, eps=eps, iterations=60, lr=lr)
    res = attacks.run(model, x, "tkmlapu", **kw)
    rows = _eligible_rows(res)
    assert len(rows) >= 3
    for i in rows:
        img, it = ref_untargeted(f, x[i : i + 1] * 2 - 1, res.y_star[i : i + 1], K, 2 * kw["eps"], kw["iterations"],
                                 kw["lr"])
        torch.testing.assert_close(res.x_adv[i : i + 1], ((img + 1) / 2).clamp(0, 1), atol=2e-5, rtol=0)
        assert int(res.iters[i]) == min(it + 1, kw["iterations"])
    assert res.success[rows].any() == (eps > 1) and (res.norms[:, 2] <= kw["eps"] * (1 + 1e-5)).all()


@pytest.mark.parametrize("difficulty", ["best", "worst"])
def test_tkmlapt_equals_the_reference_loop(difficulty):
    model = _model(2)
    f = box_model(model)
    x = _inputs(model, seed=3)
    kw = dict(k=K, eps=2.5, iterations=40, lr=1.0, difficulty=difficulty)
    res = attacks.run(model, x, "tkmlapt", **kw)
    for i in _eligible_rows(res):
        tlab = res.y_star[i : i + 1] * 2 - 1  # the code's targets: +1 chosen, -1 the others
        img = ref_targeted(f, x[i : i + 1] * 2 - 1, tlab, K, 2 * kw["eps"], kw["iterations"], kw["lr"])
        assert bool(res.success[i]) == (img is not None)
        if img is not None:
            torch.testing.assert_close(res.x_adv[i : i + 1], ((img + 1) / 2).clamp(0, 1), atol=2e-5, rtol=0)
    assert res.success.any()


def ref_pick(scores, gt, difficulty, k):  # the code's generate_target_zeros_3_cases, best / worst
    order = np.argsort(-scores) if difficulty == "best" else np.argsort(scores)
    picked = []
    for j in order:
        if gt[j] == 1 and len(picked) < k:
            continue
        picked.append(j)
        if len(picked) == k:
            break
    return sorted(picked)


def test_topk_targeted_picks_the_codes_labels():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(20, 8, generator=g)
    y = scores >= 0.3
    for difficulty in ("best", "worst"):
        t, ok = targets.build("topk-targeted", y, range(20), 0, scores=scores, k=3, difficulty=difficulty)
        for i in range(20):
            if ok[i]:
                want = ref_pick(scores[i].numpy(), y[i].int().numpy(), difficulty, 3)
                assert torch.nonzero(t[i]).flatten().tolist() == want


def test_kfool_equals_the_reference_loop():
    model = _model(0)
    f = box_model(model)
    x = _inputs(model, seed=1)
    res = attacks.run(model, x, "kfool", k=K, iterations=30)
    rows = _eligible_rows(res)
    assert rows
    for i in rows:
        img, loops = ref_kfool(f, x[i : i + 1] * 2 - 1, res.y_star[i : i + 1], K, 30)
        assert int(res.iters[i]) == loops
        torch.testing.assert_close(res.x_adv[i : i + 1], ((img + 1) / 2).clamp(0, 1), atol=1e-4, rtol=0)
    assert res.success[rows].any()  # the others ran all 30 iterations, as the code does
