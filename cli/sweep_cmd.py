"""`sml sweep`: models x attacks x presets x targets over Ray actors into one Zarr store.

Parsing only; the work is engine.runtime.sweep.run_sweep / sweep_status.
"""

from __future__ import annotations

import argparse
import json

from cli.main import command
from engine.errors import UserError


@command("sweep", "run a sweep file (models x attacks x presets x targets) over Ray actors into one store")
def _sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", nargs="?", metavar="SWEEP.toml", help="sweep file (see sweeps/paper.toml)")
    p.add_argument("--out", help="Zarr store (created, or resumed if it holds the same sweep)")
    p.add_argument("--status", metavar="STORE", help="print the progress of the sweep in STORE as JSON and exit")
    p.add_argument("--address", help="join a running Ray cluster: auto | HOST:PORT (default: start Ray here)")
    p.add_argument("--workers", type=int, help="actors (default: one per GPU, or one per CPU without GPUs)")
    p.add_argument("--local", action="store_true", help="run in this process without Ray (debugging)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_sweep)


def _run_sweep(a: argparse.Namespace) -> None:
    from engine.runtime.sweep import run_sweep, sweep_status

    if a.status:
        if a.sweep or a.out:
            raise UserError("--status STORE takes no sweep file and no --out")
        print(json.dumps(sweep_status(a.status), indent=1))
        return
    if not a.sweep or not a.out:
        raise UserError("usage: sml sweep SWEEP.toml --out STORE.zarr [--address auto|HOST:PORT] [--workers K] "
                        "[--local], or sml sweep --status STORE.zarr")
    if a.local and a.address:
        raise UserError("--local runs without Ray; it cannot be combined with --address")
    res = run_sweep(a.sweep, a.out, address=a.address, workers=a.workers, local=a.local,
                    progress=not a.no_progress)
    if a.json:
        print(json.dumps(res, indent=1, default=str))
        return
    actors = ", ".join(f"{k} x{v}" for k, v in res["actors"].items())
    print(f"{res['store']}: sweep {res['sweep']!r}, {res['shards_done']}/{res['shards_total']} shards done "
          f"({res['shards_run']} run now, {res['shards_done_before']} before) on {actors}; {res['samples_run']} "
          f"samples in {res['seconds']:.1f} s ({res['samples_per_s']:.1f}/s). Tables: sml report {res['store']} "
          f"--out reports/")
