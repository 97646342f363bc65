"""MLAE-DE: black-box differential evolution (Kong, Luo, Zhang, Liu, Shi 2022, *Evolutionary
multi-label adversarial examples: an effective black-box attack*, IEEE TAI), as the study's released
code ships it (attacks/mlae_de.py; shipped, not wired into its runs).

Forward passes only: the model's backward is never called. Each sample has a population of
``pop_size`` directions r in [-1, 1]^d (uniform at the start); an individual's image is
clip(x + eps * r, 0, 1) and its fitness is sum over labels of max(0, s_j (p_j - 0.5)), p the sigmoid
outputs and s_j = -1 on the labels y* shows, +1 elsewhere: 0 exactly when the prediction is y*.
Per generation: mutation r + F (r_a - r_b) with a and b two shuffles of the population, greedy
selection (an offspring replaces its parent when strictly fitter), then the complement step: every
individual i adds ``complement`` x the individual that does best on the labels i gets wrong, and
the result is selected again. A sample stops at fitness 0 or when its budget is spent: the code's
count adds ``pop_size`` per mutation step up to ``pop_size x generations``, so ``generations - 1``
generations run after the first population.

Queries (the store's ``queries``): the images the search evaluated for the sample, every one a
model forward: the first population, then two populations per generation. The code's own count
leaves out the complement step's population (and divides the count by 100 when the search fails):
up to ``pop_size x (2 generations - 1)`` forwards against the code's ``pop_size x generations``.
The engine's clean forward (the targets) and the final scoring forward come on top.

The populations of every sample of the batch are evaluated in one forward; each sample's draws (the
first population, two permutations per generation) come from its own generator seeded by (seed,
sample id), so a result never depends on its batch-mates. Where the code uses numpy's global RNG,
the tests inject these draws into a port of the code (tests/test_field_attacks.py).

Presets: ``paper`` keeps every individual in [-1, 1]^d (so ||x_adv - x||_inf <= eps) and returns the
fittest individual when no individual reaches y*; ``released`` is the file: mutation and complement
leave the box unclipped (the perturbation can exceed eps) and a failed search returns the first
individual of the population, whatever its fitness. The file sets no values; pop_size, generations
and eps are the engine's (a budget a CPU batch spends in seconds on the demo set).
Norm: Linf (``eps``). Shapes: x [B,3,H,W] in [0,1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attacks.driver import finalize, sample_generator
from engine.attacks.registry import MAX_ITERATIONS, AttackConfig, AttackSpec, Passes, register
from engine.config import param


@dataclass(frozen=True, kw_only=True)
class MLAEDEConfig(AttackConfig):
    """Differential evolution over perturbation directions, forward passes only."""

    eps: float = param(0.05, gt=0, le=1, doc="an individual r in [-1, 1]^d is the image clip(x + eps r, 0, 1)")
    pop_size: int = param(10, ge=2, le=10_000, doc="individuals per sample")
    generations: int = param(20, ge=1, le=MAX_ITERATIONS,
                             doc="budget: pop_size x generations counted evaluations (the code's count)")
    # Kong et al.'s scale factor of the difference vector; the code fixes F = 0.5.
    mutation: float = param(0.5, gt=0, le=2, doc="F: the mutant is r + F (r_a - r_b)")
    # The code's complement step adds half the helping individual: pop[i] + pop[j] * 0.5.
    complement: float = param(0.5, ge=0, le=2, doc="the complement step adds this share of the helping individual")
    bounded: bool = param(True, doc="clip every individual to [-1, 1]^d (false: the code's unclipped population)")
    on_failure: str = param("best", choices=("best", "first"),
                            doc="no individual reached y*: return the fittest, or the first (the code's)")


def fitness(logits: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """Per-label hinge [..., l] in float64: the code's fit, from float32 sigmoid outputs."""
    p = torch.sigmoid(logits.float()).double() - 0.5
    return torch.where(y_star > 0.5, -p, p).clamp_min(0)


class _Search:
    """The populations of the samples still searching, and their bookkeeping."""

    def __init__(self, model, x0, y_star, cfg):
        self.model, self.x0, self.y, self.cfg = model, x0, y_star, cfg
        B = x0.shape[0]
        dev = x0.device
        self.queries = torch.zeros(B, dtype=torch.long, device=dev)
        self.best_counts = (torch.zeros(B, dtype=torch.long, device=dev))
        self.hit = torch.zeros(B, dtype=torch.bool, device=dev)
        self.bad_iter = torch.full((B,), -1, dtype=torch.long, device=dev)

    def evaluate(self, idx: torch.Tensor, pop: torch.Tensor, it: int) -> torch.Tensor:
        """Per-label fitness [b, P, l] of the populations ``pop`` [b, P, d] of samples ``idx``: one
        forward for all of them. A sample with a non-finite output is marked broken at ``it``."""
        b, P = pop.shape[:2]
        x0 = self.x0[idx]
        imgs = (x0.double().unsqueeze(1) + pop.view(b, P, *x0.shape[1:]) * self.cfg.eps).clamp(0, 1)
        with torch.no_grad():
            z = self.model(imgs.to(x0.dtype).flatten(0, 1)).view(b, P, -1)
        self.queries[idx] += P
        finite = torch.isfinite(z).all(2).all(1)
        self.bad_iter[idx] = torch.where(~finite & (self.bad_iter[idx] < 0), it, self.bad_iter[idx])
        y = self.y[idx].unsqueeze(1)
        shown = (z >= 0) & finite[:, None, None]
        self.best_counts[idx] = torch.maximum(self.best_counts[idx], shown.sum(2).amax(1))
        self.hit[idx] |= (shown == (y > 0.5)).all(2).any(1)
        return fitness(torch.nan_to_num(z), y)


