r"""Exact solver for the MLA-LP step  ``min ||r||_inf  s.t.  A r <= b``.

MLA-LP (Zhou et al. 2020, Eq. 12) solves, per iteration and per image,

    min_{r, z}  z   s.t.  z >= r_i,  z >= -r_i   (i = 1..d),
                          grad_k^T r <= L(y*, t)_k - L(y*, f(x))_k   (k = 1..l),

i.e. with ``A`` the l x d matrix of label-loss gradients (d = 3*H*W pixels, l = 20..81 labels) and ``b`` the
loss gaps,  t* = min ||r||_inf  s.t.  A r <= b   (P).  Handed to a generic LP solver this has d + 1 columns
and l + 2d rows and does not finish for 224 x 224 images.  This module solves (P) exactly at a cost of a few
O(l d) matrix-vector products plus small LPs with l rows.

Duality (why the problem is really l-dimensional)
-------------------------------------------------
For lam >= 0 and t >= 0 the Lagrangian of (P) is  t + lam^T (A r - b).  Minimising it over ||r||_inf <= t
gives  min_r lam^T A r = -t ||A^T lam||_1  (at r = -t sign(A^T lam)), so the dual function is
t (1 - ||A^T lam||_1) - b^T lam, whose minimum over t >= 0 is  -b^T lam  if ||A^T lam||_1 <= 1 and -inf
otherwise.  Hence the dual of (P) is

    (D)   max_{lam >= 0}  -b^T lam   s.t.  ||A^T lam||_1 <= 1,

and weak duality is the one-line chain  t >= t + lam^T(A r - b) >= t (1 - ||A^T lam||_1) - b^T lam >= -b^T lam
for feasible r, lam (strong duality holds as (P) is a feasible bounded LP whenever it is feasible).  Both
sides are positively homogeneous, so  t* = 1 / s*  with  s* = min { ||A^T lam||_1 : lam >= 0, -b^T lam >= 1 }.
If b >= 0 then r = 0 is optimal (t* = 0).  (P) is infeasible iff some lam >= 0 has A^T lam = 0 and
b^T lam < 0 (Farkas), i.e. iff s* = 0.

The LP we actually solve is the LP dual of that l1 problem, the "perspective" of (P): substitute r = t v
with ||v||_inf <= 1 and s = 1/t; then A r <= b  <=>  A v <= s b, so

    (H)   s* = max s   s.t.   A v - s b <= 0,   -1 <= v_j <= 1,   s >= 0.

(H) is equivalent to (P)/Eq. 12: a feasible r with t = ||r||_inf > 0 gives the feasible point (r/t, 1/t) of
(H); conversely a feasible (v, s) with s > 0 gives r = v/s with A r <= b and ||r||_inf <= 1/s.  So
t* = 1/s*, and the optimal r is r = v*/s*.  The 2d rows |r_i| <= z of Eq. 12 became simple variable bounds
and (H) has only l general rows; its LP dual (multipliers lam of the l rows) is exactly the l1 problem above.

Optimality of (H) and primal recovery
-------------------------------------
With row multipliers lam >= 0 the reduced cost of v_j is g_j = (A^T lam)_j, so at an optimum every v_j with
g_j != 0 sits at the bound -sign(g_j), and at most l of the v_j (the basic ones, where g_j = 0) lie strictly
inside.  By complementary slackness the optimal perturbation is therefore  r_j = -t* sign((A^T lam*)_j)
wherever that is non-zero, r_j = 0 for columns of A that are exactly zero, and the few remaining columns
(g_j ~ 0) take the values of a small LP over just those variables with |r_j| <= t* -- here that small LP is
not a separate step: those columns are free variables of the restricted LP below, so r = v/s comes out of
the same solve.  The returned r is always re-verified against A r <= b in float64.

Algorithm: sifting over a sign "glob", warm-started on nested weighted subsamples
---------------------------------------------------------------------------------
Only the sign pattern of A^T lam* matters, and a lam close to lam* already fixes the sign of every column
except those with small |g_j| / ||a_j|| (the distance of lam to that column's kink).  So the restricted LP
keeps a working set W of columns free in [-1, 1] and fixes every other column at v_j = -sign(g_j) of the
current lam; the fixed columns are folded into one column c = sum_{j not in W} v_j a_j with weight
(1 - beta), beta in [0, 1] (beta > 0 only if the fixed signs are so wrong that the LP would otherwise be
infeasible: with beta = 1, (v, s) = 0 is always feasible).  That LP has l rows and |W| + 2 columns (HiGHS
dual simplex, one model whose basis is kept and updated throughout).  After each solve one product
g = A^T lam checks every fixed column: if each one's fixed value agrees with -sign(g_j) by more than the
rounding bound of g_j (float32 passes; entries inside the bound are recomputed in float64) and beta = 0,
the KKT conditions of the full (H) hold and the solution is optimal -- a combinatorial certificate, not a
tolerance on a gap.  Otherwise the disagreeing columns move into W at their new preferred bound and the LP
is re-solved from its basis (Portnoy & Koenker's "globbing" fix-up for l1 regression); s never decreases
and W only grows, so this terminates.

The first lam comes from the same problem on nested subsamples of the columns (sizes n0 = max(2000, 40 l),
4 n0, 16 n0, ..., all), drawn with probability ~ ||a_j|| (heavy-tailed gradients are dominated by a few
large pixels) and reweighted to an unbiased estimate of ||A^T lam||_1.  Each level starts from the previous
level's lam and basis, with a band of ~c sqrt(l n) uncertain columns in W, c measured on the levels before.

Why not Kelley cutting planes on (D) (the cut s = sign(A^T lam) is the glob column A s above): with d ~ 1e5
kinks, ||A^T lam||_1 is nearly smooth at the scale of the cuts, so a pure cutting-plane model needs many
rounds (each an O(l d) pass) and zig-zags in l = 80 dimensions; keeping the uncertain columns exact in W
gives the model the curvature that pure cuts lack, and the nested subsamples give it a lam that is already
accurate.  Typical cost at d = 3*448*448, l = 80 (gradient-like A, one core): 5 levels, 5-7 restricted LPs
of 1-4k columns with a few dozen simplex iterations, ~10 passes over A, 0.3-0.5 s.  Unstructured i.i.d.
Gaussian A needs a few hundred simplex iterations per level and ~2 s.  If anything fails to converge or
verify, the full (H) is solved as one LP (l rows, d columns: exact, slower) before "error" is returned.
"""

