"""Sweeps: models x attacks x presets x targets, sharded over Ray actors into one Zarr store.

A sweep file (TOML, schema below) names the grid; ``run_sweep`` turns it into *shards* -- one
stored chunk of one run, the unit :func:`engine.runtime.runner.run_shard` attacks and writes -- and
hands them to a pool of workers:

* the driver (this process) only schedules and records: it validates the file, fingerprints the
  sweep into the store's root attributes, starts one actor per GPU (one per CPU slot without GPUs,
  ``workers`` overrides), queues the shards and re-queues those of actors that die. It never sees a
  result array: each actor writes its finished shard straight into the store, rows first and the
  chunk's ``done`` flag last (``store.write_chunk``).
* an actor loads a model once per (model, data set) (``runner.plan``, cached in the actor) and
  runs whatever shard the driver gives it next, preferring shards of models it already holds.
* the first job per model is a *plan* job: Table 1 / candidate scan (cached in the store) and the
  creation of every run of that model through ``runner.open_run`` -- the same code path as
  ``sml attack`` -- so the driver learns the real shard counts without loading a model itself.

Results do not depend on who runs a shard or how many workers there are: a shard is a fixed set
of rows, its batches are cut the same way everywhere (``batch_size`` comes from the sweep file,
never from the pool size) and every random choice is seeded per sample. A shard re-run after a
crash overwrites its own rows with the same bytes; a finished shard (done flag set) is never run
again, so resuming is just running the same command again.

Routing: attacks in ``[sweep] cpu_attacks`` (default: MLA-LP, whose cost is the LP solver, not the
model) go to a pool of CPU-only actors (``num_cpus`` only, each solving its LPs in an
``LPPool``) when the cluster has GPUs; everything else goes to the GPU actors (``num_gpus=1``).
Without GPUs there is one pool of CPU actors that takes every shard.

Sweep file schema (unknown tables, keys or values are an error naming the line and the allowed
values)::

    [sweep]                  # optional
    name = "paper"           # label shown in the progress bar and the status (default: file stem)
    base = ".."              # folder relative paths are resolved against, itself relative to the
                             # sweep file's folder; default ".." = the folder above the file's, i.e.
                             # the project root for files in sweeps/ (the CWD does not matter)
    device = "auto"          # auto (cuda on GPU actors, else cpu) | cpu | cuda
    cpu_attacks = ["mlalp"]  # attacks whose shards go to CPU-only actors on GPU clusters
    cpu_actor_cpus = 4       # CPUs per CPU-only actor there (= its LP worker processes)

    [protocol]               # defaults for every [[attack]] (each may override any of them)
    n = 1000                 # samples per run; omitted: the preset's protocol default (1000, MLA-LP 200)
    seed = 0
    order = "seeded"         # seeded | first
    chunk_size = 100         # samples per shard (the unit of scheduling and of resume)
    batch_size = 0           # 0: automatic (a function of the attack and image size only)
    early_exit = false
    exit_every = 4
    save_adv = false

    [[model]]                # one per (checkpoint, data set)
    checkpoint = "ckpt/mlgcn-voc2007.pt"   # required
    key = "mlgcn"            # model group in the store (default: checkpoint file stem)
    dataset = "voc2007"      # default: the checkpoint's training data set
    root = "data/VOCdevkit"  # default: the checkpoint's training data root
    split = "test"           # default: the data set's test split

    [[attack]]               # one per attack (repeat a name for other parameters)
    name = "mlcw"            # required: one of engine.attacks.names()
    presets = ["demo"]       # or preset = "demo"; default ["paper"]
    targets = ["show-many"]  # or target = "..."; default ["show-many"]
    target_label = 3         # for reduction / augmentation
    params = { iterations = 50 }           # overrides on top of each preset
    n = 200                  # ... and any [protocol] key

The grid is every [[model]] x every [[attack]] x its presets x its targets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import resource
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.errors import UserError

log = logging.getLogger(__name__)

FORMAT = 1
ATTR = "sweep"  # root attribute holding the sweep's record (plan, fingerprint, source text)

SWEEP_KEYS = {"name": str, "base": str, "device": str, "cpu_attacks": list, "cpu_actor_cpus": int}
PROTOCOL_KEYS = {"n": int, "seed": int, "order": str, "chunk_size": int, "batch_size": int, "early_exit": bool,
                 "exit_every": int, "save_adv": bool}
MODEL_KEYS = {"checkpoint": str, "key": str, "dataset": str, "root": str, "split": str}
ATTACK_KEYS = {"name": str, "preset": str, "presets": list, "target": object, "targets": list,
               "target_label": object, "params": dict, **PROTOCOL_KEYS}
TABLES = {"sweep": "[sweep]", "protocol": "[protocol]", "model": "[[model]]", "attack": "[[attack]]"}
DEVICES = ("auto", "cpu", "cuda")
ORDERS = ("seeded", "first")

# Test hook: an actor that finds this variable set (a folder) and can create <folder>/stalled
# writes its pid there and sleeps mid-shard (after its first batch, before anything is written),
# so that a test can kill -9 it at a known point. Only the first actor to get there stalls.
STALL_ENV = "SML_SWEEP_STALL"
FORWARD_ENV = (STALL_ENV, "SML_SWEEP_STALL_SECONDS")


# ================================================================ the sweep file
@dataclass(frozen=True)
class ModelEntry:
    checkpoint: str
    key: str
    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class RunEntry:
    model: int  # index into Sweep.models
    spec: Any  # runner.RunSpec
    line: int | None = None


@dataclass(frozen=True)
class Sweep:
    name: str
    path: str
    text: str
    models: list[ModelEntry]
    runs: list[RunEntry]
    device: str = "auto"
    cpu_attacks: tuple[str, ...] = ("mlalp",)
    cpu_actor_cpus: int = 4


class _Locator:
    """Line numbers for keys of a TOML text (tomllib gives none): search the raw text, good enough."""

    HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []  # (0-based line, table name)
        for i, ln in enumerate(self.lines):
            m = self.HEADER.match(ln)
            if m:
                self.headers.append((i, m.group(2).strip().strip("\"'")))

    def section(self, table: str | None, index: int | None = None) -> tuple[int, int]:
        """(first, end) 0-based line range of the index-th occurrence of ``table`` (None: the top)."""
        if table is None:
            return 0, self.headers[0][0] if self.headers else len(self.lines)
        hits = [k for k, (_, name) in enumerate(self.headers) if name == table]
        if not hits:
            return 0, len(self.lines)
        k = hits[min(index or 0, len(hits) - 1)]
        end = self.headers[k + 1][0] if k + 1 < len(self.headers) else len(self.lines)
        return self.headers[k][0], end

    def table_line(self, table: str, index: int | None = None) -> int | None:
        hits = [i for i, name in self.headers if name == table]
        if not hits:
            return None
        return hits[min(index or 0, len(hits) - 1)] + 1

    def key_line(self, key: str, table: str | None = None, index: int | None = None) -> int | None:
        lo, hi = self.section(table, index)
        pat = re.compile(rf"(^|[{{,\s])[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(lo, hi):
            code = self.lines[i].split("#", 1)[0]
            if pat.search(code):
                return i + 1
        return self.table_line(table, index) if table else None


class _Checker:
    def __init__(self, path: str, text: str):
        self.path, self.loc = path, _Locator(text)

    def fail(self, msg: str, line: int | None) -> None:
        raise UserError(f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}")

    def table(self, data: dict, schema: dict, where: str, table: str, index: int | None = None,
              required: tuple[str, str] | None = None) -> int | None:
        """Check one table against ``schema`` (key -> type): unknown keys first, then each value's
        type, then the ``required`` (key, what to write) key. Returns the table's line."""
        for k in data:
            if k not in schema:
                self.fail(f"unknown key {k!r} in {where}; allowed: {', '.join(schema)}",
                          self.loc.key_line(k, table, index))
        names = {int: "an integer", str: "a string", bool: "true or false", list: "a list", dict: "a table"}
        for k, v in data.items():
            t = schema.get(k, object)
            ok = t is object or (isinstance(v, t) and not (t is int and isinstance(v, bool)))
            if not ok:
                self.fail(f"{where} {k} must be {names[t]}, got {v!r}", self.loc.key_line(k, table, index))
        line = self.loc.table_line(table, index)
        if required is not None and required[0] not in data:
            self.fail(f"{where} needs {required[0]} = {required[1]}", line)
        return line

    def choice(self, value: Any, allowed, what: str, line: int | None, of: str = "") -> None:
        if value not in allowed:
            self.fail(f"unknown {what} {value!r}{of}; allowed: {', '.join(map(str, allowed))}", line)


