"""Batch runner: from a checkpoint to a run in the result store, shard by shard, resumable.

``plan`` (engine.runtime.planning) does the protocol once per (checkpoint, data set): a pass over
the test split gives both Table 1's metrics and the exactly-right samples (cached in the store).
``attack_checkpoint`` picks the N samples, creates (or reopens) the run group and attacks every
chunk not yet done, writing each chunk as soon as it is finished; an interrupted run continues where
it stopped. ``run_shard`` is the unit of work: ``sml attack`` runs its chunks in turn, sweeps hand
them to workers. The runtime names no attack: what it needs to know (Jacobian, shared resources)
are the attack spec's traits.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from engine import attacks, models, protocol, results
from engine.config import COMPILE_MODES
from engine.device import check_device
from engine.errors import UserError
from engine.results import attrs
from engine.runtime import batching, fitting, provenance
from engine.runtime.planning import Plan, exactly_right, plan
from engine.runtime.runspec import RunSpec

__all__ = ["Plan", "RunSpec", "attack_checkpoint", "open_run", "plan", "run_shard", "todo_chunks"]

log = logging.getLogger(__name__)


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
    n_req = rs.samples(p.family, p.dataset.name)
    # What only the model can tell (k against its label count, a named label set) fails before the
    # group exists.
    rs.check_labels(p.dataset.num_labels, p.dataset.label_names)
    _check_chunks_fit_code_batch(p, rs)
    feed = rs.feed(p.family, p.dataset.name)
    # The feed's attack-side setting (gram) lives in the config, which the fingerprint holds already.
    fed_as = {k: v for k, v in feed.changed().items() if k != "gram"}
    config = rs.config_for(p.family, p.dataset.name)
    candidates = candidates_for(p, fed_model(p, rs), feed)
    # A universal attack fits on the candidates before its N scored samples (engine.runtime.fitting).
    fit_index, picked = (fitting.split(p, rs, n_req, candidates) if rs.spec.universal
                         else (None, pick_samples(p, rs, n_req, candidates, feed)))
    scored = scoring_attrs(p, rs, candidates)
    image_shape = tuple(p.dataset.image(int(picked[0])).shape) if rs.save_adv and len(picked) else None
    made_from = {"checkpoint_digest": p.digest, "target_label": rs.target_label, "order": rs.order,
                 "n_requested": n_req, "early_exit": rs.early_exit,
                 "exit_every": rs.exit_every if rs.early_exit else None, "split": p.dataset.split,
                 # the content digest of the data read (sample list and file bytes): other data at
                 # resume is refused, an identical copy at another path is accepted
                 "data_digest": p.data_digest,
                 # what the model is fed, only where it is not its own input (as precision is left
                 # out at fp32): runs made before the feed keep their fingerprints
                 **({"feed": fed_as} if fed_as else {})}
    note = protocol.inferred_note(rs.preset, p.family, p.dataset.name)
    if note:
        log.warning("%s", note)
    run_attrs = attrs.run_attrs(rs.spec, config, preset=rs.preset, params=rs.params_resolved, target=rs.target,
                                target_label=rs.target_label, seed=rs.seed, order=rs.order, early_exit=rs.early_exit,
                                n_requested=n_req, n_available=int(len(candidates)), scored=scored,
                                label_names=p.dataset.label_names, model_metrics=p.metrics, checkpoint=p.checkpoint,
                                made_by="engine.runtime.runner.open_run", feed=fed_as, warning=note)
    run = results.create_run(
        results.model_group(root_group, p.model_key, p.dataset_key), rs.key, n=len(picked),
        num_labels=p.dataset.num_labels, image_shape=image_shape, chunk_size=rs.chunk_size, attrs=run_attrs,
        sample_index=picked, labels_true=p.dataset.labels[picked].astype(bool),
        fingerprint=attrs.fingerprint(rs.spec, config, target=rs.target, seed=rs.seed, **made_from))
    if fit_index is not None:
        # Fitted here, by the one process that opens the run (a sweep's planning actor), so that
        # every shard, on any worker and thread count, applies the same stored delta.
        fitting.add_delta(run, tuple(p.dataset.image(int(picked[0])).shape), rs, fit_index)
        fitting.delta_for(p, run, rs, str(next(p.model.parameters(), torch.empty(0)).device))
    # How a run is scored is not part of its results: a reopened run takes the rounding asked for now.
    if any(run.attrs.get(k) != v for k, v in scored.items()):
        run.attrs.update(scored)
    return run


def fed_model(p: Plan, rs: RunSpec):
    """The model as this run feeds it (engine.models.feed): its own input, or the released code's."""
    feed = rs.feed(p.family, p.dataset.name)
    return models.fed(p.model, feed.input, feed.shown)


