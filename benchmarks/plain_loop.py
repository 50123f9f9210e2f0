"""A plain per-signal ECoP meta-loss: the baseline the library's speed is measured against.

One signal at a time, ``torch.func.functional_call`` on the user's module, ``torch.autograd.grad`` with
``create_graph=True`` for the inner steps, a graph-free ranking forward and a forward on the pruned subset:
what a careful user would write by hand. It computes the same meta-gradient as the library (checked in
``benchmarks/speed`` before timing).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["plain_meta_backward"]


def _mse(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (functional_call(model, params, (x,)) - y).pow(2).mean()


def plain_meta_backward(
    model: nn.Module,
    coords: torch.Tensor,
    values: torch.Tensor,
    *,
    gamma: float,
    K: int,
    L: int,
    lam: float,
    lr: float,
    boot_lr: float | None = None,
) -> float:
    """Accumulate the ECoP meta-gradient of a batch into ``.grad``, one signal at a time; returns the loss."""
    boot_lr = lr if boot_lr is None else boot_lr
    theta0 = {n: p for n, p in model.named_parameters() if p.requires_grad}
    batch, num_points = values.shape[:2]
    k = max(1, int(gamma * num_points))
    total = 0.0
    for b in range(batch):
        x = coords if coords.ndim == 2 else coords[b]
        y = values[b]
        params = dict(theta0)
        for _ in range(K):
            if k < num_points:
                with torch.no_grad():
                    err = (functional_call(model, params, (x,)) - y).pow(2).sum(-1)
                idx = err.topk(k).indices
                xs, ys = x[idx], y[idx]
            else:
                xs, ys = x, y
            grads = torch.autograd.grad(_mse(model, params, xs, ys), list(params.values()), create_graph=True)
            params = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        loss = _mse(model, params, x, y)
        if L > 0 and lam != 0:
            boot = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            for _ in range(L):
                grads = torch.autograd.grad(_mse(model, boot, x, y), list(boot.values()))
                boot = {
                    n: (p - boot_lr * g).detach().requires_grad_(True)
                    for (n, p), g in zip(boot.items(), grads, strict=True)
                }
            dist = torch.sqrt(sum((params[n] - boot[n].detach()).pow(2).sum() for n in params))
            loss = loss + lam * dist
        (loss / batch).backward()
        total += float(loss.detach()) / batch
    return total
