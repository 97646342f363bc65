"""Benchmark of `sml sweep`: scaling over actors, driver overhead and memory, per-attack costs.

    python bench/bench_sweep.py            # a few minutes on 2 cores
    python bench/bench_sweep.py --quick    # < 1 minute
    python bench/bench_sweep.py --json bench/results/sweep.json

Everything runs on a small demo data set and a briefly trained tiny ML-GCN / ML-LIW made in a
temporary folder. Rows (all {"bench": "sweep", "case": ...}):

* ``scaling``: samples/s of a PGD + ML-CW (demo preset) sweep with 1 actor (2 torch threads) and 2 actors (1
  thread each) on the 2 cores, over the shard phase (Ray start-up and model loading excluded) and
  end to end; target: 2 actors >= 1.7x one.
* ``overhead``: what the driver adds per shard: its own busy time per shard and the round trip
  (submit -> result, minus the actor's compute) on many tiny FGSM shards.
* ``driver_memory``: peak RSS of a driver process (a fresh subprocess joining the bench's Ray
  session) for a 200- and a 1000-sample sweep; target: ratio <= 1.2 (the driver holds no results).
* ``attack_cost``: seconds per sample of each of the nine attacks on each demo model (in-process,
  the sweep's automatic batch size), also as model passes: seconds / (one forward + backward of
  one image at that batch size). Those pass counts scale the study's grid to other models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _demo(folder: Path, quick: bool) -> tuple[Path, dict[str, Path]]:
    from engine.config import DemoDataConfig, ModelConfig, TrainConfig
    from engine.data import demo
    from engine.models.train import recipe, train

    data = folder / "data"
    # Enough test images that the model predicts >= 1000 exactly right (full mode's memory case).
    demo.generate(data, DemoDataConfig(n_train=600, n_test=500 if quick else 2400, size=16, labels=8, seed=1))
    ck = {"mlgcn": folder / "mlgcn.pt", "mlliw": folder / "mlliw.pt"}
    train(model_cfg=ModelConfig(family="mlgcn", input_size=16),
          train_cfg=TrainConfig(epochs=10 if quick else 20, lr=3e-3, batch_size=32),
          dataset="demo", root=data, out=ck["mlgcn"], progress=False)
    if quick:  # quick mode measures attack costs on ML-GCN only
        del ck["mlliw"]
        return data, ck
    train(model_cfg=ModelConfig(family="mlliw", input_size=16, backbone_weights=str(ck["mlgcn"]),
                                normalization="imagenet"),
          train_cfg=recipe("mlliw", "demo", epochs=10), dataset="demo", root=data, out=ck["mlliw"], progress=False)
    return data, ck


def _sweep_file(path: Path, ck: Path, data: Path, attacks: list[tuple[str, str]], **protocol) -> Path:
    lines = ["[sweep]", f'name = "{path.stem}"', "", "[protocol]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in protocol.items()]
    lines += ["", "[[model]]", f'checkpoint = "{ck}"', 'key = "mlgcn"', f'root = "{data}"']
    for name, extra in attacks:
        lines += ["", "[[attack]]", f'name = "{name}"', *([extra] if extra else [])]
    path.write_text("\n".join(lines) + "\n")
    return path


def _scaling(folder: Path, ck: dict, data: Path, quick: bool) -> list[dict]:
    from engine.runtime.sweep import run_sweep

    # Heavy enough that the one-off costs (actor start, model load) are small against the shards.
    n = 16 if quick else 200
    grid = _sweep_file(folder / "scaling.toml", ck["mlgcn"], data, [("pgd", ""), ("mlcw", 'preset = "demo"')],
                       n=n, chunk_size=4 if quick else 20)
    rows, base = [], None
    # 1 actor x 2 threads is the engine's setting for one actor on 2 cores; 1 x 1 shows what the
    # sharding alone gives (intra-op threads scale poorly on tiny models and on a loaded machine).
    cases = ((1, 1), (2, None)) if quick else ((1, None), (1, 1), (2, None))
    for k, t in cases:
        res = run_sweep(grid, folder / f"scaling{k}-{t}.zarr", workers=k, progress=False, threads=t)
        row = {"bench": "sweep", "case": "scaling", "actors": k, "threads_per_actor": res["threads_per_actor"]["cpu"],
               "samples": res["samples_run"], "shards": res["shards_run"],
               "samples_per_s": round(res["samples_per_s_shard_phase"], 2),
               "samples_per_s_end_to_end": round(res["samples_per_s"], 2), "seconds": round(res["seconds"], 2)}
        if base is None:
            base = row["samples_per_s"]
        row["speedup"] = round(row["samples_per_s"] / base, 3)
        row["target"] = ">= 1.7x with 2 actors" if k == 2 else None
        rows.append(row)
    one = next(r for r in rows if r["actors"] == 1 and r["threads_per_actor"] == 1)
    for r in rows:
        r["speedup_vs_1x1"] = round(r["samples_per_s"] / one["samples_per_s"], 3)
    return rows


def _overhead(folder: Path, ck: dict, data: Path, quick: bool) -> list[dict]:
    from engine.runtime.sweep import run_sweep

    n = 20 if quick else 200
    grid = _sweep_file(folder / "overhead.toml", ck["mlgcn"], data, [("fgsm", "")], n=n, chunk_size=1)
    res = run_sweep(grid, folder / "overhead.zarr", workers=2, progress=False)
    return [{"bench": "sweep", "case": "overhead", "shards": res["shards_run"],
             "driver_busy_ms_per_shard": round(1e3 * res["driver_busy_s_per_shard"], 3),
             "roundtrip_overhead_ms_per_shard": round(1e3 * res["roundtrip_overhead_s_per_shard"], 2),
             "compute_ms_per_shard": round(1e3 * res["shard_seconds"] / max(1, res["shards_run"]), 2)}]


_DRIVER = """
import json, sys
from engine.runtime.sweep import run_sweep
r = run_sweep(sys.argv[1], sys.argv[2], address=sys.argv[3], workers=1, progress=False)
print(json.dumps({k: r[k] for k in ("driver_peak_rss_mb", "samples_run", "shards_run")}))
"""


def _memory(folder: Path, ck: dict, data: Path, quick: bool, address: str) -> list[dict]:
    sizes = (20, 100) if quick else (200, 1000)
    out = []
    for n in sizes:
        grid = _sweep_file(folder / f"mem{n}.toml", ck["mlgcn"], data, [("fgsm", "")], n=n, chunk_size=10)
        p = subprocess.run([sys.executable, "-c", _DRIVER, str(grid), str(folder / f"mem{n}.zarr"), address],
                           capture_output=True, text=True, timeout=600, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        if p.returncode != 0:
            raise RuntimeError(f"driver for n={n} failed: {p.stderr[-2000:]}")
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    lo, hi = out
    return [{"bench": "sweep", "case": "driver_memory", "samples": [lo["samples_run"], hi["samples_run"]],
             "shards": [lo["shards_run"], hi["shards_run"]],
             "peak_rss_mb": [round(lo["driver_peak_rss_mb"], 1), round(hi["driver_peak_rss_mb"], 1)],
             "ratio": round(hi["driver_peak_rss_mb"] / lo["driver_peak_rss_mb"], 3), "target": "<= 1.2"}]


def _attack_costs(ck: dict, quick: bool) -> list[dict]:
    import torch

    n = 2 if quick else 16
    rows = []
    threads = torch.get_num_threads()
    # One thread: stable figures on a shared machine; the pass counts (time / one fwd+bwd at the
    # same settings) are what scales to other models and hardware.
    torch.set_num_threads(1)
    try:
        for fam, path in ck.items():
            rows += _costs_of(fam, path, n)
    finally:
        torch.set_num_threads(threads)
    return rows


def _costs_of(fam: str, path: Path, n: int) -> list[dict]:
    import torch

    from engine import attacks
    from engine.models import checkpoints, from_checkpoint
    from engine.models.evaluate import dataset_for
    from engine.runtime.batching import auto_batch

    c = checkpoints.read(path)
    ds = dataset_for(c, None, None, None, path)
    model = from_checkpoint(c)
    model.label_names = list(c["label_names"])
    model.eval()
    x = torch.stack([ds.image(i) for i in range(n)])
    attacks.run(model, x[:1], "pgd", iterations=2)  # warm-up: first-call allocations and kernels
    rows = []
    for name in attacks.names():
        preset = "demo" if name == "mlcw" else "paper"
        bs = min(n, auto_batch(model, tuple(x.shape[1:]), num_labels=ds.num_labels,
                               jacobian=name in ("mldp", "mlalp")))
        t0 = time.perf_counter()
        for s in range(0, n, bs):
            attacks.run(model, x[s:s + bs], name, preset, sample_ids=list(range(s, min(n, s + bs))))
        per = (time.perf_counter() - t0) / n
        xb = x[:bs].clone().requires_grad_(True)
        times = []
        for _ in range(7):  # the median: robust to other load on a shared machine
            t1 = time.perf_counter()
            (g,) = torch.autograd.grad(model(xb).sum(), xb)
            times.append(time.perf_counter() - t1)
        pass_s = statistics.median(times) / bs
        rows.append({"bench": "sweep", "case": "attack_cost", "model": fam, "attack": name, "preset": preset,
                     "labels": ds.num_labels, "image": list(x.shape[1:]), "batch": bs,
                     "s_per_sample": round(per, 5), "fwd_bwd_s_per_image": round(pass_s, 6),
                     "passes_per_sample": round(per / pass_s, 1)})
    return rows


def run(quick: bool = False) -> list[dict]:
    import ray

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        data, ck = _demo(folder, quick)
        setup_s = time.perf_counter() - t0
        rows += _attack_costs(ck, quick)
        timings = {"setup": setup_s, "attack_cost": time.perf_counter() - t0 - setup_s}
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            address = ray.get_runtime_context().gcs_address
            for name, fn in (("scaling", _scaling), ("overhead", _overhead), ("driver_memory", _memory)):
                t1 = time.perf_counter()
                rows += fn(folder, ck, data, quick, address) if fn is _memory else fn(folder, ck, data, quick)
                timings[name] = time.perf_counter() - t1
        finally:
            if started:
                ray.shutdown()
        load = os.getloadavg()[0]
        for r in rows:
            r.update(quick=quick, cpus=os.cpu_count(), load_avg_1m=round(load, 2))
        rows.append({"bench": "sweep", "case": "timings", "seconds": {k: round(v, 1) for k, v in timings.items()},
                     "total_s": round(time.perf_counter() - t0, 1), "quick": quick})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown: scaling, overhead and memory, then the per-attack costs."""
    from engine.util import markdown_table

    out = markdown_table(["sweep case", "figure", "target"], filter(None, map(_case_cells, rows)))
    cost = [r for r in rows if r.get("case") == "attack_cost"]
    if cost:
        out += ["", *markdown_table(
            ["model", "attack", "s / sample (1 thread)", "fwd+bwd s / image", "passes / sample"],
            ([r["model"], f"{r['attack']} ({r['preset']})", f"{r['s_per_sample']:.4f}",
              f"{r['fwd_bwd_s_per_image']:.5f}", f"{r['passes_per_sample']:.1f}"] for r in cost))]
    return "\n".join(out)


def _case_cells(r: dict) -> list | None:
    c = r.get("case")
    if c == "scaling":
        return [f"{r['actors']} actor(s) x {r['threads_per_actor']} thread(s)",
                f"{r['samples_per_s']:.2f} samples/s ({r['speedup']:.2f}x; {r['speedup_vs_1x1']:.2f}x vs 1 x 1)",
                r["target"] or ""]
    if c == "overhead":
        return [f"driver per shard ({r['shards']} shards)", f"busy {r['driver_busy_ms_per_shard']:.2f} ms, round trip "
                f"+{r['roundtrip_overhead_ms_per_shard']:.1f} ms", ""]
    if c == "driver_memory":
        return [f"driver peak RSS, {r['samples'][0]} vs {r['samples'][1]} samples",
                f"{r['peak_rss_mb'][0]:.0f} vs {r['peak_rss_mb'][1]:.0f} MB ({r['ratio']:.2f}x)", r["target"]]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the rows to this file")
    a = ap.parse_args(argv)
    rows = run(a.quick)
    print(format_table(rows))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