def load_sweep(path: str | Path, *, datasets: list[str] | None = None, check_files: bool = True) -> Sweep:
    """Read and strictly validate a sweep file; relative paths resolve against ``[sweep] base``.

    ``datasets`` replaces the registered data set names (tests of files for data sets not installed);
    ``check_files=False`` skips the checks that checkpoints exist.
    """
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: sweep file not found")
    text = p.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p}: not valid TOML: {e}") from None
    return parse_sweep(data, text, p, datasets=datasets, check_files=check_files)


def parse_sweep(data: dict, text: str, path: Path, *, datasets: list[str] | None = None,
                check_files: bool = True) -> Sweep:
    from engine import attacks
    from engine import data as data_mod
    from engine.runtime.runner import RunSpec

    ck = _Checker(str(path), text)
    loc = ck.loc
    for k in data:
        if k not in TABLES:
            ck.fail(f"unknown table or key {k!r}; allowed: {', '.join(TABLES.values())}",
                    loc.table_line(k) or loc.key_line(k, None))
    for k in ("sweep", "protocol"):
        if k in data and not isinstance(data[k], dict):
            ck.fail(f"{k} must be a table [{k}]", loc.key_line(k, None))
    for k in ("model", "attack"):
        if k in data and not (isinstance(data[k], list) and all(isinstance(t, dict) for t in data[k])):
            ck.fail(f"{k} must be an array of tables [[{k}]]", loc.key_line(k, None) or loc.table_line(k))

    meta = data.get("sweep", {})
    ck.table(meta, SWEEP_KEYS, "[sweep]", "sweep")
    device = meta.get("device", "auto")
    ck.choice(device, DEVICES, "device", loc.key_line("device", "sweep"))
    known_attacks = attacks.names()
    cpu_attacks = []
    for a in meta.get("cpu_attacks", ["mlalp"]):
        name = attacks.registry.ALIASES.get(str(a).lower(), str(a).lower())
        ck.choice(name, known_attacks, "attack in cpu_attacks", loc.key_line("cpu_attacks", "sweep"))
        cpu_attacks.append(name)
    cpu_actor_cpus = meta.get("cpu_actor_cpus", 4)
    if cpu_actor_cpus < 1:
        ck.fail(f"cpu_actor_cpus must be >= 1, got {cpu_actor_cpus}", loc.key_line("cpu_actor_cpus", "sweep"))
    base = (path.parent / Path(meta.get("base", "..")).expanduser()).resolve()

    def resolve(value: str) -> str:
        q = Path(value).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    proto = data.get("protocol", {})
    ck.table(proto, PROTOCOL_KEYS, "[protocol]", "protocol")
    _check_protocol(ck, proto, "[protocol]", "protocol", None)

    known_ds = list(datasets) if datasets is not None else data_mod.names()
    models: list[ModelEntry] = []
    seen_models: dict[tuple, int] = {}
    for i, m in enumerate(data.get("model", [])):
        where = f"[[model]] #{i + 1}"
        line = ck.table(m, MODEL_KEYS, where, "model", i, required=("checkpoint", '"path/to/model.pt"'))
        ckpt = resolve(m["checkpoint"])
        if check_files and not Path(ckpt).is_file():
            ck.fail(f"{where}: checkpoint {ckpt} not found", loc.key_line("checkpoint", "model", i))
        if "dataset" in m:
            ck.choice(m["dataset"], known_ds, "dataset", loc.key_line("dataset", "model", i))
        key = m.get("key", Path(ckpt).stem)
        if not key or "/" in key:
            ck.fail(f"{where}: key must be a non-empty name without '/', got {key!r}", loc.key_line("key", "model", i))
        ident = (key, m.get("dataset"), m.get("split"))
        if ident in seen_models:
            ck.fail(f"{where} repeats [[model]] #{seen_models[ident] + 1} (same key {key!r}, dataset and split); "
                    f"give one of them another key", line)
        seen_models[ident] = i
        models.append(ModelEntry(checkpoint=ckpt, key=key, dataset=m.get("dataset"),
                                 root=resolve(m["root"]) if "root" in m else None, split=m.get("split"), line=line))
    if not models:
        ck.fail("no [[model]] tables: a sweep needs at least one model", None)

    entries: list[tuple[Any, int | None]] = []
    seen_runs: dict[str, int] = {}
    for i, a in enumerate(data.get("attack", [])):
        where = f"[[attack]] #{i + 1}"
        line = ck.table(a, ATTACK_KEYS, where, "attack", i, required=("name", f"one of: {', '.join(known_attacks)}"))
        name = attacks.registry.ALIASES.get(a["name"].lower(), a["name"].lower())
        ck.choice(name, known_attacks, "attack", loc.key_line("name", "attack", i))
        spec = attacks.get(name)
        where = f"{where} ({name})"
        for one, many in (("preset", "presets"), ("target", "targets")):
            if one in a and many in a:
                ck.fail(f"{where}: give either {one} or {many}, not both", loc.key_line(many, "attack", i))
        presets = a.get("presets", [a["preset"]] if "preset" in a else ["paper"])
        targets = a.get("targets", [a["target"]] if "target" in a else ["show-many"])
        for pr in presets:
            ck.choice(pr, list(spec.presets), "preset",
                      loc.key_line("presets" if "presets" in a else "preset", "attack", i), of=f" for {name}")
        for tg in targets:
            ck.choice(tg, attacks.targets.names(), "target",
                      loc.key_line("targets" if "targets" in a else "target", "attack", i))
        _check_protocol(ck, a, where, "attack", i)
        opts = {k: a.get(k, proto.get(k)) for k in PROTOCOL_KEYS if k in a or k in proto}
        params = dict(a.get("params", {}))
        for pr in presets:
            try:
                attacks.make_config(name, pr, **params)
            except UserError as e:
                # The line of the offending parameter: an unknown name, else one the message names.
                head = str(e).split("valid")[0]
                bad = [k for k in params if k not in spec.config.field_names()] or [
                    k for k in params if re.search(rf"\b{re.escape(k)}\b", head)]
                at = loc.key_line(bad[0] if bad else "params", "attack", i)
                ck.fail(f"{where}: {e}", at)
            for tg in targets:
                rs = RunSpec(attack=name, preset=pr, target=tg, target_label=a.get("target_label"), params=params,
                             **opts)
                try:
                    rs.resolve()
                except UserError as e:
                    ck.fail(f"{where}: {e}", line)
                if tg in ("reduction", "augmentation") and rs.target_label is None:
                    ck.fail(f"{where}: target {tg} needs target_label = a label index or name", line)
                if rs.key in seen_runs:
                    ck.fail(f"{where} repeats run {rs.key!r} of [[attack]] #{seen_runs[rs.key] + 1}; change its "
                            f"preset, target or target_label", line)
                seen_runs[rs.key] = i
                entries.append((rs, line))
    if not entries:
        ck.fail(f"no [[attack]] tables: a sweep needs at least one attack (one of: {', '.join(known_attacks)})", None)
    runs = [RunEntry(model=mi, spec=rs, line=line) for mi in range(len(models)) for rs, line in entries]
    return Sweep(name=meta.get("name", path.stem), path=str(path.resolve()), text=text, models=models, runs=runs,
                 device=device, cpu_attacks=tuple(cpu_attacks), cpu_actor_cpus=cpu_actor_cpus)


