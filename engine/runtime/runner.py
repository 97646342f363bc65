"""Batch runner: from a checkpoint to a run in the result store, shard by shard, resumable.

``plan`` does the protocol once per (checkpoint, data set): a pass over the test split gives both
Table 1's metrics and the exactly-right samples (cached in the store). ``attack_checkpoint`` picks
the N samples, creates (or reopens) the run group and attacks every chunk not yet done, writing
each chunk as soon as it is finished; an interrupted run continues where it stopped.
``run_shard`` is the unit of work: ``sml attack`` runs its chunks in turn, sweeps hand them to workers.
The runtime names no attack: what it needs to know (Jacobian, shared resources) are the
attack spec's traits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import engine
from engine import attacks, data, protocol
from engine.config import COMPILE_MODES
from engine.data.base import ImageListDataset
from engine.device import check_device
from engine.errors import UserError
from engine.models import sources
from engine.models.metrics import table1
from engine.runtime import batching, provenance
from engine.runtime import store as st
from engine.runtime.lock import store_lock
from engine.runtime.runspec import RunSpec
from engine.util import file_digest  # noqa: F401 - re-exported: runner.file_digest

__all__ = ["Plan", "RunSpec", "attack_checkpoint", "open_run", "plan", "run_shard", "summarize", "todo_chunks"]

log = logging.getLogger(__name__)


@dataclass
class Plan:
    model: nn.Module
    dataset: ImageListDataset
    model_key: str
    dataset_key: str
    candidates: np.ndarray
    metrics: dict[str, Any]
    checkpoint: str
    digest: str
    root: Any  # the store's root group

    @property
    def family(self) -> str:
        """The model family (mlgcn, mlliw): with the data set's name, the released code's cell."""
        return self.metrics.get("model", "")


def plan(checkpoint: str | Path, store: Any, *, dataset: str | None = None, root: str | Path | None = None,
         split: str | None = None, device: str = "cpu", model_key: str | None = None,
         embedding: str | Path | None = None, label_names: list[str] | None = None, trust_pickle: bool = False,
         allow_missing: bool = False, verify_data: bool = True, own_model: dict | None = None, **load_kw) -> Plan:
    """Load model and data; find (or reuse from the store) the exactly-right test samples.

    ``store`` is the store's root group, or a function that opens it: called once the checkpoint
    and the data have loaded, so that bad inputs leave no store behind. ``verify_data``: check the
    data against the digest the model group was made from (:func:`data_digest`; sweeps do it once,
    in the plan job, not in every actor that takes a shard). ``own_model``: your own model instead of
    one of our checkpoints (``checkpoint`` is then its weights file, if any; engine.models.sources).
    """
    m = sources.load(checkpoint, own_model, embedding=embedding, label_names=label_names, trust_pickle=trust_pickle)
    ds = m.dataset_for(dataset, root, split, allow_missing=allow_missing, **load_kw)
    model = m.model.to(device)
    digest = m.digest
    mkey = model_key or m.key
    root_group = store() if callable(store) else store
    dkey = dataset_key(root_group, mkey, ds)
    group = st.model_group(root_group, mkey, dkey)
    attrs = dict(group.attrs)
    options = {k: v for k, v in sorted(load_kw.items()) if k not in NOT_DATA_OPTIONS and v is not None}
    if attrs.get("checkpoint_digest") not in (None, digest) or attrs.get("split") not in (None, ds.split) or \
            attrs.get("data_options", options) != options:
        raise UserError(
            f"{mkey}/{dkey} in the store was made from another checkpoint, split or data options "
            f"(digest {attrs.get('checkpoint_digest')}, split {attrs.get('split')}, options "
            f"{attrs.get('data_options', {})}); use another --out or --model-key"
        )
    if "candidates" in group and "metrics" in attrs:
        cand = np.asarray(group["candidates"][:])
        metrics = attrs["metrics"]
        if verify_data:
            have = data_digest(ds, cand)
            if attrs.get("data_digest", have) != have:
                raise UserError(f"{ds.root}: the {ds.name} {ds.split} data here differ from those {mkey}/{dkey} in "
                                f"the store was made from (data digest {have}, stored {attrs['data_digest']}); "
                                f"point --root at the original data, or write to another --out")
            if "data_digest" not in attrs:  # a group from before data digests: adopt this data
                group.attrs["data_digest"] = have
    else:
        logits, cand = _scan(model, ds, device)
        m.check_outputs(logits)
        metrics = table1(logits, torch.from_numpy(ds.labels))
        metrics.update({"model": m.family, "dataset": ds.name, "split": ds.split})
        group.create_array("candidates", shape=(len(cand),), chunks=(max(len(cand), 1),), dtype="int64",
                           dimension_names=("candidate",),
                           overwrite=True)[:] = cand
        group.attrs.update({"metrics": metrics, "checkpoint": m.what, "checkpoint_digest": digest,
                            "split": ds.split, "family": m.family, "backbone": m.backbone,
                            "label_names": ds.label_names, "num_test_samples": len(ds), "data_options": options,
                            "data_digest": data_digest(ds, cand), **m.attrs()})
    return Plan(model, ds, mkey, dkey, cand, metrics, m.what, digest, root_group)


def data_digest(ds: ImageListDataset, candidates: np.ndarray) -> str:
    """A digest of the data a model group's runs read: the split's sample list (paths relative to
    the data root, so an identical copy elsewhere matches) and labels, and the bytes of every
    exactly-right sample's file (the only images any run attacks)."""
    h = hashlib.sha256()
    h.update(json.dumps([ds.name, ds.split, ds.label_names]).encode())
    h.update(np.ascontiguousarray(ds.labels).tobytes())
    for p in ds.paths:
        try:
            h.update(str(p.relative_to(ds.root)).encode() + b"\0")
        except ValueError:
            h.update(p.name.encode() + b"\0")
    for i in np.asarray(candidates).tolist():
        h.update(Path(ds.paths[int(i)]).read_bytes())
    return h.hexdigest()[:16]


