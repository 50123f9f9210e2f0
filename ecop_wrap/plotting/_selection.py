"""The paper's Figure 1: the pruned context, the error ``R_k`` and the reconstruction at recorded steps."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._figure import figure_class, hide_ticks, panel_size, save_png, show_grid, to_numpy

__all__ = ["plot_selection"]


def plot_selection(
    original: Any,
    steps: Sequence[int],
    masks: Any,
    errors: Any,
    predictions: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    extent: Sequence[float] | None = None,
    origin: str = "upper",
    cmap: str | None = None,
    sample_rate: float | None = None,
) -> str:
    """The paper's Figure 1: at each recorded step, the pruned context, the error map and the reconstruction.

    Two layouts, chosen by the shape of ``original``:

    * a 2-D grid ``[H, W, D]`` (image, one video frame, lat/lon map): columns are the steps ``k`` plus the
      original; rows are the signal with the selected points in red, the error ``R_k`` (each step on its own
      colour scale, given in the panel title) and the reconstruction ``f_theta_k``;
    * a 1-D signal ``[L, D]`` (audio): one row per step, the waveform with selected samples in red and the
      reconstruction on the left, the error on the right.

    Args:
        original: ``[H, W, D]`` or ``[L, D]`` ground truth.
        steps: ``S`` adaptation steps (labels).
        masks: ``[S, H, W]`` / ``[S, L]`` bool, selected points (see :meth:`ecop_wrap.SelectionTrace.as_grid`).
        errors: ``[S, H, W]`` / ``[S, L]`` per-point error ``R_k``.
        predictions: ``[S, H, W, D]`` / ``[S, L, D]`` reconstruction before step ``k``.
        path: PNG file to write.
        title: figure title.
        extent, origin, cmap: as in :func:`plot_reconstructions` (2-D only).
        sample_rate: for 1-D signals, label the time axis in seconds.

    Returns:
        ``path`` as a string.
    """
    truth = to_numpy(original, "original")
    chosen = to_numpy(masks, "masks") > 0.5
    err = to_numpy(errors, "errors")
    pred = to_numpy(predictions, "predictions")
    count = len(steps)
    if chosen.shape[0] != count or err.shape != chosen.shape or pred.shape[0] != count:
        raise ValueError(
            f"masks {chosen.shape}, errors {err.shape} and predictions {pred.shape} must all start with "
            f"S={count} (one entry per step)"
        )
    if truth.ndim == 3:
        if chosen.shape[1:] != truth.shape[:2] or pred.shape[1:] != truth.shape:
            raise ValueError(f"masks/errors must be [S, H, W] and predictions [S, H, W, D] for original {truth.shape}")
        return _selection_2d(truth, list(steps), chosen, err, pred, path, title, extent, origin, cmap)
    if truth.ndim == 2:
        if chosen.shape[1:] != truth.shape[:1] or pred.shape[1:] != truth.shape:
            raise ValueError(f"masks/errors must be [S, L] and predictions [S, L, D] for original {truth.shape}")
        return _selection_1d(truth, list(steps), chosen, err, pred, path, title, sample_rate)
    raise ValueError(f"original must be [H, W, D] or [L, D], got shape {truth.shape}")


def _pixel_centres(
    shape: tuple[int, int], extent: Sequence[float] | None, origin: str
) -> tuple[np.ndarray, np.ndarray]:
    """x and y data coordinates of every pixel centre of an ``imshow`` of ``shape`` (rows, columns)."""
    height, width = shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    if extent is None:
        return cols.astype(float), rows.astype(float)
    left, right, bottom, top = (float(v) for v in extent)
    first, last = (top, bottom) if origin == "upper" else (bottom, top)
    x = left + (cols + 0.5) * (right - left) / width
    y = first + (rows + 0.5) * (last - first) / height
    return x, y


def _selection_2d(
    truth: np.ndarray,
    steps: list[int],
    masks: np.ndarray,
    errors: np.ndarray,
    preds: np.ndarray,
    path: str | os.PathLike[str],
    title: str | None,
    extent: Sequence[float] | None,
    origin: str,
    cmap: str | None,
) -> str:
    count = len(steps)
    height, width = truth.shape[:2]
    panel_width, panel_height = panel_size((height, width), extent, 2.1)
    fig = figure_class()(
        figsize=(panel_width * (count + 1) + 0.6, 3 * (panel_height + 0.35) + (0.4 if title else 0.0)),
        layout="constrained",
    )
    axes = np.asarray(fig.subplots(3, count + 1, squeeze=False))
    low, high = float(truth.min()), float(truth.max())
    opts: dict[str, Any] = {"extent": extent, "origin": origin}
    xs, ys = _pixel_centres((height, width), extent, origin)
    dot = (0.55 * 72.0 * panel_width / width) ** 2  # marker area in points^2: about half a pixel wide
    for col, k in enumerate(steps):
        show_grid(axes[0, col], truth, cmap=cmap, vmin=low, vmax=high, **opts)
        axes[0, col].scatter(
            xs[masks[col]], ys[masks[col]], s=dot, c="red", marker="o", edgecolors="white", linewidths=0.4
        )
        axes[0, col].set_title(f"k = {k}: {int(masks[col].sum())} of {masks[col].size} points", fontsize=9)
        top = float(errors[col].max()) or 1.0  # own scale per step: later errors are far smaller
        axes[1, col].imshow(errors[col], cmap="magma", vmin=0.0, vmax=top, interpolation="nearest", **opts)
        axes[1, col].set_title(f"R_{k}: 0 (black) to {top:.3g} (white)", fontsize=9)
        mse = float(((preds[col] - truth) ** 2).mean())
        psnr_text = f"{10 * np.log10(1.0 / mse):.1f} dB" if mse > 0 else "exact"
        show_grid(axes[2, col], preds[col], cmap=cmap, vmin=low, vmax=high, **opts)
        axes[2, col].set_title(f"f(theta_{k}): {psnr_text}", fontsize=9)
    axes[0, 0].set_ylabel("pruned context (red)", fontsize=9)
    axes[1, 0].set_ylabel("error R_k = ||f(x) - y||", fontsize=9)
    axes[2, 0].set_ylabel("reconstruction", fontsize=9)
    show_grid(axes[2, count], truth, cmap=cmap, vmin=low, vmax=high, **opts)
    axes[2, count].set_title("original", fontsize=9)
    for ax in (axes[0, count], axes[1, count]):
        ax.axis("off")
    for ax in axes.flat:
        hide_ticks(ax, extent is not None)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def _selection_1d(
    truth: np.ndarray,
    steps: list[int],
    masks: np.ndarray,
    errors: np.ndarray,
    preds: np.ndarray,
    path: str | os.PathLike[str],
    title: str | None,
    sample_rate: float | None,
) -> str:
    count = len(steps)
    length = truth.shape[0]
    time = np.arange(length) / sample_rate if sample_rate else np.arange(length)
    fig = figure_class()(figsize=(12, 2.2 * count + (0.4 if title else 0.0)), layout="constrained")
    axes = np.asarray(fig.subplots(count, 2, squeeze=False, width_ratios=(3, 2)))
    top = float(errors.max()) or 1.0
    for row, k in enumerate(steps):
        left, right = axes[row]
        left.plot(time, truth[:, 0], color="0.6", lw=0.8, label="signal")
        left.plot(time, preds[row][:, 0], color="#1f77b4", lw=0.8, label=f"f(theta_{k})")
        left.scatter(time[masks[row]], truth[masks[row], 0], s=3, color="#d62728", label="pruned context", zorder=3)
        left.set_ylabel(f"k = {k}", fontsize=9)
        right.plot(time, errors[row], color="0.3", lw=0.6)
        right.scatter(time[masks[row]], errors[row][masks[row]], s=3, color="#d62728", zorder=3)
        right.set_ylim(0.0, top * 1.05)
        right.set_ylabel("R_k", fontsize=9)
        if row == 0:
            left.legend(loc="upper right", fontsize=8, markerscale=3)
            left.set_title("signal, selected samples (red) and reconstruction", fontsize=9)
            right.set_title("error ||f(x) - y|| per sample", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)" if sample_rate else "sample")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path)
