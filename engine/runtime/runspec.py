"""What defines one attack run of the protocol: :class:`RunSpec`, validated once into its parts.

``sml attack``, sweeps and the Python API all build one of these (from keyword arguments, a sweep
file's ``[[attack]]`` table or a stored record) and pass the same object on: construction checks
every value and resolves the attack spec, its config and N, so nothing downstream validates again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine import attacks, protocol
from engine.attacks.registry import AttackConfig, AttackSpec
from engine.config import Config
from engine.errors import UserError
from engine.results.format import run_key


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
    # None: the preset's protocol default (AttackSpec.default_samples; else, under ``released``, the
    # code's count for the (model, data set): engine.protocol.RELEASED_CELLS; else 1000)
    n: int | None = None
    seed: int = 0
    order: str | None = None  # seeded | first; None: the preset's (released: first, else seeded)
    rounding: str | None = None  # ceil | floor (expLabels); None: the preset's (released: floor, else ceil)
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
        rules = protocol.rules(self.preset)
        # Resolved here, so that the stored spec, the fingerprint and the report name the rule used.
        object.__setattr__(self, "order", rules.order if self.order is None else self.order)
        object.__setattr__(self, "rounding", rules.rounding if self.rounding is None else self.rounding)
        if self.order not in protocol.ORDERS:
            raise UserError(f"unknown order {self.order!r}; valid: {', '.join(protocol.ORDERS)}")
        if self.rounding not in protocol.ROUNDINGS:
            raise UserError(f"unknown rounding {self.rounding!r}; valid: {', '.join(protocol.ROUNDINGS)}")
        # Upper bounds a real run never reaches: past them a typo (n = 1e9, batch_size = 10**6) would
        # allocate or loop for hours before failing, so it is refused here, in one line.
        for name, lo, hi in (("n", 1, 10**7), ("chunk_size", 1, 10**6), ("batch_size", 0, 65536),
                             ("exit_every", 1, 10**6), ("seed", 0, 2**63 - 1)):
            v = getattr(self, name)
            if v is not None and not lo <= v <= hi:
                raise UserError(f"{name} must be in {lo}..{hi}, got {v}")
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "config", cfg)
        object.__setattr__(self, "n_requested", self.n if self.n is not None else
                           spec.default_samples.get(self.preset, protocol.PROTOCOL_N))

    def samples(self, family: str, dataset: str) -> int:
        """N for this run on a (model family, data set): ``n``, else the attack's preset default,
        else (``released``) the number the code scores there, else 1000."""
        if self.n is None and self.preset not in self.spec.default_samples and protocol.rules(self.preset).released:
            return protocol.cell(family, dataset).scored
        return self.n_requested

    @property
    def params_resolved(self) -> dict[str, Any]:
        """The parameters set on top of the preset, as the config holds them (``eps = 1`` -> 1.0)."""
        cfg = self.config
        return {k: getattr(cfg, k) for k in sorted(self.params or {})}

    @property
    def key(self) -> str:
        """The run's group name in the store: the attack, preset, target and the parameters set on
        top of the preset (``ATTACK@eps=0.03,iterations=40``), so a grid's runs live side by side."""
        return run_key(self.spec.name, self.preset, self.target, self.early_exit, self.target_label,
                       self.params_resolved)
