"""What defines one attack run of the protocol: :class:`RunSpec`, validated once into its parts.

``sml attack``, sweeps and the Python API all build one of these (from keyword arguments, a sweep
file's ``[[attack]]`` table or a stored record) and pass the same object on: construction checks
every value and resolves the attack spec, its config and N, so nothing downstream validates again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine import attacks
from engine.attacks.registry import AttackConfig, AttackSpec
from engine.config import Config
from engine.errors import UserError
from engine.runtime import store as st

ORDERS = ("seeded", "first")


@dataclass(frozen=True, kw_only=True)
class RunSpec(Config):
    """One run: an attack and preset (with ``params`` on top), a target and the protocol's knobs.

    A run made by ``sml attack`` and the same run made by a sweep are the same run (same group,
    same fingerprint, same rows). The protocol fields are the sweep file's ``[protocol]`` keys.
    """

    attack: str
    preset: str = "paper"
    target: str = "show-many"
    target_label: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    n: int | None = None  # None: the preset's protocol default (AttackSpec.default_samples, else 1000)
    seed: int = 0
    order: str = "seeded"  # seeded | first
    chunk_size: int = 100  # samples per shard = per stored chunk: the unit of resume and of scheduling
    batch_size: int = 0  # 0: automatic; never depends on who runs the shard
    early_exit: bool = False
    exit_every: int = 4
    save_adv: bool = False
    # Resolved by validate(), once; derived, so not part of the spec's identity or its dict.
    spec: AttackSpec = field(init=False, repr=False, compare=False)
    config: AttackConfig = field(init=False, repr=False, compare=False)
    n_requested: int = field(init=False, repr=False, compare=False)

    def validate(self) -> None:
        spec = attacks.get(self.attack)
        cfg = attacks.make_config(spec.name, self.preset, **(self.params or {}))
        if self.target not in attacks.targets.names():
            raise UserError(f"unknown target {self.target!r}; valid: {', '.join(attacks.targets.names())}")
        if self.target in attacks.targets.NEEDS_LABEL and self.target_label is None:
            raise UserError(f"target {self.target} needs target_label = a label index or name")
        if self.order not in ORDERS:
            raise UserError(f"unknown order {self.order!r}; valid: {', '.join(ORDERS)}")
        for name, lo in (("n", 1), ("chunk_size", 1), ("batch_size", 0), ("exit_every", 1)):
            v = getattr(self, name)
            if v is not None and v < lo:
                raise UserError(f"{name} must be >= {lo}, got {v}")
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "config", cfg)
        object.__setattr__(self, "n_requested", self.n if self.n is not None else
                           spec.default_samples.get(self.preset, 1000))

    @property
    def key(self) -> str:
        """The run's group name in the store."""
        return st.run_key(self.spec.name, self.preset, self.target, self.early_exit, self.target_label)
