"""Weighted passes with a graph that hold only the points of positive weight.

A padded ragged batch (:func:`~ecop_wrap.data.collate_signals`) or a masked one has points of weight 0; a
pruned set of a signal that keeps fewer points than another also points at some (see
:func:`~.numerics.weighted_topk`). They count for nothing, and they must cost no graph either: every signal is
evaluated on its own points of positive weight only, batched when every signal has as many, else one signal at
a time, so that the bytes a ragged batch holds for the backward are those of its signals run one by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..typing import Params
from .numerics import AllPoints, Points, gather_points

if TYPE_CHECKING:
    from .evaluator import ContextEvaluator

__all__ = ["weighted_graph_loss"]


def weighted_graph_loss(ctx: ContextEvaluator, params: Params, points: Points, *, graph_free: bool) -> torch.Tensor:
    """``[B]`` each signal's weighted loss on ``points`` (``[B, k]`` or ``ALL_POINTS``), with a graph to
    ``params`` that holds only the points of positive weight."""
    assert ctx.weights is not None
    idx = _positive_points(ctx.weights, points)
    if isinstance(idx, torch.Tensor):  # the same number of points in every signal: one batched pass
        return _loss(ctx, params, ctx.coords, ctx.values, ctx.weights, idx, graph_free)
    losses = []
    for b, signal_idx in enumerate(idx):
        signal_params = {n: p[b : b + 1] for n, p in params.items()}
        coords = ctx.coords if ctx.coords.ndim == 2 else ctx.coords[b : b + 1]
        values, weights = ctx.values[b : b + 1], ctx.weights[b : b + 1]
        losses.append(_loss(ctx, signal_params, coords, values, weights, signal_idx.unsqueeze(0), graph_free))
    return torch.cat(losses)


def _positive_points(weights: torch.Tensor, points: Points) -> torch.Tensor | list[torch.Tensor]:
    """The points of positive weight among ``points``: ``[B, k']`` if every signal has ``k'`` of them, else one
    index tensor per signal."""
    idx = (
        torch.arange(weights.shape[1], device=weights.device).expand_as(weights)
        if isinstance(points, AllPoints)
        else points
    )
    kept = torch.gather(weights, 1, idx) > 0
    counts = kept.sum(dim=1).tolist()
    if all(c == idx.shape[1] for c in counts):
        return idx
    if len(set(counts)) == 1:
        return idx[kept].view(idx.shape[0], counts[0])
    return [row[keep] for row, keep in zip(idx, kept, strict=True)]


def _loss(
    ctx: ContextEvaluator,
    params: Params,
    coords: torch.Tensor,
    values: torch.Tensor,
    weights: torch.Tensor,
    idx: torch.Tensor,
    graph_free: bool,
) -> torch.Tensor:
    coords, values, weights = gather_points(coords, idx), gather_points(values, idx), torch.gather(weights, 1, idx)
    pred = ctx.backend.graph_free(params, coords)[0] if graph_free else ctx.backend(params, coords)
    errors = ctx.loss_fn.summed(pred, values)
    return (errors * weights).sum(dim=1) / (weights.sum(dim=1) * ctx.channels)
