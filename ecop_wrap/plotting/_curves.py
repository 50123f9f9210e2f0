"""PSNR (or any score) against adaptation step, one line per method."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figure import figure_class, line_colours, save_png, to_numpy

__all__ = ["plot_psnr_curves"]


def plot_psnr_curves(
    curves: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    xlabel: str = "adaptation step k",
    ylabel: str = "PSNR (dB)",
    x: Sequence[float] | None = None,
) -> str:
    """One line per method: the mean over signals, with a band of +-1 standard deviation.

    Args:
        curves: method name -> ``[S]`` or ``[S, B]`` values (e.g. ``FitResult.history["psnr"]``, ``S`` steps + 1
            rows and ``B`` signals).
        path: PNG file to write.
        title, xlabel, ylabel: labels.
        x: ``[S]`` x positions (default ``0 .. S-1``).

    Returns:
        ``path`` as a string. The final mean of every curve is printed next to its end.
    """
    if not curves:
        raise ValueError("curves must name at least one method")
    fig = figure_class()(figsize=(6.4, 4.2))
    ax = fig.subplots()
    ends: list[tuple[float, float, str]] = []
    for colour, (name, values) in zip(line_colours(len(curves)), curves.items(), strict=True):
        data = to_numpy(values, f"curves[{name!r}]")
        data = data[:, None] if data.ndim == 1 else data
        if data.ndim != 2:
            raise ValueError(f"curves[{name!r}] must be [S] or [S, B], got shape {data.shape}")
        steps = np.arange(len(data)) if x is None else np.asarray(x, dtype=np.float64)
        if len(steps) != len(data):
            raise ValueError(f"x has {len(steps)} positions but curves[{name!r}] has {len(data)} rows")
        mean, std = data.mean(axis=1), data.std(axis=1)
        ax.plot(steps, mean, color=colour, lw=2, label=name)
        if data.shape[1] > 1:
            ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
        ends.append((float(mean[-1]), float(steps[-1]), colour))
    _label_ends(ax, ends)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return save_png(fig, path)


def _label_ends(ax: Any, ends: list[tuple[float, float, str]]) -> None:
    """Write each curve's final value right of its end, nudging labels apart that would overlap."""
    low, high = ax.get_ylim()
    left, right = ax.get_xlim()
    gap = (high - low) / 22
    placed: list[float] = []
    for value, x, colour in sorted(ends):
        y = value if not placed or value - placed[-1] >= gap else placed[-1] + gap
        placed.append(y)
        ax.text(x + 0.015 * (right - left), y, f"{value:.1f}", color=colour, va="center", ha="left", fontsize=9)
    ax.set_xlim(left, right + 0.07 * (right - left))
