"""Meta-learning baselines that ``ContextPruningMetaLearner`` does not cover: Reptile (Nichol et al., 2018).

Reptile adapts theta_0 to each signal with ``K`` plain first-order SGD steps on the full context and moves
theta_0 towards the adapted weights: ``theta_0 <- theta_0 + eps * mean_b(theta_K^b - theta_0)``. Here the
step is taken by an outer optimizer fed the pseudo-gradient ``theta_0 - mean_b theta_K^b``; with
``torch.optim.SGD(lr=eps)`` this is exactly the rule above, and with Adam (the default, as for every other
method in the benchmark) it is its Adam-preconditioned version.
"""

from __future__ import annotations

import torch
from torch import nn

from ecop_wrap import SavedTensorMeter, mse_to_psnr
from ecop_wrap.extend import ALL_POINTS, ContextEvaluator, make_backend, make_loss

__all__ = ["Reptile"]


class Reptile:
    """Reptile meta-learner over any INR ``nn.Module``.

    Args:
        model: the INR; its trainable parameters are theta_0, updated in place.
        K: inner SGD steps per signal (>= 1).
        inner_lr: inner step size.
        optimizer: outer optimizer over the model's trainable parameters (None: ``Adam(lr=outer_lr)``).
        outer_lr: learning rate of the default Adam.
        loss, huber_delta: the per-point loss of the inner steps (a name of ``ecop_wrap.LOSSES``; see
            ``ECoPConfig.loss``).
    """

    def __init__(
        self,
        model: nn.Module,
        K: int = 16,
        *,
        inner_lr: float = 1e-2,
        optimizer: torch.optim.Optimizer | None = None,
        outer_lr: float = 1e-4,
        loss: str = "mse",
        huber_delta: float = 1.0,
    ) -> None:
        if not isinstance(K, int) or K < 1:
            raise ValueError(f"K must be an int >= 1, got {K!r}")
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr!r}")
        self.model = model
        self.K = K
        self.inner_lr = float(inner_lr)
        self.loss_fn = make_loss(loss, huber_delta)
        self.backend = make_backend("torch.func", model)
        self._named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = optimizer if optimizer is not None else torch.optim.Adam(self._named.values(), lr=outer_lr)

    def adapt(
        self,
        coords: torch.Tensor,
        values: torch.Tensor,
        meter: SavedTensorMeter | None = None,
        weights: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], int]:
        """K first-order full-context SGD steps from theta_0 for a batch.

        Args:
            coords: ``[M, C]`` shared grid (or ``[B, M, C]``); values: ``[B, M, D]``.
            meter: when given, the bytes autograd holds at the largest point of a step are measured.
            weights: ``[B, M]`` point weights (0: the point is never used); None: all 1.

        Returns:
            theta_K as name -> ``[B, *shape]`` (detached), and the peak held bytes (0 without a meter).
        """
        ctx = ContextEvaluator(self.backend, coords, values, weights, loss=self.loss_fn)
        leaves = {n: p.detach().requires_grad_(True) for n, p in self._named.items()}
        params = ctx.expand(leaves)
        peak = 0
        with torch.enable_grad():
            for _ in range(self.K):
                loss = ctx.loss(params, ALL_POINTS)
                if meter is not None:
                    peak = max(peak, meter.live_bytes())
                grads = torch.autograd.grad(loss, list(params.values()))
                stepped = [p - self.inner_lr * g for p, g in zip(params.values(), grads, strict=True)]
                params = {n: p.detach().requires_grad_(True) for n, p in zip(params, stepped, strict=True)}
        return {n: p.detach() for n, p in params.items()}, peak

    def meta_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """One Reptile outer update on ``(coords, values[, weights])``; returns the batch-mean full-context
        ``mse`` and ``psnr`` at theta_K (over the points of positive weight)."""
        coords, values = batch[0], batch[1]
        weights = batch[2] if len(batch) > 2 else None
        adapted, _ = self.adapt(coords, values, weights=weights)
        self.optimizer.zero_grad(set_to_none=True)
        for name, p in self._named.items():
            p.grad = p.detach() - adapted[name].mean(dim=0)
        self.optimizer.step()
        with torch.no_grad():
            squared = (self.backend(adapted, coords) - values).pow(2)
            if weights is None:
                mse = squared.mean(dim=(1, 2)).mean()
            else:
                w = weights.to(squared.dtype)
                per_point = torch.where(w > 0, squared.mean(dim=-1), torch.zeros_like(w))  # hidden values unused
                mse = ((per_point * w).sum(dim=1) / w.sum(dim=1)).mean()
        return {"mse": float(mse), "psnr": float(mse_to_psnr(float(mse)))}

    def held_bytes(self, batch: tuple[torch.Tensor, ...]) -> int:
        """Peak bytes autograd holds during one outer step (one full-context step's graph)."""
        with SavedTensorMeter() as meter:
            _, peak = self.adapt(batch[0], batch[1], meter, batch[2] if len(batch) > 2 else None)
        return peak
