"""Top-k attacks: TkML-AP untargeted and targeted (Hu, Ke, Wang, Lyu 2021, *TkML-AP: Adversarial
attacks to top-k multi-label learning*, ICCV) and the top-k DeepFool baseline kFool, as the authors'
code runs them (github.com/discovershu/TKML-AP: attack.py ``l2_topk_non_targeted_attack``,
``l2_topk_targeted_attack``; baseline_attacks.py ``kfool``).

All three work in the authors' box: images in [-1, 1] (x_b = 2x - 1; the model still sees pixels),
the perturbation living inside a tanh, as in Carlini and Wagner's change of variables:
eta = tanh(w + atanh(x_b)) - x_b. Bounds and reported norms are in pixels, so the authors' L2 radius
10 in the [-1, 1] box is ``eps`` = 5 here. One deviation from the code, for every preset: the code
passes the normalised image itself as atanh(x_b) (``torch.tanh(timg)`` is what its model sees
unperturbed), so it attacks tanh(x_b), a darker, lower-contrast copy of the sample; here the clean
image is the sample (docs/fidelity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attacks.driver import finalize
from engine.attacks.registry import MAX_ITERATIONS, AttackConfig, AttackSpec, Passes, register
from engine.attacks.targets import DIFFICULTIES, Criterion
from engine.config import param

# The code's arctanh(x * 0.999999): keeps atanh finite at the box's edges.
BOX_SHRINK = 1 - 1e-6
# The code's clip_eta (models/projection.py) clamps the squared norm at 1e-12 before its root.
NORM_FLOOR = 1e-12
# The code's stand-in for "not a label" in max(tlab * f - (1 - tlab) * 10000).
NOT_A_LABEL = 10000.0
# Labels in the largest data sets the authors use (COCO: 80) times a margin; past it k is a typo.
MAX_K = 1000



@dataclass(frozen=True, kw_only=True)
class TopKConfig(AttackConfig):
    k: int = param(3, ge=1, le=MAX_K, doc="the top k labels attacked (1..l-1 of the model's l labels)")
    iterations: int = param(1000, ge=1, le=MAX_ITERATIONS, doc="iterations (the code's maxiter)")


@dataclass(frozen=True, kw_only=True)
class TkmlapUConfig(TopKConfig):
    """TkML-AP-U: SGD on w (in the tanh box) against the paper's convex top-k loss: with
    t_j = max over true labels of f - f_j and lambda the (l-k)-th largest t_j, minimise
    lambda + 1/(l-k) * sum_j max(0, t_j - lambda), i.e. make l-k labels outrank every true label.
    After each step eta is projected onto the L2 ball; a sample stops at the first iterate whose top
    k holds none of its true labels (that iterate is the result)."""

    eps: float = param(5.0, gt=0, doc="L2 radius of the perturbation in pixels (the code's 10 in its [-1, 1] box)")
    lr: float = param(0.01, gt=0, doc="SGD learning rate on w (the code's lr_attack)")


@dataclass(frozen=True, kw_only=True)
class TkmlapTConfig(TkmlapUConfig):
    """TkML-AP-T: SGD on w against sum_j max(0, s_j (f_(k) - f_j)), s_j = +1 for the k target labels and
    -1 for the others, f_(k) the k-th highest score (plus the optional tie term tie / 2 * sum_j (1 -
    s_j f_j)^2). Every iteration runs; of the iterates whose top k are the targets the one with the
    smallest perturbation is kept (the last iterate where none is)."""

    difficulty: str = param("best", choices=DIFFICULTIES,
                            doc="which k labels the target picks: best, random or worst (the code's --label_difficult)")
    tie: float = param(0.0, ge=0, doc="weight of the tie-breaking term (the code's remove_tier_para; main_attack: 0)")


@dataclass(frozen=True, kw_only=True)
class KFoolConfig(TopKConfig):
    """kFool: DeepFool for the top k. The true label with the highest clean score is the anchor; each
    iteration linearises the k + 1 highest scores (skipping the anchor) around the current image and
    adds |sum_j (f_j - f_a) / ||g_j - g_a|| | times the unit sum of (g_j - g_a) / ||g_j - g_a|| to w,
    inside the tanh, until no true label is in the top k. Minimum-norm: no bound."""


def _box(x0):
    """(x_b in [-1, 1], the atanh of it that w is added to)."""
    xb = x0 * 2 - 1
    return xb, torch.atanh(xb * BOX_SHRINK)


def _moved(xb, t0, w):
    """The box image for w: x_b + tanh(w + t0) - tanh(t0) (x_b itself at w = 0)."""
    return (xb + torch.tanh(w + t0) - torch.tanh(t0)).clamp(-1, 1)


def _project_l2(eta, radius):
    """clip_eta of the code: eta scaled into the L2 ball of ``radius`` per sample (never onto it)."""
    norm = eta.flatten(1).square().sum(1).clamp(min=NORM_FLOOR).sqrt()
    return eta * (radius / norm).clamp(max=1.0).view(-1, *([1] * (eta.dim() - 1)))


def untargeted_loss(z, gt, k: int):
    """TkML-AP-U's loss per sample (logits z [b, l], true labels gt [b, l] in {0,1})."""
    l = z.shape[1]
    real = (gt * z - (1 - gt) * NOT_A_LABEL).amax(1, keepdim=True)
    t = real - z
    lam = t.topk(l - k, dim=1).values[:, -1:]
    return lam.squeeze(1) + torch.relu(t - lam).sum(1) / (l - k)


