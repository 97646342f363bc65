"""Universal perturbations for the top k: one delta for every sample (Moosavi-Dezfooli et al. 2017's
universal adversarial perturbations, as Hu, Ke, Wang, Lyu 2021 run them for top-k multi-label
learning: github.com/discovershu/TKML-AP attack.py ``UAP`` (TkML-AP-Uv) and baseline_attacks.py
``kUAP``).

The fit: delta = 0; pass after pass over the fit samples, in order, a sample whose top k still holds
one of its true labels at delta is attacked alone from there (TkML-AP-U's loss for TkML-AP-Uv, kFool
for kUAP); where that attack succeeds its perturbation w is added, delta <- P(delta + w), P the
projection onto the ``norm`` ball of radius ``eps``. After each pass the fit set's fooling rate
(the share of samples none of whose true labels is in the top k) is measured; the fit stops once it
reaches ``xi`` or after ``max_passes`` passes (the authors: no cap). The run then scores delta on
other samples: the run's N (``--n``) samples after the fit set in the candidate list.

Spaces (the store's ``delta_space``): ``tanh``, the authors', adds delta to atanh(s (2x - 1)) with
s = 1 - 1e-6 and maps back: x_adv = (tanh(atanh(s (2x - 1)) + delta) / s + 1) / 2, so delta = 0 is
the clean image and x_adv never leaves [0, 1]; its norm is measured there, not in pixels (the
authors' eps 100, L2, on 300 px images). ``pixel``: x_adv = clip(x + delta, 0, 1), eps in pixels.
``engine.attacks.apply_universal`` applies a stored delta by its run's ``delta_space``.

From Python: ``attacks.fit_universal(model, x_fit, "kuap", "demo", k=2)`` gives (delta, what the fit
did), and ``attacks.run(..., ctx={"universal_delta": delta})`` scores it; ``attacks.run`` without a
delta fits on the batch it is given and scores that same batch (``fit_n`` is the runtime's split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.attacks.driver import finalize
from engine.attacks.registry import MAX_ITERATIONS, AttackConfig, AttackSpec, Passes, register
from engine.attacks.targets import Criterion
from engine.attacks.topk import BOX_SHRINK, MAX_K, NOT_A_LABEL, _kfool_step, untargeted_loss
from engine.config import param
from engine.errors import UserError

SPACES = ("tanh", "pixel")


def to_space(x: torch.Tensor, space: str) -> torch.Tensor:
    """Pixels [.., 3, H, W] in [0, 1] -> the coordinates delta is added to."""
    return torch.atanh((x * 2 - 1) * BOX_SHRINK) if space == "tanh" else x


def from_space(v: torch.Tensor, space: str) -> torch.Tensor:
    """Coordinates -> pixels in [0, 1] (the inverse of :func:`to_space`, clipped)."""
    return ((torch.tanh(v) / BOX_SHRINK + 1) / 2).clamp(0, 1) if space == "tanh" else v.clamp(0, 1)


def apply_universal(x: torch.Tensor, delta: Any, attrs: dict[str, Any]) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] with a universal run's ``delta`` [3, H, W] applied as its
    attributes' ``delta_space`` says (the run's stored label counts are those of these images)."""
    space = attrs.get("delta_space")
    if space not in SPACES:
        raise UserError(f"delta_space {space!r} is not one of {', '.join(SPACES)}")
    d = torch.as_tensor(delta, dtype=torch.float32, device=x.device)
    if d.shape != x.shape[1:]:
        raise UserError(f"a universal delta of shape {tuple(d.shape)} does not fit images of shape "
                        f"{tuple(x.shape[1:])}")
    return from_space(to_space(x, space) + d, space).to(x.dtype)


@dataclass(frozen=True, kw_only=True)
class UniversalConfig(AttackConfig):
    k: int = param(3, ge=1, le=MAX_K, doc="the top k labels attacked (1..l-1 of the model's l labels)")
    fit_n: int = param(3000, ge=1, le=10_000_000, doc="fit on the first fit_n candidates; --n scores the next N")
    xi: float = param(0.7, gt=0, le=1, doc="stop fitting once the fit set's fooling rate reaches xi")
    max_passes: int = param(100, ge=1, le=MAX_ITERATIONS, doc="most passes over the fit set")
    norm: str = param("l2", choices=("l2", "linf"), doc="the norm of delta's ball (in delta_space)")
    eps: float = param(100.0, gt=0, doc="radius of delta's ball, in delta_space's coordinates")
    delta_space: str = param("tanh", choices=SPACES, doc="tanh: inside the authors' tanh box; pixel: clip(x + delta)")
    iterations: int = param(1000, ge=1, le=MAX_ITERATIONS, doc="iterations of the per-sample attack (maxiter)")


