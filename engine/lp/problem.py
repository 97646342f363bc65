"""One call's data and counters, shared by the sifting levels and the final check (see engine.lp.solve):
the row-scaled problem, the rounding bound of a pass A^T lam, the timed passes over A and the Farkas test."""

from __future__ import annotations

import time

import numpy as np

from engine.lp.common import _gemv64
from engine.lp.master import _Master

# Infeasible <=> s* = 0.  s is compared with an a-priori upper bound s_ub >= s* (from lam = e_k / -b_k): a
# lam with ||A^T lam||_1 <= _INFEAS_RTOL s_ub (-b^T lam) proves t* >= 1 / (_INFEAS_RTOL s_ub), a perturbation
# 1e8 times the natural scale -- a Farkas certificate up to the LP tolerance (1e-9), which is all that
# floating point can tell apart from an exact one.
_INFEAS_RTOL = 1e-8


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
        self.s_ub = 0.0  # set by the caller: an upper bound on s* (see _INFEAS_RTOL)

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


def _farkas(P: _Problem, lam: np.ndarray, g: np.ndarray | None) -> bool:
    """Is lam a Farkas certificate (A^T lam ~ 0, b^T lam < 0) up to the tolerance of _INFEAS_RTOL?"""
    nb = float(-P.b @ lam)
    if not nb > 0:
        return False
    if g is None:
        g = P.atl(P.A, lam)
    return float(np.abs(g).sum()) <= _INFEAS_RTOL * P.s_ub * nb
