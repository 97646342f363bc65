"""Batch size from a memory budget.

An attack iteration keeps every activation of one forward for the backward to the input, so its
memory grows linearly with the batch. We measure one sample's activations once per (model, image
shape) with forward hooks (device independent, no allocator statistics needed) and take as many
samples as fit the budget: 2 GiB on CPU, 70% of the free memory on CUDA. Attacks whose spec says
``jacobian`` also hold l gradients of the image per sample.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_BATCH = 256
CPU_BUDGET = 2 << 30
_CACHE: dict = {}


@torch.no_grad()
def activation_bytes(model: nn.Module, image_shape: tuple[int, ...], device: str | torch.device = "cpu") -> int:
    """Bytes of all module outputs of one forward of one sample (float32)."""
    key = (id(model), tuple(image_shape))
    if key in _CACHE:
        return _CACHE[key]
    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    if any(isinstance(m, torch.jit.ScriptModule) for m in leaves):
        # TorchScript modules take no hooks: count what autograd keeps for the backward instead.
        _CACHE[key] = _saved_bytes(model, image_shape, device)
        return _CACHE[key]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        was = model.training
        model.eval()
        model(torch.zeros(1, *image_shape, device=device))
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    _CACHE[key] = total[0]
    return total[0]


def _saved_bytes(model: nn.Module, image_shape: tuple[int, ...], device) -> int:
    """Bytes of the tensors one forward of one sample saves for the backward to the image."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    was = model.training
    model.eval()
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(1, *image_shape, device=device, requires_grad=True))
    model.train(was)
    return total[0]


def budget_bytes(device: str | torch.device) -> int:
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free * 0.7)
    return CPU_BUDGET


def auto_batch(model: nn.Module, image_shape: tuple[int, ...], *, num_labels: int, jacobian: bool,
               device: str | torch.device = "cpu", budget: int | None = None) -> int:
    """Largest batch whose activations (x3: forward, backward, workspace) and, for Jacobian attacks,
    per-label gradients fit the budget; at least 1, at most MAX_BATCH."""
    per = 3 * activation_bytes(model, image_shape, device)
    if jacobian:
        per += 2 * num_labels * math.prod(image_shape) * 4
    fit = (budget or budget_bytes(device)) // max(per, 1)
    return int(max(1, min(MAX_BATCH, fit)))
