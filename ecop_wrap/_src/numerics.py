"""The numerics every part of the algorithm shares: per-point errors, per-signal MSE and norms, gathers, chunks.

All functions work on a batch of signals: ``B`` signals of ``M`` points with ``D`` value channels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..typing import Params

__all__ = [
    "ALL_POINTS",
    "AllPoints",
    "Points",
    "coords_chunk",
    "expand_params",
    "flat_cat",
    "gather_points",
    "global_norm",
    "num_selected",
    "per_signal",
    "point_chunks",
    "sgd_update",
    "squared_errors",
    "topk_indices",
    "weighted_topk",
]


class AllPoints:
    """The selection "every point of the context" (a pruned fraction that keeps everything): gathering it is
    the identity, so no index tensor is built. Use the one instance, :data:`ALL_POINTS`."""

    _instance: AllPoints | None = None

    def __new__(cls) -> AllPoints:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ALL_POINTS"


ALL_POINTS = AllPoints()
Points = torch.Tensor | AllPoints
"""A selection of context points: indices ``[B, k]`` per signal, or :data:`ALL_POINTS`."""


def num_selected(num_points: int, gamma: float) -> int:
    """Size of the pruned context: ``max(1, int(gamma * num_points))``."""
    return max(1, int(gamma * num_points))


def point_chunks(num_points: int, chunk_size: int | None) -> list[slice]:
    """Slices covering ``range(num_points)`` in pieces of at most ``chunk_size`` (one piece if None)."""
    step = num_points if chunk_size is None else chunk_size
    return [slice(start, min(start + step, num_points)) for start in range(0, num_points, step)]


def coords_chunk(coords: torch.Tensor, chunk: slice) -> torch.Tensor:
    """The points ``chunk`` of shared ``[M, C]`` or per-signal ``[B, M, C]`` coordinates."""
    return coords[chunk] if coords.ndim == 2 else coords[:, chunk]


def squared_errors(pred: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-point squared L2 error over channels, ``[B, M, D]`` x2 -> ``[B, M]``; shapes must match exactly."""
    if pred.shape != values.shape:
        raise ValueError(
            f"the model predicts {tuple(pred.shape)} ([B, M, D]) but values are {tuple(values.shape)}; "
            "the model's output size D must equal the values' last dimension"
        )
    return (pred - values).pow(2).sum(dim=-1)


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, k]`` of the ``k`` highest scores of each row of ``scores [B, M]``."""
    return scores.topk(k, dim=1, sorted=False).indices


def weighted_topk(scores: torch.Tensor, weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """Each signal's pruned context among its points of positive weight: indices ``[B, k]``, best first.

    Signal b keeps ``k_b = max(1, int(gamma * M_b))`` of its ``M_b`` points of positive weight; ``k`` is the
    largest ``k_b``. The ranks ``k_b .. k - 1`` of a signal that keeps fewer point at one of its points of weight
    0 (there is one whenever ``k_b < k``), so that they count for nothing in any weighted loss.
    """
    positive = weights > 0
    keep = [max(1, int(gamma * count)) for count in positive.sum(dim=1).tolist()]
    k = max(keep)
    idx = scores.masked_fill(~positive, float("-inf")).topk(k, dim=1, sorted=True).indices
    if min(keep) < k:
        ranks = torch.arange(k, device=idx.device)
        beyond = ranks.unsqueeze(0) >= torch.tensor(keep, device=idx.device).unsqueeze(1)
        a_zero = (~positive).to(torch.uint8).argmax(dim=1, keepdim=True)
        idx = torch.where(beyond, a_zero.expand_as(idx), idx)
    return idx


def gather_points(tensor: torch.Tensor, idx: Points) -> torch.Tensor:
    """Pick points ``idx [B, k]`` from ``[B, M, X]`` (or shared ``[M, X]``), giving ``[B, k, X]``; with
    :data:`ALL_POINTS`, ``tensor`` itself."""
    if isinstance(idx, AllPoints):
        return tensor
    if tensor.ndim == 2:
        return tensor[idx]
    if tensor.requires_grad:  # gather's backward (a scatter-add), as it always was
        return torch.gather(tensor, 1, idx.unsqueeze(-1).expand(-1, -1, tensor.shape[-1]))
    return tensor[_batch_rows(idx), idx]  # one op; gather needs the index unsqueezed and expanded first


_ROWS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _batch_rows(idx: torch.Tensor) -> torch.Tensor:
    """``arange(B)[:, None]`` on ``idx``'s device (row b's index), kept per batch size and device."""
    if torch.is_inference_mode_enabled() or torch.compiler.is_compiling():
        return torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
    key = (idx.shape[0], idx.device)
    rows = _ROWS.get(key)
    if rows is None:
        rows = _ROWS[key] = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
    return rows


def flat_cat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Tensors ``[B, ...]`` flattened per signal and concatenated: ``[B, sum of their sizes]``."""
    return torch.cat([t if t.ndim == 2 else t.flatten(1) for t in tensors], dim=1)  # flatten(1) of 2-d: itself


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-signal L2 norm over all tensors together: list of ``[B, ...]`` -> ``[B]``."""
    norms: torch.Tensor = torch.linalg.vector_norm(flat_cat(tensors), dim=1)
    return norms


def per_signal(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``vector [B]`` viewed as ``[B, 1, ..., 1]`` to broadcast against ``like [B, ...]``."""
    return vector.view(-1, *[1] * (like.ndim - 1))


