"""Waveforms against every method's reconstruction, with a zoomed window."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figure import figure_class, line_colours, save_png, to_numpy

__all__ = ["plot_waveforms"]


def plot_waveforms(
    originals: Any,
    reconstructions: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    sample_rate: float | None = None,
    psnr: Mapping[str, Any] | None = None,
    zoom: tuple[int, int] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Waveforms against every method's reconstruction, one signal per row, with a zoomed window on the right.

    Args:
        originals: ``[N, L]`` or ``[N, L, 1]`` ground truth.
        reconstructions: method name -> array of the same shape.
        path: PNG file to write.
        sample_rate: label the time axis in seconds.
        psnr: method name -> ``[N]`` PSNR per signal, shown in the legend.
        zoom: ``(start, length)`` in samples of the zoomed window, the same for every row (default: per row, the
            ``L // 8`` samples of the original with the most energy).
        row_labels: ``[N]`` text at the left of every row (default ``"signal i"``).
        title: figure title.

    Returns:
        ``path`` as a string.
    """
    truth = to_numpy(originals, "originals")
    truth = truth[..., 0] if truth.ndim == 3 else truth
    if truth.ndim != 2:
        raise ValueError(f"originals must be [N, L] or [N, L, 1], got shape {truth.shape}")
    recons = {n: to_numpy(v, f"reconstructions[{n!r}]").reshape(truth.shape) for n, v in reconstructions.items()}
    count, length = truth.shape
    time = np.arange(length) / sample_rate if sample_rate else np.arange(length)
    fig = figure_class()(figsize=(12, 2.2 * count + (0.4 if title else 0.0)), layout="constrained")
    axes = np.asarray(fig.subplots(count, 2, squeeze=False, width_ratios=(3, 2)))
    for row in range(count):
        start, stop = _zoom_window(truth[row], zoom)
        for ax, window in ((axes[row, 0], slice(None)), (axes[row, 1], slice(start, stop))):
            ax.plot(time[window], truth[row, window], color="0.2", lw=1.2, label="original")
            for colour, name in zip(line_colours(len(recons)), recons, strict=True):
                score = "" if psnr is None else f" {float(to_numpy(psnr[name], 'psnr')[row]):.1f} dB"
                ax.plot(time[window], recons[name][row, window], color=colour, lw=0.9, alpha=0.85, label=name + score)
        axes[row, 0].axvspan(time[start], time[stop - 1], color="0.85", zorder=0)
        axes[row, 0].legend(loc="upper right", fontsize=8)
        axes[row, 0].set_ylabel(f"signal {row}" if row_labels is None else str(row_labels[row]), fontsize=8)
    axes[0, 0].set_title("whole clip (shaded: the zoomed window)", fontsize=9)
    axes[0, 1].set_title("zoom", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)" if sample_rate else "sample")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def _zoom_window(waveform: np.ndarray, zoom: tuple[int, int] | None) -> tuple[int, int]:
    """``(start, stop)``: ``zoom`` clipped to the signal, or the ``L // 8`` samples with the most energy."""
    length = len(waveform)
    if zoom is not None:
        start = min(max(0, int(zoom[0])), length - 1)
        return start, min(length, start + max(2, int(zoom[1])))
    span = max(2, length // 8)
    energy = np.convolve(waveform**2, np.ones(span), mode="valid")
    start = int(np.argmax(energy))
    return start, start + span
