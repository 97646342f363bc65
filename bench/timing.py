"""Wall-clock timing of device work, shared by every bench: CUDA runs asynchronously, so a timer
must synchronise before it starts and before it stops. Imports torch only (gpu_check and
bench_kernels use it where zarr, Ray and highspy may be missing)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """(seconds, result) of one call of ``fn``."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def median_time(fn: Callable[[], Any], device: str, reps: int) -> float:
    """Median seconds of ``reps`` calls after one warm-up call (compile, allocator)."""
    fn()
    return statistics.median(timed(fn, device)[0] for _ in range(reps))
