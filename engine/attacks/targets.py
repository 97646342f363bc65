"""Attack targets: what y* is, and what success means.

A target maps the clean prediction y (bool [B, l]) and the clean scores to a label set y* in
{0,1}^l and an eligibility mask (samples the attack type does not apply to are not attacked and
not counted), and it defines success. The store's ``y_star`` holds the label set, ``success`` the
target's own criterion.

The study's types, whose success is that the attacked prediction equals y* on every label (Song et
al. 2018's classification types, the study's Sec. 2.2; hiding all: Zhou et al. 2021). For show-many
(y* = all ones) that is "all labels shown", the last rung of the expLabels ladder; the protocol
scores the other rungs from label counts.

  show-many       y* = 1 for every label                         (all samples)
  hiding-single   one random shown label turned off              (samples with >= 2 labels)
  random          one random shown label off, one hidden on      (>= 1 shown and >= 1 hidden)
  extreme         every label flipped                            (all samples)
  reduction       the chosen label ``target_label`` turned off   (samples with >= 2 labels incl. it)
  augmentation    the chosen label ``target_label`` turned on    (samples without it)
  hiding-all      y* = 0 for every label                         (all samples)

Top-k types (Hu et al. 2021, TkML-AP, ICCV; code github.com/discovershu/TKML-AP). They need the
attack's parameter ``k`` (1 <= k <= l - 1); success looks at the k highest scores, not at the
threshold.

  topk-untargeted  y* = the shown labels, to be pushed out; success: none of them among the k
                   highest scores                              (>= 1 shown and >= k hidden)
  topk-targeted    y* = k chosen labels outside the shown ones; success: they are exactly the k
                   highest scores (in any order)               (>= k hidden)

The k labels of topk-targeted follow the attack's ``difficulty``, as the authors' ``--label_difficult``
(utils.py, generate_target_zeros_3_cases): ``best`` the k highest-scoring hidden labels, ``worst``
the k lowest-scoring ones, ``random`` k hidden labels drawn at random. ``target_label`` may instead
name the k labels (a list, or indices or names joined by commas): a set of another size is refused.

Ranking types (Song et al. 2018, "Multi-label adversarial perturbations", ICDM, Sec. IV: Rank I and
Rank II; the study's released attacks/ml_rank1.py, ml_rank2.py). y* is the study's ``random`` set
(one shown label swapped for a hidden one; same samples), to be ranked, not thresholded:

  rank-i          success: every label of y* scores above every label outside y*
  rank-ii         success: as rank-i, and every shown label that y* drops scores below every
                  label that was never shown (the released code's second hinge, max over the
                  dropped labels against min over the others)

Random choices come from a generator seeded by (seed, sample id), so a sample gets the same target
whatever batch it is in.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import UserError

# How topk-targeted picks its k labels (TkML-AP's --label_difficult).
DIFFICULTIES = ("best", "random", "worst")


@dataclass(frozen=True)
class Ask:
    """What a builder is given besides the clean prediction: per-sample seeds, the resolved
    ``target_label`` (or the explicit label set), the attack's ``k`` and ``difficulty``, and the
    clean scores (logits, [B, l]) that rank the labels."""

    ids: list[int]
    seed: int
    label: int | None = None
    chosen: tuple[int, ...] | None = None
    k: int | None = None
    difficulty: str = "best"
    scores: np.ndarray | None = None


Builder = Callable[[np.ndarray, Ask], tuple[np.ndarray, np.ndarray]]


def _rng(seed: int, sample_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7919, int(sample_id)])


def _all(y):
    return np.ones(len(y), dtype=bool)


def _show_many(y, ask):
    return np.ones_like(y), _all(y)


def _hiding_all(y, ask):
    return np.zeros_like(y), _all(y)


def _extreme(y, ask):
    return 1 - y, _all(y)


def _hiding_single(y, ask):
    t, ok = y.copy(), y.sum(1) >= 2
    for i in np.nonzero(ok)[0]:
        t[i, _rng(ask.seed, ask.ids[i]).choice(np.nonzero(y[i])[0])] = 0
    return t, ok


def _random(y, ask):
    t = y.copy()
    ok = (y.sum(1) >= 1) & (y.sum(1) < y.shape[1])
    for i in np.nonzero(ok)[0]:
        rng = _rng(ask.seed, ask.ids[i])
        t[i, rng.choice(np.nonzero(y[i])[0])] = 0
        t[i, rng.choice(np.nonzero(y[i] == 0)[0])] = 1
    return t, ok


def _reduction(y, ask):
    k = ask.label
    t, ok = y.copy(), (y[:, k] == 1) & (y.sum(1) >= 2)
    t[ok, k] = 0
    return t, ok


def _augmentation(y, ask):
    k = ask.label
    t, ok = y.copy(), y[:, k] == 0
    t[ok, k] = 1
    return t, ok


def _topk_untargeted(y, ask):
    # The labels to push out are the shown ones; with fewer than k hidden labels some of them must
    # stay in the top k, so such a sample cannot be attacked.
    shown = y.sum(1)
    return y.copy(), (shown >= 1) & (y.shape[1] - shown >= ask.k)


def _topk_targeted(y, ask):
    t = np.zeros_like(y)
    ok = y.shape[1] - y.sum(1) >= ask.k
    if ask.chosen is not None:
        # A named set must lie outside the shown labels, as the authors' sets always do.
        t[:, list(ask.chosen)] = 1
        return t, ok & ~(y.astype(bool) & (t == 1)).any(1)
    for i in np.nonzero(ok)[0]:
        hidden = np.nonzero(y[i] == 0)[0]
        if ask.difficulty == "random":
            pick = _rng(ask.seed, ask.ids[i]).choice(hidden, size=ask.k, replace=False)
        else:
            # Stable sort: ties keep label order, so the choice is deterministic.
            order = hidden[np.argsort(-ask.scores[i, hidden] if ask.difficulty == "best" else ask.scores[i, hidden],
                                      kind="stable")]
            pick = order[: ask.k]
        t[i, pick] = 1
    return t, ok


@dataclass(frozen=True)
class Target:
    """A target: its builder, the success criterion it is judged by (see :class:`Criterion`), and
    what it needs from the run (``target_label``; the attack's ``k``)."""

    build: Builder
    criterion: str = "exact"
    needs_label: bool = False
    needs_k: bool = False


TARGETS: dict[str, Target] = {
    "show-many": Target(_show_many),
    "hiding-single": Target(_hiding_single),
    "random": Target(_random),
    "extreme": Target(_extreme),
    "reduction": Target(_reduction, needs_label=True),
    "augmentation": Target(_augmentation, needs_label=True),
    "hiding-all": Target(_hiding_all),
    "topk-untargeted": Target(_topk_untargeted, criterion="topk-out", needs_k=True),
    "topk-targeted": Target(_topk_targeted, criterion="topk-in", needs_k=True),
    "rank-i": Target(_random, criterion="rank-i"),
    "rank-ii": Target(_random, criterion="rank-ii"),
}


# Targets defined relative to one chosen label: a run of them needs ``target_label``.
NEEDS_LABEL = tuple(n for n, t in TARGETS.items() if t.needs_label)


def names() -> list[str]:
    return list(TARGETS)


def get(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}", key="target")
    return TARGETS[name]


def resolve_label(label: int | str | None, label_names: Sequence[str] | None, num_labels: int) -> int | None:
    if label is None:
        return None
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        if label_names is None or label not in label_names:
            raise UserError(f"unknown target_label {label!r}; valid: {', '.join(label_names or [])}")
        return list(label_names).index(label)
    k = int(label)
    if not 0 <= k < num_labels:
        raise UserError(f"target_label {k} out of range 0..{num_labels - 1}")
    return k


def _label_set(label, label_names, num_labels: int) -> tuple[int, ...]:
    parts = label if isinstance(label, (list, tuple)) else str(label).split(",")
    return tuple(sorted({resolve_label(p.strip() if isinstance(p, str) else p, label_names, num_labels)
                         for p in parts}))


def check(name: str, num_labels: int, *, k: int | None = None, target_label=None,
          label_names: Sequence[str] | None = None) -> Ask:
    """Check a target against the model's label count and the attack's ``k`` before anything is
    attacked or written: an unknown name, a missing ``target_label``, a ``k`` outside 1..l-1 and a
    named label set of the wrong size are one-line errors. Returns the resolved request (no seeds)."""
    t = get(name)
    if t.needs_label and target_label is None:
        raise UserError(f"target {name} needs target_label = a label index or name", key="target_label")
    if t.needs_k:
        if k is None:
            raise UserError(f"target {name} needs the attack's parameter k; this attack has none "
                            f"(use an attack with k, or another target)", key="target")
        if not 1 <= int(k) <= num_labels - 1:
            raise UserError(f"k = {k} is outside 1..{num_labels - 1} (a model with {num_labels} labels)", key="k")
    chosen = None
    if name == "topk-targeted" and target_label is not None:
        chosen = _label_set(target_label, label_names, num_labels)
        if len(chosen) != int(k):
            raise UserError(f"target_label names {len(chosen)} distinct labels for topk-targeted with k = {k}; "
                            f"expected exactly {k}", key="target_label")
    label = resolve_label(target_label, label_names, num_labels) if t.needs_label else None
    return Ask(ids=[], seed=0, label=label, chosen=chosen, k=None if k is None else int(k))


def build(name: str, y_clean: torch.Tensor, sample_ids: Sequence[int], seed: int, *,
          target_label: int | str | None = None, label_names: Sequence[str] | None = None,
          scores: torch.Tensor | None = None, k: int | None = None, difficulty: str = "best"
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_star float32 [B, l] in {0,1}, eligible bool [B]) for the clean prediction ``y_clean``;
    ``scores`` (the clean logits) rank the labels for topk-targeted's best and worst choices."""
    y = y_clean.detach().cpu().numpy().astype(np.int64)
    base = check(name, y.shape[1], k=k, target_label=target_label, label_names=label_names)
    if difficulty not in DIFFICULTIES:
        raise UserError(f"unknown difficulty {difficulty!r}; valid: {', '.join(DIFFICULTIES)}", key="difficulty")
    s = (scores if scores is not None else y_clean.float()).detach().float().cpu().numpy()
    ask = Ask(ids=list(sample_ids), seed=seed, label=base.label, chosen=base.chosen, k=base.k,
              difficulty=difficulty, scores=s)
    t, ok = TARGETS[name].build(y, ask)
    dev = y_clean.device
    return torch.as_tensor(t, dtype=torch.float32, device=dev), torch.as_tensor(ok, device=dev)


# ----------------------------------------------------------------------------- success
@dataclass(frozen=True)
class Criterion:
    """When a sample has reached its target. ``exact``: the thresholded prediction equals y*;
    ``topk-out``: no label of y* among the k highest scores; ``topk-in``: the k highest scores are
    the labels of y*; ``rank-i``: every label of y* scores above every other; ``rank-ii``: that, and
    the shown labels that y* drops (``clean`` and not y*) score below the never-shown ones."""

    kind: str = "exact"
    k: int | None = None
    clean: torch.Tensor | None = None  # [B, l] bool: the clean prediction of the whole batch (rank-ii)

    def reached(self, logits: torch.Tensor, y_star: torch.Tensor, valid: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """bool [b]: the samples whose ``logits`` reach ``y_star``; ``valid`` masks samples with
        non-finite logits; ``rows`` are their positions in the batch the criterion was made for."""
        pos = y_star > 0.5
        if self.kind == "exact":
            return success((logits >= 0) & valid[:, None], y_star)
        if self.kind in ("topk-out", "topk-in"):
            top = pos.gather(1, logits.topk(int(self.k), dim=1).indices)
            hit = ~top.any(1) if self.kind == "topk-out" else top.all(1)
            return hit & valid
        inf = torch.tensor(float("inf"), dtype=logits.dtype, device=logits.device)
        hit = torch.where(pos, logits, inf).amin(1) > torch.where(pos, -inf, logits).amax(1)
        if self.kind == "rank-ii":
            clean = self.clean if rows is None else self.clean[rows]
            dropped, never = clean & ~pos, ~clean & ~pos
            hit = hit & (torch.where(dropped, logits, -inf).amax(1) < torch.where(never, logits, inf).amin(1))
        return hit & valid


    def margin(self, logits: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
        """[B]: how far each sample is past its target (positive where the ranking criteria are
        reached, > 0 only there; for ``exact`` the smallest signed logit towards y*). Tests and
        reports use it to see progress towards a target that is not reached."""
        pos = y_star > 0.5
        inf = torch.tensor(float("inf"), dtype=logits.dtype, device=logits.device)
        top_neg = torch.where(pos, -inf, logits)
        if self.kind == "exact":
            return (torch.where(pos, logits, -logits)).amin(1)
        if self.kind == "topk-out":
            return top_neg.topk(int(self.k), dim=1).values[:, -1] - torch.where(pos, logits, -inf).amax(1)
        m = torch.where(pos, logits, inf).amin(1) - top_neg.amax(1)
        if self.kind == "rank-ii":
            dropped, never = self.clean & ~pos, ~self.clean & ~pos
            m = torch.minimum(m, torch.where(never, logits, inf).amin(1) - torch.where(dropped, logits, -inf).amax(1))
        return m


EXACT = Criterion()

# The criterion of the attack now running (set by engine.attacks.run for its batch): the driver and
# finalize judge success by it, so attacks and their signatures need not carry it.
_ACTIVE: contextvars.ContextVar[list | None] = contextvars.ContextVar("target_criterion", default=None)


@contextmanager
def judged() -> Iterator[list]:
    """A scope whose criterion (``holder[0]``, EXACT until set) :func:`current` returns."""
    holder = [EXACT]
    token = _ACTIVE.set(holder)
    try:
        yield holder
    finally:
        _ACTIVE.reset(token)


def current() -> Criterion:
    holder = _ACTIVE.get()
    return holder[0] if holder else EXACT


def criterion(name: str, clean: torch.Tensor, k: int | None = None) -> Criterion:
    """The criterion of target ``name`` for a batch whose clean prediction is ``clean`` (bool [B, l])."""
    kind = get(name).criterion
    return Criterion(kind, k=k, clean=clean if kind == "rank-ii" else None)


def reached(logits: torch.Tensor, y_star: torch.Tensor, valid: torch.Tensor,
            rows: torch.Tensor | None = None) -> torch.Tensor:
    """Success of each sample under the running attack's target (see :class:`Criterion`)."""
    return current().reached(logits, y_star, valid, rows)


def success(pred: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """The attacked prediction equals y* on every label (the study's criterion)."""
    return (pred == (y_star > 0.5)).all(1)
