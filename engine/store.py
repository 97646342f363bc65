"""Results of the Python API into a result store, so that they report like any run.

    from engine import attacks, data, models, store
    res = attacks.run(model, x, attack="pgd", seed=0, sample_ids=ids)
    store.write_run("runs/mine.zarr", res, model="mine", dataset="demo", attack="pgd",
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

import engine
from engine import attacks, protocol
from engine.attacks.driver import AttackResult
from engine.errors import UserError
from engine.runtime import provenance
from engine.runtime import store as st
from engine.runtime.lock import store_lock


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
    n, l = len(result), y.shape[1] if y.ndim == 2 else -1
    if len(idx) != n or y.shape != (n, len(label_names)) or result.pred.shape[1] != len(label_names):
        raise UserError(f"write_run: {n} results need {n} sample indices and labels_true of shape ({n}, "
                        f"{len(label_names)}) (one column per label name); got {len(idx)} and {tuple(y.shape)}")
    avg = float(y.sum(1).mean()) if avg_labels is None else float(avg_labels)
    ladder = protocol.exp_labels(l, avg, rounding)
    given = {k: getattr(cfg, k) for k in sorted(params or {})}
    key = st.run_key(spec.name, preset, target, params=given)
    rows = {k: getattr(result, k).detach().cpu().numpy().astype(dt) for k, (dt, _) in st.RESULT_FIELDS.items()}
    rows["y_star"] = rows["y_star"] > 0.5
    digest = hashlib.sha256(idx.tobytes() + np.packbits(y).tobytes()).hexdigest()[:16]
    fingerprint = {"api": True, "attack": spec.name, "config": cfg.to_dict(), "target": target, "seed": seed,
                   "samples_digest": digest, "rounding": rounding, "avg_labels": avg}
    attrs = {"attack": spec.name, "title": spec.title, "preset": preset, "params": given, "target": target,
             "target_label": None, "config": cfg.to_dict(), "seed": seed, "order": "given",
             "early_exit": False, "semantics": "fixed-iterations", "engine_version": engine.__version__,
             "n_requested": n, "n_available": n, "avg_labels": avg, "avg_labels_samples": n,
             "avg_labels_source": "mean true-label count of the samples given to write_run",
             "rounding": rounding, "exp_labels": ladder, "num_labels": l, "label_names": list(label_names),
             "model_metrics": metrics or {}, "checkpoint": None, "source": "engine.store.write_run"}
    if not st.is_url(path):
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    with store_lock(path, "engine.store.write_run"):
        root = st.open_store(path, "a")
        group = st.model_group(root, model, st.check_name(dataset, "dataset"))
        run = st.create_run(group, key, n=n, num_labels=l, image_shape=None, chunk_size=max(n, 1), attrs=attrs,
                            sample_index=idx, labels_true=y, fingerprint=fingerprint)
        if not st.done_flags(run)[0]:
            st.write_chunk(run, 0, rows, list(result.reasons) or [""] * n,
                           provenance=provenance.record(str(result.x_adv.device), provenance.now(), None))
        return run.path
