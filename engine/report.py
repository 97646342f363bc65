"""Tables and plots: Table 1 from evaluation rows; Tables 2/3 from a Zarr store."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from engine.attacks.registry import ORDER
from engine.errors import UserError
from engine.runtime import runner
from engine.runtime import store as st
from engine.util import write_text_atomic

MODEL_NAMES = {"mlgcn": "ML-GCN", "mlliw": "ML-LIW"}
T1_COLUMNS = (("hamming_loss", "Hamming Loss"), ("ranking_loss", "Ranking Loss"),
              ("average_precision", "Average Precision"), ("micro_f1", "Micro-F1"), ("macro_f1", "Macro-F1"),
              ("mAP", "mAP"))


def table1_markdown(rows: Sequence[dict]) -> str:
    """Table 1 in the study's layout (+ mAP, which the study does not report)."""
    head = "| Model | Dataset | " + " | ".join(t for _, t in T1_COLUMNS) + " | N |"
    lines = [head, "|" + "---|" * (len(T1_COLUMNS) + 3)]
    for r in rows:
        vals = " | ".join(f"{r[k]:.4f}" for k, _ in T1_COLUMNS)
        lines.append(f"| {MODEL_NAMES.get(r['model'], r['model'])} | {r['dataset']} | {vals} | {r['num_samples']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ Tables 2/3 from a store
def collect(store_path, damaged: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(attack rows, Table 1 rows) from a result store; only finished chunks count. A damaged run
    is an error, or, given a ``damaged`` list, left out and its message appended there."""
    root = st.open_store(store_path, "r")
    rows, t1, seen = [], [], set()
    for model, dataset, key, run in st.iter_runs(root):
        mg = root[f"{model}/{dataset}"]
        if (model, dataset) not in seen and "metrics" in mg.attrs:
            seen.add((model, dataset))
            t1.append({**mg.attrs["metrics"], "model_key": model, "dataset": dataset})
        try:
            s = runner.summarize(run)
        except UserError as e:
            if damaged is None:
                raise
            damaged.append(str(e))
            continue
        a = dict(run.attrs)
        rows.append({"model_key": model, "model": a["model_metrics"].get("model", model), "dataset": dataset,
                     "run": key, "title": a["title"], "semantics": a["semantics"], **s})
    return rows, t1


def _order(row: dict) -> tuple:
    a = row["attack"]
    return (row["model_key"], row["dataset"], ORDER.index(a) if a in ORDER else 99, row["run"])


def _label(row: dict) -> str:
    t = row["title"]
    if row["preset"] != "paper":
        t += f" ({row['preset']})"
    if row["semantics"] == "stop-at-success":
        t += " [early exit]"
    return t


def _ladder_note(r: dict) -> str:
    rnd = "int(), floor" if r["rounding"] == "floor" else "ceil"
    how = "first" if r["order"] == "first" else "seeded"
    return f"{rnd}; avgLabels {r['avg_labels']:.3f} over {r['avg_labels_samples']} {how} samples"


def tables23_markdown(rows: list[dict], which: str = "success_final") -> str:
    """Tables 2/3 in the study's layout, one table per ladder length; best value per block in bold.

    A block is one (model, data set, ladder): runs scored by other rules (the ``released`` preset's
    floor, another avgLabels) get a block of their own, under the ladder they were scored with."""
    show = sorted((r for r in rows if r["target"] == "show-many"), key=_order)
    by_len: dict[int, list[dict]] = {}
    for r in show:
        by_len.setdefault(len(r["exp_labels"]), []).append(r)
    out = []
    for k, rs in sorted(by_len.items()):
        head = "| model | dataset | attack method | " + " | ".join(f"n = {i}" for i in range(k)) + " | N |"
        out += [head, "|" + "---|" * (k + 4)]
        blocks: dict[tuple, list[dict]] = {}
        for r in rs:
            key = (r["model_key"], r["dataset"], tuple(r["exp_labels"]), r["rounding"], r["avg_labels"])
            blocks.setdefault(key, []).append(r)
        for (mk, ds, *_), br in blocks.items():
            best = [max(r[which][i] for r in br) for i in range(k)]
            ladder = br[0]["exp_labels"]
            for j, r in enumerate(br):
                cells = []
                for i, v in enumerate(r[which]):
                    cell = f"{v:.3f}"
                    cells.append(f"**{cell}**" if v == best[i] and v > 0 else cell)
                nn = f"{r['n']} {'first' if r['order'] == 'first' else 'seeded'}" + (
                    f" of {r['n_requested']} asked" if r["n"] < r["n_requested"] else "")
                name = MODEL_NAMES.get(r["model"], r["model"]) + ("" if mk == r["model"] else f" ({mk})")
                lead = f"| {name} | {ds} " if j == 0 else "| | "
                out.append(f"{lead}| {_label(r)} | " + " | ".join(cells) + f" | {nn} |")
            out.append(f"| | | *expLabels* ({_ladder_note(br[0])}) | " + " | ".join(str(v) for v in ladder) + " | |")
        out.append("")
    other = sorted((r for r in rows if r["target"] != "show-many"), key=_order)
    if other:
        out += ["| model | dataset | attack method | target | success (final) | success (best) | N eligible |",
                "|---|---|---|---|---|---|---|"]
        for r in other:
            out.append(f"| {MODEL_NAMES.get(r['model'], r['model'])} | {r['dataset']} | {_label(r)} | {r['target']} | "
                       f"{r['success_final'][0]:.3f} | {r['success_best'][0]:.3f} | {r['n_eligible']} |")
    return "\n".join(out)


def long_rows(rows: list[dict]) -> list[dict]:
    """One row per (run, semantics, n): the CSV layout."""
    out = []
    for r in sorted(rows, key=_order):
        for sem in ("final", "best"):
            vals = r[f"success_{sem}"]
            levels = r["exp_labels"] if r["target"] == "show-many" else [None]
            for n, (exp, v) in enumerate(zip(levels, vals)):
                out.append({"model": r["model"], "model_key": r["model_key"], "dataset": r["dataset"],
                            "attack": r["attack"], "preset": r["preset"], "target": r["target"],
                            "semantics": r["semantics"], "count": sem, "n": n, "exp_labels": exp,
                            "success_rate": v, "samples": r["n_eligible"], "samples_requested": r["n_requested"],
                            "order": r["order"], "rounding": r["rounding"], "avg_labels": r["avg_labels"],
                            "avg_labels_samples": r["avg_labels_samples"]})
    return out


def plot(rows: list[dict], out_dir) -> list:
    """One PNG per model: success rate (final iterate) against n, one line per attack."""
    import matplotlib  # heavy (~0.5 s); only plots need it

    matplotlib.use("Agg")  # headless: must precede pyplot's import
    import matplotlib.pyplot as plt  # after use("Agg"), hence here too

    paths = []
    show = [r for r in rows if r["target"] == "show-many"]
    for mk in sorted({r["model_key"] for r in show}):
        mine = sorted((r for r in show if r["model_key"] == mk), key=_order)
        dsets = sorted({r["dataset"] for r in mine})
        fig, axes = plt.subplots(1, len(dsets), figsize=(5.5 * len(dsets), 4), squeeze=False)
        for ax, ds in zip(axes[0], dsets):
            for r in (r for r in mine if r["dataset"] == ds):
                ax.plot(range(len(r["success_final"])), r["success_final"], marker="o", label=_label(r))
            ax.set_title(f"{MODEL_NAMES.get(mine[0]['model'], mk)} ({mk}) on {ds}")
            ax.set_xlabel("n (expLabels level)")
            ax.set_ylabel("success rate (final iterate)")
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        p = Path(out_dir) / f"success_{mk}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def render(store_path, out_dir, formats=("md", "csv", "json"), allow_incomplete: bool = False) -> list:
    """Write Tables 1-3 (md / csv / json) and the plots into ``out_dir`` (``allow_incomplete``: the
    intact runs, the damaged ones listed)."""
    bad = sorted(set(formats) - {"md", "csv", "json"})
    if bad:
        raise UserError(f"unknown report format(s) {bad}; valid: md, csv, json")
    damaged: list[str] | None = [] if allow_incomplete else None
    rows, t1 = collect(store_path, damaged)
    if not rows:
        raise UserError(f"{store_path}: the store holds no attack runs yet")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        text = ["# Results", "", f"Store: `{store_path}`", "", "## Table 1: model quality (test split)", "",
                table1_markdown(t1), "", "## Tables 2/3: success rate per n (final iterate, the study's)", "",
                tables23_markdown(rows, "success_final"), "",
                "## Success rate per n, best iterate over the attack", "", tables23_markdown(rows, "success_best"), ""]
        failed = [r for r in rows if r["failed"]]
        if failed:
            text += ["Samples recorded as failed (their reasons are in each run's `reason` array): " +
                     ", ".join(f"{r['model_key']}/{r['dataset']}/{r['run']}: {r['failed']}" for r in failed), ""]
        if damaged:
            text += ["**Damaged runs, left out of these tables** (`--allow-incomplete`):", "",
                     *(f"- {d}" for d in damaged), ""]
        short = [r for r in rows if r["n"] < r["n_requested"]]
        if short:
            text += ["Fewer correctly predicted samples than asked for, so all were used: " +
                     ", ".join(f"{r['model_key']}/{r['dataset']}/{r['run']}: {r['n']} of {r['n_requested']}"
                               for r in short), ""]
        write_text_atomic(out / "tables.md", "\n".join(text))
        written.append(out / "tables.md")
    if "csv" in formats:
        for name, data in (("tables23.csv", long_rows(rows)), ("table1.csv", t1)):
            buf = io.StringIO()
            if data:
                w = csv.DictWriter(buf, fieldnames=list(data[0]), lineterminator="\n", extrasaction="ignore")
                w.writeheader()
                w.writerows(data)
            write_text_atomic(out / name, buf.getvalue())
            written.append(out / name)
    if "json" in formats:
        doc = {"table1": t1, "runs": rows, **({"damaged": damaged} if damaged else {})}
        write_text_atomic(out / "tables.json", json.dumps(doc, indent=1, default=str) + "\n")
        written.append(out / "tables.json")
    written += plot(rows, out)
    return written
