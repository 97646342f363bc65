"""`make gpu-check`: everything a first, short lease of a GPU machine should prove, in one command.

    python3 -m bench.gpu_check [--budget 330] [--json PATH]   # on the GPU machine, from the repo root
    python3 -m bench.gpu_check --download-wheels               # `make gpu-wheels`, here

The GPU machine is bare and offline (Python 3.12, torch, triton, numpy ... but no zarr, numcodecs,
highspy, Ray), so this needs no `make setup`: it runs with whatever `python3` is on the PATH, puts
the repository on the path, and installs the wheels that `make gpu-wheels` left in bench/wheels
(carried there with the working tree) into bench/cache/site-<python> with
`pip --no-index --target`. Ray is never imported: the sweep runs with --local.

Sections (--only picks some), in order of value, each started only while the time budget
(--budget seconds since the start) still covers its estimate, so the whole check ends within about
six minutes; what the budget skipped is listed and a second lease can run it with --only:

- kernels: every Triton kernel against kernels.reference, compiled natively, on odd shapes, tied
  gradients and a batch of 8 x 3x448x448; their speed against a device-to-device copy.
- large: attacks on ResNet-101 @ 448 px (ML-GCN head, the batch the engine chooses, 20
  iterations): ours / floor per attack, eager, and compiled (torch.compile's default mode) for PGD;
  its compile time; peak memory.
- small: the same on ResNet-18 @ 64 px (batch 32, 40 iterations), compiled for PGD and SLIDE.
- sweep: a tiny `sml sweep --local` on the GPU (demo data, a briefly trained tiny model, five
  attacks including MLA-LP, so the carried zarr and highspy are used).
- autotune-small, graphs-small: the compiled PGD step of ResNet-18 under
  mode="max-autotune-no-cudagraphs" and "reduce-overhead" (CUDA graphs).
- autotune-large: the same max-autotune on ResNet-101, only if three default compiles still fit.

It prints one table and writes bench/results/<date>-<gpu>.json (and --json PATH). Without CUDA it
prints one line saying so and exits 0. The exit code is 1 if a section failed or a kernel disagreed.
The sections live in bench/gpu/ (its docstring maps them).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu.cli import main  # noqa: E402 - after the path is set

if __name__ == "__main__":
    sys.exit(main(description=__doc__.split("\n\n")[0]))
