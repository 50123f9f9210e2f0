"""The meta-objective (paper Eq. 5 and the total loss of §2.3) for one batch of signals.

``L_total = mean_b [ MSE(theta_K; C_full) + lambda * mu(theta_K, theta_boot) ]``.

Two equivalent ways to build it:

* direct (``chunk_size=None``): a forward of theta_K on the full context with a graph, then the loss;
* chunked: the gradient of the loss w.r.t. theta_K is accumulated chunk by chunk with no graph back to
  theta_0, and the returned loss is a surrogate ``value + <theta_K, g> - stopgrad(<theta_K, g>)`` whose value
  is the loss and whose backward pushes ``g`` through the inner-loop graph. No full-context graph is held,
  and the same full-context gradient doubles as the bootstrap's first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends import Backend, Params
from .bootstrap import bootstrap_target, full_context_grad, param_distance
from .inner_loop import adapt, expand_params
from .selection import Selector, num_selected, squared_errors

__all__ = ["InnerConfig", "MetaLossOutput", "meta_objective"]


@dataclass(frozen=True)
class InnerConfig:
    """Everything that shapes one meta-loss evaluation (see ``ContextPruningMetaLearner`` for meanings)."""

    K: int
    L: int
    lam: float
    inner_lr: float
    boot_lr: float
    first_order: bool
    chunk_size: int | None
    checkpoint: bool

    @property
    def uses_bootstrap(self) -> bool:
        """Whether the meta-loss has the bootstrap term (``L > 0`` and ``lam != 0``); else it is plain MSE."""
        return self.L > 0 and self.lam != 0


@dataclass
class MetaLossOutput:
    """The meta-loss and per-signal diagnostics (all diagnostics detached).

    Attributes:
        loss: scalar meta-loss, differentiable w.r.t. theta_0.
        mse: ``[B]`` full-context MSE at theta_K.
        boot_distance: ``[B]`` mu(theta_K, theta_boot) (zeros when the bootstrap is off).
        adapted: name -> ``[B, *shape]`` theta_K, detached.
    """

    loss: torch.Tensor
    mse: torch.Tensor
    boot_distance: torch.Tensor
    adapted: Params


def meta_objective(
    backend: Backend,
    init: dict[str, torch.Tensor],
    coords: torch.Tensor,
    values: torch.Tensor,
    config: InnerConfig,
    selector: Selector,
    generator: torch.Generator | None = None,
) -> MetaLossOutput:
    """Adapt theta_0 to every signal of the batch and return the ECoP meta-loss.

    Args:
        backend: evaluates the model with batched parameters.
        init: trainable parameter name -> tensor, theta_0 (the model's own parameters).
        coords: ``[M, C]`` shared or ``[B, M, C]``; values: ``[B, M, D]``.
        config: K, L, lambda, learning rates and memory options.
        selector: the context pruning rule.
        generator: random source for random selection.
    """
    batch = values.shape[0]
    # Graph-free passes never need more points at once than one pruned step holds in its graph, so without
    # an explicit chunk_size they run in pieces of the pruned-set size: their transient memory then stays
    # within what the inner loop already uses (the paper's equal-memory budget).
    free_chunk = config.chunk_size or num_selected(values.shape[1], selector.gamma)
    adapted = adapt(
        backend,
        expand_params(init, batch),
        coords,
        values,
        steps=config.K,
        lr=config.inner_lr,
        selector=selector,
        create_graph=not config.first_order,
        checkpoint=config.checkpoint,
        chunk_size=free_chunk,
        generator=generator,
        identical_init=True,
    )
    chunked = config.chunk_size is not None
    mse = full_grads = None
    if chunked:  # one graph-free full-context pass serves the outer gradient and the bootstrap's first step
        mse, full_grads = full_context_grad(backend, adapted, coords, values, config.chunk_size)
    if config.uses_bootstrap:
        target = bootstrap_target(
            backend, adapted, coords, values, steps=config.L, lr=config.boot_lr,
            chunk_size=free_chunk, first_grads=full_grads,
        )
        distance = param_distance(adapted, target)
    else:
        target, distance = None, torch.zeros(batch, dtype=values.dtype, device=values.device)

    if chunked:
        loss = _surrogate_loss(adapted, mse, full_grads, target, distance, config.lam)  # type: ignore[arg-type]
    else:  # built after the bootstrap so that its transient memory never coexists with this graph
        mse = squared_errors(backend(adapted, coords), values).mean(dim=1) / values.shape[-1]
        loss = (mse + config.lam * distance).mean() if target is not None else mse.mean()
    return MetaLossOutput(
        loss=loss,
        mse=mse.detach(),  # type: ignore[union-attr]
        boot_distance=distance.detach(),
        adapted={n: p.detach() for n, p in adapted.items()},
    )


def _surrogate_loss(
    adapted: Params,
    mse: torch.Tensor,
    mse_grads: Params,
    target: Params | None,
    distance: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """Scalar equal to the meta-loss whose gradient w.r.t. theta_K is the meta-loss's."""
    batch = mse.shape[0]
    value = ((mse + lam * distance).mean() if target is not None else mse.mean()).detach()
    inner = value.new_zeros(())
    distance = distance.detach()
    safe_distance = torch.where(distance > 0, distance, torch.ones_like(distance))
    for n, theta in adapted.items():
        grad = mse_grads[n]
        if target is not None:
            unit = (theta.detach() - target[n]) / safe_distance.view(-1, *[1] * (theta.ndim - 1))
            grad = grad + lam * unit
        inner = inner + (theta * (grad / batch)).sum()
    return value + inner - inner.detach()
