"""Triton kernel for the Linf (PGD / I-FGSM) sign step.

Purely elementwise (no per-sample reduction), so it runs over the flattened
batch as one 1-D grid: one read of x, x0, grad and one write per element.
Importing this module requires triton; kernels.dispatch imports it lazily.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .launch import as_f32_contiguous, finish, result_buffer
from .reference import check_same_shape

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _linf_kernel(x_ptr, x0_ptr, g_ptr, out_ptr, N, step, eps, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    # int64 offsets: B*D can exceed 2**31 for large batches of large images.
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    x0 = tl.load(x0_ptr + offs, mask=m, other=0.0)
    g = tl.load(g_ptr + offs, mask=m, other=0.0)
    sgn = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
    xn = x - step * sgn
    # Same order as the reference (ball first, then image box); with eps=inf
    # the bounds are -/+inf and drop out without a special case.
    xn = tl.minimum(tl.maximum(xn, x0 - eps), x0 + eps)
    xn = tl.minimum(tl.maximum(xn, 0.0), 1.0)
    tl.store(out_ptr + offs, xn, mask=m)


def linf_step(x, x0, grad, step: float, eps: float, out=None):
    """Triton launcher; same contract as kernels.reference.linf_step."""
    check_same_shape(x, x0, grad)
    xc, x0c, gc = as_f32_contiguous(x, x0, grad)
    res = result_buffer(xc, out)
    n = xc.numel()
    if n > 0:
        _linf_kernel[(triton.cdiv(n, BLOCK),)](
            xc, x0c, gc, res, n, float(step), float(eps), BLOCK=BLOCK, num_warps=NUM_WARPS
        )
    return finish(res, out)