from __future__ import annotations

import math
import time

import highspy
import numpy as np

from engine.lp.common import _as_problem, _blas_single, _column_norms, _gemv64
from engine.lp.master import _Master

# Multilevel schedule: level 0 is a random subsample of `direct_max` columns solved as one LP (all columns
# free), each next level is _RHO times larger, the last one is all of A.
_DIRECT_MIN = 2000
_DIRECT_PER_ROW = 40
_RHO = 4.0
# Band of uncertain columns.  The lam of a level built on n/rho columns is off by ~sqrt(l rho / n), so about
# c sqrt(l n rho) columns of the next level (n columns) can flip sign.  c is measured on every level (how deep
# into the starting score ranking the columns that did flip reach) and averaged, as single levels are noisy;
# level 1 has no measurement yet and is cheap, so it gets a generous c.
_KFAC1 = 0.7
_KFAC_MIN = 0.3
_BAND_QUANTILE = 0.98  # a few stragglers are cheaper to fix up than a band sized for the worst one
_BAND_SAFETY = 0.7  # tuned: a fix-up round is cheaper than a wider band in every LP
_FIX_CAP_MIN = 2000  # a fix-up adds at most max(this, |W|) columns, the most clearly wrong first
_SEED = 0x5EED  # fixed subsample: results must not depend on the process (pool vs inline)
_VERIFY_RTOL = 1e-7  # accepted violation of A r <= b, relative to |b_k| + (|A| |r|)_k
# Infeasible <=> s* = 0.  s is compared with an a-priori upper bound s_ub >= s* (from lam = e_k / -b_k): a
# lam with ||A^T lam||_1 <= _INFEAS_RTOL s_ub (-b^T lam) proves t* >= 1 / (_INFEAS_RTOL s_ub), a perturbation
# 1e8 times the natural scale -- a Farkas certificate up to the LP tolerance (1e-9), which is all that
# floating point can tell apart from an exact one.
_INFEAS_RTOL = 1e-8


