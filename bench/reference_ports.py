"""Independent ports of the field's reference loops, one sample at a time as their repositories run them
(the released code's Rank I / II: one batch with per-sample bookkeeping, as it runs): written from the
papers and a reading of the code (never imported: the references hard-code CUDA), on the CPU.

The tests compare each attack with its port (tests/test_topk.py, test_ranking.py, test_field_attacks.py)
and `make bench` times the port against the batched attack at equal results (bench/bench_field.py).
Where the reference draws from numpy's global RNG, the port is handed the engine's own per-sample draws.

- TkML-AP (untargeted, targeted), kFool: github.com/discovershu/TKML-AP attack.py, baseline_attacks.py,
  utils.py (the [-1, 1] box image inside a tanh; ``box_model`` gives our pixel model that view).
- Rank I / II: the study's released ml_rank1.py / ml_rank2.py with src/attack_model.py's get_target_set.
- MLAE-DE: the study's attacks/mlae_de.py ``DE``; ML-JSMA: attacks/ml_jsma_pytorch.py ``generate_np``.
- TkML-AP-Uv / kUAP: attack.py ``UAP`` / baseline_attacks.py ``kUAP`` over the per-sample attacks.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.attacks import mlaede


# ---------------------------------------------------------------------------- TkML-AP and kFool
def box_model(model):
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



# ------------------------------------------------------------------------------ Rank I / Rank II
def get_target_set(y, y_target):  # src/attack_model.py, y and y_target in {-1, 1}
    a_pos = np.logical_and(y != y_target, y == 1) + 0
    a_neg = np.logical_and(y != y_target, y == -1) + 0
    b_pos = np.logical_and(y == y_target, y == 1) + 0
    b_neg = np.logical_and(y == y_target, y == -1) + 0
    return a_pos * -2 + -1 * b_neg + 1 * b_pos + 2 * a_neg, a_pos, b_neg


def _criterion(prob, y, modifier, x_t, const, a_pos, b_neg, second):
    newimg = (torch.tanh(modifier + x_t) + 1) / 2
    output = prob(newimg)
    other = (torch.tanh(x_t) + 1) / 2
    l2dist = torch.sum((newimg - other).pow(2), (1, 2, 3))
    omega_pos = output * torch.eq(y, torch.ones_like(y))
    omega_neg = output * torch.eq(y, -torch.ones_like(y))
    omega_neg_max = torch.max(omega_neg, 1).values
    omega_pos[omega_pos == 0] = 1
    loss1 = torch.max(torch.zeros_like(omega_neg_max), omega_neg_max - torch.min(omega_pos, 1).values)
    if second:
        max_a_pos = torch.max(output[a_pos == 1].view(len(y), -1), 1).values
        b_neg_v = output * b_neg
        b_neg_v[b_neg_v == 0] = 1
        loss1 = loss1 + torch.max(torch.zeros_like(max_a_pos), max_a_pos - torch.min(b_neg_v, 1).values)
    return output, torch.sum(l2dist) + torch.sum(const * loss1), l2dist, newimg


def ref_rank(prob, x, y_target, y_tor, a_pos, b_neg, second, max_iter, steps, lr, init_const):
    """MLRank1/MLRank2.generate_np of the released code, one batch."""
    n = len(x)
    imgs = np.arctanh((np.clip(x, 0, 1) * 2 - 1) * 0.999999)
    upper, lower = np.ones(n) * 1e10, np.zeros(n)
    o_bestl2, o_bestscore, o_bestattack = [1e10] * n, [-1] * n, np.copy(x)
    const = np.ones(n) * init_const
    x_t, y_t = torch.tensor(imgs), torch.tensor(y_target)
    a_pos_t, b_neg_t = torch.tensor(a_pos), torch.tensor(b_neg)
    for outer in range(steps):
        modifier = torch.tensor(np.zeros_like(x), requires_grad=True)
        const_t = torch.tensor(const)
        opt = torch.optim.Adam([modifier], lr=lr)
        bestl2, bestscore, bestoutput = [1e10] * n, [-1] * n, [0] * n
        if steps >= 10 and outer == steps - 1:
            const = upper  # the code rebinds after const_t was built: no effect on this step
        prev = 1e10
        for iteration in range(max_iter):
            output, loss, l2dist, newimg = _criterion(prob, y_t, modifier, x_t, const_t, a_pos_t, b_neg_t, second)
            opt.zero_grad()
            loss.backward()
            opt.step()
            val = loss.item()
            l2s, scores, nimg = l2dist.detach().numpy(), output.detach().numpy(), newimg.detach().numpy()
            if iteration % ((max_iter // 10) or 1) == 0:
                if val > prev * .9999:
                    break
                prev = val
            for e in range(n):
                l2, sc, tor = l2s[e], scores[e], y_tor[e]
                score = np.dot(tor, sc) / (np.linalg.norm(tor) * np.linalg.norm(sc))
                if bestscore[e] < score or (bestscore[e] == score and l2 < bestl2[e]):
                    bestl2[e], bestscore[e], bestoutput[e] = l2, score, sc
                if o_bestscore[e] < score:
                    o_bestl2[e], o_bestscore[e], o_bestattack[e] = l2, score, nimg[e]
                if l2 < o_bestl2[e] and o_bestscore[e] == score:
                    o_bestl2[e], o_bestscore[e], o_bestattack[e] = l2, score, nimg[e]
        for e in range(n):
            sc = np.array(bestoutput[e])
            sc = np.where(sc >= 0.5, 1, -1)
            if np.all(sc == y_target[e]) and bestscore[e] != -1:
                upper[e] = min(upper[e], const[e])
                if upper[e] < 1e9:
                    const[e] = (lower[e] + upper[e]) / 2
            else:
                lower[e] = max(lower[e], const[e])
                const[e] = (lower[e] + upper[e]) / 2 if upper[e] < 1e9 else const[e] * 10
    return o_bestattack



# ---------------------------------------------------------------------------------------- MLAE-DE
def mlae_de_port(prob, image, target, eps, pop_size, generation, first_pop, perms):
    """The study's attacks/mlae_de.py ``DE`` for one image, its numpy RNG replaced by ``first_pop``
    and ``perms`` (two row permutations per generation). Returns (x_adv, the code's own count,
    forwards actually run)."""

    def evaluate(pop):
        imgs = np.clip(image[None] + pop.reshape((len(pop),) + image.shape) * eps, 0.0, 1.0)
        fit = prob(imgs.astype(np.float32)) - np.zeros((len(pop), target.size)) - 0.5
        on = target > 0
        fit[:, on] = -fit[:, on]
        fit[fit < 0] = 0
        return fit.sum(1), fit

    def select(pop, fitness, fit, off, off_fitness, off_fit):
        take = fitness > off_fitness
        return np.where(take[:, None], off, pop), np.where(take, off_fitness, fitness), \
            np.where(take[:, None], off_fit, fit)

    pop = first_pop.copy()
    fitness, fit = evaluate(pop)
    count = forwards = pop_size
    if not (fitness == 0).any():
        while count < pop_size * generation:
            a, b = next(perms)
            p2 = pop[a]
            p3 = p2[b]
            off = pop + 0.5 * (p2 - p3)
            o_fitness, o_fit = evaluate(off)
            count += pop_size
            forwards += pop_size
            pop, fitness, fit = select(pop, fitness, fit, off, o_fitness, o_fit)
            new = pop.copy()
            for i in range(pop_size):
                masked = np.where(fit[i] == 0, 0.0, fit)  # only the labels i gets wrong
                new[i] = pop[i] + pop[int(np.argmin(masked.sum(1)))] * 0.5
            c_fitness, c_fit = evaluate(new)
            forwards += pop_size  # the complement's forward, which the code does not count
            pop, fitness, fit = select(pop, fitness, fit, new, c_fitness, c_fit)
            if (fitness == 0).any():
                break
    zero = np.nonzero(fitness == 0)[0]
    r, count = (pop[zero[0]], count) if len(zero) else (pop[0], count / 100)
    return np.clip(image + r.reshape(image.shape) * eps, 0, 1), count, forwards


def mlaede_reference_runs(model, x, sample_ids, seed, cfg):
    prob = lambda imgs: torch.sigmoid(model(torch.from_numpy(imgs))).detach().numpy()  # noqa: E731
    out = []
    for img, sid in zip(x, sample_ids):
        g, first = mlaede.draws(seed, sid, cfg.pop_size, img.numel())
        perms = iter(lambda g=g: (torch.randperm(cfg.pop_size, generator=g).numpy(),
                                  torch.randperm(cfg.pop_size, generator=g).numpy()), None)
        out.append(mlae_de_port(prob, img.numpy(), np.ones(model.num_labels), cfg.eps, cfg.pop_size,
                                cfg.generations, first.numpy(), perms))
    return out



# ---------------------------------------------------------------------------------------- ML-JSMA
def jsma_port(prob, x, y_target, theta, gamma):
    """The study's attacks/ml_jsma_pytorch.py ``generate_np`` on a batch, feature by feature as the
    code loops (its CUDA calls left out): the saliency of each feature from the Jacobian rows of
    the wrong and the right labels, then the most salient floor(d / 100) raised by theta."""

    def jac_and_out(sample):
        xt = torch.from_numpy(sample).requires_grad_(True)
        out = prob(xt)
        rows = [torch.autograd.grad(out[:, j].sum(), xt, retain_graph=True)[0].numpy() for j in range(out.shape[1])]
        return np.stack(rows, 1), out.detach().numpy()

    sample = x.copy()
    d, l = sample[0].size, y_target.shape[1]
    jac, out = jac_and_out(sample)
    current = (out >= 0.5).astype(np.float32)
    iteration = 0
    while np.any(current != y_target) and iteration < gamma:
        for idx in range(len(sample)):
            if np.all(current[idx] == y_target[idx]):
                continue
            y_diff = y_target[idx] - current[idx]
            J = jac[idx].reshape(l, -1).T
            sal = []
            for i in range(d):
                t = o = 0
                for j in range(l):
                    if y_diff[j] == 0:
                        o += J[i][j]
                    else:
                        t += J[i][j] * y_diff[j]
                sal.append(0 if t < 0 else t - o)
            for _ in range(d // 100):
                m = int(np.argmax(sal))
                if sal[m] <= 0:
                    break
                sample[idx].reshape(-1)[m] += theta
                sal[m] = 0
        sample = np.clip(sample, 0.0, 1.0)
        jac, out = jac_and_out(sample)
        current = (out >= 0.5).astype(np.float32)
        iteration += 1
    return sample



# -------------------------------------------------------------------------- universal perturbations
def topk_fooled(z, gt, k):
    """The authors' topk_acc_metric for one sample: none of the true labels among the k highest."""
    top = set(np.argsort(z)[-k:][::-1].tolist())
    return top.isdisjoint(set(np.nonzero(gt)[0].tolist()))


