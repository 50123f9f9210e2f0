"""Originals next to every method's reconstruction, with error maps (images, video frames, lat/lon maps)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figure import figure_class, hide_ticks, panel_size, save_png, show_grid, to_numpy

__all__ = ["plot_reconstructions"]


def _as_grids(originals: Any, reconstructions: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    truth = to_numpy(originals, "originals")
    if truth.ndim == 3:
        truth = truth[..., None]
    if truth.ndim != 4:
        raise ValueError(f"originals must be [N, H, W, D] (or [N, H, W]), got shape {truth.shape}")
    recons = {}
    for name, value in reconstructions.items():
        array = to_numpy(value, f"reconstructions[{name!r}]").reshape(truth.shape)
        recons[name] = array
    return truth, recons


def plot_reconstructions(
    originals: Any,
    reconstructions: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    psnr: Mapping[str, Any] | None = None,
    row_labels: Sequence[str] | None = None,
    show_errors: bool = True,
    title: str | None = None,
    cmap: str | None = None,
    value_range: tuple[float, float] | None = None,
    extent: Sequence[float] | None = None,
    origin: str = "upper",
    colorbar_label: str | None = None,
    error_scale: float | None = None,
    error_label: str = "error",
) -> str:
    """Originals next to every method's reconstruction, one signal per row, then each method's error map.

    Args:
        originals: ``[N, H, W, D]`` (or ``[N, H, W]``) ground truth; RGB in ``[0, 1]`` when ``D = 3``, otherwise
            the first channel is drawn with ``cmap`` (e.g. temperature maps).
        reconstructions: method name -> array of the same shape.
        path: PNG file to write.
        psnr: method name -> ``[N]`` PSNR per signal, shown in the panel titles.
        row_labels: ``[N]`` text at the left of every row (e.g. ``"t = 3"`` for video frames).
        show_errors: add one column per method with ``||reconstruction - original||_2`` per pixel (one colour
            scale per row, shared by the methods).
        title: figure title.
        cmap: colour map for one-channel data (default gray); ``value_range`` fixes its limits.
        extent, origin: passed to ``imshow`` (e.g. longitudes/latitudes of a map; ``origin="lower"`` when the
            first row is the southernmost); with ``extent`` the axes keep their ticks.
        colorbar_label: with one-channel data, a colour bar with this label is added to each row.
        error_scale: multiply error maps by this before drawing (e.g. to show them in physical units).
        error_label: label of the error maps' colour bar.

    Returns:
        ``path`` as a string.
    """
    truth, recons = _as_grids(originals, reconstructions)
    count = truth.shape[0]
    names = list(recons)
    columns = 1 + len(names) * (2 if show_errors else 1)
    height, width = truth.shape[1:3]
    panel_width, panel_height = panel_size((height, width), extent, 2.0)
    fig = figure_class()(
        figsize=(panel_width * columns + 1.0, (panel_height + 0.35) * count + (0.5 if title else 0.2)),
        layout="constrained",
    )
    axes = np.asarray(fig.subplots(count, columns, squeeze=False))
    low, high = value_range if value_range is not None else (float(truth.min()), float(truth.max()))
    opts: dict[str, Any] = {"cmap": cmap, "vmin": low, "vmax": high, "extent": extent, "origin": origin}
    for row in range(count):
        image = show_grid(axes[row, 0], truth[row], **opts)
        axes[row, 0].set_title("original" if row == 0 else "", fontsize=9)
        if row_labels is not None:
            axes[row, 0].set_ylabel(str(row_labels[row]), fontsize=9)
        for col, name in enumerate(names, start=1):
            show_grid(axes[row, col], recons[name][row], **opts)
            score = "" if psnr is None else f"{float(to_numpy(psnr[name], 'psnr')[row]):.1f} dB"
            axes[row, col].set_title(f"{name} {score}".strip(), fontsize=9)
        if truth.shape[-1] != 3 and colorbar_label:
            fig.colorbar(image, ax=axes[row, : 1 + len(names)].tolist(), shrink=0.8, label=colorbar_label)
        if show_errors:
            _error_columns(
                fig,
                axes[row],
                truth[row],
                {n: recons[n][row] for n in names},
                names,
                row,
                extent,
                origin,
                error_scale,
                error_label,
            )
        for ax in axes[row]:
            hide_ticks(ax, extent is not None)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def _error_columns(
    fig: Any,
    axes: np.ndarray,
    truth: np.ndarray,
    recons: dict[str, np.ndarray],
    names: list[str],
    row: int,
    extent: Sequence[float] | None,
    origin: str,
    error_scale: float | None,
    label: str,
) -> None:
    scale = 1.0 if error_scale is None else float(error_scale)
    errors = {name: np.sqrt(((recons[name] - truth) ** 2).sum(-1)) * scale for name in names}
    top = max(float(e.max()) for e in errors.values()) or 1.0
    image = None
    for offset, name in enumerate(names):
        ax = axes[1 + len(names) + offset]
        image = ax.imshow(
            errors[name], cmap="magma", vmin=0.0, vmax=top, extent=extent, origin=origin, interpolation="nearest"
        )
        if row == 0:
            ax.set_title(f"error, {name}", fontsize=9)
    fig.colorbar(image, ax=axes[1 + len(names) :].tolist(), shrink=0.8, label=label)