def targeted_loss(z, target, k: int, tie: float):
    """TkML-AP-T's loss per sample (target [b, l] in {0,1}: the k labels to put on top)."""
    s = target * 2 - 1
    kth = z.topk(k, dim=1).values[:, -1:]
    loss = torch.relu(s * (kth - z)).sum(1)
    return loss + (tie / 2) * (1 - s * z).square().sum(1) if tie else loss


class _Run:
    """Bookkeeping shared by the three loops: active samples, label counts, non-finite samples."""

    def __init__(self, model, x0, y_star, eligible, cfg):
        self.model, self.x0, self.cfg = model, x0, cfg
        self.xb, self.t0 = _box(x0)
        with torch.no_grad():
            z0 = model(x0)
        self.counts = (z0 >= 0).sum(1)
        self.z0 = z0
        B, dev = x0.shape[0], x0.device
        self.iters = torch.zeros(B, dtype=torch.long, device=dev)
        self.bad_iter = torch.full((B,), -1, dtype=torch.long, device=dev)
        self.hit = torch.zeros(B, dtype=torch.bool, device=dev)
        self.out = self.xb.clone()
        self.y = y_star
        self.eligible = eligible

    def logits(self, xin):
        return self.model((xin + 1) / 2)

    def seen(self, idx, z, it):
        """Record the logits z of the iterates of samples idx at iteration it; returns their finite mask."""
        finite = torch.isfinite(z).all(1)
        self.bad_iter[idx] = torch.where(~finite & (self.bad_iter[idx] < 0), it, self.bad_iter[idx])
        self.counts[idx] = torch.maximum(self.counts[idx], torch.where(finite, (z >= 0).sum(1), 0))
        return finite

    def result(self, criterion: Criterion):
        x_adv = ((self.out + 1) / 2).clamp(0, 1)
        # A sample never attacked keeps its exact clean pixels (the box round trip may round).
        x_adv = torch.where(self.iters.view(-1, 1, 1, 1) > 0, x_adv, self.x0)
        return finalize(self.model, self.x0, x_adv, self.y, self.eligible, self.counts, self.hit, self.iters,
                        self.bad_iter)


def _gradient(fn, w):
    with torch.enable_grad():
        w = w.detach().requires_grad_(True)
        loss, aux = fn(w)
        (g,) = torch.autograd.grad(loss.sum(), w)
    return g, aux


