"""Triton kernels for the SLIDE / sparse L1 descent step.

A step needs two exact per-sample searches: tau, the k-th largest |g|, then theta, the soft
threshold of the L1(/box) projection.  Both build the answer's float32 bit pattern from the top
down, like the reference, but 4 bits per pass: a pass evaluates the predicate at all 16 values of
the next hex digit at once (a [BLOCK, 16] tile), so a 31-bit answer takes 8 passes, not 31:

  8 x count(|g| >= t) over 16 candidates          -> tau (exact k-th largest)
 (1 x count(|g| == thr) per chunk                  -> where each chunk's ties rank, ties="lowest-index")
  8 x sum(min(max(|v|-theta, 0), cap)) over 16     -> theta (feasible end)
  1 x write x0 + sign(v) * min(max(|v|-theta, 0), cap)

Each pass is one launch over a (chunk, sample) grid, so a small batch of large images still fills
the GPU (one program per sample, the old layout, kept 8 of an H200's 132 SMs busy for a batch of
8).  A program writes its chunk's 16 partial counts / masses; the next pass's programs first add up
their sample's partials (a few KB, from L2) to decide the digit, then do their own chunk.  All
programs of a sample add the same partials in the same order, so they agree on every digit; counts
are integers, so tau is exact whatever the split.  The program of chunk 0 also records the prefix it
started from in ``state[b, pass]``, which the next pass adds its digit to: one column per pass, so no
program ever reads a value that a program of the same launch writes.  17 launches and no atomics, so
the result is deterministic.

v = (x - x0) - step * e is recomputed from x, x0, g in every theta pass instead of being stored:
a scratch tensor would cost a write plus the same reads, so recomputing is never slower.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import as_f32_contiguous, finish, result_buffer
from .reference import MAX_FINITE_BITS, check_slide_args, slide_k

BLOCK = 512  # elements per tile; the candidate tiles are BLOCK x 16
PBLOCK = 64  # partial rows added per trip when a pass reduces the previous one's
# About this many programs per launch: several per SM on the largest GPUs; more would only make
# every program re-add more partials (each program adds its sample's NB x 16 of them) ...
TARGET_PROGRAMS = 1024
# ... which is also why a sample is split into at most this many chunks (<= 8 KB of partials a
# program adds per pass; for a batch of 1 large image, 128 programs still occupy most SMs).
MAX_CHUNKS = 128
NUM_WARPS = 4
PASSES = 8  # 4 bits per pass, 31 bits
# Globals read inside a jit function must be tl.constexpr objects (the
# interpreter does not enforce this, the compiler does).
_MAXB = tl.constexpr(MAX_FINITE_BITS)
_NP = tl.constexpr(PASSES)


@triton.jit
def _candidates(prefix, p, lanes):
    """Pass p of a radix search over float bit patterns: the 16 candidates prefix + digit << shift.
    Digits that would push a candidate above +inf are invalid; they are clamped first so the
    candidate arithmetic never overflows int32."""
    shift = 28 - 4 * p
    lim = (_MAXB - prefix) >> shift
    return shift, lanes <= lim, prefix + (tl.minimum(lanes, lim) << shift)


@triton.jit
def _totals(part_ptr, row0, NB, ACC: tl.constexpr, PBLOCK: tl.constexpr):
    """Sum over a sample's NB partial rows (16 wide, starting at row row0): the pass's totals."""
    lanes = tl.arange(0, 16)
    acc = tl.zeros([PBLOCK, 16], dtype=ACC)
    for start in range(0, NB, PBLOCK):
        rows = start + tl.arange(0, PBLOCK)
        ptrs = part_ptr + (row0 + rows)[:, None] * 16 + lanes[None, :]
        acc += tl.load(ptrs, mask=(rows < NB)[:, None], other=0)
    return tl.sum(acc, axis=0)


@triton.jit
def _decide(part_ptr, state_ptr, b, B, NB, p, col, limit, ACC: tl.constexpr, PBLOCK: tl.constexpr):
    """The prefix after pass p: the prefix before it (state column col) plus the pass's digit, the
    largest valid one whose total over the sample's partials exceeds limit (0 if none); also the
    pass's candidates and totals."""
    lanes = tl.arange(0, 16)
    prefix = tl.load(state_ptr + b * 2 * _NP + col)
    shift, valid, cand = _candidates(prefix, p, lanes)
    tot = _totals(part_ptr, (b.to(tl.int64) + p * B) * NB, NB, ACC, PBLOCK)
    digit = tl.max(tl.where(valid & (tot > limit), lanes, 0), axis=0)
    return prefix + (digit << shift), valid, cand, tot