def candidates_for(p: Plan, model, feed: protocol.Feed) -> np.ndarray:
    """The test samples ``model`` (as ``feed`` feeds it) predicts exactly right: the plan's where the
    feed is the model's own; else one more pass over the split, cached in the model group."""
    if not ({"input", "shown"} & set(feed.changed())):
        return p.candidates
    group = results.model_group(p.root, p.model_key, p.dataset_key)
    name = f"candidates_{feed.input}_{feed.shown}"
    if name not in group:
        device = next(iter(p.model.parameters()), torch.empty(0)).device
        cand = exactly_right(model, p.dataset, str(device))
        group.create_array(name, shape=(len(cand),), chunks=(max(len(cand), 1),), dtype="int64",
                           dimension_names=("candidate",), overwrite=True)[:] = cand
    return np.asarray(group[name][:])


def _check_chunks_fit_code_batch(p: Plan, rs: RunSpec) -> None:
    """Where results depend on the released code's batch, every chunk must hold whole batches."""
    batch = code_batch(p, rs)
    if batch is not None and rs.chunk_size % batch:
        raise UserError(f"chunk_size {rs.chunk_size} is not a multiple of the released code's batch {batch} for "
                        f"{p.family}/{p.dataset.name} (its {rs.spec.title} results depend on the batch): set "
                        f"chunk_size to a multiple of {batch}, e.g. {batch * max(1, rs.chunk_size // batch)}")


def pick_samples(p: Plan, rs: RunSpec, n_req: int, candidates: np.ndarray, feed: protocol.Feed) -> np.ndarray:
    """The run's N samples among the candidates (all of them where there are fewer, with a warning;
    none, where the model is fed other than its own way, makes an empty run the tables show)."""
    if len(candidates) == 0:
        if feed.changed():
            log.warning("%s/%s: the model predicts no test sample exactly right as fed here (%s): an empty run",
                        p.model_key, p.dataset_key, feed.changed())
            return np.zeros(0, dtype=np.int64)
        raise UserError(f"{p.checkpoint}: the model predicts no test sample of {p.dataset_key} exactly right")
    picked = protocol.select(candidates, n_req, rs.seed, rs.order)
    if len(picked) < n_req:
        log.warning("only %d correctly predicted samples (asked for %d): using all of them", len(picked), n_req)
    return picked


def scoring_attrs(p: Plan, rs: RunSpec, candidates: np.ndarray) -> dict[str, Any]:
    """avgLabels, where it came from, and the ladder (engine.protocol): one avgLabels per (model,
    data set) and rule set, whatever N this run attacks."""
    basis_n = protocol.avg_labels_basis(rs.preset, p.family, p.dataset.name)
    basis = protocol.select(candidates, basis_n, rs.seed, rs.order) if len(candidates) else candidates
    avg = float(p.dataset.labels[basis].astype(bool).sum(1).mean()) if len(basis) else float("nan")
    how = f"the first {len(basis)}" if rs.order == "first" else f"{len(basis)} seeded (seed {rs.seed})"
    source = (f"mean true-label count of {how} correctly predicted samples of "
              f"{p.model_key}/{p.dataset_key}" + (" (the code's y.npy)" if protocol.rules(rs.preset).released else
                                                  " (one per data set, the text's)"))
    return attrs.scoring(avg, int(len(basis)), source, rs.rounding, p.dataset.num_labels,
                         protocol.ladder_columns(rs.preset, p.family, p.dataset.name))


def todo_chunks(run) -> list[int]:
    """Chunks of ``run`` whose done flag is not set yet (the work a resume still has to do)."""
    return [int(c) for c in np.nonzero(~results.done_chunks(run))[0]]


