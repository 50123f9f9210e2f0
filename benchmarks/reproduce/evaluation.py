"""Test-time fitting of the held-out signals from a trained model, and their scores."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn

from ecop_wrap import TEST_RULES, ContextPruningMetaLearner, GradScaledAdapter, calibrate_adapter
from ecop_wrap.quality import lpips_distance, lpips_status, ssim

from .methods import FitSetting
from .sdf import sdf_scores
from .splits import Splits


def _adapter(
    model: nn.Module | ContextPruningMetaLearner, steps: int, test: FitSetting, objective: dict[str, Any]
) -> GradScaledAdapter:
    """The test-time adapter: full-context steps, or (``context="pruned"``) every step on the pruned context."""
    return GradScaledAdapter(
        model,
        steps=steps,
        lr=test.lr,
        gamma=test.gamma,
        scaling=test.scaling,
        selection=test.selection,
        coord_range=None,
        max_consecutive_skips=steps + 1,
        pruned_steps=steps if test.context == "pruned" else 0,
        **objective,
    )


CALIBRATION_SIGNALS = 32
"""Training signals (the first of the training set) the calibrated test rule is picked on."""


def calibrated_setting(
    model: nn.Module | ContextPruningMetaLearner, splits: Splits, test: FitSetting, config: Any
) -> tuple[FitSetting, dict[str, Any]]:
    """The test rule :func:`ecop_wrap.calibrate_adapter` picks on training signals, as a :class:`FitSetting`,
    and the record of the choice (the rule and every rule's mean log loss)."""
    if not isinstance(model, ContextPruningMetaLearner):
        raise TypeError("a calibrated test rule needs a meta-learned ContextPruningMetaLearner")
    if splits.observed or splits.ragged:
        raise ValueError("a calibrated test rule supports fully observed signals on one grid (no masks, no ragged)")
    count = min(CALIBRATION_SIGNALS, len(splits.train))
    values = splits.train.subset(range(count)).stacked().to(splits.coords.device)
    chosen = calibrate_adapter(
        model,
        (splits.coords, values),
        steps=config.test_steps,
        lr=test.lr,
        gamma=test.gamma,
        selection=test.selection,
        coord_range=None,
        max_consecutive_skips=config.test_steps + 1,
        **config.objective,
    )
    rule = TEST_RULES[chosen.rule]
    pruned = rule.get("pruned_steps", 0) != 0
    setting = dataclasses.replace(test, scaling=rule["scaling"], context="pruned" if pruned else "full")
    record = {"rule": chosen.rule, "scores": chosen.scores, "signals": count, "split": "train"}
    return setting, record


def _fit(
    model: nn.Module | ContextPruningMetaLearner,
    coords: torch.Tensor,
    values: torch.Tensor,
    steps: int,
    test: FitSetting,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit with the MSE: the prediction, the MSE ``[steps + 1, B]`` and the gradient scales ``[steps, B]``."""
    fit = _adapter(model, steps, test, {}).fit((coords, values))
    return fit(coords).detach(), fit.history["mse"].detach(), fit.history["scale"]


def _fit_traced(
    model: nn.Module | ContextPruningMetaLearner,
    coords: torch.Tensor,
    values: torch.Tensor,
    weights: torch.Tensor | None,
    steps: int,
    test: FitSetting,
    objective: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit with any loss on the points of positive weight (all without ``weights``).

    Returns:
        The prediction ``[B, M, D]``, the squared error of every point after 0..steps steps ``[steps + 1, B, M]``
        (channel mean), the fitting loss ``[steps + 1, B]`` (over the weighted points) and the scales
        ``[steps, B]``.
    """
    adapter = _adapter(model, steps, test, objective)
    signal = (coords, values) if weights is None else (coords, values, weights)
    squared, losses, scales = [], [], []
    for state in adapter.fit_steps(signal):
        with torch.no_grad():
            pred = adapter.backend(state.params, coords).detach()
            squared.append((pred - values).pow(2).mean(dim=-1))
        losses.append(state.loss.detach())
        if state.scale is not None:
            scales.append(state.scale.detach())
    scale_hist = torch.stack(scales) if scales else values.new_empty((0, values.shape[0]))
    return pred, torch.stack(squared), torch.stack(losses), scale_hist


def _psnr(squared: torch.Tensor, chosen: torch.Tensor | None, data_range: float) -> torch.Tensor:
    """PSNR ``[..., B]`` from squared errors ``[..., B, M]`` over the points ``chosen`` ``[B, M]`` (None: all)."""
    if chosen is None:
        mse = squared.mean(dim=-1)
    else:
        weights = chosen.to(squared.dtype)
        mse = (squared * weights).sum(dim=-1) / weights.sum(dim=-1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _rounded(values: torch.Tensor, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


def evaluate(
    model: nn.Module | ContextPruningMetaLearner,
    splits: Splits,
    values: torch.Tensor,
    steps: int,
    test: FitSetting,
    chunk: int = 50,
    *,
    objective: dict[str, Any] | None = None,
    observed: torch.Tensor | None = None,
    ragged: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Fit every held-out signal from ``model`` and score it.

    Args:
        objective: the adapter's ``loss`` and ``huber_delta`` (None: the MSE).
        observed: ``[N, M]`` bool, the points each fit may use (None: all); then the headline PSNR is over the
            hidden points (``psnr_observed*``: over the observed ones).
        ragged: ``(coords [N, M_max, C], weights [N, M_max])`` of signals of different sizes padded by
            ``collate_signals`` (``values`` ``[N, M_max, D]``): each is fitted and scored over its own points
            (weight > 0) only, from those coords instead of ``splits.coords``; no SSIM/LPIPS (no common grid).

    Returns:
        ``psnr`` (mean of per-signal PSNR, dB, data range of the modality), ``psnr_std``, ``psnr_curve``
        (mean PSNR after 0..steps test steps), ``ssim`` (images) and ``lpips`` (images, when available);
        with a loss other than the MSE also ``test_loss`` (its mean after the last step), ``test_loss_per_signal``
        and ``test_loss_curve``.
    """
    objective = objective or {"loss": "mse"}
    traced = objective.get("loss", "mse") != "mse" or observed is not None or ragged is not None
    preds, histories, scales, losses = [], [], [], []
    started = time.perf_counter()
    for start in range(0, values.shape[0], chunk):
        rows = slice(start, start + chunk)
        if traced:
            weights = None if observed is None else observed[rows].to(values.dtype)
            coords = splits.coords if ragged is None else ragged[0][rows]
            weights = weights if ragged is None else ragged[1][rows]
            pred, hist, loss_hist, scale_hist = _fit_traced(
                model, coords, values[rows], weights, steps, test, objective
            )
            losses.append(loss_hist)
        else:
            pred, hist, scale_hist = _fit(model, splits.coords, values[rows], steps, test)
        preds.append(pred)
        histories.append(hist)
        scales.append(scale_hist)
    fit_seconds = time.perf_counter() - started
    pred, hist, scale_hist = torch.cat(preds), torch.cat(histories, dim=1), torch.cat(scales, dim=1)
    extra: dict[str, Any] = {}
    if not traced:
        psnr_hist = 10.0 * torch.log10(splits.data_range**2 / hist)
    else:
        scored = None if observed is None else ~observed  # masked: the hidden points; ragged: the signal's own
        psnr_hist = _psnr(hist, scored if ragged is None else ragged[1] > 0, splits.data_range)
        if observed is not None:
            seen = _psnr(hist[-1], observed, splits.data_range)
            extra |= {"psnr_observed": float(seen.mean()), "psnr_observed_per_signal": _rounded(seen)}
            extra["psnr_all_pixels"] = float(_psnr(hist[-1], None, splits.data_range).mean())
        if objective.get("loss", "mse") != "mse":
            loss_hist = torch.cat(losses, dim=1)
            extra |= {
                "test_loss": float(loss_hist[-1].mean()),
                "test_loss_per_signal": [float(f"{float(v):.6g}") for v in loss_hist[-1]],
                "test_loss_curve": [float(f"{float(v):.6g}") for v in loss_hist.mean(dim=1)],
            }
    final = psnr_hist[-1]
    out: dict[str, Any] = {
        "psnr": float(final.mean()),
        "psnr_std": float(final.std()) if final.numel() > 1 else 0.0,
        "psnr_per_signal": _rounded(final),
        "psnr_curve": [round(float(v), 3) for v in psnr_hist.mean(dim=1)],
        # mean test-time gradient scale of each step (1 without scaling): the effective step is lr * scale
        "scale_curve": [round(float(v), 4) for v in scale_hist.mean(dim=1)],
        # wall time of the fits (batches of `chunk` signals, including the final full-context evaluation)
        "fit_seconds_per_signal": round(fit_seconds / values.shape[0], 5),
        "ssim": None,
        "lpips": None,
        **extra,
    }
    if splits.modality == "sdf":
        out |= sdf_scores(pred, values, splits.meta["band"], splits.data_range)
    if splits.modality == "image" and ragged is not None:
        out["ssim_note"] = "no SSIM/LPIPS for signals of different shapes (--aspect-crops)"
    elif splits.modality == "image":
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


FLOOR_DB = 1.0
"""A method within this many dB of the trivial floor (:func:`floor_psnr`) on average has learned next to nothing."""


def floor_psnr(splits: Splits) -> dict[str, list[float]] | None:
    """Per held-out signal (``"val"``, ``"test"``), the PSNR of the trivial predictor: the signal's own mean value
    (per channel) at every point, an oracle of D numbers. None where the headline is not the whole signal's PSNR
    (hidden pixels, padded ragged batches, SDF band scores)."""
    if splits.observed or splits.ragged or splits.modality == "sdf":
        return None
    out = {}
    for split in ("val", "test"):
        values = getattr(splits, split).double()
        mse = (values - values.mean(dim=1, keepdim=True)).pow(2).mean(dim=(1, 2))
        out[split] = _rounded(10.0 * torch.log10(splits.data_range**2 / mse))
    return out


def held_out_count(splits: Splits, eval_split: str) -> int:
    """Number of signals scored (the test set for ``"test"`` and ``"both"``)."""
    return int((splits.val if eval_split == "val" else splits.test).shape[0])


def _memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during meta-training"
    return "bytes autograd holds for one outer step (SavedTensorMeter on one meta-loss; Reptile: largest inner step)"