def _projected_sgd(r: _Run, eligible, cfg: TkmlapUConfig, loss_fn, record):
    """TkML-AP's loop: SGD on w for the samples still going, eta projected into the L2 ball.
    ``loss_fn(z, active) -> [b]``; ``record(it, active, eta, z, finite) -> keep`` books the iterate
    x_b + eta (scored z) and says which samples go on."""
    radius = 2 * cfg.eps  # the box is twice the pixel range
    active = torch.nonzero(eligible).flatten()
    w = torch.zeros_like(r.x0[active])

    def objective(w_):
        eta = _project_l2(torch.tanh(w_ + r.t0[active]) - torch.tanh(r.t0[active]), radius)
        z = r.logits(r.xb[active] + eta)
        return loss_fn(z, active), (eta.detach(), z.detach())

    for it in range(cfg.iterations):
        if active.numel() == 0:
            break
        g, (eta, z) = _gradient(objective, w)
        keep = record(it, active, eta, z, r.seen(active, z, it))
        w = (w - cfg.lr * g)[keep]
        active = active[keep]


def run_untargeted(model, x0, y_star, eligible, cfg: TkmlapUConfig, ctx):
    r = _Run(model, x0, y_star, eligible, cfg)
    judge = Criterion("topk-out", k=cfg.k)

    def record(it, active, eta, z, finite):
        done = judge.reached(z, y_star[active], finite)
        r.out[active], r.iters[active], r.hit[active] = r.xb[active] + eta, it + 1, done
        # The code stops a sample at success (its result is that iterate) and steps the others.
        return ~done & finite

    _projected_sgd(r, eligible, cfg, lambda z, active: untargeted_loss(z, y_star[active], cfg.k), record)
    return r.result(judge)


def run_targeted(model, x0, y_star, eligible, cfg: TkmlapTConfig, ctx):
    r = _Run(model, x0, y_star, eligible, cfg)
    judge = Criterion("topk-in", k=cfg.k)
    best = torch.full((x0.shape[0],), float("inf"), device=x0.device)

    def record(it, active, eta, z, finite):
        norm = eta.flatten(1).norm(dim=1)
        # The code keeps the successful iterate of smallest norm and runs every iteration; without
        # a success its result is zeros (unused by its protocol): the last iterate here.
        better = judge.reached(z, y_star[active], finite) & (norm < best[active])
        take = better | ~r.hit[active]
        r.out[active] = torch.where(take.view(-1, 1, 1, 1), r.xb[active] + eta, r.out[active])
        best[active] = torch.where(better, norm, best[active])
        r.hit[active] |= better
        r.iters[active] = it + 1
        return finite

    _projected_sgd(r, eligible, cfg, lambda z, active: targeted_loss(z, y_star[active], cfg.k, cfg.tie), record)
    return r.result(judge)


def run_kfool(model, x0, y_star, eligible, cfg: KFoolConfig, ctx):
    r = _Run(model, x0, y_star, eligible, cfg)
    judge = Criterion("topk-out", k=cfg.k)
    # The anchor: the true label of highest clean score, fixed for the whole run (as the code).
    anchor = (y_star * r.z0 - (1 - y_star) * NOT_A_LABEL).argmax(1)
    active = torch.nonzero(eligible).flatten()
    rt = torch.zeros_like(x0[active])
    xin = r.xb[active]
    for it in range(cfg.iterations + 1):
        # One forward per iteration serves both the success check and the next step's gradients.
        with torch.enable_grad():
            x = xin.detach().requires_grad_(True)
            z = r.logits(x)
        finite = r.seen(active, z.detach(), it)
        done = judge.reached(z.detach(), y_star[active], finite)
        r.out[active], r.hit[active], r.iters[active] = xin, done, it
        keep = ~done & finite
        if not bool(keep.any()) or it == cfg.iterations:
            break
        step = _kfool_step(x, z, cfg.k, anchor[active])
        active, rt = active[keep], (rt + step)[keep]
        xin = _moved(r.xb[active], r.t0[active], rt)
    return r.result(judge)


