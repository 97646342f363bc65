"""The README's recipe for a new solver attack, followed once: one module (config, run, traits,
registration), nothing else wired by hand. The runtime, ``sml attack`` and sweeps pick it up
from its spec: a shared resource created once per process and closed at the end, CPU routing by
default, its own label count going up within its norm bound."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import zarr

from engine import attacks
from engine.attacks.driver import finalize
from engine.attacks.registry import AttackConfig, AttackSpec, register, unregister
from engine.runtime import runner
from engine.runtime.sweep import load_sweep, run_sweep
from engine.runtime.sweep.sweepfile import SweepSettings


# ---------------------------------------------------------------- the example attack (one "file")
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
    eps: float = 0.1
    iterations: int = 4


def _run(model, x0, y_star, eligible, cfg: SignSolveConfig, ctx):
    pool = ctx.get("sign_pool")
    x = x0.clone()
    best = torch.zeros(len(x0), dtype=torch.long)
    for _ in range(cfg.iterations):
        x.requires_grad_(True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y_star)
        (g,) = torch.autograd.grad(loss, x)
        s = pool.solve(g.numpy()) if pool is not None else np.sign(g.numpy())
        step = torch.from_numpy(s).to(x.dtype) * (cfg.eps / cfg.iterations)
        x = (x.detach() - step).clamp(x0 - cfg.eps, x0 + cfg.eps).clamp(0, 1)
        with torch.no_grad():
            best = torch.maximum(best, (model(x) >= 0).sum(1))
    n = len(x0)
    return finalize(model, x0, x, y_star, eligible, best, torch.zeros(n, dtype=torch.bool),
                    torch.full((n,), cfg.iterations), torch.full((n,), -1))


SPEC = AttackSpec(name="signsolve", title="Sign-Solve", config=SignSolveConfig, presets={"paper": {}}, norm="linf",
                  family="solver", reference="an example", doc="Example solver attack of the development recipe.",
                  run=_run, cpu_bound=True,
                  resources={"sign_pool": SignPool})


# ---------------------------------------------------------------- the checks
@pytest.fixture
def example():
    SignPool.made.clear()
    register(SPEC)
    yield SPEC
    unregister(SPEC.name)


def test_traits_give_the_defaults(example):
    assert "signsolve" in attacks.names()
    assert SweepSettings().cpu_attacks == tuple(n for n in attacks.names() if attacks.get(n).cpu_bound)
    assert "signsolve" in SweepSettings().cpu_attacks


def test_sml_attack_runs_it_with_one_shared_resource(example, trained, tmp_path):
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


def test_sweep_runs_it_without_naming_it_anywhere(example, trained, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(f'[sweep]\nbase = "."\n[protocol]\nn = 4\nchunk_size = 2\nbatch_size = 2\n'
                    f'[[model]]\ncheckpoint = "{trained["mlgcn"]}"\nkey = "g"\n[[attack]]\nname = "signsolve"\n')
    assert "signsolve" in load_sweep(path).cpu_attacks
    res = run_sweep(path, tmp_path / "s.zarr", local=True, progress=False)
    assert res["shards_done"] == res["shards_total"] == 2
    assert not SignPool.made  # the in-process worker has no workers to give: the attack manages alone


def test_registry_wants_a_step_or_a_run(example):
    with pytest.raises(ValueError, match="either a step"):
        register(AttackSpec(family="solver", reference="a test", name="neither", title="N", config=SignSolveConfig,
                            presets={"paper": {}}, norm="linf",
                            doc=""))
