"""The sweep's record in the store's root attributes: its fingerprint, plan and progress.

The record makes a store explain itself: which sweep file (its text too) made it, what each run
is (the resolved config, not the file's spelling), which model groups are planned; ``--status``
reads it with no sweep file and no Ray. Its fingerprint is what a resume must match: results of
two different sweeps are never mixed in one store.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__, results
from engine.errors import UserError
from engine.models import sources
from engine.results.format import json_safe
from engine.runtime.sweep.sweepfile import ModelEntry, RunEntry, Sweep
from engine.util import file_digest

FORMAT = 1
ATTR = "sweep"  # root attribute holding the sweep's record (plan, fingerprint, source text)


def _digest_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_identity(r: RunEntry) -> dict[str, Any]:
    """What makes a run's results: canonical (the resolved config, not the file's spelling)."""
    s = r.spec
    return {"model": r.model, "key": s.key, "attack": s.spec.name, "preset": s.preset, "target": s.target,
            "target_label": s.target_label, "config": s.config.to_dict(), "n": s.n_requested, "seed": s.seed,
            "order": s.order, "chunk_size": s.chunk_size, "batch_size": s.batch_size, "early_exit": s.early_exit,
            "exit_every": s.exit_every if s.early_exit else None, "save_adv": s.save_adv}


def model_digest(m: ModelEntry) -> str:
    """A checkpoint's file digest. Your own model is built here once, on the CPU, so that one that
    does not load or gives the wrong number of scores stops the sweep before anything is written."""
    if sources.own_kind(m.own_model()) is None:
        return file_digest(m.checkpoint)
    try:
        return sources.load(m.checkpoint, m.own_model()).digest
    except UserError as e:
        raise UserError(f"[[model]] {m.key!r}: {e}") from None


def make_record(sw: Sweep) -> dict[str, Any]:
    """The sweep's record for the store's root attributes: plan, fingerprint and the file's text."""
    models = [{"key": m.key, "checkpoint": m.checkpoint, "digest": model_digest(m), "dataset": m.dataset,
               "root": m.root, "split": m.split, "load_kw": m.load_kw()}
              | ({"own_model": m.own_model()} if m.own_model() else {}) for m in sw.models]
    runs = [_run_identity(r) for r in sw.runs]
    # Loader options that change the data are part of the identity; none at all adds no key, so that
    # a sweep without options keeps the fingerprint it always had.
    ident = {"models": [{k: m[k] for k in ("key", "digest", "dataset", "split")} |
                        ({"options": dict(mm.options)} if mm.options else {}) for m, mm in zip(models, sw.models)],
             "runs": runs}
    return {"format": FORMAT, "name": sw.name, "fingerprint": _digest_json(ident), "identity": ident,
            "source": sw.path, "source_text": sw.text, "engine_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": [{"model": r.model, "key": r.spec.key, "spec": r.spec.to_dict()} for r in sw.runs],
            "models": models, "planned": {}}


def _identity_diff(old: dict, new: dict) -> list[str]:
    out = []
    om, nm = old.get("models", []), new.get("models", [])
    if len(om) != len(nm):
        out.append(f"{len(om)} vs {len(nm)} models")
    for i, (a, b) in enumerate(zip(om, nm)):
        diff = [k for k in a if a.get(k) != b.get(k)]
        if diff:
            names = ", ".join("checkpoint" if k == "digest" else k for k in diff)
            out.append(f"model #{i + 1} ({b.get('key')}): {names}")
    ok = {(r["model"], r["key"]): r for r in old.get("runs", [])}
    nk = {(r["model"], r["key"]): r for r in new.get("runs", [])}
    added = sorted({k for _, k in set(nk) - set(ok)})
    removed = sorted({k for _, k in set(ok) - set(nk)})
    if added:
        out.append(f"runs added: {', '.join(added)}")
    if removed:
        out.append(f"runs removed: {', '.join(removed)}")
    changed = sorted({k[1] for k in set(ok) & set(nk) if ok[k] != nk[k]})
    for key in changed[:5]:
        a = next(ok[k] for k in ok if k[1] == key and k in nk)
        b = nk[(a["model"], key)]
        out.append(f"run {key}: {', '.join(k for k in b if a.get(k) != b.get(k))}")
    return out or ["its fingerprint"]


