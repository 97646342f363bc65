"""What defines one attack run of the protocol: :class:`RunSpec`, validated once into its parts.

``sml attack``, sweeps and the Python API all build one of these (from keyword arguments, a sweep
file's ``[[attack]]`` table or a stored record) and pass the same object on: construction checks
every value and resolves the attack spec, its config and N, so nothing downstream validates again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine import attacks, protocol
from engine.attacks.registry import AttackConfig, AttackSpec, preset_values
from engine.config import RunConfig
from engine.errors import UserError, keyed
from engine.results.format import run_key


@dataclass(frozen=True, kw_only=True)
class RunSpec(RunConfig):
    """One run: an attack and preset (with ``params`` on top), a target and the protocol's knobs
    (the fields, each with its range, are engine.config.RunConfig's).

    A run made by ``sml attack`` and the same run made by a sweep are the same run (same group,
    same fingerprint, same rows). The protocol fields are the sweep file's ``[protocol]`` keys.
    """

    # Resolved by validate(), once; derived, so not part of the spec's identity or its dict.
    spec: AttackSpec = field(init=False, repr=False, compare=False)
    config: AttackConfig = field(init=False, repr=False, compare=False)
    n_requested: int = field(init=False, repr=False, compare=False)

    def validate(self) -> None:
        # Names checked against the registries; an error's key is the field at fault (params.eps).
        with keyed("attack"):
            spec = attacks.get(self.attack)
        with keyed("preset"):
            base = preset_values(spec, self.preset)
        with keyed("params"):
            cfg = spec.config.from_dict({**base, **(self.params or {})}, where=f"attack {spec.name}")
        # No target: the attack's own, resolved here so that the run key and the record name it
        # (the study's attacks default to show-many, so their keys are what they always were).
        object.__setattr__(self, "target", spec.default_target if self.target is None else self.target)
        target = attacks.targets.get(self.target)
        if target.needs_label and self.target_label is None:
            raise UserError(f"target {self.target} needs target_label = a label index or name", key="target_label")
        if target.needs_k and getattr(cfg, "k", None) is None:
            raise UserError(f"target {self.target} needs the attack's parameter k; {spec.name} has none", key="target")
        rules = protocol.rules(self.preset)
        # Resolved here, so that the stored spec, the fingerprint and the report name the rule used.
        object.__setattr__(self, "order", rules.order if self.order is None else self.order)
        object.__setattr__(self, "rounding", rules.rounding if self.rounding is None else self.rounding)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "config", cfg)
        object.__setattr__(self, "n_requested", self.n if self.n is not None else
                           spec.default_samples.get(self.preset, protocol.PROTOCOL_N))

    def check_labels(self, num_labels: int, label_names=None) -> None:
        """What needs the model's labels: ``k`` of the top-k targets against their count, a named
        target label or label set (engine.attacks.targets.check)."""
        attacks.targets.check(self.target, num_labels, k=getattr(self.config, "k", None),
                              target_label=self.target_label, label_names=label_names)

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
