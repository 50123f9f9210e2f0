"""What every plot shares: matplotlib's ``Figure`` imported on first use, numpy copies of the inputs, the
colour cycle, one image panel and saving to PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["figure_class", "hide_ticks", "line_colours", "panel_size", "save_png", "show_grid", "to_numpy"]

METHOD_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def figure_class() -> Any:
    """matplotlib's ``Figure`` (imported lazily), or an ImportError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "ecop_wrap.plotting needs matplotlib; install it with: pip install 'ecop-wrap[examples]'"
        ) from err
    return Figure


def to_numpy(array: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a tensor or array-like."""
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float64).numpy()
    out = np.asarray(array, dtype=np.float64)
    if out.size == 0:
        raise ValueError(f"{name} is empty")
    return out


def save_png(fig: Any, path: str | os.PathLike[str]) -> str:
    """Write ``fig`` to ``path`` as a PNG (making its folder) and return the path as a string."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def line_colours(count: int) -> list[str]:
    """One colour per method, cycling through :data:`METHOD_COLOURS`."""
    return [METHOD_COLOURS[i % len(METHOD_COLOURS)] for i in range(count)]


def show_grid(
    ax: Any,
    image: np.ndarray,
    *,
    cmap: str | None,
    vmin: float | None,
    vmax: float | None,
    extent: Sequence[float] | None,
    origin: str,
) -> Any:
    """``image [H, W, D]``: RGB when D = 3 (clipped to [0, 1]), else the first channel with ``cmap``."""
    if image.shape[-1] == 3:
        return ax.imshow(np.clip(image, 0.0, 1.0), extent=extent, origin=origin, interpolation="nearest")
    return ax.imshow(
        image[..., 0], cmap=cmap or "gray", vmin=vmin, vmax=vmax, extent=extent, origin=origin, interpolation="nearest"
    )


def panel_size(shape: tuple[int, int], extent: Sequence[float] | None, base: float) -> tuple[float, float]:
    """Width and height in inches of one image panel: ``base`` high for square data, wider (up to 2x) if wide."""
    height, width = float(shape[0]), float(shape[1])
    if extent is not None:
        width, height = abs(extent[1] - extent[0]), abs(extent[3] - extent[2])
    aspect = min(2.0, max(0.5, width / height))
    return base * max(1.0, aspect), base * max(1.0, aspect) / aspect


def hide_ticks(ax: Any, keep_ticks: bool) -> None:
    """Remove the axis ticks of an image panel unless ``keep_ticks`` (panels drawn with an ``extent``)."""
    if not keep_ticks:
        ax.set_xticks([])
        ax.set_yticks([])
