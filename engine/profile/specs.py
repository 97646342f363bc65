"""`--attack SPEC` of `sml profile`: what is profiled, as a function of (model, images).

SPEC is one of
- a registered attack in the store's run-key syntax: ``NAME[.PRESET][@k=v,...]`` (``pgd``,
  ``pgd@eps=0.03,iterations=40``, ``bim.released@iterations=10``);
- your callable, ``MODULE:FUNCTION[@k=v,...]``, with the contract ``fn(model, x, y_star, **params)
  -> x_adv``: x [B,3,H,W] in [0, 1], y_star [B, l] in {0, 1} (all ones: show every label), the model
  returns logits; x_adv has x's shape;
- a peer library's version of one of our attacks, ``advertorch:NAME`` or ``torchattacks:NAME``
  (these two module names are reserved; engine.profile.peers), with our attack's ``paper`` values
  and the ``@k=v`` ones on top.
Values after ``@`` are read as TOML values (``0.03``, ``40``, ``true``, ``"x"``), bare words as strings.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch
from torch import nn

from engine import attacks
from engine.attacks.driver import sample_noise
from engine.attacks.registry import AttackSpec, Passes
from engine.errors import UserError
from engine.profile import peers


@dataclass
class Subject:
    """One ``--attack``: ``make(model, x) -> zero-argument callable returning x_adv``."""

    text: str  # the SPEC as given: the row's ``attack``
    kind: str  # registered | callable | peer
    params: dict[str, Any] = field(default_factory=dict)
    spec: AttackSpec | None = None  # registered attacks (and the attack a peer reimplements)
    config: Any = None
    fn: Callable | None = None  # callables

    @property
    def jacobian(self) -> bool:
        return bool(self.spec is not None and self.kind == "registered" and self.spec.jacobian)

    def declared(self, num_labels: int) -> Passes | None:
        """The spec's passes per sample (registered attacks only; None where it declares none)."""
        return self.spec.passes(self.config, num_labels) if self.kind == "registered" else None

    def make(self, model: nn.Module, x: torch.Tensor, *, compile: bool = False) -> Callable[[], torch.Tensor]:
        ids = list(range(x.shape[0]))
        if self.kind == "registered":
            iterative = self.spec.kind == "iterative"
            return lambda: attacks.run(model, x, self.spec.name, config=self.config, sample_ids=ids,
                                       compile=compile and iterative).x_adv
        with torch.no_grad():
            labels = model(x[:1]).shape[1]
        y_star = torch.ones(x.shape[0], labels, device=x.device)
        if self.kind == "callable":
            return lambda: self.fn(model, x, y_star, **self.params)
        library = self.text.split(":", 1)[0]
        return peers.peer_runs(model, x, self.spec.name, self.config, y_star, sample_noise(x, ids, 0))[library]


def parse_params(text: str, where: str) -> dict[str, Any]:
    """``k=v,k=v`` -> {k: value} (TOML values; a bare word is a string)."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise UserError(f"--attack {where}: {item!r} is not NAME=VALUE (e.g. pgd@eps=0.03,iterations=40)")
        k, v = (s.strip() for s in item.split("=", 1))
        try:
            out[k] = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            out[k] = v
    return out


def parse(text: str, precision: str = "fp32") -> Subject:
    """The Subject of one SPEC, checked (names, parameters, the callable's signature) before any model loads."""
    head, _, tail = text.partition("@")
    params = parse_params(tail, text)
    if ":" in head:
        module, _, name = head.partition(":")
        if module in peers.SUPPORTED:
            peers.check(module, name.lower())
            spec = attacks.get(name)
            cfg = spec.config.from_dict({**spec.presets["paper"], **params}, where=f"--attack {text}")
            return Subject(text, "peer", params, spec, cfg)
        return Subject(text, "callable", params, fn=_import_callable(text, module, name, params))
    name, _, preset = head.partition(".")
    spec = attacks.get(name)
    preset = preset or "paper"
    if preset not in spec.presets:
        raise UserError(f"--attack {text}: unknown preset {preset!r} for {spec.name}; valid: {', '.join(spec.presets)}")
    values = {**spec.presets[preset], "precision": precision, **params}
    cfg = spec.config.from_dict(values, where=f"--attack {text}")
    return Subject(text, "registered", params, spec, cfg)


def _import_callable(text: str, module: str, name: str, params: dict[str, Any]) -> Callable:
    if not module or not name:
        raise UserError(f"--attack {text}: expected MODULE:FUNCTION[@k=v,...]")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")  # as `python -m`: a module in the working folder imports
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the module raises, the user must fix the module
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"--attack {text}: module {module!r} does not import ({type(e).__name__}: {first})") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise UserError(f"--attack {text}: module {module!r} has no function {name!r}")
    try:
        inspect.signature(fn).bind(None, None, None, **params)
    except TypeError as e:
        raise UserError(f"--attack {text}: {module}:{name} does not take (model, x, y_star, "
                        f"{', '.join(f'{k}=' for k in params) or '**params'}) ({e})") from None
    except ValueError:
        pass  # no signature to read (a builtin): the call will say
    return fn


def check_output(subject: Subject, out: Any, x: torch.Tensor) -> None:
    """x_adv must be a tensor of x's shape (one line naming the SPEC otherwise)."""
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"--attack {subject.text}: returned {got}; expected x_adv, a tensor of x's shape "
                        f"{tuple(x.shape)}")
