"""Exact l_inf LP solver of the MLA-LP step (engine.lp) against scipy's HiGHS on the primal."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

from engine.lp import LPPool, solve_linf_lp, solve_linf_lp_primal

REL = 1e-6  # objective vs scipy
FEAS = 1e-7  # max(A r - b), absolute, A and b are O(1)


def scipy_primal(A, b, bound=None):
    """min z s.t. A r <= b, |r_j| <= z, built sparse so that d = 3072 stays cheap; (objective, status)."""
    A = np.asarray(A, dtype=np.float64)
    l, d = A.shape
    eye = sp.identity(d, format="csr")
    one = sp.csr_matrix(np.ones((d, 1)))
    A_ub = sp.vstack([sp.hstack([sp.csr_matrix(A), sp.csr_matrix((l, 1))]),
                      sp.hstack([eye, -one]), sp.hstack([-eye, -one])], format="csr")
    b_ub = np.concatenate([b, np.zeros(2 * d)])
    c = np.zeros(d + 1)
    c[-1] = 1.0
    box = (None, None) if bound is None else (-bound, bound)
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=[box] * d + [(0, None)], method="highs")
    return (res.fun if res.status == 0 else None), res.status


def random_problem(l, d, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((l, d))
    b = rng.standard_normal(l)
    b[0] = -abs(b[0]) - 0.1  # at least one violated constraint: nontrivial optimum
    return A.astype(dtype), b


def gradient_like(l, d, seed, dtype=np.float32):
    """Rows = per-label gradients: a shared component plus label-specific parts, heavy-tailed pixel
    saliency, a few dominant pixels, many exactly-zero pixels and duplicated labels."""
    rng = np.random.default_rng(seed)
    sal = np.exp(rng.standard_normal(d))
    sal[rng.random(d) < 0.4] = 0.0  # e.g. padding / saturated pixels
    sal[rng.choice(d, 3, replace=False)] *= 100.0  # dominant pixels
    common = rng.standard_normal(d)
    A = (1 + 0.3 * rng.standard_normal((l, 1))) * common + 0.7 * rng.standard_normal((l, d))
    A *= sal
    A[l - 1] = A[0]  # duplicated row (co-occurring labels) ...
    b = rng.standard_normal(l) * np.abs(A).sum(1) / d
    b[l - 1] = abs(b[0]) + 0.5  # ... with a different right-hand side
    b[1] = -abs(b[1]) - 0.1
    scale = np.abs(A).max()
    return (A / scale).astype(dtype), b / scale


@functools.cache
def reference(kind, l, d, seed):
    A, b = (random_problem if kind == "random" else gradient_like)(l, d, seed)
    obj, status = scipy_primal(A, b)
    assert status == 0
    return A, b, obj


def check_solution(A, b, r, t, status, t_ref):
    A64 = np.asarray(A, dtype=np.float64)
    assert status == "optimal"
    assert r.dtype == np.float64 and r.shape == (A.shape[1],)
    assert abs(t - t_ref) <= REL * t_ref
    assert np.max(A64 @ r - b) <= FEAS
    assert np.max(np.abs(r)) == pytest.approx(t, rel=1e-12, abs=0)


CASES = [("random", 5, 40, 0), ("random", 20, 300, 1), ("random", 40, 700, 2), ("random", 81, 300, 3),
         ("random", 81, 900, 4), ("random", 20, 3 * 32 * 32, 5), ("gradient", 20, 3 * 32 * 32, 6),
         ("gradient", 81, 600, 7), ("gradient", 10, 2000, 8)]


@pytest.mark.parametrize("kind,l,d,seed", CASES)
@pytest.mark.parametrize("direct_max", [None, 64])
def test_matches_scipy(kind, l, d, seed, direct_max):
    """direct_max=64 forces the multilevel path (subsample -> bands -> fix-ups) even on small problems."""
    A, b, t_ref = reference(kind, l, d, seed)
    info = {}
    r, t, status = solve_linf_lp(A, b, direct_max=direct_max, info=info)
    check_solution(A, b, r, t, status, t_ref)
    assert info["method"] == "sifting"
    if direct_max is not None and d > direct_max:
        assert info["levels"] > 1
    # complementary slackness: all but at most l coordinates sit at +-t (zero columns at 0)
    A64 = np.asarray(A, dtype=np.float64)
    nz = np.any(A64 != 0, axis=0)
    inside = np.abs(np.abs(r[nz]) - t) > 1e-9 * t
    assert inside.sum() <= l
    assert np.all(r[~nz] == 0)


def test_float32_input_float64_answer():
    A, b, t_ref = reference("gradient", 20, 3 * 32 * 32, 6)
    assert A.dtype == np.float32
    r, t, status = solve_linf_lp(A, b)
    r64, t64, _ = solve_linf_lp(A.astype(np.float64), b)
    check_solution(A, b, r, t, status, t_ref)
    assert t == pytest.approx(t64, rel=1e-10)


def test_primal_reference_agrees():
    A, b, t_ref = reference("random", 20, 300, 1)
    r, t, status = solve_linf_lp_primal(A, b)
    check_solution(A, b, r, t, status, t_ref)


def test_primal_time_limit():
    A, b = random_problem(20, 3 * 32 * 32, 11)
    r, t, status = solve_linf_lp_primal(A, b, time_limit=1e-3)
    assert status == "time-limit" and not np.any(r)


def test_zero_row_nonnegative_b_is_dropped():
    A, b, t_ref = reference("random", 20, 300, 1)
    A0 = np.vstack([A[:5], np.zeros(A.shape[1]), A[5:]])
    for bk in (0.0, 2.0):
        b0 = np.concatenate([b[:5], [bk], b[5:]])
        r, t, status = solve_linf_lp(A0, b0)
        check_solution(A0, b0, r, t, status, t_ref)


def test_zero_row_negative_b_is_infeasible():
    A, b = random_problem(10, 200, 12)
    A[3] = 0.0
    b[3] = -1e-3
    r, t, status = solve_linf_lp(A, b)
    assert status == "infeasible" and t == np.inf and not np.any(r)
    assert solve_linf_lp_primal(A, b)[2] == "infeasible"


@pytest.mark.parametrize("b", [np.array([0.0, 0.5, 2.0]), np.zeros(3)])
def test_already_satisfied(b):
    A = np.random.default_rng(13).standard_normal((3, 50))
    r, t, status = solve_linf_lp(A, b)
    assert status == "optimal" and t == 0.0 and r.shape == (50,) and not np.any(r)


@pytest.mark.parametrize("direct_max", [None, 64])
def test_infeasible_farkas(direct_max):
    rng = np.random.default_rng(14)
    A = rng.standard_normal((4, 1500))
    A[3] = -(A[0] + A[1])  # lam = (1, 1, 0, 1): A^T lam = 0 while b^T lam = -3 < 0
    b = np.array([-1.0, -1.0, 0.5, -1.0])
    r, t, status = solve_linf_lp(A, b, direct_max=direct_max)
    assert status == "infeasible" and t == np.inf and not np.any(r)
    assert scipy_primal(A, b)[1] == 2  # scipy: infeasible


def test_opposite_rows_infeasible():
    a = np.random.default_rng(15).standard_normal(100)
    A = np.stack([a, -a, np.ones(100)])
    r, t, status = solve_linf_lp(A, np.array([-1.0, -1.0, 3.0]))
    assert status == "infeasible"


def test_bound():
    A, b, t_ref = reference("random", 20, 300, 1)
    r, t, status = solve_linf_lp(A, b, bound=1.0)  # MLA-LP's box; t* << 1
    check_solution(A, b, r, t, status, t_ref)
    r, t, status = solve_linf_lp(A, b, bound=0.5 * t_ref)
    assert status == "infeasible" and not np.any(r)
    assert t == pytest.approx(t_ref, rel=REL)  # the unboxed optimum, for information
    assert scipy_primal(A, b, bound=0.5 * t_ref)[1] == 2


def test_degenerate_structure():
    """Duplicated columns and rows, rank-deficient A: many optimal r, the objective is still exact."""
    rng = np.random.default_rng(16)
    base = rng.standard_normal((6, 150))
    A = np.hstack([base, base, -base, np.zeros((6, 30))])
    A = np.vstack([A, A[:2], 0.5 * A[2]])
    b = rng.standard_normal(A.shape[0])
    b[0] = -1.0
    obj, st = scipy_primal(A, b)
    assert st == 0
    for direct_max in (None, 40):
        r, t, status = solve_linf_lp(A, b, direct_max=direct_max)
        check_solution(A, b, r, t, status, obj)


def test_fallback_to_direct_lp():
    A, b, t_ref = reference("random", 40, 700, 2)
    info = {}
    r, t, status = solve_linf_lp(A, b, direct_max=64, max_rounds=1, info=info)
    assert info["method"] == "direct" and info["stopped"] == "max_rounds"
    check_solution(A, b, r, t, status, t_ref)


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    A, b, t_ref = reference("random", 20, 300, 1)
    r, t, status = solve_linf_lp(torch.from_numpy(A), torch.from_numpy(b))
    check_solution(A, b, r, t, status, t_ref)


@pytest.mark.parametrize(
    "A,b,match",
    [
        (np.ones(5), np.ones(1), "2-D"),
        (np.ones((3, 5)), np.ones(4), "length l = 3"),
        (np.ones((3, 5)), np.ones((3, 1)), "1-D"),
        (np.full((3, 5), np.nan), -np.ones(3), "non-finite"),
        (np.full((3, 5), np.nan), np.ones(3), "non-finite"),  # even when r = 0 would do
        (np.ones((3, 5)), np.array([1.0, np.inf, -1.0]), "non-finite"),
        (np.ones((3, 5), dtype=complex), -np.ones(3), "real numeric"),
    ],
)
def test_validation(A, b, match):
    with pytest.raises(ValueError, match=match):
        solve_linf_lp(A, b)


def test_validation_bound():
    with pytest.raises(ValueError, match="bound"):
        solve_linf_lp(np.ones((2, 3)), -np.ones(2), bound=-1.0)


def test_inf_in_one_column_detected():
    A, b = random_problem(5, 60, 17, dtype=np.float32)
    A[2, 7] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        solve_linf_lp(A, b)


# ---------------------------------------------------------------------------------------------------------
# Pool
# ---------------------------------------------------------------------------------------------------------
def shm_segments() -> set[str]:
    # multiprocessing.shared_memory names are psm_* on Linux (the executor's own sem.* entries are not ours)
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")} if os.path.isdir("/dev/shm") else set()


def pool_problems():
    probs = [reference("gradient", 20, 3 * 32 * 32, 6)[:2], reference("random", 81, 300, 3)[:2],
             random_problem(10, 40, 18)]
    A, b = random_problem(30, 500, 19)
    probs.append((A, b, 1e-9))  # bound far below the optimum: infeasible
    return probs


@pytest.mark.parametrize("workers", [0, 2])
def test_pool_matches_inline(workers):
    probs = pool_problems()
    inline = [solve_linf_lp(p[0], p[1], bound=p[2] if len(p) > 2 else None) for p in probs]
    before = shm_segments()
    # shm_min_bytes=0: even these small A go through shared memory, to exercise that path
    with LPPool(workers=workers, threads_per_worker=1, shm_min_bytes=0) as pool:
        out = pool.map(probs)
        futs = [pool.submit(A, b) for A, b in (p[:2] for p in probs[:2])]
        more = [f.result(timeout=120) for f in futs]
    assert shm_segments() == before
    for (r1, t1, s1), (r2, t2, s2) in zip(out + more, inline + inline[:2]):
        assert s1 == s2
        assert np.array_equal(r1, r2) and (t1 == t2 or (np.isnan(t1) and np.isnan(t2)))
    assert out[3][2] == "infeasible"


def test_pool_worker_error_releases_memory():
    before = shm_segments()
    A, b = random_problem(10, 40, 18)
    with LPPool(workers=1, shm_min_bytes=0, solver_kwargs={"no_such_option": 1}) as pool:
        fut = pool.submit(A, b)
        with pytest.raises(TypeError):
            fut.result(timeout=120)
        with pytest.raises(ValueError):  # input errors surface in the caller, before anything is queued
            pool.submit(np.ones(3), b)
    assert shm_segments() == before
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(A, b)


def test_pool_defaults_use_all_cores():
    pool = LPPool(workers=0)
    assert pool.workers == 0 and pool.threads_per_worker == 1
    pool.close()
    pool = LPPool()
    try:
        assert pool.workers * pool.threads_per_worker == os.cpu_count()
    finally:
        pool.close()


def test_thread_count_can_change_within_a_process():
    """HiGHS keeps one scheduler per process; asking for another thread count must restart it, not fail."""
    A, b, t_ref = reference("random", 20, 300, 1)
    for threads in (1, 2, 1):
        r, t, status = solve_linf_lp(A, b, threads=threads)
        check_solution(A, b, r, t, status, t_ref)
