"""The attack registry: a name, a frozen config dataclass, presets, and either a per-iteration
``step`` run by the shared driver or a ``run`` for solver attacks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from engine.attacks import losses
from engine.config import Config, param
from engine.errors import UserError

# Arithmetic of the model's forward and backward in an attack (engine.attacks.precision): fp32, the
# study's, is the default; tf32 (CUDA matmuls and convolutions on TF32 tensor cores) and bf16
# (autocast) trade exactness for speed.
PRECISIONS = ("fp32", "tf32", "bf16")


# The largest count of steps an attack accepts (the study's largest: ML-CW's 10 x 1000): past it a
# typo would run for days. Attacks declare ``iterations`` with it.
MAX_ITERATIONS = 100_000


@dataclass(frozen=True, kw_only=True)
class AttackConfig(Config):
    """Fields every attack has: the loss it minimises (see engine.attacks.losses). Each attack's
    fields declare their ranges (engine.config.param); Config checks them all."""

    loss: str = param("bce", choices=losses.LOSSES, doc="the loss minimised towards y* (engine.attacks.losses)")
    # The released code clamps probabilities to [1e-6, 1 - 1e-6]; at 0.5 every probability would be 0.5.
    prob_clamp: float = param(1e-6, ge=0, lt=0.5, doc="probabilities are clamped to [c, 1 - c] in the loss")
    precision: str = param("fp32", choices=PRECISIONS, doc="arithmetic of the model's forward and backward")

    # Fields that came after runs had been made without them: left out of to_dict at their default
    # (every run before the precision option was fp32), so that the fingerprints of those runs and
    # sweep records (made from this dict) stay what they were.
    omit_at_default: ClassVar[tuple[str, ...]] = ("precision",)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for f in fields(self):
            if f.name in self.omit_at_default and d.get(f.name) == f.default:
                del d[f.name]
        return d


@dataclass(frozen=True)
class Passes:
    """Model passes one sample of an attack costs at most (every iteration run): ``grad`` forward +
    backward passes to the input, ``fwd`` forward-only passes, ``bwd`` further backward passes (the
    rows of a Jacobian after its first). The sweep plan (engine.runtime.sweep.plan) prices them."""

    grad: float = 0.0
    fwd: float = 0.0
    bwd: float = 0.0

    def in_grad_passes(self, fwd_share: float) -> float:
        """The cost in forward + backward passes, a forward costing ``fwd_share`` of one."""
        return self.grad + self.fwd * fwd_share + self.bwd * (1 - fwd_share)


@dataclass(frozen=True)
class Family:
    """A group of attacks that share their idea and their page in the documentation."""

    title: str
    intro: str


# Families in the order the documentation lists them; every attack names one (``AttackSpec.family``).
FAMILIES: dict[str, Family] = {
    "gradient": Family("Gradient attacks", """
        Attacks that follow the gradient of the loss towards the target, one forward and backward pass
        per step, within a norm ball: the study's six AdverTorch-based attacks. Each is a small ``step``
        run by the shared driver (one loop: compaction, early exit, compiled steps); the update itself
        is one fused kernel (Triton on CUDA, torch elsewhere). The loss is the study's: binary
        cross-entropy on clamped sigmoid probabilities towards y*."""),
    "solver": Family("Solver attacks", """
        Attacks that solve an optimisation problem per sample instead of taking fixed steps: the
        linearised minimum-norm step (ML-DP), Carlini and Wagner's penalty method with a binary search
        (ML-CW), and the exact linear program of MLA-LP. Each runs its own loop and returns the
        driver's result type; what the runtime must know about them (Jacobians, CPU-bound solver
        work, worker pools, batch-dependent rules) is a trait of their spec."""),
    "top-k": Family("Top-k attacks", """
        Attacks on the k highest scores instead of the 0.5 threshold: TkML-AP (Hu et al. 2021) pushes
        the true labels out of the top k (untargeted) or puts k chosen labels there (targeted), and
        kFool, the top-k DeepFool baseline of the same paper. Their targets (topk-untargeted,
        topk-targeted) judge success on the ranking; the store's y_star holds the label set. They
        follow the authors' code: the perturbation lives inside a tanh in the [-1, 1] box, an L2
        projection bounds TkML-AP, and every sample stops at its own success."""),
    "ranking": Family("Ranking attacks", """
        Song et al.'s (2018) attacks on the label ranking rather than the thresholded prediction: Rank I
        puts the target labels above all others, Rank II also pushes the dropped labels below the
        never-shown ones. Both are Carlini and Wagner-style penalty methods (Adam on a tanh-space
        variable, a binary search on the penalty constant) as in the study's released code; their
        targets (rank-i, rank-ii) judge success on the ranking."""),
    "sparse": Family("Sparse attacks", """
        Attacks that change few pixels (an L0 budget) rather than many by a little: a saliency map
        from the l x d Jacobian ranks the input features by how much raising them moves the
        prediction towards y*, and the most salient are changed, a share per iteration."""),
    "universal": Family("Universal perturbations", """
        One perturbation for every sample: fitted on a set of samples, one at a time, pass after pass
        (a per-sample attack from where the perturbation has got to, its step added and the sum
        projected back into a ball) until enough of the set is fooled; then scored, unchanged, on
        other samples. A run fits on the ``fit_n`` candidates before its N scored samples and keeps
        the perturbation with the run (``universal_delta``, with the space it lives in)."""),
    "blackbox": Family("Black-box attacks", """
        Attacks that see only the model's outputs: no gradient, no backward pass (they run on a model
        whose backward raises). Their cost is the model forwards they run per sample, which the store
        keeps as ``queries``; the populations of every sample of a batch go through the model in one
        forward, each sample's random draws from its own seeded generator."""),
}


