"""MLA-LP (Zhou et al. 2020): per iteration and sample, the linear program of the study's Eq. 11-12,

    min ||r||_inf   s.t.   grad_x L_k(x)^T r <= L_k(y*, t_k) - L_k(y*, f_k(x))   for every label k,
                           |r_j| <= 1,

with L_k the BCE of label k on clamped sigmoid outputs (the released code's loss) and thresholds
t_k (0.5 at first). Labels with an all-zero gradient are dropped (the linearisation cannot move
them). The LP is solved exactly by :func:`engine.lp.solve_linf_lp` (LP duality with
constraint generation: its cost grows with l, not with the d pixels), in a pool of CPU workers.

Loop, after hinanmu/MLALP ``mla_lp`` (10 iterations): x <- clip(x + r); the iterate with most
labels matching y* is kept (ties: smaller RMS perturbation); if the count drops the iterate
restarts from the clean image. Two rule sets for the thresholds and for giving up (``rules``):

- ``engine`` (``paper``, ``full``): per (sample, label). A label of y* that is still wrong and
  whose confidence did not move towards y*, or is within 0.1 of the boundary, has its threshold
  pushed 0.05 further from 0.5 (towards y*), up to 0.4 away: the linearised loss of a convex BCE
  undershoots, so without the push an iterate approaches 0.5 from the wrong side. A sample whose LP
  fails or gives r = 0 is marked failed; one whose attacked labels have not moved from the clean
  image after 5 iterations likewise.
- ``released``: the code's bookkeeping, quirks included. One threshold T for every attacked
  (sample, label) pair of the batch (0.5 at first, non-attacked labels stay at 0.5). After each
  step, for sample i = 0 .. B-1 in turn, skipping samples already done (successful, stuck or
  failed), the code looks at the i-th attacked pair of the *flattened* batch (not at sample i's
  own labels): if its new probability equals its probability at the current iterate (exactly) and
  the iteration is >= 5, sample i is stuck and done; else if sample i's r is all zero it failed
  and is done; else if that pair's probability did not fall, or is below 0.6, and T > 0.1, then
  T <- T - 0.05 (float64, so the last decrement goes from 0.10000000000000007 to ~0.05). For y* = 1
  a lower T asks *less* of the labels to be shown: with a batch of 10, T is ~0.05 after the first
  iteration. Samples done in this step skip the best-iterate update; a drop in matched labels
  resets both the iterate and the best so far to the clean image. Where the code would index past
  the flattened pairs (fewer attacked pairs than samples: it raises IndexError) the check is
  skipped. Because T is shared, results depend on the batch: the runtime attacks in the code's
  batches under ``released`` (``AttackSpec.code_batch``).

Not reproducible exactly: the code solves with MOSEK's interior point method, which returns a tiny
non-zero r where every constraint already holds and may pick another point of the optimal face;
the exact solver here returns r = 0 there (the sample fails at once) and a vertex.
With a worker pool (``workers`` or a shared ``lp_pool``) and ``engine`` rules, each iteration is
split in two halves so that one half's LPs are solved while the other half's Jacobian is computed.
Norm: Linf. Shapes: x [B,3,H,W] in [0,1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.attacks.driver import finalize, jacobian
from engine.attacks.registry import MAX_ITERATIONS, AttackConfig, AttackSpec, Passes, register
from engine.config import param
from engine.errors import UserError
from engine.lp import LPPool, solve_linf_lp

__all__ = ["MLALPConfig", "ReleasedThresholds", "solve_linf_lp"]

RULES = ("engine", "released")
RELEASED_FLOOR = 0.1  # the released rules lower their shared threshold only while it is above this


class ReleasedThresholds:
    """The released code's batch-shared threshold and its stuck / failed rules (module docstring).

    ``attacked`` [B, l]: the labels each sample has to change; ``p_clean`` [B, l]: clean
    probabilities (unclamped), the first "before" values."""

    def __init__(self, attacked: torch.Tensor, p_clean: torch.Tensor, start: float, step: float,
                 floor: float = RELEASED_FLOOR):
        self.attacked = attacked
        self.before = p_clean[attacked].double()  # the flattened attacked pairs, row-major
        self.value, self.step, self.floor = float(start), float(step), float(floor)
        self.trace = [self.value]  # T as used by the LPs of iteration 0, 1, ... (for tests and logs)

    def thresholds(self, base: torch.Tensor) -> torch.Tensor:
        return torch.where(self.attacked, torch.full_like(base, self.value), base)

    def update(self, it: int, done: list[bool], r_zero: list[bool], p_cur: torch.Tensor,
               p_new: torch.Tensor) -> tuple[list[int], list[int]]:
        """One step's bookkeeping, samples in order. ``done``: samples already finished (updated in
        place); ``p_cur`` clamped probabilities at the iterates the LPs started from, ``p_new``
        unclamped ones after the step, both [B, l]. Returns (stuck, failed) sample indices."""
        cur, new = p_cur[self.attacked].double(), p_new[self.attacked].double()
        stuck, failed = [], []
        for i in range(len(done)):
            if done[i]:
                continue
            # (i >= len(new): the code would raise IndexError; the pair checks are skipped)
            if i < len(new) and bool(new[i] == cur[i]) and it >= 5:
                stuck.append(i)
                done[i] = True
                continue
            if r_zero[i]:
                failed.append(i)
                done[i] = True
                continue
            if i < len(new) and (bool(self.before[i] <= new[i]) or bool(new[i] < 0.6)) and self.value > self.floor:
                self.value -= self.step
        self.before = new
        self.trace.append(self.value)
        return stuck, failed


@dataclass(frozen=True, kw_only=True)
class MLALPConfig(AttackConfig):
    iterations: int = param(10, ge=1, le=MAX_ITERATIONS, doc="iterations")
    # The thresholds t_k are probabilities: the LP's right-hand side takes log(t_k) and log(1 - t_k).
    threshold: float = param(0.5, gt=0, lt=1, doc="the first threshold t_k of every label")
    threshold_step: float = param(0.05, ge=0, doc="how far a threshold moves per push")
    threshold_max_shift: float = param(0.4, ge=0, lt=0.5, doc="how far a threshold may move from its first value")
    # |r_j| <= bound: 0 would leave only r = 0 (every sample fails at once); past 1 it is inactive
    # on images in [0, 1] (the code's 1).
    bound: float = param(1.0, gt=0, doc="the LP's box on each pixel's change |r_j|")
    reset_best_on_drop: bool = param(False, doc="a drop in matched labels also resets the best iterate (the code's)")
    rules: str = param("engine", choices=RULES, doc="thresholds and giving up: engine | released (module docstring)")
    workers: int = param(0, ge=0, le=1024, doc="LP worker processes (0: solve inline); results do not depend on it")

    def validate(self) -> None:
        # The thresholds must stay probabilities wherever the rules move them (module docstring).
        shift = self.threshold_max_shift
        if self.rules == "engine" and not (self.threshold - shift > 0 and self.threshold + shift < 1):
            raise UserError(f"threshold_max_shift must keep threshold +- threshold_max_shift inside (0, 1), got "
                            f"{self.threshold} +- {self.threshold_max_shift}", key="threshold_max_shift")
        if self.rules == "released" and self.threshold_step > RELEASED_FLOOR:
            raise UserError(f"threshold_step must be <= {RELEASED_FLOOR} under rules = released (the shared threshold "
                            f"is lowered by it while above {RELEASED_FLOOR}), got {self.threshold_step}",
                            key="threshold_step")


def _per_label_bce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def run(model, x0, y_star, eligible, cfg: MLALPConfig, ctx):
    B, dev = x0.shape[0], x0.device
    l = y_star.shape[1]
    clamp = cfg.prob_clamp if cfg.prob_clamp > 0 else 1e-6

    def probs(x):
        return torch.sigmoid(model(x)).clamp(clamp, 1 - clamp)

    def matched(p, tgt):
        return ((p >= 0.5) == tgt).sum(1)

    with torch.no_grad():
        z0 = model(x0)
    p0 = torch.sigmoid(z0).clamp(clamp, 1 - clamp)
    target = y_star > 0.5
    attacked = (p0 >= 0.5) != target  # labels the attack has to change (the code's A_m)
    thr = torch.full((B, l), cfg.threshold, dtype=torch.float64, device=dev)
    released = ReleasedThresholds(attacked, torch.sigmoid(z0), cfg.threshold, cfg.threshold_step) \
        if cfg.rules == "released" else None
    x = x0.clone()
    best_x = x0.clone()
    clean_m = matched(p0, target)
    best_m = clean_m.clone()
    best_counts = (p0 >= 0.5).sum(1)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    bad_iter = torch.full((B,), -1, dtype=torch.long, device=dev)
    reasons = [""] * B
    failed = torch.zeros(B, dtype=torch.bool, device=dev)
    pool = ctx.get("lp_pool") if isinstance(ctx, dict) else None
    own_pool = None
    if pool is None and cfg.workers > 0:
        pool = own_pool = LPPool(workers=cfg.workers)
    def probs_of(lk, y_sel):
        # The current probabilities from the per-label losses (no second forward):
        # L = -log p for y* = 1 and -log(1 - p) for y* = 0.
        e = torch.exp(-lk)
        return torch.where(y_sel > 0.5, e, 1 - e)

    def linear_programs(idx):
        """Jacobian of the per-label losses at the current iterates and the LPs (A, b) per sample."""
        y_sel = y_star[idx]
        J, lk = jacobian(lambda xx: _per_label_bce(probs(xx), y_sel), x[idx])
        b = (_per_label_bce(thr[idx], y_sel.double()) - lk.double()).cpu().numpy()
        A = J.flatten(2).cpu().numpy()
        jobs = []
        for j in range(len(idx)):
            keep = np.any(A[j] != 0, axis=1)  # a label with an all-zero gradient cannot be moved: drop it
            jobs.append((np.ascontiguousarray(A[j][keep]), b[j][keep]))
        return jobs, probs_of(lk, y_sel)

    def step(it, idx, sols):
        """x + r for the samples ``idx`` and the model's logits there; LP failures are noted (the
        sample is given up now under ``engine`` rules, by the code's rule order under ``released``)."""
        r = torch.zeros_like(x[idx])
        why = {}
        for j, (rj, _obj, status) in enumerate(sols):
            if status != "optimal":
                why[j] = f"LP {status} at iteration {it}"
            elif not np.any(rj):
                why[j] = f"LP gave r = 0 at iteration {it} (no step decreases the loss)"
            else:
                r[j] = torch.from_numpy(rj.astype(np.float32)).view_as(r[j])
        iters[idx] += 1
        xn = (x[idx] + r).clamp(0, 1)
        with torch.no_grad():
            z = model(xn)
        finite = torch.isfinite(z).all(1)
        bad_iter[idx] = torch.where(~finite & (bad_iter[idx] < 0), it, bad_iter[idx])
        best_counts[idx] = torch.where(finite, torch.maximum(best_counts[idx], (z >= 0).sum(1)), best_counts[idx])
        return xn, z, finite, why

    def keep_best(idx, xn, m, finite):
        x[idx] = xn
        bm = best_m[idx]
        rms_new = (xn - x0[idx]).flatten(1).pow(2).mean(1).sqrt()
        rms_best = (best_x[idx] - x0[idx]).flatten(1).pow(2).mean(1).sqrt()
        better = finite & ((m > bm) | ((m == bm) & (rms_new < rms_best)))
        worse = finite & (m < bm)
        best_x[idx] = torch.where(better.view(-1, 1, 1, 1), xn, best_x[idx])
        best_m[idx] = torch.where(better, m, bm)
        x[idx] = torch.where(worse.view(-1, 1, 1, 1), x0[idx], x[idx])
        if cfg.reset_best_on_drop:
            best_x[idx] = torch.where(worse.view(-1, 1, 1, 1), x0[idx], best_x[idx])
            best_m[idx] = torch.where(worse, clean_m[idx], best_m[idx])

    def apply_released(it, idx, sols, todo):
        with torch.no_grad():
            z_cur = model(x)  # the whole batch: the code's checks may look at any sample's labels
        xn, z, finite, why = step(it, idx, sols)
        z_new = z_cur.clone()
        z_new[idx] = z
        done = [not bool(v) for v in todo]
        why_of = {int(idx[j]): msg for j, msg in why.items()}  # by sample index
        stuck, gave_up = released.update(it, done, [i in why_of for i in range(B)],
                                         torch.sigmoid(z_cur).clamp(clamp, 1 - clamp), torch.sigmoid(z_new))
        for i in stuck:
            reasons[i] = f"stuck at iteration {it} (the code's rule: an attacked probability did not change)"
        for i in gave_up:
            reasons[i] = why_of[i]
        failed[stuck + gave_up] = True
        x[idx] = xn  # the code applies the step of a sample it gives up on, then never looks at it again
        live = torch.tensor([i not in stuck and i not in gave_up for i in idx.tolist()], device=dev)
        if bool(live.any()):
            keep_best(idx[live], xn[live], matched(torch.sigmoid(z[live]).clamp(clamp, 1 - clamp), target[idx][live]),
                      finite[live])
        thr[:] = released.thresholds(thr.fill_(cfg.threshold))

    def apply(it, idx, sols, pk):
        t = thr[idx]
        target_sel = target[idx]
        xn, z, finite, why = step(it, idx, sols)
        for j, msg in why.items():
            failed[int(idx[j])] = True
            reasons[int(idx[j])] = msg
        pn = torch.sigmoid(z).clamp(clamp, 1 - clamp)
        m = matched(pn, target_sel)
        # Thresholds: a still-wrong label that did not move towards y*, or that is within 0.1 of
        # the boundary, is asked for more. The linearised loss of a convex BCE undershoots, so
        # without the push an iterate approaches 0.5 from the wrong side and never crosses.
        toward = torch.where(target_sel, pn > pk, pn < pk)
        push = ~((pn >= 0.5) == target_sel) & (~toward | ((pn - 0.5).abs() < 0.1))
        direction = torch.where(target_sel, 1.0, -1.0).double()
        shifted = (t + cfg.threshold_step * direction).clamp(cfg.threshold - cfg.threshold_max_shift,
                                                              cfg.threshold + cfg.threshold_max_shift)
        thr[idx] = torch.where(push, shifted, t)
        # No progress at all on the attacked labels after 5 iterations: give up, as the code does.
        att = attacked[idx]
        stuck = (it >= 5) & ((pn == p0[idx]) | ~att).all(1) & att.any(1)
        for j in torch.nonzero(stuck).flatten().tolist():
            i = int(idx[j])
            if not failed[i]:
                failed[i] = True
                reasons[i] = f"attacked labels unchanged after {it + 1} iterations"
        keep_best(idx, xn, m, finite)

    try:
        for it in range(cfg.iterations):
            todo = eligible & ~failed & (best_m < l)
            if not bool(todo.any()):
                break
            idx = torch.nonzero(todo).flatten()
            if released is not None:
                jobs, _ = linear_programs(idx)
                sols = [solve_linf_lp(a, bb, bound=cfg.bound) for a, bb in jobs] if pool is None else \
                    [f.result() for f in [pool.submit(a, bb, bound=cfg.bound) for a, bb in jobs]]
                apply_released(it, idx, sols, todo)
            elif pool is None:
                jobs, pk = linear_programs(idx)
                apply(it, idx, [solve_linf_lp(a, bb, bound=cfg.bound) for a, bb in jobs], pk)
            else:
                # Two halves, pipelined: the workers solve the first half's LPs while this process
                # computes the second half's Jacobian (samples are independent, so the split does
                # not change any result).
                groups = [g for g in (idx[: (len(idx) + 1) // 2], idx[(len(idx) + 1) // 2 :]) if len(g)]
                pending = []
                for g in groups:
                    jobs, pk = linear_programs(g)
                    pending.append((g, [pool.submit(a, bb, bound=cfg.bound) for a, bb in jobs], pk))
                for g, futures, pk in pending:
                    apply(it, g, [f.result() for f in futures], pk)
            failed |= bad_iter >= 0
    finally:
        if own_pool is not None:
            own_pool.close()
    if released is not None and isinstance(ctx, dict) and "trace" in ctx:
        ctx["trace"].extend(released.trace)  # tests: the shared threshold per iteration
    return finalize(model, x0, best_x, y_star, eligible, best_counts, best_m == l, iters, bad_iter, reasons)


def passes(cfg: MLALPConfig, l: int) -> Passes:
    """Model passes only (the LPs are CPU work): per iteration the l-row Jacobian of the per-label
    losses (one forward, l backward) and forwards at the new and the current iterate; once: the
    clean forward for the targets, ``z0`` and the final scoring."""
    return Passes(grad=cfg.iterations, bwd=cfg.iterations * (l - 1), fwd=2 * cfg.iterations + 3)


register(AttackSpec(
    name="mlalp", family="solver",
    reference=("Zhou, Luo, Lin, Xu, Zhang 2020, *Generating multi-label adversarial examples by linear programming* "
               "(IJCNN); code: github.com/hinanmu/MLALP `mla_lp`"),
    title="MLA-LP", config=MLALPConfig, norm="linf", run=run, doc=__doc__, cost=passes,
    # Its cost is the LPs (CPU), each step takes the l x d Jacobian, and a process pool shared by
    # all batches of a process (``ctx["lp_pool"]``) solves the LPs of a batch in parallel.
    jacobian=True, cpu_bound=True, resources={"lp_pool": LPPool}, bound="bound", quick={"iterations": 4},
    # Under ``released`` the batch shares one threshold, so results depend on the batch (code_batch).
    code_batch=("released",),
    presets={"paper": {"iterations": 10},
             "released": {"iterations": 10, "reset_best_on_drop": True, "rules": "released"},
             "full": {"iterations": 10}},
    # The text attacks 200 samples ("for lack of time"); the released code has no count of its own
    # (every sample of its list: engine.protocol.RELEASED_CELLS).
    default_samples={"paper": 200, "full": 1000},
))
