"""Pure-torch reference implementations of the fused attack update steps.

These are the semantic ground truth for the Triton kernels and the CPU path of
the engine, which runs them under ``torch.compile``.  For that reason every
function here avoids data-dependent Python control flow, ``.item()`` and any
other host synchronisation: all branching is on static properties (shapes,
Python scalars, ``out is None``) and all per-sample searches run a fixed number
of iterations.

Conventions shared by every step (and by the Triton launchers, which reuse the
helpers below): inputs are float tensors of shape ``[B, ...]``; reductions are
per sample over all non-batch dims; attacks minimise a loss, so updates move
against the gradient; inputs are never modified, the result is a new tensor
unless ``out=`` is given, in which case it is written there and returned
(``out`` may be one of the inputs, e.g. ``out=x`` for an in-place iterate).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "L1_NORM_FLOOR",
    "L2_GRAD_FLOOR",
    "L2_PROJ_FLOOR",
    "MAX_FINITE_BITS",
    "SEARCH_ITERS",
    "check_same_shape",
    "l2_step",
    "linf_step",
    "mifgsm_step",
    "slide_k",
    "slide_step",
    "write_out",
]

# AdverTorch's normalize_by_pnorm small_constant: keeps an all-zero gradient
# from producing NaNs (the step then simply becomes zero).
L2_GRAD_FLOOR = 1e-6
L1_NORM_FLOOR = 1e-6
# Only guards the division in the L2-ball projection; any ||v|| this small is
# inside every sensible ball, so the value never changes a result.
L2_PROJ_FLOOR = 1e-12

# Bit pattern of +inf in float32.  For non-negative floats the int32 bit
# pattern is monotone in the value, so a search over integers in
# [0, MAX_FINITE_BITS] is an exact search over every float32 in [0, inf]: it
# needs no data range and lands on an exact float.  Both slide searches work
# this way (except tau on CPU, where torch.topk is faster): they build the
# answer's bit pattern from the top bit down (a radix-2 select), one
# counting/summing pass per bit.
MAX_FINITE_BITS = 0x7F800000
# Bits 30..0 (bit 31 is the sign, always clear for magnitudes).
SEARCH_ITERS = 31

_PROJECTIONS = ("exact", "advertorch")
# SLIDE's entries tied at the k-th largest |g|: "all" kept (the step divided among them), or
# "lowest-index": exactly k kept, ties to the lowest index (AdverTorch's topk keeps k; torch.topk's
# own tie order is undocumented, so the rule is ours).
SLIDE_TIES = ("all", "lowest-index")


def check_slide_args(x, x0, grad, *, projection: str, ties: str) -> None:
    """What both SLIDE steps (this reference and the Triton launcher) refuse alike."""
    check_same_shape(x, x0, grad)
    if projection not in _PROJECTIONS:
        raise ValueError(f"projection must be one of {_PROJECTIONS}, got {projection!r}")
    if ties not in SLIDE_TIES:
        raise ValueError(f"ties must be one of {SLIDE_TIES}, got {ties!r}")


def check_same_shape(x: torch.Tensor, *others: torch.Tensor) -> None:
    """Shape check (static under torch.compile, so no graph break or sync)."""
    for t in others:
        if t.shape != x.shape:
            raise ValueError(f"shape mismatch: {tuple(t.shape)} vs {tuple(x.shape)}")
    if x.dim() < 1:
        raise ValueError("expected a batched tensor [B, ...]")


def write_out(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return result
    # copy_ (not rebinding) so a caller-owned buffer, possibly aliasing an
    # input, receives the value; the result was fully computed beforehand.
    out.copy_(result)
    return out


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] so a per-sample scalar broadcasts against `like`."""
    return s.reshape((like.shape[0],) + (1,) * (like.dim() - 1))


def linf_step(x, x0, grad, step: float, eps: float, out=None):
    """x_new = clamp(clamp(x - step*sign(grad), x0-eps, x0+eps), 0, 1)."""
    check_same_shape(x, x0, grad)
    x_new = x - step * torch.sign(grad)
    # minimum/maximum rather than clamp(min=tensor) so eps=inf (x0 -/+ inf)
    # needs no special case.
    x_new = torch.minimum(torch.maximum(x_new, x0 - eps), x0 + eps)
    return write_out(x_new.clamp(0.0, 1.0), out)


def l2_step(x, x0, grad, step: float, eps: float, out=None):
    """Normalised-gradient L2 step, projected onto the eps-ball around x0 and [0,1]."""
    check_same_shape(x, x0, grad)
    g = _per_sample(grad)
    gnorm = torch.linalg.vector_norm(g, dim=1).clamp_min(L2_GRAD_FLOOR)
    v = _per_sample(x - x0) - step * g / gnorm[:, None]
    vnorm = torch.linalg.vector_norm(v, dim=1).clamp_min(L2_PROJ_FLOOR)
    # eps / vnorm is inf for eps=inf and 0 for eps=0, both handled by the min.
    scale = (eps / vnorm).clamp(max=1.0)
    x_new = (_per_sample(x0) + v * scale[:, None]).clamp(0.0, 1.0)
    return write_out(x_new.reshape(x.shape), out)


def mifgsm_step(x, x0, grad, momentum, step: float, eps: float, decay: float, out=None, momentum_out=None):
    """MI-FGSM: L1-normalised gradient accumulated into momentum, sign step, Linf projection."""
    check_same_shape(x, x0, grad, momentum)
    l1 = _per_sample(grad).abs().sum(dim=1).clamp_min(L1_NORM_FLOOR)
    m_new = decay * momentum + grad / _bcast(l1, grad)
    x_new = x - step * torch.sign(m_new)
    x_new = torch.minimum(torch.maximum(x_new, x0 - eps), x0 + eps).clamp(0.0, 1.0)
    return write_out(x_new, out), write_out(m_new, momentum_out)


