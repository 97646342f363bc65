"""The development page's recipes (docs/development.md), each followed once, as a contributor follows
it: an attack (a step of the shared driver, and a solver attack with a shared resource), a kernel, a
data-set loader and a store field. Each example is written here as it would be written in its module,
registered (or patched in) for the test's duration only, and goes through exactly the checks and
commands the shipped ones go through: the attack and loader contract tests, the validation tests, the
documentation generator, `sml attack`, `sml report`, `sml export`, sweeps, the kernel interpreter and
ahead-of-time tests, xarray."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from fixtures import DATA_WRITERS, jpeg
from test_attacks import attack_batch, check_attack_contract
from test_contracts import check_loader_contract
from test_docs import load_generator
from test_kernels import (
    HAS_TRITON,
    IN_INTERPRETER,
    SHAPES,
    LaunchSpy,
    check_traces_as_one_graph,
    compile_for_gpu,
    interpreter_suite,
    make_inputs,
    np64,
    ptxas_available,
    record_launches,
    tri,
)
from test_validation import check_attack_validation

import cli.main
import kernels
from engine import attacks, data, models, results
from engine.attacks import driver, losses
from engine.attacks.driver import finalize, grad_and_logits
from engine.attacks.registry import MAX_ITERATIONS, AttackConfig, AttackSpec, Passes, register, unregister
from engine.config import param
from engine.data.base import ImageListDataset
from engine.data.generic import inside
from engine.data.loader import Loader
from engine.data.loader import register as register_loader
from engine.data.loader import unregister as unregister_loader
from engine.data.split import Record, build
from engine.errors import UserError
from engine.results import format as store_format
from engine.results import writer
from engine.runtime import runner
from engine.runtime.sweep import load_sweep, run_sweep
from engine.runtime.sweep.sweepfile import SweepSettings
from kernels import dispatch, reference


def sml(capsys, *argv) -> tuple[int, str]:
    """`sml ARGV` in this process: (exit code, stderr)."""
    rc = cli.main.main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


# ================================================================ (a) an attack
# ---------------------------------------------------------------- a step of the shared driver
@dataclass(frozen=True, kw_only=True)
class SignDecayConfig(AttackConfig):
    """Signed gradient steps whose size shrinks geometrically: x <- clip(Proj_eps(x - s_t sign(grad L))),
    s_t = step * decay^t, within the Linf ball of radius eps and [0, 1]."""

    eps: float = param(0.3, ge=0, doc="perturbation budget: the radius of the Linf ball around the clean image")
    step: float = param(0.05, ge=0, doc="size of the first step")
    decay: float = param(0.8, gt=0, le=1, doc="each step is this share of the one before")
    iterations: int = param(20, ge=1, le=MAX_ITERATIONS, doc="iterations")


def _decay_init(x0, cfg, noise):
    # The state is per sample (the driver keeps it in step with the batch when samples leave it):
    # each sample's next step size. No random start: the driver takes the targets from step 0's pass.
    return x0.clone(), torch.full((x0.shape[0],), cfg.step, dtype=x0.dtype, device=x0.device)


def _decay_step(x, x0, grad, size, cfg, k=None):
    # ``k``: the kernel namespace (kernels.dispatch eagerly, kernels.reference inside torch.compile).
    # No fused step takes a size per sample, so this one is plain torch.
    s = size.view(-1, *([1] * (x.dim() - 1)))
    x_new = torch.minimum(torch.maximum(x - s * grad.sign(), x0 - cfg.eps), x0 + cfg.eps).clamp(0, 1)
    return x_new, size * cfg.decay


SIGN_DECAY = AttackSpec(
    name="signdecay", family="gradient", title="Sign-Decay", reference="an example of the development page",
    config=SignDecayConfig, norm="linf", doc=SignDecayConfig.__doc__, step=_decay_step, init=_decay_init,
    bound="eps", quick={"iterations": 8},
    presets={"paper": {"eps": 0.3, "step": 0.05, "decay": 0.8, "iterations": 20},
             "gentle": {"eps": 0.1, "step": 0.02, "decay": 0.9, "iterations": 20}},
)


# ---------------------------------------------------------------- a solver attack with a shared resource
class SignPool:
    """Stands in for a solver's worker pool: solves each sample's sub-problem (here: the sign of
    its gradient) and counts how often it is built and closed."""

    made: list[SignPool] = []

    def __init__(self, workers: int, threads: int | None):
        self.workers, self.threads, self.closed, self.calls = workers, threads, False, 0
        SignPool.made.append(self)

    def solve(self, grads: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.sign(grads)

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True, kw_only=True)
class SignSolveConfig(AttackConfig):
    """Example solver attack: each iteration, a pool (when the runtime gives one) solves every sample's
    sub-problem, here the sign of its gradient, and the sample steps by eps / iterations along it."""

    eps: float = param(0.1, ge=0, doc="perturbation budget: the radius of the Linf ball around the clean image")
    iterations: int = param(4, ge=1, le=MAX_ITERATIONS, doc="iterations")


def _solve_run(model, x0, y_star, eligible, cfg: SignSolveConfig, ctx):
    pool = ctx.get("sign_pool")
    loss_fn = losses.get(cfg.loss, cfg.prob_clamp)  # the config's loss, as every attack minimises it
    n = len(x0)
    x = x0.clone()
    best = torch.zeros(n, dtype=torch.long, device=x0.device)
    bad_iter = torch.full((n,), -1, dtype=torch.long, device=x0.device)
    for it in range(cfg.iterations):
        grad, logits = grad_and_logits(model, x, y_star, loss_fn)
        # A sample whose logits turn non-finite stays where it is from then on; finalize records it failed.
        bad_iter = torch.where(~torch.isfinite(logits).all(1) & (bad_iter < 0), it, bad_iter)
        live = (bad_iter < 0) & eligible
        best = torch.maximum(best, torch.where(live, (logits >= 0).sum(1), 0))
        g = grad.cpu().numpy()
        s = torch.from_numpy(pool.solve(g) if pool is not None else np.sign(g)).to(x)
        x_new = torch.minimum(torch.maximum(x - s * (cfg.eps / cfg.iterations), x0 - cfg.eps), x0 + cfg.eps)
        x = torch.where(live.view(-1, 1, 1, 1), x_new.clamp(0, 1), x)
    iters = torch.where(eligible, cfg.iterations, 0)
    return finalize(model, x0, x, y_star, eligible, best, torch.zeros_like(eligible), iters, bad_iter)


SIGN_SOLVE = AttackSpec(
    name="signsolve", family="solver", title="Sign-Solve", reference="an example of the development page",
    config=SignSolveConfig, norm="linf", doc=SignSolveConfig.__doc__, run=_solve_run, bound="eps",
    cpu_bound=True, resources={"sign_pool": SignPool},
    # Per iteration one forward + backward; once: the clean forward for the targets, the final scoring.
    cost=lambda cfg, l: Passes(grad=cfg.iterations, fwd=2),
    presets={"paper": {}},
)
EXAMPLE_ATTACKS = (SIGN_DECAY, SIGN_SOLVE)


@pytest.fixture
def example_attacks():
    SignPool.made.clear()
    for spec in EXAMPLE_ATTACKS:
        register(spec)
    yield EXAMPLE_ATTACKS
    for spec in EXAMPLE_ATTACKS:
        unregister(spec.name)


@pytest.fixture(scope="module")
def batch(trained, demo_root):
    return attack_batch(trained, demo_root)


def test_attack_recipe_lands_in_the_registry_and_on_its_family_page(example_attacks):
    assert {"signdecay", "signsolve"} <= set(attacks.names())
    pages = load_generator().attack_pages.render()
    for spec in example_attacks:
        page = pages[f"docs/attacks/{spec.family}.md"]
        assert f"## {spec.title} (`{spec.name}`)" in page
        assert f"| [{spec.title}]({spec.family}.md) | `{spec.name}` |" in pages["docs/attacks/index.md"]
    gradient, solver = pages["docs/attacks/gradient.md"], pages["docs/attacks/solver.md"]
    assert "| `decay` | float | 0.8 | in (0, 1] | each step is this share of the one before |" in gradient
    assert "| `gentle` | `eps` 0.1, `step` 0.02, `decay` 0.9, `iterations` 20 | 20 forward+backward, 1 forward |" \
        in gradient
    assert "| `paper` | the defaults | 4 forward+backward, 2 forward |" in solver


def test_traits_give_the_defaults(example_attacks):
    assert SweepSettings().cpu_attacks == tuple(n for n in attacks.names() if attacks.get(n).cpu_bound)
    assert "signsolve" in SweepSettings().cpu_attacks and "signdecay" not in SweepSettings().cpu_attacks
    assert attacks.get("signdecay").passes(attacks.make_config("signdecay"), 20) == Passes(grad=20, fwd=1)


@pytest.mark.parametrize("name", [s.name for s in EXAMPLE_ATTACKS])
def test_attack_recipe_passes_the_attack_contract(name, example_attacks, trained, batch):
    check_attack_contract(name, trained, batch)


@pytest.mark.parametrize("name", [s.name for s in EXAMPLE_ATTACKS])
def test_attack_recipe_passes_the_validation_checks(name, example_attacks, tmp_path, capsys):
    check_attack_validation(name, tmp_path, capsys)


def test_sml_attack_and_report_run_the_example(example_attacks, trained, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    for preset in ("paper", "gentle"):
        rc, err = sml(capsys, "attack", "--checkpoint", trained["mlgcn"], "--attack", "signdecay", "--preset", preset,
                      "--n", 8, "--chunk-size", 4, "--out", store, "--no-progress")
        assert rc == 0, err
    demo = zarr.open_group(str(store), mode="r")["mlgcn/demo"]
    for key, eps in (("signdecay", 0.3), ("signdecay.gentle.show-many", 0.1)):
        run = demo[key]
        assert results.done_chunks(run).all()
        clean = results.read(run, "labels_true").sum(1)
        assert results.read(run, "label_count_final").mean() > clean.mean()  # labels shown went up
        assert results.read(run, "norms")[:, 3].max() <= eps + 1e-6  # within the Linf bound
    rc, err = sml(capsys, "report", store, "--out", tmp_path / "report")
    assert rc == 0, err
    tables = (tmp_path / "report" / "tables.md").read_text()
    assert "| Sign-Decay |" in tables and "| Sign-Decay (gentle) |" in tables


def test_sml_attack_runs_the_solver_with_one_shared_resource(example_attacks, trained, tmp_path):
    res = runner.attack_checkpoint(trained["mlgcn"], "signsolve", tmp_path / "s.zarr", n=8, chunk_size=4,
                                   batch_size=2, workers=3, progress=False)
    assert res["chunks_run"] == 2 and res["n"] == 8
    assert len(SignPool.made) == 1  # once per process, shared by all 4 batches
    pool = SignPool.made[0]
    assert pool.workers == 3 and pool.threads is None and pool.closed and pool.calls == 4 * SignSolveConfig().iterations
    run = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")[res["group"]]
    clean = np.asarray(run["labels_true"][:]).sum(1)
    final = np.asarray(run["label_count_final"][:])
    assert final.mean() > clean.mean()  # labels shown went up
    assert np.asarray(run["norms"][:])[:, 3].max() <= SignSolveConfig().eps + 1e-6  # Linf bound held


def test_sweep_runs_the_solver_without_naming_it_anywhere(example_attacks, trained, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(f'[sweep]\nbase = "."\n[protocol]\nn = 4\nchunk_size = 2\nbatch_size = 2\n'
                    f'[[model]]\ncheckpoint = "{trained["mlgcn"]}"\nkey = "g"\n[[attack]]\nname = "signsolve"\n')
    assert "signsolve" in load_sweep(path).cpu_attacks
    res = run_sweep(path, tmp_path / "s.zarr", local=True, progress=False)
    assert res["shards_done"] == res["shards_total"] == 2
    assert not SignPool.made  # the in-process worker has no workers to give: the attack manages alone


def test_registry_wants_a_step_or_a_run(example_attacks):
    with pytest.raises(ValueError, match="either a step"):
        register(AttackSpec(family="solver", reference="a test", name="neither", title="N", config=SignSolveConfig,
                            presets={"paper": {}}, norm="linf", doc=""))
    with pytest.raises(ValueError, match="bound 'budget' is not a field"):
        register(AttackSpec(family="solver", reference="a test", name="nobound", title="N", config=SignSolveConfig,
                            presets={"paper": {}}, norm="linf", doc="", run=_solve_run, bound="budget"))
    assert "neither" not in attacks.names() and "nobound" not in attacks.names()


# ================================================================ (b) a kernel
# A clipped-gradient step, x_new = clamp(x - step * clamp(grad, -1, 1), 0, 1): its pure-torch
# reference (a function of kernels/reference.py), its Triton kernel and launcher (a module of their
# own, kernels/clipstep.py, which this test writes into a folder of the kernels package) and its
# router (a function of kernels/dispatch.py).
CLIP_MODULE = "clipstep"


def clip_step_reference(x, grad, step: float, out=None):
    """x_new = clamp(x - step * clamp(grad, -1, 1), 0, 1)."""
    reference.check_same_shape(x, grad)
    return reference.write_out((x - step * grad.clamp(-1.0, 1.0)).clamp(0.0, 1.0), out)


def clip_step(x, grad, step: float, out=None):
    """The router: the Triton launcher for CUDA float32 tensors (or SML_KERNELS=triton), else the reference."""
    if dispatch._use_triton(x):
        return dispatch._launcher(CLIP_MODULE, "clip_step")(x, grad, step, out=out)
    return clip_step_reference(x, grad, step, out=out)


CLIP_SOURCE = '''"""Triton kernel for the clipped-gradient step (elementwise: one 1-D grid over the flattened batch)."""

from __future__ import annotations

import triton
import triton.language as tl

from .launch import as_f32_contiguous, finish, result_buffer
from .reference import check_same_shape

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _clip_kernel(x_ptr, g_ptr, out_ptr, N, step, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    g = tl.minimum(tl.maximum(tl.load(g_ptr + offs, mask=m, other=0.0), -1.0), 1.0)
    tl.store(out_ptr + offs, tl.minimum(tl.maximum(x - step * g, 0.0), 1.0), mask=m)


def clip_step(x, grad, step: float, out=None):
    """Triton launcher; same contract as the reference."""
    check_same_shape(x, grad)
    xc, gc = as_f32_contiguous(x, grad)
    res = result_buffer(xc, out)
    n = xc.numel()
    if n > 0:
        _clip_kernel[(triton.cdiv(n, BLOCK),)](xc, gc, res, n, float(step), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return finish(res, out)
'''
# Odd shapes: the sizes of tests/test_kernels.py, and ones smaller than a block.
ODD_SHAPES = [*SHAPES, (2, 7), (1, 1)]


@pytest.fixture
def clip_module(tmp_path, monkeypatch):
    """kernels.clipstep, from a folder the kernels package reads modules from for this test only."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    (folder / f"{CLIP_MODULE}.py").write_text(CLIP_SOURCE)
    monkeypatch.setattr(kernels, "__path__", [*kernels.__path__, str(folder)])
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(f"kernels.{CLIP_MODULE}")
    finally:
        sys.modules.pop(f"kernels.{CLIP_MODULE}", None)
        if hasattr(kernels, CLIP_MODULE):
            delattr(kernels, CLIP_MODULE)


