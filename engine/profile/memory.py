"""The peak memory of one attack call on the CPU, in a process of its own: `python -m
engine.profile.memory` reads a job (JSON on stdin: the model and data options, the SPEC, the
precision, the batch), loads model and data, makes one call and prints {"peak_rss_growth_bytes"}:
the process's peak resident set (getrusage's ru_maxrss) after the call minus its resident set
just before it. A process of its own, because a process's RSS keeps what it once allocated.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys

import torch

from engine.attacks import precision as precisions
from engine.profile import harness, specs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    job = json.loads(sys.stdin.read())
    subject = specs.parse(job["attack"], job["precision"])
    model, ds, _ = harness.load(job["opts"])
    x = harness.images(ds, int(job["batch"]))
    prec = subject.config.precision if subject.kind == "registered" else job["precision"]
    with precisions.applied(model, prec, "cpu") as net:
        fn = subject.make(model if subject.kind == "registered" else net, x)
        gc.collect()
        before = _rss_bytes()
        with torch.inference_mode(False):
            fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"peak_rss_growth_bytes": max(0, peak - before)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
