"""TkML-AP (untargeted, targeted) and kFool against independent ports of the authors' code
(github.com/discovershu/TKML-AP: attack.py, baseline_attacks.py, utils.py), written for this test
from that code: one sample at a time, as the code runs, on a small random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine import attacks
from engine.attacks import targets

LABELS, K = 6, 2


def _model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, LABELS))
    net.num_labels = LABELS
    return net.eval()


def _inputs(model, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    return x


def _box_model(model):
    # The code's models see the [-1, 1] box image; ours see pixels.
    return lambda xb: model((xb + 1) / 2)


def _clip_l2(eta, eps):  # the code's clip_eta, ord 2
    norm = torch.sqrt(torch.clamp(torch.sum(eta ** 2, (1, 2, 3), keepdim=True), min=1e-12))
    return eta * torch.clamp(eps / norm, max=1.0)


def _none_of_gt_in_topk(gt, out, k):  # the code's nontargeted_TP_index, one sample
    return not any(gt[0, j] == 1 for j in np.argsort(out[0])[-k:])


def _sgd_on_modifier(xb, lr):
    timg = torch.atanh(xb * 0.999999)
    modifier = torch.zeros_like(xb, requires_grad=True)
    return timg, modifier, torch.optim.SGD([modifier], lr=lr)


def _projected(modifier, timg, eps):  # the code's image with Projection_flag: (image, eta)
    eta = _clip_l2(torch.tanh(modifier + timg) - torch.tanh(timg), eps)
    return torch.tanh(timg) + eta, eta


def ref_untargeted(f, xb, gt, k, eps, maxiter, lr):
    timg, modifier, opt = _sgd_on_modifier(xb, lr)
    img, it_done = None, maxiter
    for it in range(maxiter):
        opt.zero_grad()
        img, _ = _projected(modifier, timg, eps)
        out = f(img)
        real = torch.max(gt * out - (1 - gt) * 10000)
        t = real - out
        lam, _ = torch.topk(t, gt.shape[1] - k)
        loss = lam[:, -1] + (1 / (gt.shape[1] - k)) * torch.sum(torch.max(torch.zeros_like(t), t - lam[:, -1]))
        loss.sum().backward()
        opt.step()
        if _none_of_gt_in_topk(gt.numpy(), out.detach().numpy(), k):
            it_done = it
            break
    return img.detach(), it_done


def ref_targeted(f, xb, tlab, k, eps, maxiter, lr, tie=0.0):
    timg, modifier, opt = _sgd_on_modifier(xb, lr)
    best, best_img = 1e10, None
    zeros = (tlab == 1).int().numpy()
    for _ in range(maxiter):
        opt.zero_grad()
        img, eta = _projected(modifier, timg, eps)
        out = f(img)
        lamb, _ = torch.topk(out, k)
        loss = torch.sum(torch.clamp(tlab * (lamb[:, -1] - out), min=0.0))
        loss = loss + torch.sum((tie / 2) * torch.sum(torch.square(1 - tlab * out), [1]))
        loss.backward()
        opt.step()
        top = set(np.argsort(out.detach().numpy()[0])[-int(zeros.sum()):])
        norm = np.linalg.norm(eta.detach().numpy())
        if top == set(np.nonzero(zeros[0])[0]) and norm < best:
            best, best_img = norm, img.detach()
    return best_img


def ref_kfool(f, xb, gt, k, maxiter):
    timg = torch.atanh(xb * 0.999999)
    img = torch.tanh(timg).clone().requires_grad_()
    F = f(img)
    max_label = torch.argmax(gt * F - (1 - gt) * 10000)
    gt_all = set(np.nonzero(gt.numpy()[0])[0])
    r_tot = torch.zeros_like(xb)
    loop = 0

    def out_of_top():
        return not (set(torch.argsort(F, dim=1, descending=True)[0][:k].tolist()) & gt_all)

    while not out_of_top() and loop < maxiter:
        p = torch.argsort(F, dim=1, descending=True)
        g_max = torch.autograd.grad(F[0, max_label], img, retain_graph=True)[0]
        w, fsum = torch.zeros_like(xb), 0.0
        for j in range(k + 1):
            g_j = torch.autograd.grad(F[0, p[0][j]], img, retain_graph=True)[0]
            if not torch.equal(g_j, g_max) and p[0][j] != max_label:
                norm = 1 / torch.norm(g_j - g_max)
                w = w + (g_j - g_max) * norm
                fsum = fsum + (F[0, p[0][j]] - F[0, max_label]).detach() * norm
        r_tot = r_tot + torch.abs(fsum) * w / torch.norm(w)
        img = torch.tanh(r_tot + timg).requires_grad_()
        F = f(img)
        loop += 1
    return img.detach(), loop


def _eligible_rows(res):
    return [i for i in range(len(res.eligible)) if bool(res.eligible[i])]


@pytest.mark.parametrize("eps, lr", [(3.0, 1.0), (1.0, 0.3)])  # most succeed; the ball binds, none succeed
def test_tkmlapu_equals_the_reference_loop(eps, lr):
    model = _model()
    f = _box_model(model)
    x = _inputs(model)
    kw = dict(k=K, eps=eps, iterations=60, lr=lr)
    res = attacks.run(model, x, "tkmlapu", **kw)
    rows = _eligible_rows(res)
    assert len(rows) >= 3
    for i in rows:
        img, it = ref_untargeted(f, x[i : i + 1] * 2 - 1, res.y_star[i : i + 1], K, 2 * kw["eps"], kw["iterations"],
                                 kw["lr"])
        torch.testing.assert_close(res.x_adv[i : i + 1], ((img + 1) / 2).clamp(0, 1), atol=2e-5, rtol=0)
        assert int(res.iters[i]) == min(it + 1, kw["iterations"])
    assert res.success[rows].any() == (eps > 1) and (res.norms[:, 2] <= kw["eps"] * (1 + 1e-5)).all()


@pytest.mark.parametrize("difficulty", ["best", "worst"])
def test_tkmlapt_equals_the_reference_loop(difficulty):
    model = _model(2)
    f = _box_model(model)
    x = _inputs(model, seed=3)
    kw = dict(k=K, eps=2.5, iterations=40, lr=1.0, difficulty=difficulty)
    res = attacks.run(model, x, "tkmlapt", **kw)
    for i in _eligible_rows(res):
        tlab = res.y_star[i : i + 1] * 2 - 1  # the code's targets: +1 chosen, -1 the others
        img = ref_targeted(f, x[i : i + 1] * 2 - 1, tlab, K, 2 * kw["eps"], kw["iterations"], kw["lr"])
        assert bool(res.success[i]) == (img is not None)
        if img is not None:
            torch.testing.assert_close(res.x_adv[i : i + 1], ((img + 1) / 2).clamp(0, 1), atol=2e-5, rtol=0)
    assert res.success.any()


def ref_pick(scores, gt, difficulty, k):  # the code's generate_target_zeros_3_cases, best / worst
    order = np.argsort(-scores) if difficulty == "best" else np.argsort(scores)
    picked = []
    for j in order:
        if gt[j] == 1 and len(picked) < k:
            continue
        picked.append(j)
        if len(picked) == k:
            break
    return sorted(picked)


def test_topk_targeted_picks_the_codes_labels():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(20, 8, generator=g)
    y = scores >= 0.3
    for difficulty in ("best", "worst"):
        t, ok = targets.build("topk-targeted", y, range(20), 0, scores=scores, k=3, difficulty=difficulty)
        for i in range(20):
            if ok[i]:
                want = ref_pick(scores[i].numpy(), y[i].int().numpy(), difficulty, 3)
                assert torch.nonzero(t[i]).flatten().tolist() == want


def test_kfool_equals_the_reference_loop():
    model = _model(0)
    f = _box_model(model)
    x = _inputs(model, seed=1)
    res = attacks.run(model, x, "kfool", k=K, iterations=30)
    rows = _eligible_rows(res)
    assert rows
    for i in rows:
        img, loops = ref_kfool(f, x[i : i + 1] * 2 - 1, res.y_star[i : i + 1], K, 30)
        assert int(res.iters[i]) == loops
        torch.testing.assert_close(res.x_adv[i : i + 1], ((img + 1) / 2).clamp(0, 1), atol=1e-4, rtol=0)
    assert res.success[rows].any()  # the others ran all 30 iterations, as the code does
