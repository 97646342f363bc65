"""The attack registry: a name, a frozen config dataclass, presets, and either a per-iteration
``step`` run by the shared driver or a ``run`` for solver attacks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.attacks import losses
from engine.config import Config
from engine.errors import UserError


# The largest counts an attack accepts (the study's largest: ML-CW's 10 x 1000 steps).
INT_LIMITS = {"iterations": 100_000, "binary_steps": 64, "workers": 1024}


@dataclass(frozen=True, kw_only=True)
class AttackConfig(Config):
    """Fields every attack has: the loss it minimises (see engine.attacks.losses)."""

    loss: str = "bce"
    prob_clamp: float = 1e-6  # the released code clamps probabilities to [1e-6, 1 - 1e-6]

    def validate(self) -> None:
        # An infinite or NaN budget, step or constant never means "unbounded" here: it turns every
        # perturbation into inf/NaN and every sample into a failure, so it is refused up front.
        for name, t in self.schema().items():
            v = getattr(self, name)
            if t is float and isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"{name} must be a finite number, got {v}")
        if self.loss not in losses.LOSSES:
            raise UserError(f"unknown loss {self.loss!r}; valid: {', '.join(losses.LOSSES)}")
        if not 0 <= self.prob_clamp < 0.5:
            raise UserError(f"prob_clamp must be in [0, 0.5), got {self.prob_clamp}")
        for name in ("eps", "step"):
            v = getattr(self, name, None)
            if v is not None and not v >= 0:
                raise UserError(f"{name} must be >= 0, got {v}")
        it = getattr(self, "iterations", None)
        if it is not None and it < 1:
            raise UserError(f"iterations must be >= 1, got {it}")
        # Sane upper bounds: a count past them is a typo that would run for days, not a setting.
        for name, hi in INT_LIMITS.items():
            v = getattr(self, name, None)
            if v is not None and v > hi:
                raise UserError(f"{name} must be <= {hi}, got {v}")
        sp = getattr(self, "sparsity", None)
        if sp is not None and not 0 < sp < 1:
            raise UserError(f"sparsity must be in (0, 1), got {sp}")


@dataclass(frozen=True)
class AttackSpec:
    name: str
    title: str  # as the study's tables write it
    config: type[AttackConfig]
    presets: dict[str, dict[str, Any]]
    norm: str  # linf | l2 | l1
    doc: str
    # Iterative attacks (run by engine.attacks.driver):
    step: Callable | None = None  # (x, x0, grad, state, cfg) -> (x, state)
    init: Callable | None = None  # (x0, cfg, noise) -> (x, state); noise(lo, hi) gives per-sample U(lo, hi)
    # Solver attacks:
    run: Callable | None = None  # (model, x0, y_star, cfg, ctx) -> SolverOutput
    default_samples: dict[str, int] = field(default_factory=dict)  # preset -> N (protocol)
    # Traits: what the runtime and the sweep scheduler need to know, so that they never name an attack.
    jacobian: bool = False  # each step takes the l x d Jacobian (l backward passes): sizes the batch
    cpu_bound: bool = False  # the cost is CPU solver work, not the model: sweeps route it to CPU actors
    # Presets under which a sample's result depends on its batch-mates (the released code's batch-wide
    # rules): the runtime then attacks in the code's batches (engine.protocol.Cell.batch).
    code_batch: tuple[str, ...] = ()
    # Process-wide helpers the attack reads from ``ctx[key]``: key -> factory(workers, threads per
    # worker or None: the machine's cores shared out). The runtime creates each once per process
    # when it is given workers (``sml attack --workers``, a sweep actor's CPU share) and closes it
    # at the end; without one the attack manages on its own.
    resources: dict[str, Callable[[int, int | None], Any]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "iterative" if self.step is not None else "solver"


REGISTRY: dict[str, AttackSpec] = {}
ORDER = ("fgsm", "fgm", "bim", "pgd", "slide", "mifgsm", "mldp", "mlcw", "mlalp")  # the study's table order


def register(spec: AttackSpec) -> AttackSpec:
    if "paper" not in spec.presets:
        raise ValueError(f"attack {spec.name} has no 'paper' preset")
    if (spec.step is None) == (spec.run is None):
        raise ValueError(f"attack {spec.name} needs either a step (iterative) or a run (solver)")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove an attack (tests that register an example attack clean up after themselves)."""
    REGISTRY.pop(name, None)


def names() -> list[str]:
    return sorted(REGISTRY, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def cpu_bound() -> list[str]:
    """Attacks whose shards sweeps send to CPU-only actors by default (``[sweep] cpu_attacks``)."""
    return [n for n in names() if REGISTRY[n].cpu_bound]


ALIASES = {"mi-fgsm": "mifgsm", "ml-dp": "mldp", "ml-cw": "mlcw", "mla-lp": "mlalp", "sda": "slide"}


def get(name: str) -> AttackSpec:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REGISTRY:
        raise UserError(f"unknown attack {name!r}; valid: {', '.join(names())}")
    return REGISTRY[key]


def make_config(name: str, preset: str = "paper", **params: Any) -> AttackConfig:
    """The config of ``preset`` with ``params`` on top; unknown names list the valid ones."""
    spec = get(name)
    if preset not in spec.presets:
        raise UserError(f"unknown preset {preset!r} for {spec.name}; valid: {', '.join(spec.presets)}")
    return spec.config.from_dict({**spec.presets[preset], **params}, where=f"attack {spec.name}")
