"""What an attack does to the model, seen from the model: hooks that count the passes it makes and
mark them for torch.profiler, whatever code makes them (ours, a peer library's, yours).

A forward with gradients on whose output a backward then runs is a forward + backward pass; a
forward without one (no_grad, or never differentiated) is a forward-only pass; every further
backward through the same output (the rows of a Jacobian, as ML-DP takes them) is an extra backward.
Passes are counted in images (a forward on 5 images is 5 image-passes), so compaction and early
exits count what really ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

FORWARD, SCORING = "sml.forward", "sml.scoring"  # the profiler ranges of gradient and forward-only passes


@dataclass
class _Call:
    images: int
    backwards: int = 0


@dataclass
class PassCounter:
    """Hooks on ``model`` while in a ``with`` block; ``per_sample(batch)`` afterwards. ``mark``:
    open a torch.profiler range around every forward (FORWARD with gradients, SCORING without)."""

    model: nn.Module
    mark: bool = False
    calls: list[_Call] = field(default_factory=list)

    def __enter__(self) -> PassCounter:
        self._ranges: list = []
        self._handles = [self.model.register_forward_pre_hook(self._pre),
                         self.model.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        while self._ranges:  # a forward that raised leaves its range open
            self._ranges.pop().__exit__(None, None, None)

    def _pre(self, _module, _args) -> None:
        if self.mark:
            rf = torch.autograd.profiler.record_function(FORWARD if torch.is_grad_enabled() else SCORING)
            rf.__enter__()
            self._ranges.append(rf)

    def _post(self, _module, _args, out) -> None:
        if self.mark and self._ranges:
            if isinstance(out, torch.Tensor) and out.is_cuda:
                torch.cuda.synchronize(out.device)  # the range then holds the device's work, not the launch
            self._ranges.pop().__exit__(None, None, None)
        t = out if isinstance(out, torch.Tensor) else next((o for o in _flat(out) if isinstance(o, torch.Tensor)),
                                                             None)
        if t is None:
            return
        call = _Call(int(t.shape[0]) if t.dim() else 1)
        self.calls.append(call)
        if t.requires_grad:
            def seen(grad, call=call):
                call.backwards += 1
            t.register_hook(seen)

    def per_sample(self, batch: int) -> dict[str, float]:
        """Passes per sample of a batch of ``batch``: forward-only, forward + backward, and the
        extra backwards beyond the first through one forward."""
        fwd = sum(c.images for c in self.calls if c.backwards == 0)
        fb = sum(c.images for c in self.calls if c.backwards > 0)
        extra = sum(c.images * (c.backwards - 1) for c in self.calls if c.backwards > 1)
        return {"forward": fwd / batch, "forward_backward": fb / batch, "backward": extra / batch}


def _flat(out):
    if isinstance(out, (list, tuple)):
        return out
    if isinstance(out, dict):
        return list(out.values())
    return [out]