@dataclass(frozen=True, kw_only=True)
class TkmlapUvConfig(UniversalConfig):
    """TkML-AP-Uv: the universal pass with TkML-AP-U (SGD on w against the top-k loss, stopping at
    the first iterate whose top k holds no true label) as the per-sample attack. As in the authors'
    ``UAP`` the per-sample attack is not projected (its ``Projection_flag`` is off there)."""

    lr: float = param(0.01, gt=0, doc="SGD learning rate of the per-sample attack (lr_attack)")


@dataclass(frozen=True, kw_only=True)
class KUAPConfig(UniversalConfig):
    """kUAP: the universal pass with kFool as the per-sample attack. ``at = "delta"`` attacks each
    sample at x + delta, as universal perturbations are defined; ``"clean"`` attacks the clean
    sample, as the authors' ``kUAP`` does (``kfool(model, data, ...)``), and adds its step to delta."""

    at: str = param("delta", choices=("delta", "clean"), doc="where kFool starts: at x + delta, or at x (the code's)")


def _project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The authors' clip_eta over the whole delta: scaled into the L2 ball, or clipped per entry."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.square().sum().clamp(min=1e-12).sqrt()
    return delta * (eps / n).clamp(max=1.0)


def _fooled(model, imgs, gt, k):
    with torch.no_grad():
        z = model(imgs)
    return Criterion("topk-out", k=k).reached(z, gt, torch.isfinite(z).all(1))


def _tkmlapu(model, base, gt, cfg: TkmlapUvConfig):
    """TkML-AP-U from coordinates ``base`` [1, 3, H, W]: (w, success)."""
    w = torch.zeros_like(base)
    for _ in range(cfg.iterations):
        with torch.enable_grad():
            w.requires_grad_(True)
            z = model(from_space(base + w, cfg.delta_space))
            (g,) = torch.autograd.grad(untargeted_loss(z, gt, cfg.k).sum(), w)
        w = w.detach()
        if not torch.isfinite(z).all():
            return w, False
        if bool(Criterion("topk-out", k=cfg.k).reached(z.detach(), gt, torch.ones(1, dtype=torch.bool))):
            return w, True  # the code's result is the iterate that succeeded, before its step
        w = w - cfg.lr * g
    return w, False


def _kfool(model, base, gt, cfg: KUAPConfig):
    """kFool from coordinates ``base`` [1, 3, H, W]: (w, success); the step is taken in delta_space."""
    w = torch.zeros_like(base)
    anchor = None
    for _ in range(cfg.iterations + 1):
        with torch.enable_grad():
            xb = (from_space(base + w, cfg.delta_space) * 2 - 1).detach().requires_grad_(True)
            z = model((xb + 1) / 2)
        if not torch.isfinite(z).all():
            return w, False
        if anchor is None:  # the true label of highest score where kFool starts, fixed (the code's)
            anchor = (gt * z.detach() - (1 - gt) * NOT_A_LABEL).argmax(1)
        if bool(Criterion("topk-out", k=cfg.k).reached(z.detach(), gt, torch.ones(1, dtype=torch.bool))):
            return w, True
        w = w + _kfool_step(xb, z, cfg.k, anchor).detach()
    return w, False


def fit(model, x, gt, cfg: UniversalConfig, attack_one) -> tuple[torch.Tensor, dict[str, Any]]:
    """(delta [3, H, W], what the fit did) on images ``x`` with true labels ``gt`` (one sample at a
    time, in order, as the authors' pass)."""
    delta = x.new_zeros(x.shape[1:])
    coords = to_space(x, cfg.delta_space)
    rate, passes = 0.0, 0
    while rate < cfg.xi and passes < cfg.max_passes and len(x):
        for i in range(len(x)):
            start = coords[i : i + 1] + delta
            if bool(_fooled(model, from_space(start, cfg.delta_space), gt[i : i + 1], cfg.k)):
                continue
            if getattr(cfg, "at", "delta") == "clean":
                start = coords[i : i + 1]
            w, ok = attack_one(model, start, gt[i : i + 1], cfg)
            if ok:
                delta = _project(delta + w[0], cfg.norm, cfg.eps)
        passes += 1
        rate = float(_fooled(model, from_space(coords + delta, cfg.delta_space), gt, cfg.k).float().mean())
    return delta, {"fooling_rate_fit": rate, "passes": passes, "fit_samples": len(x)}


