"""Public entry points for the fused attack update steps.

Each function picks a backend per call (see :func:`backend_for`): the Triton
kernel for CUDA float32 tensors when triton is importable, otherwise the torch
reference.  ``SML_KERNELS`` overrides the choice: ``torch`` always uses the
reference, ``triton`` always uses the kernels (on CPU tensors that only works
when the kernel modules were first imported with ``TRITON_INTERPRET=1``),
``auto`` / unset is the default rule.  The variable is read on every call so a
test or a benchmark can flip it without re-importing anything.

Semantics (per sample b, reductions over all non-batch dims, float32, scalars
are Python floats, attacks minimise so steps go against the gradient):

- ``linf_step``: clamp(clamp(x - step*sign(g), x0-eps, x0+eps), 0, 1).
- ``l2_step``: v = (x-x0) - step*g/max(||g||_2, 1e-6), scaled into the L2 ball
  of radius eps, then x0+v clamped to [0, 1].
- ``mifgsm_step``: m' = decay*m + g/max(||g||_1, 1e-6), then the Linf sign step
  on m'.  Returns (x_new, m').
- ``slide_step``: SLIDE / sparse L1 descent.  Keep the k = round((1-sparsity)*D)
  largest |g| (all ties at the k-th value, or with ``ties="lowest-index"`` exactly k,
  ties to the lowest index; never zeros), step along their
  L1-normalised signs, then project onto {||delta||_1 <= eps} intersected with
  the [0,1] box ("exact") or onto the L1 ball then clamp ("advertorch").
  ``projection`` has no default here, nor in kernels.reference and kernels.slide: the attack's
  config (engine.attacks.gradient.SLIDEConfig, "advertorch", the study's tool) is the one place
  that chooses it, so no caller can get the other projection by leaving the argument out.

On CPU these wrappers trace into a single graph under torch.compile (dynamo
folds the environment lookup into a guard), so the engine may compile either
them or kernels.reference.  The Triton path is meant to be called eagerly: the
launchers allocate and pick grids on the host.

It must stay importable without triton, so it imports the Triton modules only
when a step is routed to them; the launch helpers those modules share live in
kernels.launch, so they never import this router back.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache

import torch

from . import reference

__all__ = ["backend_for", "l2_step", "linf_step", "mifgsm_step", "slide_step"]

_ENV = "SML_KERNELS"
_MODES = ("auto", "torch", "triton")


@lru_cache(maxsize=1)
def triton_available() -> bool:
    # Only asked once a CUDA tensor shows up (or SML_KERNELS forces it), so the
    # ~1 s import is never paid on CPU-only runs.  A real import rather than
    # find_spec: a triton that is installed but broken must fall back too.
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _mode() -> str:
    mode = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{_ENV} must be one of {_MODES}, got {mode!r}")
    return mode


def backend_for(tensor: torch.Tensor) -> str:
    """'triton' or 'torch': the backend a step on `tensor` would use now."""
    mode = _mode()
    if mode != "auto":
        return mode
    if tensor.is_cuda and tensor.dtype == torch.float32 and triton_available():
        return "triton"
    return "torch"


def _use_triton(x: torch.Tensor) -> bool:
    if backend_for(x) != "triton":
        return False
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        # Compiled Triton kernels cannot read host memory; fail with the fix
        # rather than with a pointer error from inside triton.
        raise RuntimeError(
            f"{_ENV}=triton with a {x.device} tensor needs TRITON_INTERPRET=1 in the environment "
            "before triton is first imported"
        )
    return True


def _launcher(module: str, name: str):
    # The Triton modules import triton (heavy, and absent on some machines): load
    # them on the first step routed there; sys.modules makes later calls a lookup.
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def linf_step(x, x0, grad, step: float, eps: float, out=None):
    if _use_triton(x):
        return _launcher("linf", "linf_step")(x, x0, grad, step, eps, out=out)
    return reference.linf_step(x, x0, grad, step, eps, out=out)


def l2_step(x, x0, grad, step: float, eps: float, out=None):
    if _use_triton(x):
        return _launcher("l2", "l2_step")(x, x0, grad, step, eps, out=out)
    return reference.l2_step(x, x0, grad, step, eps, out=out)


def mifgsm_step(x, x0, grad, momentum, step: float, eps: float, decay: float, out=None, momentum_out=None):
    if _use_triton(x):
        fn = _launcher("mifgsm", "mifgsm_step")
    else:
        fn = reference.mifgsm_step
    return fn(x, x0, grad, momentum, step, eps, decay, out=out, momentum_out=momentum_out)


def slide_step(x, x0, grad, step: float, eps: float, sparsity: float, projection: str, out=None,
               ties: str = "all"):
    if _use_triton(x):
        fn = _launcher("slide", "slide_step")
    else:
        fn = reference.slide_step
    return fn(x, x0, grad, step, eps, sparsity, projection=projection, out=out, ties=ties)
