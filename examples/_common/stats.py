"""Per-signal scores over chosen points and the paired comparison of two methods on the same signals."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["best_rate", "cycle_indices", "paired_gap", "summary_mean", "summary_std", "weighted_psnr"]


def weighted_psnr(
    pred: torch.Tensor, truth: torch.Tensor, weights: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """PSNR in dB of each signal over the points of positive weight only.

    Args:
        pred, truth: ``[N, M, D]``.
        weights: ``[N, M]`` (a bool mask or weights ``>= 0``); the MSE is ``sum_j w_j |e_j|^2 / (D sum_j w_j)``,
            so 0/1 weights give the plain MSE over the chosen points (e.g. the hidden pixels).
        data_range: the values' peak-to-peak range.

    Returns:
        ``[N]`` PSNR (``inf`` where the error is 0, ``nan`` for a signal without a point of positive weight).
    """
    weights = weights.to(pred.dtype)
    squared = (pred - truth).square().mean(dim=-1)  # [N, M]
    mse = (weights * squared).sum(dim=-1) / weights.sum(dim=-1)
    return 10.0 * torch.log10(data_range**2 / mse)


def paired_gap(first: torch.Tensor, second: torch.Tensor) -> dict[str, Any]:
    """The mean per-signal difference ``first - second`` (e.g. two methods' PSNR on the same signals).

    Returns:
        ``{"mean", "standard_error", "better_on", "signals"}``: the mean difference, its standard error
        ``std / sqrt(N)`` (sample std; 0 for one signal), on how many signals ``first`` is higher, and ``N``.
    """
    diff = (first.double() - second.double()).flatten()
    count = int(diff.numel())
    se = float(diff.std() / math.sqrt(count)) if count > 1 else 0.0
    return {
        "mean": round(float(diff.mean()), 3),
        "standard_error": round(se, 3),
        "better_on": int((diff > 0).sum()),
        "signals": count,
    }


def cycle_indices(count: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of signal indices: a new random order every epoch (one seeded generator), full batches
    only; the same ``seed`` gives every run the same batches."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, count)
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - count % batch_size, batch_size):
            yield order[start : start + batch_size]


def summary_mean(values: torch.Tensor) -> float:
    """The mean of per-signal scores, rounded for a summary."""
    return round(float(values.double().mean()), 3)


def summary_std(values: torch.Tensor) -> float:
    """The spread (sample std) of per-signal scores over the signals, rounded; 0 for one signal."""
    return round(float(values.double().std()), 3) if values.numel() > 1 else 0.0


def best_rate(sweep: dict[float, float | None]) -> float:
    """The learning rate with the highest finite validation score (the first of equals; None: diverged)."""
    return max(sweep, key=lambda lr: score if (score := sweep[lr]) is not None and math.isfinite(score) else -math.inf)
