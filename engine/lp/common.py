"""Input validation (both solvers and the pool) and the dense helpers of the passes over A (BLAS threads,
float64 accumulation, column norms)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

try:  # threadpoolctl ships with scikit-learn; without it BLAS threads are simply left alone
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
    _threadpool_limits = None


def _as_problem(A, b) -> tuple[np.ndarray, np.ndarray]:
    """Validate (A, b).  A comes back C-contiguous float32 or float64 (float32 is kept: the passes over A are
    memory-bound), b as float64."""
    if hasattr(A, "detach"):  # torch tensors, without importing torch here
        A = A.detach().cpu().numpy()
    if hasattr(b, "detach"):
        b = b.detach().cpu().numpy()
    A = np.asarray(A)
    b = np.asarray(b)
    if A.ndim != 2:
        raise ValueError(f"A must be a 2-D (l x d) array, got shape {A.shape}")
    if b.ndim != 1 or b.shape[0] != A.shape[0]:
        raise ValueError(f"b must be a 1-D array of length l = {A.shape[0]}, got shape {b.shape}")
    if A.dtype.kind not in "fiu" or b.dtype.kind not in "fiu":
        raise ValueError(f"A and b must be real numeric arrays, got dtypes {A.dtype} and {b.dtype}")
    if A.dtype != np.float32 and A.dtype != np.float64:
        A = A.astype(np.float64)
    A = np.ascontiguousarray(A)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if not np.isfinite(b).all():
        raise ValueError("b contains non-finite values")
    return A, b


def _column_norms(A: np.ndarray) -> np.ndarray:
    """||a_j||_2 in float64; also the finiteness check of A (inf/nan make the column's sum of squares
    non-finite, so only such columns are inspected -- the usual case costs nothing extra)."""
    colsq = np.einsum("ij,ij->j", A, A)
    bad = np.flatnonzero(~np.isfinite(colsq))
    if bad.size:
        if not np.isfinite(A[:, bad]).all():
            raise ValueError("A contains non-finite values")
    nrm = np.sqrt(colsq.astype(np.float64))
    if bad.size:  # float32 squares overflowed for huge but finite entries
        nrm[bad] = np.linalg.norm(A[:, bad].astype(np.float64), axis=0)
    return nrm


def _gemv64(A: np.ndarray, x: np.ndarray, with_abs: bool = False):
    """A @ x accumulated in float64 without materialising a float64 copy of a float32 A; with `with_abs` also
    |A| @ |x| (the natural rounding scale of each row) from the same pass."""
    x = np.asarray(x, dtype=np.float64)
    if A.dtype == np.float64 and not with_abs:
        return A @ x
    l, d = A.shape
    out = np.zeros(l)
    out_abs = np.zeros(l)
    ax = np.abs(x)
    step = max(1024, (1 << 19) // max(l, 1))  # ~4 MB float64 scratch: stays in cache between copy and gemv
    buf = np.empty((l, min(step, d)))
    for lo in range(0, d, step):
        hi = min(d, lo + step)
        blk = buf[:, : hi - lo]
        np.copyto(blk, A[:, lo:hi])
        out += blk @ x[lo:hi]
        if with_abs:
            np.abs(blk, out=blk)
            out_abs += blk @ ax[lo:hi]
    return (out, out_abs) if with_abs else out


def _blas_single():
    # The solver's BLAS calls are l x d matrix-vector products: memory-bound, no faster on two threads, and
    # OpenBLAS' threading measured 3-10x slower on a loaded 2-core machine (spinning threads competing for the
    # cores).  So they always run single-threaded, whatever `threads` asks of HiGHS.
    if _threadpool_limits is None:
        return nullcontext()
    return _threadpool_limits(limits=1, user_api="blas")
