"""Benchmark of the MLA-LP step  min ||r||_inf s.t. A r <= b:  engine.lp vs the direct primal LP.

    python bench/bench_lp.py            # full: primal HiGHS tried at every size (120 s limit each)
    python bench/bench_lp.py --quick    # primal only at d = 3x64x64, l = 20
    python bench/bench_lp.py --json bench/results/lp.json

A is gradient-like (float32): each label's gradient is a shared image-level component plus a label-specific
part, both spatially smooth fields plus pixel noise, modulated by a heavy-tailed per-pixel saliency with ~5%
exactly-zero pixels, and one duplicated label.  b are loss gaps of both signs sized so that t* ~ 1e-3; the
system has full row rank apart from the duplicate, so it is feasible.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np

from engine.lp import solve_linf_lp, solve_linf_lp_primal

SIZES = [(3, 64, 64), (3, 224, 224), (3, 448, 448)]
LABELS = [20, 80]
PRIMAL_LIMIT = 120.0


def _smooth(rng: np.random.Generator, shape: tuple[int, int, int], cell: int) -> np.ndarray:
    c, h, w = shape
    lo = rng.standard_normal((c, -(-h // cell), -(-w // cell)))
    return np.kron(lo, np.ones((1, cell, cell)))[:, :h, :w]


def gradient_problem(l: int, chw: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c, h, w = chw
    sal = np.exp(0.8 * rng.standard_normal((1, h, w))) * (rng.random((1, h, w)) > 0.05)
    common = (_smooth(rng, chw, 8) + 0.5 * rng.standard_normal(chw)) * sal
    weight = 1.0 + 0.3 * rng.standard_normal(l)
    A = np.empty((l, c * h * w), dtype=np.float32)
    for k in range(l):
        spec = (_smooth(rng, chw, 4) + rng.standard_normal(chw)) * sal
        A[k] = (weight[k] * common + 0.7 * spec).ravel()
    A[l - 1] = A[0]  # co-occurring labels share a gradient
    scale = float(np.abs(A).sum(axis=1).mean()) * 1e-3
    b = scale * (rng.standard_normal(l) + 0.3)
    b[l - 1] = abs(b[0]) + 0.1 * scale
    return A, b


def _time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(quick: bool) -> list[dict]:
    rows = []
    for chw in SIZES:
        d = math.prod(chw)
        for l in LABELS:
            A, b = gradient_problem(l, chw, seed=l)
            info: dict = {}
            solve_linf_lp(A, b)  # warm-up: first-touch page faults, imports
            repeats = 3 if quick else 5
            sec, (r, obj, status) = _time(lambda A=A, b=b, info=info: solve_linf_lp(A, b, info=info), repeats)
            viol = float(np.max(A.astype(np.float64) @ r - b)) if status == "optimal" else math.nan
            rows.append({"bench": "mlalp-lp", "d": d, "l": l, "provider": "ours", "seconds_median": sec,
                         "repeats": repeats, "objective": obj, "status": status, "rounds": info["rounds"],
                         "levels": info["levels"], "lp_seconds": info["lp_seconds"], "passes": info["passes"],
                         "max_violation": viol})
            if quick and (chw != SIZES[0] or l != LABELS[0]):
                continue  # quick: the primal reference only at its cheapest size (~10 s, not ~2 min)
            t0 = time.perf_counter()
            _, pobj, pstatus = solve_linf_lp_primal(A, b, time_limit=PRIMAL_LIMIT)
            rows.append({"bench": "mlalp-lp", "d": d, "l": l, "provider": "primal-highs",
                         "seconds_median": time.perf_counter() - t0, "repeats": 1, "objective": pobj,
                         "status": pstatus, "rounds": None})
    return rows


def format_table(rows: list[dict]) -> str:
    ours = {(r["d"], r["l"]): r for r in rows if r["provider"] == "ours"}
    prim = {(r["d"], r["l"]): r for r in rows if r["provider"] == "primal-highs"}
    head = (f"{'d':>9} {'l':>3} | {'ours s/LP':>9} {'rounds':>6} {'levels':>6} {'objective':>12} "
            f"{'status':>8} | {'primal s/LP':>11} {'status':>10} {'rel.diff':>8} | {'speed-up':>8}")
    lines = [head, "-" * len(head)]
    for key, o in ours.items():
        p = prim.get(key)
        if p is None:
            ps, pst, diff, sp = "not run", "", "", ""
        elif p["status"] == "time-limit":
            ps, pst, diff = f"> {PRIMAL_LIMIT:.0f} s", "time-limit", ""
            sp = f"> {PRIMAL_LIMIT / o['seconds_median']:.0f}x"
        else:
            ps, pst = f"{p['seconds_median']:.2f}", p["status"]
            diff = f"{abs(o['objective'] / p['objective'] - 1):.1e}" if p["status"] == "optimal" else ""
            sp = f"{p['seconds_median'] / o['seconds_median']:.0f}x"
        lines.append(f"{key[0]:>9} {key[1]:>3} | {o['seconds_median']:>9.3f} {o['rounds']:>6} "
                     f"{o['levels']:>6} {o['objective']:>12.6g} {o['status']:>8} | {ps:>11} {pst:>10} "
                     f"{diff:>8} | {sp:>8}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="primal reference only at d = 3x64x64")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    rows = run(args.quick)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
