"""`sml profile`: throughput of attack implementations on one model, side by side, one row per
(attack, batch).

Per row: a counting call (eager, hooks on the model: engine.profile.hooks; it is also the warm-up
and checks x_adv's shape), ``repeats`` timed calls (the median counts), the model's forward and
forward + backward per image at that batch timed in the same run (engine.runtime.sweep.plan.measure),
so that the floor, the passes made times their cost, is measured where the attack is; the phases of
one eager call (engine.profile.phases); and the peak memory (CUDA: max allocated; CPU: the peak RSS
growth of a fresh process that makes one call, engine.profile.memory).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.attacks import precision as precisions
from engine.config import ProfileConfig
from engine.device import check_device
from engine.errors import UserError
from engine.models import prepare_for_attack, sources
from engine.profile import phases, specs
from engine.profile.hooks import PassCounter
from engine.runtime import batching, provenance
from engine.runtime.sweep.plan import measure


def load(opts: dict[str, Any]):
    """(model on the CPU, ready to attack; the data set; what the rows say of the model: its name,
    family, backbone) from `sml attack`'s model and data
    options: checkpoint, own_model, embedding, label_names, trust_pickle, dataset, root, split,
    allow_missing and the loader's keywords (load_kw)."""
    m = sources.load(opts.get("checkpoint"), opts.get("own_model"), embedding=opts.get("embedding"),
                     label_names=opts.get("label_names"), trust_pickle=bool(opts.get("trust_pickle")))
    ds = m.dataset_for(opts.get("dataset"), opts.get("root"), opts.get("split"),
                       allow_missing=bool(opts.get("allow_missing")), **opts.get("load_kw", {}))
    return prepare_for_attack(m.model), ds, {"model": m.key, "family": m.family, "backbone": m.backbone}


def images(ds, n: int) -> torch.Tensor:
    """The first ``n`` images of the split (repeated where it has fewer): a profile times passes,
    which cost the same whatever the pixels."""
    return torch.stack([ds.image(i % len(ds)) for i in range(n)])


def parse_batches(text: str) -> list[int] | None:
    """``16`` / ``8,16,32`` -> sizes; ``auto`` -> None (the largest batch that fits, per attack)."""
    if text.strip() == "auto":
        return None
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 or b > 65536 for b in sizes):
        raise UserError(f"--batch {text!r}: expected auto, or sizes in 1..65536 separated by commas (e.g. 8,16,32)")
    return sizes


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(model, shape, batch: int, labels: int, jacobian: bool, device: str) -> None:
    """A batch whose activations (engine.runtime.batching's estimate) exceed the device's free
    memory is refused in one line before it runs."""
    per = 3 * batching.activation_bytes(model, shape, device) + (2 * labels * shape[0] * shape[1] * shape[2] * 4
                                                                  if jacobian else 0)
    free = torch.cuda.mem_get_info(torch.device(device))[0] if device.startswith("cuda") else _available_bytes()
    if free is not None and per * batch > free:
        raise UserError(f"--batch {batch}: needs about {per * batch / 2**30:.1f} GiB on {device}, which has "
                        f"{free / 2**30:.1f} GiB free; the largest that fits is about {max(1, free // per)} "
                        f"(or --batch auto)")


def _timed(fn: Callable[[], Any], device: str) -> float:
    phases._sync(device)
    t = time.perf_counter()
    fn()
    phases._sync(device)
    return time.perf_counter() - t


def _call(subject, fn, device: str, batch: int):
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"--attack {subject.text}: batch {batch} does not fit on {device} (out of memory); "
                        f"try a smaller --batch, or --batch auto") from None


def _floor(passes: dict[str, float], fwd: float, fwd_bwd: float) -> float:
    return passes["forward"] * fwd + passes["forward_backward"] * fwd_bwd + passes["backward"] * max(fwd_bwd - fwd, 0)


def _spec_check(counted: dict[str, float], declared) -> tuple[dict | None, str | None]:
    if declared is None:
        return None, None
    want = {"forward": declared.fwd, "forward_backward": declared.grad, "backward": declared.bwd}
    if all(abs(counted[k] - want[k]) < 1e-9 for k in want):
        return want, "equal"
    return want, "within" if all(counted[k] <= want[k] + 1e-9 for k in want) else "exceeds"


