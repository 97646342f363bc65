"""`sml sweep FILE --plan`: what a sweep will cost, without attacking anything.

Per (model, run): the samples N it attacks, the model passes one sample costs (from the attack
spec's ``passes``: its settings and the number of labels, in forward + backward units of one
image), the seconds of one such pass (a short calibration on the model itself, or a device
profile written by ``make bench``), hence device-seconds; then the sweep's wall time on 1, 4, 8
and 32 devices. Every figure rests on assumptions, and the plan lists them with its numbers.

A device profile holds, per (backbone, head family, input size), the seconds of one forward +
backward and of one forward, per image, at a given batch: the rows of `sml profile --out` (a JSON
list) or of a `make bench` record (bench/results/profile-*.json, its ``rows``), or a file of
``entries`` in that shape.
"""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import data, protocol
from engine.errors import UserError
from engine.models import prepare_for_attack, sources
from engine.runtime import batching
from engine.runtime.sweep.sweepfile import load_sweep
from engine.util import markdown_table

DEVICE_COUNTS = (1, 4, 8, 32)
PROFILE_FORMAT = 1
CALIBRATION_BATCH = 8  # enough for a stable per-image time on CPU; GPUs need their profile's batch


@dataclass(frozen=True)
class PassTime:
    """Seconds per image of one forward + backward to the input, and of one forward alone."""

    fwd_bwd: float
    fwd: float
    batch: int
    source: str  # "measured here" or the profile it came from

    @property
    def fwd_share(self) -> float:
        return min(1.0, self.fwd / self.fwd_bwd)


def measure(model: torch.nn.Module, image_shape: tuple[int, ...], batch: int, device: str,
            min_seconds: float = 0.5, min_repeats: int = 5, max_repeats: int = 50) -> PassTime:
    """Seconds per image of a forward + backward to the input and of a forward, on random images of
    ``image_shape`` (a pass costs the same whatever the pixels). The two alternate, at least
    ``min_repeats`` times and until each has run ``min_seconds``, after a warm-up; the fastest
    repeat counts: on a shared machine the slower ones include other processes' work."""
    prepare_for_attack(model)
    x = torch.rand(batch, *image_shape, device=device)

    def fwd_bwd():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)

    def fwd():
        with torch.no_grad():
            model(x)

    def timed(fn) -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    fwd_bwd(), fwd()  # warm-up: first-call allocations, kernel selection
    times: dict = {fwd_bwd: [], fwd: []}
    while len(times[fwd]) < max_repeats and (len(times[fwd]) < min_repeats or
                                             min(sum(v) for v in times.values()) < min_seconds):
        for fn in times:
            times[fn].append(timed(fn))
    return PassTime(fwd_bwd=min(times[fwd_bwd]) / batch, fwd=min(times[fwd]) / batch, batch=batch,
                    source="measured here")


def profile_entry(backbone: str, family: str, size: int, t: PassTime) -> dict[str, Any]:
    return {"backbone": backbone, "family": family, "size": size, "batch": t.batch,
            "fwd_bwd_s_per_image": t.fwd_bwd, "fwd_s_per_image": t.fwd}


