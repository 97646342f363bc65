"""`make bench` / `python -m bench [--device cuda] [--quick]`: throughput figures, side by side.

Sections: gradient attacks vs the model's floor and the peers (bench_attacks), the precisions
(fp32 / tf32 / bf16: speed and agreement with fp32), early exit on the demo set, the MLA-LP solver
vs the primal LP (bench_lp), sweeps (bench_sweep, when present), and the device profile. On request
(``--only tresnet``, minutes on a CPU): the gradient attacks' floor ratios on an ASL TResNet-M at
224 px, and profile entries of TResNet-M at 224 and TResNet-L at 448 (the authors' COCO size), so
that ``--plan`` prices the study's grid on an ASL model.
Every run writes bench/results/<date>-<host>.json and bench/results/latest.json (a list of rows);
the profile section writes bench/results/profile-<device>-<host>.json, which
``sml sweep FILE --plan --device-profile`` reads.
Compiled artifacts are cached in bench/cache (TORCHINDUCTOR_CACHE_DIR), so a second run skips most
of the compile time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(HERE / "cache" / "inductor"))


def _demo_models(device: str, log):
    """The demo ML-GCN (tiny backbone, 32 px) from `make run` if present, else trained here (~1 min)."""
    from engine.config import DemoDataConfig, ModelConfig, TrainConfig
    from engine.data import demo
    from engine.models import load
    from engine.models.train import train

    root = Path("runs/demo")
    ck = root / "ckpt" / "mlgcn.pt"
    data_root = root / "data"
    if not ck.exists():
        data_root = HERE / "cache" / "demo-data"
        ck = HERE / "cache" / "mlgcn-demo.pt"
        demo.generate(data_root, DemoDataConfig())
        if not ck.exists():
            log("training the demo ML-GCN for the bench (runs/demo has none) ...")
            train(model_cfg=ModelConfig(family="mlgcn"), train_cfg=TrainConfig(), dataset="demo", root=data_root,
                  out=ck, progress=False)
    return load(ck).to(device), data_root


def _resnet18_mlgcn(device: str):
    """ResNet-18 at 64 px with an ML-GCN head (random weights: timing and agreement only)."""
    import torch

    from engine.config import ModelConfig
    from engine.models import build

    torch.manual_seed(0)
    m = build(ModelConfig(family="mlgcn", backbone="resnet18", input_size=64), 20)
    return m.eval().to(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (<= 5 minutes on 2 cores)")
    ap.add_argument("--only", help="comma-separated sections: attacks, precision, early, lp, sweep, profile; "
                                   "tresnet (not in the default set: an ASL TResNet-M at 224 px)")
    ap.add_argument("--attacks", help="comma-separated gradient attacks for the attacks and precision sections "
                                      "(default: all six)")
    a = ap.parse_args(argv)
    import torch

    from bench import bench_attacks
    from engine import data, protocol

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    sections = set((a.only or "attacks,precision,early,lp,sweep,profile").split(","))
    chosen = tuple(a.attacks.split(",")) if a.attacks else bench_attacks.ATTACKS
    repeats = 2 if a.quick else 5
    rows: list[dict] = []
    t_start = time.perf_counter()
    demo_model, demo_root = _demo_models(a.device, log)
    ds = data.load("demo", root=demo_root)
    cand = protocol.correctly_predicted(demo_model, ds)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)

    def section(name, fn):
        """Run one section; a failure is recorded as a row and the others still run."""
        if name not in sections:
            return
        t = time.perf_counter()
        try:
            rows.extend(fn())
        except Exception as e:  # noqa: BLE001 - a broken section must not lose the others' figures
            log(f"section {name} failed: {type(e).__name__}: {e}")
            rows.append({"bench": "error", "section": name, "error": f"{type(e).__name__}: {e}"})
        log(f"section {name}: {time.perf_counter() - t:.0f} s")
        (out_dir / "partial.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")

    def attacks_section():
        x32, _ = data.stack(ds, cand[:32].tolist())
        log("gradient attacks: demo ML-GCN (tiny, 32 px), batch 32")
        out = bench_attacks.bench_model(demo_model, x32.to(a.device), "demo-mlgcn-tiny-32px", repeats=repeats,
                                        device=a.device, log=log, names=chosen)
        ds64 = data.load("demo", root=demo_root, size=64)
        x64, _ = data.stack(ds64, cand[:32].tolist())
        log("gradient attacks: ResNet-18 + ML-GCN head at 64 px, batch 32")
        names = tuple(n for n in chosen if n == "pgd" or not a.quick) or chosen
        out += bench_attacks.bench_model(_resnet18_mlgcn(a.device), x64.to(a.device), "resnet18-mlgcn-64px",
                                         repeats=1 if a.quick else repeats, device=a.device, log=log, names=names)
        return out

    def precision_section():
        x32, _ = data.stack(ds, cand[:32].tolist())
        log("precisions: demo ML-GCN (tiny, 32 px), batch 32")
        out = bench_attacks.precision_rows(demo_model, x32.to(a.device), "demo-mlgcn-tiny-32px", repeats=repeats,
                                           device=a.device, names=chosen, log=log)
        x64, _ = data.stack(data.load("demo", root=demo_root, size=64), cand[:32].tolist())
        log("precisions: ResNet-18 + ML-GCN head at 64 px, batch 32")
        names = tuple(n for n in chosen if n in ("fgsm", "pgd")) if a.quick else chosen
        out += bench_attacks.precision_rows(_resnet18_mlgcn(a.device), x64.to(a.device), "resnet18-mlgcn-64px",
                                            repeats=1 if a.quick else repeats, device=a.device, names=names or chosen,
                                            log=log)
        return out

    def profile_section():
        """fwd+bwd and fwd seconds per image of the bench's models, batch 32, for `sml sweep --plan`."""
        from engine.runtime.sweep import plan

        entries = []
        for (backbone, size), model in (("tiny", 32), demo_model), (("resnet18", 64), _resnet18_mlgcn(a.device)):
            t = plan.measure(model, (3, size, size), 32, a.device)
            entries.append(plan.profile_entry(backbone, "mlgcn", size, t))
            log(f"  profile {backbone}@{size}: {t.fwd_bwd * 1e3:.3f} ms fwd+bwd, {t.fwd * 1e3:.3f} ms fwd per image")
        name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"{a.device} ({socket.gethostname()})"
        path = out_dir / f"profile-{a.device.replace(':', '')}-{socket.gethostname()}.json"
        plan.write_profile(path, a.device, name, entries)
        log(f"  wrote {path}")
        return [{"bench": "profile", "path": str(path), **e} for e in entries]

    def tresnet_section():
        """Floor ratios on TResNet-M at 224 px (random weights: timing only), batch 4, and profile
        entries (family "asl", as engine.models.sources names an ASL model) of it and of TResNet-L at 448."""
        from engine.models import zoo
        from engine.runtime.sweep import plan

        x, _ = data.stack(data.load("demo", root=demo_root, size=224), cand[:4].tolist())
        torch.manual_seed(0)
        net = zoo.create("tresnet_m", ds.num_labels).eval().to(a.device)
        log("gradient attacks: ASL TResNet-M at 224 px, batch 4")
        names = tuple(n for n in chosen if n == "pgd") if a.quick else chosen
        out = bench_attacks.bench_model(net, x.to(a.device), "asl-tresnet_m-224px", repeats=1 if a.quick else 3,
                                        device=a.device, log=log, names=names or chosen)
        entries = []
        for arch, size in (("tresnet_m", 224), ("tresnet_l", 448)):
            model = net if arch == "tresnet_m" else zoo.create(arch, ds.num_labels).eval().to(a.device)
            t = plan.measure(model, (3, size, size), 2, a.device, min_seconds=0.1, min_repeats=2)
            entries.append(plan.profile_entry(arch, "asl", size, t))
            log(f"  profile {arch}@{size}: {t.fwd_bwd:.3f} s fwd+bwd, {t.fwd:.3f} s fwd per image")
        path = out_dir / f"profile-{a.device.replace(':', '')}-{socket.gethostname()}-tresnet.json"
        name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"{a.device} ({socket.gethostname()})"
        plan.write_profile(path, a.device, name, entries)
        log(f"  wrote {path}")
        return out + [{"bench": "profile", "path": str(path), **e} for e in entries]

    def early_section():
        n = 128 if a.quick else len(cand)
        xs, _ = data.stack(ds, cand[:n].tolist())
        log(f"early exit on {n} demo samples")
        return bench_attacks.early_exit_demo(demo_model, xs.to(a.device), device=a.device, log=log)

    def lp_section():
        from bench import bench_lp

        log("MLA-LP linear programs")
        return bench_lp.run(a.quick)

    def sweep_section():
        from bench import bench_sweep

        log("sweeps")
        return bench_sweep.run(a.quick)

    section("attacks", attacks_section)
    section("precision", precision_section)
    section("early", early_section)
    section("lp", lp_section)
    section("sweep", sweep_section)
    section("profile", profile_section)
    section("tresnet", tresnet_section)
    meta = {"bench": "meta", "host": socket.gethostname(), "device": a.device, "quick": a.quick,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
            "date": dt.datetime.now().isoformat(timespec="seconds"), "seconds": time.perf_counter() - t_start}
    rows.append(meta)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    for path in (out_dir / f"{stamp}-{meta['host']}.json", out_dir / "latest.json"):
        path.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(format_tables(rows))
    print(f"\nwrote {out_dir / 'latest.json'} ({meta['seconds']:.0f} s)")
    return 0


def format_tables(rows: list[dict]) -> str:
    from bench import bench_attacks

    out = [bench_attacks.format_table(rows)]
    try:
        from bench import bench_lp

        lp = [r for r in rows if r.get("bench") == "mlalp-lp"]
        if lp:
            out.append(bench_lp.format_table(lp))
    except ImportError:
        pass
    try:
        from bench import bench_sweep

        sw = [r for r in rows if r.get("bench") == "sweep"]
        if sw and hasattr(bench_sweep, "format_table"):
            out.append(bench_sweep.format_table(sw))
    except ImportError:
        pass
    return "\n\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
