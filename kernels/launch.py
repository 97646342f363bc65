"""Launch helpers shared by the Triton kernel modules: input checks, the output
buffer, copying back into ``out``.

Plain torch code with no triton import. The kernel modules import it instead of
the router (kernels.dispatch), which imports them: no cycle.
"""

from __future__ import annotations

import torch

__all__ = ["as_f32_contiguous", "finish", "result_buffer"]



def as_f32_contiguous(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The kernels index flat memory, so they need dense float32 inputs."""
    res = []
    for t in tensors:
        if t.dtype != torch.float32:
            raise TypeError(f"Triton kernels take float32 tensors, got {t.dtype}")
        if t.device != tensors[0].device:
            raise ValueError("all tensors must be on the same device")
        res.append(t.contiguous())
    return res


def result_buffer(like: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Where the kernel writes: `out` itself when the kernel can address it directly.

    Writing straight into an `out` that aliases an input is safe because every
    kernel reads an element before the same program writes it, and no program
    ever reads an element another program writes.
    """
    if (
        out is not None
        and out.is_contiguous()
        and out.dtype == torch.float32
        and out.shape == like.shape
        and out.device == like.device
    ):
        return out
    return torch.empty_like(like)


def finish(res: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None or res is out:
        return res
    out.copy_(res)
    return out