@triton.jit
def _chunk(b, blk, D, CHUNK):
    """(base, lo, hi): sample b starts at offset base (int64: B * D may pass 2^31); program blk of the
    sample's grid row covers its elements [lo, hi)."""
    lo = blk * CHUNK
    return b.to(tl.int64) * D, lo, tl.minimum(lo + CHUNK, D)


@triton.jit
def _selection(cpart_ptr, state_ptr, b, B, NB, k, PBLOCK: tl.constexpr):
    """(thr, nnz): selected entries have |g| bits >= thr, nnz of them.  Needs all 8 tau passes.

    tau = largest pattern t with count(|g| >= t) >= k, i.e. count > k-1.  Zero gradients are never
    selected, so thr = max(tau, 1); its count is among the last pass's candidates (prefix_7 + 0..15,
    which include both tau and 1 when tau = 0), so the support size needs no extra pass."""
    tau, valid, cand, cnt = _decide(cpart_ptr, state_ptr, b, B, NB, _NP - 1, _NP - 1, k - 1, tl.int32, PBLOCK)
    thr = tl.maximum(tau, 1)
    # e = sign(g) * mask / (entries kept); +-1/kept is exact-rounded as in the reference (_tie_place).
    return thr, tl.sum(tl.where(valid & (cand == thr), cnt, 0), axis=0)


@triton.jit
def _stepped(x_ptr, x0_ptr, g_ptr, idx, m, thr, inv, step, seen, room, EXACT_K: tl.constexpr):
    """(x0, the stepped perturbation v = (x - x0) - step * e, ties seen so far) of one tile, e the
    L1-normalised signs of the selected gradient entries: |g| bits >= the threshold's; with
    EXACT_K, of those tied at the threshold only the ones whose rank among the sample's ties (in
    index order; ``seen`` before this tile) is <= ``room``."""
    x = tl.load(x_ptr + idx, mask=m, other=0.0)
    x0 = tl.load(x0_ptr + idx, mask=m, other=0.0)
    g = tl.load(g_ptr + idx, mask=m, other=0.0)
    bits = tl.where(m, tl.abs(g).to(tl.int32, bitcast=True), -1)
    sel = bits >= thr
    if EXACT_K:
        tied = (bits == thr).to(tl.int32)
        rank = seen + tl.cumsum(tied, axis=0)
        sel = (bits > thr) | ((tied > 0) & (rank <= room))
        seen += tl.sum(tied, axis=0)
    e = tl.where(sel & (g > 0), inv, tl.where(sel & (g < 0), -inv, 0.0))
    return x0, (x - x0) - step * e, seen


@triton.jit
def _tie_place(tpart_ptr, b, blk, NB, k, nnz, thr, EXACT_K: tl.constexpr, PBLOCK: tl.constexpr):
    """(ties before this chunk, ties that may be kept, 1 / entries kept) of sample b: with EXACT_K
    exactly min(k, nnz) entries are kept, the count(|g| > thr) = nnz - ties above the tie and
    k minus those of the ties; without it every tie (nnz entries). Reads the tie pass's counts."""
    if EXACT_K:
        rows = tl.arange(0, PBLOCK)
        before = tl.zeros([PBLOCK], dtype=tl.int32)
        total = tl.zeros([PBLOCK], dtype=tl.int32)
        for start in range(0, NB, PBLOCK):
            c = tl.load(tpart_ptr + b.to(tl.int64) * NB + start + rows, mask=start + rows < NB, other=0)
            before += tl.where(start + rows < blk, c, 0)
            total += c
        ties = tl.sum(total, axis=0)
        kept = tl.minimum(nnz, k)
        return tl.sum(before, axis=0), k - (nnz - ties), tl.math.div_rn(1.0, tl.maximum(kept, 1).to(tl.float32))
    return tl.full([], 0, tl.int32), tl.full([], 0, tl.int32), tl.math.div_rn(1.0, tl.maximum(nnz, 1).to(tl.float32))


