"""The study's protocol (Sec. 3 and 5.1).

1. From the test split pick up to N samples (1000; 200 for MLA-LP) that the model predicts exactly
   right (every label, threshold f = 0) and that have at least one label; seeded. (The released
   code takes the *first* N such samples of the split: ``order="first"``.)
2. avgLabels = mean number of true labels over the data set's picked samples (one per model and
   data set: see the rules below).
3. expLabels(n) (Eq. 3) for n = 0 .. ceil(log2(l - avgLabels)): ceil(avgLabels + 2^n), the last rung
   being l. (The released code uses int(avgLabels + 2^n), a floor: ``rounding="floor"``.)
4. Success at level n: the attacked prediction shows at least expLabels(n) labels. One attack pass
   gives the whole row, from label counts.

Two sets of rules (:func:`rules`). ``released`` scores as the study's released code does (its
``src/demo_<model>_<data>.py``): the first correctly predicted samples of the split in file order,
``int()`` (floor) on the ladder, avgLabels over every selected sample (the code's ``y.npy``) even
where it scores only the first 200 (:data:`RELEASED_CELLS`). Every other preset (``paper`` and the
shortened demo presets) follows the text: a seeded draw, the ceiling of Eq. 3, and one avgLabels
per (model, data set), over the study's 1000 protocol samples, so that every attack of a data set
is scored against the same ladder (MLA-LP's 200 included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from engine.config import GRAM_DTYPES, INPUTS, ORDERS, ROUNDINGS, SHOWN_RULES
from engine.errors import UserError

PROTOCOL_N = 1000  # the study's samples per (model, data set): the basis of avgLabels under the text


@dataclass(frozen=True)
class Feed:
    """What a run feeds its model and how it reads the outputs: ``input`` ``model`` (the model's own
    normalisation) or ``raw`` ([0, 1] pixels straight into the network, past its normalisation), for
    picking the candidates, attacking and scoring alike; ``shown``: a label is shown at logit >= 0
    (``logit``) or at float32 sigmoid >= 0.5 (``sigmoid``, the code's: they differ for logits within
    about 6e-8 below 0); ``gram``: the dtype of an attack's Gram matrix (ML-DP's ``gram`` field).
    The defaults are the text's; a run records only the fields off their default (see
    engine.results.attrs), so that stores made before these fields keep their fingerprints."""

    input: str = "model"
    shown: str = "logit"
    gram: str = "float32"

    def __post_init__(self) -> None:
        for name, valid in (("input", INPUTS), ("shown", SHOWN_RULES), ("gram", GRAM_DTYPES)):
            if getattr(self, name) not in valid:
                raise UserError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}", key=name)

    def changed(self) -> dict[str, str]:
        """The fields off their default: what a run's attributes and fingerprint record."""
        return {k: v for k, v in asdict(self).items() if v != getattr(Feed, k)}


# The study's code (src/demo_<model>_<data>.py) thresholds float32 sigmoids at 0.5 everywhere. Its
# ML-GCN demos build their attack loaders from Warp + ToTensor only (the Normalize line commented
# out; models/ML_GCN_model/models.py normalises nothing), so ML-GCN sees raw [0, 1] pixels outside
# Table 1. ML-DP (hinanmu/MLALP ml_deepfool) forms W W^T in the dtype of its y, int64 on NUS-WIDE, so
# float64 there. ML-LIW normalises inside its own model in the code too.
CODE_FEED = Feed(shown="sigmoid")
CODE_FEED_MLGCN = Feed(input="raw", shown="sigmoid")


@dataclass(frozen=True)
class Cell:
    """What the released code does for one (model, data set): how many correctly predicted samples
    it selects (avgLabels is their mean label count), how many of them it scores, its attack
    batch (which ML-CW's batch-wide early abort and MLA-LP's shared thresholds depend on), what it
    feeds the model (:class:`Feed`), and whether its sample list is ``inferred``: made by an earlier
    run whose code is not released, so N and avgLabels there are ours, not the code's."""

    selected: int = PROTOCOL_N
    scored: int = PROTOCOL_N
    batch: int = 10  # --adv_batch_size's default
    feed: Feed = field(default=CODE_FEED)
    inferred: bool = False
    columns: int | None = None  # ladder columns the code prints (None: the ladder's own length)


