"""How much the demo's numbers move with the CPU: `python -m bench.reproducibility`.

The demo trains its two models on the CPU, so the weights, and every number after them, depend on
how the machine sums floats: the ISA level torch's CPU kernels dispatch on (``ATEN_CPU_CAPABILITY``
lowers it, standing in for an older CPU) and the number of threads (oneDNN splits its sums by
thread). This runs the demo pipeline (data, both trainings, Table 1, a sweep of six attacks on 400
samples, the report) once per variant in its own folder under bench/cache/reproducibility/ and writes
bench/results/reproducibility-<date>-<host>.json: per variant its environment, Table 1, the number of
exactly-right test samples, avgLabels and every success rate. The docs' getting-started page is
generated from the newest such file. A variant that repeats the reference must agree with it exactly.
About 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.record import write_result

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# (name, environment on top of this process's, what it stands for)
VARIANTS = (
    ("reference", {}, "this machine as `make run` runs it (its default ISA level, 2 threads)"),
    ("repeat", {}, "the reference again, from scratch: the same machine and settings"),
    ("one-thread", {"OMP_NUM_THREADS": "1"}, "one torch thread instead of two"),
    ("avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, "torch's AVX2 kernels instead of AVX-512 (an older CPU)"),
)
ATTACKS = (("fgsm", "paper"), ("fgm", "paper"), ("pgd", "paper"), ("mifgsm", "paper"), ("mldp", "paper"),
           ("mlcw", "demo"))
N = 400


def _sml(args: list[str], env: dict[str, str], log) -> None:
    cmd = [sys.executable, "-m", "cli.main", *args, *(["--no-progress"] if args[0] in ("train", "sweep") else [])]
    log(" ".join(args))
    res = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"sml {' '.join(args)} failed:\n{res.stderr[-2000:]}")


def _sweep_file(folder: Path) -> Path:
    lines = ["[sweep]", 'name = "reproducibility"', f'base = "{folder}"', "", "[protocol]", f"n = {N}", "seed = 0",
             "chunk_size = 100", ""]
    for fam in ("mlgcn", "mlliw"):
        lines += ["[[model]]", f'checkpoint = "{fam}.pt"', f'key = "{fam}"', 'dataset = "demo"',
                  f'root = "{folder.parent / "data"}"', ""]
    for name, preset in ATTACKS:
        lines += ["[[attack]]", f'name = "{name}"', f'preset = "{preset}"', ""]
    path = folder / "sweep.toml"
    path.write_text("\n".join(lines))
    return path


def run_variant(folder: Path, data: Path, env: dict[str, str], log) -> dict:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _sml(["train", "--model", "mlgcn", "--root", str(data), "--out", str(folder / "mlgcn.pt")], env, log)
    _sml(["train", "--model", "mlliw", "--root", str(data), "--out", str(folder / "mlliw.pt"),
          "--backbone-weights", str(folder / "mlgcn.pt"), "--normalization", "imagenet"], env, log)
    _sml(["sweep", str(_sweep_file(folder)), "--out", str(folder / "store.zarr"), "--local"], env, log)
    _sml(["report", str(folder / "store.zarr"), "--out", str(folder / "reports"), "--format", "json"], env, log)
    doc = json.loads((folder / "reports" / "tables.json").read_text())
    # avgLabels is taken over every correctly predicted test sample (up to 1000 of the demo's 1000):
    # its sample count is the number of exactly-right test samples.
    runs = [{"model": r["model_key"], "attack": r["run"], "n": r["n"], "n_available": r["avg_labels_samples"],
             "avg_labels": r["avg_labels"], "success_final": r["success_final"]} for r in doc["runs"]]
    return {"table1": doc["table1"], "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reproducibility", description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated variants (default: all)")
    a = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)

    chosen = set(a.only.split(",")) if a.only else {v[0] for v in VARIANTS}
    work = HERE / "cache" / "reproducibility"
    data = work / "data"
    _sml(["data", "demo", "--out", str(data)], {}, log)
    out = []
    for name, env, what in VARIANTS:
        if name in chosen:
            log(f"variant {name}: {what}")
            out.append({"name": name, "env": env, "what": what, **run_variant(work / name, data, env, log)})
    path = write_result("reproducibility", {"variants": out, "attacks": [list(x) for x in ATTACKS], "n": N},
                        command="python -m bench.reproducibility" + (f" --only {a.only}" if a.only else ""))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
