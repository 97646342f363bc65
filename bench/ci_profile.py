"""The CI's throughput check: a profile of under a minute (a few attacks on a small fixed network at
32 px, random weights: the passes cost what they cost whatever the weights), compared with the
newest committed record of the same CPU model in bench/results/ (kind ``ci-profile``).

    python -m bench.ci_profile            # profile, compare, report; exit 0 whatever it finds
    python -m bench.ci_profile --record   # profile and keep the result as the record to compare with

Shared CI machines are noisy, so the comparison reports (``sml profile --compare``'s table) and
never fails the build; `make bench` writes the record on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from bench.record import RESULTS, write_result
from docs.pages.bench_pages import Results
from engine import data
from engine.config import DemoDataConfig, ProfileConfig
from engine.data import demo
from engine.profile import compare, format_comparison, harness, table
from engine.runtime import provenance

HERE = Path(__file__).resolve().parent
ROOT = HERE / "cache" / "ci-data"
SPECS = ("fgsm", "pgd@iterations=10", "mifgsm@iterations=10", "mldp@iterations=3")
BATCH = "16"
TOLERANCE = 0.25
CONFIG = ProfileConfig(repeats=3, memory=False, calibration_seconds=0.2)


def model():
    """The factory the profile loads (`--factory bench.ci_profile:model`): a seeded small conv net."""
    torch.manual_seed(0)
    names = data.load("demo", root=ROOT, split="test").label_names
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, len(names)))
    return net, names


def profile(log=print) -> list[dict]:
    demo.generate(ROOT, DemoDataConfig(n_train=1, n_test=32, seed=1))
    opts = {"own_model": {"factory": "bench.ci_profile:model"}, "dataset": "demo", "root": str(ROOT)}
    return harness.run(SPECS, opts, BATCH, CONFIG, log=log)


def baseline(folder: Path = RESULTS) -> dict | None:
    """The newest ci-profile record measured on this CPU model, if one is committed."""
    mine = provenance.cpu()["model"]
    return next((d for d in Results(folder).of("ci-profile")
                 if (d.get("machine", {}).get("cpu") or {}).get("model") == mine), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ci_profile", description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="keep this run as the record later runs compare with")
    a = ap.parse_args(argv)
    rows = profile(log=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(rows))
    if a.record:
        path = write_result("ci-profile", {"rows": rows, "table": table(rows)}, command="python -m bench.ci_profile "
                            "--record", keep_each=True)
        print(f"wrote {path}")
        return 0
    base = baseline()
    if base is None:
        print(f"\nno ci-profile record of this CPU ({provenance.cpu()['model']}) in bench/results/: nothing to "
              f"compare with (`python -m bench.ci_profile --record` on a quiet machine writes one)")
        return 0
    res = compare(base["rows"], rows, TOLERANCE)
    print(f"\ncompared with bench/results/{base['_file']} ({base['date'][:10]}); reported, not gating:")
    print(format_comparison(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
