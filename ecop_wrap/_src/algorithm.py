"""ECoP's meta-objective, top to bottom, as the paper's Algorithm 1.

For every signal of a batch, starting from the shared initialization theta_0:

1. **select** (Eq. 2-3): rank the full context by the current error, without a graph, and keep the top
   ``gamma * M`` points;
2. **inner step** (Eq. 4): one SGD step on the pruned context, with a graph back to theta_0;
   steps 1-2 repeat K times, giving theta_K;
3. **bootstrap** (§2.3): L more first-order SGD steps on the full context from theta_K give the target
   theta_boot, a constant;
4. **meta-loss** (Eq. 5 and §2.3): ``mean_b [ loss(theta_K; full) + lambda * ||theta_K - theta_boot|| ]``
   (the loss is the MSE by default; any registered per-point loss, weighted by the batch's weights;
   ``lam_mode="relative"`` scales lambda per signal by the loss gradient's norm at theta_K; ``step_loss > 0``
   adds MAML++'s multi-step term, ``step_loss * mean_k loss(theta_k; pruned_k)`` over k = 1 .. K-1).

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
from .config import ECoPConfig
from .evaluator import ContextEvaluator, FullGrad
from .numerics import ALL_POINTS, Points, flat_cat, global_norm, num_selected, sgd_update, topk_indices, weighted_topk
from .rates import InnerRates
from .rules import SelectionRule

__all__ = [
    "BOOT_RISE_FACTOR",
    "MetaLossOutput",
    "bootstrap",
    "inner_loop",
    "meta_objective",
    "param_distance",
    "select",
]

BOOT_RISE_FACTOR = 2.0
"""A bootstrap path whose last measured full-context loss is above this multiple of theta_K's counts as rising
(``boot_rise``). A step size that only overshoots does not count: on the image crops and the glyph SDFs, where
the bootstrap helps (on the glyphs lowering boot_lr from 0.05 to 0.01 cost 4.1 dB), paths ended 1.0-1.8x above
theta_K on average; on speech at boot_lr 0.05, where it harms, 2.1-5.0x and growing."""

OnSelect = Callable[[int, Params, Points], None]


@dataclass
class MetaLossOutput:
    """The meta-loss and per-signal diagnostics (all diagnostics detached).

    Attributes:
        loss: scalar meta-loss, differentiable w.r.t. theta_0 (and learned inner rates); its gradient is the
            paper's, with the bootstrap term reaching shared parameters too (the learner's ``meta_loss`` and
            ``meta_step`` keep it from them unless ``boot_trains_shared=True``).
        fit_loss: ``[B]`` full-context loss at theta_K (the MSE by default; also as :attr:`mse`).
        boot_distance: ``[B]`` mu(theta_K, theta_boot) (zeros when the bootstrap is off).
        boot_rise: ``[B]`` bool, True where the bootstrap's path rises: the full-context loss at its last measured
            point (after L - 1 steps) is above ``BOOT_RISE_FACTOR`` (2) times theta_K's (the step size then
            diverges on the signal, and the paper's target is far worse than theta_K); None without the bootstrap
            or with ``L < 2`` (no point after theta_K is measured then).
        adapted: name -> ``[B, *shape]`` theta_K of the adapted parameters, detached.
        floor_loss: ``[B]`` the trivial floor: the full-context loss of predicting each signal's own mean value
            (per channel) everywhere; set by the learner for the MSE (None otherwise).
        fit_term, boot_term: ``[B]`` the two terms of ``loss`` per signal, with their graphs (``fit_loss``, plus
            the multi-step term with ``step_loss > 0``, and ``lambda * mu``; ``boot_term`` None without the
            bootstrap): the learner differentiates their means apart for ``boot_trains_shared=False``.
    """

    loss: torch.Tensor
    fit_loss: torch.Tensor
    boot_distance: torch.Tensor
    adapted: Params
    boot_rise: torch.Tensor | None = None
    floor_loss: torch.Tensor | None = None
    fit_term: torch.Tensor | None = None
    boot_term: torch.Tensor | None = None

    @property
    def mse(self) -> torch.Tensor:
        """:attr:`fit_loss` (the name from when the objective was always the MSE)."""
        return self.fit_loss


def select(
    ctx: ContextEvaluator, params: Params, rule: SelectionRule, gamma: float, generator: torch.Generator
) -> Points:
    """Indices ``[B, k]`` of each signal's pruned context (``k = max(1, int(gamma M))``), or ``ALL_POINTS``.

    With weights, each signal keeps ``max(1, int(gamma M_b))`` of its ``M_b`` points of positive weight, and a
    point of weight 0 is never kept (:func:`~.numerics.weighted_topk`).
    """
    if ctx.weights is not None:
        if gamma >= 1.0 and bool((ctx.weights > 0).all()):
            return ALL_POINTS
        return weighted_topk(rule.scores(ctx, params, generator), ctx.weights, gamma)
    k = num_selected(ctx.num_points, gamma)
    if k >= ctx.num_points:
        return ALL_POINTS
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
    step_losses: list[torch.Tensor] | None = None,
) -> Params:
    """theta_K: ``steps`` pruned SGD steps, each re-ranking the context at the current parameters.

    ``on_select(k, params, pruned_idx)`` sees every step's parameters and pruned set before the step.
    ``step_losses``: a list that receives the ``[B]`` pruned-context loss at theta_1 ... theta_{K-1} (what steps
    2 to K differentiate), with their graphs.
    """
    for k in range(steps):
        pruned_idx = select(ctx, params, rule, gamma, generator)
        if on_select is not None:
            on_select(k, params, pruned_idx)
        losses = step_losses if k > 0 else None
        params = ctx.sgd_step(params, pruned_idx, rates.at(k), create_graph=create_graph, step_losses=losses)
    return params


def bootstrap(
    ctx: ContextEvaluator,
    params: Params,
    *,
    steps: int,
    lr: float,
    first: FullGrad | None = None,
    target: str = "last",
    path_losses: list[torch.Tensor] | None = None,
) -> Params:
    """theta_boot: ``steps`` (L) first-order full-context SGD steps from ``params`` (theta_K), no graph.

    ``first``: the graph-free full pass at ``params``, if the caller already made it. ``target="best"``: per
    signal, the point of lowest full-context loss on the path (theta_K included, detached) instead of the last.
    ``path_losses``: a list that receives the ``[B]`` full-context loss of each point whose gradient was taken
    (theta_K first; ``steps`` entries).
    """
    boot_params = params
    best: Params = {}  # target="best": each signal's lowest-loss point so far, and its loss
    best_loss = torch.empty(0)
    with record_function("ecop.bootstrap"), torch.no_grad():  # the updates record no graph (full_grad enables its own)
        for step in range(steps):
            full = first if step == 0 and first is not None else ctx.full_grad(boot_params, low_precision=True)
            if path_losses is not None:
                path_losses.append(full.loss)
            if target == "best" and step == 0:
                best, best_loss = {n: p.detach() for n, p in params.items()}, full.loss
            elif target == "best":
                best_loss = _keep_lower(best, best_loss, boot_params, full.loss)
            boot_params = sgd_update(boot_params, full.grads, lr)
        if not best:
            return boot_params
        _keep_lower(best, best_loss, boot_params, ctx.full_loss(ctx.errors(boot_params)))
    return best


def _keep_lower(best: Params, best_loss: torch.Tensor, params: Params, loss: torch.Tensor) -> torch.Tensor:
    """Replace, in place, each signal's ``best`` parameters by ``params`` where ``loss`` is lower; the new best
    losses ``[B]``."""
    lower = loss < best_loss
    for name, p in params.items():
        best[name] = torch.where(lower.view(-1, *([1] * (p.ndim - 1))), p, best[name])
    return torch.where(lower, loss, best_loss)


def param_distance(params: Params, target: Params) -> torch.Tensor:
    """mu: per-signal global L2 norm (not squared) of ``params - target`` over the adapted parameters, ``[B]``."""
    # one subtraction of the concatenated parameters (the same elementwise differences as one per tensor, in
    # three fewer ops for a 5-layer SIREN); the cat saves nothing for the backward, the norm saves the difference
    distance: torch.Tensor = torch.linalg.vector_norm(
        flat_cat(params.values()) - flat_cat(target[n] for n in params), dim=1
    )
    return distance


def meta_objective(
    ctx: ContextEvaluator,
    init: dict[str, torch.Tensor],
    config: ECoPConfig,
    *,
    rates: InnerRates,
    rule: SelectionRule,
    generator: torch.Generator,
) -> MetaLossOutput:
    """Adapt theta_0 (``init``: adapted name -> the model's tensor) to every signal and return the meta-loss."""
    step_losses: list[torch.Tensor] | None = [] if config.step_loss > 0 else None
    adapted = inner_loop(
        ctx,
        ctx.expand(init),
        steps=config.K,
        rates=rates,
        rule=rule,
        gamma=config.gamma,
        generator=generator,
        create_graph=not config.first_order,
        step_losses=step_losses,
    )
    # With the chunked outer loss, one graph-free full pass at theta_K serves both the bootstrap's first step
    # and the outer loss's surrogate.
    at_theta_k = ctx.full_grad(adapted, with_shared=True, low_precision=config.uses_bootstrap) if ctx.chunked else None
    boot_term, boot_rise = None, None
    if config.uses_bootstrap:
        relative = config.lam_mode == "relative"
        first = at_theta_k
        if first is None and relative:  # the bootstrap's first pass, made here to read g
            first = ctx.full_grad(adapted, low_precision=True)
        path_losses: list[torch.Tensor] = []
        boot_params = bootstrap(
            ctx,
            adapted,
            steps=config.L,
            lr=config.boot_lr,  # type: ignore[arg-type]
            first=first,
            target=config.boot_target,
            path_losses=path_losses,
        )
        if len(path_losses) >= 2:
            boot_rise = path_losses[-1] > BOOT_RISE_FACTOR * path_losses[0]
        distance = param_distance(adapted, boot_params)
        lam: float | torch.Tensor = config.lam
        if relative:
            assert first is not None
            lam = config.lam * global_norm(list(first.grads.values()))
        boot_term = lam * distance
    else:
        distance = torch.zeros(ctx.batch, dtype=ctx.values.dtype, device=ctx.values.device)
    # after the bootstrap, so that its transient memory never meets this graph
    fit_loss = ctx.full_mse(adapted, at_params=at_theta_k)
    fit_term = fit_loss
    if step_losses:  # MAML++'s multi-step loss, on the pruned contexts the steps already evaluated
        fit_term = fit_loss + config.step_loss * torch.stack(step_losses).mean(dim=0)
    loss = (fit_term + boot_term).mean() if boot_term is not None else fit_term.mean()
    return MetaLossOutput(
        loss=loss,
        fit_loss=fit_loss.detach(),
        boot_distance=distance.detach(),
        boot_rise=boot_rise,
        adapted={n: p.detach() for n, p in adapted.items()},
        fit_term=fit_term,
        boot_term=boot_term,
    )