def _clip_inputs(shape, seed):
    x, _, g = make_inputs(shape, seed)
    return x, 3 * g  # a third of the gradient beyond the clip


def test_kernel_recipe_reference_and_router_on_the_cpu(monkeypatch):
    monkeypatch.delenv("SML_KERNELS", raising=False)
    for i, shape in enumerate(ODD_SHAPES):
        x, g = _clip_inputs(shape, 30 + i)
        plain = np.clip(np64(x) - 0.1 * np.clip(np64(g), -1, 1), 0, 1)  # float64, written independently
        np.testing.assert_allclose(np64(clip_step_reference(x, g, 0.1)), plain, rtol=0, atol=1e-6)
        assert dispatch.backend_for(x) == "torch" and torch.equal(clip_step(x, g, 0.1), clip_step_reference(x, g, 0.1))
    x, g = _clip_inputs((2, 3, 9, 11), 36)
    check_traces_as_one_graph("aot_eager", {"reference": (clip_step_reference, (x, g, 0.1)),
                                            "router": (clip_step, (x, g, 0.1))})


@pytest.mark.skipif(IN_INTERPRETER, reason="this process is the interpreter run")
@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_kernel_recipe_runs_interpreted_against_its_reference():
    interpreter_suite(__file__)  # test_tri_clip_kernel, under TRITON_INTERPRET=1


