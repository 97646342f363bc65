"""Runs of universal attacks (``AttackSpec.universal``): one perturbation per run, fitted once.

The run's candidate list (the protocol's order) is split: positions 0 .. fit_n - 1 fit the
perturbation, the next N (the run's ``n``) are its scored samples, its rows. The fit happens once,
before the first shard is attacked, and is kept with the run: ``universal_delta`` [channel, height,
width] float32 and the ``universal`` attribute (the fit and score ranges, the fit set's sample
indices, the fooling rate the fit reached, its passes, ``delta_space``). The fit runs where the run
is opened (``engine.runtime.runner.open_run``: ``sml attack``, or the actor that plans a sweep's
model), once; every shard then reads that delta back and applies it
(``engine.attacks.apply_universal``), so that shards on other workers, with other thread counts and
float rounding, and a resumed run all score the same delta.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine import attacks, protocol
from engine.errors import UserError
from engine.results.format import CODECS

DELTA = "universal_delta"
ATTR = "universal"


def split(p, rs, n_req: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit set, scored samples) of the run: the first fit_n + N candidates in the run's order."""
    fit_n = int(rs.config.fit_n)
    have = len(candidates)
    if fit_n + n_req > have:
        raise UserError(f"{rs.spec.name}: fit_n {fit_n} + n {n_req} = {fit_n + n_req} samples, but "
                        f"{p.model_key}/{p.dataset_key} has {have} correctly predicted candidates: lower fit_n or --n",
                        key="n")
    both = protocol.select(candidates, fit_n + n_req, rs.seed, rs.order)
    return both[:fit_n], both[fit_n:]


def attrs_of(rs, fit_index: np.ndarray) -> dict[str, Any]:
    fit_n = len(fit_index)
    return {ATTR: {"fit": [0, fit_n], "score": [fit_n, fit_n + int(rs.n_requested)],
                   "fit_index": [int(i) for i in fit_index], "delta_space": rs.config.delta_space,
                   "norm": rs.config.norm, "eps": rs.config.eps, "xi": rs.config.xi}}


def add_delta(run, image_shape: tuple[int, ...], rs, fit_index: np.ndarray) -> None:
    """The run's (not yet fitted: NaN) delta array and its attribute, once."""
    if DELTA in run:
        return
    run.create_array(DELTA, shape=image_shape, chunks=image_shape, dtype="float32", fill_value=float("nan"),
                     dimension_names=("channel", "height", "width"), **CODECS,
                     attributes={"description": "the run's universal perturbation, in delta_space's coordinates "
                                                "(engine.attacks.apply_universal applies it)"})
    run.attrs.update(attrs_of(rs, fit_index))


def delta_for(p, run, rs, device: str) -> tuple[torch.Tensor, int]:
    """(the run's delta, passes the fit ran): read back, or fitted now on the fit set and stored."""
    info = dict(run.attrs[ATTR])
    stored = np.asarray(run[DELTA][:])
    if np.isfinite(stored).all() and "passes" in info:
        return torch.from_numpy(stored).to(device), int(info["passes"])
    idx = info["fit_index"]
    x = torch.stack([p.dataset.image(int(i)) for i in idx]).to(device)
    delta, fitted = attacks.fit_universal(p.model, x, rs.spec.name, config=rs.config, target=rs.target,
                                          seed=rs.seed, sample_ids=idx)
    run[DELTA][:] = delta.detach().cpu().numpy().astype(np.float32)
    run.attrs.update({ATTR: {**info, "fooling_rate": fitted["fooling_rate_fit"], "passes": fitted["passes"]}})
    return delta.to(device), int(fitted["passes"])