# The pass index is a plain argument (not specialised on its value): one compiled kernel serves all
# eight passes instead of three (p = 0 and p = 1 would each get their own).
@triton.jit(do_not_specialize=["p"])
def _tau_pass_kernel(g_ptr, cpart_ptr, state_ptr, B, D, NB, CHUNK, k, p, BLOCK: tl.constexpr,
                     PBLOCK: tl.constexpr):
    """Tau pass p: this chunk's count(|g| bits >= candidate) for the pass's 16 candidates."""
    blk = tl.program_id(0)
    b = tl.program_id(1)
    lanes = tl.arange(0, 16)
    # Typed zero: both branches must give the same type to the compiler.
    if p == 0:
        prefix = tl.full([], 0, tl.int32)
    else:
        prefix, _, _, _ = _decide(cpart_ptr, state_ptr, b, B, NB, p - 1, p - 1, k - 1, tl.int32, PBLOCK)
    if blk == 0:
        tl.store(state_ptr + b * 2 * _NP + p, prefix)
    _, _, cand = _candidates(prefix, p, lanes)
    base, lo, hi = _chunk(b, blk, D, CHUNK)
    cnt = tl.zeros([16], dtype=tl.int32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < hi
        g = tl.load(g_ptr + base + offs, mask=m, other=0.0)
        # -1 for padding lanes: below every candidate, so never counted.
        bits = tl.where(m, tl.abs(g).to(tl.int32, bitcast=True), -1)
        cnt += tl.sum((bits[:, None] >= cand[None, :]).to(tl.int32), axis=0)
    tl.store(cpart_ptr + ((b.to(tl.int64) + p * B) * NB + blk) * 16 + lanes, cnt)


@triton.jit
def _tie_pass_kernel(g_ptr, cpart_ptr, state_ptr, tpart_ptr, B, D, NB, CHUNK, k, BLOCK: tl.constexpr,
                     PBLOCK: tl.constexpr):
    """Exact-k only: this chunk's count of entries tied at the threshold (|g| bits == thr), from
    which every program places its ties in the sample's index order."""
    blk = tl.program_id(0)
    b = tl.program_id(1)
    thr, _ = _selection(cpart_ptr, state_ptr, b, B, NB, k, PBLOCK)
    base, lo, hi = _chunk(b, blk, D, CHUNK)
    cnt = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + base + offs, mask=offs < hi, other=0.0)
        cnt += ((offs < hi) & (tl.abs(g).to(tl.int32, bitcast=True) == thr)).to(tl.int32)
    tl.store(tpart_ptr + b.to(tl.int64) * NB + blk, tl.sum(cnt, axis=0))


