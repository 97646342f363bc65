"""`make gpu-check`: everything a first, short lease of a GPU machine should prove, in one command.

    python3 -m bench.gpu_check [--budget 330] [--json PATH]   # on the GPU machine, from the repo root
    python3 -m bench.gpu_check --download-wheels               # `make gpu-wheels`, here

The GPU machine is bare and offline (Python 3.12, torch, triton, numpy ... but no zarr, numcodecs,
highspy, Ray), so this needs no `make setup`: it runs with whatever `python3` is on the PATH, puts
the repository on the path, and installs the wheels that `make gpu-wheels` left in bench/wheels
(carried there with the working tree) into bench/cache/site-<python> with
`pip --no-index --target`. Ray is never imported: the sweep runs with --local.

Sections (--only picks some), in order of value, each started only while the time budget
(--budget seconds since the start) still covers its estimate, so the whole check ends within about
six minutes; what the budget skipped is listed and a second lease can run it with --only:

- kernels: every Triton kernel against kernels.reference, compiled natively, on odd shapes, tied
  gradients and a batch of 8 x 3x448x448; their speed against a device-to-device copy.
- large: attacks on ResNet-101 @ 448 px (ML-GCN head, the batch the engine chooses, 20
  iterations): ours / floor per attack, eager, and compiled (torch.compile's default mode) for PGD;
  its compile time; peak memory.
- small: the same on ResNet-18 @ 64 px (batch 32, 40 iterations), compiled for PGD and SLIDE.
- sweep: a tiny `sml sweep --local` on the GPU (demo data, a briefly trained tiny model, five
  attacks including MLA-LP, so the carried zarr and highspy are used).
- autotune-small, graphs-small: the compiled PGD step of ResNet-18 under
  mode="max-autotune-no-cudagraphs" and "reduce-overhead" (CUDA graphs).
- autotune-large: the same max-autotune on ResNet-101, only if three default compiles still fit.

It prints one table and writes bench/results/<date>-<gpu>.json (and --json PATH). Without CUDA it
prints one line saying so and exits 0. The exit code is 1 if a section failed or a kernel disagreed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / "bench" / "wheels"
# What the GPU machine lacks, as (distribution, module); their other needs (numpy, packaging,
# typing_extensions, pyyaml) are there.
PACKAGES = (("zarr", "zarr"), ("numcodecs", "numcodecs"), ("highspy", "highspy"), ("donfig", "donfig"),
            ("google-crc32c", "google_crc32c"))
WHEEL_PYTHON = "3.12"
# Tags that pip matches one by one (manylinux_2_N for each N a wheel may name).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
BUDGET_S = 330.0
SECTIONS = ("kernels", "large", "small", "sweep", "autotune-small", "graphs-small", "autotune-large")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # bad input: one line, exit 2 (the house rule)
        print(f"gpu-check: error: {message}", file=sys.stderr)
        sys.exit(2)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- wheels


def download_wheels(dest: Path) -> int:
    """`make gpu-wheels`: cp312 manylinux wheels of PACKAGES, pinned to the versions installed here
    (the ones the tests ran with) where they are installed."""
    from importlib import metadata

    reqs = []
    for dist, _ in PACKAGES:
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", WHEEL_PYTHON, "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    rc = subprocess.call(cmd + reqs)
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"gpu-wheels: {len(wheels)} wheels ({size:.1f} MiB) in {dest}: {', '.join(w.name for w in wheels)}")
    return rc


def ensure_packages() -> str:
    """Install the carried wheels when a needed module is missing; put them and the repo on the path
    of this process and of the processes it starts."""
    paths = [str(REPO)]
    missing = [mod for _, mod in PACKAGES if importlib.util.find_spec(mod) is None]
    note = "all present"
    if missing:
        wheels = sorted(WHEELS.glob("*.whl"))
        if not wheels:
            note = f"missing {', '.join(missing)} and no wheels in {WHEELS} (run `make gpu-wheels` and carry it)"
        else:
            site = REPO / "bench" / "cache" / f"site-py{sys.version_info.major}{sys.version_info.minor}"
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                   "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", str(site),
                                   *map(str, wheels)])
            paths.insert(0, str(site))
            note = f"installed {len(wheels)} wheels into {site}"
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    importlib.invalidate_caches()
    return note


# ---------------------------------------------------------------- measurements


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def kernel_rows(device: str, tiny: bool) -> list[dict]:
    from bench import bench_kernels as BK

    # The smoke run on CPU interprets the kernels, one program at a time: small shapes only.
    shapes, large = (((2, 7), (2, 3, 9, 11)), None) if tiny else (BK.ODD_SHAPES, (8, 3, 448, 448))
    rows = []
    for r in BK.agreement(device, shapes, large=large):
        rows.append({"check": "kernel vs reference", "item": r["kernel"], "model": "x".join(map(str, r["shape"])) +
                     (" ties" if r["ties"] else ""), "agreement": f"max |diff| {r['max_abs_diff']:.1e}",
                     "ok": r["ok"], "raw": r})
    if device.startswith("cuda"):
        for r in BK.speed(device, shape=large, reps=20):
            if r["bench"] == "kernel-speed":
                note = f"{r['ms']:.3f} ms, {r['gb_per_s']:.0f} GB/s"
                if "of_copy_bandwidth" in r:
                    note += f" = {r['of_copy_bandwidth']:.2f} x copy; reference {r['reference_ms']:.3f} ms"
            else:
                note = (f"k-th largest, sparsity {r['sparsity']}: search {r['search_ms']:.3f} ms, "
                        f"topk {r['topk_ms']:.3f} ms")
            rows.append({"check": "kernel speed", "item": r.get("kernel", "slide-selection"),
                         "model": "x".join(map(str, r["shape"])), "note": note, "raw": r})
    return rows


def floor_seconds(model, x, *, iterations: int, repeats: int, device: str) -> float:
    """The floor: `iterations` forward + backward passes to the input of the same model and batch
    (bench.bench_attacks.floor_run), median of `repeats`."""
    import torch

    from bench.bench_attacks import floor_run
    from bench.timing import timed as _timed
    from engine import attacks

    model = attacks.attack_mode(model).__enter__()
    with torch.no_grad():
        y_star = torch.ones(x.shape[0], model(x[:1]).shape[1], device=device)
    floor_run(model, x, y_star, 1)()  # warm-up
    return statistics.median(_timed(floor_run(model, x, y_star, iterations), device)[0] for _ in range(repeats))


def attack_rows(model, x, model_name: str, names, compiled, *, iterations: int, repeats: int, device: str,
                floor: float) -> list[dict]:
    """ours / floor per attack, eager and (for `compiled`) torch.compile'd, with the first compiled
    call's extra time (the compile) and the peak memory of each; `floor` is for `iterations`."""
    from bench.timing import timed as _timed
    from engine import attacks

    ids = list(range(x.shape[0]))
    rows = []
    for name in names:
        cfg = attacks.make_config(name, "paper", **({} if name in ("fgsm", "fgm") else {"iterations": iterations}))
        n_iter = int(getattr(cfg, "iterations", 1))
        fl = floor * n_iter / iterations
        row = {"check": "attack", "model": model_name, "item": name, "batch": x.shape[0], "iterations": n_iter,
               "floor_s": fl}

        def run(comp, name=name, cfg=cfg):
            return attacks.run(model, x, name, sample_ids=ids, config=cfg, compile=comp)

        run(False)  # warm-up: kernels compiled, allocator primed
        _peak_reset(device)
        eager = statistics.median(_timed(lambda: run(False), device)[0] for _ in range(repeats))
        row.update(eager_s=eager, eager_floor=eager / fl)
        if name in compiled:
            first, _ = _timed(lambda: run(True), device)
            comp = statistics.median(_timed(lambda: run(True), device)[0] for _ in range(repeats))
            row.update(compiled_s=comp, compiled_floor=comp / fl, compile_s=first - comp, mode="default")
        row["peak_gib"] = _peak_gib(device)  # of eager and compiled runs together
        rows.append(row)
        _log(f"  {model_name}/{name}: eager {row['eager_floor']:.2f} x floor"
             + (f", compiled {row['compiled_floor']:.2f} x ({row['compile_s']:.0f} s compile)"
                if "compiled_floor" in row else ""))
    return rows


