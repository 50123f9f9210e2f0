"""Per-point losses: the objective of every pass (ranking, inner steps, bootstrap, outer loss, test time).

A loss is ``fn(pred [..., M, D], target [..., M, D]) -> [..., M]``, a non-negative loss per point (the built-ins
average over the D channels). A signal's loss is ``sum_j w_j l_j / sum_j w_j`` over its points (weights 1 when a
batch has none). Register your own with :func:`register_loss` and pass its name as ``loss=``.

Inside the library a loss is used through :class:`PointLoss`, whose :meth:`~PointLoss.summed` is ``D * l_j``:
for ``"mse"`` that is the squared error summed over channels, computed as before this module existed, so every
number of the default objective is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .numerics import squared_errors
from .validation import check_positive, register_in

__all__ = ["LOSSES", "LossFn", "PointLoss", "clamped_l1", "huber", "l1", "make_loss", "mse", "register_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over channels: ``[..., M, D] -> [..., M]``."""
    return (pred - target).pow(2).mean(dim=-1)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute error averaged over channels: ``[..., M, D] -> [..., M]``."""
    return (pred - target).abs().mean(dim=-1)


def huber(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Huber loss averaged over channels (``torch.nn.functional.huber_loss``'s convention): ``0.5 e^2`` where
    ``|e| <= delta``, else ``delta (|e| - 0.5 delta)``; ``delta`` is ``ECoPConfig.huber_delta``."""
    return torch.nn.functional.huber_loss(pred, target, reduction="none", delta=delta).mean(dim=-1)


def clamped_l1(delta: float, *, one_sided: bool = False) -> LossFn:
    """DeepSDF's clamped L1 for signed distances, a loss to register: ``[..., M, D] -> [..., M]``.

    ``one_sided=False``: ``|clamp(f, -d, d) - clamp(y, -d, d)|`` averaged over channels, as DeepSDF. Where the
    prediction is beyond the clamp the loss is flat, so a field predicting ``+d`` everywhere (every point
    "outside") gets no gradient from the points inside the shape: meta-training can stall there for good.

    ``one_sided=True``: the distance from ``f`` to the values the clamped loss accepts: ``|f - y|`` where
    ``|y| < d``, ``max(0, d - f)`` where ``y >= d`` and ``max(0, f + d)`` where ``y <= -d``. Equal to the clamped
    loss (value and gradient) wherever ``|f| <= d``; beyond the clamp it keeps growing instead of staying flat, so
    no prediction sits on a plateau.

    Args:
        delta: the clamp ``d > 0`` (in the signal's units).
        one_sided: see above.

    Example::

        ecop_wrap.register_loss("sdf", clamped_l1(0.1, one_sided=True))
        learner = ContextPruningMetaLearner(model, loss="sdf")
    """
    delta = check_positive("delta", delta)

    def flat(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred.clamp(-delta, delta) - target.clamp(-delta, delta)).abs().mean(dim=-1)

    def hinge(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # accepted values: [min(y, d), inf) unless y <= -d, and (-inf, max(y, -d)] unless y >= d
        below = (target.clamp(max=delta) - pred).clamp_min(0) * (target > -delta)
        above = (pred - target.clamp(min=-delta)).clamp_min(0) * (target < delta)
        return (below + above).mean(dim=-1)

    return hinge if one_sided else flat


LOSSES: dict[str, LossFn] = {"mse": mse, "l1": l1, "huber": huber}
"""Registered per-point losses: name -> ``fn(pred, target) -> [..., M]``."""


def register_loss(name: str, fn: LossFn, *, overwrite: bool = False) -> None:
    """Make ``loss=name`` available everywhere (learner, adapter, ``ECoPConfig``, checkpoints).

    Args:
        name: the name users pass as ``loss=``; checkpoints record it.
        fn: ``fn(pred [..., M, D], target [..., M, D]) -> [..., M]``, a non-negative per-point loss,
            differentiable in ``pred`` (twice, for second-order meta-learning).
        overwrite: replace an existing loss of that name (else that is a ``ValueError``).
    """
    register_in(LOSSES, "loss", name, fn, overwrite)


class PointLoss:
    """A registered loss as the evaluator uses it.

    Args:
        name: a key of :data:`LOSSES`.
        huber_delta: the ``delta`` of ``"huber"``.
    """

    def __init__(self, name: str, huber_delta: float = 1.0) -> None:
        if name not in LOSSES:
            raise ValueError(
                f"loss must be one of {tuple(LOSSES)} (or a name registered with register_loss), got {name!r}"
            )
        self.name = name
        self.huber_delta = huber_delta
        self._checked = name in ("mse", "l1", "huber")

    @property
    def is_mse(self) -> bool:
        return self.name == "mse" and LOSSES["mse"] is mse

    def summed(self, pred: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``D * l_j``, ``[B, m, D]`` x2 -> ``[B, m]`` (for MSE: the squared error summed over channels)."""
        if self.is_mse:
            return squared_errors(pred, values)
        if pred.shape != values.shape:
            squared_errors(pred, values)  # raises the shape message
        channels = values.shape[-1]
        if self.name == "l1" and LOSSES["l1"] is l1:
            return (pred - values).abs().sum(dim=-1)
        if self.name == "huber" and LOSSES["huber"] is huber:
            delta = self.huber_delta
            return torch.nn.functional.huber_loss(pred, values, reduction="none", delta=delta).sum(dim=-1)
        return self._user(pred, values) * channels

    def _user(self, pred: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        out = LOSSES[self.name](pred, values)
        if not isinstance(out, torch.Tensor) or out.shape != pred.shape[:-1]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"loss {self.name!r} must return one value per point, shape {tuple(pred.shape[:-1])} for pred "
                f"{tuple(pred.shape)}; got {got}"
            )
        if not self._checked:
            self._checked = True
            if bool((out.detach() < 0).any()):
                raise ValueError(f"loss {self.name!r} returned negative values; a per-point loss must be >= 0")
        return out

    def pred_grad(self, pred: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``d(D * l_j) / d pred_j``, ``[B, m, D]``, without a graph (GradNCP's scores)."""
        if self.is_mse:
            return 2 * (pred - values)
        with torch.enable_grad():
            leaf = pred.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.summed(leaf, values).sum(), leaf)
        return grad


def make_loss(name: str, huber_delta: float = 1.0) -> PointLoss:
    """The registered loss ``name`` (with ``huber_delta`` for ``"huber"``)."""
    return PointLoss(name, huber_delta)
