"""Tests for kernels/: references, Triton launchers and dispatch.

Layers:
1. kernels.reference against plain float64 numpy / sort-based code written here.
2. The Triton launchers against the reference, run by the Triton interpreter
   on CPU tensors.
3. The exact L1+box projection against a brute-force sorted-breakpoint solver
   and against other feasible points (it must be the minimiser).
4. Dispatch rules, compile friendliness, and (without a GPU) that every kernel
   still compiles for sm_80 and sm_90, launch by launch.

How the interpreter is used: with triton 3.8 the interpreted-vs-compiled choice
is made when a ``@triton.jit`` decorator runs, and triton's own helpers
(tl.sum, tl.max, ...) are decorated when triton is first imported.  So
TRITON_INTERPRET=1 must be in the environment before triton is imported at
all, and once set it turns every later kernel in the process (other test
modules, inductor's generated kernels) into interpreted code.  The Triton tests
(named test_tri_*) therefore run in a child pytest process started by
test_interpreter_suite with TRITON_INTERPRET=1; in this process they are
skipped.  Running the file directly with TRITON_INTERPRET=1 runs them in-process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels
from kernels import dispatch
from kernels import reference as R

ROOT = Path(__file__).resolve().parents[1]
KDIR = Path(kernels.__file__).resolve().parent

SHAPES = [(3, 3, 17, 29), (1, 3, 17, 29), (2, 3, 64, 64)]
INF = float("inf")

# --------------------------------------------------------------------------
# inputs


def make_inputs(shape, seed, spread=0.05, saturate=True):
    """x0 in [0,1] (some pixels exactly 0 or 1, to exercise the box), x near x0, random grad."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen)
    if saturate:
        flat = x0.view(-1)
        flat[::7] = 0.0
        flat[3::11] = 1.0
    x = (x0 + spread * (2 * torch.rand(shape, generator=gen) - 1)).clamp(0, 1)
    g = torch.randn(shape, generator=gen)
    return x, x0, g


def np64(t):
    return t.detach().to(torch.float64).reshape(t.shape[0], -1).numpy()


def assert_close(actual, expected_flat, atol=1e-6):
    a = np64(actual)
    np.testing.assert_allclose(a, expected_flat, rtol=0, atol=atol)


# --------------------------------------------------------------------------
# plain implementations (float64 numpy, per-sample loops, sort/topk selection)


def plain_linf(x, x0, g, step, eps):
    x, x0, g = np64(x), np64(x0), np64(g)
    return np.clip(np.clip(x - step * np.sign(g), x0 - eps, x0 + eps), 0, 1)


def plain_l2(x, x0, g, step, eps):
    rows = []
    for xb, x0b, gb in zip(np64(x), np64(x0), np64(g)):
        v = (xb - x0b) - step * gb / max(np.linalg.norm(gb), 1e-6)
        nv = np.linalg.norm(v)
        if nv > eps:
            v = v * (eps / nv)
        rows.append(np.clip(x0b + v, 0, 1))
    return np.stack(rows)


def plain_mifgsm(x, x0, g, m, step, eps, decay):
    xs, x0s, gs, ms = np64(x), np64(x0), np64(g), np64(m)
    mn = decay * ms + gs / np.maximum(np.abs(gs).sum(axis=1, keepdims=True), 1e-6)
    xn = np.clip(np.clip(xs - step * np.sign(mn), x0s - eps, x0s + eps), 0, 1)
    return xn, mn


def plain_kth_largest(a_row: torch.Tensor, k: int) -> float:
    return torch.topk(a_row, k).values[-1].item()


def plain_slide_mask(g, sparsity):
    """Selected coordinates, via torch.topk (values are exact float32 selections)."""
    a = g.detach().reshape(g.shape[0], -1).abs()
    D = a.shape[1]
    k = min(max(int(np.round((1 - sparsity) * D)), 1), D)
    masks = []
    for row in a:
        tau = plain_kth_largest(row, k)
        masks.append(((row >= tau) & (row > 0)).numpy())
    return np.stack(masks)


def sum_relu(c_sorted, suffix, theta):
    """sum_j max(c_j - theta, 0) for each theta, c sorted ascending, suffix[i] = sum(c[i:])."""
    idx = np.searchsorted(c_sorted, theta, side="right")
    return suffix[idx] - theta * (len(c_sorted) - idx)


def proj_l1_box_sorted(v, x0, eps):
    """Brute-force exact projection of v onto {||d||_1 <= eps} & {0 <= x0 + d <= 1}.

    With a = |v| and caps u, each term min(max(a - t, 0), u) equals
    max(a - t, 0) - max(a - u - t, 0), so the L1 mass is piecewise linear with
    kinks at a and a - u.  Evaluate it exactly at every kink (sorted cumulative
    sums) and interpolate on the bracketing segment.
    """
    a = np.abs(v)
    u = np.clip(np.where(v > 0, 1 - x0, x0), 0, None)
    b = a - u

    def prep(c):
        c = np.sort(c)
        return c, np.concatenate([np.cumsum(c[::-1])[::-1], [0.0]])

    (sa, ta), (sb, tb) = prep(a), prep(b)

    def mass(t):
        return sum_relu(sa, ta, t) - sum_relu(sb, tb, t)

    if mass(np.array([0.0]))[0] <= eps:
        theta = 0.0
    else:
        kinks = np.unique(np.concatenate([[0.0], a, b[b > 0]]))
        f = mass(kinks)
        i = np.nonzero(f > eps)[0].max()  # f is non-increasing and f(max a) = 0 <= eps
        t0, t1, f0, f1 = kinks[i], kinks[i + 1], f[i], f[i + 1]
        theta = t0 + (f0 - eps) * (t1 - t0) / (f0 - f1)
    return np.sign(v) * np.minimum(np.maximum(a - theta, 0), u)


