"""Context pruning: which points of the full context each inner step uses (paper Eq. 2-3).

Scores are computed from the current per-signal parameters without building a graph, over the full context
in chunks of ``chunk_size`` points when that is set. The pruned set keeps the
``num_selected(M, gamma) = max(1, int(gamma * M))`` highest-scoring points of every signal.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .backends import Backend, Params

__all__ = [
    "SELECTIONS",
    "Selector",
    "check_gradncp_layer",
    "error_scores",
    "find_last_linear",
    "gather_points",
    "gradncp_scores",
    "num_selected",
    "point_chunks",
    "squared_errors",
    "topk_indices",
]

SELECTIONS = ("error", "random", "gradncp")
SelectionName = Literal["error", "random", "gradncp"]


def num_selected(num_points: int, gamma: float) -> int:
    """Size of the pruned context: ``max(1, int(gamma * num_points))``."""
    return max(1, int(gamma * num_points))


def point_chunks(num_points: int, chunk_size: int | None) -> list[slice]:
    """Slices covering ``range(num_points)`` in pieces of at most ``chunk_size`` (one piece if None)."""
    step = num_points if chunk_size is None else chunk_size
    return [slice(start, min(start + step, num_points)) for start in range(0, num_points, step)]


def squared_errors(pred: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-point squared L2 error over channels, ``[B, M, D]`` x2 -> ``[B, M]``; shapes must match exactly."""
    if pred.shape != values.shape:
        raise ValueError(
            f"the model predicts {tuple(pred.shape)} ([B, M, D]) but values are {tuple(values.shape)}; "
            "the model's output size D must equal the values' last dimension"
        )
    return (pred - values).pow(2).sum(dim=-1)


def _coords_slice(coords: torch.Tensor, chunk: slice) -> torch.Tensor:
    return coords[chunk] if coords.ndim == 2 else coords[:, chunk]


def _predict(
    backend: Backend,
    params: Params,
    coords: torch.Tensor,
    batch: int,
    identical: bool,
    capture: nn.Module | None = None,
):  # type: ignore[no-untyped-def]
    """Forward of a chunk; when every signal has the same parameters and coordinates, one forward serves all."""
    if identical and coords.ndim == 2:
        params = {n: p[:1] for n, p in params.items()}
    out = backend(params, coords, capture)
    if capture is None:
        return out.expand(batch, *out.shape[1:])
    pred, hidden = out
    return pred.expand(batch, *pred.shape[1:]), hidden.expand(batch, *hidden.shape[1:])


@torch.no_grad()
def error_scores(
    backend: Backend,
    params: Params,
    coords: torch.Tensor,
    values: torch.Tensor,
    chunk_size: int | None = None,
    identical: bool = False,
) -> torch.Tensor:
    """Squared per-point error ``||f(x) - y||^2`` (same order as the paper's R_k), ``[B, M]``.

    ``identical`` declares that all signals share their parameters (the first inner step), so with a shared
    grid a single forward is enough.
    """
    batch = values.shape[0]
    return torch.cat(
        [
            squared_errors(_predict(backend, params, _coords_slice(coords, c), batch, identical), values[:, c])
            for c in point_chunks(values.shape[1], chunk_size)
        ],
        dim=1,
    )


@torch.no_grad()
def gradncp_scores(
    backend: Backend,
    params: Params,
    coords: torch.Tensor,
    values: torch.Tensor,
    layer: nn.Module,
    chunk_size: int | None = None,
    identical: bool = False,
) -> torch.Tensor:
    """Squared per-point gradient norm w.r.t. the output linear layer, ``||e||^2 (||h||^2 + 1)``, ``[B, M]``.

    ``e`` is the point's error and ``h`` the input of ``layer``: the gradient of ``||e||^2 / 2`` w.r.t.
    that layer's weight is ``e h^T`` and w.r.t. its bias ``e``. A frozen weight drops the ``||h||^2`` term and
    a missing or frozen bias the ``1``. This is the gradient only when the layer's output is the model's
    prediction (up to parameter-free additive terms such as SIREN's output offset).
    """
    weight_term = 1.0 if layer.weight.requires_grad else 0.0  # type: ignore[union-attr]
    bias = getattr(layer, "bias", None)
    bias_term = 1.0 if bias is not None and bias.requires_grad else 0.0
    scores = []
    batch = values.shape[0]
    for c in point_chunks(values.shape[1], chunk_size):
        pred, hidden = _predict(backend, params, _coords_slice(coords, c), batch, identical, capture=layer)
        scores.append(squared_errors(pred, values[:, c]) * (weight_term * hidden.pow(2).sum(-1) + bias_term))
    return torch.cat(scores, dim=1)


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, k]`` of the ``k`` highest scores of each row of ``scores [B, M]``."""
    return scores.topk(k, dim=1, sorted=False).indices


def gather_points(tensor: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick points ``idx [B, k]`` from ``[B, M, X]`` (or shared ``[M, X]``), giving ``[B, k, X]``."""
    if tensor.ndim == 2:
        return tensor[idx]
    return torch.gather(tensor, 1, idx.unsqueeze(-1).expand(-1, -1, tensor.shape[-1]))