def _sig(g: np.ndarray) -> np.ndarray:
    """Preferred value -sign(g) of a column; +1 where g == 0 (any value is optimal there)."""
    return np.where(g > 0, -1.0, 1.0)


def _fixed_values(g: np.ndarray, active: np.ndarray) -> np.ndarray:
    v = np.where(g > 0, -1.0, np.where(g < 0, 1.0, 0.0))
    v[~active] = 0.0
    return v


class _Problem:
    """Per-call data and counters."""

    def __init__(self, A: np.ndarray, b: np.ndarray, rowmax: np.ndarray, threads: int, tol: float,
                 info: dict):
        self.A, self.b, self.rowmax = A, b, rowmax
        self.l, self.d = A.shape
        self.threads, self.tol, self.info = threads, tol, info
        self.u = float(np.finfo(A.dtype).eps)
        self.D = np.where(rowmax > 0, 1.0 / np.where(rowmax > 0, rowmax, 1.0), 1.0)
        self.Db = self.D * b
        self.lp_seconds = self.pass_seconds = 0.0
        self.rounds = self.lp_iters = self.passes = 0
        self.trace = info.setdefault("trace", [])  # per LP: (level, n, |W|, simplex its, s, beta, #wrong)

    def eps(self, nrm: np.ndarray, lam: np.ndarray) -> np.ndarray:
        # |fl(a_j^T lam) - a_j^T lam| <= gamma_l |a_j|^T |lam| <= gamma_l ||a_j|| ||lam||, gamma_l ~ l u, and
        # lam itself is rounded to the dtype of the pass: (l + 2) u, doubled for safety
        return 2.0 * (self.l + 2) * self.u * nrm * float(np.linalg.norm(lam))

    def refine(self, M, lam, gl, eps, fixed, lnrm) -> None:
        """Recompute in float64 the entries of a float32 pass whose sign its error bound leaves open.  The
        bound is worst-case (Cauchy-Schwarz) and A^T lam cancels heavily on ill-conditioned A, so such ties
        can be a sizeable fraction; in float64 only true degeneracies remain."""
        if M.dtype == np.float64:
            return
        idx = np.flatnonzero(fixed & (np.abs(gl) <= eps))
        if idx.size:
            t0 = time.perf_counter()
            for lo in range(0, idx.size, 16384):  # bounded scratch
                sl = idx[lo : lo + 16384]
                gl[sl] = lam @ M[:, sl].astype(np.float64)
            u64 = float(np.finfo(np.float64).eps)
            eps[idx] = 2.0 * (self.l + 2) * u64 * lnrm[idx] * float(np.linalg.norm(lam))
            self.pass_seconds += time.perf_counter() - t0

    def atl(self, M: np.ndarray, lam: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        g = (lam.astype(M.dtype) @ M).astype(np.float64)
        self.pass_seconds += time.perf_counter() - t0
        self.passes += 1
        return g

    def glob(self, M: np.ndarray, v: np.ndarray, exact: bool) -> np.ndarray:
        # Sub-levels only steer lam, float32 is plenty there; the top level's glob defines r: float64.
        t0 = time.perf_counter()
        c = _gemv64(M, v) if exact else (M @ v.astype(M.dtype)).astype(np.float64)
        self.pass_seconds += time.perf_counter() - t0
        self.passes += 1
        return c

    def lp(self, master: _Master) -> dict:
        t0 = time.perf_counter()
        res = master.solve()
        self.lp_seconds += time.perf_counter() - t0
        self.rounds += 1
        self.lp_iters += res["it"]
        return res


def _schedule(N: int, direct_max: int) -> list[int]:
    sizes = [N] if N <= direct_max else [direct_max]
    while sizes[-1] < N:
        nxt = int(sizes[-1] * _RHO)
        # a last step smaller than ~1.5x would cost a whole level for little gain: merge it
        sizes.append(N if nxt * 1.5 > N else nxt)
    return sizes


def _solve_levels(P: _Problem, nrm: np.ndarray, direct_max: int, max_rounds: int):
    """Multilevel sifting on (H).  Returns (x, s, lam, g) with x in [-1,1]^d (r = x/s) and g = A^T lam, or
    None if an LP failed or the round budget ran out."""
    A, l = P.A, P.l
    nzidx = np.flatnonzero(nrm > 0)
    sizes = _schedule(nzidx.size, direct_max)
    top = len(sizes) - 1
    if top > 0:
        # Nested samples with probability ~ ||a_j|| (exponential races: the n smallest E_j / ||a_j|| form a
        # weighted sample without replacement): f(lam) = sum_j |a_j^T lam| is dominated by the large columns
        # of heavy-tailed gradients, which a uniform sample would catch or miss at random.  Each level solves
        # the Horvitz-Thompson estimate sum_{j in S} |a_j^T lam| / pi_j, pi_j = 1 - exp(-||a_j|| tau).
        w = nrm[nzidx]
        keys = np.random.default_rng(_SEED).standard_exponential(nzidx.size) / w
        cuts = [n for n in sizes[:-1]]
        part = np.argpartition(keys, cuts)
        taus = [float(keys[part[n]]) for n in cuts]  # (n+1)-th smallest key: the sampling threshold
        sub = part[: sizes[top - 1]]
        lo = 0
        for n in cuts:  # sort each level's chunk by column: prefixes stay nested, the gather cache-friendly
            sub[lo:n] = np.sort(sub[lo:n])
            lo = n
        order = nzidx[sub]
        w_o = w[sub]
        # sub-levels work on a gathered copy of their columns, so that their passes cost O(l n), not O(l d)
        Ap = np.take(A, order, axis=1)
        nrm_o = nrm[order]
    P.info.update(levels=len(sizes), band=[], size=[])

    depths: list[float] = []  # measured band depths (units of sqrt(l n rho)) of the levels so far
    master = _Master(P.Db, P.threads, P.tol)
    res = g_full = gband = score = None
    unit = 1.0
    for lev, n in enumerate(sizes):
        is_top = lev == top
        if is_top:  # level space: original column ids
            M, lnrm, active, wt = A, nrm, nrm > 0, None
        else:  # level space: positions 0..n-1 of Ap, i.e. columns order[:n]
            M, lnrm, active = Ap[:, :n], nrm_o[:n], np.ones(n, dtype=bool)
            wt = 1.0 / -np.expm1(-w_o[:n] * taus[lev])  # 1 / inclusion probability
        # one pass of A^T lam serves both the check of this level and the band of the next one
        Mnext = Ap[:, : sizes[lev + 1]] if lev + 1 < top else A

        if lev == 0:
            W = np.flatnonzero(active)
            sig = np.ones(W.size)
            v = np.zeros(M.shape[1])
            c = np.zeros(l)
            master.add(P.D[:, None] * M[:, W], np.ones(W.size) if wt is None else wt[W])
        else:
            if is_top:
                W = order[W]  # positions -> column ids: same columns, same model order
                gband = g_full
            else:
                gband = g_full[:n]
            unit = math.sqrt(l * n * n / sizes[lev - 1])
            cdepth = _BAND_SAFETY * float(np.mean(depths)) if depths else _KFAC1
            K = int(min(n, max(4 * l, max(_KFAC_MIN, cdepth) * unit)))
            P.info["band"].append(K)
            score = np.abs(gband) / np.where(lnrm > 0, lnrm, 1.0)  # distance of lam to a_j's kink
            score[~active] = np.inf
            cand = np.argpartition(score, K - 1)[:K] if K < score.size else np.flatnonzero(active)
            cand = cand[np.isfinite(score[cand])]
            # new working set: the band plus the basic columns (kept in place with their status); nonbasic
            # columns that left the band go into the glob
            keep = res["col_basic"] | np.isin(W, cand)
            master.delete(~keep)
            W, sig = W[keep], sig[keep]
            new = np.setdiff1d(cand, W, assume_unique=True)
            snew = _sig(gband[new])
            master.add((P.D[:, None] * M[:, new]) * snew, np.ones(new.size))
            W = np.concatenate([W, new])
            sig = np.concatenate([sig, snew])
            master.set_bounds(np.ones(W.size) if wt is None else wt[W])
            v = _fixed_values(gband, active)
            v[W] = 0.0
            c = P.glob(M, v if wt is None else v * wt, exact=is_top)
            master.set_glob(P.D * c)
        while True:
            if P.rounds >= max_rounds:
                P.info["stopped"] = "max_rounds"
                return None
            res = P.lp(master)
            if not res["ok"]:
                P.info["stopped"] = f"restricted LP: {res['status']}"
                return None
            lam = np.maximum(P.D * res["lam_scaled"], 0.0)
            g_full = P.atl(Mnext, lam)
            if res["s"] <= 1e-6 * P.s_ub and _farkas(P, lam, g_full if Mnext is A else None):
                return "infeasible"
            if is_top:
                gl = g_full
            else:
                gl = g_full[order[:n]] if lev + 1 == top else g_full[:n]
            eps = P.eps(lnrm, lam)
            beta = res["beta"]
            fixed = active.copy()
            fixed[W] = False
            P.refine(M, lam, gl, eps, fixed, lnrm)
            # A fixed column is right iff its value (1-beta) v_j equals -sign(g_j) wherever |g_j| > eps_j.
            # Ties (|g_j| <= eps_j) cannot be certified in this arithmetic, so they are sent to W as well.
            wrong = fixed & ((v * gl > -eps) | ((beta > 1e-9) & (np.abs(gl) > eps)))
            nw = int(np.count_nonzero(wrong))
            P.trace.append((lev, n, int(W.size), res["it"], res["s"], beta, nw))
            if nw == 0:
                break
            # Portnoy-Koenker fix-up: move the wrong columns into W at their new preferred bound and out of
            # the glob.  The previous solution stays feasible (the moved columns may keep their old values),
            # so s never decreases, and as W only grows the loop terminates.
            Mi = np.flatnonzero(wrong)
            cap = max(_FIX_CAP_MIN, W.size)
            if Mi.size > cap:  # partial pricing: the most clearly wrong (largest |g|/||a||) first
                Mi = np.sort(Mi[np.argpartition(-np.abs(gl[Mi]) / lnrm[Mi], cap - 1)[:cap]])
            Mm = M[:, Mi]
            if is_top:
                c = c - _gemv64(Mm, v[Mi])
                wMi = np.ones(Mi.size)
            else:
                wMi = wt[Mi]
                c = c - (Mm @ (v[Mi] * wMi).astype(M.dtype)).astype(np.float64)
            v[Mi] = 0.0
            snew = _sig(gl[Mi])
            master.add((P.D[:, None] * Mm) * snew, wMi)
            master.set_glob(P.D * c)
            W = np.concatenate([W, Mi])
            sig = np.concatenate([sig, snew])
        P.info["size"].append(int(W.size))
        if is_top:
            x = (1.0 - res["beta"]) * v
            x[W] = sig * np.clip(res["u"], -1.0, 1.0)  # basic values may overshoot a bound by the tolerance
            return x, res["s"], lam, g_full
        if lev > 0:
            # measured band depth: how far down this level's starting score ranking the columns that did flip
            # sign reach, in units of sqrt(l n rho) (the expected scaling, so levels can be averaged)
            flipped = np.sign(gl) != np.sign(gband)
            if np.any(flipped):
                tau = np.quantile(score[flipped], _BAND_QUANTILE)
                depths.append(np.count_nonzero(score <= tau) / unit)
    return None  # pragma: no cover


def _solve_direct(P: _Problem, nrm: np.ndarray):
    """Fallback: the whole of (H) as one LP over all non-zero columns (exact; l rows, d columns)."""
    W = np.flatnonzero(nrm > 0)
    master = _Master(P.Db, P.threads, P.tol)
    master.add(P.D[:, None] * P.A[:, W], np.ones(W.size))
    res = P.lp(master)
    if not res["ok"]:
        return None
    lam = np.maximum(P.D * res["lam_scaled"], 0.0)
    x = np.zeros(P.d)
    x[W] = np.clip(res["u"], -1.0, 1.0)
    return x, res["s"], lam, P.atl(P.A, lam)


def _farkas(P: _Problem, lam: np.ndarray, g: np.ndarray | None) -> bool:
    """Is lam a Farkas certificate (A^T lam ~ 0, b^T lam < 0) up to the tolerance of _INFEAS_RTOL?"""
    nb = float(-P.b @ lam)
    if not nb > 0:
        return False
    if g is None:
        g = P.atl(P.A, lam)
    return float(np.abs(g).sum()) <= _INFEAS_RTOL * P.s_ub * nb


def _finish(P: _Problem, nrm: np.ndarray, out, bound):
    """(x, s, lam, g) -> (r, t, status) after checking r against A r <= b in float64; None if it fails."""
    zeros = np.zeros(P.d)
    if isinstance(out, str):  # certified inside the level loop
        return zeros, math.inf, out
    x, s, lam, g = out
    A, b = P.A, P.b
    if not (s > _INFEAS_RTOL * P.s_ub) or _farkas(P, lam, g):
        return zeros, math.inf, "infeasible"
    r = x / s
    t = float(np.max(np.abs(r))) if r.size else 0.0
    Ar, Aabs = _gemv64(A, r, with_abs=True)
    viol = Ar - b
    rel = viol / np.maximum(np.abs(b) + Aabs, 1e-300)
    P.info["max_violation"] = float(np.max(viol))
    P.info["max_rel_violation"] = float(np.max(rel))
    if not np.max(rel) <= _VERIFY_RTOL:
        return None
    f = float(np.abs(g).sum())  # lower bound t >= -b^T lam / ||A^T lam||_1 (weak duality)
    P.info["gap"] = (t - float(-b @ lam) / f) / t if f > 0 and t > 0 else 0.0
    if bound is not None and t > bound * (1 + 1e-9):
        return zeros, t, "infeasible"
    return r, t, "optimal"


def solve_linf_lp(
    A,
    b,
    *,
    bound: float | None = None,
    tol: float = 1e-9,
    max_rounds: int = 60,
    threads: int = 1,
    direct_max: int | None = None,
    info: dict | None = None,
) -> tuple[np.ndarray, float, str]:
    """Solve ``min ||r||_inf  s.t.  A r <= b`` exactly (method: module docstring).

    A: (l, d) array (float32 is kept and read with float32 BLAS; everything that decides the answer -- the
    LPs, the sum of the fixed columns, the final check -- is float64).  b: (l,).
    bound: optional box |r_j| <= bound (the original MLA-LP code uses 1).  The unboxed optimum has all
    |r_j| <= t*, so the box only matters through t* <= bound.
    tol: HiGHS primal/dual feasibility tolerance (clipped to [1e-10, 1e-7]).
    max_rounds: cap on the number of restricted LPs before falling back to one direct LP.
    threads: HiGHS threads.  The solver's own BLAS calls run single-threaded during the call (threadpoolctl,
    process-wide while it runs): they are memory-bound matrix-vector products.  HiGHS has one scheduler per
    process, restarted when the thread count changes: threads that solve concurrently must agree on it.
    direct_max: problems with at most this many non-zero columns are solved as one LP; larger ones start
    from a random subsample of that many columns (default max(2000, 40 l)).
    info: if given, a dict filled with diagnostics (rounds = restricted LPs solved, levels, lp_iters,
    passes over A, lp_seconds, pass_seconds, seconds, band/size per level, gap, max_violation, method).

    Returns (r, objective, status): r (d,) float64 and objective = ||r||_inf for "optimal"; for "infeasible"
    r = 0 and objective = inf, or the unboxed optimum t* when only the bound is exceeded; for "error: ..."
    r = 0 and objective = nan.
    """
    t_start = time.perf_counter()
    A, b = _as_problem(A, b)
    if bound is not None and not (math.isfinite(bound) and bound >= 0):
        raise ValueError(f"bound must be a finite number >= 0, got {bound}")
    info = {} if info is None else info
    info.update(rounds=0, levels=0, lp_iters=0, passes=0, method="trivial")
    l, d = A.shape
    zeros = np.zeros(d)
    with _blas_single():
        nrm = _column_norms(A)  # also rejects non-finite A
        if l == 0 or bool(np.all(b >= 0)):
            info["seconds"] = time.perf_counter() - t_start
            return zeros, 0.0, "optimal"  # r = 0 satisfies A r <= b
        rowmax = np.maximum(A.max(axis=1), -A.min(axis=1)).astype(np.float64) if d else np.zeros(l)
        if np.any((rowmax == 0) & (b < 0)):  # a zero row with b_k < 0 reads 0 <= b_k < 0
            info["seconds"] = time.perf_counter() - t_start
            return zeros, math.inf, "infeasible"
        # zero rows with b_k >= 0 stay in the LP: their row reads -s b_k <= 0, always satisfied
        P = _Problem(A, b, rowmax, threads, tol, info)
        neg = b < 0  # s* <= ||a_k||_1 / -b_k <= max_j |a_kj| N / -b_k for every violated row k
        P.s_ub = float(np.min(rowmax[neg] * max(1, np.count_nonzero(nrm)) / -b[neg]))
        if direct_max is None:
            direct_max = max(_DIRECT_MIN, _DIRECT_PER_ROW * l)
        direct_max = max(int(direct_max), 1)
        info["method"] = "sifting"
        try:
            out = _solve_levels(P, nrm, direct_max, int(max_rounds))
            if out is not None:
                fin = _finish(P, nrm, out, bound)
                if fin is not None:
                    return _done(P, t_start, *fin)
                info["stopped"] = "verification"
        except highspy.HighsError as e:  # pragma: no cover - numerical trouble inside HiGHS
            info["stopped"] = repr(e)
        # Something did not converge or verify: solve (H) in one piece, exact but O(l d) columns in HiGHS.
        info["method"] = "direct"
        out = _solve_direct(P, nrm)
        if out is None:
            return _done(P, t_start, zeros, math.nan, "error: HiGHS failed on the direct LP")
        fin = _finish(P, nrm, out, bound)
        if fin is None:
            return _done(P, t_start, zeros, math.nan,
                         f"error: solution failed verification (max violation {info['max_violation']:.3g})")
        return _done(P, t_start, *fin)


def _done(P: _Problem, t_start: float, r, t, status):
    P.info.update(rounds=P.rounds, lp_iters=P.lp_iters, passes=P.passes, lp_seconds=P.lp_seconds,
                  pass_seconds=P.pass_seconds, seconds=time.perf_counter() - t_start)
    return r, t, status
