"""The one iterative loop, and the bookkeeping every attack shares.

Per iteration: one forward + backward to the input (the model's floor), the attack's step (a fused
update from kernels.dispatch), and on-device bookkeeping: label counts of the current iterate,
their running maximum, and a mask of samples whose logits or gradient turned non-finite (those
are frozen and reported as failed; the others go on). With ``early_exit`` every ``exit_every``
iterations the samples that already show y* leave the batch (one host sync per check); without
it the loop has no host synchronisation at all.

Semantics recorded per sample: the label count of the final iterate (the study's) and the best
over all iterates (clean image included). Early exit reports the iterate at which a sample was
retired, which for show-many is the all-labels iterate: a different, stop-at-success semantics,
kept apart from the study's fixed-iteration one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.attacks import targets
from kernels import reference


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # [B,3,H,W] final adversarial images
    label_count_final: torch.Tensor  # [B] int: labels shown by x_adv
    label_count_best: torch.Tensor  # [B] int: most labels shown by any iterate
    pred: torch.Tensor  # [B,l] bool: prediction on x_adv
    norms: torch.Tensor  # [B,4] float: L0, L1, L2, Linf of x_adv - x
    iters: torch.Tensor  # [B] int: iterations spent on the sample
    success: torch.Tensor  # [B] bool: prediction on x_adv equals y*
    success_best: torch.Tensor  # [B] bool: some iterate's prediction equalled y*
    y_star: torch.Tensor  # [B,l] float {0,1}
    eligible: torch.Tensor  # [B] bool: the target applies to the sample
    failed: torch.Tensor  # [B] bool
    reasons: list[str] = field(default_factory=list)  # "" or why the sample failed
    # [B] int: model forwards a black-box attack ran for the sample (one per image evaluated); -1
    # for attacks that do not count them (the gradient and solver attacks: their cost is ``iters``).
    queries: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x_adv.shape[0]


def label_counts(logits: torch.Tensor) -> torch.Tensor:
    return (logits >= 0).sum(1)


def perturbation_norms(delta: torch.Tensor) -> torch.Tensor:
    d = delta.flatten(1).double()
    return torch.stack([(d != 0).sum(1).double(), d.abs().sum(1), d.norm(dim=1), d.abs().amax(1)], 1).float()


def grad_and_logits(model: nn.Module, x: torch.Tensor, y_star: torch.Tensor, loss_fn: Callable):
    """Gradient of sum_b L(y*_b, f(x_b)) w.r.t. x, and the logits of x (one forward, one backward)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(loss_fn(logits, y_star).sum(), x)
    return grad, logits.detach()


