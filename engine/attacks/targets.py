"""Attack targets y*: the study's "showing many labels" and the earlier attack types.

Each builder maps the clean prediction y (bool [B, l]) to a target y* in {0,1}^l and an eligibility
mask (samples the attack type does not apply to are not attacked and not counted). Success is the
same for every type: the attacked prediction equals y* on every label. For show-many (y* = all
ones) that is "all labels shown", the last rung of the expLabels ladder; the protocol scores the
other rungs from label counts.

Types (Song et al. 2018, the study's Sec. 2.2; hiding all: Zhou et al. 2021):
  show-many       y* = 1 for every label                         (all samples)
  hiding-single   one random shown label turned off              (samples with >= 2 labels)
  random          one random shown label off, one hidden on      (>= 1 shown and >= 1 hidden)
  extreme         every label flipped                            (all samples)
  reduction       the chosen label ``target_label`` turned off   (samples with >= 2 labels incl. it)
  augmentation    the chosen label ``target_label`` turned on    (samples without it)
  hiding-all      y* = 0 for every label                         (all samples)

Random choices come from a generator seeded by (seed, sample id), so a sample gets the same target
whatever batch it is in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from engine.errors import UserError

Builder = Callable[[np.ndarray, Sequence[int], int, int | None], tuple[np.ndarray, np.ndarray]]


def _rng(seed: int, sample_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7919, int(sample_id)])


def _show_many(y, ids, seed, label):
    return np.ones_like(y), np.ones(len(y), dtype=bool)


def _hiding_all(y, ids, seed, label):
    return np.zeros_like(y), np.ones(len(y), dtype=bool)


def _extreme(y, ids, seed, label):
    return 1 - y, np.ones(len(y), dtype=bool)


def _hiding_single(y, ids, seed, label):
    t, ok = y.copy(), y.sum(1) >= 2
    for i in np.nonzero(ok)[0]:
        t[i, _rng(seed, ids[i]).choice(np.nonzero(y[i])[0])] = 0
    return t, ok


def _random(y, ids, seed, label):
    t = y.copy()
    ok = (y.sum(1) >= 1) & (y.sum(1) < y.shape[1])
    for i in np.nonzero(ok)[0]:
        rng = _rng(seed, ids[i])
        t[i, rng.choice(np.nonzero(y[i])[0])] = 0
        t[i, rng.choice(np.nonzero(y[i] == 0)[0])] = 1
    return t, ok


def _need_label(label):
    if label is None:
        raise UserError("this target needs target_label (a label index or name)")
    return label


def _reduction(y, ids, seed, label):
    k = _need_label(label)
    t, ok = y.copy(), (y[:, k] == 1) & (y.sum(1) >= 2)
    t[ok, k] = 0
    return t, ok


def _augmentation(y, ids, seed, label):
    k = _need_label(label)
    t, ok = y.copy(), y[:, k] == 0
    t[ok, k] = 1
    return t, ok


TARGETS: dict[str, Builder] = {
    "show-many": _show_many,
    "hiding-single": _hiding_single,
    "random": _random,
    "extreme": _extreme,
    "reduction": _reduction,
    "augmentation": _augmentation,
    "hiding-all": _hiding_all,
}


# Targets defined relative to one chosen label: a run of them needs ``target_label``.
NEEDS_LABEL = ("reduction", "augmentation")


def names() -> list[str]:
    return list(TARGETS)


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


def build(name: str, y_clean: torch.Tensor, sample_ids: Sequence[int], seed: int, *,
          target_label: int | str | None = None, label_names: Sequence[str] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_star float32 [B, l] in {0,1}, eligible bool [B]) for the clean prediction ``y_clean``."""
    if name not in TARGETS:
        raise UserError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    y = y_clean.detach().cpu().numpy().astype(np.int64)
    k = resolve_label(target_label, label_names, y.shape[1])
    t, ok = TARGETS[name](y, list(sample_ids), seed, k)
    dev = y_clean.device
    return torch.as_tensor(t, dtype=torch.float32, device=dev), torch.as_tensor(ok, device=dev)


def success(pred: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """The attacked prediction equals y* on every label."""
    return (pred == (y_star > 0.5)).all(1)
