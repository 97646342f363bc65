"""Rank I and Rank II against an independent port of the study's released ml_rank1.py / ml_rank2.py
(with src/attack_model.py's get_target_set), written for this test from that code: one batch, as
the code attacks it, on a small random model whose sigmoid outputs play the code's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.reference_ports import get_target_set, ref_rank
from engine import attacks
from engine.attacks import targets

LABELS = 6


def _model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, LABELS))
    net.num_labels = LABELS
    return net.eval()


@pytest.mark.parametrize("name", ["mlrank1", "mlrank2"])
def test_rank_attacks_equal_the_released_code(name):
    model = _model(1)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 8, 8, generator=g)
    kw = dict(preset="released", binary_steps=3, iterations=30, lr=0.05, initial_const=10.0)
    res = attacks.run(model, x, name, **kw)
    assert res.eligible.all()
    with torch.no_grad():
        clean = (model(x) >= 0).numpy()
    y = np.where(clean, 1, -1)
    y_target = np.where(res.y_star.numpy() > 0.5, 1, -1)
    y_tor, a_pos, b_neg = get_target_set(y, y_target)
    prob = lambda img: torch.sigmoid(model(img))  # noqa: E731 - the code's models output probabilities
    ref = ref_rank(prob, x.numpy(), y_target.astype(np.float32), y_tor, a_pos, b_neg, name == "mlrank2",
                   kw["iterations"], kw["binary_steps"], kw["lr"], kw["initial_const"])
    torch.testing.assert_close(res.x_adv, torch.from_numpy(ref), atol=2e-4, rtol=0)
    # the batch-wide early abort stopped some binary steps early, and every sample moved
    assert (res.iters < kw["binary_steps"] * kw["iterations"]).all() and (res.norms[:, 2] > 0).all()


def test_rank_targets_are_judged_on_the_ranking():
    model = _model(1)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    res = attacks.run(model, x, "mlrank1", binary_steps=2, iterations=40, lr=0.05)
    with torch.no_grad():
        z, clean = model(res.x_adv), model(x) >= 0
    crit = targets.criterion("rank-i", clean)
    assert torch.equal(res.success, crit.reached(z, res.y_star, torch.ones(6, dtype=torch.bool)) & res.eligible)
    assert torch.equal(res.success, (crit.margin(z, res.y_star) > 0) & res.eligible)
    assert res.success.any()
