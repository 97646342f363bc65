"""`sml profile`: the throughput of any attack implementation (ours, a peer library's, yours) on one
model, with the floor from the passes it really makes, a per-phase breakdown, peak memory and
provenance per row; `--compare` gates two profiles against each other (engine.profile.gate)."""

from engine.profile.display import plot, table
from engine.profile.gate import compare, format_comparison, read_rows
from engine.profile.harness import run

__all__ = ["compare", "format_comparison", "plot", "read_rows", "run", "table"]