# src/demo_<model>_<data>.py of the study's code: ML-GCN on VOC scores adv[0:200] of its 1000
# (avgLabels still over all 1000); ML-LIW stops at 200 on COCO (count < 200) and keeps y[0:200] on
# NUS-WIDE; the VOC2012 demos change --adv_batch_size (ML-GCN 2, ML-LIW 32). The ML-GCN VOC2012 and
# the three ML-LIW VOC2012 / COCO / NUS-WIDE demos comment out gen_adv_file: they attack sample lists
# an earlier run wrote (inferred). Their printouts have 6 ladder columns on VOC, 8 on COCO and
# NUS-WIDE, the last level repeated where the ladder is shorter.
RELEASED_CELLS: dict[tuple[str, str], Cell] = {
    ("mlgcn", "voc2007"): Cell(scored=200, feed=CODE_FEED_MLGCN, columns=6),
    ("mlgcn", "voc2012"): Cell(scored=200, batch=2, feed=CODE_FEED_MLGCN, inferred=True, columns=6),
    ("mlgcn", "nuswide"): Cell(feed=Feed(input="raw", shown="sigmoid", gram="float64"), columns=8),
    ("mlgcn", "coco"): Cell(feed=CODE_FEED_MLGCN, columns=8),
    ("mlliw", "voc2007"): Cell(columns=6),
    ("mlliw", "voc2012"): Cell(batch=32, inferred=True, columns=6),
    ("mlliw", "nuswide"): Cell(selected=200, scored=200, feed=Feed(shown="sigmoid", gram="float64"), inferred=True,
                               columns=8),
    ("mlliw", "coco"): Cell(selected=200, scored=200, inferred=True, columns=8),
    # src/demo_asl_*.py (the `asl` model source): the first 1000, all scored (their evaluate_adv
    # reads up to 101 files of one batch each), --adv_batch_size 24.
    ("asl", "voc2007"): Cell(batch=24),
    ("asl", "voc2012"): Cell(batch=24),
    ("asl", "nuswide"): Cell(batch=24),
    ("asl", "coco"): Cell(batch=24),
}
# Data sets the code never ran (the demo, your own) take the family's choice: its ML-GCN's raw input.
FAMILY_CELLS: dict[str, Cell] = {"mlgcn": Cell(feed=CODE_FEED_MLGCN)}


@dataclass(frozen=True)
class Rules:
    """How a preset picks and scores samples (the defaults of a run's ``order`` and ``rounding``)."""

    order: str
    rounding: str
    released: bool  # the code's cells (sample counts, avgLabels basis, batch) rather than the text's


def rules(preset: str) -> Rules:
    if preset == "released":
        return Rules(order="first", rounding="floor", released=True)
    return Rules(order="seeded", rounding="ceil", released=False)


def cell(family: str, dataset: str) -> Cell:
    """The released code's cell; data sets it never ran (the demo, your own) get the family's
    choices, else the code's defaults."""
    return RELEASED_CELLS.get((family, dataset)) or FAMILY_CELLS.get(family, Cell())


def feed(preset: str, family: str, dataset: str) -> Feed:
    """What a run under ``preset`` feeds a (model family, data set): the code's cell under
    ``released``, the text's defaults under every other preset."""
    return cell(family, dataset).feed if rules(preset).released else Feed()


def ladder_columns(preset: str, family: str, dataset: str) -> int | None:
    """How many ladder columns a run prints: the code's count under ``released``, else the ladder's."""
    return cell(family, dataset).columns if rules(preset).released else None


def inferred_note(preset: str, family: str, dataset: str) -> str | None:
    """A warning for a run on a released cell whose sample list the released code does not make."""
    if not (rules(preset).released and cell(family, dataset).inferred):
        return None
    return (f"{family}/{dataset}: the study scored this cell on a sample list made by an earlier run whose "
            f"code is not released; N and avgLabels here are inferred (the code's rule on this model), "
            f"not the study's (docs/fidelity.md)")


def avg_labels_basis(preset: str, family: str, dataset: str) -> int:
    """How many of the selected samples avgLabels is the mean over (see the module docstring)."""
    return cell(family, dataset).selected if rules(preset).released else PROTOCOL_N


def max_level(num_labels: int, avg_labels: float) -> int:
    if not 0 <= avg_labels < num_labels:
        raise UserError(f"avgLabels must be in [0, {num_labels}), got {avg_labels}")
    return math.ceil(math.log2(num_labels - avg_labels))


def exp_labels(num_labels: int, avg_labels: float, rounding: str = "ceil", columns: int | None = None) -> list[int]:
    """The expLabels ladder for n = 0 .. ceil(log2(l - avgLabels)) (Eq. 3); ``columns`` long where
    given, as the released code prints it (cut there, or its last level repeated)."""
    if rounding not in ROUNDINGS:
        raise UserError(f"unknown rounding {rounding!r}; valid: {', '.join(ROUNDINGS)}")
    top = max_level(num_labels, avg_labels)
    rnd = math.ceil if rounding == "ceil" else math.floor
    ladder = [min(rnd(avg_labels + 2**n), num_labels) for n in range(top)] + [num_labels]
    if columns is not None:
        ladder = (ladder + ladder[-1:] * columns)[:columns]
    return ladder


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
        raise UserError(f"unknown sample order {order!r}; valid: {', '.join(ORDERS)}")
    rng = np.random.default_rng([seed, 104729])
    return np.sort(rng.choice(candidates, size=n, replace=False))
