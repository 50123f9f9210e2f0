"""ECoP's meta-objective, top to bottom, as the paper's Algorithm 1.

For every signal of a batch, starting from the shared initialization theta_0:

1. **select** (Eq. 2-3): rank the full context by the current error, without a graph, and keep the top
   ``gamma * M`` points;
2. **inner step** (Eq. 4): one SGD step on the pruned context, with a graph back to theta_0;
   steps 1-2 repeat K times, giving theta_K;
3. **bootstrap** (§2.3): L more first-order SGD steps on the full context from theta_K give the target
   theta_boot, a constant;
4. **meta-loss** (Eq. 5 and §2.3): ``mean_b [ MSE(theta_K; full) + lambda * ||theta_K - theta_boot|| ]``.

Every pass over the model goes through a :class:`~ecop_wrap._src.evaluator.ContextEvaluator`, which owns the
memory modes (chunking, the surrogate outer loss, checkpointing); the rules deciding which points are kept
are registered objects (:mod:`ecop_wrap._src.rules`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from ..typing import Params
from .evaluator import ContextEvaluator
from .numerics import global_norm, num_selected, topk_indices
from .rates import InnerRates
from .rules import SelectionRule

__all__ = ["MetaLossOutput", "bootstrap", "inner_loop", "meta_objective", "param_distance", "select"]

OnSelect = Callable[[int, Params, "torch.Tensor | None"], None]


@dataclass
class MetaLossOutput:
    """The meta-loss and per-signal diagnostics (all diagnostics detached).

    Attributes:
        loss: scalar meta-loss, differentiable w.r.t. theta_0 (and learned inner rates).
        mse: ``[B]`` full-context MSE at theta_K.
        boot_distance: ``[B]`` mu(theta_K, theta_boot) (zeros when the bootstrap is off).
        adapted: name -> ``[B, *shape]`` theta_K of the adapted parameters, detached.
    """

    loss: torch.Tensor
    mse: torch.Tensor
    boot_distance: torch.Tensor
    adapted: Params


def select(
    ctx: ContextEvaluator, params: Params, rule: SelectionRule, gamma: float, generator: torch.Generator
) -> torch.Tensor | None:
    """Indices ``[B, k]`` of each signal's pruned context (``k = max(1, int(gamma M))``), None if all points."""
    k = num_selected(ctx.num_points, gamma)
    if k >= ctx.num_points:
        return None
    return topk_indices(rule.scores(ctx, params, generator), k)


def inner_loop(
    ctx: ContextEvaluator,
    params: Params,
    *,
    steps: int,
    rates: InnerRates,
    rule: SelectionRule,
    gamma: float,
    generator: torch.Generator,
    create_graph: bool = True,
    on_select: OnSelect | None = None,
) -> Params:
    """theta_K: ``steps`` pruned SGD steps, each re-ranking the context at the current parameters.

    ``on_select(k, params, pruned_idx)`` sees every step's parameters and pruned set before the step.
    """
    for k in range(steps):
        pruned_idx = select(ctx, params, rule, gamma, generator)
        if on_select is not None:
            on_select(k, params, pruned_idx)
        params = ctx.sgd_step(params, pruned_idx, rates.at(k), create_graph=create_graph)
    return params


def bootstrap(ctx: ContextEvaluator, params: Params, *, steps: int, lr: float) -> Params:
    """theta_boot: ``steps`` (L) first-order full-context SGD steps from ``params`` (theta_K), no graph."""
    boot_params = params
    with record_function("ecop.bootstrap"):
        for _ in range(steps):
            grads = ctx.full_grad(boot_params, low_precision=True).grads
            boot_params = {n: p.detach() - lr * grads[n] for n, p in boot_params.items()}
    return boot_params


def param_distance(params: Params, target: Params) -> torch.Tensor:
    """mu: per-signal global L2 norm (not squared) of ``params - target`` over the adapted parameters, ``[B]``."""
    return global_norm([params[n] - target[n] for n in params])


def meta_objective(
    ctx: ContextEvaluator,
    init: dict[str, torch.Tensor],
    *,
    K: int,
    L: int,
    lam: float,
    gamma: float,
    boot_lr: float,
    rates: InnerRates,
    rule: SelectionRule,
    generator: torch.Generator,
    first_order: bool = False,
) -> MetaLossOutput:
    """Adapt theta_0 (``init``: adapted name -> the model's tensor) to every signal and return the meta-loss."""
    adapted = inner_loop(
        ctx,
        ctx.expand(init),
        steps=K,
        rates=rates,
        rule=rule,
        gamma=gamma,
        generator=generator,
        create_graph=not first_order,
    )
    uses_bootstrap = L > 0 and lam != 0
    if uses_bootstrap:
        boot_params = bootstrap(ctx, adapted, steps=L, lr=boot_lr)
        distance = param_distance(adapted, boot_params)
    else:
        distance = torch.zeros(ctx.batch, dtype=ctx.values.dtype, device=ctx.values.device)
    mse = ctx.full_mse(adapted)  # after the bootstrap, so that its transient memory never meets this graph
    loss = (mse + lam * distance).mean() if uses_bootstrap else mse.mean()
    return MetaLossOutput(
        loss=loss,
        mse=mse.detach(),
        boot_distance=distance.detach(),
        adapted={n: p.detach() for n, p in adapted.items()},
    )