def write_profile(path: str | Path, device: str, device_name: str, entries: list[dict[str, Any]]) -> None:
    doc = {"format": PROFILE_FORMAT, "device": device, "device_name": device_name, "torch": torch.__version__,
           "entries": entries}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def read_profile(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: device profile not found (`make bench` writes one under bench/results/)")
    try:
        doc = _as_entries(json.loads(p.read_text()))
        entries = doc["entries"]
        for e in entries:
            float(e["fwd_bwd_s_per_image"]), float(e["fwd_s_per_image"]), int(e["size"]), str(e["backbone"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{p}: not a device profile ({type(e).__name__}: {e})") from None
    return doc


def _as_entries(doc: Any) -> dict[str, Any]:
    """A profile's rows (`sml profile`'s list, or a bench record's ``rows``) as entries, the largest
    batch of each model first (a sweep's automatic batch is large); other documents as they are."""
    rows = doc if isinstance(doc, list) else doc.get("rows") if isinstance(doc, dict) and "entries" not in doc else None
    if rows is None:
        return doc
    rows = sorted(rows, key=lambda r: -int(r["batch"]))
    first = rows[0] if rows else {}
    return {"device": first.get("device"), "device_name": (first.get("provenance") or {}).get("device"),
            "entries": [{"backbone": r["backbone"], "family": r["family"], "size": r["input_size"], "batch": r["batch"],
                         "fwd_bwd_s_per_image": r["fwd_bwd_s_per_image"], "fwd_s_per_image": r["fwd_s_per_image"]}
                        for r in rows]}


def _from_profile(doc: dict[str, Any], path: str, backbone: str, family: str, size: int) -> PassTime:
    """The profile's entry for (backbone, size), that of the same head family if it has one."""
    hits = [e for e in doc["entries"] if e["backbone"] == backbone and int(e["size"]) == size]
    hits.sort(key=lambda e: e.get("family") != family)
    if not hits:
        have = ", ".join(f"{e['backbone']}@{e['size']}" for e in doc["entries"]) or "none"
        raise UserError(f"{path}: no entry for {backbone} at {size} px (it has: {have}); run the bench with that "
                        f"model, or plan without --device-profile to measure here")
    e = hits[0]
    return PassTime(float(e["fwd_bwd_s_per_image"]), float(e["fwd_s_per_image"]), int(e.get("batch", 0)),
                    f"{path} ({doc.get('device_name') or doc.get('device')})")


def _makespan(shards: list[float], devices: int) -> float:
    """Wall seconds of ``shards`` on ``devices`` workers that each take the next shard when free
    (longest first, as a queue sorted by size would run them)."""
    load = [0.0] * devices
    for s in sorted(shards, reverse=True):
        heapq.heapreplace(load, load[0] + s)
    return max(load)


def plan_sweep(path: str | Path, *, device_profile: str | Path | None = None, device: str | None = None,
               batch: int = CALIBRATION_BATCH) -> dict[str, Any]:
    """The sweep's cost plan (see the module docstring). Nothing is attacked and no store is opened;
    without a profile each model is loaded and timed on ``device`` (default: the sweep file's,
    cuda if available under ``auto``)."""
    sw = load_sweep(path, yes=True)  # a plan runs nothing: it is how one checks a large grid first
    doc = read_profile(device_profile) if device_profile else None
    dev = device or (sw.device if sw.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    rows, shards = [], []
    for mi, m in enumerate(sw.models):
        lm = sources.load(m.checkpoint, m.own_model())  # ours or your own model (engine.models.sources)
        family = lm.family
        l = len(lm.label_names)
        ds_name = (lm.ck.get("dataset") or {}).get("name") if lm.ck else None
        dataset = m.dataset or ds_name or "?"
        size = int(lm.input_size or (data.info(dataset).size if dataset in data.names() else 224))
        shape = (3, size, size)
        if doc is not None:
            t = _from_profile(doc, str(device_profile), lm.backbone, family, size)
        else:
            model = lm.model.to(dev)
            b = min(batch, batching.auto_batch(model, shape, num_labels=l, jacobian=False, device=dev))
            t = measure(model, shape, b, dev)
        for r in (r for r in sw.runs if r.model == mi):
            rs = r.spec
            n = rs.samples(family, dataset)
            p = rs.spec.passes(rs.config, l)
            per = p.in_grad_passes(t.fwd_share) if p is not None else None
            secs = n * per * t.fwd_bwd if per is not None else None
            rows.append({"model": m.key, "dataset": dataset, "run": rs.key, "attack": rs.spec.name, "samples": n,
                         "labels": l, "size": size,
                         "passes_per_sample": per, "passes": None if p is None else vars(p),
                         "fwd_bwd_s_per_image": t.fwd_bwd, "fwd_share": t.fwd_share, "device_seconds": secs,
                         "cpu_bound": rs.spec.cpu_bound, "precision": rs.config.precision, "timing": t.source,
                         "timing_batch": t.batch})
            if secs is not None:
                c = rs.chunk_size
                shards += [secs * min(c, n - s) / n for s in range(0, n, c)]
    total = sum(shards)
    on = {k: _makespan(shards, k) for k in DEVICE_COUNTS}
    where = (doc.get("device_name") or doc.get("device")) if doc else dev
    return {"sweep": sw.name, "device": where,
            "rows": rows, "device_seconds": total, "wall_seconds": on, "shards": len(shards),
            "assumptions": _assumptions(rows, doc is not None)}


def _assumptions(rows: list[dict], profiled: bool) -> list[str]:
    out = [
        "N = the samples each run asks for; a model that predicts fewer test samples exactly right gets fewer",
        "passes per sample are an upper bound: every iteration of every sample runs (early exit, abort-early "
        "and samples already at the target only shorten it)",
        "one pass = forward + backward of one image; a forward alone costs the measured share of it, a further "
        "backward (a Jacobian row) the rest",
        "a pass costs the same at the sweep's batch size as at the timing batch"
        + ("" if profiled else f" ({CALIBRATION_BATCH} or fewer images, measured here: the fastest of several "
                               "repeats, the others taken as disturbed by other work)"),
        "N devices run the shards (one stored chunk each) from one queue, longest first; no time for start-up, "
        "model loading, data loading, compile or writing results",
        f"the protocol's N where the file gives none ({protocol.PROTOCOL_N}, or the preset's own)",
    ]
    solvers = sorted({r["run"] for r in rows if r["cpu_bound"]})
    if solvers:
        out.append(f"{', '.join(solvers)}: model passes only; their CPU solver work is not counted")
    reduced = sorted({r["run"] for r in rows if r["precision"] != "fp32"})
    if reduced:
        out.append(f"{', '.join(reduced)}: priced at the fp32 time of a pass; the bench's precision table says "
                   f"how much faster (or slower) that precision runs on this kind of device")
    unknown = sorted({r["run"] for r in rows if r["passes_per_sample"] is None})
    if unknown:
        out.append(f"{', '.join(unknown)}: the attack declares no pass count, so it is left out of the totals")
    return out


def _dur(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_plan(plan: dict[str, Any]) -> str:
    out = [f"sweep {plan['sweep']!r} on {plan['device']}: cost plan (nothing attacked)", "", *markdown_table(
        ["model", "run", "samples", "passes / sample", "s / pass (fwd+bwd, 1 image)", "device time"],
        ([f"{r['model']}/{r['dataset']}", r["run"], r["samples"],
          "?" if r["passes_per_sample"] is None else f"{r['passes_per_sample']:.1f}",
          f"{r['fwd_bwd_s_per_image']:.3g}", "?" if r["device_seconds"] is None else _dur(r["device_seconds"])]
         for r in plan["rows"]))]
    out += ["", f"total: {_dur(plan['device_seconds'])} of device time in {plan['shards']} shards; wall time on "
            + ", ".join(f"{k} device(s): {_dur(v)}" for k, v in plan["wall_seconds"].items())]
    timings = sorted({f"{r['model']}: {r['timing']}, batch {r['timing_batch']}" for r in plan["rows"]})
    out += ["", "timing: " + "; ".join(timings), "", "assumptions:"] + [f"- {a}" for a in plan["assumptions"]]
    return "\n".join(out)
