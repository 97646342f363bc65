"""The field's nine attacks: our batched attack against the reference loop, at equal results.

For each attack, on one model and one batch: our attack (engine.attacks, the whole batch at once)
and a CPU copy of its reference loop run as its repository runs it (bench/reference_ports.py: one
sample at a time; the universal ones one sample per step of the universal pass; the released Rank I /
II code one batch with per-sample bookkeeping, as it runs), timed in the same process. A row holds
both times, speed-up = reference seconds / ours, and whether the results agree: the largest
|x_adv difference| (the universal ones: of delta) and whether the same samples succeed (their
fooling rate). Attacks that are not universal also get the floor ratio of ours: seconds per sample
over the passes it made (counted by engine.profile.hooks) times the model's own forward and forward +
backward per image at that batch (engine.runtime.sweep.plan.measure), as `sml profile` computes it.

The universal attacks are timed as fitted, one sample at a time in both: a batched pixel-space
variant (fit samples in batches) would be another fitting algorithm, which engine.attacks.universal
does not have. MLAE-DE's gain comes from batching the samples' populations into one forward, which
fills a GPU; on a CPU with few cores one large forward can cost more than many small ones (cache).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch

from bench import reference_ports as ports
from engine import attacks
from engine.attacks import targets, universal
from engine.profile.harness import _floor
from engine.profile.hooks import PassCounter
from engine.runtime.sweep.plan import measure
from engine.util import markdown_table

FIELD = ("tkmlapu", "tkmlapt", "kfool", "mlrank1", "mlrank2", "mljsma", "mlaede", "tkmlapuv", "kuap")
K = 2  # the top-k attacks' k
# (preset, parameters) per attack: short runs with the reference's semantics (--quick: shorter still).
SETTINGS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "tkmlapu": ("paper", {"k": K, "iterations": 100, "lr": 0.5}, {"iterations": 20}),
    "tkmlapt": ("paper", {"k": K, "iterations": 100, "lr": 0.5}, {"iterations": 20}),
    "kfool": ("paper", {"k": K, "iterations": 20}, {"iterations": 8}),
    "mlrank1": ("released", {"binary_steps": 3, "iterations": 60}, {"binary_steps": 2, "iterations": 20}),
    "mlrank2": ("released", {"binary_steps": 3, "iterations": 60}, {"binary_steps": 2, "iterations": 20}),
    "mljsma": ("paper", {"iterations": 8}, {"iterations": 3}),
    "mlaede": ("released", {"eps": 0.1, "pop_size": 10, "generations": 20}, {"pop_size": 8, "generations": 6}),
    "tkmlapuv": ("demo", {"k": K, "max_passes": 2, "iterations": 30}, {"max_passes": 1, "iterations": 15}),
    "kuap": ("demo", {"k": K, "max_passes": 2, "iterations": 10}, {"max_passes": 1, "iterations": 5}),
}
# How the reference runs, for the table.
HOW = {"mlrank1": "one batch, per-sample bookkeeping", "mlrank2": "one batch, per-sample bookkeeping",
       "mljsma": "per sample, per feature", "tkmlapuv": "one sample per step of the pass",
       "kuap": "one sample per step of the pass"}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _ours(fn: Callable[[], Any], quick: bool) -> tuple[float, Any]:
    """Median seconds of ours over 1 (--quick) or 3 calls after a warm-up (first-touch allocations,
    the kernels' choices), and its result; the reference, far slower, runs once."""
    fn()
    runs = [_timed(fn) for _ in range(1 if quick else 3)]
    return sorted(t for t, _ in runs)[len(runs) // 2], runs[-1][1]


def _success(model, x0, x_adv, res, target: str, k) -> torch.Tensor:
    with torch.no_grad():
        clean, z = model(x0) >= 0, model(x_adv)
    crit = targets.criterion(target, clean, k)
    return crit.reached(z, res.y_star, res.eligible) & res.eligible


# ------------------------------------------------------------------ each reference, from our result's targets
def _ref_topk(name, model, x, res, cfg):
    f, out = ports.box_model(model), res.x_adv.clone()
    for i in torch.nonzero(res.eligible).flatten().tolist():
        xb, y = x[i : i + 1] * 2 - 1, res.y_star[i : i + 1]
        if name == "tkmlapu":
            img, _ = ports.ref_untargeted(f, xb, y, cfg.k, 2 * cfg.eps, cfg.iterations, cfg.lr)
        elif name == "tkmlapt":
            img = ports.ref_targeted(f, xb, y * 2 - 1, cfg.k, 2 * cfg.eps, cfg.iterations, cfg.lr)
        else:
            img, _ = ports.ref_kfool(f, xb, y, cfg.k, cfg.iterations)
        out[i : i + 1] = x[i : i + 1] if img is None else ((img + 1) / 2).clamp(0, 1)
    return out


def _ref_rank(name, model, x, res, cfg):
    with torch.no_grad():
        y = np.where((model(x) >= 0).numpy(), 1, -1)
    y_target = np.where(res.y_star.numpy() > 0.5, 1, -1)
    y_tor, a_pos, b_neg = ports.get_target_set(y, y_target)
    prob = lambda img: torch.sigmoid(model(img))  # noqa: E731 - the code's models output probabilities
    out = ports.ref_rank(prob, x.numpy(), y_target.astype(np.float32), y_tor, a_pos, b_neg, name == "mlrank2",
                         cfg.iterations, cfg.binary_steps, cfg.lr, cfg.initial_const)
    return torch.from_numpy(out).to(x.dtype)


def _ref_jsma(name, model, x, res, cfg):
    prob = lambda t: torch.sigmoid(model(t))  # noqa: E731
    return torch.from_numpy(ports.jsma_port(prob, x.numpy(), res.y_star.numpy().astype(np.float32), cfg.theta,
                                            cfg.iterations))


def _ref_mlaede(name, model, x, res, cfg):
    ref = ports.mlaede_reference_runs(model, x, list(range(len(x))), 0, cfg)
    return torch.from_numpy(np.stack([r[0] for r in ref])).to(x.dtype)


REFERENCE = {"tkmlapu": _ref_topk, "tkmlapt": _ref_topk, "kfool": _ref_topk, "mlrank1": _ref_rank,
             "mlrank2": _ref_rank, "mljsma": _ref_jsma, "mlaede": _ref_mlaede}


def floor_ratios(model, x, fn, seconds: float, device: str, declared) -> dict[str, Any]:
    """Ours over its floor: the passes per sample one more call of ``fn`` made (as `sml profile`),
    and those the spec declares (``declared``, an upper bound: every iteration run), each times the
    model's forward and forward + backward per image at this batch."""
    with PassCounter(model) as counter:
        fn()
    passes = counter.per_sample(len(x))
    pt = measure(model, tuple(x.shape[1:]), len(x), device, min_seconds=0.05, min_repeats=2, max_repeats=5)
    spec = {"forward": declared.fwd, "forward_backward": declared.grad, "backward": declared.bwd}
    floor, spec_floor = _floor(passes, pt.fwd, pt.fwd_bwd), _floor(spec, pt.fwd, pt.fwd_bwd)
    return {"floor_ratio": seconds / len(x) / floor if floor > 0 else None, "passes": passes,
            "spec_floor_ratio": seconds / len(x) / spec_floor if spec_floor > 0 else None, "spec_passes": spec}


def attack_row(name: str, model, x: torch.Tensor, quick: bool, device: str = "cpu") -> dict[str, Any]:
    """One row: ours on ``device``, the reference on a CPU copy of ``model``, both on ``x``."""
    preset, params, shorter = SETTINGS[name]
    params = {**params, **(shorter if quick else {})}
    spec = attacks.get(name)
    cfg = attacks.make_config(name, preset, **params)
    ref_model = model if device == "cpu" else _cpu_copy(model)
    xd = x.to(device)
    row: dict[str, Any] = {"bench": "field", "attack": name, "preset": preset, "params": params, "batch": len(x),
                           "device": device, "reference": HOW.get(name, "one sample at a time")}
    if spec.universal:
        return {**row, **_universal(name, model, ref_model, x, xd, cfg, preset, params, quick)}
    ours = lambda: attacks.run(model, xd, name, config=cfg)  # noqa: E731
    s_ours, res = _ours(ours, quick)
    res = replace(res, **{f.name: getattr(res, f.name).cpu() for f in fields(res)
                          if isinstance(getattr(res, f.name), torch.Tensor)})
    s_ref, x_ref = _timed(lambda: REFERENCE[name](name, ref_model, x, res, cfg))
    target = spec.default_target
    ok_ours = _success(ref_model, x, res.x_adv.cpu(), res, target, getattr(cfg, "k", None))
    ok_ref = _success(ref_model, x, x_ref, res, target, getattr(cfg, "k", None))
    both = ok_ours & ok_ref if name == "tkmlapt" else res.eligible  # tkmlapt: the reference keeps successes only
    diff = float((res.x_adv.cpu() - x_ref)[both].abs().max()) if both.any() else 0.0
    floors = floor_ratios(model, xd, ours, s_ours, device, spec.passes(cfg, int(res.y_star.shape[1])))
    return {**row, "ours_s": s_ours, "reference_s": s_ref, "speedup": s_ref / s_ours,
            "max_abs_diff": diff, "success_ours": int(ok_ours.sum()), "success_reference": int(ok_ref.sum()),
            "same_success": bool(torch.equal(ok_ours, ok_ref)), "eligible": int(res.eligible.sum()),
            **floors}


def _universal(name, model, ref_model, x, xd, cfg, preset, params, quick) -> dict[str, Any]:
    with torch.no_grad():
        gt = (ref_model(x) >= 0).float()
    ok = (gt.sum(1) >= 1) & (gt.sum(1) <= gt.shape[1] - cfg.k)  # topk-untargeted's eligible samples
    fit_x, fit_gt = x[ok], gt[ok]
    ours = lambda: attacks.fit_universal(model, xd[ok.to(xd.device)], name, preset, **params)  # noqa: E731
    s_ours, (delta, info) = _ours(ours, quick)
    inner = ports.tkmlapu_inner_port if name == "tkmlapuv" else ports.kfool_inner_port
    kw = {"maxiter": cfg.iterations, **({"lr": cfg.lr} if name == "tkmlapuv" else {})}
    s_ref, (want, rate, passes) = _timed(lambda: ports.uap_port(
        ref_model, universal.to_space(fit_x, "tanh"), fit_gt.numpy(), cfg.k, cfg.eps, cfg.xi, cfg.max_passes, inner,
        at_clean=getattr(cfg, "at", "delta") == "clean", **kw))
    diff = float((delta.cpu() - want).abs().max())
    return {"ours_s": s_ours, "reference_s": s_ref, "speedup": s_ref / s_ours, "max_abs_diff": diff,
            "success_ours": round(info["fooling_rate_fit"] * len(fit_x)), "success_reference": round(rate * len(fit_x)),
            "same_success": abs(info["fooling_rate_fit"] - rate) < 1e-9 and info["passes"] == passes,
            "eligible": len(fit_x), "floor_ratio": None, "passes": None, "spec_floor_ratio": None,
            "spec_passes": None}


def _cpu_copy(model):
    return copy.deepcopy(model).to("cpu")


def run(model, x: torch.Tensor, quick: bool, device: str = "cpu", names=FIELD, log=print) -> list[dict[str, Any]]:
    """A row per attack (a failing one is recorded as an error row)."""
    rows = []
    for name in names:
        try:
            r = attack_row(name, model, x, quick, device)
            log(f"  field {name}: ours {r['ours_s']:.2f} s, reference {r['reference_s']:.2f} s, "
                f"{r['speedup']:.1f}x, max |diff| {r['max_abs_diff']:.1e}, same success {r['same_success']}")
        except Exception as e:  # noqa: BLE001 - one broken attack must not lose the others' rows
            r = {"bench": "field", "attack": name, "error": f"{type(e).__name__}: {e}"}
            log(f"  field {name} failed: {r['error']}")
        rows.append(r)
    return rows


HEAD = ["attack", "reference runs", "batch", "ours s", "reference s", "speed-up", "max abs diff",
        "success ours / ref.", "floor ratio (passes made / spec's)"]


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["attack"], "failed: " + r["error"], *[""] * (len(HEAD) - 2)])
            continue
        fr = "" if r["floor_ratio"] is None else f"{r['floor_ratio']:.2f} / {_num(r.get('spec_floor_ratio'))}"
        same = "" if r["same_success"] else " (differ)"
        out.append([r["attack"], r["reference"], str(r["batch"]), f"{r['ours_s']:.3f}", f"{r['reference_s']:.3f}",
                    f"{r['speedup']:.1f}x", f"{r['max_abs_diff']:.1e}",
                    f"{r['success_ours']} / {r['success_reference']} of {r['eligible']}{same}", fr])
    return out


def _num(v) -> str:
    return "?" if v is None else f"{v:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    return "\n".join(markdown_table(HEAD, table_rows(rows)))
