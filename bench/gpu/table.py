"""The check's one table: a row per kernel, attack, compile mode, sweep or skipped section."""

from __future__ import annotations

from engine.util import markdown_table


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def _cells(r: dict) -> list:
    comp = _fmt(r.get("compiled_floor"), ".2f")
    if comp and r.get("mode"):
        comp += f" ({r['mode']})"
    note = r.get("agreement") or r.get("note") or r.get("error") or ""
    if r.get("ok") is False:
        note = "FAILED " + note
    return [r["check"], r.get("model", ""), r.get("item", ""), _fmt(r.get("eager_floor"), ".2f"), comp,
            _fmt(r.get("compile_s"), ".0f"), _fmt(r.get("peak_gib"), ".2f"), note]


def format_table(rows: list[dict]) -> str:
    return "\n".join(markdown_table(["check", "model / shape", "attack / kernel", "eager / floor", "compiled / floor",
                                     "compile s", "peak GiB", "agreement / note"], map(_cells, rows)))


