"""Results of the Python API into a result store, so that they report like any run.

    from engine import attacks, data, models, results
    res = attacks.run(model, x, attack="pgd", seed=0, sample_ids=ids)
    results.write_run("runs/mine.zarr", res, model="mine", dataset="demo", attack="pgd",
                      sample_index=ids, labels_true=y, label_names=model.label_names)

The run is scored as every run is (expLabels from avgLabels, the mean true-label count of the
samples given, unless ``avg_labels`` says otherwise) and carries the store's fingerprint rules: the
same call again reopens it (and writes nothing), a different run under the same name is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import attacks
from engine.attacks.driver import AttackResult
from engine.errors import UserError
from engine.results import attrs
from engine.results.format import RESULT_FIELDS, check_name, is_url, run_key
from engine.results.lock import store_lock
from engine.results.reader import done_flags
from engine.results.writer import create_run, model_group, open_store, write_chunk
from engine.runtime import provenance


def write_run(path: str | Path, result: AttackResult, *, model: str, dataset: str, attack: str,
              sample_index: Sequence[int], labels_true: np.ndarray | torch.Tensor, label_names: Sequence[str],
              preset: str = "paper", params: dict[str, Any] | None = None, target: str = "show-many",
              seed: int = 0, avg_labels: float | None = None, rounding: str = "ceil",
              metrics: dict[str, Any] | None = None) -> str:
    """Write ``result`` (attacks.run's) as run ``attack[@params]`` of ``model/dataset``; returns the
    run's group path. ``metrics``: the model's Table 1 row, if you have one."""
    spec = attacks.get(attack)
    cfg = attacks.make_config(spec.name, preset, **(params or {}))
    idx = np.asarray(list(sample_index), dtype=np.int64)
    y = np.asarray(labels_true.cpu() if isinstance(labels_true, torch.Tensor) else labels_true).astype(bool)
    n = len(result)
    if len(idx) != n or y.shape != (n, len(label_names)) or result.pred.shape[1] != len(label_names):
        raise UserError(f"write_run: {n} results need {n} sample indices and labels_true of shape ({n}, "
                        f"{len(label_names)}) (one column per label name); got {len(idx)} and {tuple(y.shape)}")
    avg = float(y.sum(1).mean()) if avg_labels is None else float(avg_labels)
    scored = attrs.scoring(avg, n, "mean true-label count of the samples given to write_run", rounding,
                           len(label_names))
    given = {k: getattr(cfg, k) for k in sorted(params or {})}
    key = run_key(spec.name, preset, target, params=given)
    digest = hashlib.sha256(idx.tobytes() + np.packbits(y).tobytes()).hexdigest()[:16]
    fingerprint = attrs.fingerprint(spec, cfg, target=target, seed=seed, api=True, samples_digest=digest,
                                    rounding=rounding, avg_labels=avg)
    run_attrs = attrs.run_attrs(spec, cfg, preset=preset, params=given, target=target, target_label=None, seed=seed,
                                order="given", early_exit=False, n_requested=n, n_available=n, scored=scored,
                                label_names=label_names, model_metrics=metrics or {}, checkpoint=None,
                                made_by="engine.results.write_run")
    rows = {k: getattr(result, k).detach().cpu().numpy().astype(dt) for k, (dt, _) in RESULT_FIELDS.items()}
    rows["y_star"] = rows["y_star"] > 0.5
    if not is_url(path):
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    with store_lock(path, "engine.results.write_run"):
        group = model_group(open_store(path, "a"), model, check_name(dataset, "dataset"))
        run = create_run(group, key, n=n, num_labels=len(label_names), image_shape=None, chunk_size=max(n, 1),
                         attrs=run_attrs, sample_index=idx, labels_true=y, fingerprint=fingerprint)
        if not done_flags(run)[0]:
            write_chunk(run, 0, rows, list(result.reasons) or [""] * n,
                        provenance=provenance.record(str(result.x_adv.device), provenance.now(), None))
        return run.path
