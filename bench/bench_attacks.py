"""The bench's gradient-attack sections beside the profile (bench/__main__.py): the precisions
(fp32 / tf32 / bf16: speed and agreement of the final label counts with fp32), early exit over the
demo set, and the plain-torch floor loop that `make gpu-check` times (bench/gpu/measure.py).
Throughput against the floor and the peer libraries is `sml profile`'s (engine.profile).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from bench.timing import sync as _sync
from bench.timing import timed as _timed
from engine import attacks
from engine.attacks import precision
from engine.attacks.driver import grad_and_logits
from engine.attacks.losses import bce
from engine.util import markdown_table

ATTACKS = ("fgsm", "fgm", "bim", "pgd", "mifgsm", "slide")
ITERATIONS = 40


def floor_run(model: nn.Module, x: torch.Tensor, y_star: torch.Tensor, iterations: int) -> Callable:
    def run():
        for _ in range(iterations):
            grad_and_logits(model, x, y_star, lambda z, y: bce(z, y))
        return x

    return run


def precision_rows(model: nn.Module, x: torch.Tensor, model_name: str, *, repeats: int, device: str,
                   names=ATTACKS, log=print) -> list[dict]:
    """Per attack: seconds of ours-eager under each precision and how often the final label count
    of a sample equals fp32's (same samples, same targets). A precision this device lacks gets a row
    saying why it was skipped."""
    model = attacks.attack_mode(model).__enter__()
    ids = list(range(x.shape[0]))
    dev = torch.device(device).type
    skipped = {}
    ok, why = precision.bf16_supported(dev)
    if not ok:
        skipped["bf16"] = f"no bf16 autocast on {dev} ({why})"
    if dev != "cuda":
        skipped["tf32"] = "TF32 is a CUDA tensor-core format: on CPU tf32 runs as fp32"
    modes = [m for m in attacks.registry.PRECISIONS if m not in skipped]
    rows = []
    for name in names:
        params = {"iterations": ITERATIONS} if name not in ("fgsm", "fgm") else {}
        runs = {m: (lambda m=m, n=name, p=params: attacks.run(model, x, n, sample_ids=ids, precision=m, **p))
                for m in modes}
        for fn in runs.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {m: [] for m in modes}
        counts = {}
        for _ in range(repeats):  # interleaved, so that load drifts hit every precision alike
            for m, fn in runs.items():
                dt, res = _timed(fn, device)
                times[m].append(dt)
                counts[m] = res.label_count_final.cpu()
        base = statistics.median(times["fp32"])
        for m in attacks.registry.PRECISIONS:
            row = {"bench": "precision", "model": model_name, "attack": name, "precision": m, "batch": x.shape[0],
                   "iterations": params.get("iterations", 1), "repeats": repeats}
            if m in skipped:
                row["skipped"] = skipped[m]
            else:
                med = statistics.median(times[m])
                diff = (counts[m] - counts["fp32"]).abs().float()
                row.update(seconds_median=med, fp32_over_this=base / med,
                           label_count_agreement=float((diff == 0).float().mean()),
                           mean_abs_label_count_diff=float(diff.mean()))
            rows.append(row)
        log(f"  {model_name}/{name}: precisions timed")
    return rows


EARLY = (("bim", "paper"), ("pgd", "paper"), ("mifgsm", "paper"), ("slide", "paper"), ("bim", "released"),
         ("pgd", "released"), ("slide", "released"))


def early_exit_demo(model: nn.Module, x: torch.Tensor, *, device: str, batch: int = 32,
                    names=EARLY, log=print) -> list[dict]:
    """Fixed 40 iterations vs early exit over a whole sample set: time and top-level success.

    Top level = every label shown (the last expLabels rung). Early exit reports the iterate at which a
    sample reached it, so its final-iterate success equals the fixed run's best-iterate success.
    """
    rows = []
    ids = list(range(x.shape[0]))
    for name, preset in names:
        res = {}
        for mode in ("fixed", "early"):
            t = time.perf_counter()
            top_final, top_best = [], []
            for s in range(0, x.shape[0], batch):
                r = attacks.run(model, x[s : s + batch], name, preset, sample_ids=ids[s : s + batch],
                                early_exit=mode == "early", iterations=ITERATIONS)
                top_final.append(r.success.cpu())
                top_best.append(r.success_best.cpu())
            _sync(device)
            res[mode] = (time.perf_counter() - t, torch.cat(top_final).float().mean().item(),
                         torch.cat(top_best).float().mean().item())
        rows.append({"bench": "early-exit", "attack": name, "preset": preset, "samples": x.shape[0],
                     "seconds_fixed": res["fixed"][0], "seconds_early_exit": res["early"][0],
                     "speedup": res["fixed"][0] / res["early"][0],
                     "top_success_fixed_final": res["fixed"][1], "top_success_fixed_best": res["fixed"][2],
                     "top_success_early_exit": res["early"][1]})
        log(f"  early exit {name} ({preset}): {rows[-1]['speedup']:.2f}x")
    return rows


def format_table(rows: list[dict]) -> str:
    out: list[str] = []
    pr = [r for r in rows if r.get("bench") == "precision"]
    if pr:
        out += markdown_table(
            ["model", "attack", "precision", "median s", "speed-up vs fp32", "same final label count as fp32"],
            map(_precision_cells, pr))
    ee = [r for r in rows if r.get("bench") == "early-exit"]
    if ee:
        out += [""] * bool(out) + markdown_table(
            ["attack (demo set)", "samples", "fixed s", "early-exit s", "speed-up",
             "top success fixed (final / best)", "top success early exit"],
            ([f"{r['attack']} ({r['preset']}, 40 it.)", r["samples"], f"{r['seconds_fixed']:.2f}",
              f"{r['seconds_early_exit']:.2f}", f"{r['speedup']:.2f}x",
              f"{r['top_success_fixed_final']:.3f} / {r['top_success_fixed_best']:.3f}",
              f"{r['top_success_early_exit']:.3f}"] for r in ee))
    return "\n".join(out)


def _precision_cells(r: dict) -> list:
    if "skipped" in r:
        return [r["model"], r["attack"], r["precision"], f"skipped: {r['skipped']}", "", ""]
    return [r["model"], r["attack"], r["precision"], f"{r['seconds_median']:.3f}", f"{r['fp32_over_this']:.2f}x",
            f"{100 * r['label_count_agreement']:.0f}% of samples (mean abs diff {r['mean_abs_label_count_diff']:.2f})"]