# Loader options that do not change which samples and labels a split has; every other one (VOC's
# difficult, the split seed, NUS-WIDE's csv_name ...) is part of a model group's identity. Two
# annotation formats of one split give the same samples (engine.data tests that).
NOT_DATA_OPTIONS = ("source", "allow_missing", "cache")


def dataset_key(root_group, model_key: str, ds: ImageListDataset) -> str:
    """The model group's name for this split: the data set's name for its test split, ``name@split``
    for any other, so that runs of one model on two splits (the text's test split, the released
    code's val files) live side by side in one store."""
    if ds.split == data.info(ds.name).test_split:
        return ds.name
    try:  # a store from before split keys holds a non-default split under the bare name
        if root_group[f"{model_key}/{ds.name}"].attrs.get("split") == ds.split:
            return ds.name
    except KeyError:
        pass
    return f"{ds.name}@{ds.split}"


@torch.no_grad()
def _scan(model: nn.Module, ds: ImageListDataset, device: str, batch_size: int = 128):
    model.eval()
    outs = []
    for s in range(0, len(ds), batch_size):
        x = torch.stack([ds.image(i) for i in range(s, min(s + batch_size, len(ds)))]).to(device)
        outs.append(model(x).cpu())
    logits = torch.cat(outs)
    y = torch.from_numpy(ds.labels).bool()
    ok = ((logits >= 0) == y).all(1) & y.any(1)
    return logits, np.nonzero(ok.numpy())[0]


def code_batch(p: Plan, rs: RunSpec) -> int | None:
    """The released code's attack batch for this cell, where the attack's results depend on the
    batch under this preset (``AttackSpec.code_batch``); None elsewhere."""
    if rs.preset in rs.spec.code_batch and rs.batch_size == 0:
        return protocol.cell(p.family, p.dataset.name).batch
    return None


def batch_for(p: Plan, rs: RunSpec, shape: tuple[int, ...], device: str) -> int:
    """The requested batch; the code's where results depend on it; or (0) the largest that fits
    the memory budget (engine.runtime.batching)."""
    if rs.batch_size > 0:
        return rs.batch_size
    fixed = code_batch(p, rs)
    if fixed is not None:
        return fixed
    return batching.auto_batch(p.model, shape, num_labels=p.dataset.num_labels, jacobian=rs.spec.jacobian,
                               device=device)


