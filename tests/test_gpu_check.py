"""`make gpu-check` (bench/gpu_check.py, sections in bench/gpu/) where there is no GPU: one line and exit 0,
bad input exit 2, and (slow) a smoke run of every section on CPU with tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, env_extra=None, timeout=120):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **(env_extra or {}))  # no GPU, even on a GPU machine
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_without_cuda_one_line_and_exit_0():
    p = _run()
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], p.stdout
    assert p.stderr == ""


def test_script_form_without_cuda():
    """As a file too (python3 bench/gpu_check.py), which must put the repository on the path itself."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH="")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], cwd="/", env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "no CUDA device" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("args", [("--budget", "0"), ("--device", "tpu"), ("--device", "cpu"), ("--bogus",),
                                  ("--only", "kernels,warp-drive")])
def test_bad_input_one_line_exit_2(args):
    p = _run(*args)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("gpu-check: error:"), p.stderr


def test_table_marks_failures_and_skips():
    from bench.gpu.table import format_table

    table = format_table([
        {"check": "attack", "model": "m", "item": "pgd", "eager_floor": 1.234, "compiled_floor": 1.02,
         "mode": "default", "compile_s": 41.6, "peak_gib": 2.5},
        {"check": "kernel vs reference", "item": "slide-exact", "agreement": "max |diff| 6.0e-08", "ok": False},
        {"check": "sweep --local", "note": "skipped: 10 s of the budget left, needs ~60"},
    ]).splitlines()
    assert table[2] == "| attack | m | pgd | 1.23 | 1.02 (default) | 42 | 2.50 | |"
    assert "FAILED max |diff|" in table[3]
    assert table[4].endswith("| skipped: 10 s of the budget left, needs ~60 |")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_run_on_cpu(tmp_path):
    """Every section on CPU with tiny models (kernels interpreted): 4-8 minutes on 2 cores."""
    out = tmp_path / "rows.json"
    p = _run("--device", "cpu", "--tiny", "--budget", "1200", "--json", str(out), timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = json.loads(out.read_text())
    checks = {r["check"] for r in rows}
    assert {"kernel vs reference", "attack", "sweep --local", "compiled step", "meta"} <= checks, checks
    assert not [r for r in rows if r.get("ok") is False or "error" in r]
    assert all(r["eager_floor"] > 0 for r in rows if r["check"] == "attack")