@tri
def test_tri_clip_kernel(clip_module, monkeypatch):
    for i, shape in enumerate(ODD_SHAPES):
        x, g = _clip_inputs(shape, 40 + i)
        for step in (0.1, 0.0):
            torch.testing.assert_close(clip_module.clip_step(x, g, step), clip_step_reference(x, g, step),
                                       rtol=0, atol=1e-6)
    x, g = _clip_inputs((3, 3, 17, 29), 50)
    want = clip_step_reference(x, g, 0.1)
    assert clip_module.clip_step(x, g, 0.1, out=x) is x  # out may alias an input
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
    # The router sends CPU tensors to the (interpreted) launcher under SML_KERNELS=triton.
    monkeypatch.setenv("SML_KERNELS", "triton")
    launches = []
    monkeypatch.setattr(clip_module, "_clip_kernel", LaunchSpy(clip_module._clip_kernel, launches))
    torch.testing.assert_close(clip_step(x, g, 0.1), clip_step_reference(x, g, 0.1), rtol=0, atol=1e-6)
    assert launches, "the router did not reach the Triton launcher"


@pytest.mark.skipif(IN_INTERPRETER, reason="needs compiled (non-interpreted) triton")
@pytest.mark.skipif(not ptxas_available(), reason="triton without the NVIDIA backend toolchain")
@pytest.mark.parametrize("arch", [80, 90], ids=["sm_80", "sm_90"])
def test_kernel_recipe_compiles_for_gpu(arch, clip_module, monkeypatch):
    x, g = _clip_inputs((3, 3, 5, 7), 60)
    cases = record_launches(monkeypatch, [clip_module], lambda: clip_step(x, g, 0.1))
    assert [key for key, *_ in cases] == [f"{CLIP_MODULE}._clip_kernel"]
    compile_for_gpu(cases, arch)


