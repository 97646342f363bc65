"""Reading the result store: whole arrays (checksums verified), which chunks are done, every run,
and a run's success rates.

A run group of another store format is refused here (:func:`engine.results.format.check_format`)
before anything of it is read; a damaged one is a one-line error naming the run, array and chunk.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine import protocol
from engine.errors import UserError
from engine.results.format import BOOLEAN, PARTIAL, RESULT_FIELDS, check_format, result_shape, where


def read(run: zarr.Group, name: str) -> np.ndarray:
    """A whole array of a run, its chunks' checksums verified (a damaged chunk is a one-line error).
    Boolean results come back boolean (stored as int8; -1 for unfinished rows, read as False)."""
    try:
        arr = np.asarray(run[name][:])
    except KeyError:
        raise UserError(_damaged(run, name, None, "is missing")) from None
    except Exception as e:  # noqa: BLE001 - codec errors (checksum, truncated frame) have no common type
        raise UserError(_damaged(run, name, None, f"cannot be decoded ({str(e).splitlines()[0][:80]})")) from None
    return arr == 1 if name in BOOLEAN else arr


def done_flags(run: zarr.Group) -> np.ndarray:
    """The done flags as stored, unchecked (a worker asking whether to skip a shard)."""
    check_format(run)
    return np.asarray(read(run, "done"), dtype=bool)


def done_chunks(run: zarr.Group) -> np.ndarray:
    """The done flags, after checking that every done chunk's rows are present."""
    done = done_flags(run)
    # An empty run (no sample to attack) has one chunk of no rows: no array holds a file for it.
    want = set(np.nonzero(done)[0].tolist()) if int(run.attrs["n"]) else set()
    for name in (*RESULT_FIELDS, "reason"):
        have = _present(run, name, len(result_shape(name, 0, 0)) if name in RESULT_FIELDS else 1)
        if have is not None and want - have:
            raise UserError(_damaged(run, name, min(want - have), "is missing"))
    return done


def _present(run: zarr.Group, name: str, ndim: int) -> set[int] | None:
    """Row-chunk indices whose chunk file exists (local stores: a listing; None where not listable)."""
    root = getattr(run.store, "root", None)
    if root is None:
        return None
    folder = Path(root) / run.path / name / "c"
    # Row chunk i of an n-d array (one chunk across the trailing axes) is the file c/i/0/.../0.
    tail = ["0"] * (ndim - 1)
    try:
        return {int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.joinpath(*tail).is_file()}
    except FileNotFoundError:
        return set()


def _damaged(run: zarr.Group, name: str, chunk: int | None, what: str) -> str:
    at = f"chunk {chunk} of {name}" if chunk is not None else f"array {name}"
    return (f"{where(run)}: {at} {what} although the run marks it done: the store is damaged; restore it from a "
            f"copy, or delete the run group {run.path} to compute it afresh")


def done_rows(run: zarr.Group, done: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask over the N rows: those inside finished chunks (``done``: flags already read)."""
    c, n = int(run.attrs["chunk_size"]), int(run.attrs["n"])
    return np.repeat(done_chunks(run) if done is None else done, c)[:n]


def iter_runs(root: zarr.Group):
    """(model, dataset, run key, run group) for every run in the store; a run of another store
    format stops the listing (one line naming it)."""
    for model, mg in sorted(root.groups()):
        for dataset, dg in sorted(mg.groups()):
            for key, run in sorted(dg.groups()):
                if "done" in run and PARTIAL not in key:
                    check_format(run)
                    yield model, dataset, key, run


def check_store(root: zarr.Group) -> None:
    """Refuse a store that holds a run group of another store format (one line naming it)."""
    for _ in iter_runs(root):
        pass


def summarize(run: zarr.Group) -> dict[str, Any]:
    """Success rates per n (final and best) over the finished rows of a run."""
    a = dict(run.attrs)
    rows = done_rows(run)
    eligible = read(run, "eligible") & rows
    out = {"attack": a["attack"], "preset": a["preset"], "target": a["target"], "n": int(rows.sum()),
           "n_eligible": int(eligible.sum()), "n_requested": a["n_requested"], "order": a["order"],
           "avg_labels": a["avg_labels"], "avg_labels_samples": a["avg_labels_samples"],
           "avg_labels_source": a["avg_labels_source"], "rounding": a["rounding"], "exp_labels": a["exp_labels"],
           "failed": int(read(run, "failed")[rows].sum()), "params": a["params"]}
    if a["target"] == "show-many":
        out["success_final"] = protocol.success_rates(read(run, "label_count_final")[eligible], a["exp_labels"])
        out["success_best"] = protocol.success_rates(read(run, "label_count_best")[eligible], a["exp_labels"])
    else:
        for sem, name in (("final", "success"), ("best", "success_best")):
            vals = read(run, name)[eligible]
            out[f"success_{sem}"] = [float(vals.mean()) if vals.size else math.nan]
    return out
