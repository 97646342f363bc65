"""Rank I and Rank II: Song et al.'s (2018) attacks on the label ranking, as the study's released
code runs them (attacks/ml_rank1.py, ml_rank2.py, wired into src/attack_model.py as ``ml_rank1`` /
``ml_rank2``; the files of hinanmu/MLALP).

Both are ML-CW's penalty method (engine.attacks.mlcw: w in tanh space, Adam, a binary search over the
constant c, the same early abort and last-step rules) with a ranking hinge on the sigmoid outputs p
instead of the per-label one. With T the target labels (y*) and the others N:

    Rank I:   c * max(0, max_N p - min_T p)
    Rank II:  Rank I + c * max(0, max_D p - min_K p)

where D are the shown labels that y* drops and K the labels neither shown nor targeted: Rank II also
pushes the dropped labels below the ones never shown. The iterate kept is the one whose outputs
have the highest cosine with the code's ranking weights (+2 labels added, +1 kept, -1 never shown,
-2 dropped), ties to the smaller distance. Success of a binary-search step: ``search_success =
"ranking"`` (``paper``) asks the target's own ranking criterion of the step's best iterate;
``"threshold"`` (``released``) asks, as the code does, that its outputs thresholded at 0.5 equal y*.
Norm: L2 (unbounded). Shapes: x [B,3,H,W] in [0,1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attacks import mlcw
from engine.attacks.registry import AttackSpec, register
from engine.attacks.targets import Criterion
from engine.config import param


@dataclass(frozen=True, kw_only=True)
class RankConfig(mlcw.MLCWConfig):
    """ML-CW's search (binary steps, Adam steps, learning rate, first constant, early abort, last
    step), and what counts as a successful step of it."""

    search_success: str = param("ranking", choices=("ranking", "threshold"),
                                doc="a binary-search step succeeds when its best iterate ranks y* as the target asks "
                                    "(ranking) or thresholds to y* (threshold: the released code's)")


def _codes_min(p, mask):
    # The code's min over ``output * mask`` with the zeros set to 1: the smallest p in the mask (1 if
    # the mask is empty).
    v = p * mask
    return torch.where(v == 0, torch.ones_like(v), v).amin(1)


def ranking_objective(y_star, clean, second: bool, search_success: str) -> mlcw.Objective:
    """Rank I's (``second``: Rank II's) objective for targets y* and the clean prediction ``clean``."""
    pos = y_star > 0.5
    dropped, never = clean & ~pos, ~clean & ~pos
    # The code's ranking weights y_tor (src/attack_model.py get_target_set).
    weights = (2.0 * (~clean & pos) + 1.0 * (clean & pos) - 1.0 * never - 2.0 * dropped).double()
    criterion = Criterion("rank-ii" if second else "rank-i", clean=clean)
    threshold = mlcw.label_hinge(y_star).hit

    def term(z):
        p = torch.sigmoid(z)
        t = torch.relu((p * ~pos).amax(1) - _codes_min(p, pos))
        if second:
            # The code views output[A_pos] as [B, -1]: one count of dropped labels per batch (and
            # none raises); any count works here, none adds nothing.
            top_dropped = torch.where(dropped, p, torch.full_like(p, -float("inf"))).amax(1)
            t = t + torch.relu(top_dropped - _codes_min(p, never))
        return t

    def score(z):
        p = torch.sigmoid(z).double()
        return (p * weights).sum(1) / (weights.norm(dim=1) * p.norm(dim=1))

    def hit(z):
        if search_success == "threshold":
            return threshold(z)
        return criterion.reached(z, y_star, torch.isfinite(z).all(1))

    return mlcw.Objective(term=term, score=score, hit=hit)


def _runner(second: bool):
    def run(model, x0, y_star, eligible, cfg: RankConfig, ctx):
        with torch.no_grad():
            clean = model(x0) >= 0
        obj = ranking_objective(y_star, clean, second, cfg.search_success)
        return mlcw.search(model, x0, y_star, eligible, cfg, ctx, obj)
    return run


def _cost(cfg, l: int):
    # ML-CW's, and one more forward for the clean prediction.
    p = mlcw.passes(cfg, l)
    return type(p)(grad=p.grad, fwd=p.fwd + 1, bwd=p.bwd)


SONG = "Song, Jin, Huang, Hu 2018, *Multi-label adversarial perturbations* (ICDM)"
CODE = ("the study's released code (github.com/liuyujiang123/Showing-Many-Labels-in-Multi-label-Classification-"
        "Models-An-Empirical-Study-of-Adversarial-Examples) attacks/{} and src/attack_model.py, as hinanmu/MLALP")
# src/attack_model.py: 10 binary-search steps of 1000 Adam steps at lr 0.01 from c = 1e5.
SEARCH = {"binary_steps": 10, "iterations": 1000, "lr": 0.01, "initial_const": 1e5}
PRESETS = {
    "paper": dict(SEARCH),
    "released": dict(SEARCH, abort="batch", repeat_at_upper=False, search_success="threshold"),
    "demo": {"binary_steps": 4, "iterations": 100, "lr": 0.01, "initial_const": 1e5},
}

for _name, _title, _second, _file in (("mlrank1", "Rank I", False, "ml_rank1.py"),
                                      ("mlrank2", "Rank II", True, "ml_rank2.py")):
    register(AttackSpec(
        name=_name, family="ranking", title=_title, config=RankConfig, norm="l2", run=_runner(_second),
        doc=__doc__, reference=f"{SONG}; code: {CODE.format(_file)}", code_batch=("released",), cost=_cost,
        default_target="rank-ii" if _second else "rank-i",
        # As ML-CW: Adam amplifies the last-bit differences of batch-1 and batch-B convolutions.
        batch_size_exact=False, quick={"binary_steps": 2, "iterations": 60}, presets=PRESETS,
    ))
