"""ML-CW: multi-label Carlini & Wagner L2 (Song et al. 2018), as the study's released code runs it
(hinanmu/MLALP ``ml_cw``).

Variable w in tanh space: x' = (tanh(w + atanh((2x - 1) * 0.999999)) + 1) / 2. Loss per sample
(the study's Eq. 10 with the squared L2 norm and no margin):

    ||x' - x~||_2^2 + c * sum_k max(0, -y*_k (sigmoid(z_k(x')) - 0.5)),   y* in {-1, 1}

(x~ = the tanh-space reconstruction of x.) Adam, lr 0.01, ``iterations`` steps per binary-search
step. Binary search over c per sample (``binary_steps`` = 10, initial 1e5): after a step that
reached y*, c <- (lo + up)/2 with up = c; otherwise lo = c and c <- (lo + up)/2 if an upper bound
is known, else c x 10. Kept: the iterate with most labels matching y*, ties broken by the smaller
L2 distance. Two places where the released code (``released``) differs from Carlini & Wagner's
original, which ``paper`` follows:

- Last step. C&W's ``repeat`` runs the last of >= 10 steps at c = up (``repeat_at_upper``). The
  released code builds its constant tensor first and only then rebinds the name to the upper
  bound, so its last step runs at the bisected c: ``released`` does that.
- Early abort, every iterations/10 steps. ``abort = "sample"``: a sample whose loss did not fall
  below 0.9999 x its previous check stops for that step (after its iterate is recorded), so its
  result does not depend on its batch-mates. ``abort = "batch"`` (``released``): the code compares
  the batch's summed loss (float64) and stops *the whole batch* before recording that iterate;
  one hopeless sample whose c reached 1e10 stops its batch at iteration 0 of every later step. The
  results then depend on the batch, so the runtime attacks in the code's batches under
  ``released`` (``AttackSpec.code_batch``).

``demo`` shortens the search (4 x 100) so that the embedded demo runs on two CPU cores; it follows
the ``paper`` rules and is not the study's setting.
Norm: L2 (unbounded). Shapes: x [B,3,H,W] in [0,1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.attacks.driver import finalize
from engine.attacks.registry import MAX_ITERATIONS, AttackConfig, AttackSpec, Passes, register
from engine.config import param


@dataclass(frozen=True, kw_only=True)
class MLCWConfig(AttackConfig):
    # Upper bounds: past them a typo runs for days (the study's largest search is 10 x 1000 steps).
    binary_steps: int = param(10, ge=1, le=64, doc="binary-search steps over the constant c")
    iterations: int = param(1000, ge=1, le=MAX_ITERATIONS, doc="Adam steps per binary-search step")
    # Adam needs a positive step size (torch refuses a negative one; 0 never moves).
    lr: float = param(0.01, gt=0, doc="Adam's learning rate")
    # c weighs the label hinge against the distance: c <= 0 drops or inverts the labels' term, and
    # the search (c x 10 until success, then bisection) never leaves it.
    initial_const: float = param(1e5, gt=0, doc="the first constant c of the binary search")
    abort_early: bool = param(True, doc="stop a binary-search step whose loss stopped falling")
    abort: str = param("sample", choices=("sample", "batch"),
                       doc="early abort per sample, or per batch (the released code's; see the module docstring)")
    repeat_at_upper: bool = param(True, doc="C&W: the last of >= 10 steps runs at the upper bound")


@dataclass(frozen=True)
class Objective:
    """What the penalty search minimises besides the distance, and how it ranks iterates:
    ``term(logits) -> [B]`` (weighted by c), ``score(logits) -> [B]`` (the best iterate has the
    highest; ties go to the smaller distance) and ``hit(logits) -> bool [B]`` (the iterate reached
    the target: the binary search lowers c)."""

    term: Callable[[torch.Tensor], torch.Tensor]
    score: Callable[[torch.Tensor], torch.Tensor]
    hit: Callable[[torch.Tensor], torch.Tensor]


def label_hinge(y_star: torch.Tensor) -> Objective:
    """ML-CW's: the hinge of each label's sigmoid against 0.5 towards y*, scored by labels matched."""
    sign = 2 * y_star - 1
    l = y_star.shape[1]

    def matched(logits):
        return ((sign * (torch.sigmoid(logits) - 0.5)) >= 0).sum(1)

    return Objective(term=lambda z: torch.clamp(-sign * (torch.sigmoid(z) - 0.5), min=0).sum(1), score=matched,
                     hit=lambda z: matched(z) == l)


def run(model, x0, y_star, eligible, cfg: MLCWConfig, ctx):
    return search(model, x0, y_star, eligible, cfg, ctx, label_hinge(y_star))


def search(model, x0, y_star, eligible, cfg: MLCWConfig, ctx, obj: Objective):
    """Carlini and Wagner's penalty method with the binary search over c (the module docstring),
    for the objective ``obj``; the result keeps the best iterate over every step."""
    B, dev = x0.shape[0], x0.device
    w0 = torch.atanh((x0 * 2 - 1) * 0.999999)
    x_ref = (torch.tanh(w0) + 1) / 2
    lower = torch.zeros(B, dtype=torch.float64, device=dev)
    upper = torch.full((B,), 1e10, dtype=torch.float64, device=dev)
    const = torch.full((B,), cfg.initial_const, dtype=torch.float64, device=dev)
    o_best_l2 = torch.full((B,), 1e10, device=dev)
    o_best_score = torch.full((B,), -1, dtype=torch.long, device=dev)
    o_best_hit = torch.zeros(B, dtype=torch.bool, device=dev)
    o_best_x = x0.clone()
    best_counts = torch.zeros(B, dtype=torch.long, device=dev)
    bad_iter = torch.full((B,), -1, dtype=torch.long, device=dev)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    check = max(cfg.iterations // 10, 1)
    trace = ctx.get("trace") if isinstance(ctx, dict) else None  # tests: c per binary step
    for bstep in range(cfg.binary_steps):
        if cfg.repeat_at_upper and cfg.binary_steps >= 10 and bstep == cfg.binary_steps - 1:
            const = upper.clone()
        if trace is not None:
            trace.append(const.tolist())
        c = const.float()
        mod = torch.zeros_like(x0, requires_grad=True)
        opt = torch.optim.Adam([mod], lr=cfg.lr)
        best_score = torch.full((B,), -1, dtype=torch.long, device=dev)
        best_l2 = torch.full((B,), 1e10, device=dev)
        best_hit = torch.zeros(B, dtype=torch.bool, device=dev)
        prev = torch.full((B,), 1e10, device=dev)
        prev_sum = 1e10
        running = eligible & (bad_iter < 0)
        for it in range(cfg.iterations):
            if not bool(running.any()):
                break
            with torch.enable_grad():
                xn = (torch.tanh(mod + w0) + 1) / 2
                logits = model(xn)
                l2 = (xn - x_ref).pow(2).flatten(1).sum(1)
                hinge = obj.term(logits)
                loss = l2 + c * hinge
                opt.zero_grad(set_to_none=True)
                (loss * running).sum().backward()
            keep = mod.detach().clone()
            opt.step()
            if cfg.abort_early and cfg.abort == "batch" and it % check == 0:
                # The code's check: the batch's summed loss in float64, before this iterate is recorded.
                total = float((l2.detach().double() + const * hinge.detach().double())[running].sum())
                if total > prev_sum * 0.9999:
                    break
                prev_sum = total
            with torch.no_grad():
                mod[~running] = keep[~running]  # stopped samples stay where they stopped
                logits, loss, l2 = logits.detach(), loss.detach(), l2.detach()
                finite = torch.isfinite(logits).all(1) & torch.isfinite(loss)
                bad_iter = torch.where(~finite & running & (bad_iter < 0), bstep * cfg.iterations + it, bad_iter)
                ok = running & finite
                iters += ok.long()
                matched, hit = obj.score(logits), obj.hit(logits)
                best_counts = torch.where(ok, torch.maximum(best_counts, (logits >= 0).sum(1)), best_counts)
                step_better = ok & ((matched > best_score) | ((matched == best_score) & (l2 < best_l2)))
                best_score = torch.where(step_better, matched, best_score)
                best_l2 = torch.where(step_better, l2, best_l2)
                best_hit = torch.where(step_better, hit, best_hit)
                o_better = ok & ((matched > o_best_score) | ((matched == o_best_score) & (l2 < o_best_l2)))
                o_best_score = torch.where(o_better, matched, o_best_score)
                o_best_l2 = torch.where(o_better, l2, o_best_l2)
                o_best_hit = torch.where(o_better, hit, o_best_hit)
                o_best_x = torch.where(o_better.view(-1, 1, 1, 1), xn.detach(), o_best_x)
                running = running & finite
                if cfg.abort_early and cfg.abort == "sample" and it % check == 0:
                    running = running & ~(loss > prev * 0.9999)
                    prev = torch.where(running, loss, prev)
        # Binary search on c from this step's best (success = the objective's hit).
        success = best_hit & eligible
        upper = torch.where(success, torch.minimum(upper, const), upper)
        lower = torch.where(success, lower, torch.maximum(lower, const))
        known = upper < 1e9
        const = torch.where(known, (lower + upper) / 2, torch.where(success, const, const * 10))
    return finalize(model, x0, o_best_x, y_star, eligible, best_counts, o_best_hit, iters, bad_iter)


def passes(cfg: MLCWConfig, l: int) -> Passes:
    """One forward + backward per Adam step of every binary-search step (every step run: the
    abort-early rule only shortens it); the clean forward for the targets and the final scoring."""
    return Passes(grad=cfg.binary_steps * cfg.iterations, fwd=2)


register(AttackSpec(
    name="mlcw", family="solver",
    reference=("Song, Jin, Huang, Hu 2018, *Multi-label adversarial perturbations* (ICDM), after Carlini, Wagner "
               "2017; code: github.com/hinanmu/MLALP `ml_cw`"),
    title="ML-CW", config=MLCWConfig, norm="l2", run=run, doc=__doc__, code_batch=("released",),
    cost=passes,
    # Adam amplifies the last-bit differences of batch-1 and batch-B convolutions; the binary search and
    # the early abort can even send a sample down another path.
    batch_size_exact=False, quick={"binary_steps": 2, "iterations": 60},
    presets={
        "paper": {"binary_steps": 10, "iterations": 1000, "lr": 0.01, "initial_const": 1e5},
        "released": {"binary_steps": 10, "iterations": 1000, "lr": 0.01, "initial_const": 1e5, "abort": "batch",
                     "repeat_at_upper": False},
        "demo": {"binary_steps": 4, "iterations": 100, "lr": 0.01, "initial_const": 1e5},
    },
))