def _check_protocol(ck: _Checker, d: dict, where: str, table: str, index: int | None) -> None:
    lines = {k: ck.loc.key_line(k, table, index) for k in PROTOCOL_KEYS if k in d}
    for k, lo in (("n", 1), ("chunk_size", 1), ("batch_size", 0), ("exit_every", 1)):
        if k in d and d[k] < lo:
            ck.fail(f"{where} {k} must be >= {lo}, got {d[k]}", lines[k])
    if "order" in d:
        ck.choice(d["order"], ORDERS, "order", lines["order"])


# ================================================================ fingerprint and record
def _digest_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_identity(r: RunEntry) -> dict[str, Any]:
    """What makes a run's results: canonical (the resolved config, not the file's spelling)."""
    spec, cfg, n_req = r.spec.resolve()
    s = r.spec
    return {"model": r.model, "key": s.key, "attack": spec.name, "preset": s.preset, "target": s.target,
            "target_label": s.target_label, "config": cfg.to_dict(), "n": n_req, "seed": s.seed, "order": s.order,
            "chunk_size": s.chunk_size, "batch_size": s.batch_size, "early_exit": s.early_exit,
            "exit_every": s.exit_every if s.early_exit else None, "save_adv": s.save_adv}


def make_record(sw: Sweep) -> dict[str, Any]:
    """The sweep's record for the store's root attributes: plan, fingerprint and the file's text."""
    from engine import __version__
    from engine.runtime.runner import file_digest

    models = [{"key": m.key, "checkpoint": m.checkpoint, "digest": file_digest(m.checkpoint), "dataset": m.dataset,
               "root": m.root, "split": m.split} for m in sw.models]
    runs = [_run_identity(r) for r in sw.runs]
    ident = {"models": [{k: m[k] for k in ("key", "digest", "dataset", "split")} for m in models], "runs": runs}
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