def use_compile(flag: str | bool, device: str) -> bool:
    """``--compile on|off|auto``: auto compiles on CUDA; on CPU eager wins (see the README's bench)."""
    if isinstance(flag, bool):
        return flag
    if flag not in COMPILE_MODES:
        raise UserError(f"unknown --compile value {flag!r}; valid: {', '.join(COMPILE_MODES)}")
    return flag == "on" or (flag == "auto" and torch.device(device).type == "cuda")


def add_resources(spec, ctx: dict[str, Any], workers: int, threads: int | None = None) -> None:
    """Create the process-wide helpers the attack declares (``AttackSpec.resources``), once per
    ``ctx``, with ``workers`` processes of ``threads`` threads (None: the machine's cores shared
    out); with no workers to give them the attack manages on its own."""
    if workers <= 0:
        return
    for key, make in spec.resources.items():
        if key not in ctx:
            ctx[key] = make(workers, threads)


def close_resources(ctx: dict[str, Any]) -> None:
    """Close what :func:`add_resources` created (worker processes, shared memory)."""
    for key in list(ctx):
        close = getattr(ctx.pop(key), "close", None)
        if close is not None:
            close()


def open_run(p: Plan, root_group, rs: RunSpec):
    """Pick the run's N samples and create its group in the store, or reopen it (same fingerprint).

    The one place a run group comes into being, for ``sml attack`` and for sweeps alike.
    """
    spec, cfg = rs.spec, rs.config
    n_req = rs.samples(p.family, p.dataset.name)
    batch = code_batch(p, rs)
    if batch is not None and rs.chunk_size % batch:
        raise UserError(f"chunk_size {rs.chunk_size} is not a multiple of the released code's batch {batch} for "
                        f"{p.family}/{p.dataset.name} (its {spec.title} results depend on the batch): set chunk_size "
                        f"to a multiple of {batch}, e.g. {batch * max(1, rs.chunk_size // batch)}")
    picked = protocol.select(p.candidates, n_req, rs.seed, rs.order)
    if len(picked) == 0:
        raise UserError(f"{p.checkpoint}: the model predicts no test sample of {p.dataset_key} exactly right")
    if len(picked) < n_req:
        log.warning("only %d correctly predicted samples (asked for %d): using all of them", len(picked), n_req)
    labels = p.dataset.labels[picked].astype(bool)
    scoring = scoring_attrs(p, rs)
    l = p.dataset.num_labels
    fingerprint = {"checkpoint_digest": p.digest, "attack": spec.name, "config": cfg.to_dict(), "target": rs.target,
                   "target_label": rs.target_label, "seed": rs.seed, "order": rs.order, "n_requested": n_req,
                   "early_exit": rs.early_exit, "exit_every": rs.exit_every if rs.early_exit else None,
                   "split": p.dataset.split}
    mg = st.model_group(root_group, p.model_key, p.dataset_key)
    # The content digest of the data read (sample list and file bytes): other data at resume is
    # refused, an identical copy at another path is accepted. Not in runs from before it existed.
    if mg.attrs.get("data_digest") is not None:
        fingerprint["data_digest"] = mg.attrs["data_digest"]
    attrs = {"attack": spec.name, "title": spec.title, "preset": rs.preset, "params": rs.params_resolved,
             "target": rs.target,
             "target_label": rs.target_label, "config": cfg.to_dict(), "seed": rs.seed, "order": rs.order,
             "early_exit": rs.early_exit, "semantics": "stop-at-success" if rs.early_exit else "fixed-iterations",
             "engine_version": engine.__version__, "n_requested": n_req, "n_available": int(len(p.candidates)),
             **scoring, "num_labels": l,
             "label_names": p.dataset.label_names, "model_metrics": p.metrics, "checkpoint": p.checkpoint}
    image_shape = tuple(p.dataset.image(int(picked[0])).shape) if rs.save_adv else None
    run = st.create_run(mg, rs.key, n=len(picked),
                        num_labels=l, image_shape=image_shape, chunk_size=rs.chunk_size, attrs=attrs,
                        sample_index=picked, labels_true=labels, fingerprint=fingerprint)
    # How a run is scored is not part of its results: a reopened run takes the rounding asked for now.
    if any(run.attrs.get(k) != v for k, v in scoring.items()):
        run.attrs.update(scoring)
    return run


