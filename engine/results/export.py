"""``sml export``: one CSV row per (run, attacked sample), for analyses outside the engine.

Rows are the finished samples only (an unfinished one has no results). Per-n success uses the
run's own ladder and rule, as the tables do: the mean of ``success_n{i}`` over a run's eligible rows
is the table's success rate at n = i (tests check this row for row).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from engine.errors import UserError
from engine.results.format import NORMS, RESULT_FIELDS, param_label
from engine.results.reader import done_rows, iter_runs, read
from engine.results.writer import open_store
from engine.util import write_text_atomic

FIXED = ("model_key", "dataset", "run", "attack", "preset", "params", "target", "row", "sample_index",
         "eligible", "true_labels", "label_count_final", "label_count_best", *(f"norm_{n}" for n in NORMS),
         "iters", "success", "success_best", "failed", "reason")


def further_fields() -> list[str]:
    """Per-sample result fields of the format (engine.results.format) beyond the fixed columns: one
    column each, after them."""
    return [k for k, (_, trail) in RESULT_FIELDS.items() if trail is None and k not in FIXED]


def _cell(v: np.generic) -> int | float:
    """A further field's value as the fixed columns write theirs (flags as 0/1)."""
    v = v.item()
    return int(v) if isinstance(v, bool) else v


def sample_rows(store_path) -> list[dict]:
    root = open_store(store_path, "r")
    rows = []
    further = further_fields()
    for model, dataset, key, run in iter_runs(root):
        a = dict(run.attrs)
        done = done_rows(run)
        arr = {name: read(run, name) for name in (*RESULT_FIELDS, "reason", "sample_index", "labels_true")}
        ladder = list(a["exp_labels"]) if a["target"] == "show-many" else []
        params = param_label(a["params"], ";")
        for i in np.nonzero(done)[0]:
            r = {"model_key": model, "dataset": dataset, "run": key, "attack": a["attack"], "preset": a["preset"],
                 "params": params, "target": a["target"], "row": int(i), "sample_index": int(arr["sample_index"][i]),
                 "eligible": int(arr["eligible"][i]), "true_labels": int(arr["labels_true"][i].sum()),
                 "label_count_final": int(arr["label_count_final"][i]),
                 "label_count_best": int(arr["label_count_best"][i]),
                 **{f"norm_{n}": float(v) for n, v in zip(NORMS, arr["norms"][i])},
                 "iters": int(arr["iters"][i]), "success": int(arr["success"][i]),
                 "success_best": int(arr["success_best"][i]), "failed": int(arr["failed"][i]),
                 "reason": str(arr["reason"][i]), **{k: _cell(arr[k][i]) for k in further}}
            for n, need in enumerate(ladder):
                r[f"success_n{n}"] = int(arr["label_count_final"][i] >= need)  # protocol.success_rates' rule
            rows.append(r)
    return rows


def export_csv(store_path, out_dir) -> Path:
    rows = sample_rows(store_path)
    if not rows:
        raise UserError(f"{store_path}: the store holds no finished samples to export")
    levels = max(sum(k.startswith("success_n") for k in r) for r in rows)
    fields = [*FIXED, *further_fields(), *(f"success_n{n}" for n in range(levels))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", restval="")
    w.writeheader()
    w.writerows(rows)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (--csv takes a folder)")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "samples.csv"
    write_text_atomic(path, buf.getvalue())
    return path