def _extension(old: dict, new: dict) -> dict[int, int] | None:
    """{old model index: new index} when ``new`` only adds models and runs to ``old`` (each run's
    identity is its own fingerprint: one that is in both must be the same), else None."""
    def mkey(m: dict) -> tuple:
        return m.get("key"), m.get("dataset"), m.get("split")

    om, nm = old.get("models", []), new.get("models", [])
    where = {mkey(m): i for i, m in enumerate(nm)}
    moved = {}
    for i, m in enumerate(om):
        j = where.get(mkey(m))
        if j is None or nm[j] != m:
            return None  # a model removed or changed
        moved[i] = j

    def runs(ident: dict, models: list) -> dict[tuple, dict]:
        return {(mkey(models[r["model"]]), r["key"]): {k: v for k, v in r.items() if k != "model"}
                for r in ident.get("runs", [])}

    o, n = runs(old, om), runs(new, nm)
    if any(k not in n or n[k] != v for k, v in o.items()):
        return None  # a run removed or changed
    return moved


def bind_store(root, record: dict[str, Any], out: str, sweep_path: str) -> dict[str, Any]:
    """Claim the store for this sweep, or reopen it if it holds the same sweep; refuse to mix two."""
    old = dict(root.attrs).get(ATTR)
    if old is None:
        root.attrs[ATTR] = json_safe(record)
        return record
    if old.get("fingerprint") == record["fingerprint"]:
        # Same sweep: keep what was recorded (planned runs); refresh paths that may have moved.
        merged = dict(old, models=record["models"], source=record["source"], source_text=record["source_text"])
        root.attrs[ATTR] = json_safe(merged)
        return merged
    moved = _extension(old.get("identity", {}), record["identity"])
    if moved is not None:
        # The file adds runs (or models) and changes none: the store grows. Models already planned
        # keep their groups, under their index in the new file.
        planned = {str(moved[int(i)]): v for i, v in old.get("planned", {}).items() if int(i) in moved}
        grown = dict(record, planned=planned, created=old.get("created"),
                     history=[*old.get("history", []), {"fingerprint": old.get("fingerprint"),
                                                        "source_text": old.get("source_text")}])
        root.attrs[ATTR] = json_safe(grown)
        return grown
    diff = "; ".join(_identity_diff(old.get("identity", {}), record["identity"]))
    raise UserError(
        f"{out} holds sweep {old.get('name')!r} (from {old.get('source')}), not the sweep in {sweep_path} "
        f"(differs in: {diff}). Results of two sweeps are never mixed. To start fresh, write to a new --out "
        f"(or delete {out}); to continue the stored sweep, run it with its own file (its text is in the store: "
        f"`sml sweep --status {out}` shows where it came from)"
    )


def sweep_status(out: str | Path) -> dict[str, Any]:
    """Progress of the sweep in store ``out``, from the store alone (no sweep file, no Ray)."""
    root = results.open_store(out, "r")
    rec = dict(root.attrs).get(ATTR)
    if rec is None:
        raise UserError(f"{out}: no sweep was run into this store (no '{ATTR}' record in its root attributes)")
    planned = rec.get("planned", {})
    ident = {(r["model"], r["key"]): r for r in rec.get("identity", {}).get("runs", [])}
    runs, tot, done, s_tot, s_done, exact = [], 0, 0, 0, 0, True
    for r in rec["runs"]:
        info = planned.get(str(r["model"]))
        idr = ident.get((r["model"], r["key"]), {})
        entry: dict[str, Any] = {"model": rec["models"][r["model"]]["key"], "run": r["key"]}
        if info is not None and f"{info['group']}/{r['key']}" in root:
            g = root[f"{info['group']}/{r['key']}"]
            flags = results.done_chunks(g)
            rows = results.done_rows(g, flags)
            entry.update(group=g.path, shards_total=int(len(flags)), shards_done=int(flags.sum()),
                         samples_total=int(g.attrs["n"]), samples_done=int(np.count_nonzero(rows)))
        else:
            exact = False
            n = int(idr.get("n", 0))
            c = int(idr.get("chunk_size", 1))
            entry.update(group=None, shards_total=max(1, -(-n // c)), shards_done=0, samples_total=n,
                         samples_done=0, estimated=True)
        tot += entry["shards_total"]
        done += entry["shards_done"]
        s_tot += entry["samples_total"]
        s_done += entry["samples_done"]
        runs.append(entry)
    return {"store": str(out), "sweep": rec.get("name"), "fingerprint": rec.get("fingerprint"),
            "source": rec.get("source"), "created": rec.get("created"), "models_total": len(rec["models"]),
            "models_planned": len(planned), "runs_total": len(runs), "shards_total": tot, "shards_done": done,
            "samples_total": s_tot, "samples_done": s_done, "exact": exact, "complete": exact and done == tot,
            "runs": runs}