def slide_k(numel_per_sample: int, sparsity: float) -> int:
    """Number of coordinates SLIDE keeps: round((1-sparsity)*D) clamped to [1, D].

    Python's round (half to even) matches the np.round AdverTorch uses.  Computed
    on the host from static values, so it costs no synchronisation.
    """
    if numel_per_sample < 1:
        raise ValueError("slide needs at least one element per sample")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    k = int(round((1.0 - sparsity) * numel_per_sample))
    return min(max(k, 1), numel_per_sample)


def _kth_largest_bits(bits: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the bit pattern of the k-th largest value (bits: [B, D] int32, >= 0).

    That is the largest t with count(bits >= t) >= k.  t = 0 always qualifies
    (count = D >= k), so descending from the top bit keeps a qualifying prefix
    and ends exactly on the answer.  Each step only extends the previous
    prefix, i.e. one dependency chain, which keeps inductor's generated code
    linear in the number of steps (a lo/hi bisection made it blow up).
    """
    t = torch.zeros(bits.shape[0], dtype=torch.int32, device=bits.device)
    for bit in range(SEARCH_ITERS - 1, -1, -1):
        cand = t + (1 << bit)
        ok = (bits >= cand[:, None]).sum(dim=1) >= k
        t = torch.where(ok, cand, t)
    return t


def _kth_largest_pattern(g: torch.Tensor, bits: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the bit pattern of the k-th largest |g| (bits: the patterns of |g|).

    On CPU torch.topk is 3-5x faster than the 31-pass search (bench/bench_kernels.py measures both);
    the k-th largest value is exact either way, ties included.  Elsewhere the search, which
    inductor fuses into a few reductions under torch.compile.  The device is static, so the
    choice costs nothing under torch.compile.
    """
    if g.device.type == "cpu":
        kth = torch.topk(g.abs(), k, dim=1, sorted=False).values.amin(dim=1)
        return kth.view(torch.int32)
    return _kth_largest_bits(bits, k)


def _l1_mass(av: torch.Tensor, cap: torch.Tensor | None, theta: torch.Tensor) -> torch.Tensor:
    """sum_j min(max(|v_j| - theta, 0), cap_j) per row; non-increasing in theta."""
    t = (av - theta[:, None]).clamp_min(0.0)
    if cap is not None:
        t = torch.minimum(t, cap)
    return t.sum(dim=1)


def _l1_threshold(av: torch.Tensor, cap: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Smallest float32 theta >= 0 with _l1_mass(theta) <= eps, per row.

    Descends to L = the largest pattern whose mass still exceeds eps, then
    steps one ulp up, so the result is always on the feasible side and the
    projection never overshoots eps.  Patterns above +inf (NaNs) are never
    accepted; theta = 0 when the point is already inside the ball.
    """
    B = av.shape[0]
    outside = _l1_mass(av, cap, torch.zeros(B, dtype=av.dtype, device=av.device)) > eps
    t = torch.zeros(B, dtype=torch.int32, device=av.device)
    for bit in range(SEARCH_ITERS - 1, -1, -1):
        cand = t + (1 << bit)
        over = (_l1_mass(av, cap, cand.view(torch.float32)) > eps) & (cand <= MAX_FINITE_BITS)
        t = torch.where(over, cand, t)
    return torch.where(outside, t + 1, 0).view(torch.float32)


def slide_step(x, x0, grad, step: float, eps: float, sparsity: float, projection: str, out=None,
               ties: str = "all"):
    """SLIDE / sparse L1 descent step (Tramer & Boneh), see module docs of kernels.dispatch."""
    check_slide_args(x, x0, grad, projection=projection, ties=ties)
    if grad.dtype != torch.float32:
        # The selection reinterprets |grad| as int32 bit patterns.
        raise TypeError(f"slide_step needs a float32 gradient, got {grad.dtype}")
    k = slide_k(math.prod(x.shape[1:]), sparsity)

    g = _per_sample(grad)
    # abs() clears the sign bit, so these patterns are >= 0 and order like |g|.
    bits = g.abs().view(torch.int32)
    tau = _kth_largest_pattern(g, bits, k)
    # Raising the threshold to the smallest positive pattern is exactly the
    # "zero gradients are never selected" rule; ties at tau are all kept.
    thr = tau.clamp_min(1)[:, None]
    mask = bits >= thr
    if ties == "lowest-index":
        # AdverTorch's topk keeps exactly k entries (then drops zeros): of the entries tied at the
        # k-th value, those of lowest index fill the k - count(|g| > tau) places left.
        tied = bits == thr
        room = k - (bits > thr).sum(dim=1, keepdim=True)
        mask = (bits > thr) | (tied & (torch.cumsum(tied.to(torch.int32), dim=1) <= room))
    nnz = mask.sum(dim=1).clamp_min(1).to(g.dtype)
    e = torch.sign(g) * mask / nnz[:, None]

    x0f = _per_sample(x0)
    v = _per_sample(x - x0) - step * e
    av = v.abs()
    if projection == "exact":
        # Room to the box face v is heading for; clamp_min(0) only matters for
        # x0 outside [0,1], where no movement that way is allowed.
        cap = torch.where(v > 0, 1.0 - x0f, x0f).clamp_min(0.0)
    else:
        cap = None
    theta = _l1_threshold(av, cap, eps)
    mag = (av - theta[:, None]).clamp_min(0.0)
    if cap is not None:
        mag = torch.minimum(mag, cap)
    x_new = (x0f + torch.sign(v) * mag).clamp(0.0, 1.0)
    return write_out(x_new.reshape(x.shape), out)
