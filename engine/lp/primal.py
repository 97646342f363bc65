"""The textbook primal LP handed to HiGHS as it is: the reference for tests and benchmarks."""

from __future__ import annotations

import math

import highspy
import numpy as np

from engine.lp.common import _as_problem
from engine.lp.highs import _INF, _MS, _new_highs


def solve_linf_lp_primal(A, b, *, bound: float | None = None, time_limit: float | None = None,
                         threads: int = 1) -> tuple[np.ndarray, float, str]:
    """The textbook primal  min z  s.t.  A r <= b,  r_j - z <= 0,  -r_j - z <= 0  (d + 1 columns,
    l + 2d rows), handed to HiGHS with its default settings: the reference for tests and benchmarks.  `bound`
    becomes the column bounds |r_j| <= bound.  Status "time-limit" (r = 0) when `time_limit` seconds ran
    out."""
    A, b = _as_problem(A, b)
    l, d = A.shape
    if not np.isfinite(A).all():
        raise ValueError("A contains non-finite values")
    h = _new_highs(threads, 1e-9, time_limit)
    ub = _INF if bound is None else float(bound)
    # column-wise: r_j holds the nonzeros of A[:, j], then +1 in row l+j and -1 in row l+d+j; z holds -1 in
    # rows l .. l+2d-1
    mask_t = (A != 0).T
    col_of, row_of = np.nonzero(mask_t)  # nonzeros of A in column-major order
    a_counts = mask_t.sum(axis=1)
    starts = np.zeros(d + 1, dtype=np.int64)
    np.cumsum(a_counts + 2, out=starts[1:])
    nnz_r = int(starts[-1])
    index = np.empty(nnz_r + 2 * d, dtype=np.int32)
    value = np.empty(nnz_r + 2 * d, dtype=np.float64)
    dst = np.arange(col_of.size) + 2 * col_of  # entries of column j sit after the 2j bound entries before it
    index[dst] = row_of
    value[dst] = A.T[mask_t]
    tail = starts[:-1] + a_counts
    index[tail] = l + np.arange(d)
    value[tail] = 1.0
    index[tail + 1] = l + d + np.arange(d)
    value[tail + 1] = -1.0
    index[nnz_r:] = np.arange(l, l + 2 * d, dtype=np.int32)
    value[nnz_r:] = -1.0
    lp = highspy.HighsLp()
    lp.num_col_ = d + 1
    lp.num_row_ = l + 2 * d
    cost = np.zeros(d + 1)
    cost[d] = 1.0
    lp.col_cost_ = cost
    lp.col_lower_ = np.concatenate([np.full(d, -ub), [0.0]])
    lp.col_upper_ = np.concatenate([np.full(d, ub), [_INF]])
    lp.row_lower_ = np.full(l + 2 * d, -_INF)
    lp.row_upper_ = np.concatenate([b, np.zeros(2 * d)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.concatenate([starts, [nnz_r + 2 * d]]).astype(np.int32)
    lp.a_matrix_.index_ = index
    lp.a_matrix_.value_ = value
    h.passModel(lp)
    h.run()
    ms = h.getModelStatus()
    zeros = np.zeros(d)
    if ms == _MS.kOptimal:
        r = np.asarray(h.getSolution().col_value)[:d].copy()
        return r, float(np.max(np.abs(r))) if d else 0.0, "optimal"
    if ms in (_MS.kInfeasible, _MS.kUnboundedOrInfeasible):
        return zeros, math.inf, "infeasible"
    if ms == _MS.kTimeLimit:
        return zeros, math.nan, "time-limit"
    return zeros, math.nan, f"error: HiGHS status {h.modelStatusToString(ms)}"
