"""The update-step kernels on their own: agreement with kernels.reference and speed.

    python -m bench.bench_kernels                  # CPU: the reference's two k-th-largest searches
    python -m bench.bench_kernels --device cuda    # GPU: Triton kernels vs reference, GB/s

``agreement(device)`` runs every Triton launcher and the reference on the same inputs (odd shapes,
heavy ties for SLIDE's selection) and reports the largest difference; on CPU the launchers only run
under TRITON_INTERPRET=1, which the interpreter test of tests/test_kernels.py uses.
``speed(device)`` times each step on a batch of large images: on CUDA the kernel, the reference in
eager mode, and the bytes moved per second against a device-to-device copy of the same size (the
achievable memory bandwidth); on CPU the reference's selection of the k-th largest |g| by the
31-pass bit search and by torch.topk, which is how the reference picks its CPU path.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import torch

from bench.timing import median_time
from engine.util import markdown_table
from kernels import reference as R

ODD_SHAPES = ((3, 3, 17, 29), (1, 1), (2, 7), (5, 3, 9, 11))
TOL = 1e-6  # the kernels' documented agreement with the reference (float32 rounding only)


def _inputs(shape, seed, device, ties=False):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen)
    x0.view(-1)[::7] = 0.0  # pixels at the box faces
    x0.view(-1)[3::11] = 1.0
    x = (x0 + 0.1 * (2 * torch.rand(shape, generator=gen) - 1)).clamp(0, 1)
    if ties:  # magnitudes in {0, 1/4, 1/2, 1}: the selection's ties and zeros
        levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
        g = levels[torch.randint(0, 4, shape, generator=gen)] * (torch.randint(0, 2, shape, generator=gen) * 2 - 1)
    else:
        g = torch.randn(shape, generator=gen)
    m = 1e-3 * torch.randn(shape, generator=gen)
    return [t.to(device) for t in (x, x0, g, m)]


def _cases():
    """{name: (launcher module, step arguments after the tensors, uses momentum)}."""
    return {
        "linf": ("linf", "linf_step", (0.01, 0.03)),
        "l2": ("l2", "l2_step", (0.3, 0.5)),
        "mifgsm": ("mifgsm", "mifgsm_step", (0.01, 0.03, 0.9)),
        "slide-exact": ("slide", "slide_step", (1.0, 2.0, 0.99, "exact")),
        "slide-advertorch": ("slide", "slide_step", (1.0, 2.0, 0.99, "advertorch")),
        # the released preset's: exactly k entries, ties to the lowest index (one launch more)
        "slide-exact-k": ("slide", "slide_step", (1.0, 2.0, 0.99, "advertorch", None, "lowest-index")),
    }


def _call(fn, name, x, x0, g, m, args):
    if name == "mifgsm":
        return fn(x, x0, g, m, *args)
    return (fn(x, x0, g, *args),)


def agreement(device: str, shapes=ODD_SHAPES, large=None) -> list[dict]:
    """One row per (step, shape): max |kernel - reference| and whether it is within TOL.

    SLIDE also runs with tied gradient magnitudes; there its selection must match exactly."""
    rows = []
    shapes = list(shapes) + ([large] if large else [])
    for name, (mod, fn_name, args) in _cases().items():
        kern = getattr(importlib.import_module(f"kernels.{mod}"), fn_name)
        ref = getattr(R, fn_name)
        for shape in shapes:
            for ties in (False, True) if mod == "slide" else (False,):
                x, x0, g, m = _inputs(shape, len(rows), device, ties)
                got = _call(kern, name, x, x0, g, m, args)
                want = _call(ref, name, x, x0, g, m, args)
                diff = max((a - b).abs().max().item() for a, b in zip(got, want))
                rows.append({"bench": "kernel-agreement", "kernel": name, "shape": list(shape), "ties": ties,
                             "max_abs_diff": diff, "ok": bool(diff <= TOL)})
    return rows


# Bytes a step must move at least, in units of the tensor's size: x, x0, g (and momentum) read,
# x (and momentum) written.
_MIN_TRAFFIC = {"linf": 4, "l2": 4, "mifgsm": 6, "slide-exact": 4, "slide-advertorch": 4, "slide-exact-k": 4}


def speed(device: str, shape=(8, 3, 448, 448), reps: int = 10) -> list[dict]:
    rows = []
    x, x0, g, m = _inputs(shape, 0, device)
    nbytes = x.numel() * x.element_size()
    if device.startswith("cuda"):
        buf = torch.empty_like(x)
        copy_s = median_time(lambda: buf.copy_(x), device, reps)
        copy_bw = 2 * nbytes / copy_s  # read + write
        rows.append({"bench": "kernel-speed", "kernel": "copy", "shape": list(shape), "ms": 1e3 * copy_s,
                     "gb_per_s": copy_bw / 1e9})
        for name, (mod, fn_name, args) in _cases().items():
            kern = getattr(importlib.import_module(f"kernels.{mod}"), fn_name)
            ref = getattr(R, fn_name)
            t_k = median_time(lambda k=kern, n=name, a=args: _call(k, n, x, x0, g, m, a), device, reps)
            t_r = median_time(lambda r=ref, n=name, a=args: _call(r, n, x, x0, g, m, a), device, reps)
            bw = _MIN_TRAFFIC[name] * nbytes / t_k
            rows.append({"bench": "kernel-speed", "kernel": name, "shape": list(shape), "ms": 1e3 * t_k,
                         "reference_ms": 1e3 * t_r, "gb_per_s": bw / 1e9, "of_copy_bandwidth": bw / copy_bw})
    rows += selection_speed(device, shape, reps)
    return rows


def selection_speed(device: str, shape, reps: int) -> list[dict]:
    """The reference's k-th largest |g| per sample: the 31-pass bit search vs torch.topk."""
    rows = []
    g = _inputs(shape, 1, device)[2].reshape(shape[0], -1)
    bits = g.abs().view(torch.int32)
    for sparsity in (0.99, 0.5):
        k = R.slide_k(g.shape[1], sparsity)
        t_search = median_time(lambda k=k: R._kth_largest_bits(bits, k), device, reps)
        t_topk = median_time(lambda k=k: torch.topk(g.abs(), k, dim=1, sorted=False).values.amin(1), device, reps)
        rows.append({"bench": "slide-selection", "device": device, "shape": list(shape), "sparsity": sparsity,
                     "search_ms": 1e3 * t_search, "topk_ms": 1e3 * t_topk, "faster": "topk" if t_topk < t_search
                     else "search"})
    return rows