def _kfool_step(x, z, k: int, anchor):
    """One kFool step from the box images ``x`` and their logits ``z`` (a graph to x): the code
    differentiates the box image, then adds the step inside the tanh."""
    top = z.detach().topk(k + 1, dim=1).indices
    rows = torch.arange(len(x), device=x.device)
    zd = z.detach()
    with torch.enable_grad():
        g_a = torch.autograd.grad(z[rows, anchor].sum(), x, retain_graph=True)[0]
        w = torch.zeros_like(x)
        f = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        for j in range(k + 1):
            g_j = torch.autograd.grad(z[rows, top[:, j]].sum(), x, retain_graph=j < k)[0]
            d = g_j - g_a
            n = d.flatten(1).norm(dim=1)
            use = (top[:, j] != anchor) & (n > 0)
            inv = torch.where(use, 1 / n.clamp(min=NORM_FLOOR), 0.0)
            w = w + d * inv.view(-1, 1, 1, 1)
            f = f + (zd[rows, top[:, j]] - zd[rows, anchor]) * inv
    wn = w.flatten(1).norm(dim=1)
    # The code divides by ||w|| unconditionally (NaN when every top label is the anchor's twin).
    scale = torch.where(wn > 0, f.abs() / wn.clamp(min=NORM_FLOOR), 0.0)
    return w * scale.view(-1, 1, 1, 1)


def _passes(extra_bwd: int = 0):
    def cost(cfg: TopKConfig, l: int) -> Passes:
        # Per iteration one forward + backward (kFool: k + 1 further backward rows, and one more
        # forward that checks the last iterate); once: the clean forward for the targets, the z0
        # forward and the final scoring.
        return Passes(grad=cfg.iterations, bwd=cfg.iterations * (cfg.k + 1) * extra_bwd, fwd=3 + min(extra_bwd, 1))
    return cost


CODE = "code: github.com/discovershu/TKML-AP"
PAPER = "Hu, Ke, Wang, Lyu 2021, *TkML-AP: Adversarial attacks to top-k multi-label learning* (ICCV)"
# The authors' main_attack.py defaults: k 3, eps 10 in the [-1, 1] box, maxiter 1000, lr_attack 0.01.
DEFAULTS = {"k": 3, "eps": 5.0, "iterations": 1000, "lr": 0.01}

register(AttackSpec(
    name="tkmlapu", family="top-k", title="TkML-AP-U", config=TkmlapUConfig, norm="l2", run=run_untargeted,
    doc=TkmlapUConfig.__doc__, reference=f"{PAPER}; {CODE} attack.py `l2_topk_non_targeted_attack`",
    default_target="topk-untargeted", bound="eps", cost=_passes(),
    # The top-k hinge switches on near-ties of the ranking: batch 1 and batch 4 round the convolutions
    # differently and 40 steps at lr 0.5 can take a sample down another path (seen with 2 threads).
    batch_size_exact=False, quick={"iterations": 40, "lr": 0.5},
    presets={"paper": dict(DEFAULTS)},
))

register(AttackSpec(
    name="tkmlapt", family="top-k", title="TkML-AP-T", config=TkmlapTConfig, norm="l2", run=run_targeted,
    doc=TkmlapTConfig.__doc__, reference=f"{PAPER}; {CODE} attack.py `l2_topk_targeted_attack`",
    default_target="topk-targeted", bound="eps", cost=_passes(),
    # The top-k hinge switches on near-ties of the ranking: batch 1 and batch 4 round the convolutions
    # differently and 40 steps at lr 0.5 can take a sample down another path (seen with 2 threads).
    batch_size_exact=False, quick={"iterations": 40, "lr": 0.5},
    presets={"paper": dict(DEFAULTS, difficulty="best", tie=0.0)},
))

register(AttackSpec(
    name="kfool", family="top-k", title="kFool", config=KFoolConfig, norm="l2", run=run_kfool,
    doc=KFoolConfig.__doc__, reference=f"{PAPER} (its baseline, after DeepFool); {CODE} baseline_attacks.py `kfool`",
    default_target="topk-untargeted", cost=_passes(1), jacobian=True, quick={"iterations": 20},
    presets={"paper": {"k": 3, "iterations": 1000}},
))