def scoring_attrs(p: Plan, rs: RunSpec) -> dict[str, Any]:
    """avgLabels, where it came from, and the ladder (engine.protocol): one avgLabels per (model,
    data set) and rule set, whatever N this run attacks."""
    basis_n = protocol.avg_labels_basis(rs.preset, p.family, p.dataset.name)
    basis = protocol.select(p.candidates, basis_n, rs.seed, rs.order)
    avg = float(p.dataset.labels[basis].astype(bool).sum(1).mean())
    how = f"the first {len(basis)}" if rs.order == "first" else f"{len(basis)} seeded (seed {rs.seed})"
    source = (f"mean true-label count of {how} correctly predicted samples of "
              f"{p.model_key}/{p.dataset_key}" + (" (the code's y.npy)" if protocol.rules(rs.preset).released else
                                                  " (one per data set, the text's)"))
    return {"avg_labels": avg, "avg_labels_source": source, "avg_labels_samples": int(len(basis)),
            "rounding": rs.rounding, "exp_labels": protocol.exp_labels(p.dataset.num_labels, avg, rs.rounding)}


def todo_chunks(run) -> list[int]:
    """Chunks of ``run`` whose done flag is not set yet (the work a resume still has to do)."""
    return [int(c) for c in np.nonzero(~st.done_chunks(run))[0]]


def chunk_rows(run, chunk: int) -> int:
    c, n = int(run.attrs["chunk_size"]), int(run.attrs["n"])
    return max(0, min(c, n - chunk * c))


def run_shard(p: Plan, run, chunk: int, rs: RunSpec, *, device: str = "cpu", ctx: dict | None = None,
              progress=None, compile: bool = False) -> int:
    """Attack the samples of chunk ``chunk`` of ``run`` as ``rs`` says and write them (rows, then the
    done flag): the unit of work of ``sml attack`` and of every sweep worker."""
    started = provenance.now()
    c = int(run.attrs["chunk_size"])
    index = np.asarray(run["sample_index"][chunk * c : (chunk + 1) * c])
    spec = rs.spec
    shape = tuple(p.dataset.image(int(index[0])).shape) if len(index) else (3, 1, 1)
    bs = batch_for(p, rs, shape, device)
    parts: dict[str, list] = {k: [] for k in st.RESULT_FIELDS}
    reasons: list[str] = []
    deltas = []
    for s in range(0, len(index), bs):
        ids = index[s : s + bs]
        x = torch.stack([p.dataset.image(int(i)) for i in ids]).to(device)
        res = attacks.run(p.model, x, spec.name, config=rs.config, target=rs.target, seed=rs.seed,
                          sample_ids=ids.tolist(), early_exit=rs.early_exit, exit_every=rs.exit_every,
                          target_label=rs.target_label, ctx=ctx, compile=compile and spec.kind == "iterative")
        for k in parts:
            parts[k].append(getattr(res, k).detach().cpu().numpy())
        reasons += res.reasons
        if "x_adv_delta" in run:
            deltas.append((res.x_adv - x).cpu().numpy())
        if progress is not None:
            progress(len(ids))
    rows = {k: np.concatenate(v).astype(st.RESULT_FIELDS[k][0]) for k, v in parts.items()}
    rows["y_star"] = rows["y_star"] > 0.5
    st.write_chunk(run, chunk, rows, reasons, np.concatenate(deltas) if deltas else None,
                   provenance.record(device, started, run.attrs.get("fingerprint", {}).get("data_digest")))
    return len(index)