def format_table(rows: list[dict]) -> str:
    out = []
    sp = [r for r in rows if r.get("bench") == "kernel-speed"]
    if sp:
        out += markdown_table(
            ["kernel", "shape", "ms", "reference ms", "GB/s", "of copy bandwidth"],
            ([r["kernel"], _shape(r), f"{r['ms']:.3f}", f"{r['reference_ms']:.3f}" if "reference_ms" in r else "",
              f"{r['gb_per_s']:.0f}", f"{r['of_copy_bandwidth']:.2f}" if "of_copy_bandwidth" in r else ""] for r in sp))
        out.append("")
    sel = [r for r in rows if r.get("bench") == "slide-selection"]
    if sel:
        out += markdown_table(
            ["SLIDE k-th largest (reference)", "device", "shape", "sparsity", "bit search ms", "topk ms", "faster"],
            (["", r["device"], _shape(r), r["sparsity"], f"{r['search_ms']:.2f}", f"{r['topk_ms']:.2f}", r["faster"]]
             for r in sel))
    return "\n".join(out)


def _shape(r: dict) -> str:
    return "x".join(map(str, r["shape"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_kernels")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}); try --device cpu", file=sys.stderr)
        return 2
    rows = []
    if a.device.startswith("cuda"):
        rows += agreement(a.device)
        rows += speed(a.device, reps=a.reps)
    else:
        for shape in ((32, 3, 64, 64), (8, 3, 224, 224), (2, 3, 448, 448)):
            rows += selection_speed(a.device, shape, a.reps)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
