"""`make bench` / `python -m bench [--device cuda] [--quick] [--only S]`: throughput, kept with provenance.

Sections:
profile    `sml profile`'s machinery (engine.profile) on the demo ML-GCN: the study's nine attacks at
           the demo's settings (sweeps/demo.toml) and the peer libraries' versions of the gradient
           attacks, one row each: images/s, passes, the floor, phases, peak memory. Kept as
           bench/results/profile-<date-time>-<host>.json, which the docs' Performance page shows
           (history per row, newest first) and `sml sweep --plan --device-profile` reads.
ci         the CI's short profile (bench.ci_profile), kept as the record CI runs compare with.
precision  fp32 / tf32 / bf16: speed and agreement with fp32 (bench_attacks.precision_rows).
early      early exit over the demo set (bench_attacks.early_exit_demo).
lp         the MLA-LP solver against the primal LP (bench_lp).
sweep      sweeps (bench_sweep).
field      the field's nine attacks (TkML-AP, kFool, Rank I/II, ML-JSMA, MLAE-DE, the universal ones):
           ours against a CPU copy of each reference loop as its repository runs it, at equal
           results: speed-up, agreement, floor ratio (bench_field, bench/reference_ports.py).
The last five are kept together as bench/results/bench-<date-time>-<host>.json.
tresnet    on request only (`--only tresnet`, minutes on a CPU): the gradient attacks as profile rows
           on an ASL TResNet-M at 224 px (random weights: a pass costs the same), kept as a profile
           record, and `sml sweep --plan` device-profile entries of TResNet-M at 224 and TResNet-L
           at 448 (the authors' COCO size), bench/results/plan-tresnet-<device>-<host>.json, from
           which the plan prices the study's grid on an ASL model.
Compiled artifacts are cached in bench/cache (TORCHINDUCTOR_CACHE_DIR), so a second run skips most
of the compile time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(HERE / "cache" / "inductor"))

from bench import bench_attacks, bench_field, bench_lp, bench_sweep, ci_profile  # noqa: E402 - after the compile cache's location
from bench.record import write_result  # noqa: E402
from engine import data, protocol  # noqa: E402
from engine.config import DemoDataConfig, ModelConfig, ProfileConfig, TrainConfig  # noqa: E402
from engine.data import demo  # noqa: E402
from engine.models import load  # noqa: E402
from engine.models.train import train  # noqa: E402
from engine.profile import harness, peers, table  # noqa: E402

# The study's nine attacks as the demo runs them (sweeps/demo.toml), then the peers' versions.
DEMO_SPECS = ("fgsm", "fgm", "bim", "pgd", "slide", "mifgsm", "mldp", "mlcw.demo", "mlalp.full")
SECTIONS = ("profile", "ci", "precision", "early", "lp", "sweep", "field")
ON_REQUEST = ("tresnet",)  # not in the default set
GRADIENT = ("fgsm", "fgm", "bim", "pgd", "slide", "mifgsm")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def demo_checkpoint() -> tuple[Path, Path]:
    """The demo ML-GCN (tiny backbone, 32 px) and its data from `make run` if present, else trained
    here (~1 min)."""
    ck, root = Path("runs/demo/ckpt/mlgcn.pt"), Path("runs/demo/data")
    if ck.exists():
        return ck, root
    root, ck = HERE / "cache" / "demo-data", HERE / "cache" / "mlgcn-demo.pt"
    demo.generate(root, DemoDataConfig())
    if not ck.exists():
        _log("training the demo ML-GCN for the bench (runs/demo has none) ...")
        train(model_cfg=ModelConfig(family="mlgcn"), train_cfg=TrainConfig(), dataset="demo", root=root, out=ck,
              progress=False)
    return ck, root


def peer_specs() -> list[str]:
    return [f"{lib}:{name}" for lib, names in peers.SUPPORTED.items() for name in names
            if peers.installed(lib)]


def profile_section(a, ck: Path, root: Path) -> list[dict]:
    cfg = ProfileConfig(device=a.device, repeats=2 if a.quick else 5, memory=True)
    opts = {"checkpoint": str(ck), "dataset": "demo", "root": str(root)}
    specs = list(DEMO_SPECS) + peer_specs()
    _log(f"profile: {len(specs)} attacks on the demo ML-GCN, batch {a.batch}")
    return harness.run(specs, opts, a.batch, cfg, log=_log)


def tresnet_section(a, root: Path) -> tuple[list[dict], Path]:
    """Profile rows of the gradient attacks on an ASL TResNet-M at 224 px, batch 4, and the plan's
    entries (family "asl", as engine.models.sources names an ASL model) of it and of TResNet-L at 448."""
    import socket

    import torch

    from engine.models import zoo
    from engine.runtime.sweep import plan

    ds = data.load("demo", root=root)
    ck = HERE / "cache" / "asl-tresnet_m-random.pt"
    torch.manual_seed(0)
    net = zoo.create("tresnet_m", ds.num_labels).eval()
    if not ck.exists():  # the authors' checkpoint layout, so the `asl` source reads it as it reads theirs
        torch.save({"model": zoo.timm_to_asl(net.state_dict(), net), "num_classes": ds.num_labels,
                    "idx_to_class": dict(enumerate(ds.label_names))}, ck)
    cfg = ProfileConfig(device=a.device, repeats=1 if a.quick else 3, memory=False)
    opts = {"checkpoint": str(ck), "own_model": {"asl": "tresnet_m", "input_size": 224}, "dataset": "demo",
            "root": str(root)}
    _log("profile: the gradient attacks on an ASL TResNet-M at 224 px, batch 4")
    rows = harness.run(GRADIENT[3:4] if a.quick else GRADIENT, opts, "4", cfg, log=_log)
    entries = []
    for arch, size in (("tresnet_m", 224), ("tresnet_l", 448)):
        model = net if arch == "tresnet_m" else zoo.create(arch, ds.num_labels).eval()
        t = plan.measure(model.to(a.device), (3, size, size), 2, a.device, min_seconds=0.1, min_repeats=2)
        entries.append(plan.profile_entry(arch, "asl", size, t))
        _log(f"  plan entry {arch}@{size}: {t.fwd_bwd:.3f} s fwd+bwd, {t.fwd:.3f} s fwd per image")
    path = HERE / "results" / f"plan-tresnet-{a.device.replace(':', '')}-{socket.gethostname()}.json"
    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"{a.device} ({socket.gethostname()})"
    plan.write_profile(path, a.device, name, entries)
    return rows, path


def other_sections(a, todo: set[str], ck: Path, root: Path) -> list[dict]:
    """The precision, early-exit, LP, sweep and field sections; a failing one is recorded as a row."""
    rows: list[dict] = []
    model = load(ck).to(a.device)
    ds = data.load("demo", root=root)
    cand = protocol.correctly_predicted(model, ds)
    repeats = 2 if a.quick else 5

    def precision():
        x, _ = data.stack(ds, cand[:32].tolist())
        return bench_attacks.precision_rows(model, x.to(a.device), "demo-mlgcn-tiny-32px", repeats=repeats,
                                            device=a.device, log=_log)

    def early():
        xs, _ = data.stack(ds, cand[: 128 if a.quick else len(cand)].tolist())
        return bench_attacks.early_exit_demo(model, xs.to(a.device), device=a.device, log=_log)

    def field():
        xs, _ = data.stack(ds, cand[: 8 if a.quick else 32].tolist())
        return bench_field.run(model, xs, a.quick, device=a.device, log=_log)

    for name, fn in (("precision", precision), ("early", early), ("lp", lambda: bench_lp.run(a.quick)),
                     ("sweep", lambda: bench_sweep.run(a.quick)), ("field", field)):
        if name not in todo:
            continue
        t = time.perf_counter()
        try:
            rows.extend(fn())
        except Exception as e:  # noqa: BLE001 - a broken section must not lose the others' figures
            _log(f"section {name} failed: {type(e).__name__}: {e}")
            rows.append({"bench": "error", "section": name, "error": f"{type(e).__name__}: {e}"})
        _log(f"section {name}: {time.perf_counter() - t:.0f} s")
    return rows


def format_tables(rows: list[dict]) -> str:
    out = [bench_attacks.format_table(rows)]
    lp = [r for r in rows if r.get("bench") == "mlalp-lp"]
    if lp:
        out.append(bench_lp.format_table(lp))
    sw = [r for r in rows if r.get("bench") == "sweep"]
    if sw:
        out.append(bench_sweep.format_table(sw))
    return "\n\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    ap.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)} (default: all); "
                                   f"on request: {', '.join(ON_REQUEST)}")
    ap.add_argument("--batch", default="32", help="the profile's batch sizes (B[,B...] or auto; default 32)")
    a = ap.parse_args(argv)
    todo = set((a.only or ",".join(SECTIONS)).split(","))
    unknown = todo - set(SECTIONS) - set(ON_REQUEST)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; valid: {', '.join(SECTIONS + ON_REQUEST)}")
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    ck, root = demo_checkpoint()
    if "profile" in todo:
        rows = profile_section(a, ck, root)
        path = write_result("profile", {"rows": rows, "table": table(rows), "quick": a.quick}, command=command.strip(),
                            device=a.device, keep_each=True)
        print(table(rows), f"\nwrote {path}", sep="\n")
    if "ci" in todo and a.device == "cpu":
        rows = ci_profile.profile(log=_log)
        path = write_result("ci-profile", {"rows": rows, "table": table(rows)}, command=command.strip(),
                            keep_each=True)
        print(f"wrote {path}")
    if "tresnet" in todo:
        rows, plan_path = tresnet_section(a, root)
        path = write_result("profile", {"rows": rows, "table": table(rows), "quick": a.quick}, command=command.strip(),
                            device=a.device, keep_each=True)
        print(table(rows), f"\nwrote {path} and {plan_path}", sep="\n")
    rest = todo & {"precision", "early", "lp", "sweep", "field"}
    if rest:
        rows = other_sections(a, rest, ck, root)
        path = write_result("bench", {"rows": rows, "table": format_tables(rows), "quick": a.quick},
                            command=command.strip(), device=a.device, keep_each=True)
        field = [r for r in rows if r.get("bench") == "field"]  # the docs render these rows themselves
        print(format_tables(rows), *([bench_field.format_table(field)] if field else []), f"\nwrote {path}",
              sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
