"""Where one attack call's time goes, from torch.profiler: the model's forwards that carry a
gradient (``forward``), the backwards (``backward``: autograd's evaluate_function ranges), the
forward-only passes (``scoring``: the clean prediction and the score of x_adv), the tensor work
between them (``update``: top-level operators outside the model, the attack's own step), and
``other``: the call's wall time that none of those holds (Python, the host's bookkeeping, the
profiler's own cost). When ``other`` is more than OTHER_LIMIT of the call, cProfile names the
host-side functions it went to.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Kineto (torch.profiler's collector) logs every start and stop to stderr unless told otherwise.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402 - after the profiler's log level
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from engine.profile.hooks import FORWARD, SCORING, PassCounter  # noqa: E402

OTHER_LIMIT = 0.10
PHASES = ("forward", "backward", "update", "scoring", "other")
_BACKWARD = "autograd::engine::evaluate_function"


def _classify(name: str) -> str:
    if name == FORWARD:
        return "forward"
    if name == SCORING:
        return "scoring"
    if name.startswith(_BACKWARD):
        return "backward"
    return "update"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def breakdown(model: torch.nn.Module, fn: Callable[[], Any], device: str, trace: str | Path | None = None
              ) -> dict[str, float]:
    """Seconds of one call of ``fn`` per phase (see the module docstring); ``trace``: also write
    the profiler's Chrome trace there."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof, PassCounter(model, mark=True):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        wall = time.perf_counter() - t
    out = dict.fromkeys(PHASES, 0.0)
    for ev in prof.events():
        if ev.cpu_parent is None and ev.device_type == torch.autograd.DeviceType.CPU:
            out[_classify(ev.name)] += ev.cpu_time_total / 1e6
    # Ranges on other threads (a CUDA backward runs on the device's autograd thread) can overlap the
    # main thread's: never let the shares add up to more than the wall time.
    busy = sum(out.values())
    if busy > wall:
        out = {k: v * wall / busy for k, v in out.items()}
    out["other"] = max(0.0, wall - sum(out.values()))
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    return out


def host_frames(fn: Callable[[], Any], top: int = 3) -> list[str]:
    """The ``top`` Python functions one call of ``fn`` spent the most time in, themselves
    (cProfile's tottime: not in the C functions and operators they call), as
    ``file:line(function) N ms``."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = sorted(((v[2], k) for k, v in stats.items() if k[0] != "~" and not k[0].startswith("<")),
                  reverse=True)[:top]
    return [f"{Path(f).name}:{line}({func}) {1e3 * t:.1f} ms" for t, (f, line, func) in rows]
