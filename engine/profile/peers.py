"""Peer libraries' versions of our gradient attacks, for `sml profile --attack advertorch:NAME` /
`torchattacks:NAME` and `make bench`: the same loss and parameters as ours, so that their times and
final label counts compare with ours.

advertorch     AdverTorch 0.2.3's class (https://github.com/BorealisAI/advertorch) with the study's
               loss (the sum of clamped BCE) and parameters, targeted at y*.
torchattacks   torchattacks 3.5.1 (https://github.com/Harry24k/adversarial-attacks-pytorch) where it
               has the attack; its loss is cross-entropy, so the model is wrapped to output (-L, 0)
               with target class 0: CE = log(1 + e^L), whose gradient is sigma(L) grad L, the same
               direction per sample, so sign- and norm-based updates agree.
PGD's random start differs between libraries: AdverTorch's perturb_iterative is given our initial
delta; torchattacks draws its own.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

import torch
from torch import nn

from engine.attacks.losses import bce
from engine.errors import UserError

# The attacks each library has (our names), and the package that provides it.
SUPPORTED = {"advertorch": ("fgsm", "fgm", "bim", "pgd", "mifgsm", "slide"),
             "torchattacks": ("fgsm", "bim", "pgd", "mifgsm")}
PACKAGES = {"advertorch": "advertorch==0.2.3", "torchattacks": "torchattacks==3.5.1"}


def advertorch():
    """AdverTorch's attacks module and perturb_iterative (None where it is not installed)."""
    # AdverTorch 0.2.3 imports a helper that torch removed (zero_gradients); supply it before import.
    gc = importlib.import_module("torch.autograd.gradcheck")  # the module; torch.autograd.gradcheck is a function
    if not hasattr(gc, "zero_gradients"):
        def zero_gradients(x):
            if isinstance(x, torch.Tensor) and x.grad is not None:
                x.grad.detach_()
                x.grad.zero_()

        gc.zero_gradients = zero_gradients
    try:
        attacks = importlib.import_module("advertorch.attacks")
        pgd_loop = importlib.import_module("advertorch.attacks.iterative_projected_gradient").perturb_iterative
    except ImportError:
        return None
    return attacks, pgd_loop


class CEWrap(nn.Module):
    """(-L(y*, f(x)), 0) per sample: torchattacks' targeted cross-entropy towards class 0 descends L."""

    def __init__(self, model: nn.Module, y_star: torch.Tensor) -> None:
        super().__init__()
        self.model, self.y_star = model, y_star

    def forward(self, x):
        lval = bce(self.model(x), self.y_star[: x.shape[0]])
        return torch.stack([-lval, torch.zeros_like(lval)], 1)


def installed(library: str) -> bool:
    return advertorch() is not None if library == "advertorch" else importlib.util.find_spec(library) is not None


def check(library: str, name: str) -> None:
    """A one-line error unless ``library`` is installed and has attack ``name``."""
    if library not in SUPPORTED:
        raise UserError(f"unknown peer library {library!r}; valid: {', '.join(SUPPORTED)}")
    if name not in SUPPORTED[library]:
        raise UserError(f"{library}:{name}: {library} has no version of {name!r} here; valid: "
                        f"{', '.join(SUPPORTED[library])}")
    if not installed(library):
        raise UserError(f"{library}:{name}: {library} is not installed (pip install '{PACKAGES[library]}', or the "
                        f"bench extra: pip install -e '.[bench]')")


def _advertorch_run(model, x, name, cfg, y_star, noise) -> Callable | None:
    found = advertorch()
    if found is None:
        return None
    A, perturb_iterative = found
    loss_fn = lambda z, y: bce(z, y).sum()  # noqa: E731 - the released code's loss, summed
    kw = dict(loss_fn=loss_fn, clip_min=0.0, clip_max=1.0, targeted=True)
    if name == "pgd":
        def run_pgd():
            delta0 = ((x + noise(-cfg.eps, cfg.eps)).clamp(0, 1) - x).detach()
            return perturb_iterative(x, y_star, model, nb_iter=cfg.iterations, eps=cfg.eps, eps_iter=cfg.step,
                                     loss_fn=loss_fn, delta_init=delta0.clone().requires_grad_(True),
                                     minimize=True, clip_min=0.0, clip_max=1.0)
        return run_pgd
    make = {
        "fgsm": lambda: A.GradientSignAttack(model, eps=cfg.eps, **kw),
        "fgm": lambda: A.GradientAttack(model, eps=cfg.eps, **kw),
        "bim": lambda: A.LinfBasicIterativeAttack(model, eps=cfg.eps, nb_iter=cfg.iterations, eps_iter=cfg.step,
                                                  **kw),
        "mifgsm": lambda: A.MomentumIterativeAttack(model, eps=cfg.eps, nb_iter=cfg.iterations, eps_iter=cfg.step,
                                                    decay_factor=cfg.decay, **kw),
        "slide": lambda: A.SparseL1DescentAttack(model, eps=cfg.eps, nb_iter=cfg.iterations, eps_iter=cfg.step,
                                                 l1_sparsity=cfg.sparsity, rand_init=False, **kw),
    }.get(name)
    if make is None:
        return None
    atk = make()
    return lambda: atk.perturb(x, y_star)


def _torchattacks_run(model, x, name, cfg, y_star) -> Callable | None:
    try:
        TA = importlib.import_module("torchattacks")
    except ImportError:
        return None
    if name not in SUPPORTED["torchattacks"]:
        return None
    wrapped = CEWrap(model, y_star).eval()
    if name == "fgsm":
        atk = TA.FGSM(wrapped, eps=cfg.eps)
    elif name == "bim":
        atk = TA.BIM(wrapped, eps=cfg.eps, alpha=cfg.step, steps=cfg.iterations)
    elif name == "pgd":
        atk = TA.PGD(wrapped, eps=cfg.eps, alpha=cfg.step, steps=cfg.iterations, random_start=True)
    else:
        atk = TA.MIFGSM(wrapped, eps=cfg.eps, alpha=cfg.step, steps=cfg.iterations, decay=cfg.decay)
    atk.set_mode_targeted_by_label(quiet=True)
    target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return lambda: atk(x, target)


def peer_runs(model: nn.Module, x: torch.Tensor, name: str, cfg, y_star: torch.Tensor, noise) -> dict:
    """{library: zero-argument callable returning x_adv} for the installed libraries that have ``name``."""
    runs = {"advertorch": _advertorch_run(model, x, name, cfg, y_star, noise),
            "torchattacks": _torchattacks_run(model, x, name, cfg, y_star)}
    return {k: v for k, v in runs.items() if v is not None}
