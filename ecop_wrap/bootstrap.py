"""The bootstrapped target (paper §2.3, Alg. 1 l.12-14) and graph-free full-context gradients.

From theta_K, detached, L more first-order SGD steps on the full context give theta_boot; no graph is
kept, and each full-context pass runs in chunks of ``chunk_size`` points when that is set.
"""

from __future__ import annotations

import torch

from .backends import Backend, Params
from .selection import point_chunks, squared_errors

__all__ = ["full_context_grad", "bootstrap_target", "param_distance"]


def full_context_grad(
    backend: Backend,
    params: Params,
    coords: torch.Tensor,
    values: torch.Tensor,
    chunk_size: int | None = None,
    *,
    return_errors: bool = False,
):  # type: ignore[no-untyped-def]
    """Per-signal full-context MSE and its gradient, with no graph left behind.

    Args:
        params: name -> ``[B, *shape]``; they are detached first.
        coords: ``[M, C]`` or ``[B, M, C]``; values: ``[B, M, D]``.
        chunk_size: points per forward/backward piece (None: all at once).
        return_errors: also return the ``[B, M]`` squared per-point errors (for ranking).

    Returns:
        ``(mse [B], grads name -> [B, *shape])`` (plus ``errors [B, M]`` when asked), all detached.
    """
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    num_points, channels = values.shape[1], values.shape[2]
    grads = {n: torch.zeros_like(p) for n, p in leaves.items()}
    chunk_errors = []
    with torch.enable_grad():
        for c in point_chunks(num_points, chunk_size):
            chunk_coords = coords[c] if coords.ndim == 2 else coords[:, c]
            errors = squared_errors(backend(leaves, chunk_coords), values[:, c])
            chunk_grads = torch.autograd.grad(
                errors.sum() / (num_points * channels), list(leaves.values()), allow_unused=True, materialize_grads=True
            )
            for n, g in zip(leaves, chunk_grads):
                grads[n] += g
            chunk_errors.append(errors.detach())
    errors = torch.cat(chunk_errors, dim=1)
    mse = errors.sum(dim=1) / (num_points * channels)
    return (mse, grads, errors) if return_errors else (mse, grads)


def bootstrap_target(
    backend: Backend,
    params: Params,
    coords: torch.Tensor,
    values: torch.Tensor,
    *,
    steps: int,
    lr: float,
    chunk_size: int | None = None,
    first_grads: Params | None = None,
) -> Params:
    """theta_boot: ``steps`` (L) first-order full-context SGD steps from ``params`` (theta_K), detached.

    Args:
        first_grads: the full-context gradient at ``params`` when the caller already has it (saves a pass).

    Returns:
        name -> ``[B, *shape]`` target parameters with no graph.
    """
    boot_params = {n: p.detach() for n, p in params.items()}
    for step in range(steps):
        if step == 0 and first_grads is not None:
            grads = first_grads
        else:
            grads = full_context_grad(backend, boot_params, coords, values, chunk_size)[1]
        boot_params = {n: p - lr * grads[n] for n, p in boot_params.items()}
    return boot_params


def param_distance(params: Params, target: Params) -> torch.Tensor:
    """mu: global L2 norm (not squared) of ``params - target`` over all parameters, per signal, ``[B]``."""
    diffs = [(params[n] - target[n]).flatten(1) for n in params]
    return torch.linalg.vector_norm(torch.cat(diffs, dim=1), dim=1)
