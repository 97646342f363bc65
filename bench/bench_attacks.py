"""Gradient attacks, side by side: the model's floor, ours (eager, compiled, early exit), AdverTorch,
torchattacks.

floor          40 x (forward + backward to the input) of the same model and batch, plain torch.
ours-eager     engine.attacks.run, eager (the fused kernels of kernels.dispatch).
ours-compiled  the same with compile=True (each iteration one torch.compile graph).
ours-early-exit  eager, samples that show every label leave the batch (checked every 4 iterations).
ours-no-eval   one-step attacks: ours up to x_adv without scoring it (the clean pass, whose logits
               give the targets and whose gradient the step, then the step): the work torchattacks
               does, which returns x_adv and evaluates nothing.
advertorch     AdverTorch 0.2.3's class with the same loss (sum of clamped BCE) and parameters.
torchattacks   torchattacks 3.5.1 where it has the attack; its loss is cross-entropy, so the model is
               wrapped to output (-L, 0) with target class 0: CE = log(1 + e^L), whose gradient is
               sigma(L) grad L, the same direction per sample, so sign- and norm-based updates agree.

Providers run interleaved within each repeat (floor, then each provider, per attack) so that load
drifts hit all of them alike; the table reports medians. Agreement: the final label counts of a
peer equal ours-eager's on every sample. PGD's random start differs between libraries, so PGD is
compared from the same start: AdverTorch's perturb_iterative is given our initial delta; torchattacks
draws its own, so its PGD is timing-only.
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
from engine.attacks import losses, precision, targets
from engine.attacks.driver import clean_step, grad_and_logits, sample_noise
from engine.attacks.losses import bce
from engine.profile.peers import peer_runs
from engine.util import markdown_table

ATTACKS = ("fgsm", "fgm", "bim", "pgd", "mifgsm", "slide")
ITERATIONS = 40


def no_eval_run(model: nn.Module, x: torch.Tensor, name: str, ids: list[int]) -> Callable:
    """Ours for a one-step attack without the forward that scores x_adv (see the module docstring)."""
    spec, cfg = attacks.get(name), attacks.make_config(name, "paper")
    loss_fn = losses.get(cfg.loss, cfg.prob_clamp)

    def target_of(logits):
        return targets.build("show-many", logits >= 0, ids, 0)

    def run():
        _, _, (grad, _) = clean_step(model, x, target_of, loss_fn)
        return spec.step(x.clone(), x, grad, None, cfg)[0]

    return run


def floor_run(model: nn.Module, x: torch.Tensor, y_star: torch.Tensor, iterations: int) -> Callable:
    def run():
        for _ in range(iterations):
            grad_and_logits(model, x, y_star, lambda z, y: bce(z, y))
        return x

    return run


def bench_model(model: nn.Module, x: torch.Tensor, model_name: str, *, repeats: int, device: str,
                names=ATTACKS, log=print) -> list[dict]:
    """Rows for one model and batch."""
    model = attacks.attack_mode(model).__enter__()
    y_star = torch.ones(x.shape[0], model(x[:1]).shape[1], device=device)
    ids = list(range(x.shape[0]))
    noise = sample_noise(x, ids, 0)
    times: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], torch.Tensor] = {}
    rows = []
    plans = {}
    for name in names:
        params = {"iterations": ITERATIONS} if name not in ("fgsm", "fgm") else {}
        cfg = attacks.make_config(name, "paper", **params)
        ours = {
            "ours-eager": lambda n=name, p=params: attacks.run(model, x, n, sample_ids=ids, **p),
            "ours-compiled": lambda n=name, p=params: attacks.run(model, x, n, sample_ids=ids, compile=True, **p),
            "ours-early-exit": lambda n=name, p=params: attacks.run(model, x, n, sample_ids=ids, early_exit=True, **p),
        }
        if not hasattr(cfg, "iterations"):
            ours["ours-no-eval"] = no_eval_run(model, x, name, ids)
        peers = peer_runs(model, x, name, cfg, y_star, noise)
        plans[name] = (cfg, ours, peers)
        # Warm-up (and the compile) outside the timings; the compiled artifact is reused afterwards.
        t0 = time.perf_counter()
        ours["ours-compiled"]()
        log(f"  {model_name}/{name}: compiled in {time.perf_counter() - t0:.1f} s")
        ours["ours-eager"]()
    iters_floor = ITERATIONS
    for r in range(repeats):
        dt, _ = _timed(floor_run(model, x, y_star, iters_floor), device)
        times.setdefault(("all", "floor"), []).append(dt)
        for name in names:
            cfg, ours, peers = plans[name]
            for prov, fn in list(ours.items()) + list(peers.items()):
                dt, out = _timed(fn, device)
                times.setdefault((name, prov), []).append(dt)
                if r == 0:
                    if isinstance(out, torch.Tensor):
                        with torch.no_grad():
                            counts[(name, prov)] = (model(out) >= 0).sum(1).cpu()
                    else:
                        counts[(name, prov)] = out.label_count_final.cpu()
        log(f"  {model_name}: repeat {r + 1}/{repeats} done")
    floor = statistics.median(times[("all", "floor")])
    for name in names:
        cfg, ours, peers = plans[name]
        n_iter = getattr(cfg, "iterations", 1)
        fl = floor * n_iter / iters_floor
        rows.append({"attack": name, "model": model_name, "provider": "floor", "seconds_median": fl,
                     "repeats": repeats, "iterations": n_iter, "batch": x.shape[0]})
        eager = statistics.median(times[(name, "ours-eager")])
        for prov in list(ours) + list(peers):
            med = statistics.median(times[(name, prov)])
            row = {"attack": name, "model": model_name, "provider": prov, "seconds_median": med, "repeats": repeats,
                   "iterations": n_iter, "batch": x.shape[0], "ratio_to_floor": med / fl}
            if prov in peers:
                row["peer_over_ours"] = med / eager
                if (name, "ours-no-eval") in times:
                    row["peer_over_ours_no_eval"] = med / statistics.median(times[(name, "ours-no-eval")])
            if prov in peers or prov == "ours-no-eval":
                theirs, mine = counts[(name, prov)], counts[(name, "ours-eager")]
                row["same_label_counts_as_ours"] = bool(torch.equal(theirs, mine))
                row["label_count_agreement"] = float((theirs == mine).float().mean())
            if prov == "ours-early-exit":
                row["same_label_counts_as_ours"] = None  # a different semantics: stops at success
            rows.append(row)
    return rows


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
    mine = [r for r in rows if "provider" in r and "bench" not in r]
    out = markdown_table(["model", "attack", "provider", "median s", "/ floor", "peer / ours", "same label counts"],
                         map(_attack_cells, mine)) if mine else []
    pr = [r for r in rows if r.get("bench") == "precision"]
    if pr:
        out += [""] * bool(out) + [*markdown_table(
            ["model", "attack", "precision", "median s", "speed-up vs fp32", "same final label count as fp32"],
            map(_precision_cells, pr))]
    ee = [r for r in rows if r.get("bench") == "early-exit"]
    if ee:
        out += ["", *markdown_table(
            ["attack (demo set)", "samples", "fixed s", "early-exit s", "speed-up",
             "top success fixed (final / best)", "top success early exit"],
            ([f"{r['attack']} ({r['preset']}, 40 it.)", r["samples"], f"{r['seconds_fixed']:.2f}",
              f"{r['seconds_early_exit']:.2f}", f"{r['speedup']:.2f}x",
              f"{r['top_success_fixed_final']:.3f} / {r['top_success_fixed_best']:.3f}",
              f"{r['top_success_early_exit']:.3f}"] for r in ee))]
    return "\n".join(out)


def _attack_cells(r: dict) -> list:
    ratio = f"{r['ratio_to_floor']:.2f}" if "ratio_to_floor" in r else "1.00"
    peer = f"{r['peer_over_ours']:.2f}" if "peer_over_ours" in r else ""
    if "peer_over_ours_no_eval" in r:
        peer += f" ({r['peer_over_ours_no_eval']:.2f} vs ours-no-eval)"
    same = {True: "yes", False: "no", None: ""}[r.get("same_label_counts_as_ours")]
    if r.get("same_label_counts_as_ours") is False:
        same += f" ({100 * r['label_count_agreement']:.0f}% of samples)"
    return [r["model"], r["attack"], r["provider"], f"{r['seconds_median']:.3f}", ratio, peer, same]


def _precision_cells(r: dict) -> list:
    if "skipped" in r:
        return [r["model"], r["attack"], r["precision"], f"skipped: {r['skipped']}", "", ""]
    return [r["model"], r["attack"], r["precision"], f"{r['seconds_median']:.3f}", f"{r['fp32_over_this']:.2f}x",
            f"{100 * r['label_count_agreement']:.0f}% of samples (mean abs diff {r['mean_abs_label_count_diff']:.2f})"]