def attack_checkpoint(checkpoint: str | Path | None, attack: str, out: str | Path, *, preset: str = "paper",
                      target: str = "show-many", target_label: Any = None, params: dict | None = None,
                      n: int | None = None, seed: int = 0, order: str | None = None,
                      rounding: str | None = None, dataset: str | None = None,
                      root: str | Path | None = None, split: str | None = None, chunk_size: int = 100,
                      batch_size: int = 0, early_exit: bool = False, exit_every: int = 4, save_adv: bool = False,
                      device: str = "cpu", model_key: str | None = None, workers: int = 0,
                      progress: bool = True, compile: str | bool = "auto", embedding: str | Path | None = None,
                      label_names: list[str] | None = None, trust_pickle: bool = False, allow_missing: bool = False,
                      own_model: dict | None = None, **load_kw) -> dict[str, Any]:
    """Run one attack of the study's protocol on one checkpoint (or your own model: ``own_model``, see
    engine.models.sources) into the store at ``out``."""
    # Bad names and values fail here, before the model is loaded.
    rs = RunSpec.from_dict({"attack": attack, "preset": preset, "target": target, "target_label": target_label,
                            "params": dict(params or {}), "n": n, "seed": seed, "order": order, "rounding": rounding,
                            "chunk_size": chunk_size, "batch_size": batch_size, "early_exit": early_exit,
                            "exit_every": exit_every, "save_adv": save_adv})
    check_device(device)
    if model_key is not None:
        st.check_name(model_key, "--model-key")
    compiled = use_compile(compile, device)
    # The store is opened (and its lease taken) only once checkpoint and data have loaded: bad
    # inputs leave nothing behind.
    with ExitStack() as held:  # the lease, once taken, is released however this ends

        def open_locked():
            held.enter_context(store_lock(out, "sml attack"))
            return st.open_store(out, "a")

        p = plan(checkpoint, open_locked, dataset=dataset, root=root, split=split, device=device,
                 model_key=model_key, embedding=embedding, label_names=label_names, trust_pickle=trust_pickle,
                 allow_missing=allow_missing, own_model=own_model, **load_kw)
        return _attack(p, rs, out, device, workers, progress, compiled)


def _attack(p: Plan, rs: RunSpec, out, device: str, workers: int, progress: bool, compiled: bool) -> dict[str, Any]:
    """attack_checkpoint's body, under the store's lease."""
    run = open_run(p, p.root, rs)
    todo = todo_chunks(run)
    t0 = time.perf_counter()
    remaining = sum(chunk_rows(run, c) for c in todo)
    ctx: dict[str, Any] = {}
    add_resources(rs.spec, ctx, workers)
    try:
        with tqdm(total=remaining, desc=f"{p.model_key}/{p.dataset_key}/{rs.key}", unit="sample",
                  disable=not progress, dynamic_ncols=True) as bar:
            for c in todo:
                run_shard(p, run, c, rs, device=device, ctx=ctx, progress=bar.update, compile=compiled)
    finally:
        close_resources(ctx)
    seconds = time.perf_counter() - t0
    return summarize(run) | {"seconds": seconds, "chunks_run": len(todo), "store": str(out), "group": run.path}


def _params_of(a: dict[str, Any]) -> dict[str, Any]:
    """A run from before runs recorded their parameters: the config's values that differ from its
    preset's (what ``--param`` must have set), so that its title still says how it was run."""
    try:
        preset = json.loads(json.dumps(attacks.make_config(a["attack"], a["preset"]).to_dict()))
    except UserError:  # an attack or preset this engine no longer has
        return {}
    return {k: v for k, v in sorted(a.get("config", {}).items()) if preset.get(k) != v}


def summarize(run) -> dict[str, Any]:
    """Success rates per n (final and best) over the finished rows of a run."""
    a = dict(run.attrs)
    rows = st.done_rows(run)
    eligible = np.asarray(st.read(run, "eligible"), dtype=bool) & rows
    final = st.read(run, "label_count_final")[eligible]
    best = st.read(run, "label_count_best")[eligible]
    out = {"attack": a["attack"], "preset": a["preset"], "target": a["target"], "n": int(rows.sum()),
           "n_eligible": int(eligible.sum()), "n_requested": a["n_requested"], "order": a.get("order", "seeded"),
           "avg_labels": a["avg_labels"], "avg_labels_samples": a.get("avg_labels_samples", a["n"]),
           "avg_labels_source": a.get("avg_labels_source", "mean true-label count of the run's own samples"),
           "rounding": a.get("rounding", "ceil"),  # stores from before the rounding choice scored with ceil
           "exp_labels": a["exp_labels"], "failed": int(st.read(run, "failed")[rows].sum()),
           "params": a["params"] if "params" in a else _params_of(a)}
    if a["target"] == "show-many":
        out["success_final"] = protocol.success_rates(final, a["exp_labels"])
        out["success_best"] = protocol.success_rates(best, a["exp_labels"])
    else:
        for sem, name in (("final", "success"), ("best", "success_best")):
            vals = st.read(run, name)[eligible]
            out[f"success_{sem}"] = [float(vals.mean()) if vals.size else math.nan]
    return out