@contextmanager
def compile_mode(mode: str):
    """Compile the engine's step (engine.attacks.driver.compiled_advance, which calls
    torch.compile(fullgraph=True) itself) as torch.compile(mode=...) would: the same inductor
    options, set around the first call, with every earlier compiled step dropped."""
    import torch
    from torch._inductor import config as inductor_config
    from torch._inductor import list_mode_options

    from engine.attacks import driver

    driver._COMPILED.clear()
    torch._dynamo.reset()
    try:
        # No FX-graph cache: the compile time reported must be a compile, not a cache hit.
        with inductor_config.patch({**list_mode_options(mode), "fx_graph_cache": False}):
            yield
    finally:
        driver._COMPILED.clear()
        torch._dynamo.reset()


def mode_row(model, x, model_name: str, mode: str, *, iterations: int, repeats: int, device: str,
             floor_s: float) -> dict:
    from bench.timing import timed as _timed
    from engine import attacks

    ids = list(range(x.shape[0]))
    cfg = attacks.make_config("pgd", "paper", iterations=iterations)
    with compile_mode(mode):
        _peak_reset(device)
        first, _ = _timed(lambda: attacks.run(model, x, "pgd", sample_ids=ids, config=cfg, compile=True), device)
        comp = statistics.median(
            _timed(lambda: attacks.run(model, x, "pgd", sample_ids=ids, config=cfg, compile=True), device)[0]
            for _ in range(repeats))
        peak = _peak_gib(device)
    _log(f"  {model_name}/pgd {mode}: {comp / floor_s:.2f} x floor ({first - comp:.0f} s compile)")
    return {"check": "compiled step", "model": model_name, "item": "pgd", "mode": mode, "batch": x.shape[0],
            "iterations": iterations, "floor_s": floor_s, "compiled_s": comp, "compiled_floor": comp / floor_s,
            "compile_s": first - comp, "peak_gib": peak}


