"""Triton kernel for the SLIDE / sparse L1 descent step.

One program per sample, looping over the sample's blocks.  A step needs two
exact per-sample searches (the k-th largest |g|, then the soft threshold theta
of the L1/box projection), each a sequence of dependent global reductions.
With a (sample, block) grid every reduction would be a separate launch (about
20 of them, each tiny); with one program per sample the whole search runs in
one launch with its state in registers, and a sample's data (~1.8 MB for
224x224x3 x {x, x0, g}) stays in L2 across the passes.  The price is
parallelism limited to B programs, acceptable for a kernel whose job is to
replace a sort.

Both searches build the answer's float32 bit pattern from the top down, like
the reference, but 4 bits per pass: each pass evaluates the predicate at all
16 values of the next hex digit at once (a [BLOCK, 16] tile per block), so a
31-bit answer takes 8 passes instead of 31.  The extra compares are free in a
bandwidth-bound loop.  The passes are:

  8 x count(|g| >= t) over 16 candidates          -> tau (exact k-th largest)
  8 x sum(min(max(|v|-theta, 0), cap)) over 16     -> theta (feasible end)
  1 x write x0 + sign(v) * min(max(|v|-theta, 0), cap)

v = (x - x0) - step * e is recomputed from x, x0, g in every theta pass
instead of being stored: a scratch tensor would cost a write plus the same
reads, so recomputing is never slower.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from .launch import as_f32_contiguous, finish, result_buffer
from .reference import MAX_FINITE_BITS, check_same_shape, slide_k

BLOCK = 256  # elements per tile; the candidate tiles are BLOCK x 16
NUM_WARPS = 4
_PROJECTIONS = ("exact", "advertorch")
# Globals read inside a jit function must be tl.constexpr objects (the
# interpreter does not enforce this, the compiler does).
_MAXB = tl.constexpr(MAX_FINITE_BITS)


@triton.jit
def _stepped(x_ptr, x0_ptr, g_ptr, idx, m, thr, inv, step):
    """x0 and the stepped perturbation v = (x - x0) - step * e of one block, e the L1-normalised
    signs of the selected (|g| >= the threshold's bits) gradient entries."""
    x = tl.load(x_ptr + idx, mask=m, other=0.0)
    x0 = tl.load(x0_ptr + idx, mask=m, other=0.0)
    g = tl.load(g_ptr + idx, mask=m, other=0.0)
    sel = tl.abs(g).to(tl.int32, bitcast=True) >= thr
    e = tl.where(sel & (g > 0), inv, tl.where(sel & (g < 0), -inv, 0.0))
    return x0, (x - x0) - step * e


@triton.jit
def _candidates(prefix, p, lanes):
    """Pass p of a radix search over float bit patterns: the 16 candidates prefix + digit << shift.
    Digits that would push a candidate above +inf are invalid; they are clamped first so the
    candidate arithmetic never overflows int32."""
    shift = 28 - 4 * p
    lim = (_MAXB - prefix) >> shift
    return shift, lanes <= lim, prefix + (tl.minimum(lanes, lim) << shift)


@triton.jit
def _slide_kernel(x_ptr, x0_ptr, g_ptr, out_ptr, D, k, step, eps, EXACT: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    base = b.to(tl.int64) * D
    lanes = tl.arange(0, 16)

    # ---- tau: largest pattern t with count(|g| bits >= t) >= k -------------
    # t = 0 qualifies (count = D >= k), so the prefix always qualifies and the
    # best digit of each pass is the largest qualifying one.
    prefix = 0
    for p in tl.static_range(8):
        shift, valid, cand = _candidates(prefix, p, lanes)
        cnt = tl.zeros([16], dtype=tl.int32)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < D
            g = tl.load(g_ptr + base + offs, mask=m, other=0.0)
            # -1 for padding lanes: below every candidate, so never counted.
            bits = tl.where(m, tl.abs(g).to(tl.int32, bitcast=True), -1)
            cnt += tl.sum((bits[:, None] >= cand[None, :]).to(tl.int32), axis=0)
        digit = tl.max(tl.where(valid & (cnt >= k), lanes, 0), axis=0)
        prefix = prefix + (digit << shift)
    # Zero gradients are never selected: the threshold is at least the
    # smallest positive pattern.  Its count was computed in the last pass (the
    # last pass's candidates are prefix_7 + 0..15 and include both tau and 1
    # when tau = 0), so no extra pass is needed for the support size.
    thr = tl.maximum(prefix, 1)
    nnz = tl.sum(tl.where(valid & (cand == thr), cnt, 0), axis=0)
    # e = sign(g) * mask / nnz; +-1/nnz is exact-rounded as in the reference.
    inv = tl.math.div_rn(1.0, tl.maximum(nnz, 1).to(tl.float32))

    # ---- theta: L = largest pattern with mass(L) > eps, theta = L + 1 ulp --
    lt = 0
    over0 = 0
    for p in tl.static_range(8):
        shift, valid, cand = _candidates(lt, p, lanes)
        theta_c = cand.to(tl.float32, bitcast=True)
        mass = tl.zeros([16], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < D
            x0, v = _stepped(x_ptr, x0_ptr, g_ptr, base + offs, m, thr, inv, step)
            t = tl.maximum(tl.abs(v)[:, None] - theta_c[None, :], 0.0)
            if EXACT:
                cap = tl.maximum(tl.where(v > 0, 1.0 - x0, x0), 0.0)
                t = tl.minimum(t, cap[:, None])
            # Padding lanes have v = 0, hence t = 0; the where is belt and braces.
            mass += tl.sum(tl.where(m[:, None], t, 0.0), axis=0)
        over = valid & (mass > eps)
        digit = tl.max(tl.where(over, lanes, 0), axis=0)
        lt = lt + (digit << shift)
        if p == 0:
            # Candidate 0 of the first pass is theta = 0: already inside?
            over0 = tl.max(tl.where(lanes == 0, over.to(tl.int32), 0), axis=0)
    theta = tl.where(over0 > 0, lt + 1, 0).to(tl.float32, bitcast=True)

    # ---- write ------------------------------------------------------------
    for start in range(0, D, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < D
        x0, v = _stepped(x_ptr, x0_ptr, g_ptr, base + offs, m, thr, inv, step)
        mag = tl.maximum(tl.abs(v) - theta, 0.0)
        if EXACT:
            mag = tl.minimum(mag, tl.maximum(tl.where(v > 0, 1.0 - x0, x0), 0.0))
        delta = tl.where(v > 0, mag, -mag)
        xn = tl.minimum(tl.maximum(x0 + delta, 0.0), 1.0)
        tl.store(out_ptr + base + offs, xn, mask=m)


def slide_step(x, x0, grad, step: float, eps: float, sparsity: float, projection: str = "exact", out=None):
    """Triton launcher; same contract as kernels.reference.slide_step."""
    check_same_shape(x, x0, grad)
    if projection not in _PROJECTIONS:
        raise ValueError(f"projection must be one of {_PROJECTIONS}, got {projection!r}")
    xc, x0c, gc = as_f32_contiguous(x, x0, grad)
    B = xc.shape[0]
    D = math.prod(xc.shape[1:])
    k = slide_k(D, sparsity)
    res = result_buffer(xc, out)
    if B > 0 and D > 0:
        _slide_kernel[(B,)](
            xc,
            x0c,
            gc,
            res,
            D,
            k,
            float(step),
            float(eps),
            EXACT=projection == "exact",
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
    return finish(res, out)
