"""`sml profile --compare OLD.json NEW.json`: the rows of two profiles matched on (attack, model,
device, precision, compile, batch), NEW's throughput over OLD's; a matched row slower than OLD by
more than the tolerance fails the comparison (exit 1). Rows in one file only are listed, never failed.
A file is a list of rows (`sml profile --out`) or a result record whose ``rows`` hold them (bench/results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.util import markdown_table

KEY = ("attack", "model", "device", "precision", "compile", "batch")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError:
        raise UserError(f"{p}: profile not found") from None
    except ValueError as e:
        raise UserError(f"{p}: not JSON ({e})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else doc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in KEY) and
                                             isinstance(r.get("images_per_s"), (int, float)) for r in rows):
        raise UserError(f"{p}: not a profile (expected a list of rows with {', '.join(KEY)} and images_per_s, "
                        f"as `sml profile --out` writes)")
    return rows


def key(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in KEY)


def compare(old: list[dict[str, Any]], new: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """{"matched": [(key, old images/s, new images/s, ratio, slower)], "only_old", "only_new", "failed"}."""
    a, b = {key(r): r for r in old}, {key(r): r for r in new}
    matched = []
    for k in (k for k in a if k in b):
        ratio = b[k]["images_per_s"] / a[k]["images_per_s"] if a[k]["images_per_s"] else float("inf")
        matched.append({"key": list(k), "old": a[k]["images_per_s"], "new": b[k]["images_per_s"], "ratio": ratio,
                        "slower": ratio < 1 - tolerance})
    return {"matched": matched, "only_old": [list(k) for k in a if k not in b],
            "only_new": [list(k) for k in b if k not in a], "tolerance": tolerance,
            "failed": any(m["slower"] for m in matched)}


def format_comparison(res: dict[str, Any]) -> str:
    tol = res["tolerance"]
    out = markdown_table(["attack", "model", "device", "precision", "compile", "batch", "old images/s",
                          "new images/s", "new / old", ""],
                         ([*m["key"], f"{m['old']:.1f}", f"{m['new']:.1f}", f"{m['ratio']:.2f}",
                           f"SLOWER (> {100 * tol:.0f}%)" if m["slower"] else "ok"] for m in res["matched"]))
    for what, keys in (("only in OLD", res["only_old"]), ("only in NEW", res["only_new"])):
        out += [f"{what}: " + ", ".join(f"{k[0]} @ {k[5]} ({k[2]}, {k[3]}{', compiled' if k[4] else ''})"
                                        for k in keys)] if keys else []
    n = sum(m["slower"] for m in res["matched"])
    out.append(f"{n} of {len(res['matched'])} matched row(s) slower than the tolerance ({100 * tol:.0f}%)"
               if n else f"no matched row slower than the tolerance ({100 * tol:.0f}%)")
    return "\n".join(out)
