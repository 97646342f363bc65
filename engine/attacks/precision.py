"""The arithmetic of the model's forward and backward in an attack (``AttackConfig.precision``).

fp32   the model as it is, untouched: the study's setting and every run made before this option.
       (On CUDA, PyTorch's defaults let cuDNN convolutions use TF32 already; fp32 leaves them be.)
tf32   CUDA: matmuls too on TF32 tensor cores, inputs channels_last. No TF32 on CPU: fp32 there.
bf16   the model under bfloat16 autocast (CPU and CUDA), inputs channels_last on CUDA; its logits
       come back as float32, so losses, steps and bookkeeping stay fp32.

channels_last: cuDNN's tensor-core convolutions work in NHWC; an NCHW input is transposed around
every convolution. Only the input is converted (convolutions then keep the layout): the model's
weights are shared with other runs and stay as they are. The gradient then comes back NHWC; the
update kernels make their operands contiguous.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class Reduced(nn.Module):
    """``model`` with its forward under the given precision; logits returned as float32."""

    def __init__(self, model: nn.Module, precision: str, device_type: str) -> None:
        super().__init__()
        self.model, self.precision, self.device_type = model, precision, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device_type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision != "bf16":
            return self.model(x)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


def bf16_supported(device_type: str) -> tuple[bool, str]:
    """(whether bf16 autocast runs here, why not): tried on a one-layer model, not guessed."""
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = nn.Linear(4, 2).to(device_type)(torch.ones(1, 4, device=device_type))
        return out.dtype == torch.bfloat16, "" if out.dtype == torch.bfloat16 else "autocast left fp32"
    except Exception as e:  # noqa: BLE001 - whatever the backend raises is the reason
        return False, f"{type(e).__name__}: {e}"


@contextmanager
def applied(model: nn.Module, precision: str, device: torch.device | str):
    """The model to attack with under ``precision``; for fp32 ``model`` itself, nothing changed.
    TF32 is a process-wide switch, so it is set for the attack and restored afterwards."""
    dev = torch.device(device).type
    if precision == "fp32" or (precision == "tf32" and dev != "cuda"):  # no TF32 off CUDA
        yield model
        return
    # One wrapper per (model, precision, device), kept on the model itself (it dies with it):
    # compiled iterations are cached by the model object's identity, so a new wrapper per batch
    # would recompile every batch.
    per_model = model.__dict__.setdefault("_precision_wrappers", {})
    if (precision, dev) not in per_model:
        per_model[(precision, dev)] = Reduced(model, precision, dev)
    wrapped = per_model[(precision, dev)]
    if precision == "bf16":
        yield wrapped
        return
    old = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield wrapped
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cudnn.allow_tf32 = old[1]
