"""Multilevel sifting on (H), the core of the exact solver (the method and its proofs: engine.lp.solve's
docstring).  One level at a time, from a weighted subsample of the columns up to all of A:

1. the level's columns (`_Sifting.level`): a gathered prefix of the nested sample, or A itself on top;
2. its working set: all columns on level 0; above it a band of the columns nearest to a sign change under
   the last lam, plus the basic columns of the warm basis (`start_level`);
3. the other columns fixed at their preferred bound and folded into one glob column (`fold_fixed_columns`);
4. restricted LP, one pass A^T lam, the fixed columns' signs checked against it (`wrong_columns`), the wrong
   ones moved into the working set (`fix_up`), until none is wrong: a KKT certificate (`sift`);
5. how deep into the band the signs did move, which sizes the next level's band (`measure_band_depth`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.lp.common import _gemv64
from engine.lp.master import _Master
from engine.lp.problem import _farkas, _Problem

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


def default_direct_max(l: int) -> int:
    return max(_DIRECT_MIN, _DIRECT_PER_ROW * l)


def _sig(g: np.ndarray) -> np.ndarray:
    """Preferred value -sign(g) of a column; +1 where g == 0 (any value is optimal there)."""
    return np.where(g > 0, -1.0, 1.0)


def _fixed_values(g: np.ndarray, active: np.ndarray) -> np.ndarray:
    v = np.where(g > 0, -1.0, np.where(g < 0, 1.0, 0.0))
    v[~active] = 0.0
    return v


def _schedule(N: int, direct_max: int) -> list[int]:
    sizes = [N] if N <= direct_max else [direct_max]
    while sizes[-1] < N:
        nxt = int(sizes[-1] * _RHO)
        # a last step smaller than ~1.5x would cost a whole level for little gain: merge it
        sizes.append(N if nxt * 1.5 > N else nxt)
    return sizes


class _Sample:
    """Nested samples with probability ~ ||a_j|| (exponential races: the n smallest E_j / ||a_j|| form a
    weighted sample without replacement): f(lam) = sum_j |a_j^T lam| is dominated by the large columns of
    heavy-tailed gradients, which a uniform sample would catch or miss at random.  Each level solves the
    Horvitz-Thompson estimate sum_{j in S} |a_j^T lam| / pi_j, pi_j = 1 - exp(-||a_j|| tau)."""

    def __init__(self, A: np.ndarray, nrm: np.ndarray, nzidx: np.ndarray, sizes: list[int]):
        w = nrm[nzidx]
        keys = np.random.default_rng(_SEED).standard_exponential(nzidx.size) / w
        cuts = list(sizes[:-1])
        part = np.argpartition(keys, cuts)
        self.taus = [float(keys[part[n]]) for n in cuts]  # (n+1)-th smallest key: the sampling threshold
        sub = part[: sizes[-2]]
        lo = 0
        for n in cuts:  # sort each level's chunk by column: prefixes stay nested, the gather cache-friendly
            sub[lo:n] = np.sort(sub[lo:n])
            lo = n
        self.order = nzidx[sub]  # column ids; level k uses the prefix order[:sizes[k]]
        self.w = w[sub]
        # sub-levels work on a gathered copy of their columns, so that their passes cost O(l n), not O(l d)
        self.Ap = np.take(A, self.order, axis=1)
        self.nrm = nrm[self.order]


@dataclass
class _Level:
    """The columns of one level.  Top: original column ids of A; below: positions 0..n-1 of the sample."""

    lev: int
    n: int
    is_top: bool
    M: np.ndarray  # the level's columns
    lnrm: np.ndarray  # their norms
    active: np.ndarray  # non-zero columns
    wt: np.ndarray | None  # 1 / inclusion probability (None on top: every column counts once)
    Mnext: np.ndarray  # one pass of A^T lam serves both the check of this level and the band of the next


class _Sifting:
    """The state carried from LP to LP and from level to level: the warm restricted LP (`master`), its
    working set W with each column's flip `sig`, the fixed values v of the other columns and their glob
    column c, the last solution and pass g_full = A^T lam (over the next level's columns)."""

    def __init__(self, P: _Problem, nrm: np.ndarray, direct_max: int, max_rounds: int):
        self.P, self.nrm, self.max_rounds = P, nrm, max_rounds
        nzidx = np.flatnonzero(nrm > 0)
        self.sizes = _schedule(nzidx.size, direct_max)
        self.top = len(self.sizes) - 1
        self.sample = _Sample(P.A, nrm, nzidx, self.sizes) if self.top > 0 else None
        P.info.update(levels=len(self.sizes), band=[], size=[])
        self.depths: list[float] = []  # measured band depths (units of sqrt(l n rho)) of the levels so far
        self.master = _Master(P.Db, P.threads, P.tol)
        self.res = self.lam = self.g_full = self.gl = self.gband = self.score = None
        self.unit = 1.0

    def run(self):
        """(x, s, lam, g) with x in [-1,1]^d (r = x/s) and g = A^T lam; "infeasible"; or None if an LP
        failed or the round budget ran out."""
        for lev, n in enumerate(self.sizes):
            L = self.level(lev, n)
            if lev == 0:
                self.start_first_level(L)
            else:
                self.start_level(L)
            outcome = self.sift(L)
            if outcome != "certified":
                return outcome
            self.P.info["size"].append(int(self.W.size))
            if L.is_top:
                return self.answer()
            if lev > 0:
                self.measure_band_depth()
        return None  # pragma: no cover

    def level(self, lev: int, n: int) -> _Level:
        A, S = self.P.A, self.sample
        if lev == self.top:
            M, lnrm, active, wt = A, self.nrm, self.nrm > 0, None
        else:
            M, lnrm, active = S.Ap[:, :n], S.nrm[:n], np.ones(n, dtype=bool)
            wt = 1.0 / -np.expm1(-S.w[:n] * S.taus[lev])
        Mnext = S.Ap[:, : self.sizes[lev + 1]] if lev + 1 < self.top else A
        return _Level(lev, n, lev == self.top, M, lnrm, active, wt, Mnext)

    def start_first_level(self, L: _Level) -> None:
        """Level 0: every column free, nothing fixed."""
        P = self.P
        self.W = np.flatnonzero(L.active)
        self.sig = np.ones(self.W.size)
        self.v = np.zeros(L.M.shape[1])
        self.c = np.zeros(P.l)
        self.master.add(P.D[:, None] * L.M[:, self.W], np.ones(self.W.size) if L.wt is None else L.wt[self.W])

    def start_level(self, L: _Level) -> None:
        if L.is_top:
            self.W = self.sample.order[self.W]  # positions -> column ids: same columns, same model order
            self.gband = self.g_full
        else:
            self.gband = self.g_full[: L.n]
        cand = self.band(L)
        self.rebuild_working_set(L, cand)
        self.fold_fixed_columns(L)

    def band(self, L: _Level) -> np.ndarray:
        """The K columns nearest to their kink under the last lam (distance |g_j| / ||a_j||)."""
        P = self.P
        self.unit = math.sqrt(P.l * L.n * L.n / self.sizes[L.lev - 1])
        cdepth = _BAND_SAFETY * float(np.mean(self.depths)) if self.depths else _KFAC1
        K = int(min(L.n, max(4 * P.l, max(_KFAC_MIN, cdepth) * self.unit)))
        P.info["band"].append(K)
        score = self.score = np.abs(self.gband) / np.where(L.lnrm > 0, L.lnrm, 1.0)
        score[~L.active] = np.inf
        cand = np.argpartition(score, K - 1)[:K] if K < score.size else np.flatnonzero(L.active)
        return cand[np.isfinite(score[cand])]

    def rebuild_working_set(self, L: _Level, cand: np.ndarray) -> None:
        """New working set: the band plus the basic columns (kept in place with their status); nonbasic
        columns that left the band go into the glob."""
        P, master = self.P, self.master
        keep = self.res["col_basic"] | np.isin(self.W, cand)
        master.delete(~keep)
        self.W, self.sig = self.W[keep], self.sig[keep]
        new = np.setdiff1d(cand, self.W, assume_unique=True)
        snew = _sig(self.gband[new])
        master.add((P.D[:, None] * L.M[:, new]) * snew, np.ones(new.size))
        self.W = np.concatenate([self.W, new])
        self.sig = np.concatenate([self.sig, snew])
        master.set_bounds(np.ones(self.W.size) if L.wt is None else L.wt[self.W])

    def fold_fixed_columns(self, L: _Level) -> None:
        """Every column outside W at its preferred bound, summed into the glob column c."""
        self.v = _fixed_values(self.gband, L.active)
        self.v[self.W] = 0.0
        self.c = self.P.glob(L.M, self.v if L.wt is None else self.v * L.wt, exact=L.is_top)
        self.master.set_glob(self.P.D * self.c)

    def sift(self, L: _Level) -> str | None:
        """Restricted LPs and fix-ups until every fixed column is certified: "certified", "infeasible", or
        None (an LP failed or the round budget ran out)."""
        P = self.P
        while True:
            if P.rounds >= self.max_rounds:
                P.info["stopped"] = "max_rounds"
                return None
            res = self.res = P.lp(self.master)
            if not res["ok"]:
                P.info["stopped"] = f"restricted LP: {res['status']}"
                return None
            lam = self.lam = np.maximum(P.D * res["lam_scaled"], 0.0)
            self.g_full = P.atl(L.Mnext, lam)
            if res["s"] <= 1e-6 * P.s_ub and _farkas(P, lam, self.g_full if L.Mnext is P.A else None):
                return "infeasible"
            if L.is_top:
                self.gl = self.g_full
            else:
                self.gl = self.g_full[self.sample.order[: L.n]] if L.lev + 1 == self.top else self.g_full[: L.n]
            wrong = self.wrong_columns(L)
            nw = int(np.count_nonzero(wrong))
            P.trace.append((L.lev, L.n, int(self.W.size), res["it"], res["s"], res["beta"], nw))
            if nw == 0:
                return "certified"
            self.fix_up(L, wrong)

    def wrong_columns(self, L: _Level) -> np.ndarray:
        """A fixed column is right iff its value (1-beta) v_j equals -sign(g_j) wherever |g_j| > eps_j.
        Ties (|g_j| <= eps_j) cannot be certified in this arithmetic, so they are sent to W as well."""
        P, gl = self.P, self.gl
        eps = P.eps(L.lnrm, self.lam)
        beta = self.res["beta"]
        fixed = L.active.copy()
        fixed[self.W] = False
        P.refine(L.M, self.lam, gl, eps, fixed, L.lnrm)
        return fixed & ((self.v * gl > -eps) | ((beta > 1e-9) & (np.abs(gl) > eps)))

    def fix_up(self, L: _Level, wrong: np.ndarray) -> None:
        """Portnoy-Koenker fix-up: move the wrong columns into W at their new preferred bound and out of the
        glob.  The previous solution stays feasible (the moved columns may keep their old values), so s
        never decreases, and as W only grows the loop terminates."""
        P, gl = self.P, self.gl
        Mi = np.flatnonzero(wrong)
        cap = max(_FIX_CAP_MIN, self.W.size)
        if Mi.size > cap:  # partial pricing: the most clearly wrong (largest |g|/||a||) first
            Mi = np.sort(Mi[np.argpartition(-np.abs(gl[Mi]) / L.lnrm[Mi], cap - 1)[:cap]])
        Mm = L.M[:, Mi]
        if L.is_top:
            self.c = self.c - _gemv64(Mm, self.v[Mi])
            wMi = np.ones(Mi.size)
        else:
            wMi = L.wt[Mi]
            self.c = self.c - (Mm @ (self.v[Mi] * wMi).astype(L.M.dtype)).astype(np.float64)
        self.v[Mi] = 0.0
        snew = _sig(gl[Mi])
        self.master.add((P.D[:, None] * Mm) * snew, wMi)
        self.master.set_glob(P.D * self.c)
        self.W = np.concatenate([self.W, Mi])
        self.sig = np.concatenate([self.sig, snew])

    def measure_band_depth(self) -> None:
        """How far down this level's starting score ranking the columns that did flip sign reach, in units
        of sqrt(l n rho) (the expected scaling, so levels can be averaged)."""
        flipped = np.sign(self.gl) != np.sign(self.gband)
        if np.any(flipped):
            tau = np.quantile(self.score[flipped], _BAND_QUANTILE)
            self.depths.append(np.count_nonzero(self.score <= tau) / self.unit)

    def answer(self):
        res = self.res
        x = (1.0 - res["beta"]) * self.v
        x[self.W] = self.sig * np.clip(res["u"], -1.0, 1.0)  # basic values may overshoot a bound by the tolerance
        return x, res["s"], self.lam, self.g_full


def sift(P: _Problem, nrm: np.ndarray, direct_max: int, max_rounds: int):
    """Multilevel sifting on (H): (x, s, lam, g) with x in [-1,1]^d (r = x/s) and g = A^T lam, "infeasible",
    or None if an LP failed or the round budget ran out."""
    return _Sifting(P, nrm, direct_max, max_rounds).run()
