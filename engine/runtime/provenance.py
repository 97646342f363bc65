"""How a shard was made: package versions, device, CPU model, engine commit, host, times, data digest.

Each shard writes one JSON record into its run's ``provenance`` array (one element per chunk, like
``done``: every shard its own chunk file, so concurrent actors never rewrite each other's record).
The report summarises the distinct values per run into a file of its own, so that tables.md stays
deterministic, and warns when the runs of one table come from different versions or devices.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import engine

PACKAGES = ("torch", "torchvision", "timm", "triton", "numpy", "ray", "zarr", "highspy")
# What must agree between the runs of one table for their numbers to be comparable as the README
# claims (bitwise identity holds for the same versions and device, see "Determinism").
COMPARED = ("packages", "device", "device_count", "cuda", "cpu", "engine_version", "git_commit")
# Vector extensions that decide which of torch's CPU kernels run (ATen dispatches on the ISA level
# it reports as torch.backends.cpu.get_cpu_capability()): float sums in other orders, so numbers
# computed on the CPU, trained demo models included, can differ in the last bits between CPUs.
EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@functools.cache
def _git() -> tuple[str | None, bool | None]:
    """The engine's commit and dirty flag when it runs from a git checkout (else None, None)."""
    repo = Path(engine.__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return None, None
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return head, dirty if head else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def _driver() -> str | None:
    """The NVIDIA driver's version (torch does not expose it; nvidia-smi does), None if unknown."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.split()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def cpu() -> dict[str, Any]:
    """The CPU model, the vector extensions it has (of :data:`EXTENSIONS`) and the ISA level torch's
    kernels use on it (``ATEN_CPU_CAPABILITY`` can lower it)."""
    model, flags = None, set()
    try:  # Linux; elsewhere the platform's processor string and no extension list
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model name", "Processor") and model is None:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "extensions": [e for e in EXTENSIONS if e in flags],
            "torch_isa": torch.backends.cpu.get_cpu_capability()}


@functools.cache
def static(device: str) -> dict[str, Any]:
    """The part of a record that is the same for every shard of a process (computed once)."""
    pk = {}
    for name in PACKAGES:
        try:
            pk[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pk[name] = None
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    commit, dirty = _git()
    return {"packages": pk, "python": platform.python_version(), "engine_version": engine.__version__,
            "git_commit": commit, "git_dirty": dirty, "host": socket.gethostname(),
            "device": torch.cuda.get_device_name(torch.device(device)) if cuda else f"cpu ({platform.machine()})",
            "device_count": torch.cuda.device_count() if cuda else 1,
            "cuda": {"runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                     "driver": _driver()} if cuda else None,
            "cpu": cpu(), "cpu_count": os.cpu_count()}


def record(device: str, started: str, data_digest: str | None) -> str:
    """One shard's record, as the JSON text stored in its chunk of ``provenance``."""
    return json.dumps({**static(device), "torch_threads": torch.get_num_threads(), "started": started,
                       "finished": now(), "data_digest": data_digest}, sort_keys=True)


def summarise(records: list[str]) -> dict[str, Any]:
    """A run's distinct values per field (times as first start and last end)."""
    recs = [json.loads(r) for r in records if r]
    if not recs:
        return {}
    out: dict[str, Any] = {"shards": len(recs), "first_started": min(r["started"] for r in recs),
                           "last_finished": max(r["finished"] for r in recs)}
    for k in sorted({k for r in recs for k in r} - {"started", "finished"}):
        vals = {json.dumps(r.get(k), sort_keys=True) for r in recs}
        out[k] = [json.loads(v) for v in sorted(vals)]
    return out