def untargeted_loss_port(z, gt, k):
    """attack.py's loss of ``l2_topk_non_targeted_attack`` for one sample."""
    real = torch.max(gt * z - (1 - gt) * 10000)
    t = real - z
    lam = torch.topk(t, z.shape[1] - k)[0][:, -1]
    return (lam + (1 / (z.shape[1] - k)) * torch.clamp(t - lam, min=0).sum()).sum()


S = 1 - 1e-6  # the authors' arctanh(x * 0.999999)


def seen_by(model):
    """The model on coordinates v: it sees (tanh(v) / s + 1) / 2."""
    return lambda v: model(((torch.tanh(v) / S + 1) / 2).clamp(0, 1))


def tkmlapu_inner_port(model, start, gt, k, maxiter, lr):
    """attack.py ``l2_topk_non_targeted_attack`` as ``UAP`` calls it (Projection_flag off): SGD on the
    modifier, stopping at the first iterate whose top k holds no true label. (modifier, success)."""
    see, g_t = seen_by(model), torch.from_numpy(gt[None]).float()
    modifier = torch.zeros_like(start, requires_grad=True)
    opt = torch.optim.SGD([modifier], lr=lr)
    for _ in range(maxiter):
        opt.zero_grad()
        out = see(modifier + start)
        found = modifier.detach().clone()
        untargeted_loss_port(out, g_t, k).backward()
        opt.step()
        if topk_fooled(out.detach().numpy()[0], gt, k):
            return found, True
    return None, False


