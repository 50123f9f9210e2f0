"""A plain per-signal float64 reference of the ECoP meta-loss with the pruned subsets given, not ranked.

Random selection draws its subsets inside the library, so a reference cannot rank them itself; instead a test
enumerates every possible sequence of subsets on a tiny problem and checks that the library's loss and
meta-gradient equal this reference's for one of them. Like tests/reference.py it shares no code with
ecop_wrap: a full forward with a graph at every step, indexed at the given points, and torch.autograd.grad.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call


def ref_meta_loss_given_subsets(
    model: nn.Module,
    coords: torch.Tensor,
    values: torch.Tensor,
    subsets: Sequence[Sequence[Sequence[int]]],
    *,
    L: int,
    lam: float,
    lr: float,
    adapted: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean over signals of MSE(theta_K; full) + lam * ||theta_K - stopgrad(theta_boot)||.

    Args:
        subsets: ``subsets[b][k]`` are the point indices signal ``b`` trains on at inner step ``k`` (K = len).
        adapted: names of the parameters adapted per signal (None: every trainable one); the others are the
            model's own in every forward.
    """
    theta0 = {n: p for n, p in model.named_parameters() if p.requires_grad and (adapted is None or n in adapted)}
    total = values.new_zeros(())
    for b, signal_subsets in enumerate(subsets):
        x = coords if coords.ndim == 2 else coords[b]
        y = values[b]
        params = dict(theta0)
        for idx in signal_subsets:
            pred = functional_call(model, params, (x,))
            chosen = torch.as_tensor(list(idx))
            loss = ((pred[chosen] - y[chosen]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        outer = ((functional_call(model, params, (x,)) - y) ** 2).mean()
        if L > 0 and lam != 0:
            boot = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            for _ in range(L):
                boot_loss = ((functional_call(model, boot, (x,)) - y) ** 2).mean()
                grads = torch.autograd.grad(boot_loss, list(boot.values()))
                boot = {
                    n: (p - lr * g).detach().requires_grad_(True) for (n, p), g in zip(boot.items(), grads, strict=True)
                }
            outer = outer + lam * torch.sqrt(sum(((params[n] - boot[n]) ** 2).sum() for n in params))
        total = total + outer
    return total / values.shape[0]


def all_subset_sequences(num_points: int, keep: int, steps: int) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Every sequence of ``steps`` subsets of ``keep`` points out of ``num_points`` (for one signal)."""
    subsets = list(itertools.combinations(range(num_points), keep))
    return itertools.product(subsets, repeat=steps)
