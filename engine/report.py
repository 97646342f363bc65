"""Tables and plots: Table 1 from evaluation rows; Tables 2/3 from a Zarr store."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from engine import results
from engine.attacks.registry import ORDER
from engine.errors import UserError
from engine.runtime import provenance
from engine.util import markdown_table, write_text_atomic

log = logging.getLogger(__name__)

MODEL_NAMES = {"mlgcn": "ML-GCN", "mlliw": "ML-LIW"}
T1_COLUMNS = (("hamming_loss", "Hamming Loss"), ("ranking_loss", "Ranking Loss"),
              ("average_precision", "Average Precision"), ("micro_f1", "Micro-F1"), ("macro_f1", "Macro-F1"),
              ("mAP", "mAP"))


def table1_markdown(rows: Sequence[dict]) -> str:
    """Table 1 in the study's layout (+ mAP, which the study does not report)."""
    head = ["Model", "Dataset", *(t for _, t in T1_COLUMNS), "N"]
    return "\n".join(markdown_table(head, ([MODEL_NAMES.get(r["model"], r["model"]), r["dataset"],
                                           *(f"{r[k]:.4f}" for k, _ in T1_COLUMNS), r["num_samples"]] for r in rows)))


# ------------------------------------------------------------------ Tables 2/3 from a store
def collect(store_path, damaged: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(attack rows, Table 1 rows) from a result store; only finished chunks count. A damaged run
    is an error, or, given a ``damaged`` list, left out and its message appended there."""
    root = results.open_store(store_path, "r")
    rows, t1, seen = [], [], set()
    for model, dataset, key, run in results.iter_runs(root):
        mg = root[f"{model}/{dataset}"]
        if (model, dataset) not in seen and "metrics" in mg.attrs:
            seen.add((model, dataset))
            t1.append({**mg.attrs["metrics"], "model_key": model, "dataset": dataset})
        try:
            s = results.summarize(run)
        except UserError as e:
            if damaged is None:
                raise
            damaged.append(str(e))
            continue
        a = dict(run.attrs)
        rows.append({"model_key": model, "model": a["model_metrics"].get("model", model), "dataset": dataset,
                     "run": key, "title": a["title"], "semantics": a["semantics"], **s,
                     # how far the run reproduces the study, where it cannot fully (an inferred cell)
                     **({"warning": a["warning"]} if a.get("warning") else {})})
    return rows, t1


def _order(row: dict) -> tuple:
    """Attacks in the study's order; a grid's runs by their parameter values (0.01 < 0.03 < 0.1 < 1.0,
    which the names alone would not sort)."""
    a = row["attack"]
    params = tuple((k, (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
                   for k, v in sorted(row["params"].items()))
    return (row["model_key"], row["dataset"], ORDER.index(a) if a in ORDER else 99, row["run"].split("@")[0],
            params, row["run"])


def _label(row: dict) -> str:
    t = row["title"]
    how = ([row["preset"]] if row["preset"] != "paper" else []) + (
        [results.param_label(row["params"])] if row["params"] else [])
    if how:
        t += f" ({'; '.join(how)})"
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
    for r in (r for r in show if r["exp_labels"]):
        by_len.setdefault(len(r["exp_labels"]), []).append(r)
    out = []
    for k, rs in sorted(by_len.items()):
        body = []
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
                lead = [name, ds] if j == 0 else ["", ""]
                body.append([*lead, _label(r), *cells, nn])
            body.append(["", "", f"*expLabels* ({_ladder_note(br[0])})", *ladder, ""])
        out += markdown_table(["model", "dataset", "attack method", *(f"n = {i}" for i in range(k)), "N"], body)
        out.append("")
    empty = [r for r in show if not r["exp_labels"]]
    if empty:  # no sample selected: no avgLabels, no ladder (a released ML-GCN fed raw pixels it never saw)
        out += markdown_table(["model", "dataset", "attack method", "N"], (
            [MODEL_NAMES.get(r["model"], r["model"]), r["dataset"], _label(r),
             "0: no test sample predicted exactly right as this run feeds the model"] for r in empty))
        out.append("")
    other = sorted((r for r in rows if r["target"] != "show-many"), key=_order)
    if other:
        out += markdown_table(
            ["model", "dataset", "attack method", "target", "success (final)", "success (best)", "N eligible"],
            ([MODEL_NAMES.get(r["model"], r["model"]), r["dataset"], _label(r), r["target"],
              f"{r['success_final'][0]:.3f}", f"{r['success_best'][0]:.3f}", r["n_eligible"]] for r in other))
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
                            "attack": r["attack"], "preset": r["preset"], "run": r["run"],
                            "params": results.param_label(r["params"], ";"), "target": r["target"],
                            "semantics": r["semantics"], "count": sem, "n": n, "exp_labels": exp,
                            "success_rate": v, "samples": r["n_eligible"], "samples_requested": r["n_requested"],
                            "order": r["order"], "rounding": r["rounding"], "avg_labels": r["avg_labels"],
                            "avg_labels_samples": r["avg_labels_samples"]})
    return out


def plot(rows: list[dict], out_dir) -> list:
    """One PNG per model: success rate (final iterate) against n, one line per attack."""
    plt = _pyplot()

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
            _success_axes(ax, "n (expLabels level)")
        paths.append(_save(plt, fig, Path(out_dir) / f"success_{mk}.png"))
    return paths


def _pyplot():
    import matplotlib  # heavy (~0.5 s); only plots need it

    matplotlib.use("Agg")  # headless: must precede pyplot's import
    import matplotlib.pyplot as plt  # after use("Agg"), hence here too

    return plt


def _success_axes(ax, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("success rate (final iterate)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def swept(rows: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """Parameters a grid varies: (model key, data set, attack, preset) -> {parameter: its runs},
    for each parameter that takes at least two numeric values among that attack's show-many runs."""
    fams: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["target"] == "show-many" and r["params"]:
            fams.setdefault((r["model_key"], r["dataset"], r["attack"], r["preset"], r["semantics"]), []).append(r)
    out: dict[tuple, dict[str, list[dict]]] = {}
    for fam, rs in fams.items():
        for p in sorted({k for r in rs for k in r["params"]}):
            mine = [r for r in rs if isinstance(r["params"].get(p), (int, float))
                    and not isinstance(r["params"].get(p), bool)]
            if len({r["params"][p] for r in mine}) >= 2:
                out.setdefault(fam, {})[p] = mine
    return out


def plot_swept(rows: list[dict], out_dir, only: str | None = None) -> list:
    """Per swept parameter: success (final iterate) against its values, one line per n level (and
    per setting of the grid's other parameters, told apart by line style)."""
    plt = _pyplot()

    paths = []
    for (mk, ds, attack, preset, _), params in sorted(swept(rows).items()):
        for p, rs in params.items():
            if only is not None and p != only:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            others: dict[tuple, list[dict]] = {}
            for r in rs:
                others.setdefault(tuple((k, v) for k, v in sorted(r["params"].items()) if k != p), []).append(r)
            styles = ["-", "--", ":", "-."]
            for j, (rest, line) in enumerate(sorted(others.items(), key=lambda kv: str(kv[0]))):
                line = sorted(line, key=lambda r: r["params"][p])
                xs = [r["params"][p] for r in line]
                suffix = f" ({', '.join(f'{k}={v}' for k, v in rest)})" if rest else ""
                for n in range(len(line[0]["success_final"])):
                    ax.plot(xs, [r["success_final"][n] for r in line], marker="o", color=f"C{n}",
                            linestyle=styles[j % len(styles)], label=f"n = {n}{suffix}")
            title = rs[0]["title"] + ("" if preset == "paper" else f" ({preset})")
            ax.set_title(f"{title} on {MODEL_NAMES.get(rs[0]['model'], mk)} ({mk}), {ds}")
            values = [r["params"][p] for r in rs]
            if min(values) > 0 and max(values) >= 10 * min(values):  # a grid over decades: log axis
                ax.set_xscale("log")
            _success_axes(ax, p)
            name = f"success_vs_{p}_{mk}_{ds}_{attack}{'' if preset == 'paper' else '.' + preset}.png"
            paths.append(_save(plt, fig, Path(out_dir) / name))
    return paths


def render(store_path, out_dir, formats=("md", "csv", "json"), allow_incomplete: bool = False,
           vs: str | None = None) -> list:
    """Write Tables 1-3 (md / csv / json) and the plots into ``out_dir`` (``allow_incomplete``: the
    intact runs, the damaged ones listed)."""
    bad = sorted(set(formats) - {"md", "csv", "json"})
    if bad:
        raise UserError(f"unknown report format(s) {bad}; valid: md, csv, json")
    damaged: list[str] | None = [] if allow_incomplete else None
    rows, t1 = collect(store_path, damaged)
    if not rows:
        raise UserError(f"{store_path}: the store holds no attack runs yet")
    if vs is not None and not any(vs in ps for ps in swept(rows).values()):
        raise UserError(f"--vs {vs}: no attack in {store_path} has runs at two or more values of {vs} "
                        f"(swept here: {', '.join(sorted({p for ps in swept(rows).values() for p in ps})) or 'none'})")
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
        warned = sorted({r["warning"] for r in rows if r.get("warning")})
        if warned:
            text += ["**Inferred cells** (see each run's `warning` attribute):", "", *(f"- {w}" for w in warned), ""]
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
    prov, warnings = provenance_report(store_path, rows)
    for w in warnings:
        log.warning("%s", w)
    write_text_atomic(out / "provenance.json", json.dumps({"runs": prov, "warnings": warnings}, indent=1) + "\n")
    written.append(out / "provenance.json")
    written += plot(rows, out)
    written += plot_swept(rows, out, vs)
    return written


def provenance_report(store_path, rows: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """({model/dataset/run: its provenance summary}, warnings): one warning per table block (model,
    data set) whose runs come from different package versions, devices or engine commits."""
    root = results.open_store(store_path, "r")
    prov = {}
    for r in rows:
        path = f"{r['model_key']}/{r['dataset']}/{r['run']}"
        run = root[path]
        recs = results.read(run, "provenance")
        prov[path] = provenance.summarise([str(x) for x, d in zip(recs, results.done_flags(run)) if d])
    warnings = []
    blocks: dict[tuple, list[str]] = {}
    for path in prov:
        blocks.setdefault(tuple(path.split("/")[:2]), []).append(path)
    for (mk, ds), paths in sorted(blocks.items()):
        for field in provenance.COMPARED:
            vals = {json.dumps(v, sort_keys=True) for p in paths for v in prov[p].get(field, [])}
            if len(vals) > 1:
                seen = "; ".join(sorted(vals))[:300]
                warnings.append(f"{mk}/{ds}: its runs were made with different {field} ({seen}); "
                                f"their numbers may not be comparable (see provenance.json)")
    return prov, warnings