@triton.jit(do_not_specialize=["p"])
def _theta_pass_kernel(x_ptr, x0_ptr, g_ptr, cpart_ptr, mpart_ptr, state_ptr, tpart_ptr, B, D, NB, CHUNK, k, p,
                       step, eps, EXACT: tl.constexpr, EXACT_K: tl.constexpr, BLOCK: tl.constexpr,
                       PBLOCK: tl.constexpr):
    """Theta pass p: this chunk's projected mass sum(min(max(|v| - theta, 0), cap)) for the pass's
    16 candidates theta.  The search finds L, the largest pattern whose mass still exceeds eps."""
    blk = tl.program_id(0)
    b = tl.program_id(1)
    lanes = tl.arange(0, 16)
    thr, nnz = _selection(cpart_ptr, state_ptr, b, B, NB, k, PBLOCK)
    seen, room, inv = _tie_place(tpart_ptr, b, blk, NB, k, nnz, thr, EXACT_K, PBLOCK)
    if p == 0:
        lt = tl.full([], 0, tl.int32)
    else:
        lt, _, _, _ = _decide(mpart_ptr, state_ptr, b, B, NB, p - 1, _NP + p - 1, eps, tl.float32, PBLOCK)
    if blk == 0:
        tl.store(state_ptr + b * 2 * _NP + _NP + p, lt)
    _, valid, cand = _candidates(lt, p, lanes)
    theta_c = cand.to(tl.float32, bitcast=True)
    base, lo, hi = _chunk(b, blk, D, CHUNK)
    mass = tl.zeros([16], dtype=tl.float32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < hi
        x0, v, seen = _stepped(x_ptr, x0_ptr, g_ptr, base + offs, m, thr, inv, step, seen, room, EXACT_K)
        t = tl.maximum(tl.abs(v)[:, None] - theta_c[None, :], 0.0)
        if EXACT:
            cap = tl.maximum(tl.where(v > 0, 1.0 - x0, x0), 0.0)
            t = tl.minimum(t, cap[:, None])
        # Padding lanes have v = 0, hence t = 0; the where is belt and braces.
        mass += tl.sum(tl.where(m[:, None], t, 0.0), axis=0)
    tl.store(mpart_ptr + ((b.to(tl.int64) + p * B) * NB + blk) * 16 + lanes, mass)


@triton.jit
def _slide_write_kernel(x_ptr, x0_ptr, g_ptr, cpart_ptr, mpart_ptr, state_ptr, tpart_ptr, out_ptr, B, D, NB, CHUNK,
                        k, step, eps, EXACT: tl.constexpr, EXACT_K: tl.constexpr, BLOCK: tl.constexpr,
                        PBLOCK: tl.constexpr):
    blk = tl.program_id(0)
    b = tl.program_id(1)
    thr, nnz = _selection(cpart_ptr, state_ptr, b, B, NB, k, PBLOCK)
    seen, room, inv = _tie_place(tpart_ptr, b, blk, NB, k, nnz, thr, EXACT_K, PBLOCK)
    lt, _, _, _ = _decide(mpart_ptr, state_ptr, b, B, NB, _NP - 1, 2 * _NP - 1, eps, tl.float32, PBLOCK)
    # Candidate 0 of the first theta pass is theta = 0: is v already inside?  Then theta = 0, else
    # one ulp above L, so the result is on the feasible side.
    mass0 = _totals(mpart_ptr, b.to(tl.int64) * NB, NB, tl.float32, PBLOCK)
    outside = tl.sum(tl.where(tl.arange(0, 16) == 0, mass0, 0.0), axis=0) > eps
    theta = tl.where(outside, lt + 1, 0).to(tl.float32, bitcast=True)
    base, lo, hi = _chunk(b, blk, D, CHUNK)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < hi
        x0, v, seen = _stepped(x_ptr, x0_ptr, g_ptr, base + offs, m, thr, inv, step, seen, room, EXACT_K)
        mag = tl.maximum(tl.abs(v) - theta, 0.0)
        if EXACT:
            mag = tl.minimum(mag, tl.maximum(tl.where(v > 0, 1.0 - x0, x0), 0.0))
        delta = tl.where(v > 0, mag, -mag)
        xn = tl.minimum(tl.maximum(x0 + delta, 0.0), 1.0)
        tl.store(out_ptr + base + offs, xn, mask=m)


def chunking(B: int, D: int) -> tuple[int, int]:
    """(elements per program, programs per sample): about TARGET_PROGRAMS programs in all, at most
    MAX_CHUNKS per sample, each a whole number of tiles."""
    per_program = max(triton.cdiv(B * D, TARGET_PROGRAMS), triton.cdiv(D, MAX_CHUNKS))
    tiles = max(1, triton.cdiv(per_program, BLOCK))
    chunk = tiles * BLOCK
    return chunk, triton.cdiv(D, chunk)


def slide_step(x, x0, grad, step: float, eps: float, sparsity: float, projection: str, out=None,
               ties: str = "all"):
    """Triton launcher; same contract as kernels.reference.slide_step."""
    check_slide_args(x, x0, grad, projection=projection, ties=ties)
    xc, x0c, gc = as_f32_contiguous(x, x0, grad)
    B = xc.shape[0]
    D = math.prod(xc.shape[1:])
    k = slide_k(D, sparsity)
    res = result_buffer(xc, out)
    if B == 0 or D == 0:
        return finish(res, out)
    chunk, nb = chunking(B, D)
    dev = xc.device
    # One slab of partials per pass: pass p reads slab p-1 while its programs write slab p.
    cpart = torch.empty((PASSES, B, nb, 16), dtype=torch.int32, device=dev)
    mpart = torch.empty((PASSES, B, nb, 16), dtype=torch.float32, device=dev)
    # state[b, p] / state[b, PASSES + p]: the tau / theta prefix before pass p, written by chunk 0.
    state = torch.empty((B, 2 * PASSES), dtype=torch.int32, device=dev)
    grid = (nb, B)
    exact, exact_k = projection == "exact", ties == "lowest-index"
    # Exact k: each chunk's count of ties at the threshold (one more launch); unread otherwise.
    tpart = torch.zeros((B, nb), dtype=torch.int32, device=dev)
    step, eps = float(step), float(eps)
    for p in range(PASSES):
        _tau_pass_kernel[grid](gc, cpart, state, B, D, nb, chunk, k, p, BLOCK=BLOCK, PBLOCK=PBLOCK,
                               num_warps=NUM_WARPS)
    if exact_k:
        _tie_pass_kernel[grid](gc, cpart, state, tpart, B, D, nb, chunk, k, BLOCK=BLOCK, PBLOCK=PBLOCK,
                               num_warps=NUM_WARPS)
    for p in range(PASSES):
        _theta_pass_kernel[grid](xc, x0c, gc, cpart, mpart, state, tpart, B, D, nb, chunk, k, p, step, eps,
                                 EXACT=exact, EXACT_K=exact_k, BLOCK=BLOCK, PBLOCK=PBLOCK, num_warps=NUM_WARPS)
    _slide_write_kernel[grid](xc, x0c, gc, cpart, mpart, state, tpart, res, B, D, nb, chunk, k, step, eps,
                              EXACT=exact, EXACT_K=exact_k, BLOCK=BLOCK, PBLOCK=PBLOCK, num_warps=NUM_WARPS)
    return finish(res, out)
