"""A run group's attributes and fingerprint: built here, for every writer (``sml attack``, sweeps and
the Python API's ``write_run``), so that every run in a store describes itself the same way.

The attributes say what was run and how it is scored; the fingerprint is what a reopened run must
match (results of two different runs are never mixed in one group). Its ``config`` is the attack
config's ``to_dict()``, which leaves ``precision`` out at its default (fp32): a config names only
the arithmetic it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import engine
from engine import protocol
from engine.attacks.registry import AttackConfig, AttackSpec


def scoring(avg_labels: float, samples: int, source: str, rounding: str, num_labels: int,
            columns: int | None = None) -> dict[str, Any]:
    """How a run is scored: avgLabels (over ``samples`` samples, from ``source``) and the expLabels
    ladder it gives under ``rounding`` (engine.protocol), ``columns`` long where given; no ladder
    where no sample was selected (avgLabels NaN)."""
    ladder = [] if samples == 0 else protocol.exp_labels(num_labels, avg_labels, rounding, columns)
    return {"avg_labels": avg_labels, "avg_labels_source": source, "avg_labels_samples": samples,
            "rounding": rounding, "exp_labels": ladder}


def run_attrs(spec: AttackSpec, config: AttackConfig, *, preset: str, params: dict[str, Any], target: str,
              target_label: Any, seed: int, order: str, early_exit: bool, n_requested: int, n_available: int,
              scored: dict[str, Any], label_names: Sequence[str], model_metrics: dict[str, Any],
              checkpoint: str | None, made_by: str, feed: dict[str, str] | None = None,
              warning: str | None = None) -> dict[str, Any]:
    """A run group's attributes (the writer adds its layout: n, chunk_size, store_format and the
    fingerprint). ``params``: the values set on top of the preset; ``scored``: :func:`scoring`'s;
    ``made_by``: the engine function that wrote it; ``feed``: how the model is fed where not its own
    way (engine.protocol.Feed.changed), left out otherwise; ``warning``: what the user must know
    about how far the run reproduces the study (engine.protocol.inferred_note), left out if none."""
    return {"attack": spec.name, "title": spec.title, "preset": preset, "params": params, "target": target,
            "target_label": target_label, "config": config.to_dict(), "seed": seed, "order": order,
            "early_exit": early_exit, "semantics": "stop-at-success" if early_exit else "fixed-iterations",
            "engine_version": engine.__version__, "n_requested": n_requested, "n_available": n_available,
            **scored, "num_labels": len(label_names), "label_names": list(label_names),
            "model_metrics": model_metrics, "checkpoint": checkpoint, "source": made_by,
            **({"feed": feed} if feed else {}), **({"warning": warning} if warning else {})}


def fingerprint(spec: AttackSpec, config: AttackConfig, *, target: str, seed: int, **made_from: Any) -> dict[str, Any]:
    """What a run's results depend on: the attack, its config, the target and the seed, and
    ``made_from``: the writer's own inputs (a checkpoint and data digest, the samples, the protocol's
    knobs)."""
    return {"attack": spec.name, "config": config.to_dict(), "target": target, "seed": seed, **made_from}