def check_gradncp_layer(model: nn.Module | None, layer: nn.Module) -> nn.Linear:
    """``layer`` must be an ``nn.Linear`` of ``model`` with a trainable weight or bias."""
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"gradncp_layer must be an nn.Linear (the model's output layer), got {type(layer).__name__}")
    if model is not None and not any(m is layer for m in model.modules()):
        raise ValueError("gradncp_layer must be a submodule of the model (e.g. model.output), got a foreign layer")
    if not any(p.requires_grad for p in layer.parameters()):
        raise ValueError("gradncp_layer has no trainable parameters; GradNCP scores need its gradient")
    return layer


def find_last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` in ``model.modules()`` order (GradNCP's scoring layer)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "selection='gradncp' ranks points by the gradient w.r.t. the model's last nn.Linear, but the model "
            "has none; pass gradncp_layer=<an nn.Linear of the model> or use selection='error'"
        )
    return linears[-1]


class Selector:
    """Chooses the pruned context of every signal for one step.

    Args:
        kind: ``"error"`` (top-k by ``||f(x) - y||``, the paper), ``"random"`` (uniform subset of the same
            size) or ``"gradncp"`` (top-k by last-layer gradient norm, the authors' released code).
        gamma: fraction of points kept, in (0, 1].
        layer: scoring layer for ``"gradncp"`` (default: the model's last ``nn.Linear``).
        model: needed to find ``layer`` for ``"gradncp"``.
    """

    def __init__(
        self, kind: str, gamma: float, *, model: nn.Module | None = None, layer: nn.Module | None = None
    ) -> None:
        if kind not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {kind!r}")
        self.kind = kind
        self.gamma = gamma
        self.layer = None
        if kind == "gradncp":
            if layer is None and model is None:
                raise ValueError("selection='gradncp' needs the model or an explicit layer")
            chosen = layer if layer is not None else find_last_linear(model)  # type: ignore[arg-type]
            self.layer = check_gradncp_layer(model, chosen)

    def keeps_all(self, num_points: int) -> bool:
        """Whether the pruned set is the whole context (then no ranking is needed)."""
        return num_selected(num_points, self.gamma) >= num_points

    def scores(
        self,
        backend: Backend,
        params: Params,
        coords: torch.Tensor,
        values: torch.Tensor,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        identical: bool = False,
    ) -> torch.Tensor:
        """Ranking scores ``[B, M]`` (higher is kept first), computed without a graph.

        ``identical``: all signals currently share their parameters (lets a shared grid use one forward).
        """
        if self.kind == "random":
            return torch.rand(values.shape[:2], generator=generator, device=values.device)
        if self.kind == "gradncp":
            return gradncp_scores(backend, params, coords, values, self.layer, chunk_size, identical)  # type: ignore[arg-type]
        return error_scores(backend, params, coords, values, chunk_size, identical)

    def select(
        self,
        backend: Backend,
        params: Params,
        coords: torch.Tensor,
        values: torch.Tensor,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        identical: bool = False,
    ) -> torch.Tensor | None:
        """Indices ``[B, k]`` of the pruned context, or ``None`` when it is the full context."""
        num_points = values.shape[1]
        if self.keeps_all(num_points):
            return None
        scores = self.scores(backend, params, coords, values, generator, chunk_size, identical)
        return topk_indices(scores, num_selected(num_points, self.gamma))
