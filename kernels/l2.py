"""Triton kernels for the normalised-gradient L2 step (FGM / L2 PGD).

Two norms are needed per sample, ||g|| and ||v|| with v = d - a*g,
d = x - x0, a = step/max(||g||, 1e-6), and the second depends on the first.
Rather than a reduction pass per norm, one pass collects the three sums
S_dd = <d,d>, S_dg = <d,g>, S_gg = <g,g>, from which
||v||^2 = S_dd - 2a S_dg + a^2 S_gg.  That expansion only loses accuracy
when ||v|| << ||d|| + step, and then ||v|| is far inside any ball the attack
uses (||d|| <= eps for PGD iterates), so the projection is inactive and the
error never reaches the result.

Layout: a (block, sample) grid, two launches.  Phase 1 writes one partial
triple per (sample, block); phase 2 has every program re-reduce its sample's
few partials (D/BLOCK of them, ~75 for 224x224x3) before its elementwise
update.  Compared with one program per sample this keeps the whole GPU busy
for the small batches attacks use, and compared with atomics it is
deterministic and needs no zero-initialised accumulator.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import as_f32_contiguous, finish, result_buffer
from .reference import L2_GRAD_FLOOR, L2_PROJ_FLOOR, check_same_shape

BLOCK = 2048
PBLOCK = 128  # partials reduced per loop trip in phase 2
NUM_WARPS = 8


@triton.jit
def _load3(x_ptr, x0_ptr, g_ptr, idx, m):
    """x, x0 and g of one block (masked lanes read 0)."""
    return (tl.load(x_ptr + idx, mask=m, other=0.0), tl.load(x0_ptr + idx, mask=m, other=0.0),
            tl.load(g_ptr + idx, mask=m, other=0.0))


@triton.jit
def _l2_partials_kernel(x_ptr, x0_ptr, g_ptr, part_ptr, D, NB, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    b = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < D
    base = b.to(tl.int64) * D
    x, x0, g = _load3(x_ptr, x0_ptr, g_ptr, base + offs, m)
    d = x - x0
    p = part_ptr + (b.to(tl.int64) * NB + blk) * 3
    tl.store(p, tl.sum(d * d, axis=0))
    tl.store(p + 1, tl.sum(d * g, axis=0))
    tl.store(p + 2, tl.sum(g * g, axis=0))


@triton.jit
def _l2_apply_kernel(x_ptr, x0_ptr, g_ptr, part_ptr, out_ptr, D, NB, step, eps, grad_floor, proj_floor,
                     BLOCK: tl.constexpr, PBLOCK: tl.constexpr):
    blk = tl.program_id(0)
    b = tl.program_id(1)
    pbase = part_ptr + b.to(tl.int64) * NB * 3
    acc_dd = tl.zeros([PBLOCK], dtype=tl.float32)
    acc_dg = tl.zeros([PBLOCK], dtype=tl.float32)
    acc_gg = tl.zeros([PBLOCK], dtype=tl.float32)
    for start in range(0, NB, PBLOCK):
        i = start + tl.arange(0, PBLOCK)
        pm = i < NB
        acc_dd += tl.load(pbase + i * 3, mask=pm, other=0.0)
        acc_dg += tl.load(pbase + i * 3 + 1, mask=pm, other=0.0)
        acc_gg += tl.load(pbase + i * 3 + 2, mask=pm, other=0.0)
    s_dd = tl.sum(acc_dd, axis=0)
    s_dg = tl.sum(acc_dg, axis=0)
    s_gg = tl.sum(acc_gg, axis=0)
    # The _rn variants: tl.sqrt and '/' may lower to approximate instructions;
    # these are per-program scalars, so IEEE rounding costs nothing.
    a = tl.math.div_rn(step, tl.maximum(tl.sqrt_rn(s_gg), grad_floor))
    vv = tl.maximum(s_dd - 2.0 * a * s_dg + a * a * s_gg, 0.0)
    vnorm = tl.maximum(tl.sqrt_rn(vv), proj_floor)
    # eps=inf -> inf -> 1 (no projection); eps=0 -> 0 (x_new = x0).
    scale = tl.minimum(tl.math.div_rn(eps, vnorm), 1.0)

    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < D
    base = b.to(tl.int64) * D
    x, x0, g = _load3(x_ptr, x0_ptr, g_ptr, base + offs, m)
    v = (x - x0) - a * g
    xn = tl.minimum(tl.maximum(x0 + v * scale, 0.0), 1.0)
    tl.store(out_ptr + base + offs, xn, mask=m)


def l2_step(x, x0, grad, step: float, eps: float, out=None):
    """Triton launcher; same contract as kernels.reference.l2_step."""
    check_same_shape(x, x0, grad)
    xc, x0c, gc = as_f32_contiguous(x, x0, grad)
    res = result_buffer(xc, out)
    B = xc.shape[0]
    D = math.prod(xc.shape[1:])
    if B > 0 and D > 0:
        nb = triton.cdiv(D, BLOCK)
        part = torch.empty((B, nb, 3), dtype=torch.float32, device=xc.device)
        grid = (nb, B)
        _l2_partials_kernel[grid](xc, x0c, gc, part, D, nb, BLOCK=BLOCK, num_warps=NUM_WARPS)
        _l2_apply_kernel[grid](
            xc,
            x0c,
            gc,
            part,
            res,
            D,
            nb,
            float(step),
            float(eps),
            L2_GRAD_FLOOR,
            L2_PROJ_FLOOR,
            BLOCK=BLOCK,
            PBLOCK=PBLOCK,
            num_warps=NUM_WARPS,
        )
    return finish(res, out)