def proj_l1_ball_duchi(v, eps):
    """Duchi et al. (2008) sort-based projection onto the L1 ball (AdverTorch's algorithm)."""
    a = np.abs(v)
    if a.sum() <= eps:
        return v.copy()
    if eps == 0:
        return np.zeros_like(v)
    mu = np.sort(a)[::-1]
    cs = np.cumsum(mu)
    j = np.arange(1, len(a) + 1)
    rho = np.nonzero(mu - (cs - eps) / j > 0)[0].max() + 1
    theta = (cs[rho - 1] - eps) / rho
    return np.sign(v) * np.maximum(a - theta, 0)


def plain_slide(x, x0, g, step, eps, sparsity, projection):
    masks = plain_slide_mask(g, sparsity)
    xs, x0s, gs = np64(x), np64(x0), np64(g)
    rows = []
    for xb, x0b, gb, mb in zip(xs, x0s, gs, masks):
        e = np.sign(gb) * mb / max(mb.sum(), 1)
        v = (xb - x0b) - step * e
        if projection == "exact":
            d = proj_l1_box_sorted(v, x0b, eps)
        else:
            d = proj_l1_ball_duchi(v, eps)
        rows.append(np.clip(x0b + d, 0, 1))
    return np.stack(rows)


# --------------------------------------------------------------------------
# interpreter plumbing

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
tri = pytest.mark.skipif(
    not (IN_INTERPRETER and HAS_TRITON),
    reason="Triton tests run in the TRITON_INTERPRET=1 child started by test_interpreter_suite",
)


@pytest.fixture(scope="module")
def tk():
    """The launcher modules, interpreted, with interpreter-friendly tile sizes."""
    from triton.runtime.interpreter import InterpretedFunction

    import kernels.l2
    import kernels.linf
    import kernels.mifgsm
    import kernels.slide

    mods = {"linf": kernels.linf, "l2": kernels.l2, "mifgsm": kernels.mifgsm, "slide": kernels.slide}
    assert isinstance(kernels.slide._slide_write_kernel, InterpretedFunction)
    with pytest.MonkeyPatch.context() as mp:
        # The interpreter's cost is per block operation and per program: with 1024-element tiles
        # and about 4 programs per launch the shapes used here take one or two programs per
        # sample.  test_tri_slide_gpu_tiles runs the GPU sizes, test_tri_slide_many_chunks many
        # programs per sample.
        mods["slide_gpu_block"] = kernels.slide.BLOCK
        mods["slide_gpu_target"] = kernels.slide.TARGET_PROGRAMS
        mp.setattr(kernels.slide, "BLOCK", 1024)
        mp.setattr(kernels.slide, "TARGET_PROGRAMS", 4)
        yield mods


def interpreter_suite(test_file):
    """Run the ``test_tri_*`` tests of ``test_file`` in a child pytest with TRITON_INTERPRET=1 (see
    the module docstring); every one of them must pass, none be skipped."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("SML_KERNELS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(Path(test_file).resolve()),
        "-q",
        "-k",
        "test_tri_",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout[-8000:] + "\n" + proc.stderr[-4000:]).strip()
    print(tail)
    # rc 5 (nothing collected) fails too: it would mean the selection broke.
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, tail


@pytest.mark.skipif(IN_INTERPRETER, reason="this process is the interpreter run")
@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_interpreter_suite():
    interpreter_suite(__file__)


# --------------------------------------------------------------------------
# 1. reference vs plain


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("step,eps", [(0.01, 0.03), (0.05, INF), (0.02, 0.0)])
def test_linf_reference(shape, step, eps):
    x, x0, g = make_inputs(shape, 1)
    got = R.linf_step(x, x0, g, step, eps)
    assert_close(got, plain_linf(x, x0, g, step, eps))
    d = (got - x0).abs().max().item()
    assert d <= eps + 1e-6
    assert got.min() >= 0 and got.max() <= 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "step,eps,same", [(0.2, 0.5, False), (0.5, 0.5, True), (0.3, INF, False), (0.1, 0.0, False)]
)
def test_l2_reference(shape, step, eps, same):
    x, x0, g = make_inputs(shape, 2, spread=0.01)
    if same:  # FGM: single step from the clean image
        x = x0.clone()
    got = R.l2_step(x, x0, g, step, eps)
    assert_close(got, plain_l2(x, x0, g, step, eps))
    norms = (got - x0).double().flatten(1).norm(dim=1)
    assert (norms <= eps * (1 + 1e-6)).all()
    assert got.min() >= 0 and got.max() <= 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_mifgsm_reference(shape, decay):
    x, x0, g = make_inputs(shape, 3)
    m = 1e-3 * torch.randn(shape, generator=torch.Generator().manual_seed(33))
    xn, mn = R.mifgsm_step(x, x0, g, m, 0.01, 0.03, decay)
    pxn, pmn = plain_mifgsm(x, x0, g, m, 0.01, 0.03, decay)
    assert_close(xn, pxn)
    np.testing.assert_allclose(np64(mn), pmn, rtol=1e-5, atol=1e-9)
    assert (xn - x0).abs().max() <= 0.03 + 1e-6


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("projection", ["exact", "advertorch"])
@pytest.mark.parametrize("sparsity,step,eps", [(0.99, 1.0, 2.0), (0.9, 5.0, 1.0), (0.999, 0.5, INF)])
def test_slide_reference(shape, projection, sparsity, step, eps):
    x, x0, g = make_inputs(shape, 4)
    got = R.slide_step(x, x0, g, step, eps, sparsity, projection)
    assert_close(got, plain_slide(x, x0, g, step, eps, sparsity, projection), atol=2e-6)
    assert got.min() >= 0 and got.max() <= 1
    if projection == "exact":
        l1 = (got - x0).double().flatten(1).abs().sum(dim=1)
        assert (l1 <= eps * (1 + 1e-6) + 1e-6).all()


def _mask_probe(step_fn, g, sparsity):
    """The selection mask, observed through the step: x = x0 = 1/2, unconstrained."""
    half = torch.full_like(g, 0.5)
    xn = step_fn(half, half, g, 1.0, INF, sparsity, "exact")
    return (xn != 0.5).reshape(g.shape[0], -1).numpy()


def _tie_grad(shape, seed):
    """Heavy magnitude ties and zeros: values in {0, +-0.25, +-0.5, +-1}."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
    g = levels[torch.randint(0, 4, shape, generator=gen)]
    return g * torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)