def bind_store(root, record: dict[str, Any], out: str, sweep_path: str) -> dict[str, Any]:
    """Claim the store for this sweep, or reopen it if it holds the same sweep; refuse to mix two."""
    old = dict(root.attrs).get(ATTR)
    if old is None:
        root.attrs[ATTR] = _json_safe(record)
        return record
    if old.get("fingerprint") == record["fingerprint"]:
        # Same sweep: keep what was recorded (planned runs); refresh paths that may have moved.
        merged = dict(old, models=record["models"], source=record["source"], source_text=record["source_text"])
        root.attrs[ATTR] = _json_safe(merged)
        return merged
    diff = "; ".join(_identity_diff(old.get("identity", {}), record["identity"]))
    raise UserError(
        f"{out} holds sweep {old.get('name')!r} (from {old.get('source')}), not the sweep in {sweep_path} "
        f"(differs in: {diff}). Results of two sweeps are never mixed. To start fresh, write to a new --out "
        f"(or delete {out}); to continue the stored sweep, run it with its own file (its text is in the store: "
        f"`sml sweep --status {out}` shows where it came from)"
    )


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# ================================================================ the worker (Ray actor or in-process)
class SweepWorker:
    """Holds models (one Plan per model entry) and runs plan and shard jobs into the store."""

    def __init__(self, store: str, models: list[dict], runs: list[dict], *, threads: int | None = None,
                 device: str = "cpu", lp_workers: int = 0):
        if threads:
            # OMP_NUM_THREADS & co. come with the actor's runtime_env (they must be set before torch
            # loads); torch's own pool is sized here, before its first parallel region.
            import torch

            torch.set_num_threads(threads)
        from engine.runtime import store as st
        from engine.runtime.runner import RunSpec

        self.store_path = store
        self.root = st.open_store(store, "a")
        self.models = models
        self.runs = [(int(r["model"]), RunSpec.from_dict(r["spec"])) for r in runs]
        self.device = _pick_device(device)
        self.lp_workers = lp_workers
        self.plans: dict[int, Any] = {}
        self.ctx: dict[str, Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def _plan(self, i: int):
        if i not in self.plans:
            from engine.runtime.runner import plan

            m = self.models[i]
            p = plan(m["checkpoint"], self.root, dataset=m["dataset"], root=m["root"], split=m["split"],
                     device=self.device, model_key=m["key"])
            if p.digest != m["digest"]:
                raise UserError(f"{m['checkpoint']} changed since the sweep started (digest {m['digest']}, now "
                                f"{p.digest}); let training finish, then run the sweep again")
            self.plans[i] = p
        return self.plans[i]

    def plan(self, i: int) -> dict[str, Any]:
        """Load model i (scan cached in the store) and create or reopen all of its runs."""
        from engine.runtime import runner

        try:
            t0 = time.perf_counter()
            p = self._plan(i)
            runs = []
            for j, (mi, rs) in enumerate(self.runs):
                if mi != i:
                    continue
                run = runner.open_run(p, self.root, rs)
                runs.append({"run": j, "path": run.path, "n": int(run.attrs["n"]),
                             "chunk_size": int(run.attrs["chunk_size"]), "todo": runner.todo_chunks(run)})
            return {"model": i, "group": f"{p.model_key}/{p.dataset_key}", "dataset": p.dataset_key, "runs": runs,
                    "seconds": time.perf_counter() - t0, "pid": os.getpid()}
        except UserError as e:
            return {"error": f"{self.models[i]['checkpoint']}: {e}"}

    def shard(self, j: int, path: str, chunk: int) -> dict[str, Any]:
        """Attack chunk ``chunk`` of run ``j`` (group ``path``) and write it; skip it if already done."""
        from engine.runtime import runner
        from engine.runtime import store as st

        try:
            t0 = time.perf_counter()
            mi, rs = self.runs[j]
            run = self.root[path]
            if bool(st.done_chunks(run)[chunk]):
                # A shard re-queued after its actor died may have been finished just before: never twice.
                return {"rows": 0, "skipped": True, "seconds": 0.0, "pid": os.getpid()}
            p = self._plan(mi)
            if rs.attack == "mlalp" and self.lp_workers > 0 and "lp_pool" not in self.ctx:
                from engine.attacks.lpsolve import LPPool

                self.ctx["lp_pool"] = LPPool(workers=self.lp_workers, threads_per_worker=1)
            rows = runner.run_shard(p, run, chunk, rs, device=self.device, ctx=self.ctx, progress=_stall_hook())
            return {"rows": rows, "skipped": False, "seconds": time.perf_counter() - t0, "pid": os.getpid()}
        except UserError as e:
            return {"error": f"{path} chunk {chunk}: {e}"}

    def close(self) -> bool:
        pool = self.ctx.pop("lp_pool", None)
        if pool is not None:
            pool.close()
        return True


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _stall_hook():
    folder = os.environ.get(STALL_ENV)
    if not folder:
        return None
    state = {"batches": 0}

    def hook(_rows: int) -> None:
        state["batches"] += 1
        if state["batches"] != 1:
            return
        try:
            fd = os.open(os.path.join(folder, "stalled"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(float(os.environ.get("SML_SWEEP_STALL_SECONDS", "120")))

    return hook


# ================================================================ backends: Ray actors or in-process
class WorkerDied(Exception):
    pass


@dataclass
class PoolSpec:
    name: str  # "device" | "cpu"
    size: int
    options: dict[str, Any]  # Ray actor options (resources)
    threads: int | None
    device: str
    lp_workers: int = 0


class _LocalBackend:
    """The same scheduler, in this process, one worker: for debugging (``--local``)."""

    def __init__(self, store: str, models: list[dict], runs: list[dict]):
        self.args = (store, models, runs)

    def start(self, pool: PoolSpec):
        return SweepWorker(*self.args, threads=None, device=pool.device, lp_workers=pool.lp_workers)

    class Ticket:
        def __init__(self, fn, args):
            self.call, self.value, self.exc = (fn, args), None, None

    def submit(self, worker, method: str, *args):
        return self.Ticket(getattr(worker, method), args)  # run by wait(), like a remote call

    def wait(self, tickets: list, timeout: float) -> list:
        for t in tickets:
            if t.call is not None:
                (fn, args), t.call = t.call, None
                try:
                    t.value = fn(*args)
                except Exception as e:  # noqa: BLE001 - re-raised by get(), as Ray would
                    t.exc = e
        return tickets

    def get(self, ticket):
        if ticket.exc is not None:
            raise ticket.exc
        return ticket.value

    def stop(self, worker, graceful: bool) -> None:
        worker.close()


class _RayBackend:
    def __init__(self, store: str, models: list[dict], runs: list[dict]):
        import ray

        self.ray = ray
        self.args = (store, models, runs)
        self.cls = ray.remote(SweepWorker)

    def start(self, pool: PoolSpec):
        env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        if pool.threads:
            env.update({v: str(pool.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        opts = dict(pool.options, max_restarts=0, max_task_retries=0, runtime_env={"env_vars": env})
        return self.cls.options(**opts).remote(*self.args, threads=pool.threads, device=pool.device,
                                               lp_workers=pool.lp_workers)

    def submit(self, actor, method: str, *args):
        return getattr(actor, method).remote(*args)

    def wait(self, refs: list, timeout: float) -> list:
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # collect everything else that is ready too, without waiting
            more, _ = self.ray.wait([r for r in refs if r not in ready], num_returns=len(refs) - len(ready),
                                    timeout=0)
            ready += more
        return ready

    def get(self, ref):
        from ray.exceptions import RayActorError, WorkerCrashedError

        try:
            return self.ray.get(ref)
        except (RayActorError, WorkerCrashedError) as e:
            raise WorkerDied(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def stop(self, actor, graceful: bool) -> None:
        if graceful:  # idle: let it shut its LP worker processes down; otherwise no waiting
            try:
                self.ray.get(actor.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - it is going away either way
                pass
        self.ray.kill(actor)


# ================================================================ the scheduler
@dataclass
class _Job:
    kind: str  # plan | shard
    model: int
    run: int = -1
    path: str = ""
    chunk: int = -1
    rows: int = 0
    submitted: float = 0.0


@dataclass
class _Slot:
    pool: PoolSpec
    handle: Any
    models: set[int] = field(default_factory=set)
    job: _Job | None = None


def _route(attack: str, cpu_attacks: tuple[str, ...], pools: dict[str, PoolSpec]) -> str:
    want = "cpu" if attack in cpu_attacks else "device"
    return want if want in pools else next(iter(pools))


class _Scheduler:
    """Queues per pool; dispatches to idle actors; re-queues the jobs of dead ones; records progress."""

    def __init__(self, backend, pools: list[PoolSpec], sw: Sweep, root, bar, max_deaths: int):
        self.backend, self.sw, self.root, self.bar = backend, sw, root, bar
        self.pools = {p.name: p for p in pools}
        self.queues: dict[str, deque[_Job]] = {p.name: deque() for p in pools}
        self.slots = [_Slot(p, None) for p in pools for _ in range(p.size)]
        self.inflight: dict[Any, _Slot] = {}
        self.max_deaths = max_deaths
        self.stats = {"shards_run": 0, "shards_skipped": 0, "samples_run": 0, "actor_deaths": 0, "plans": 0,
                      "shard_seconds": 0.0, "roundtrip_overhead_s": 0.0, "driver_busy_s": 0.0,
                      "shards_by_pool": {p.name: 0 for p in pools}, "pids": {p.name: [] for p in pools}}
        self.shards_total = self.shards_done_before = 0
        self.groups: dict[str, int] = {}
        self.remaining_estimate = {i: 0 for i in range(len(sw.models))}
        self.t_first_shard: float | None = None  # the shard phase, for throughput without start-up
        self.t_last_shard: float | None = None

    def run(self) -> None:
        plan_pool = "device" if "device" in self.pools else next(iter(self.pools))
        for i in range(len(self.sw.models)):
            self.queues[plan_pool].append(_Job("plan", model=i))
            est = sum(r.spec.resolve()[2] for r in self.sw.runs if r.model == i)
            self.remaining_estimate[i] = est
        self.bar.total = sum(self.remaining_estimate.values())
        self.bar.refresh()
        for s in self.slots:
            s.handle = self.backend.start(s.pool)
        finished = False
        try:
            while any(self.queues.values()) or self.inflight:
                t0 = time.perf_counter()
                self._dispatch()
                self.stats["driver_busy_s"] += time.perf_counter() - t0
                if not self.inflight:
                    raise RuntimeError("shards are queued for a pool without actors")  # a routing bug
                ready = self.backend.wait(list(self.inflight), timeout=1.0)
                t0 = time.perf_counter()
                for ref in ready:
                    self._collect(ref)
                self.stats["driver_busy_s"] += time.perf_counter() - t0
            finished = True
        finally:
            for s in self.slots:
                if s.handle is not None:
                    try:
                        self.backend.stop(s.handle, graceful=finished and s.pool.lp_workers > 0)
                    except Exception:  # noqa: BLE001
                        log.debug("stopping a worker failed", exc_info=True)

    def _dispatch(self) -> None:
        for s in self.slots:
            if s.job is not None:
                continue
            q = self.queues[s.pool.name]
            if not q:
                continue
            # Prefer work on a model this actor already holds (no second load); else the oldest job.
            pick = next((k for k, j in enumerate(q) if j.model in s.models), 0) if s.models else 0
            job = q[pick]
            del q[pick]
            job.submitted = time.perf_counter()
            if job.kind == "shard" and self.t_first_shard is None:
                self.t_first_shard = job.submitted
            if job.kind == "plan":
                ref = self.backend.submit(s.handle, "plan", job.model)
            else:
                ref = self.backend.submit(s.handle, "shard", job.run, job.path, job.chunk)
            s.job = job
            self.inflight[ref] = s

    def _collect(self, ref) -> None:
        s = self.inflight.pop(ref)
        job, s.job = s.job, None
        try:
            res = self.backend.get(ref)
        except WorkerDied as e:
            self.stats["actor_deaths"] += 1
            log.warning("a %s actor died (%s) during %s; re-queuing it and starting a replacement", s.pool.name, e,
                        _describe(job))
            if self.stats["actor_deaths"] > self.max_deaths:
                raise UserError(f"sweep actors died {self.stats['actor_deaths']} times (last: {e}, during "
                                f"{_describe(job)}); giving up. Finished shards are kept: fix the cause (memory? "
                                f"node loss?) and re-run the same command to resume") from None
            self.queues[s.pool.name].appendleft(job)
            s.handle, s.models = self.backend.start(s.pool), set()
            return
        if "error" in res:
            raise UserError(res["error"])
        s.models.add(job.model)
        if s.pool.name in self.stats["pids"] and res.get("pid") not in self.stats["pids"][s.pool.name]:
            self.stats["pids"][s.pool.name].append(res.get("pid"))
        if job.kind == "plan":
            self._planned(res)
            return
        latency = time.perf_counter() - job.submitted
        self.stats["shards_by_pool"][s.pool.name] += 1
        if res.get("skipped"):
            self.stats["shards_skipped"] += 1
            self.bar.total -= job.rows
        else:
            self.stats["shards_run"] += 1
            self.stats["samples_run"] += res["rows"]
            self.stats["shard_seconds"] += res["seconds"]
            self.stats["roundtrip_overhead_s"] += max(0.0, latency - res["seconds"])
            self.t_last_shard = time.perf_counter()
            self.bar.update(res["rows"])
        self._postfix()

    def _planned(self, res: dict) -> None:
        i = res["model"]
        self.stats["plans"] += 1
        group = res["group"]
        if group in self.groups and self.groups[group] != i:
            raise UserError(f"[[model]] #{self.groups[group] + 1} and #{i + 1} of {self.sw.path} both write "
                            f"{group} (same key and data set); give one of them another key")
        self.groups[group] = i
        remaining = 0
        for r in res["runs"]:
            n, c = r["n"], r["chunk_size"]
            n_chunks = max(1, -(-n // c))
            self.shards_total += n_chunks
            self.shards_done_before += n_chunks - len(r["todo"])
            spec = self.sw.runs[r["run"]].spec
            pool = _route(spec.resolve()[0].name, self.sw.cpu_attacks, self.pools)
            for chunk in r["todo"]:
                rows = max(0, min(c, n - chunk * c))
                remaining += rows
                self.queues[pool].append(_Job("shard", model=i, run=r["run"], path=r["path"], chunk=chunk, rows=rows))
        self.bar.total += remaining - self.remaining_estimate[i]
        self.remaining_estimate[i] = remaining
        # Record where this model's runs live, so that --status works from the store alone.
        rec = dict(self.root.attrs)[ATTR]
        rec["planned"] = dict(rec.get("planned", {}), **{str(i): {"group": group, "dataset": res["dataset"]}})
        self.root.attrs[ATTR] = _json_safe(rec)
        self._postfix()

    def _postfix(self) -> None:
        done = self.shards_done_before + self.stats["shards_run"] + self.stats["shards_skipped"]
        planned = self.stats["plans"]
        tail = "" if planned == len(self.sw.models) else f", models planned {planned}/{len(self.sw.models)}"
        self.bar.set_postfix_str(f"shards {done}/{self.shards_total}{tail}", refresh=True)


def _describe(job: _Job) -> str:
    return f"plan of model #{job.model + 1}" if job.kind == "plan" else f"shard {job.path}[{job.chunk}]"


# ================================================================ Ray connection and pool sizes
def _probe(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected auto or HOST:PORT (e.g. 10.0.0.1:6379)")
    deadline = time.monotonic() + timeout
    err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.5, deadline - time.monotonic())):
                return
        except OSError as e:
            err = e
            time.sleep(0.5)
    raise _unreachable(address, str(err))


def _unreachable(address: str, detail: str) -> UserError:
    port = address.rpartition(":")[2]
    return UserError(f"cannot reach a Ray cluster at {address} ({detail}); start one there with `ray start --head "
                     f"--port {port}`, check the host, port and firewall, or drop --address to run on this machine")


def connect(address: str | None) -> bool:
    """Start Ray here, or join ``address``; True if this call started the session (and should stop it)."""
    import ray

    if ray.is_initialized():
        if address not in (None, "", "local"):
            log.warning("Ray is already initialised in this process; --address %s is not used", address)
        return False
    kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address in (None, "", "local"):
        # "local": a private instance even if someone else's `ray start` runs on this machine.
        ray.init(address="local", **kw)
        return True
    if address != "auto":
        _probe(address)  # refused / unroutable: fails in seconds, before Ray's own retries
    # Something answered (or "auto"): Ray retries ~20 x 1 s by default before giving up; keep the
    # whole attempt well under 30 s so that a wrong address is a quick, clear error.
    wait_var = "RAY_gcs_server_port_wait_time_s"
    old = os.environ.get(wait_var)
    os.environ.setdefault(wait_var, "10")
    try:
        ray.init(address=address, **kw)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, auth errors: the user's cluster
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "uth" in type(e).__name__ or "token" in str(e).lower():
            msg += "; the cluster uses token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN as on the head"
        if address == "auto":
            raise UserError(f"no running Ray cluster found for --address auto ({msg}); start one with "
                            f"`ray start --head`, or drop --address to run on this machine") from None
        raise _unreachable(address, msg) from None
    finally:
        if old is None:
            os.environ.pop(wait_var, None)
    return True


def plan_pools(cluster: dict[str, float], *, workers: int | None, needs_cpu_pool: bool, device: str,
               cpu_actor_cpus: int, device_resource: str | None = None) -> list[PoolSpec]:
    """Actor pools for the cluster's resources.

    No GPUs: ``workers`` (default: one per CPU) CPU actors take every shard, each with
    max(1, C // K) torch threads so that K actors do not oversubscribe C cores. GPUs: one actor
    per GPU (``num_gpus=1``) for the model-bound attacks, plus, if the sweep routes attacks to CPUs,
    CPU-only actors (``num_cpus`` only) on the CPUs the GPU actors leave. ``device_resource``
    names a custom Ray resource that stands in for GPUs (tests of the routing on CPU machines).
    """
    cpus = max(1, int(cluster.get("CPU", os.cpu_count() or 1)))
    accel = int(cluster.get(device_resource or "GPU", 0))
    if accel == 0:
        k = workers or cpus
        threads = max(1, cpus // k)
        ncpu = threads if k * threads <= cpus else cpus / k  # fractional: all K fit, as asked
        return [PoolSpec("cpu", k, {"num_cpus": ncpu}, threads, "cpu" if device == "auto" else device)]
    k = workers or accel
    res = {"num_gpus": 1} if device_resource is None else {"resources": {device_resource: 1}}
    dev = ("cuda" if device_resource is None else "cpu") if device == "auto" else device
    # A device actor mostly waits on its GPU: one CPU each, fewer (fractions) if the CPUs are short,
    # keeping at least one for the CPU pool when there is one.
    reserve = 1 if needs_cpu_pool else 0
    dev_cpus = 1.0 if cpus >= k + reserve else (cpus / 2 if reserve else cpus) / k
    free = cpus - k * dev_cpus
    pools = []
    if needs_cpu_pool:
        per = max(1, min(cpu_actor_cpus, int(free)))
        n = max(1, int(free // per))
        # Each CPU actor solves its LPs in a pool of `per` processes (HiGHS is single-threaded).
        pools.append(PoolSpec("cpu", n, {"num_cpus": per if free >= per else free}, per, "cpu",
                              lp_workers=per if per > 1 else 0))
        free -= n * per
    threads = max(1, int(cpus - sum(q.size * (q.threads or 1) for q in pools)) // k)
    # The CPUs a device actor has are idle while its GPU works: they solve its LPs when MLA-LP is
    # not routed to CPU actors.
    pools.insert(0, PoolSpec("device", k, {**res, "num_cpus": dev_cpus}, threads, dev,
                             lp_workers=threads if threads > 1 else 0))
    return pools


# ================================================================ entry points
def run_sweep(sweep: str | Path, out: str | Path, *, address: str | None = None, workers: int | None = None,
              local: bool = False, progress: bool = True, device_resource: str | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep file ``sweep`` into the store ``out``; returns a summary.

    ``threads`` overrides the torch threads per actor (benchmarks); ``device_resource`` names a
    Ray resource that stands in for GPUs (tests of the routing on CPU-only machines).
    """
    from tqdm import tqdm

    from engine.runtime import store as st

    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    sw = load_sweep(sweep)
    out_s = str(out) if st.is_url(out) else str(Path(out).expanduser().resolve())
    record = make_record(sw)
    root = st.open_store(out_s, "a")
    record = bind_store(root, record, str(out), str(sweep))
    models = [dict(m) for m in record["models"]]
    runs = record["runs"]
    needs_cpu = any(r.spec.resolve()[0].name in sw.cpu_attacks for r in sw.runs)
    owned = False
    t_start = time.perf_counter()
    if local:
        if workers not in (None, 1):
            log.warning("--local runs one in-process worker; --workers %s ignored", workers)
        pools = [PoolSpec("cpu", 1, {}, None, sw.device)]
        backend: Any = _LocalBackend(out_s, models, runs)
    else:
        owned = connect(address)
        import ray

        pools = plan_pools(ray.cluster_resources(), workers=workers, needs_cpu_pool=needs_cpu, device=sw.device,
                           cpu_actor_cpus=sw.cpu_actor_cpus, device_resource=device_resource)
        if threads is not None:
            for pool in pools:
                pool.threads = threads
        backend = _RayBackend(out_s, models, runs)
    n_actors = sum(p.size for p in pools)
    try:
        with tqdm(total=0, desc=f"sweep {sw.name}", unit="sample", disable=not progress, dynamic_ncols=True,
                  smoothing=0.1) as bar:
            sched = _Scheduler(backend, pools, sw, root, bar, max_deaths=2 * n_actors + 2)
            sched.run()
    finally:
        if owned:
            import ray

            ray.shutdown()
    seconds = time.perf_counter() - t_start
    s = sched.stats
    done = sched.shards_done_before + s["shards_run"] + s["shards_skipped"]
    shard_phase = (sched.t_last_shard - sched.t_first_shard) if sched.t_last_shard and sched.t_first_shard else 0.0
    return {"store": str(out), "sweep": sw.name, "fingerprint": record["fingerprint"], "runs": len(sw.runs),
            "models": len(sw.models), "shards_total": sched.shards_total, "shards_done": done,
            "shards_run": s["shards_run"], "shards_done_before": sched.shards_done_before,
            "shards_skipped": s["shards_skipped"], "samples_run": s["samples_run"], "seconds": seconds,
            "samples_per_s": s["samples_run"] / seconds if seconds > 0 else math.nan,
            "shard_phase_s": shard_phase,
            "samples_per_s_shard_phase": s["samples_run"] / shard_phase if shard_phase > 0 else math.nan,
            "actors": {p.name: p.size for p in pools}, "threads_per_actor": {p.name: p.threads for p in pools},
            "actor_deaths": s["actor_deaths"], "shards_by_pool": s["shards_by_pool"], "pids": s["pids"],
            "shard_seconds": s["shard_seconds"],
            "driver_busy_s_per_shard": s["driver_busy_s"] / max(1, s["shards_run"] + s["plans"]),
            "roundtrip_overhead_s_per_shard": s["roundtrip_overhead_s"] / max(1, s["shards_run"]),
            "driver_peak_rss_mb": _peak_rss_mb(),
            "mode": "local" if local else "ray"}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image, in MiB.

    Linux carries ru_maxrss across execve, so a driver started by a big parent
    (e.g. the bench) would report the parent's peak; VmHWM belongs to the
    current address space only.  ru_maxrss is the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sweep_status(out: str | Path) -> dict[str, Any]:
    """Progress of the sweep in store ``out``, from the store alone (no sweep file, no Ray)."""
    import numpy as np

    from engine.runtime import store as st

    root = st.open_store(out, "r")
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
            flags = st.done_chunks(g)
            rows = st.done_rows(g)
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
