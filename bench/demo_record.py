"""Keep a demo run's tables for the documentation: `python -m bench.demo_record REPORT_DIR --name NAME`.

Reads the `tables.json` and `provenance.json` that `sml report` wrote into REPORT_DIR (after
`make run`: runs/demo/reports; after `make run-released`: runs/demo/reports-released) and writes
bench/results/<NAME>-<date>-<host>.json with Table 1, every run's success rates and ladder, and the
machine and versions the shards were computed with (from their provenance records, not from the
machine running this). docs/generate.py makes the "Results on the demo" page and the README's table
from the newest record of each name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.record import write_result
from engine.errors import UserError


def shard_machine(provenance: dict) -> dict:
    """The distinct devices, CPUs, hosts, threads and packages of every shard of the report's runs."""
    out: dict[str, list] = {}
    for summary in provenance.get("runs", {}).values():
        for field in ("device", "cpu", "host", "torch_threads", "packages", "python", "git_commit"):
            for v in summary.get(field, []):
                if v not in out.setdefault(field, []):
                    out[field].append(v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.demo_record", description=__doc__.splitlines()[0])
    ap.add_argument("reports", help="a folder `sml report` wrote")
    ap.add_argument("--name", required=True, help="demo | demo-released | demo-grid | ...")
    ap.add_argument("--sweep", help="the sweep file the store was made from (recorded)")
    a = ap.parse_args(argv)
    folder = Path(a.reports)
    try:
        tables = json.loads((folder / "tables.json").read_text())
        prov = json.loads((folder / "provenance.json").read_text())
    except (OSError, ValueError) as e:
        print(f"demo_record: error: {folder}: no readable tables.json / provenance.json ({e}); run "
              f"`sml report STORE --out {folder}` first", file=sys.stderr)
        return 2
    try:
        path = write_result(a.name, {"sweep": a.sweep, "table1": tables["table1"], "runs": tables["runs"],
                                     "shards": shard_machine(prov), "warnings": prov.get("warnings", [])},
                            command=f"python -m bench.demo_record {a.reports} --name {a.name}")
    except UserError as e:
        print(f"demo_record: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
