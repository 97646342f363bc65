"""Attacks: a registry (the study's nine first), one driver, targets, and ``run`` for notebooks and the CLI.

>>> from engine import attacks
>>> attacks.names()[:9]
['fgsm', 'fgm', 'bim', 'pgd', 'slide', 'mifgsm', 'mldp', 'mlcw', 'mlalp']
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# Importing an attack module registers its attacks.
from engine.attacks import (  # noqa: F401
    gradient,
    losses,
    mlaede,
    mlalp,
    mlcw,
    mldp,
    mljsma,
    precision,
    ranking,
    targets,
    topk,
    universal,
)
from engine.attacks.driver import AttackResult, compiled_advance, run_iterative, sample_noise
from engine.attacks.registry import AttackConfig, AttackSpec, get, make_config, names
from engine.attacks.universal import apply_universal
from engine.errors import UserError
from engine.models import prepare_for_attack

__all__ = ["AttackConfig", "AttackResult", "AttackSpec", "apply_universal", "fit_universal", "get", "make_config",
           "names", "run", "targets"]


@contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and frozen parameters for the attack; parameter flags are restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    prepare_for_attack(model)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def run(model: nn.Module, images: torch.Tensor, attack: str = "pgd", preset: str = "paper",
        target: str | None = None, seed: int = 0, *, sample_ids: Sequence[int] | None = None,
        early_exit: bool = False, exit_every: int = 4, target_label: int | str | None = None,
        config: AttackConfig | None = None, ctx: dict[str, Any] | None = None, compile: bool = False,
        **params: Any) -> AttackResult:
    """Attack a batch of images [B,3,H,W] in [0,1] (left untouched) towards the target's y*.

    ``target`` None: the attack's own (``AttackSpec.default_target``). Targets that need ``k`` (and
    topk-targeted's ``difficulty``) take them from the attack's config.

    ``params`` override the preset's values (unknown names are an error listing the valid ones).
    ``sample_ids`` (default 0..B-1) seed per-sample randomness, so a sample's result does not depend
    on the batch it is in. ``compile`` runs each iteration of the gradient attacks as one
    torch.compile graph (see engine.attacks.driver.compiled_advance); results agree with eager
    mode up to float rounding.
    """
    spec = get(attack)
    cfg = config if config is not None else make_config(spec.name, preset, **params)
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise UserError(f"images must be a float tensor [B,3,H,W], got {tuple(images.shape)} {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise UserError("images must lie in [0, 1] (models normalise internally)")
    ids = list(range(images.shape[0])) if sample_ids is None else [int(i) for i in sample_ids]
    if len(ids) != images.shape[0]:
        raise UserError(f"sample_ids has {len(ids)} entries for {images.shape[0]} images")
    x0 = images.detach()
    target = spec.default_target if target is None else target
    targets.get(target)
    k = getattr(cfg, "k", None)

    with targets.judged() as judge, attack_mode(model), precision.applied(model, cfg.precision, x0.device) as net:

        def target_of(clean_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            clean = clean_logits >= 0
            built = targets.build(target, clean, ids, seed, target_label=target_label,
                                  label_names=getattr(model, "label_names", None), scores=clean_logits, k=k,
                                  difficulty=getattr(cfg, "difficulty", "best"))
            judge[0] = targets.criterion(target, clean, k)
            return built

        if spec.kind == "iterative":
            # The driver takes the clean prediction from its first gradient pass where it can.
            loss_fn = losses.get(cfg.loss, cfg.prob_clamp)
            advance = None
            if compile:
                advance = compiled_advance(net, spec, cfg, (cfg.loss, cfg.prob_clamp), loss_fn)
            return run_iterative(net, x0, None, None, spec, cfg, loss_fn=loss_fn, noise=sample_noise(x0, ids, seed),
                                 early_exit=early_exit, exit_every=exit_every, advance=advance, target_of=target_of)
        with torch.no_grad():
            y_star, eligible = target_of(net(x0))
        return spec.run(net, x0, y_star, eligible, cfg, dict(ctx or {}, sample_ids=ids, seed=seed))


def fit_universal(model: nn.Module, images: torch.Tensor, attack: str, preset: str = "paper",
                  target: str | None = None, seed: int = 0, **kw: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit a universal attack's perturbation on ``images`` (its fit set, in order): (delta [3, H, W],
    what the fit did: fooling rate on the fit set, passes). Keywords as :func:`run`; apply delta
    with :func:`apply_universal` and ``{"delta_space": config.delta_space}``."""
    if not get(attack).universal:
        raise UserError(f"{attack} is not a universal attack")
    out: dict[str, Any] = {}
    run(model, images, attack, preset, target, seed, ctx={**kw.pop("ctx", {}), "universal_out": out}, **kw)
    return out["delta"], out["info"]