def _runner(attack_one):
    def run(model, x0, y_star, eligible, cfg: UniversalConfig, ctx):
        """Score ``ctx["universal_delta"]`` on the batch or, without one, fit delta on the batch's
        eligible samples first (and hand it back in ``ctx["universal_out"]`` where given)."""
        delta, passes = ctx.get("universal_delta"), int(ctx.get("universal_passes", 0))
        if delta is None:
            delta, info = fit(model, x0[eligible], y_star[eligible], cfg, attack_one)
            passes = info["passes"]
            if "universal_out" in ctx:
                ctx["universal_out"].update(delta=delta, info=info)
        x_adv = apply_universal(x0, delta, {"delta_space": cfg.delta_space})
        x_adv = torch.where(eligible.view(-1, 1, 1, 1), x_adv, x0)
        B, dev = x0.shape[0], x0.device
        zeros = torch.zeros(B, dtype=torch.long, device=dev)
        return finalize(model, x0, x_adv, y_star, eligible, zeros, torch.zeros_like(eligible),
                        torch.full_like(zeros, passes), torch.full_like(zeros, -1))
    return run


def _cost(per_iteration_bwd: int):
    def cost(cfg: UniversalConfig, l: int) -> Passes:
        # Per fit sample and pass at most the per-sample attack's iterations, spread over the
        # protocol's 1000 scored samples (a run's own N is not known here: fewer scored samples
        # carry more of the fit each). Scoring a sample: the clean forward and one with delta.
        per_fit = cfg.max_passes * cfg.fit_n / 1000  # per scored sample, N = 1000
        return Passes(grad=per_fit * cfg.iterations, bwd=per_fit * cfg.iterations * per_iteration_bwd,
                      fwd=2 + per_fit)
    return cost


CODE = "code: github.com/discovershu/TKML-AP"
PAPER = "Hu, Ke, Wang, Lyu 2021, *TkML-AP: Adversarial attacks to top-k multi-label learning* (ICCV)"
# The authors' main_attack.py: k 3, uap_eps 100 (L2), ufr_lower_bound 0.8 (0.7 in the paper's runs),
# maxiter 1000, lr_attack 0.01, fit on positions 0-2999 of ap_VOC_list.npy, score on 3000-3999.
AUTHORS = {"k": 3, "fit_n": 3000, "xi": 0.7, "norm": "l2", "eps": 100.0, "delta_space": "tanh", "iterations": 1000,
           "max_passes": MAX_ITERATIONS}
# Sized for the demo set (a few hundred candidates, 64 px): a fit of a few seconds per pass on a CPU.
DEMO = {"fit_n": 40, "max_passes": 3, "iterations": 50, "eps": 20.0}

register(AttackSpec(
    name="tkmlapuv", family="universal", title="TkML-AP-Uv", config=TkmlapUvConfig, norm="l2",
    run=_runner(_tkmlapu), doc=TkmlapUvConfig.__doc__, universal=True,
    reference=f"{PAPER}; {CODE} attack.py `UAP`", default_target="topk-untargeted", cost=_cost(0),
    default_samples={"paper": 1000, "demo": 100},
    quick={"fit_n": 8, "max_passes": 2, "iterations": 30, "lr": 0.5, "eps": 20.0},
    presets={"paper": dict(AUTHORS, lr=0.01), "demo": dict(AUTHORS, lr=0.5, **DEMO)},
))

register(AttackSpec(
    name="kuap", family="universal", title="kUAP", config=KUAPConfig, norm="l2",
    run=_runner(_kfool), doc=KUAPConfig.__doc__, universal=True, jacobian=True,
    reference=f"{PAPER} (its baseline, after Moosavi-Dezfooli et al. 2017); {CODE} baseline_attacks.py `kUAP`",
    default_target="topk-untargeted", cost=_cost(4), default_samples={"paper": 1000, "released": 1000, "demo": 100},
    quick={"fit_n": 8, "max_passes": 2, "iterations": 20, "eps": 20.0},
    presets={"paper": dict(AUTHORS), "released": dict(AUTHORS, at="clean"), "demo": dict(AUTHORS, **DEMO)},
))