def kfool_inner_port(model, start, gt, k, maxiter, lr=None):
    """baseline_attacks.py ``kfool``: DeepFool steps on the k + 1 highest scores against the true
    label of highest score, differentiated at the box image, added inside the tanh. (r_tot, success)."""
    see_box = lambda v: (((torch.tanh(v) / S + 1) / 2).clamp(0, 1) * 2 - 1)  # noqa: E731
    img = see_box(start).detach().requires_grad_(True)
    F = model((img + 1) / 2)
    t = torch.from_numpy(gt[None]).float()
    max_label = int(torch.argmax(t * F - (1 - t) * 10000))
    r_tot = torch.zeros_like(start)
    loop_i = 0
    while not topk_fooled(F.detach().numpy()[0], gt, k) and loop_i < maxiter:
        top = F[0].topk(k + 1)
        g_max = torch.autograd.grad(F[0, max_label], img, retain_graph=True)[0]
        w, f = torch.zeros_like(img), 0.0
        for j in range(k + 1):
            g_j = torch.autograd.grad(top.values[j], img, retain_graph=True)[0]
            if not torch.equal(g_j, g_max) and int(top.indices[j]) != max_label:
                inv = 1 / torch.norm(g_j - g_max)
                w = w + (g_j - g_max) * inv
                f = f + (F[0, top.indices[j]] - F[0, max_label]).detach() * inv
        r_tot = r_tot + abs(f) * w / torch.norm(w)
        img = see_box(start + r_tot).detach().requires_grad_(True)
        F = model((img + 1) / 2)
        loop_i += 1
    return r_tot, topk_fooled(F.detach().numpy()[0], gt, k)


def uap_port(model, u, gt, k, eps, xi, max_iter, inner, at_clean=False, **inner_kw):
    """attack.py ``UAP`` / baseline_attacks.py ``kUAP`` in coordinates u = atanh(s (2x - 1)): passes
    over the fit set until its fooling rate reaches xi; ``at_clean``: kUAP's code attacks the clean
    sample. Returns (delta, fooling rate, passes)."""
    see = seen_by(model)
    delta = torch.zeros_like(u[0])
    rate, itr = 0.0, 0
    while rate < xi and itr < max_iter:
        for i in range(len(u)):
            if topk_fooled(see(u[i : i + 1] + delta).detach().numpy()[0], gt[i], k):
                continue
            start = u[i : i + 1] if at_clean else u[i : i + 1] + delta
            modifier, success = inner(model, start, gt[i], k, **inner_kw)
            if success:
                delta = delta + modifier[0]
                n = torch.sqrt(torch.clamp((delta**2).sum(), min=1e-12))
                delta = delta * torch.clamp(eps / n, max=1.0)
        itr += 1
        with torch.no_grad():
            rate = np.mean([topk_fooled(see(u[i : i + 1] + delta).numpy()[0], gt[i], k) for i in range(len(u))])
    return delta, rate, itr

