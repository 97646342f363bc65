"""ML-DP: multi-label DeepFool (Song et al. 2018), as the study's released code runs it
(hinanmu/MLALP ``ml_deepfool``).

Per iteration, for every sample not yet at the target: W = Jacobian of the sigmoid outputs
(l x d); labels whose gradient is all zero are dropped; the minimum-L2 step that puts every
remaining label on the 0.5 boundary of the linearisation is dr = W^T (W W^T)^-1 (0.5 - f) (the
study's Eq. 9 with equality, solved greedily); r_total += dr and x = clip(x + (1 + overshoot)
r_total). The iterate with the most labels matching y* is kept; ties go to the smaller
perturbation ``tie_break = "perturbation"``) or, as the released code does, to the smaller norm of
the adversarial *image* itself (``"image"``: a darker image wins, so a sample that made no progress
can come back perturbed). r_total is float32, or float64 as in the code (``accumulate``); W W^T and
the step are float32, or float64 (``gram``) as the code's on NUS-WIDE. A sample
whose W W^T is singular skips that iteration, as in the code; so does one whose step overflows
float32 (not reproduced: the code's inverse then poisons r_total with NaN for good).

Presets: ``paper`` follows the original papers (Song et al. adapt DeepFool, whose overshoot is
0.02; 20 iterations); ``released`` is the code (overshoot 0: it is commented out there; image-norm
ties; float64 accumulation).
Norm: L2 (unbounded). Shapes: x [B,3,H,W] in [0,1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from engine.attacks.driver import finalize, jacobian
from engine.attacks.registry import MAX_ITERATIONS, AttackConfig, AttackSpec, Passes, register
from engine.config import GRAM_DTYPES, param


@dataclass(frozen=True, kw_only=True)
class MLDPConfig(AttackConfig):
    iterations: int = param(20, ge=1, le=MAX_ITERATIONS, doc="iterations")
    # DeepFool's overshoot (Moosavi-Dezfooli et al. 2016) scales the accumulated step by 1 + overshoot
    # to cross the linearised boundary instead of landing on it: negative would stop short of it.
    overshoot: float = param(0.02, ge=0, doc="the accumulated step is scaled by 1 + overshoot")
    tie_break: str = param("perturbation", choices=("perturbation", "image"),
                           doc="equal label counts: the smaller perturbation, or the smaller image (the code's)")
    accumulate: str = param("float32", choices=("float32", "float64"),
                            doc="precision of the accumulated step (float64: the released code's)")
    # The code forms W W^T and the step in the dtype of its y: float32, but int64 (promoted to
    # float64) on NUS-WIDE. Set per (model, data set) by the released cells (engine.protocol.Feed).
    gram: str = param("float32", choices=GRAM_DTYPES,
                      doc="dtype of W W^T and of the step W^T (W W^T)^-1 (0.5 - f) (float64: the code on NUS-WIDE)")
    omit_at_default: ClassVar[tuple[str, ...]] = ("precision", "gram")


def _matched(logits: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    return ((logits >= 0) == (y_star > 0.5)).sum(1)


def run(model, x0, y_star, eligible, cfg: MLDPConfig, ctx):
    B = x0.shape[0]
    prob = lambda x: torch.sigmoid(model(x))  # noqa: E731 - the code works on sigmoid outputs
    with torch.no_grad():
        z0 = model(x0)
    best_x, best_m = x0.clone(), _matched(z0, y_star)
    best_counts = (z0 >= 0).sum(1)
    r_tot = torch.zeros_like(x0, dtype=torch.float64 if cfg.accumulate == "float64" else x0.dtype)
    x = x0.clone()
    iters = torch.zeros(B, dtype=torch.long, device=x0.device)
    bad_iter = torch.full((B,), -1, dtype=torch.long, device=x0.device)
    l = y_star.shape[1]
    todo = eligible & (best_m < l)
    for it in range(cfg.iterations):
        if not bool(todo.any()):
            break
        idx = torch.nonzero(todo).flatten()
        J, f = jacobian(prob, x[idx])
        Jf = J.flatten(2)  # [b, l, d]
        finite = torch.isfinite(Jf).all(2).all(1) & torch.isfinite(f).all(1)
        bad_iter[idx] = torch.where(~finite & (bad_iter[idx] < 0), it, bad_iter[idx])
        Jf = torch.where(finite[:, None, None], Jf, torch.zeros_like(Jf))
        f = torch.where(finite[:, None], f, torch.full_like(f, 0.5))
        Jg = Jf.double() if cfg.gram == "float64" else Jf
        gram = (Jg @ Jg.transpose(1, 2)).double()
        dropped = gram.diagonal(dim1=1, dim2=2) == 0  # an all-zero gradient row and column
        eye = torch.eye(l, dtype=gram.dtype, device=gram.device)
        gram = torch.where(dropped[:, :, None] | dropped[:, None, :], eye.expand_as(gram), gram)
        rhs = torch.where(dropped, 0.0, (0.5 - f).double())
        alpha, info = torch.linalg.solve_ex(gram, rhs.unsqueeze(2))
        dr = (Jg.transpose(1, 2) @ alpha.to(Jg.dtype)).squeeze(2).view_as(x[idx])
        # A near-singular W W^T (saturated sigmoids have gradients ~1e-7) gives steps that overflow
        # float32; such a step is skipped like a singular one, instead of poisoning r_total.
        solved = (info == 0) & torch.isfinite(alpha).all(2).all(1) & finite & torch.isfinite(dr).flatten(1).all(1)
        r_tot[idx] += torch.where(solved.view(-1, 1, 1, 1), dr, torch.zeros_like(dr)).to(r_tot.dtype)
        x[idx] = (x0[idx] + (1 + cfg.overshoot) * r_tot[idx]).clamp(0, 1).to(x.dtype)
        with torch.no_grad():
            z = model(x[idx])
        m = _matched(z, y_star[idx])
        iters[idx] += 1
        best_counts[idx] = torch.maximum(best_counts[idx], (z >= 0).sum(1))
        ref = 0 if cfg.tie_break == "image" else x0[idx]
        dn = (x[idx] - ref).flatten(1).norm(dim=1)
        bn = (best_x[idx] - ref).flatten(1).norm(dim=1)
        better = (m > best_m[idx]) | ((m == best_m[idx]) & (dn < bn))
        better &= torch.isfinite(z).all(1)
        best_x[idx] = torch.where(better.view(-1, 1, 1, 1), x[idx], best_x[idx])
        best_m[idx] = torch.where(better, m, best_m[idx])
        todo = eligible & (best_m < l) & (bad_iter < 0)
    hit = best_m == l
    return finalize(model, x0, best_x, y_star, eligible, best_counts, hit, iters, bad_iter)


def passes(cfg: MLDPConfig, l: int) -> Passes:
    """Per iteration the l-row Jacobian (one forward, l backward) and a forward at the new iterate;
    once: the clean forward for the targets, ``z0`` and the final scoring."""
    return Passes(grad=cfg.iterations, bwd=cfg.iterations * (l - 1), fwd=cfg.iterations + 3)


register(AttackSpec(
    name="mldp", family="solver",
    reference=("Song, Jin, Huang, Hu 2018, *Multi-label adversarial perturbations* (ICDM), after DeepFool (Moosavi-"
               "Dezfooli et al. 2016); code: github.com/hinanmu/MLALP `ml_deepfool`"),
    title="ML-DP", config=MLDPConfig, norm="l2", run=run, doc=__doc__, jacobian=True, cost=passes,
    # (J J^T)^-1 amplifies the last-bit differences of batch-1 and batch-B convolutions.
    batch_size_exact=False, quick={"iterations": 10},
    presets={"paper": {"iterations": 20, "overshoot": 0.02},
             "released": {"iterations": 20, "overshoot": 0.0, "tie_break": "image", "accumulate": "float64"}},
))
