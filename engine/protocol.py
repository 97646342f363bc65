"""The study's protocol (Sec. 3 and 5.1).

1. From the test split pick up to N samples (1000; 200 for MLA-LP) that the model predicts exactly
   right (every label, threshold f = 0) and that have at least one label; seeded. (The released
   code takes the *first* N such samples of the split: ``order="first"``.)
2. avgLabels = mean number of true labels over the picked samples.
3. expLabels(n) (Eq. 3) for n = 0 .. ceil(log2(l - avgLabels)): ceil(avgLabels + 2^n), the last rung
   being l. (The released code uses int(avgLabels + 2^n), a floor: ``rounding="floor"``.)
4. Success at level n: the attacked prediction shows at least expLabels(n) labels. One attack pass
   gives the whole row, from label counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engine.errors import UserError


def max_level(num_labels: int, avg_labels: float) -> int:
    if not 0 <= avg_labels < num_labels:
        raise UserError(f"avgLabels must be in [0, {num_labels}), got {avg_labels}")
    return math.ceil(math.log2(num_labels - avg_labels))


def exp_labels(num_labels: int, avg_labels: float, rounding: str = "ceil") -> list[int]:
    """The expLabels ladder for n = 0 .. ceil(log2(l - avgLabels)) (Eq. 3)."""
    if rounding not in ("ceil", "floor"):
        raise UserError(f"unknown rounding {rounding!r}; valid: ceil, floor")
    top = max_level(num_labels, avg_labels)
    rnd = math.ceil if rounding == "ceil" else math.floor
    ladder = [min(rnd(avg_labels + 2**n), num_labels) for n in range(top)]
    return ladder + [num_labels]


def success_rates(counts: Sequence[int] | np.ndarray | torch.Tensor, ladder: Sequence[int]) -> list[float]:
    c = np.asarray(torch.as_tensor(counts).cpu().numpy() if isinstance(counts, torch.Tensor) else counts)
    if c.size == 0:
        return [float("nan")] * len(ladder)
    return [float((c >= k).mean()) for k in ladder]


@torch.no_grad()
def correctly_predicted(model: nn.Module, dataset, batch_size: int = 256) -> np.ndarray:
    """Indices of samples whose prediction matches every label and that have >= 1 label."""
    model.eval()
    ok = []
    for s in range(0, len(dataset), batch_size):
        idx = range(s, min(s + batch_size, len(dataset)))
        x = torch.stack([dataset.image(i) for i in idx])
        y = torch.from_numpy(dataset.labels[s : s + len(idx)]).bool()
        pred = model(x) >= 0
        ok.append(((pred == y).all(1) & y.any(1)).numpy())
    return np.nonzero(np.concatenate(ok))[0]


def select(candidates: np.ndarray, n: int, seed: int, order: str = "seeded") -> np.ndarray:
    """Up to n of the candidate indices: a seeded random subset in index order, or the first n."""
    if n < 1:
        raise UserError(f"N (number of samples) must be >= 1, got {n}")
    if order == "first" or len(candidates) <= n:
        return np.sort(candidates)[:n]
    if order != "seeded":
        raise UserError(f"unknown sample order {order!r}; valid: seeded, first")
    rng = np.random.default_rng([seed, 104729])
    return np.sort(rng.choice(candidates, size=n, replace=False))
