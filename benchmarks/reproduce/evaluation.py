"""Test-time fitting of the held-out signals from a trained model, and their scores."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter
from ecop_wrap.quality import lpips_distance, lpips_status, ssim

from .methods import FitSetting
from .splits import Splits


def _fit(
    model: nn.Module | ContextPruningMetaLearner,
    coords: torch.Tensor,
    values: torch.Tensor,
    steps: int,
    test: FitSetting,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit with the adapter: full-context steps, or (``context="pruned"``) every step on the pruned context."""
    adapter = GradScaledAdapter(
        model,
        steps=steps,
        lr=test.lr,
        gamma=test.gamma,
        scaling=test.scaling,
        selection=test.selection,
        coord_range=None,
        max_consecutive_skips=steps + 1,
        pruned_steps=steps if test.context == "pruned" else 0,
    )
    fit = adapter.fit((coords, values))
    return fit(coords).detach(), fit.history["mse"].detach(), fit.history["scale"]


def evaluate(
    model: nn.Module | ContextPruningMetaLearner,
    splits: Splits,
    values: torch.Tensor,
    steps: int,
    test: FitSetting,
    chunk: int = 50,
) -> dict[str, Any]:
    """Fit every held-out signal from ``model`` and score it.

    Returns:
        ``psnr`` (mean of per-signal PSNR, dB, data range of the modality), ``psnr_std``, ``psnr_curve``
        (mean PSNR after 0..steps test steps), ``ssim`` (images) and ``lpips`` (images, when available).
    """
    preds, histories, scales = [], [], []
    started = time.perf_counter()
    for start in range(0, values.shape[0], chunk):
        pred, mse_hist, scale_hist = _fit(model, splits.coords, values[start : start + chunk], steps, test)
        preds.append(pred)
        histories.append(mse_hist)
        scales.append(scale_hist)
    fit_seconds = time.perf_counter() - started
    pred, mse_hist, scale_hist = torch.cat(preds), torch.cat(histories, dim=1), torch.cat(scales, dim=1)
    psnr_hist = 10.0 * torch.log10(splits.data_range**2 / mse_hist)
    final = psnr_hist[-1]
    out: dict[str, Any] = {
        "psnr": float(final.mean()),
        "psnr_std": float(final.std()) if final.numel() > 1 else 0.0,
        "psnr_per_signal": [round(float(v), 4) for v in final],
        "psnr_curve": [round(float(v), 3) for v in psnr_hist.mean(dim=1)],
        # mean test-time gradient scale of each step (1 without scaling): the effective step is lr * scale
        "scale_curve": [round(float(v), 4) for v in scale_hist.mean(dim=1)],
        # wall time of the fits (batches of `chunk` signals, including the final full-context evaluation)
        "fit_seconds_per_signal": round(fit_seconds / values.shape[0], 5),
        "ssim": None,
        "lpips": None,
    }
    if splits.modality == "image":
        clipped, target = _as_images(pred.clamp(0.0, 1.0), splits.grid), _as_images(values, splits.grid)
        if min(splits.grid) >= 11:
            out["ssim"] = float(ssim(clipped, target).mean())
        available, reason = lpips_status()
        if available and values.shape[-1] == 3:
            out["lpips"] = float(lpips_distance(clipped, target).mean())
        else:
            out["lpips_note"] = reason or "LPIPS needs RGB images"
    return out


def _as_images(values: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``[N, M, D]`` -> ``[N, H, W, D]``."""
    return values.reshape(values.shape[0], *grid, values.shape[-1])


def held_out_count(splits: Splits, eval_split: str) -> int:
    """Number of signals scored (the test set for ``"test"`` and ``"both"``)."""
    return int((splits.val if eval_split == "val" else splits.test).shape[0])


def _memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during meta-training"
    return "bytes autograd holds for one outer step (SavedTensorMeter on one meta-loss; Reptile: largest inner step)"
