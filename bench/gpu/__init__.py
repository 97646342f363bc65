"""`make gpu-check` in sections (entry point: bench/gpu_check.py, whose docstring says what it checks):

- ``wheels``: the packages the bare GPU machine lacks, fetched here (`make gpu-wheels`) and installed there;
- ``measure``: the timing pieces every section shares (stand-in models and images, the floor, peak memory);
- ``kernels``: the Triton kernels against kernels.reference, and their speed;
- ``attacks``: ours / floor per attack, eager and compiled, and the compile modes;
- ``sweep``: a tiny ``sml sweep --local`` on the device;
- ``table``: the markdown table of all rows;
- ``cli``: the command line, the time budget and the order of the sections.

Every module imports only the standard library at the top: the check must start, and say "no CUDA" in
one line, on a machine without torch's dependencies or the wheels installed yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