def _select(pop, fit, off, off_fit):
    """Offspring replace their parents where strictly fitter (the code's ``fitness > off_fitness``)."""
    better = fit.sum(2) > off_fit.sum(2)
    return torch.where(better[..., None], off, pop), torch.where(better[..., None], off_fit, fit)


def _complement(pop, fit, factor):
    """Each individual i plus ``factor`` x the individual j with the least fitness summed over the
    labels i gets wrong (the first such j, as numpy's argmin)."""
    wrong = (fit != 0).double()  # [b, P, l]
    score = (fit.unsqueeze(1) * wrong.unsqueeze(2)).sum(3)  # [b, i, j]
    j = score.argmin(2)  # torch returns the first minimum, as numpy does
    helper = torch.gather(pop, 1, j.unsqueeze(2).expand_as(pop))
    return pop + helper * factor


def _first_or_best(pop, fit, on_failure):
    total = fit.sum(2)
    zero = total == 0
    pick = torch.where(zero.any(1), zero.double().argmax(1),
                       total.argmin(1) if on_failure == "best" else torch.zeros_like(total[:, 0], dtype=torch.long))
    return pop[torch.arange(len(pop), device=pop.device), pick]


def draws(seed: int, sample_id: int, pop_size: int, d: int):
    """One sample's random draws, in the order the search takes them: its generator, and the first
    population U(-1, 1) [pop_size, d] in float64 (the code's ``np.random.uniform``). Each generation
    then takes two ``torch.randperm(pop_size)`` from the generator (the code's two shuffles)."""
    g = sample_generator(seed, sample_id)
    return g, torch.rand(pop_size, d, generator=g, dtype=torch.float64) * 2 - 1


def run(model, x0, y_star, eligible, cfg: MLAEDEConfig, ctx):
    B, dev = x0.shape[0], x0.device
    P, d = cfg.pop_size, x0[0].numel()
    ids, seed = ctx["sample_ids"], int(ctx.get("seed", 0))
    search = _Search(model, x0, y_star, cfg)
    todo = torch.nonzero(eligible).flatten()
    gens, pops = {}, []
    for i in todo.tolist():
        gens[i], pop = draws(seed, ids[i], P, d)
        pops.append(pop)
    r_final = torch.zeros(B, d, dtype=torch.float64, device=dev)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    if len(todo):
        pop = torch.stack(pops).to(dev)
        fit = search.evaluate(todo, pop, 0)
        for it in range(1, cfg.generations):
            going = (fit.sum(2) != 0).all(1) & (search.bad_iter[todo] < 0)
            r_final[todo[~going]] = _first_or_best(pop[~going], fit[~going], cfg.on_failure)
            todo, pop, fit = todo[going], pop[going], fit[going]
            if not len(todo):
                break
            perms = [(torch.randperm(P, generator=gens[i]), torch.randperm(P, generator=gens[i]))
                     for i in todo.tolist()]
            a = torch.stack([p[0] for p in perms]).to(dev)
            b = torch.stack([p[1] for p in perms]).to(dev)
            # The code: p2 = shuffle(pop), p3 = shuffle(p2); so r_b = r[a[b]].
            r_a = torch.gather(pop, 1, a.unsqueeze(2).expand_as(pop))
            r_b = torch.gather(r_a, 1, b.unsqueeze(2).expand_as(pop))
            off = _box(pop + cfg.mutation * (r_a - r_b), cfg)
            pop, fit = _select(pop, fit, off, search.evaluate(todo, off, it))
            comp = _box(_complement(pop, fit, cfg.complement), cfg)
            pop, fit = _select(pop, fit, comp, search.evaluate(todo, comp, it))
            iters[todo] = it
        r_final[todo] = _first_or_best(pop, fit, cfg.on_failure)
    broken = search.bad_iter >= 0
    r_final[broken] = 0  # a sample whose outputs broke keeps its clean image
    x_adv = (x0.double() + r_final.view_as(x0) * cfg.eps).clamp(0, 1).to(x0.dtype)
    x_adv = torch.where(eligible.view(-1, 1, 1, 1), x_adv, x0)
    return finalize(model, x0, x_adv, y_star, eligible, search.best_counts, search.hit, iters, search.bad_iter,
                    queries=search.queries)


def _box(pop, cfg):
    return pop.clamp(-1, 1) if cfg.bounded else pop


def passes(cfg: MLAEDEConfig, l: int) -> Passes:
    """Forwards only: the first population and two per generation (mutants, complements), the clean
    forward for the targets and the final scoring."""
    return Passes(fwd=cfg.pop_size * (2 * cfg.generations - 1) + 2)


register(AttackSpec(
    name="mlaede", family="blackbox",
    reference=("Kong, Luo, Zhang, Liu, Shi 2022, *Evolutionary multi-label adversarial examples: an effective "
               "black-box attack* (IEEE TAI); code: the study's attacks/mlae_de.py"),
    title="MLAE-DE", config=MLAEDEConfig, norm="linf", run=run, doc=__doc__, cost=passes, bound="eps",
    # Selection compares fitness sums exactly: the last bit of a batch-B convolution can flip one.
    batch_size_exact=False, quick={"eps": 0.1, "pop_size": 8, "generations": 6},
    presets={"paper": {"eps": 0.05, "pop_size": 10, "generations": 20},
             "released": {"eps": 0.05, "pop_size": 10, "generations": 20, "bounded": False, "on_failure": "first"}},
))
