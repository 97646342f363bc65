"""Sweeps: models x attacks x presets x targets, sharded over workers into one Zarr store.

A sweep file names the grid; ``run_sweep`` turns it into *shards* -- one stored chunk of one run,
the unit :func:`engine.runtime.runner.run_shard` attacks and writes -- and hands them to a pool of
workers. Results do not depend on who runs a shard or how many workers there are: a shard is a
fixed set of rows, its batches are cut the same way everywhere (``batch_size`` comes from the sweep
file, never from the pool size) and every random choice is seeded per sample. A shard re-run
after a crash overwrites its own rows with the same bytes; a finished shard (done flag set) is
never run again, so resuming is just running the same command again.

Rooms: ``sweepfile`` (schema), ``locate`` (errors at their line), ``record`` (fingerprint, stored
record, status), ``worker`` (the actor), ``backends`` (in-process or Ray; cluster connection; pool
sizes), ``scheduler`` (queues, retries, ``run_sweep``).
"""

from engine.runtime.sweep.backends import plan_pools
from engine.runtime.sweep.record import sweep_status
from engine.runtime.sweep.scheduler import run_sweep
from engine.runtime.sweep.sweepfile import Sweep, load_sweep
from engine.runtime.sweep.worker import STALL_ENV

__all__ = ["STALL_ENV", "Sweep", "load_sweep", "plan_pools", "run_sweep", "sweep_status"]