def chunk_rows(run, chunk: int) -> int:
    c, n = int(run.attrs["chunk_size"]), int(run.attrs["n"])
    return max(0, min(c, n - chunk * c))


def run_shard(p: Plan, run, chunk: int, rs: RunSpec, *, device: str = "cpu", ctx: dict | None = None,
              progress=None, compile: bool = False) -> int:
    """Attack the samples of chunk ``chunk`` of ``run`` as ``rs`` says and write them (rows, then the
    done flag): the unit of work of ``sml attack`` and of every sweep worker."""
    started = provenance.now()
    if rs.spec.universal:  # every shard applies the run's one delta, fitted when the run was opened
        delta, passes = fitting.delta_for(p, run, rs, device)
        ctx = dict(ctx or {}, universal_delta=delta, universal_passes=passes)
    c = int(run.attrs["chunk_size"])
    index = np.asarray(run["sample_index"][chunk * c : (chunk + 1) * c])
    rows, reasons, deltas = attack_samples(p, rs, index, device=device, ctx=ctx, progress=progress, compile=compile,
                                           keep_delta="x_adv_delta" in run)
    results.write_chunk(run, chunk, rows, reasons, deltas,
                        provenance.record(device, started, p.data_digest))
    return len(index)


def attack_samples(p: Plan, rs: RunSpec, index: np.ndarray, *, device: str, ctx: dict | None, progress,
                   compile: bool, keep_delta: bool) -> tuple[dict[str, np.ndarray], list[str], np.ndarray | None]:
    """Attack data set samples ``index`` batch by batch: (result rows, failure reasons, x_adv - x
    where ``keep_delta``)."""
    spec = rs.spec
    model, config = fed_model(p, rs), rs.config_for(p.family, p.dataset.name)
    # An empty run (no sample predicted exactly right as fed) still has one chunk, of no rows.
    bs = batch_for(p, rs, tuple(p.dataset.image(int(index[0])).shape), device) if len(index) else 1
    parts: dict[str, list] = {k: [] for k in results.RESULT_FIELDS}
    reasons: list[str] = []
    deltas = []
    for s in range(0, len(index), bs):
        ids = index[s : s + bs]
        x = torch.stack([p.dataset.image(int(i)) for i in ids]).to(device)
        res = attacks.run(model, x, spec.name, config=config, target=rs.target, seed=rs.seed,
                          sample_ids=ids.tolist(), early_exit=rs.early_exit, exit_every=rs.exit_every,
                          target_label=rs.target_label, ctx=ctx, compile=compile and spec.kind == "iterative")
        for k in parts:
            parts[k].append(getattr(res, k).detach().cpu().numpy())
        reasons += res.reasons
        if keep_delta:
            deltas.append((res.x_adv - x).cpu().numpy())
        if progress is not None:
            progress(len(ids))
    l = p.dataset.num_labels
    rows = {k: np.concatenate(v).astype(results.RESULT_FIELDS[k][0]) if v else
            np.zeros(results.result_shape(k, 0, l), dtype=results.RESULT_FIELDS[k][0]) for k, v in parts.items()}
    rows["y_star"] = rows["y_star"] > 0.5
    return rows, reasons, np.concatenate(deltas) if deltas else None


def attack_checkpoint(checkpoint: str | Path | None, attack: str, out: str | Path, *, preset: str = "paper",
                      target: str | None = None, target_label: Any = None, params: dict | None = None,
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
        results.check_name(model_key, "--model-key")
    compiled = use_compile(compile, device)
    # The store is opened (and its lease taken) only once checkpoint and data have loaded: bad
    # inputs leave nothing behind.
    with ExitStack() as held:  # the lease, once taken, is released however this ends

        def open_locked():
            held.enter_context(results.store_lock(out, "sml attack"))
            return results.open_store(out, "a")

        p = plan(checkpoint, open_locked, dataset=dataset, root=root, split=split, device=device,
                 model_key=model_key, embedding=embedding, label_names=label_names, trust_pickle=trust_pickle,
                 allow_missing=allow_missing, own_model=own_model,
                 check=lambda ds: rs.check_labels(ds.num_labels, ds.label_names), **load_kw)
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
    return results.summarize(run) | {"seconds": seconds, "chunks_run": len(todo), "store": str(out), "group": run.path}