# ================================================================ (c) a data-set loader
# The toy format: ROOT/toy.json holds the label names and, per sample, its image (a path inside ROOT),
# its label names and its split.
TOY_JSON = "toy.json"


def _read_toy(root: Path, split: str, size: int | None, allow_missing: bool, *, cache: bool) -> ImageListDataset:
    """The toy data set: ROOT/toy.json = {"label_names": [...], "samples": [{"image": "img/0.jpg",
    "labels": ["cat"], "split": "test"}, ...]}, image paths relative to ROOT."""
    path = root / TOY_JSON
    if not path.is_file():
        raise UserError(f"{path}: file missing; expected the toy data set's {TOY_JSON}")
    try:
        doc = json.loads(path.read_text())
        names, samples = [str(n) for n in doc["label_names"]], list(doc["samples"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a toy data set ({type(e).__name__}: {e})") from None
    index = {n: j for j, n in enumerate(names)}
    records = []
    for i, s in enumerate(samples):
        if s.get("split") != split:
            continue
        unknown = sorted(set(s.get("labels", [])) - set(index))
        if unknown:
            raise UserError(f"{path}: samples[{i}] has labels {unknown} that are not among its label_names")
        labels = np.zeros(len(names), dtype=np.uint8)
        labels[[index[n] for n in s.get("labels", [])]] = 1
        image = inside(root, str(s.get("image", "")), f"{path}: samples[{i}]")
        records.append(Record(str(s.get("image")), image, labels, where=f"{TOY_JSON}: samples[{i}]"))
    return build(name="toy", root=root, split=split, records=records, label_names=names, size=size,
                 allow_missing=allow_missing, cache=cache)


TOY_LOADER = Loader(name="toy", read=_read_toy, size=24, train_split="train", test_split="test",
                    splits=("train", "test"), options={"cache": False}, doc=_read_toy.__doc__)


def write_toy(root: Path, label_names, samples) -> Path:
    """A toy data set on disk. ``samples``: (split, label names, image), the image a file to copy or a
    seed to draw one from."""
    entries = []
    for i, (split, labels, image) in enumerate(samples):
        rel = f"img/{i:04d}{image.suffix if isinstance(image, Path) else '.jpg'}"
        (root / "img").mkdir(parents=True, exist_ok=True)
        if isinstance(image, Path):
            shutil.copyfile(image, root / rel)
        else:
            jpeg(root / rel, image)
        entries.append({"image": rel, "labels": list(labels), "split": split})
    (root / TOY_JSON).write_text(json.dumps({"label_names": list(label_names), "samples": entries}))
    return root


TOY_SAMPLES = [("train", ["cat"], 1), ("train", ["dog", "bird"], 2), ("test", ["bird"], 3), ("test", [], 4),
               ("test", ["cat", "dog"], 5)]


@pytest.fixture
def example_loader(monkeypatch):
    register_loader(TOY_LOADER)
    # Its fixture writer, as tests/fixtures.py's DATA_WRITERS would hold it.
    monkeypatch.setitem(DATA_WRITERS, "toy", lambda folder: write_toy(folder / "toy", ("cat", "dog", "bird"),
                                                                      TOY_SAMPLES))
    yield TOY_LOADER
    unregister_loader("toy")


def test_loader_recipe_passes_the_loader_contract(example_loader, tmp_path):
    assert "toy" in data.names()
    check_loader_contract("toy", tmp_path)
    ds = data.load("toy", root=tmp_path / "data" / "toy")
    assert ds.label_names == ["cat", "dog", "bird"] and ds.labels.tolist() == [[0, 0, 1], [0, 0, 0], [1, 1, 0]]


def test_loader_recipe_serves_sml_attack(example_loader, trained, demo_root, tmp_path, capsys):
    """The demo's first 48 test images, as a toy data set whose labels are listed in another order."""
    demo = data.load("demo", root=demo_root)
    samples = [("test", [demo.label_names[j] for j in np.nonzero(demo.labels[i])[0]], demo.paths[i])
               for i in range(48)] + [("train", [], demo.paths[48])]
    root = write_toy(tmp_path / "toy", list(reversed(demo.label_names)), samples)
    store = tmp_path / "s.zarr"
    rc, err = sml(capsys, "attack", "--checkpoint", trained["mlgcn"], "--dataset", "toy", "--root", root,
                  "--attack", "fgsm", "--n", 8, "--chunk-size", 4, "--out", store, "--no-progress")
    assert rc == 0, err
    group = zarr.open_group(str(store), mode="r")["mlgcn/toy"]
    assert group.attrs["metrics"]["dataset"] == "toy" and group.attrs["num_test_samples"] == 48
    run = group["fgsm"]
    assert results.done_chunks(run).all()
    # Mapped onto the checkpoint's label order by name: the labels are the demo's own.
    index = results.read(run, "sample_index")
    assert np.array_equal(results.read(run, "labels_true"), demo.labels[index].astype(bool))
    assert models.load(trained["mlgcn"]).label_names == demo.label_names


# ================================================================ (d) a store field
# off_target [sample] int16: the labels on which the final prediction differs from y*.
OFF_TARGET = "off_target"
OFF_TARGET_TEXT = "labels on which the final prediction differs from y*"


def add_off_target(monkeypatch) -> int:
    """The recipe's edits, for the test's duration: the format (RESULT_FIELDS, DESCRIBE, the version
    FORMAT) and the result's new field, which driver.finalize computes for every attack. Returns
    the new format version. (Patched in, finalize gains the field where the driver calls it: the
    step attacks this test runs; edited in its module, it gains it for the solvers too.)"""
    monkeypatch.setitem(store_format.RESULT_FIELDS, OFF_TARGET, ("int16", None))
    monkeypatch.setitem(store_format.DESCRIBE, OFF_TARGET, (OFF_TARGET_TEXT, "labels"))
    version = store_format.FORMAT + 1
    for module in (store_format, writer):  # the writer holds the version under its own name
        monkeypatch.setattr(module, "FORMAT", version)
    real = driver.finalize

    def finalize_with_field(*args, **kw):
        res = real(*args, **kw)
        res.off_target = (res.pred != (res.y_star > 0.5)).sum(1)
        return res

    monkeypatch.setattr(driver, "finalize", finalize_with_field)
    return version


def test_store_field_recipe(example_attacks, trained, batch, tmp_path, capsys, monkeypatch):
    attack = ["attack", "--checkpoint", trained["mlgcn"], "--attack", "signdecay", "--n", 8, "--chunk-size", 4,
              "--no-progress"]
    before = tmp_path / "before.zarr"
    assert sml(capsys, *attack, "--out", before) == (0, "")
    old = store_format.FORMAT
    new = add_off_target(monkeypatch)
    store = tmp_path / "s.zarr"
    assert sml(capsys, *attack, "--out", store) == (0, "")
    # Written by the run, read back with xarray as the format describes it.
    ds = xr.open_zarr(store, group="mlgcn/demo/signdecay", consolidated=False)
    off = ds[OFF_TARGET]
    assert off.dims == ("sample",) and off.attrs["description"] == OFF_TARGET_TEXT and off.attrs["units"] == "labels"
    assert off.encoding["_FillValue"] == -1 and int(off.count()) == 8
    assert (off == (ds.pred != ds.y_star).sum("label")).all()
    assert (off == ds.sizes["label"] - ds.label_count_final).all()  # show-many: y* holds every label
    assert ds.attrs["store_format"] == new
    # The engine's reader, the CSV export and the report read it too.
    values = results.read(zarr.open_group(str(store), mode="r")["mlgcn/demo/signdecay"], OFF_TARGET)
    assert values.tolist() == off.values.astype(int).tolist()
    assert sml(capsys, "export", store, "--csv", tmp_path / "csv") == (0, "")
    with open(tmp_path / "csv" / "samples.csv", newline="") as f:
        assert [int(r[OFF_TARGET]) for r in csv.DictReader(f)] == values.tolist()
    assert sml(capsys, "report", store, "--out", tmp_path / "report")[0] == 0
    # The Python API's write_run stores it from attacks.run's result.
    model = models.load(trained["mlgcn"])
    x, y, idx = batch
    res = attacks.run(model, x, "signdecay", sample_ids=idx, iterations=2)
    path = results.write_run(tmp_path / "api.zarr", res, model="m", dataset="demo", attack="signdecay",
                             sample_index=idx, labels_true=y, label_names=model.label_names)
    written = results.read(zarr.open_group(str(tmp_path / "api.zarr"), mode="r")[path], OFF_TARGET)
    assert written.tolist() == res.off_target.tolist()
    # A store of the format before the field is refused in one line, not read as damaged.
    rc, err = sml(capsys, "report", before, "--out", tmp_path / "old-report")
    assert rc == 2 and f"written in store format {old}; this engine reads format {new} only" in err, err
    assert "\n" not in err
