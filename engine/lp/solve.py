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
from engine.lp.problem import _INFEAS_RTOL, _farkas, _Problem
from engine.lp.sifting import default_direct_max, sift

_VERIFY_RTOL = 1e-7  # accepted violation of A r <= b, relative to |b_k| + (|A| |r|)_k


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
            direct_max = default_direct_max(l)
        direct_max = max(int(direct_max), 1)
        info["method"] = "sifting"
        try:
            out = sift(P, nrm, direct_max, int(max_rounds))
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
