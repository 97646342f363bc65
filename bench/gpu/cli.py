"""The command line of `make gpu-check` (bench/gpu_check.py): the arguments, the sections in order of value
under the time budget, and the table and JSON of the rows."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu import log
from bench.gpu.attacks import attack_rows, mode_row
from bench.gpu.kernels import kernel_rows
from bench.gpu.measure import floor_seconds, stand_in_images, stand_in_model
from bench.gpu.sweep import sweep_rows
from bench.gpu.table import format_table
from bench.gpu.wheels import WHEELS, download_wheels, ensure_packages

BUDGET_S = 330.0
SECTIONS = ("kernels", "large", "small", "sweep", "autotune-small", "graphs-small", "autotune-large")
ATTACKS = ("fgsm", "fgm", "bim", "pgd", "mifgsm", "slide")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # bad input: one line, exit 2 (the house rule)
        print(f"gpu-check: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser(description: str) -> _Parser:
    ap = _Parser(prog="python3 -m bench.gpu_check", description=description)
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check (default 330)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--download-wheels", action="store_true", help="fetch the wheels into bench/wheels and exit")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu with --tiny: a smoke run of every section")
    ap.add_argument("--tiny", action="store_true", help="tiny models and batches (tests the check itself)")
    ap.add_argument("--only", type=lambda v: v.split(","), metavar="S1,S2",
                    help=f"run only these sections: {', '.join(SECTIONS)} (a second lease runs what the first "
                         "skipped)")
    return ap


def main(argv=None, description: str = "") -> int:
    ap = _parser(description)
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
    if a.device == "cpu":  # the smoke run: the Triton launchers can only run interpreted on CPU
        os.environ["TRITON_INTERPRET"] = "1"
    packages = ensure_packages()
    log(f"gpu-check: packages: {packages}")
    run = _Run(a, t_start)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, est, fn in run.plan(Path(tmp)):
            if a.only and name not in a.only:
                continue
            if est is None:  # max-autotune benchmarks many kernels per convolution: three default compiles
                est = 3 * (run.state.get("large", {}).get("compile_s") or 80)
            run.section(name, est, fn)
    gpu = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"cpu-{platform.node()}"
    return _report(a, run.rows, gpu, packages, t_start)


class _Run:
    """The sections of one check: their plan, the model slots they share, the rows they give."""

    def __init__(self, a, t_start: float):
        self.a, self.t_start, self.device, self.tiny = a, t_start, a.device, a.tiny
        self.reps = 1 if a.tiny else 3
        self.rows: list[dict] = []
        self.state: dict = {}
        # (backbone, image size, labels, batch (None: the engine's choice), iterations, attacks compiled)
        self.models = {"small": ("tiny", 32, 20, 4, 2, ("pgd", "slide")) if a.tiny else
                       ("resnet18", 64, 20, 32, 40, ("pgd", "slide")),
                       "large": ("tiny", 48, 80, 2, 2, ("pgd",)) if a.tiny else
                       ("resnet101", 448, 80, None, 20, ("pgd",))}

    def left(self) -> float:
        return self.a.budget - (time.perf_counter() - self.t_start)

    def plan(self, tmp: Path) -> list:
        """(section, estimate in seconds or None, fn), in order of value; estimates on an H100 with cold
        caches, the smoke run's on 2 CPU cores."""
        tiny, device = self.tiny, self.device
        plan = [("kernels", 20 if tiny else 45, lambda: kernel_rows(device, tiny)),
                ("large", 60 if tiny else 130, self.attack_section("large")),
                ("small", 60 if tiny else 80, self.attack_section("small")),
                ("sweep", 60 if tiny else 45, lambda: sweep_rows(device, tmp, timeout=max(30.0, self.left() - 5))),
                ("autotune-small", 60 if tiny else 90, self.mode_section("small", "max-autotune-no-cudagraphs"))]
        if device.startswith("cuda"):  # CUDA graphs only exist there
            plan.append(("graphs-small", 45, self.mode_section("small", "reduce-overhead")))
        plan.append(("autotune-large", None, self.mode_section("large", "max-autotune-no-cudagraphs")))
        return plan

    def section(self, name: str, estimate: float, fn) -> None:
        """Run fn if the budget still covers its estimate; a failure is a row, the rest still runs."""
        left = self.left()
        if left < estimate:
            note = f"skipped: {left:.0f} s of the budget left, needs ~{estimate:.0f}"
            self.rows.append({"check": name, "note": note})
            log(f"gpu-check: {name}: skipped (budget)")
            return
        log(f"gpu-check: {name} ({left:.0f} s left)")
        t = time.perf_counter()
        try:
            self.rows.extend(fn())
        except Exception as e:  # noqa: BLE001 - a broken section must not lose the others' figures
            self.rows.append({"check": name, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            log(f"gpu-check: {name} failed: {type(e).__name__}: {e}")
        log(f"gpu-check: {name}: {time.perf_counter() - t:.0f} s")

    def prepare(self, key: str) -> dict:
        """The model, batch and floor of one model slot, made once for its sections."""
        if key not in self.state:
            backbone, size, labels, batch, its, _ = self.models[key]
            m = stand_in_model(backbone, size, labels, self.device)
            if batch is None:
                from engine.runtime.batching import auto_batch

                batch = auto_batch(m, (3, size, size), num_labels=labels, jacobian=False, device=self.device)
            x = stand_in_images(batch, size, self.device)
            floor = floor_seconds(m, x, iterations=its, repeats=self.reps, device=self.device)
            self.state[key] = dict(model=m, x=x, name=f"{backbone}-mlgcn-{size}px", iterations=its, floor_s=floor)
        return self.state[key]

    def attack_section(self, key: str):
        def fn():
            s = self.prepare(key)
            out = attack_rows(s["model"], s["x"], s["name"], ATTACKS, self.models[key][5], iterations=s["iterations"],
                              repeats=self.reps if s["x"].shape[-1] < 256 else min(self.reps, 2), device=self.device,
                              floor=s["floor_s"])
            s["compile_s"] = next(r for r in out if r["item"] == "pgd").get("compile_s")
            return out
        return fn

    def mode_section(self, key: str, mode: str):
        def fn():
            s = self.prepare(key)
            return [mode_row(s["model"], s["x"], s["name"], mode, iterations=s["iterations"], repeats=self.reps,
                             device=self.device, floor_s=s["floor_s"])]
        return fn


def _report(a, rows: list[dict], gpu: str, packages: str, t_start: float) -> int:
    """Print the table, write the rows (bench/results/<date>-<gpu>.json unless a smoke run, and --json);
    exit code 1 if a section failed or a kernel disagreed."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {"check": "meta", "gpu": gpu, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "python": platform.python_version(), "host": platform.node(),
            "packages": packages, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - t_start, "budget_s": a.budget, "tiny": a.tiny}
    print(format_table(rows))
    print(f"\n{gpu}, torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}: "
          f"{meta['seconds']:.0f} s of a {a.budget:.0f} s budget")
    if not a.tiny:  # a smoke run's figures are no results
        # Engine code only now, after ensure_packages made it importable on a bare machine.
        from bench.record import write_result

        cmd = "python3 -m bench.gpu_check" + (f" --budget {a.budget:g}" if a.budget != BUDGET_S else "")
        path = write_result("gpu-check", {"rows": rows, "table": format_table(rows), "meta": meta}, command=cmd,
                            device="cuda" if gpu != "cpu" else "cpu")
        print(f"wrote {path} (the docs' GPU page is generated from it)")
    rows.append(meta)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
        print(f"wrote {a.json}")
    failed = [r for r in rows if r.get("ok") is False]
    return 1 if failed else 0
