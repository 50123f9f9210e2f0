"""The inner loop: K pruned SGD steps per signal from the shared initialization (paper Eq. 4, Alg. 1 l.6-10).

Each step ranks the full context without a graph, gathers the pruned points, runs one forward on that
subset only, and takes ``theta <- theta - lr * grad MSE(theta; pruned)``. With ``create_graph`` the step is
differentiable (second-order MAML); without it the gradient is a constant (first-order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from .backends import Backend, Params
from .selection import Selector, gather_points, squared_errors

__all__ = ["pruned_loss", "sgd_step", "adapt", "expand_params"]


def expand_params(named: dict[str, torch.Tensor], batch: int) -> Params:
    """The shared initialization as per-signal parameters ``[B, *shape]`` (views, still attached to ``named``)."""
    return {n: p.unsqueeze(0).expand(batch, *p.shape) for n, p in named.items()}


def pruned_loss(
    backend: Backend, params: Params, coords: torch.Tensor, values: torch.Tensor, pruned_idx: torch.Tensor | None
) -> torch.Tensor:
    """Sum over signals of each signal's MSE on its pruned context (``None``: the full context).

    Summing per-signal means makes ``grad`` w.r.t. the batched ``params`` the per-signal gradients.
    """
    if pruned_idx is not None:
        coords, values = gather_points(coords, pruned_idx), gather_points(values, pruned_idx)
    errors = squared_errors(backend(params, coords), values)
    return errors.mean(dim=1).sum() / values.shape[-1]


def sgd_step(params: Params, loss: torch.Tensor, lr: float, create_graph: bool) -> Params:
    """``theta - lr * grad(loss, theta)``; unused parameters get a zero gradient."""
    grads = torch.autograd.grad(
        loss, list(params.values()), create_graph=create_graph, allow_unused=True, materialize_grads=True
    )
    return {n: p - lr * g for (n, p), g in zip(params.items(), grads)}


def _checkpointed_step(
    backend: Backend, names: list[str], lr: float
) -> Callable[..., tuple[torch.Tensor, ...]]:
    def step(coords: torch.Tensor, values: torch.Tensor, pruned_idx: torch.Tensor | None, *flat: torch.Tensor):
        params = dict(zip(names, flat))
        loss = pruned_loss(backend, params, coords, values, pruned_idx)
        return tuple(sgd_step(params, loss, lr, create_graph=True).values())

    return step


def adapt(
    backend: Backend,
    params: Params,
    coords: torch.Tensor,
    values: torch.Tensor,
    *,
    steps: int,
    lr: float,
    selector: Selector,
    create_graph: bool = True,
    checkpoint: bool = False,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    on_select: Callable[[int, torch.Tensor | None], None] | None = None,
    identical_init: bool = False,
) -> Params:
    """Run ``steps`` pruned inner steps.

    Args:
        backend: evaluates the model with batched parameters.
        params: name -> ``[B, *shape]`` initial per-signal parameters (attached to the graph of theta_0).
        coords: ``[M, C]`` shared or ``[B, M, C]`` coordinates; ``values``: ``[B, M, D]``.
        steps: K. lr: alpha.
        selector: chooses each step's pruned context; re-ranked from the current parameters every step.
        create_graph: keep the second-order graph (MAML); False gives first-order steps.
        checkpoint: recompute each step's graph during the backward pass instead of storing it.
        chunk_size: points per chunk in the graph-free ranking pass.
        generator: random source for ``selection="random"``.
        on_select: called with ``(step, pruned_idx)`` after each ranking (for inspection and plots).
        identical_init: every signal starts from the same parameters (e.g. :func:`expand_params`), so the
            first ranking on a shared grid needs a single forward.

    Returns:
        theta_K as name -> ``[B, *shape]``.
    """
    names = list(params)
    step_fn = _checkpointed_step(backend, names, lr) if checkpoint and create_graph else None
    for k in range(steps):
        pruned_idx = selector.select(
            backend, params, coords, values, generator, chunk_size, identical=identical_init and k == 0
        )
        if on_select is not None:
            on_select(k, pruned_idx)
        if step_fn is not None:
            flat = activation_checkpoint(step_fn, coords, values, pruned_idx, *params.values(), use_reentrant=False)
            params = dict(zip(names, flat))
        else:
            loss = pruned_loss(backend, params, coords, values, pruned_idx)
            params = sgd_step(params, loss, lr, create_graph)
    return params
