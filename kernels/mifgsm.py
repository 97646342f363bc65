"""Triton kernels for the MI-FGSM momentum step.

Same two-phase (block, sample) layout as kernels.l2, for the same reasons
(full-GPU occupancy at small batch sizes, deterministic sums without atomics):
phase 1 writes per-block partial ||g||_1, phase 2 re-reduces its sample's
partials and does the fused momentum update + Linf sign step, writing both
the new iterate and the new momentum in the same pass.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import as_f32_contiguous, finish, result_buffer
from .reference import L1_NORM_FLOOR, check_same_shape

BLOCK = 2048
PBLOCK = 128
NUM_WARPS = 8


@triton.jit
def _l1_partials_kernel(g_ptr, part_ptr, D, NB, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    b = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < D
    g = tl.load(g_ptr + b.to(tl.int64) * D + offs, mask=m, other=0.0)
    tl.store(part_ptr + b.to(tl.int64) * NB + blk, tl.sum(tl.abs(g), axis=0))


@triton.jit
def _mifgsm_apply_kernel(x_ptr, x0_ptr, g_ptr, mom_ptr, part_ptr, out_ptr, mom_out_ptr, D, NB, step, eps,
                         decay, l1_floor, BLOCK: tl.constexpr, PBLOCK: tl.constexpr):
    blk = tl.program_id(0)
    b = tl.program_id(1)
    pbase = part_ptr + b.to(tl.int64) * NB
    acc = tl.zeros([PBLOCK], dtype=tl.float32)
    for start in range(0, NB, PBLOCK):
        i = start + tl.arange(0, PBLOCK)
        acc += tl.load(pbase + i, mask=i < NB, other=0.0)
    l1 = tl.maximum(tl.sum(acc, axis=0), l1_floor)

    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < D
    base = b.to(tl.int64) * D
    x = tl.load(x_ptr + base + offs, mask=m, other=0.0)
    x0 = tl.load(x0_ptr + base + offs, mask=m, other=0.0)
    g = tl.load(g_ptr + base + offs, mask=m, other=0.0)
    mom = tl.load(mom_ptr + base + offs, mask=m, other=0.0)
    # IEEE division like the reference: the step only sees sign(m'), but the
    # momentum itself is carried across iterations, so keep it faithful.  The
    # kernel is bandwidth-bound, the slower divide is free.
    m_new = decay * mom + tl.math.div_rn(g, l1)
    sgn = tl.where(m_new > 0, 1.0, tl.where(m_new < 0, -1.0, 0.0))
    xn = x - step * sgn
    xn = tl.minimum(tl.maximum(xn, x0 - eps), x0 + eps)
    xn = tl.minimum(tl.maximum(xn, 0.0), 1.0)
    tl.store(out_ptr + base + offs, xn, mask=m)
    tl.store(mom_out_ptr + base + offs, m_new, mask=m)


def mifgsm_step(x, x0, grad, momentum, step: float, eps: float, decay: float, out=None, momentum_out=None):
    """Triton launcher; same contract as kernels.reference.mifgsm_step."""
    check_same_shape(x, x0, grad, momentum)
    xc, x0c, gc, mc = as_f32_contiguous(x, x0, grad, momentum)
    res = result_buffer(xc, out)
    mres = result_buffer(mc, momentum_out)
    if mres is res:
        # out and momentum_out being the same buffer would race; give the
        # momentum its own scratch (finish() still copies it over, as the
        # reference's sequential copy_ calls would).
        mres = torch.empty_like(mc)
    B = xc.shape[0]
    D = math.prod(xc.shape[1:])
    if B > 0 and D > 0:
        nb = triton.cdiv(D, BLOCK)
        part = torch.empty((B, nb), dtype=torch.float32, device=xc.device)
        grid = (nb, B)
        _l1_partials_kernel[grid](gc, part, D, nb, BLOCK=BLOCK, num_warps=NUM_WARPS)
        _mifgsm_apply_kernel[grid](
            xc,
            x0c,
            gc,
            mc,
            part,
            res,
            mres,
            D,
            nb,
            float(step),
            float(eps),
            float(decay),
            L1_NORM_FLOOR,
            BLOCK=BLOCK,
            PBLOCK=PBLOCK,
            num_warps=NUM_WARPS,
        )
    return finish(res, out), finish(mres, momentum_out)