def _images(n: int, size: int, device: str):
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=gen).to(device)


def _model(backbone: str, size: int, labels: int, device: str):
    import torch

    from engine.config import ModelConfig
    from engine.models import build

    torch.manual_seed(0)  # random weights: timing only
    return build(ModelConfig(family="mlgcn", backbone=backbone, input_size=size), labels).eval().to(device)


SWEEP_ATTACKS = ('name = "fgsm"', 'name = "pgd"\nparams = { iterations = 10 }', 'name = "slide"\nparams = '
                 '{ iterations = 10 }', 'name = "mlcw"\npreset = "demo"', 'name = "mlalp"\nn = 8')


def sweep_rows(device: str, folder: Path, timeout: float) -> list[dict]:
    """A tiny sweep through the CLI (`python -m cli.main sweep ... --local`) on `device`."""
    from engine.config import DemoDataConfig, ModelConfig, TrainConfig
    from engine.data import demo
    from engine.models.train import train

    data, ck = folder / "data", folder / "mlgcn.pt"
    demo.generate(data, DemoDataConfig(n_train=600, n_test=120, size=20, labels=8, seed=3))
    t = time.perf_counter()
    train(model_cfg=ModelConfig(family="mlgcn", input_size=20), train_cfg=TrainConfig(epochs=8, lr=3e-3,
          batch_size=32), dataset="demo", root=data, out=ck, progress=False, device=device)
    train_s = time.perf_counter() - t
    lines = ["[sweep]", 'name = "gpu-check"', f'device = "{device.split(":")[0]}"', "", "[protocol]", "n = 16",
             "chunk_size = 8", "", "[[model]]", f'checkpoint = "{ck}"', 'key = "mlgcn"', 'dataset = "demo"',
             f'root = "{data}"']
    for a in SWEEP_ATTACKS:
        lines += ["", "[[attack]]", a]
    sweep = folder / "gpu-check.toml"
    sweep.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "cli.main", "sweep", str(sweep), "--out", str(folder / "store.zarr"), "--local",
           "--json", "--no-progress"]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"sml sweep --local exited {p.returncode}: {p.stderr.strip()[-1500:]}")
    res = json.loads(p.stdout[p.stdout.index("{"):])
    ok = res["shards_done"] == res["shards_total"]
    return [{"check": "sweep --local", "model": "tiny mlgcn 20px", "item": f"{len(SWEEP_ATTACKS)} attacks",
             "ok": ok, "note": f"{res['shards_done']}/{res['shards_total']} shards, {res['samples_run']} samples "
             f"in {secs:.0f} s (process included; training {train_s:.0f} s)", "raw": res}]


