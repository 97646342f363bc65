"""The restricted LP of the sifting solver as one warm HiGHS model (see engine.lp.solve)."""

from __future__ import annotations

import numpy as np

from engine.lp.highs import _BS, _INF, _MS, _new_highs


def _dense_cols(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise triplets of a dense l x m block (HiGHS drops explicit zeros itself)."""
    l, m = M.shape
    starts = np.arange(0, l * m, l, dtype=np.int32)
    rows = np.tile(np.arange(l, dtype=np.int32), m)
    return starts, rows, np.asarray(M, dtype=np.float64).ravel(order="F")


class _Master:
    """The restricted LP, one HiGHS model kept (with its basis) for the whole multilevel solve:

        min -s   s.t.   D A_W diag(sig) u  -  beta D c  -  s D b  <=  -D c,
                        |u_j| <= w_j,  beta in [0, 1],  s >= 0.

    c = sum of the fixed columns at their fixed values, so beta = 0 is "all fixed columns at their values"
    and beta = 1 makes (u, s) = 0 feasible: the LP is never infeasible.  Column j of W is stored flipped by
    sig_j = -sign(g_j) so that its preferred bound is the upper one: HiGHS gives appended columns status
    'upper', so new columns enter dual feasible and the re-solve is a short dual simplex.  Rows are scaled by
    D = 1/max_j |a_kj| so that no coefficient falls under HiGHS' small-value threshold.  w_j = 1 on the
    last level; on sub-levels w_j is the column's sampling weight (a weight on column j is the same as a
    bound w_j on u_j, and bounds can be changed in place, coefficients only one by one).
    Model columns: 0 = s, 1 = beta, 2.. = W in insertion order.
    """

    def __init__(self, Db: np.ndarray, threads: int, tol: float):
        self.l = l = Db.shape[0]
        h = self.h = _new_highs(threads, tol)
        h.setOptionValue("presolve", "off")  # tiny dense LP, always warm: presolve would throw the basis away
        h.setOptionValue("small_matrix_value", 1e-12)
        ez = np.zeros(0, dtype=np.int32)
        h.addRows(l, np.full(l, -_INF), np.zeros(l), 0, ez, ez, np.zeros(0))
        sb, ib, vb = _dense_cols(-Db[:, None])
        h.addCols(1, np.array([-1.0]), np.zeros(1), np.array([_INF]), len(vb), sb, ib, vb)
        h.addCols(1, np.zeros(1), np.zeros(1), np.ones(1), 0, np.zeros(1, np.int32), ez, np.zeros(0))
        self.Dc = np.zeros(l)
        self.ncol = 0

    def add(self, cols: np.ndarray, ub: np.ndarray) -> None:
        m = cols.shape[1]
        if m:
            s, i, v = _dense_cols(cols)
            self.h.addCols(m, np.zeros(m), -ub, ub, len(v), s, i, v)
            self.ncol += m

    def set_bounds(self, ub: np.ndarray) -> None:
        """|u_j| <= ub_j for all W columns (model order); nonbasic columns stay at their (moved) bound."""
        if self.ncol:
            idx = np.arange(2, self.ncol + 2, dtype=np.int32)
            self.h.changeColsBounds(self.ncol, idx, -ub, ub)

    def delete(self, mask: np.ndarray) -> None:
        """Drop W columns (mask in insertion order); they must be nonbasic so that the basis stays valid."""
        idx = np.flatnonzero(mask).astype(np.int32) + 2
        if idx.size:
            self.h.deleteCols(idx.size, idx)
            self.ncol -= idx.size

    def set_glob(self, Dc: np.ndarray) -> None:
        h = self.h
        for k in np.flatnonzero(Dc != self.Dc):
            h.changeCoeff(int(k), 1, -float(Dc[k]))
        h.changeRowsBounds(self.l, np.arange(self.l, dtype=np.int32), np.full(self.l, -_INF), -Dc)
        self.Dc = Dc.copy()

    def solve(self) -> dict:
        h = self.h
        h.run()
        ms = h.getModelStatus()
        sol = h.getSolution()
        x = np.asarray(sol.col_value)
        y = np.asarray(sol.row_dual)
        cst = h.getBasis().col_status
        ok = ms == _MS.kOptimal and x.size == self.ncol + 2
        return {
            "ok": ok,
            "status": h.modelStatusToString(ms),
            "s": float(x[0]) if ok else 0.0,
            "beta": float(x[1]) if ok else 1.0,
            "u": x[2:],
            "lam_scaled": -y,  # HiGHS row duals of '<=' rows are <= 0 in a minimisation
            "it": int(h.getInfo().simplex_iteration_count),
            "col_basic": np.fromiter((st == _BS.kBasic for st in cst[2:]), dtype=bool, count=len(cst) - 2),
        }