def profile_row(subject, model, ds, about: dict[str, str], batch: int, cfg: ProfileConfig, opts: dict[str, Any], *,
                trace: str | Path | None = None, log=print) -> dict[str, Any]:
    dev = cfg.device
    x = images(ds, batch).to(dev)
    labels = int(ds.labels.shape[1])
    check_fits(model, tuple(x.shape[1:]), batch, labels, subject.jacobian, dev)
    prec = subject.config.precision if subject.kind == "registered" else cfg.precision
    with precisions.applied(model, prec, dev) as net:
        target = model if subject.kind == "registered" else net  # attacks.run applies the precision itself
        eager = subject.make(target, x)
        with PassCounter(model) as counter:
            out = _call(subject, eager, dev, batch)
        specs.check_output(subject, out, x)
        counted = counter.per_sample(batch)
        timed_fn = eager
        if cfg.compile:
            timed_fn = subject.make(model, x, compile=True) if subject.kind == "registered" else \
                subject.make(torch.compile(net), x)
            _call(subject, timed_fn, dev, batch)  # the compile, outside the timings
        times = [_timed(timed_fn, dev) for _ in range(cfg.repeats)]
        pt = measure(net, tuple(x.shape[1:]), batch, dev, min_seconds=cfg.calibration_seconds, min_repeats=3)
        row_phases, frames = None, []
        if not cfg.compile:
            row_phases = phases.breakdown(model, eager, dev, trace)
            if row_phases["other"] > phases.OTHER_LIMIT * sum(row_phases.values()):
                frames = phases.host_frames(eager)
    seconds = statistics.median(times)
    per_sample = seconds / batch
    floor = _floor(counted, pt.fwd, pt.fwd_bwd)
    declared, check = _spec_check(counted, subject.declared(labels))
    row = {"attack": subject.text, "model": about["model"], "device": dev, "precision": prec, "compile": cfg.compile,
           "batch": batch, "repeats": cfg.repeats, "images_per_s": batch / seconds,
           "seconds_per_sample": per_sample, "passes": counted, "fwd_s_per_image": pt.fwd,
           "fwd_bwd_s_per_image": pt.fwd_bwd, "floor_s_per_sample": floor,
           "floor_ratio": per_sample / floor if floor > 0 else None,
           "phases": row_phases if row_phases is not None else {"compiled": seconds},
           "phases_note": None if row_phases is not None else "compiled: one phase (torch.compile fuses the step)",
           "other_frames": frames, "spec_passes": declared, "spec_check": check,
           # what `sml sweep --plan --device-profile` matches a sweep's model on (plan.read_profile)
           "family": about["family"], "backbone": about["backbone"], "input_size": int(x.shape[-1]),
           "peak_memory_bytes": peak_memory(subject, model, x, cfg, opts) if cfg.memory else None,
           "provenance": {**provenance.static(dev), "torch_threads": torch.get_num_threads(),
                          "date": provenance.now()}}
    log(f"  {subject.text} @ {batch}: {row['images_per_s']:.1f} images/s, floor ratio "
        f"{row['floor_ratio'] or float('nan'):.2f}")
    return row


def peak_memory(subject, model, x: torch.Tensor, cfg: ProfileConfig, opts: dict[str, Any]) -> int | None:
    """CUDA: max allocated during one call, above what was allocated before it. CPU: the peak
    RSS growth of a fresh process that loads the same model and data and makes one call (this
    process's RSS holds everything it ever allocated)."""
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with precisions.applied(model, cfg.precision, cfg.device) as net:
            subject.make(model if subject.kind == "registered" else net, x)()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    job = {"opts": opts, "attack": subject.text, "precision": cfg.precision, "batch": int(x.shape[0])}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-m", "engine.profile.memory"], input=json.dumps(job), text=True,
                         capture_output=True, env=env, timeout=3600)
    if res.returncode != 0:
        raise UserError(f"--attack {subject.text}: the memory measurement's process failed: "
                        f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_growth_bytes"])


def run(attack_specs: Sequence[str], opts: dict[str, Any], batch: str, cfg: ProfileConfig, *,
        trace: str | Path | None = None, log=print) -> list[dict[str, Any]]:
    """Every (attack, batch) row; every SPEC and the batch list are checked before the model loads."""
    check_device(cfg.device)
    subjects = [specs.parse(s, cfg.precision) for s in attack_specs]
    if not subjects:
        raise UserError("sml profile: name at least one --attack SPEC (or --compare OLD.json NEW.json)")
    sizes = parse_batches(batch)
    model, ds, about = load(opts)
    model = model.to(cfg.device)
    shape = tuple(ds.image(0).shape)
    rows = []
    for i, subject in enumerate(subjects):
        todo = sizes or [batching.auto_batch(model, shape, num_labels=int(ds.labels.shape[1]),
                                             jacobian=subject.jacobian, device=cfg.device)]
        for b in todo:
            where = None
            if trace is not None:
                t = Path(trace)
                where = t if len(subjects) * len(todo) == 1 else t.with_name(f"{t.stem}.{i}-b{b}{t.suffix}")
            rows.append(profile_row(subject, model, ds, about, b, cfg, opts, trace=where, log=log))
    return rows