# ---------------------------------------------------------------- report


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    out = ["| check | model / shape | attack / kernel | eager / floor | compiled / floor | compile s | peak GiB "
           "| agreement / note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comp = _fmt(r.get("compiled_floor"), ".2f")
        if comp and r.get("mode"):
            comp += f" ({r['mode']})"
        note = r.get("agreement") or r.get("note") or r.get("error") or ""
        if r.get("ok") is False:
            note = "FAILED " + note
        out.append(f"| {r['check']} | {r.get('model', '')} | {r.get('item', '')} | {_fmt(r.get('eager_floor'), '.2f')} "
                   f"| {comp} | {_fmt(r.get('compile_s'), '.0f')} | {_fmt(r.get('peak_gib'), '.2f')} | {note} |")
    return "\n".join(out)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = _Parser(prog="python3 -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check (default 330)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--download-wheels", action="store_true", help="fetch the wheels into bench/wheels and exit")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu with --tiny: a smoke run of every section")
    ap.add_argument("--tiny", action="store_true", help="tiny models and batches (tests the check itself)")
    ap.add_argument("--only", type=lambda v: v.split(","), metavar="S1,S2",
                    help=f"run only these sections: {', '.join(SECTIONS)} (a second lease runs what the first "
                         "skipped)")
    a = ap.parse_args(argv)
    bad = sorted(set(a.only or ()) - set(SECTIONS))
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; known: {', '.join(SECTIONS)}")
    if a.download_wheels:
        return download_wheels(WHEELS)
    if a.budget <= 0:
        ap.error(f"--budget must be positive, got {a.budget}")
    if a.device.split(":")[0] not in ("cuda", "cpu") or (a.device == "cpu" and not a.tiny):
        ap.error(f"--device must be cuda (or cpu with --tiny), got {a.device!r}")
    t_start = time.perf_counter()
    # Cold caches, so that compile times are compile times on a warm machine too (set before
    # torch and triton read them).
    cache = Path(tempfile.mkdtemp(prefix="gpu-check-cache-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    try:
        return _check(a, t_start)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _check(a, t_start: float) -> int:
    try:
        import torch
    except ImportError:
        print(f"gpu-check: torch is not importable by {sys.executable}; nothing checked")
        return 0
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); nothing checked")
        return 0
    device = a.device
    if device == "cpu":  # the smoke run: the Triton launchers can only run interpreted on CPU
        os.environ["TRITON_INTERPRET"] = "1"
    left = lambda: a.budget - (time.perf_counter() - t_start)  # noqa: E731
    packages = ensure_packages()
    _log(f"gpu-check: packages: {packages}")
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu-{platform.node()}"
    rows: list[dict] = []
    state: dict = {}

    def section(name: str, estimate: float, fn) -> None:
        """Run fn if the budget still covers its estimate; a failure is a row, the rest still runs."""
        if left() < estimate:
            rows.append({"check": name, "note": f"skipped: {left():.0f} s of the budget left, needs ~{estimate:.0f}"})
            _log(f"gpu-check: {name}: skipped (budget)")
            return
        _log(f"gpu-check: {name} ({left():.0f} s left)")
        t = time.perf_counter()
        try:
            rows.extend(fn())
        except Exception as e:  # noqa: BLE001 - a broken section must not lose the others' figures
            rows.append({"check": name, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            _log(f"gpu-check: {name} failed: {type(e).__name__}: {e}")
        _log(f"gpu-check: {name}: {time.perf_counter() - t:.0f} s")

    tiny = a.tiny
    reps = 1 if tiny else 3
    attacks_all = ("fgsm", "fgm", "bim", "pgd", "mifgsm", "slide")
    # (backbone, image size, labels, batch (None: the engine's choice), iterations, attacks compiled)
    models = {"small": ("tiny", 32, 20, 4, 2, ("pgd", "slide")) if tiny else
              ("resnet18", 64, 20, 32, 40, ("pgd", "slide")),
              "large": ("tiny", 48, 80, 2, 2, ("pgd",)) if tiny else ("resnet101", 448, 80, None, 20, ("pgd",))}

    def prepare(key):
        """The model, batch and floor of one model slot, made once for its sections."""
        if key not in state:
            backbone, size, labels, batch, its, _ = models[key]
            m = _model(backbone, size, labels, device)
            if batch is None:
                from engine.runtime.batching import auto_batch

                batch = auto_batch(m, (3, size, size), num_labels=labels, jacobian=False, device=device)
            x = _images(batch, size, device)
            floor = floor_seconds(m, x, iterations=its, repeats=reps, device=device)
            state[key] = dict(model=m, x=x, name=f"{backbone}-mlgcn-{size}px", iterations=its, floor_s=floor)
        return state[key]

    def attack_section(key):
        def fn():
            s = prepare(key)
            out = attack_rows(s["model"], s["x"], s["name"], attacks_all, models[key][5], iterations=s["iterations"],
                              repeats=reps if s["x"].shape[-1] < 256 else min(reps, 2), device=device,
                              floor=s["floor_s"])
            s["compile_s"] = next(r for r in out if r["item"] == "pgd").get("compile_s")
            return out
        return fn

    def mode_section(key, mode):
        def fn():
            s = prepare(key)
            return [mode_row(s["model"], s["x"], s["name"], mode, iterations=s["iterations"], repeats=reps,
                             device=device, floor_s=s["floor_s"])]
        return fn

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        # In order of value; estimates in seconds (H100, cold caches), the smoke run's on 2 CPU cores.
        plan = [("kernels", 20 if tiny else 45, lambda: kernel_rows(device, tiny)),
                ("large", 60 if tiny else 130, attack_section("large")),
                ("small", 60 if tiny else 80, attack_section("small")),
                ("sweep", 60 if tiny else 45, lambda: sweep_rows(device, Path(tmp), timeout=max(30.0, left() - 5))),
                ("autotune-small", 60 if tiny else 90, mode_section("small", "max-autotune-no-cudagraphs"))]
        if device.startswith("cuda"):  # CUDA graphs only exist there
            plan.append(("graphs-small", 45, mode_section("small", "reduce-overhead")))
        plan.append(("autotune-large", None, mode_section("large", "max-autotune-no-cudagraphs")))
        for name, est, fn in plan:
            if a.only and name not in a.only:
                continue
            if est is None:  # max-autotune benchmarks many kernels per convolution: three default compiles
                est = 3 * (state.get("large", {}).get("compile_s") or 80)
            section(name, est, fn)

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {"check": "meta", "gpu": gpu, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "python": platform.python_version(), "host": platform.node(),
            "packages": packages, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - t_start, "budget_s": a.budget, "tiny": tiny}
    print(format_table(rows))
    print(f"\n{gpu}, torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}: "
          f"{meta['seconds']:.0f} s of a {a.budget:.0f} s budget")
    rows.append(meta)
    out_dir = REPO / "bench" / "results"
    paths = [a.json] if a.json else []
    if not tiny:  # a smoke run's figures are no results
        out_dir.mkdir(exist_ok=True)
        paths.insert(0, out_dir / f"{dt.date.today().isoformat()}-{_slug(gpu)}.json")
    for path in paths:
        path.write_text(json.dumps(rows, indent=1, default=str) + "\n")
        print(f"wrote {path}")
    failed = [r for r in rows if r.get("ok") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repository importable
        sys.path.insert(0, str(REPO))
    sys.exit(main())