def advertorch_slide_mask(g, sparsity):
    """AdverTorch's l1 step: topk's k entries (ties to the lowest index: the rule the engine fixes,
    as torch.topk's tie order is undocumented), then those > 0."""
    a = g.detach().reshape(g.shape[0], -1).abs().numpy()
    D = a.shape[1]
    k = min(max(int(np.round((1 - sparsity) * D)), 1), D)
    masks = np.zeros(a.shape, dtype=bool)
    for i, row in enumerate(a):
        top = np.lexsort((np.arange(D), -row))[:k]  # by |g| descending, then index ascending
        masks[i, top] = row[top] > 0
    return masks


def _step_probe(step_fn, g, sparsity, **kw):
    """The step itself at x = x0 = 1/2, unconstrained: sign(g) / (entries kept) on the kept ones."""
    half = torch.full_like(g, 0.5)
    return (step_fn(half, half, g, 0.25, INF, sparsity, "exact", **kw) - 0.5).reshape(g.shape[0], -1)


@pytest.mark.parametrize("shape", [(3, 3, 17, 29), (2, 7), (1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.999])
def test_slide_reference_exact_k_is_advertorchs_topk(shape, sparsity):
    for g in (_tie_grad(shape, 7), torch.randn(shape, generator=torch.Generator().manual_seed(7))):
        want = advertorch_slide_mask(g, sparsity)
        got = _step_probe(R.slide_step, g, sparsity, ties="lowest-index")
        np.testing.assert_array_equal((got != 0).numpy(), want)
        # AdverTorch's e = sign(g) * mask / ||sign(g) * mask||_1; each kept entry moves by step / kept
        # against its gradient (targeted: descent), to within float32 rounding at 0.5
        kept = torch.from_numpy(want.sum(1, keepdims=True)).float().clamp_min(1)
        torch.testing.assert_close(got, -torch.sign(g.reshape(got.shape)) * torch.from_numpy(want) * 0.25 / kept,
                                   rtol=0, atol=1e-7)
    ties = _tie_grad(shape, 7)
    if shape == (3, 3, 17, 29) and sparsity == 0.9:  # the rules differ where ties straddle the k-th value
        assert not np.array_equal(_mask_probe(R.slide_step, ties, sparsity), advertorch_slide_mask(ties, sparsity))


@pytest.mark.parametrize("shape", [(3, 3, 17, 29), (2, 7), (1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_slide_reference_mask(shape, sparsity, ties):
    g = _tie_grad(shape, 5) if ties else torch.randn(shape, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(_mask_probe(R.slide_step, g, sparsity), plain_slide_mask(g, sparsity))


def test_slide_k():
    assert R.slide_k(1479, 0.999) == 1  # round(1.479)
    assert R.slide_k(10, 1.0) == 1
    assert R.slide_k(10, 0.0) == 10
    assert R.slide_k(10, 0.75) == 2  # round(2.5) -> 2, half to even like np.round
    assert R.slide_k(1, 0.5) == 1


def test_kth_largest_bits_exact():
    gen = torch.Generator().manual_seed(6)
    a = torch.cat(
        [
            torch.rand(2, 300, generator=gen) * 10.0 ** torch.randint(-30, 30, (2, 300), generator=gen),
            torch.zeros(2, 5),
        ],
        dim=1,
    )
    for k in (1, 2, 77, 300, 305):
        tau = R._kth_largest_bits(a.view(torch.int32), k).view(torch.float32)
        for b in range(2):
            assert tau[b].item() == plain_kth_largest(a[b], k)


@pytest.mark.parametrize("ties", [False, True])
def test_kth_largest_cpu_topk_equals_search(ties):
    """The reference's CPU path (torch.topk) and the bit search it uses elsewhere agree exactly."""
    shape = (4, 3, 17, 29)
    g = _tie_grad(shape, 26) if ties else torch.randn(shape, generator=torch.Generator().manual_seed(26))
    g = g.reshape(4, -1)
    bits = g.abs().view(torch.int32)
    for k in (1, 2, 15, 740, 1478, 1479):
        assert torch.equal(R._kth_largest_pattern(g, bits, k), R._kth_largest_bits(bits, k)), k


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("B,D", [(1, 1), (3, 1479), (8, 3 * 448 * 448), (256, 3 * 224 * 224), (1, 7),
                                 (1, 3 * 448 * 448)])
def test_slide_chunking(B, D):
    """SLIDE's split of each sample over programs: whole tiles, every element once, and for big inputs
    about TARGET_PROGRAMS programs (a batch of 8 large images fills the GPU)."""
    import kernels.slide as S

    chunk, nb = S.chunking(B, D)
    assert chunk % S.BLOCK == 0 and (nb - 1) * chunk < D <= nb * chunk and nb <= S.MAX_CHUNKS
    capped = -(-D // S.MAX_CHUNKS) > -(-B * D // S.TARGET_PROGRAMS)  # few samples: MAX_CHUNKS binds
    if B * D >= S.TARGET_PROGRAMS * S.BLOCK and not capped:
        # Rounding each chunk up to whole tiles at most halves the count; each sample's ragged
        # last chunk adds at most one program.
        assert S.TARGET_PROGRAMS / 2 < B * nb <= S.TARGET_PROGRAMS + B


# --------------------------------------------------------------------------
# edge cases (reference; the launchers get the same cases below)


def _all_steps(mod):
    return {
        "linf": lambda x, x0, g, eps: mod.linf_step(x, x0, g, 0.01, eps),
        "l2": lambda x, x0, g, eps: mod.l2_step(x, x0, g, 0.3, eps),
        "mifgsm": lambda x, x0, g, eps: mod.mifgsm_step(x, x0, g, torch.zeros_like(g), 0.01, eps, 1.0)[0],
        "slide": lambda x, x0, g, eps: mod.slide_step(x, x0, g, 1.0, eps, 0.99, "exact"),
        "slide_adv": lambda x, x0, g, eps: mod.slide_step(x, x0, g, 1.0, eps, 0.99, "advertorch"),
    }


def _check_edges(mod):
    x, x0, g = make_inputs((3, 3, 17, 29), 7, spread=0.2)
    for name, fn in _all_steps(mod).items():
        # eps = 0 pins the result to x0 exactly.
        assert torch.equal(fn(x, x0, g, 0.0), x0), name
        # Zero gradient: no movement beyond projecting x itself.
        eps = 0.05
        got = fn(x, x0, torch.zeros_like(g), eps)
        d = (x - x0).flatten(1)
        if name in ("linf", "mifgsm"):
            want = (x0 + d.clamp(-eps, eps).view_as(x)).clamp(0, 1)
        elif name == "l2":
            scale = (eps / d.norm(dim=1).clamp_min(1e-12)).clamp(max=1)[:, None]
            want = (x0 + (d * scale).view_as(x)).clamp(0, 1)
        elif name == "slide":
            want = torch.from_numpy(
                np.stack([proj_l1_box_sorted(r, z, eps) for r, z in zip(np64(x - x0), np64(x0))]) + np64(x0)
            ).reshape(x.shape)
        else:
            want = torch.from_numpy(
                np.clip(np.stack([proj_l1_ball_duchi(r, eps) for r in np64(x - x0)]) + np64(x0), 0, 1)
            ).reshape(x.shape)
        torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=2e-6, msg=name)
        # Zero gradient with an in-ball start: nothing moves at all.
        xin = (x0 + 1e-4 * torch.sign(x - x0)).clamp(0, 1)
        torch.testing.assert_close(fn(xin, x0, torch.zeros_like(g), INF), xin, rtol=0, atol=1e-7, msg=name)


def test_edge_cases_reference():
    _check_edges(R)


def test_single_element_samples():
    x, x0, g = make_inputs((4, 1), 8, spread=0.3, saturate=False)
    assert_close(R.linf_step(x, x0, g, 0.1, 0.2), plain_linf(x, x0, g, 0.1, 0.2))
    assert_close(R.l2_step(x, x0, g, 0.1, 0.2), plain_l2(x, x0, g, 0.1, 0.2))
    for proj in ("exact", "advertorch"):
        assert_close(R.slide_step(x, x0, g, 0.1, 0.2, 0.5, proj), plain_slide(x, x0, g, 0.1, 0.2, 0.5, proj))


def test_inputs_untouched_and_out():
    x, x0, g = make_inputs((2, 3, 5, 7), 9)
    m = torch.randn_like(g)
    before = [t.clone() for t in (x, x0, g, m)]
    R.linf_step(x, x0, g, 0.1, 0.1)
    R.l2_step(x, x0, g, 0.1, 0.1)
    R.mifgsm_step(x, x0, g, m, 0.1, 0.1, 1.0)
    R.slide_step(x, x0, g, 0.1, 0.1, 0.9, "exact")
    for a, b in zip((x, x0, g, m), before):
        assert torch.equal(a, b)
    want = R.linf_step(x, x0, g, 0.1, 0.1)
    xx = x.clone()
    assert R.linf_step(xx, x0, g, 0.1, 0.1, out=xx) is xx
    assert torch.equal(xx, want)


# --------------------------------------------------------------------------
# 3. the exact projection is the true minimiser


@pytest.mark.parametrize("D", [1, 5, 17, 64, 257])
@pytest.mark.parametrize("seed", range(3))
def test_exact_projection_is_minimiser(D, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    B = 4
    x0 = torch.rand(B, D, generator=gen)
    x0[:, ::3] = torch.where(torch.rand(B, len(range(0, D, 3)), generator=gen) < 0.5, 0.0, 1.0)
    x = (x0 + 0.3 * torch.randn(B, D, generator=gen)).clamp(0, 1)
    g = torch.randn(B, D, generator=gen)
    eps = float(0.05 + 0.5 * torch.rand(1, generator=gen).item()) * max(1.0, D / 20)
    step, sparsity = 0.7, 0.8
    got = R.slide_step(x, x0, g, step, eps, sparsity, "exact")
    adv = R.slide_step(x, x0, g, step, eps, sparsity, "advertorch")
    masks = plain_slide_mask(g, sparsity)
    rng = np.random.default_rng(seed)
    for b in range(B):
        x0b = np64(x0)[b]
        e = np.sign(np64(g)[b]) * masks[b] / max(masks[b].sum(), 1)
        v = (np64(x)[b] - x0b) - step * e
        delta = np64(got)[b] - x0b
        brute = proj_l1_box_sorted(v, x0b, eps)
        np.testing.assert_allclose(delta, brute, rtol=0, atol=2e-6)
        assert np.abs(delta).sum() <= eps * (1 + 1e-6) + 1e-6
        assert (x0b + delta >= 0).all() and (x0b + delta <= 1).all()

        dist = np.linalg.norm(delta - v)
        others = [np64(adv)[b] - x0b]
        for _ in range(8):  # random feasible points: in the box, scaled into the ball
            r = rng.uniform(-x0b, 1 - x0b)
            others.append(r * min(1.0, eps / max(np.abs(r).sum(), 1e-30)))
        for o in others:
            o = o * min(1.0, eps / max(np.abs(o).sum(), 1e-30))  # exactly feasible in float64
            for alpha in (1.0, 0.1, 1e-3):  # convex combinations stay feasible
                cand = (1 - alpha) * brute + alpha * o
                assert dist <= np.linalg.norm(cand - v) + 1e-6


# --------------------------------------------------------------------------
# 2. Triton launchers (interpreter) vs reference


@pytest.mark.parametrize("shape", SHAPES)
@tri
def test_tri_linf(tk, shape):
    x, x0, g = make_inputs(shape, 11)
    for step, eps in [(0.01, 0.03), (0.05, INF)]:
        got = tk["linf"].linf_step(x, x0, g, step, eps)
        assert (got - x0).abs().max() <= eps + 1e-6 and got.min() >= 0 and got.max() <= 1
        torch.testing.assert_close(got, R.linf_step(x, x0, g, step, eps), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@tri
def test_tri_l2(tk, shape):
    x, x0, g = make_inputs(shape, 12, spread=0.01, saturate=False)
    # The kernel gets ||v|| from <d,d>, <d,g>, <g,g>; x_cancel makes v ~ 0
    # (d ~ a*g), the worst case for that expansion.
    gn = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x_cancel = x0 + 0.05 * g / gn
    cases = [(x, 0.2, 0.5), (x0, 0.5, 0.5), (x, 0.3, INF), (x_cancel, 0.05, 1e-3), (x_cancel, 0.05, 0.04)]
    for xs, step, eps in cases:
        got = tk["l2"].l2_step(xs, x0, g, step, eps)
        torch.testing.assert_close(got, R.l2_step(xs, x0, g, step, eps), rtol=0, atol=1e-6)
        assert ((got - x0).double().flatten(1).norm(dim=1) <= eps * (1 + 1e-6)).all()


@tri
def test_tri_partial_sums_loop(tk, monkeypatch):
    """Many blocks per sample: phase 2 loops over several chunks of partials, with ragged ends."""
    for mod in (tk["l2"], tk["mifgsm"]):
        monkeypatch.setattr(mod, "BLOCK", 64)
        monkeypatch.setattr(mod, "PBLOCK", 4)
    x, x0, g = make_inputs((2, 3, 17, 29), 23)  # 24 blocks -> 6 partial chunks
    m = torch.randn_like(g)
    torch.testing.assert_close(
        tk["l2"].l2_step(x, x0, g, 0.2, 0.3), R.l2_step(x, x0, g, 0.2, 0.3), rtol=0, atol=1e-6
    )
    for a, b in zip(
        tk["mifgsm"].mifgsm_step(x, x0, g, m, 0.01, 0.03, 1.0), R.mifgsm_step(x, x0, g, m, 0.01, 0.03, 1.0)
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SHAPES)
@tri
def test_tri_mifgsm(tk, shape):
    x, x0, g = make_inputs(shape, 13)
    m = 1e-3 * torch.randn(shape, generator=torch.Generator().manual_seed(14))
    xn, mn = tk["mifgsm"].mifgsm_step(x, x0, g, m, 0.01, 0.03, 0.9)
    rxn, rmn = R.mifgsm_step(x, x0, g, m, 0.01, 0.03, 0.9)
    torch.testing.assert_close(xn, rxn, rtol=0, atol=1e-6)
    torch.testing.assert_close(mn, rmn, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("projection", ["exact", "advertorch"])
@tri
def test_tri_slide(tk, shape, projection):
    x, x0, g = make_inputs(shape, 15)
    got = tk["slide"].slide_step(x, x0, g, 1.0, 2.0, 0.99, projection)
    torch.testing.assert_close(got, R.slide_step(x, x0, g, 1.0, 2.0, 0.99, projection), rtol=0, atol=1e-6)
    assert got.min() >= 0 and got.max() <= 1
    if projection == "exact":
        assert ((got - x0).double().flatten(1).abs().sum(dim=1) <= 2.0 * (1 + 1e-6) + 1e-6).all()


@tri
def test_tri_slide_gpu_tiles(tk, monkeypatch):
    """The tile sizes the GPU runs: D = 3*17*29 = 1479 is split into several chunks, the last ragged."""
    mod = tk["slide"]
    monkeypatch.setattr(mod, "BLOCK", tk["slide_gpu_block"])
    monkeypatch.setattr(mod, "TARGET_PROGRAMS", tk["slide_gpu_target"])
    chunk, nb = mod.chunking(2, 1479)
    assert nb >= 3 and 1479 % chunk, (chunk, nb)
    x, x0, g = make_inputs((2, 3, 17, 29), 16)
    torch.testing.assert_close(
        mod.slide_step(x, x0, g, 1.0, 1.5, 0.95, "exact"), R.slide_step(x, x0, g, 1.0, 1.5, 0.95, "exact"), rtol=0,
        atol=1e-6,
    )


@tri
def test_tri_slide_many_chunks(tk, monkeypatch):
    """Each sample's D over three programs (ragged last chunk and last tile, the partials added in
    two trips, the second ragged): still the reference's selection, ties included, and its result."""
    mod = tk["slide"]
    monkeypatch.setattr(mod, "BLOCK", 256)
    monkeypatch.setattr(mod, "PBLOCK", 2)
    monkeypatch.setattr(mod, "chunking", lambda B, D: (512, -(-D // 512)))
    shape = (2, 3, 17, 29)  # D = 1479 = 2 * 512 + 256 + 199
    x, x0, g = make_inputs(shape, 24, spread=0.2)
    ties = _tie_grad(shape, 25)
    np.testing.assert_array_equal(_mask_probe(mod.slide_step, ties, 0.9), _mask_probe(R.slide_step, ties, 0.9))
    for grad, projection, eps in ((ties, "exact", 3.0), (g, "advertorch", 1.0)):
        got = mod.slide_step(x, x0, grad, 2.0, eps, 0.9, projection)
        torch.testing.assert_close(got, R.slide_step(x, x0, grad, 2.0, eps, 0.9, projection), rtol=0, atol=1e-6)


@tri
def test_tri_slide_exact_k(tk, monkeypatch):
    """Exact k, ties to the lowest index, on tie-heavy gradients: the reference's step, whether a
    sample is one program or split over three (the ties ranked across chunks and tiles)."""
    mod = tk["slide"]
    shape = (2, 3, 17, 29)
    x, x0, _ = make_inputs(shape, 26, spread=0.2)
    g = _tie_grad(shape, 27)
    for split in (False, True):
        if split:
            monkeypatch.setattr(mod, "BLOCK", 256)
            monkeypatch.setattr(mod, "PBLOCK", 2)
            monkeypatch.setattr(mod, "chunking", lambda B, D: (512, -(-D // 512)))
        for sparsity in (0.5, 0.9):
            np.testing.assert_array_equal(
                (_step_probe(mod.slide_step, g, sparsity, ties="lowest-index") != 0).numpy(),
                advertorch_slide_mask(g, sparsity))
        for projection, eps in (("exact", 3.0), ("advertorch", 1.0)):
            got = mod.slide_step(x, x0, g, 2.0, eps, 0.9, projection, ties="lowest-index")
            want = R.slide_step(x, x0, g, 2.0, eps, 0.9, projection, ties="lowest-index")
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 3, 17, 29), (2, 7), (1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.999])  # middle values: test_tri_slide_many_chunks
@tri
def test_tri_slide_mask(tk, shape, sparsity):
    for g in (_tie_grad(shape, 17), torch.randn(shape, generator=torch.Generator().manual_seed(17))):
        np.testing.assert_array_equal(
            _mask_probe(tk["slide"].slide_step, g, sparsity), _mask_probe(R.slide_step, g, sparsity)
        )


@tri
def test_tri_bench_agreement(tk):
    """The agreement check `make gpu-check` runs natively on the GPU (bench.bench_kernels) works and
    passes here, interpreted: every kernel, SLIDE with ties too."""
    from bench.bench_kernels import agreement

    rows = agreement("cpu", shapes=((2, 7),))
    assert {r["kernel"] for r in rows} == {"linf", "l2", "mifgsm", "slide-exact", "slide-advertorch", "slide-exact-k"}
    assert any(r["ties"] for r in rows) and all(r["ok"] for r in rows), rows


@tri
def test_tri_edge_cases(tk):
    class Mod:
        linf_step = staticmethod(tk["linf"].linf_step)
        l2_step = staticmethod(tk["l2"].l2_step)
        mifgsm_step = staticmethod(tk["mifgsm"].mifgsm_step)
        slide_step = staticmethod(tk["slide"].slide_step)

    _check_edges(Mod)


@tri
def test_tri_noncontiguous_and_out(tk):
    x, x0, g = make_inputs((2, 3, 29, 17), 18)
    # Non-contiguous views of the same values: transposed storage.
    xt, x0t, gt = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (x, x0, g))
    assert not xt.is_contiguous()
    m = torch.randn_like(g)
    cases = {
        "linf": (
            lambda a, b, c, **kw: tk["linf"].linf_step(a, b, c, 0.01, 0.03, **kw),
            R.linf_step,
            (0.01, 0.03),
        ),
        "l2": (lambda a, b, c, **kw: tk["l2"].l2_step(a, b, c, 0.3, 0.5, **kw), R.l2_step, (0.3, 0.5)),
        "slide": (
            lambda a, b, c, **kw: tk["slide"].slide_step(a, b, c, 1.0, 1.0, 0.99, "exact", **kw),
            R.slide_step,
            (1.0, 1.0, 0.99, "exact"),
        ),
    }
    for name, (fn, ref, args) in cases.items():
        want = ref(x, x0, g, *args)
        torch.testing.assert_close(fn(xt, x0t, gt), want, rtol=0, atol=1e-6, msg=name)
        before = [t.clone() for t in (x, x0, g)]
        # out aliasing the iterate, contiguous (kernel writes in place) ...
        xx = x.clone()
        assert fn(xx, x0, g, out=xx) is xx
        torch.testing.assert_close(xx, want, rtol=0, atol=1e-6, msg=name)
        # ... and non-contiguous (written through a temporary).
        xx = xt.clone(memory_format=torch.preserve_format)
        assert fn(xx, x0t, gt, out=xx) is xx
        torch.testing.assert_close(xx, want, rtol=0, atol=1e-6, msg=name)
        for a, b in zip((x, x0, g), before):
            assert torch.equal(a, b), name
    mi = tk["mifgsm"].mifgsm_step
    rxn, rmn = R.mifgsm_step(x, x0, g, m, 0.01, 0.03, 1.0)
    xx, mm = x.clone(), m.clone()
    rx, rm = mi(xx, x0, g, mm, 0.01, 0.03, 1.0, out=xx, momentum_out=mm)
    assert rx is xx and rm is mm
    torch.testing.assert_close(xx, rxn, rtol=0, atol=1e-6)
    torch.testing.assert_close(mm, rmn, rtol=1e-6, atol=1e-9)
    xn, mn = mi(xt, x0t, gt, m.transpose(2, 3).contiguous().transpose(2, 3), 0.01, 0.03, 1.0)
    torch.testing.assert_close(xn, rxn, rtol=0, atol=1e-6)


@tri
def test_tri_rejects_non_float32(tk):
    x, x0, g = make_inputs((1, 5), 19)
    with pytest.raises(TypeError):
        tk["linf"].linf_step(x.double(), x0.double(), g.double(), 0.1, 0.1)


# --------------------------------------------------------------------------
# 4. dispatch, compile friendliness, GPU compilation


def test_backend_for(monkeypatch):
    cpu = torch.zeros(2, 3)
    monkeypatch.delenv("SML_KERNELS", raising=False)
    assert dispatch.backend_for(cpu) == "torch"

    class FakeCuda:  # backend_for only looks at these attributes
        is_cuda = True
        dtype = torch.float32

    expected = "triton" if dispatch.triton_available() else "torch"
    assert dispatch.backend_for(FakeCuda()) == expected
    monkeypatch.setenv("SML_KERNELS", "torch")
    assert dispatch.backend_for(FakeCuda()) == "torch"
    monkeypatch.setenv("SML_KERNELS", "triton")
    assert dispatch.backend_for(cpu) == "triton"
    if not IN_INTERPRETER:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            dispatch.linf_step(cpu, cpu, cpu, 0.1, 0.1)
    monkeypatch.setenv("SML_KERNELS", "cuda-please")
    with pytest.raises(ValueError):
        dispatch.backend_for(cpu)


@tri
def test_tri_dispatch_routes_to_triton(tk, monkeypatch):
    """SML_KERNELS=triton sends CPU tensors to the (interpreted) launchers."""
    monkeypatch.setenv("SML_KERNELS", "triton")
    x, x0, g = make_inputs((2, 3, 9, 11), 20)
    m = torch.randn_like(g)
    calls = []
    monkeypatch.setattr(tk["linf"], "_linf_kernel", LaunchSpy(tk["linf"]._linf_kernel, calls))
    assert dispatch.backend_for(x) == "triton"
    torch.testing.assert_close(dispatch.linf_step(x, x0, g, 0.1, 0.1), R.linf_step(x, x0, g, 0.1, 0.1))
    assert calls, "dispatch did not reach the Triton launcher"
    torch.testing.assert_close(
        dispatch.l2_step(x, x0, g, 0.1, 0.2), R.l2_step(x, x0, g, 0.1, 0.2), rtol=0, atol=1e-6
    )
    for a, b in zip(
        dispatch.mifgsm_step(x, x0, g, m, 0.1, 0.1, 1.0), R.mifgsm_step(x, x0, g, m, 0.1, 0.1, 1.0)
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        dispatch.slide_step(x, x0, g, 1.0, 1.0, 0.9, "advertorch"),
        R.slide_step(x, x0, g, 1.0, 1.0, 0.9, "advertorch"),
        rtol=0,
        atol=1e-6,
    )
    monkeypatch.setenv("SML_KERNELS", "torch")
    calls.clear()
    dispatch.linf_step(x, x0, g, 0.1, 0.1)
    assert not calls


class LaunchSpy:
    """Stands in for a @triton.jit kernel: records each launch's grid, then launches."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.kernel[grid]


def test_dispatch_without_triton(monkeypatch):
    """kernels.dispatch imports and falls back to torch when triton cannot be imported."""
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delenv("SML_KERNELS", raising=False)
    spec = importlib.util.spec_from_file_location("kernels._test_nodeps_dispatch", KDIR / "dispatch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    class FakeCuda:
        is_cuda = True
        dtype = torch.float32

    assert not mod.triton_available()
    assert mod.backend_for(FakeCuda()) == "torch"
    x, x0, g = make_inputs((1, 4), 21)
    torch.testing.assert_close(mod.linf_step(x, x0, g, 0.1, 0.1), R.linf_step(x, x0, g, 0.1, 0.1))


def _compile_cases():
    x, x0, g = make_inputs((2, 3, 9, 11), 22)
    m = torch.randn_like(g)
    return {
        "linf": (R.linf_step, (x, x0, g, 0.01, 0.03)),
        "l2": (R.l2_step, (x, x0, g, 0.1, 0.2)),
        "mifgsm": (R.mifgsm_step, (x, x0, g, m, 0.01, 0.03, 1.0)),
        "slide": (R.slide_step, (x, x0, g, 1.0, 0.5, 0.9, "exact")),
        "slide_adv": (lambda *a: R.slide_step(*a, projection="advertorch"), (x, x0, g, 1.0, 0.5, 0.9)),
        # The public wrappers too (on CPU they resolve to the reference).
        "dispatch_linf": (dispatch.linf_step, (x, x0, g, 0.01, 0.03)),
        "dispatch_slide": (dispatch.slide_step, (x, x0, g, 1.0, 0.5, 0.9, "exact")),
    }


def check_traces_as_one_graph(backend, cases):
    """Each ``name: (fn, args)`` of ``cases`` compiles with ``fullgraph`` under ``backend`` and
    gives what it gives eagerly."""
    for name, (fn, args) in cases.items():
        # fullgraph: any graph break (.item(), data-dependent branching) fails.
        got = torch.compile(fn, backend=backend, fullgraph=True)(*args)
        want = fn(*args)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    torch._dynamo.reset()


def test_reference_traces_fullgraph(monkeypatch):
    """Dynamo captures each reference as a single graph (cheap: no inductor codegen)."""
    monkeypatch.delenv("SML_KERNELS", raising=False)
    check_traces_as_one_graph("aot_eager", _compile_cases())


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SML_SLOW_TESTS") != "1", reason="set SML_SLOW_TESTS=1 (~40 s inductor compile)"
)
def test_reference_compiles_inductor(monkeypatch):
    """Full inductor compile on CPU: ~40 s on 2 cores, mostly slide's two 31-pass searches."""
    monkeypatch.delenv("SML_KERNELS", raising=False)
    check_traces_as_one_graph("inductor", _compile_cases())


def ptxas_available():
    try:
        import triton

        return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()
    except ImportError:
        return False


class _Recorder:
    """Stands in for a @triton.jit kernel: records what a launcher passes instead of launching."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((args, kw))


# One example call per public step of kernels.dispatch (odd shapes; every projection): the AOT
# test drives the launchers through these, so it compiles what the launchers really launch.
_EXAMPLE_CALLS = {
    "linf_step": lambda x, x0, g, m: [dict(args=(x, x0, g, 0.1, 0.2))],
    "l2_step": lambda x, x0, g, m: [dict(args=(x, x0, g, 0.1, 0.2))],
    "mifgsm_step": lambda x, x0, g, m: [dict(args=(x, x0, g, m, 0.1, 0.2, 1.0))],
    "slide_step": lambda x, x0, g, m: [dict(args=(x, x0, g, 1.0, 2.0, 0.9), kw={"projection": p, "ties": t})
                                       for p in ("exact", "advertorch") for t in ("all", "lowest-index")],
}


def _aot_cases(monkeypatch):
    """(kernel, signature, constexprs, num_warps) of every launch the public steps of
    kernels.dispatch make (its example calls), over every kernel module of kernels/."""
    from kernels import dispatch as D

    modules = [importlib.import_module(f"kernels.{f.stem}") for f in sorted(KDIR.glob("*.py"))
               if not f.stem.startswith("_")]
    missing = sorted(set(D.__all__) - {"backend_for"} - set(_EXAMPLE_CALLS))
    assert not missing, f"add an example call to _EXAMPLE_CALLS for {missing}"

    def calls():
        x = torch.rand(3, 3, 5, 7)
        x0, g, m = torch.rand_like(x), torch.randn_like(x), torch.randn_like(x)
        for name, make in _EXAMPLE_CALLS.items():
            for call in make(x, x0, g, m):
                getattr(D, name)(*call["args"], **call.get("kw", {}))

    return record_launches(monkeypatch, modules, calls)


def record_launches(monkeypatch, modules, calls):
    """(kernel, signature, constexprs, num_warps) of every launch ``calls()`` makes through the
    routers of kernels.dispatch (sent to the Triton launchers whatever the device), with each of
    ``modules``' entry kernels (``*_kernel``) replaced by recorders; a kernel that no call launches
    is an error, so a new kernel cannot go without its AOT case."""
    import triton

    from kernels import dispatch as D

    recorders = {}
    for mod in modules:
        stem = mod.__name__.rsplit(".", 1)[-1]
        for name, obj in vars(mod).items():
            if not isinstance(obj, triton.runtime.jit.JITFunction):
                continue
            # A kernel is launched if it asks for its program id (helpers are passed the ids); the
            # name rule makes that visible, and only launched kernels are recorded.
            assert ("program_id" in obj.src) == name.endswith("_kernel"), (
                f"kernels.{stem}.{name}: name the launched kernels *_kernel, and only them")
            if name.endswith("_kernel"):
                rec = recorders[f"{stem}.{name}"] = _Recorder(obj)
                monkeypatch.setattr(mod, name, rec)
    assert recorders, "no Triton kernels found"
    monkeypatch.setattr(D, "_use_triton", lambda x: True)
    calls()
    unlaunched = sorted(k for k, r in recorders.items() if not r.calls)
    assert not unlaunched, f"no public step launches {unlaunched}: give it an example call"

    def kind(v):
        if isinstance(v, torch.Tensor):
            return {torch.float32: "*fp32", torch.int32: "*i32", torch.int64: "*i64"}[v.dtype]
        if isinstance(v, bool):
            return "i1"
        if isinstance(v, int):
            return "i32" if -(2**31) <= v < 2**31 else "i64"
        return "fp32"

    cases = []
    for key, rec in recorders.items():
        for args, kw in rec.calls:
            params = rec.fn.params
            plain = [p for p in params if not p.is_constexpr]
            assert len(args) == len(plain), f"{key}: constexprs must be passed by keyword"
            sig = {p.name: kind(v) for p, v in zip(plain, args)}
            cx = {p.name: kw[p.name] for p in params if p.is_constexpr}
            sig.update({n: "constexpr" for n in cx})
            cases.append((key, rec.fn, sig, cx, kw.get("num_warps", 4)))
    return cases


@pytest.mark.skipif(IN_INTERPRETER, reason="needs compiled (non-interpreted) triton")
@pytest.mark.skipif(not ptxas_available(), reason="triton without the NVIDIA backend toolchain")
@pytest.mark.parametrize("arch", [80, 90], ids=["sm_80", "sm_90"])
def test_kernels_compile_for_gpu(arch, monkeypatch):
    """Compile every kernel launch the public steps make to a cubin for A100 (sm_80) and H100/H200
    (sm_90), with the signature and constexprs the launchers pass (no GPU needed).

    The interpreter accepts code the compiler rejects (e.g. non-constexpr globals, reassigned
    constexprs), so this catches GPU-only breakage on a CPU-only CI.
    """
    from triton.runtime.interpreter import InterpretedFunction

    import kernels.linf as linf

    if isinstance(linf._linf_kernel, InterpretedFunction):
        pytest.skip("kernel modules were imported under TRITON_INTERPRET=1 in this process")
    cases = _aot_cases(monkeypatch)
    assert len(cases) >= 7
    compile_for_gpu(cases, arch)


def compile_for_gpu(cases, arch):
    """Compile each of ``cases`` (record_launches') to a cubin for sm_``arch`` (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    seen = set()
    for key, fn, sig, cx, nw in cases:
        ident = (key, tuple(sorted(sig.items())), tuple(sorted(cx.items())), nw)
        if ident in seen:
            continue
        seen.add(ident)
        src = ASTSource(fn=fn, signature=sig, constexprs=cx)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": nw})
        ptx = compiled.asm["ptx"]
        assert ".entry" in ptx and f".target sm_{arch}" in ptx, key
        assert compiled.asm.get("cubin"), key
        # Scalars are computed with IEEE rounding on purpose (see kernels).
        assert "div.full" not in ptx and "sqrt.approx" not in ptx, key


@pytest.mark.skipif(IN_INTERPRETER, reason="needs compiled (non-interpreted) triton")
@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_aot_cases_catch_a_kernel_without_a_launch(monkeypatch):
    """A new kernel that no public step launches (so no AOT case) fails the AOT test's collection."""
    import triton
    import triton.language as tl

    import kernels.linf as linf

    @triton.jit
    def _orphan_kernel(x_ptr, BLOCK: tl.constexpr):
        tl.store(x_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), 0.0)

    assert len(_aot_cases(monkeypatch)) >= 7  # as shipped: every kernel has its launch
    monkeypatch.setattr(linf, "_orphan_kernel", _orphan_kernel, raising=False)
    with pytest.raises(AssertionError, match="linf._orphan_kernel"):
        _aot_cases(monkeypatch)
    monkeypatch.delattr(linf, "_orphan_kernel")
    monkeypatch.setattr(linf, "_orphan", _orphan_kernel, raising=False)  # launched, but not named so
    with pytest.raises(AssertionError, match="name the launched kernels"):
        _aot_cases(monkeypatch)


def test_public_api():
    for name in ("linf_step", "l2_step", "mifgsm_step", "slide_step", "backend_for"):
        assert getattr(kernels, name) is getattr(dispatch, name)