def sample_generator(seed: int, sample_id: int) -> torch.Generator:
    """The CPU generator of one sample's random draws: seeded by (seed, sample id) alone, so that a
    sample's draws never depend on its batch."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(sample_id))


def sample_noise(x0: torch.Tensor, sample_ids: Sequence[int], seed: int) -> Callable[[float, float], torch.Tensor]:
    """U(lo, hi) noise shaped like x0 whose row i depends only on (seed, sample_ids[i])."""

    def noise(lo: float, hi: float) -> torch.Tensor:
        rows = []
        for sid in sample_ids:
            g = sample_generator(seed, sid)
            rows.append(torch.rand(x0.shape[1:], generator=g, dtype=torch.float32))
        return (torch.stack(rows).to(x0.device) * (hi - lo) + lo).to(x0.dtype)

    return noise


def finalize(model: nn.Module, x0: torch.Tensor, x_adv: torch.Tensor, y_star: torch.Tensor, eligible: torch.Tensor,
             best_counts: torch.Tensor, best_success: torch.Tensor, iters: torch.Tensor, bad_iter: torch.Tensor,
             extra_reasons: Sequence[str] | None = None, queries: torch.Tensor | None = None) -> AttackResult:
    """Score the final iterate and assemble the result (``queries``: a black-box attack's count per
    sample; the scoring forward here is not among them)."""
    with torch.no_grad():
        logits = model(x_adv)
    finite = torch.isfinite(logits).all(1)
    pred = (logits >= 0) & finite[:, None]
    counts = pred.sum(1)
    ok = targets.reached(logits, y_star, finite) & finite
    reasons = []
    bad = (bad_iter >= 0) | ~finite
    # Two host copies instead of tensor reads per sample: those add up against a one-step attack.
    bad_at, fin = bad_iter.tolist(), finite.tolist()
    for i in range(len(x0)):
        r = extra_reasons[i] if extra_reasons else ""
        if bad_at[i] >= 0:
            r = f"non-finite logits or gradient at iteration {bad_at[i]}"
        elif not fin[i]:
            r = "non-finite logits on the final image"
        reasons.append(r)
    failed = bad | torch.tensor([bool(r) for r in reasons], device=bad.device)
    return AttackResult(
        x_adv=x_adv.detach(),
        label_count_final=torch.where(finite, counts, 0),
        label_count_best=torch.maximum(best_counts, torch.where(finite, counts, 0)),
        pred=pred,
        norms=perturbation_norms(x_adv - x0),
        iters=iters,
        success=ok & eligible,
        success_best=(best_success | ok) & eligible,
        y_star=y_star,
        eligible=eligible,
        failed=failed,
        reasons=reasons,
        queries=torch.full((len(x0),), -1, dtype=torch.long, device=x0.device) if queries is None else queries,
    )


def _guarded_step(spec, cfg, x, x0, grad, state, logits, frozen, k=None):
    """The attack's step, except for samples whose logits are not finite (or broke earlier): those
    stay where they are. Non-finite logits are what a diverging model produces; a NaN gradient with
    finite logits would need a NaN inside the backward alone, and checking the gradient too would
    cost a full extra pass over it every iteration. (Momentum may turn NaN for a frozen sample; it
    is never used again.)"""
    bad = ~torch.isfinite(logits).all(1) | frozen
    x_new, state = spec.step(x, x0, grad, state, cfg) if k is None else spec.step(x, x0, grad, state, cfg, k)
    return torch.where(bad.view(-1, *([1] * (x.dim() - 1))), x, x_new), state, logits, bad


def _eager_advance(model, spec, cfg, loss_fn):
    def advance(x, x0, y, state, frozen):
        grad, logits = grad_and_logits(model, x, y, loss_fn)
        return _guarded_step(spec, cfg, x, x0, grad, state, logits, frozen)

    return advance


_COMPILED: dict = {}


def compiled_advance(model, spec, cfg, loss_fn_key: tuple, loss_fn):
    """The whole iteration (forward, loss, gradient, update, bookkeeping) as one torch.compile graph.

    Gradients come from torch.func.grad_and_value, which Dynamo traces (torch.autograd.grad would
    break the graph); the update uses kernels.reference, which inductor fuses (into Triton on CUDA).
    Compiled functions are cached per (model, attack, config) so batches after the first reuse them;
    ``dynamic=None`` lets a batch-size change (early-exit compaction) recompile once as dynamic.
    """
    key = (id(model), spec.name, cfg, loss_fn_key)
    if key in _COMPILED:
        return _COMPILED[key]

    def objective(x, y):
        logits = model(x)
        return loss_fn(logits, y).sum(), logits

    grad_value = torch.func.grad_and_value(objective, has_aux=True)

    def advance(x, x0, y, state, frozen):
        grad, (_, logits) = grad_value(x, y)
        return _guarded_step(spec, cfg, x, x0, grad, state, logits, frozen, reference)

    # Every (model, attack, config) is a new closure of the same code object, which Dynamo counts
    # as a recompilation of it; the default limit (8) would stop a sweep over nine attacks.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
    fn = torch.compile(advance, fullgraph=True)
    _COMPILED[key] = fn
    return fn


def clean_step(model: nn.Module, x0: torch.Tensor, target_of: Callable, loss_fn: Callable):
    """(y*, eligible, first) from one forward pass at the clean image: the targets from its logits
    (the clean prediction) and ``first`` = (gradient, logits) of the loss towards them, from the
    same pass. A one-step attack then costs one forward + backward and the forward that scores
    x_adv, instead of a separate clean forward on top.

    ``first`` is None where some sample is not eligible: those are not attacked, and the others'
    gradient is taken in a batch of their own, as it always was (a full-batch gradient may differ
    in the last bit, and a resumed run must not mix the two)."""
    with torch.enable_grad():
        x = x0.detach().requires_grad_(True)
        logits = model(x)
        y_star, eligible = target_of(logits.detach())
        if not bool(eligible.all()):
            return y_star, eligible, None
        (grad,) = torch.autograd.grad(loss_fn(logits, y_star).sum(), x)
    return y_star, eligible, (grad, logits.detach())


def run_iterative(model: nn.Module, x0: torch.Tensor, y_star: torch.Tensor | None, eligible: torch.Tensor | None,
                  spec, cfg, *, loss_fn: Callable, noise: Callable, early_exit: bool = False, exit_every: int = 4,
                  advance: Callable | None = None, target_of: Callable | None = None) -> AttackResult:
    """Run ``cfg.iterations`` steps of ``spec.step`` (1 for one-step attacks) from ``spec.init``.

    ``advance(x, x0, y*, state, frozen) -> (x, state, logits of the input x, bad)`` is one iteration;
    by default the eager one, or the compiled one from :func:`compiled_advance`.
    ``target_of(clean logits) -> (y*, eligible)``, given instead of ``y_star`` and ``eligible``,
    builds the targets from the clean prediction; when the first step is taken at x0 (no random
    start) the clean logits are that step's own (:func:`clean_step`), so no pass is spent on them.
    """
    iterations = int(getattr(cfg, "iterations", 1))
    B, dev = x0.shape[0], x0.device
    x, state = spec.init(x0, cfg, noise) if spec.init is not None else (x0.clone(), None)
    advance = advance or _eager_advance(model, spec, cfg, loss_fn)
    first = None  # (gradient, logits) of iteration 0 when the clean pass computed them
    if target_of is not None:
        if spec.init is None or torch.equal(x, x0):
            y_star, eligible, first = clean_step(model, x0, target_of, loss_fn)
        else:
            with torch.no_grad():
                y_star, eligible = target_of(model(x0))
    # Ineligible samples are never attacked: they take zero steps.
    active = torch.arange(B, device=dev)[eligible] if not bool(eligible.all()) else torch.arange(B, device=dev)
    out_x = x0.clone()
    best = torch.zeros(B, dtype=torch.long, device=dev)
    best_hit = torch.zeros(B, dtype=torch.bool, device=dev)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    bad_iter = torch.full((B,), -1, dtype=torch.long, device=dev)
    xa, x0a, ya = x[active], x0[active], y_star[active]
    sa = _index_state(state, active)
    besta, hita, bada = best[active], best_hit[active], bad_iter[active]
    for it in range(iterations):
        if xa.shape[0] == 0:
            break
        if it == 0 and first is not None:  # every sample is active: the rows line up
            x_new, s_new, logits, bad_now = _guarded_step(spec, cfg, xa, x0a, first[0], sa, first[1], bada >= 0)
        else:
            x_new, s_new, logits, bad_now = advance(xa, x0a, ya, sa, bada >= 0)
        bada = torch.where(bad_now & (bada < 0), it, bada)
        pred = (logits >= 0) & (bada < 0)[:, None]
        besta = torch.maximum(besta, pred.sum(1))
        hit_now = targets.reached(logits, ya, bada < 0, active)
        hita = hita | hit_now
        if early_exit and it % exit_every == 0:
            # Retire on the current iterate (the one kept as x_adv), not on an earlier hit that a
            # later step may have undone.
            leave = hit_now | (bada >= 0)
            if bool(leave.any()):  # the one host sync: retire samples that reached y* (or broke)
                gone = active[leave]
                out_x[gone], best[gone] = xa[leave], besta[leave]
                best_hit[gone], bad_iter[gone] = hita[leave], bada[leave]
                iters[gone] = it
                keep = ~leave
                active, xa, x0a, ya = active[keep], xa[keep], x0a[keep], ya[keep]
                x_new, s_new = x_new[keep], _index_state(s_new, keep)
                besta, hita, bada = besta[keep], hita[keep], bada[keep]
        xa, sa = x_new, s_new
    out_x[active], best[active], best_hit[active], bad_iter[active] = xa, besta, hita, bada
    iters[active] = iterations
    return finalize(model, x0, out_x, y_star, eligible, best, best_hit, iters, bad_iter)


def _index_state(state, idx):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state[idx]
    return type(state)(_index_state(s, idx) for s in state)


def jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [B, l, *x.shape[1:]], out [B, l]) for a per-sample map fn: [B, ...] -> [B, l].

    One forward and l backward passes through the same graph; rows are per sample since samples are
    independent. (A vmapped backward, ``is_grads_batched``, measured about 2x slower here on CPU.)
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        l = out.shape[1]
        rows = [torch.autograd.grad(out[:, k].sum(), x, retain_graph=k < l - 1)[0] for k in range(l)]
    return torch.stack(rows, 1), out.detach()
