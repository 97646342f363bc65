"""Fused per-iteration update kernels for the attacks.

The public API lives in kernels.dispatch (re-exported here): each step runs the
Triton kernel for CUDA float32 tensors and the torch reference
(kernels.reference) otherwise.  Importing this package does not import triton.
"""

from .dispatch import backend_for, l2_step, linf_step, mifgsm_step, slide_step

__all__ = ["backend_for", "l2_step", "linf_step", "mifgsm_step", "slide_step"]
