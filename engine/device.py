"""Devices: a ``--device`` value checked against what this machine has, before anything is written."""

from __future__ import annotations

import torch

from engine.errors import UserError


def check_device(device: str) -> str:
    """``device`` if torch can use it here; else a one-line error naming the devices that exist."""
    have = ["cpu"]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have += ["cuda"] + [f"cuda:{i}" for i in range(n)] if n else []
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; this machine has: {', '.join(have)}") from None
    if dev.type == "cuda":
        if n == 0:
            raise UserError(f"device {device!r}: no CUDA device on this machine (torch {torch.__version__}, "
                            f"CUDA build {torch.version.cuda or 'none'}); this machine has: cpu")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"device {device!r}: this machine has {n} CUDA device(s): {', '.join(have[2:])}")
    elif dev.type != "cpu":
        raise UserError(f"device {device!r} is not supported; this machine has: {', '.join(have)}")
    return device
