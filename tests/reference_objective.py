"""An independent float64 reference for per-point losses and point weights (shares no code with ecop_wrap).

One signal at a time, on that signal's points of positive weight only (the others are dropped before anything
is computed), with the loss written out here: the signal's loss is ``sum_j w_j l_j / sum_j w_j``, the pruned set
the top ``max(1, int(gamma * M_pos))`` points by ``w_j l_j``.
"""

from __future__ import annotations

import torch
from torch.func import functional_call


def point_loss(name, pred, y, delta=1.0, fn=None):
    """Per-point loss ``[M]`` averaged over channels."""
    e = pred - y
    if name == "mse":
        return (e**2).mean(-1)
    if name == "l1":
        return e.abs().mean(-1)
    if name == "huber":
        a = e.abs()
        return torch.where(a <= delta, 0.5 * e**2, delta * (a - 0.5 * delta)).mean(-1)
    return fn(pred, y)


def _weighted(losses, w):
    return (w * losses).sum() / w.sum()


def _positive(x, y, w):
    keep = w > 0
    return x[keep], y[keep], w[keep]


def _inner(model, params, x, y, w, *, gamma, K, lr, loss, delta, fn, rates=None):
    for _ in range(K):
        pred = functional_call(model, params, (x,))
        losses = point_loss(loss, pred, y, delta, fn)
        count = max(1, int(gamma * x.shape[0]))
        idx = torch.argsort((w * losses).detach(), descending=True)[:count]
        step_loss = _weighted(losses[idx], w[idx])
        grads = torch.autograd.grad(step_loss, list(params.values()), create_graph=True)
        params = {
            n: p - (lr if rates is None else rates[n]) * g for (n, p), g in zip(params.items(), grads, strict=True)
        }
    return params


def ref_objective_grads(
    model,
    coords,
    values,
    weights,
    *,
    gamma,
    K,
    L,
    lam,
    lr,
    loss="mse",
    delta=1.0,
    fn=None,
    adapted=None,
    rates=None,
    lam_mode="absolute",
):
    """Meta-loss (mean over signals) and its gradient w.r.t. the model's trainable parameters (then the rates,
    one per adapted element: Meta-SGD). ``lam_mode="relative"``: lam times the constant norm of the loss
    gradient at theta_K."""
    theta0 = {n: p for n, p in model.named_parameters() if p.requires_grad and (adapted is None or n in adapted)}
    total = 0.0
    for b in range(values.shape[0]):
        x, y, w = _positive(coords if coords.ndim == 2 else coords[b], values[b], weights[b])
        theta_k = _inner(
            model, dict(theta0), x, y, w, gamma=gamma, K=K, lr=lr, loss=loss, delta=delta, fn=fn, rates=rates
        )
        fit = _weighted(point_loss(loss, functional_call(model, theta_k, (x,)), y, delta, fn), w)
        boot = {n: p.detach().requires_grad_(True) for n, p in theta_k.items()}
        weight = lam
        for step in range(L):
            boot_loss = _weighted(point_loss(loss, functional_call(model, boot, (x,)), y, delta, fn), w)
            grads = torch.autograd.grad(boot_loss, list(boot.values()))
            if step == 0 and lam_mode == "relative":
                weight = lam * torch.sqrt(sum((g**2).sum() for g in grads))
            boot = {
                n: (p - lr * g).detach().requires_grad_(True) for (n, p), g in zip(boot.items(), grads, strict=True)
            }
        distance = torch.sqrt(sum(((theta_k[n] - boot[n].detach()) ** 2).sum() for n in theta_k))
        total = total + fit + weight * distance
    meta = total / values.shape[0]
    wrt = [p for p in model.parameters() if p.requires_grad] + list((rates or {}).values())
    return meta.detach(), torch.autograd.grad(meta, wrt)


def ref_objective_fit(model, x, y, w, *, steps, lr, gamma, loss="mse", delta=1.0, fn=None):
    """Test-time fit with Eq. 6 (norm) scaling on the signal's positive points; the loss history ``[steps + 1]``."""
    x, y, w = _positive(x, y, w)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad}
    history = []
    for step in range(steps + 1):
        losses = point_loss(loss, functional_call(model, params, (x,)), y, delta, fn)
        full = _weighted(losses, w)
        history.append(full.detach())
        if step == steps:
            break
        g_full = torch.autograd.grad(full, list(params.values()), retain_graph=True)
        count = max(1, int(gamma * x.shape[0]))
        idx = torch.argsort((w * losses).detach(), descending=True)[:count]
        g_pruned = torch.autograd.grad(_weighted(losses[idx], w[idx]), list(params.values()))
        norm = lambda gs: torch.sqrt(sum((g**2).sum() for g in gs))  # noqa: E731
        scale = norm(g_pruned) / (norm(g_full) + 1e-16)
        params = {
            n: (p - lr * scale * g).detach().requires_grad_(True)
            for (n, p), g in zip(params.items(), g_full, strict=True)
        }
    return torch.stack(history)
