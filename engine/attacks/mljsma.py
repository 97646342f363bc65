"""ML-JSMA: the Jacobian saliency map attack (Papernot et al. 2016, *The limitations of deep learning
in adversarial settings*, EuroS&P) for multi-label outputs, as the study's released code ships it
(attacks/ml_jsma_pytorch.py; shipped, not wired into its runs).

Per iteration, for every sample whose prediction is not yet y*: J = Jacobian of the sigmoid outputs
(l x d, one forward and l backward passes); with the wrong labels' directions dy = y* - y (+1: to
be shown, -1: to be hidden) and the other labels' plain sum, each feature i scores
S_i = t_i - o_i, where t_i = sum over wrong labels of J_ji dy_j and o_i = sum over the other labels
of J_ji, and S_i = 0 where t_i < 0. The ``floor(share x d)`` features of largest positive S (the code's
share: 1%, the first index first on ties, as ``np.argmax``) are increased by ``theta`` each; then
the image is clipped to [0, 1]. A feature may be picked again at a later iteration. A sample stops at
y*, or after ``iterations`` iterations (the code's ``gamma``); one with no positive saliency left
takes no step. The code computes its saliency map one feature at a time in Python; here it is one
batched product per iteration.

Presets: ``paper`` takes Papernot et al.'s values: theta = +1 and a distortion cap of 14.5% of the
features, that is 14 iterations of 1%. The file sets no values of its own (theta and gamma are
arguments); its rules above hold in every preset.
Norm: L0 (features changed; unbounded, ``iterations x share`` of them at most). Shapes: x [B,3,H,W] in [0,1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.attacks.driver import finalize, jacobian
from engine.attacks.registry import MAX_ITERATIONS, AttackConfig, AttackSpec, Passes, register
from engine.config import param


@dataclass(frozen=True, kw_only=True)
class MLJSMAConfig(AttackConfig):
    """Greedy L0 steps: the most salient features, by the Jacobian towards y*, raised by theta."""

    theta: float = param(1.0, gt=0, le=1, doc="each chosen feature is raised by theta (then clipped to [0, 1])")
    iterations: int = param(14, ge=1, le=MAX_ITERATIONS, doc="iterations (the code's gamma)")
    share: float = param(0.01, gt=0, le=1, doc="features changed per iteration: floor(share x d), the code's 1%")


def saliency(J: torch.Tensor, y: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """S [b, d] in float64 from J [b, l, d] (sigmoid outputs) and the current prediction y [b, l]."""
    dy = (y_star > 0.5).double() - y.double()
    Jd = J.double()
    t = (Jd * dy[:, :, None]).sum(1)
    o = (Jd * (dy == 0).double()[:, :, None]).sum(1)
    return torch.where(t < 0, torch.zeros_like(t), t - o)


def chosen(S: torch.Tensor, count: int) -> torch.Tensor:
    """A bool mask [b, d] of the ``count`` largest positive scores per row (first index on ties)."""
    order = torch.sort(S, dim=1, descending=True, stable=True).indices[:, :count]
    mask = torch.zeros_like(S, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask & (S > 0)


def run(model, x0, y_star, eligible, cfg: MLJSMAConfig, ctx):
    B, dev = x0.shape[0], x0.device
    d = x0[0].numel()
    count = max(1, math.floor(d * cfg.share + 1e-9))  # d * 0.01 may land a hair under floor(d / 100)
    prob = lambda x: torch.sigmoid(model(x))  # noqa: E731 - the code's model outputs probabilities
    x = x0.clone()
    best = torch.zeros(B, dtype=torch.long, device=dev)
    hit = torch.zeros(B, dtype=torch.bool, device=dev)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    bad_iter = torch.full((B,), -1, dtype=torch.long, device=dev)
    todo = eligible.clone()
    for it in range(cfg.iterations):
        idx = torch.nonzero(todo).flatten()
        if not len(idx):
            break
        J, p = jacobian(prob, x[idx])
        finite = torch.isfinite(J).flatten(1).all(1) & torch.isfinite(p).all(1)
        bad_iter[idx] = torch.where(~finite & (bad_iter[idx] < 0), it, bad_iter[idx])
        y = (p >= 0.5) & finite[:, None]
        best[idx] = torch.maximum(best[idx], y.sum(1))
        done = (y == (y_star[idx] > 0.5)).all(1)
        hit[idx] |= done
        go = finite & ~done
        S = saliency(torch.nan_to_num(J).flatten(2), y, y_star[idx])
        step = (chosen(S, count) & go[:, None]).view_as(x[idx]).to(x.dtype) * cfg.theta
        x[idx] = (x[idx] + step).clamp(0, 1)
        iters[idx] += go.long()
        todo[idx] = go
    return finalize(model, x0, x, y_star, eligible, best, hit, iters, bad_iter)


def passes(cfg: MLJSMAConfig, l: int) -> Passes:
    """Per iteration the l-row Jacobian (one forward, l backward); once: the clean forward for the
    targets and the final scoring."""
    return Passes(grad=cfg.iterations, bwd=cfg.iterations * (l - 1), fwd=2)


register(AttackSpec(
    name="mljsma", family="sparse",
    reference=("Papernot, McDaniel, Jha, Fredrikson, Celik, Swami 2016, *The limitations of deep learning in "
               "adversarial settings* (EuroS&P); multi-label code: the study's attacks/ml_jsma_pytorch.py"),
    title="ML-JSMA", config=MLJSMAConfig, norm="l0", run=run, doc=__doc__, jacobian=True, cost=passes,
    quick={"iterations": 4, "share": 0.03},
    presets={"paper": {"theta": 1.0, "iterations": 14, "share": 0.01}},
))
