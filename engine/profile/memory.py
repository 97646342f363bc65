"""The peak memory of one attack call on the CPU, in a process of its own: `python -m
engine.profile.memory` reads a job (JSON on stdin: the model and data options, the SPEC, the
precision, the batch), loads model and data, makes one call and prints {"peak_rss_growth_bytes"}:
the process's peak resident set after the call minus its resident set just before it. A process of
its own, because a process's RSS keeps what it once allocated. The peak is /proc/self/status's
VmHWM, reset just before the call (writing 5 to /proc/self/clear_refs, Linux >= 4.0), not
getrusage's ru_maxrss: that one survives exec, so it would start at the parent's size.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch

from engine.attacks import precision as precisions
from engine.profile import harness, specs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # an older kernel: the peak then counts from the process's start, an upper bound


def main() -> int:
    job = json.loads(sys.stdin.read())
    subject = specs.parse(job["attack"], job["precision"])
    model, ds, _ = harness.load(job["opts"])
    x = harness.images(ds, int(job["batch"]))
    prec = subject.config.precision if subject.kind == "registered" else job["precision"]
    with precisions.applied(model, prec, "cpu") as net:
        fn = subject.make(model if subject.kind == "registered" else net, x)
        gc.collect()
        _reset_peak()
        before = _rss_bytes()
        with torch.inference_mode(False):
            fn()
    print(json.dumps({"peak_rss_growth_bytes": max(0, _peak_bytes() - before)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