def sgd_update(params: Params, grads: Params, rates: dict[str, float | torch.Tensor] | float) -> Params:
    """One SGD step ``p - rate * g`` for every parameter: the library's only parameter update.

    Where no autograd graph is recorded (the bootstrap, test-time fitting), two ``torch._foreach_*`` ops over
    all parameters (a multiply, a subtraction) instead of two per parameter: each computes what ``p - rate * g``
    computes, tensor by tensor (same operands in the same order, so the same numbers and layouts). With a graph
    (the inner loop), or rates of mixed kinds, the per-parameter ops.

    Args:
        params: name -> ``[B, *shape]``.
        grads: name -> ``[B, *shape]`` (the same names).
        rates: one step size for all, or per name a float, a scalar tensor or a tensor broadcasting against
            the parameter (learned rates).
    """
    names = list(params)
    rate_of = rates if isinstance(rates, dict) else dict.fromkeys(names, rates)
    ps, gs, values = [params[n] for n in names], [grads[n] for n in names], [rate_of[n] for n in names]
    if names and not _records_graph(ps, gs, values):
        floats = [r for r in values if type(r) is float]
        tensors = [r for r in values if isinstance(r, torch.Tensor)]
        steps: list[torch.Tensor] | None = None
        if len(floats) == len(names):
            # ``rate * g`` with a Python float is ``g.mul(rate)``
            steps = list(torch._foreach_mul(gs, floats[0]) if len(set(floats)) == 1 else torch._foreach_mul(gs, floats))
        elif len(tensors) == len(names):
            steps = list(torch._foreach_mul(tensors, gs))  # ``rate.mul(g)``: the rate first, as the layout follows it
        if steps is not None:
            return dict(zip(names, torch._foreach_sub(ps, steps), strict=True))
    return {n: params[n] - rate_of[n] * grads[n] for n in names}


def _records_graph(*groups: Sequence[float | torch.Tensor]) -> bool:
    """Whether ops on these tensors record an autograd graph. The per-parameter ops then stay: the autograd
    formulas of ``torch._foreach_mul``/``_foreach_sub`` save their inputs for backward, which ``p - rate * g``
    with a float rate never does (the inner loop's graph would hold one more parameter-sized tensor per step)."""
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(t, torch.Tensor) and t.requires_grad for group in groups for t in group)


def expand_params(named: dict[str, torch.Tensor], batch: int) -> Params:
    """Shared parameters as per-signal ``[B, *shape]`` views, still attached to ``named``'s graph."""
    return {n: p.unsqueeze(0).expand(batch, *p.shape) for n, p in named.items()}
