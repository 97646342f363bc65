"""One way to keep a bench run: bench/results/<kind>-<date>-<host>.json, with the machine and versions.

Every file written here is a JSON object ``{"kind", "date", "machine", "versions", "command", ...}``;
the documentation's generated pages (docs/generate.py) read them, newest first, and print the
machine, date and versions beside every table they make from them.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
from pathlib import Path
from typing import Any

from engine.runtime import provenance
from engine.util import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "cpu") -> dict[str, Any]:
    """The machine a figure was measured on: host, CPU (model, vector extensions, torch's ISA level),
    cores, and the GPU where the device is one."""
    s = provenance.static(device)
    return {"host": socket.gethostname(), "cpu": provenance.cpu(), "cpu_count": s["cpu_count"],
            "device": s["device"], "cuda": s["cuda"], "platform": platform.platform()}


def versions() -> dict[str, Any]:
    s = provenance.static("cpu")
    return {"python": s["python"], **s["packages"], "engine": s["engine_version"], "git_commit": s["git_commit"],
            "git_dirty": s["git_dirty"]}


def write_result(kind: str, payload: dict[str, Any], *, command: str, device: str = "cpu",
                 folder: Path = RESULTS, keep_each: bool = False) -> Path:
    """Write ``payload`` as a result of ``kind`` made by ``command`` (atomically); returns its path.
    ``keep_each``: the file name holds the time as well, so that every run is kept (a history),
    not only the day's last."""
    now = dt.datetime.now(dt.timezone.utc)
    doc = {"kind": kind, "date": now.isoformat(timespec="seconds"), "machine": machine(device),
           "versions": versions(), "command": command, **payload}
    stamp = f"{now:%Y-%m-%d-%H%M%S}" if keep_each else f"{now:%Y-%m-%d}"
    path = folder / f"{kind}-{stamp}-{socket.gethostname()}.json"
    write_text_atomic(path, json.dumps(doc, indent=1, default=str) + "\n")
    return path