@dataclass(frozen=True)
class AttackSpec:
    name: str
    title: str  # as the study's tables write it
    config: type[AttackConfig]
    presets: dict[str, dict[str, Any]]
    norm: str  # linf | l2 | l1
    doc: str
    family: str  # a key of FAMILIES
    reference: str  # the paper (and the code the implementation follows)
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
    # Solver attacks: (config, number of labels) -> Passes per sample, for the sweep plan. Iterative
    # attacks need none: the driver's loop fixes theirs (see ``passes``).
    cost: Callable[[AttackConfig, int], Passes] | None = None
    # The config field that bounds the perturbation in the attack's ``norm`` (every result stays within
    # it), or None for an attack that minimises the norm instead of bounding it.
    bound: str | None = None
    # Parameters over the ``paper`` preset for a short run with the same semantics (fewer iterations,
    # or a budget a short run can use): smoke runs and the contract tests, which every attack gets.
    quick: dict[str, Any] = field(default_factory=dict)
    # False where a sample's result depends on the batch size through float rounding that the method
    # amplifies (convolutions round differently for 1 and B images; a pseudo-inverse or Adam makes
    # that visible): it still never depends on its batch-mates or its place in the batch.
    batch_size_exact: bool = True
    # One perturbation for a set of samples (engine.attacks.universal): the runtime fits it once per
    # run on the ``fit_n`` candidates before the run's N scored samples, stores it as the run's
    # ``universal_delta`` and hands it to every batch as ``ctx["universal_delta"]``.
    universal: bool = False
    # The target the Python API, the CLI and sweep files use when none is given (engine.attacks.targets).
    default_target: str = "show-many"

    @property
    def kind(self) -> str:
        return "iterative" if self.step is not None else "solver"

    def starts_at_x0(self, cfg: AttackConfig) -> bool:
        """Whether the first step is taken at the clean image (no random start), so that the driver
        takes the clean prediction from that step's own forward pass. Asked of ``init`` on a tiny
        stand-in image with non-zero noise, so no attack has to declare it."""
        if self.init is None:
            return True
        x0 = torch.full((1, 1, 2, 2), 0.5)
        x, _ = self.init(x0, cfg, lambda lo, hi: torch.full_like(x0, lo + 0.75 * (hi - lo)))
        return torch.equal(x, x0)

    def passes(self, cfg: AttackConfig, num_labels: int) -> Passes | None:
        """Model passes per sample (an upper bound: early exits and aborts only shorten it); None
        for a solver that declares no ``cost``."""
        if self.kind == "solver":
            return self.cost(cfg, num_labels) if self.cost is not None else None
        # The driver: one gradient pass per iteration, a forward to score x_adv, and a clean forward
        # for the targets unless the first step's pass at x0 provides it.
        return Passes(grad=int(getattr(cfg, "iterations", 1)), fwd=1 + (0 if self.starts_at_x0(cfg) else 1))


REGISTRY: dict[str, AttackSpec] = {}
ORDER = ("fgsm", "fgm", "bim", "pgd", "slide", "mifgsm", "mldp", "mlcw", "mlalp")  # the study's table order


def register(spec: AttackSpec) -> AttackSpec:
    if "paper" not in spec.presets:
        raise ValueError(f"attack {spec.name} has no 'paper' preset")
    if (spec.step is None) == (spec.run is None):
        raise ValueError(f"attack {spec.name} needs either a step (iterative) or a run (solver)")
    if spec.family not in FAMILIES:
        raise ValueError(f"attack {spec.name}: unknown family {spec.family!r}; valid: {', '.join(FAMILIES)}")
    if spec.bound is not None and spec.bound not in spec.config.schema():
        raise ValueError(f"attack {spec.name}: bound {spec.bound!r} is not a field of {spec.config.__name__}")
    spec.config.from_dict({**spec.presets["paper"], **spec.quick}, where=f"attack {spec.name} (quick)")
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


def preset_values(spec: AttackSpec, preset: str) -> dict[str, Any]:
    """The values preset ``preset`` of the attack sets; an unknown name lists the valid ones."""
    if preset not in spec.presets:
        raise UserError(f"unknown preset {preset!r} for {spec.name}; valid: {', '.join(spec.presets)}")
    return spec.presets[preset]


def make_config(name: str, preset: str = "paper", **params: Any) -> AttackConfig:
    """The config of ``preset`` with ``params`` on top; unknown names list the valid ones, and a value
    out of its field's range is a UserError whose ``key`` is that field."""
    spec = get(name)
    return spec.config.from_dict({**preset_values(spec, preset), **params}, where=f"attack {spec.name}")
