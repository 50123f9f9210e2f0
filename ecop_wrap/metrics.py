"""Reconstruction metrics."""

from __future__ import annotations

import math

import torch

__all__ = ["mse", "mse_to_psnr", "psnr"]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over points and channels: ``[..., M, D]`` -> ``[...]``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return (pred - target).pow(2).mean(dim=(-2, -1))


def mse_to_psnr(mse_value: float | torch.Tensor, data_range: float = 1.0) -> float | torch.Tensor:
    """PSNR in dB from an MSE: ``10 log10(data_range^2 / mse)`` (``inf`` for a zero MSE)."""
    if isinstance(mse_value, torch.Tensor):
        return 10.0 * torch.log10(data_range**2 / mse_value)
    return math.inf if mse_value == 0 else 10.0 * math.log10(data_range**2 / mse_value)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per signal: ``[..., M, D]`` -> ``[...]``, MSE over points and channels."""
    return mse_to_psnr(mse(pred, target), data_range)  # type: ignore[return-value]
