"""The terminal table of `sml profile`'s rows, and its plot (images/s and peak memory against the
batch size, one line per attack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.profile.phases import OTHER_LIMIT, PHASES
from engine.util import markdown_table


def _passes(p: dict[str, float]) -> str:
    text = f"{p['forward']:g} / {p['forward_backward']:g}"
    return text + (f" (+{p['backward']:g} bwd)" if p.get("backward") else "")


def _phases(ph: dict[str, float]) -> str:
    if "compiled" in ph:
        return "compiled: one phase"
    total = sum(ph.values()) or 1.0
    return " ".join(f"{k[0]}{100 * ph[k] / total:.0f}" for k in PHASES)


def _mem(b: int | None) -> str:
    return "" if b is None else f"{b / 2**20:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows, then where ``other`` went for every row where it passed the limit."""
    lines = markdown_table(
        ["attack", "model", "batch", "images/s", "s / sample", "passes fwd / fwd+bwd", "floor ratio",
         "phases % (f b u s o)", "peak MiB", "spec"],
        ([r["attack"], r["model"], r["batch"], f"{r['images_per_s']:.1f}", f"{r['seconds_per_sample']:.4g}",
          _passes(r["passes"]), "" if r["floor_ratio"] is None else f"{r['floor_ratio']:.2f}",
          _phases(r["phases"]), _mem(r.get("peak_memory_bytes")), r.get("spec_check") or ""] for r in rows))
    dev = {(r["device"], r["precision"], r["compile"]) for r in rows}
    lines += ["", "on " + "; ".join(f"{d}, {p}{', compiled' if c else ''}" for d, p, c in sorted(dev)) +
              ". passes per sample (counted by hooks on the model); floor = passes x the model's fwd / fwd+bwd "
              "per image at that batch; phases: forward, backward, update, scoring, other"]
    for r in rows:
        if r.get("other_frames"):
            lines.append(f"- {r['attack']} @ {r['batch']}: other > {100 * OTHER_LIMIT:.0f}%; top host frames: "
                         + ", ".join(r["other_frames"]))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """images/s and peak memory against the batch size, one line per attack (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(f"--plot {path}: matplotlib is not installed (pip install matplotlib)") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["attack"] for r in rows):
        mine = sorted((r for r in rows if r["attack"] == name), key=lambda r: r["batch"])
        ax1.plot([r["batch"] for r in mine], [r["images_per_s"] for r in mine], marker="o", label=name)
        mem = [(r["batch"], r["peak_memory_bytes"] / 2**20) for r in mine if r.get("peak_memory_bytes") is not None]
        if mem:
            ax2.plot(*zip(*mem), marker="o", label=name)
    ax1.set(xlabel="batch", ylabel="images / s", title="throughput")
    ax2.set(xlabel="batch", ylabel="peak memory (MiB)", title="memory")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
