"""The coordinate interval a grid-based model spans (hash tables, a grid of latent codes), and a one-time
warning when the data's coordinates lie mostly outside it (they would all take the edge's features)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

__all__ = ["OUTSIDE_WARN_FRACTION", "checked_bounds", "warn_once_if_outside"]

OUTSIDE_WARN_FRACTION = 0.05
"""Warn when more than this fraction of the first call's coordinate values lie outside the bounds."""


def checked_bounds(name: str, bounds: Sequence[float]) -> tuple[float, float]:
    """``bounds`` as ``(low, high)`` floats; a ``ValueError`` naming ``name`` unless two finite numbers, low < high."""
    pair = tuple(bounds) if isinstance(bounds, Sequence) and not isinstance(bounds, str) else ()
    if len(pair) != 2 or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in pair):
        raise ValueError(f"{name} must be (low, high), two numbers; got {bounds!r}")
    low, high = float(pair[0]), float(pair[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{name} must be finite with low < high; got {bounds!r}")
    return low, high


def warn_once_if_outside(
    module: torch.nn.Module, coords: torch.Tensor, bounds: tuple[float, float], name: str, *, depth: int = 1
) -> None:
    """On ``module``'s first call with plain coordinates, warn if over :data:`OUTSIDE_WARN_FRACTION` of their
    values lie outside ``bounds`` (later calls, and calls under ``vmap`` or ``torch.compile``, check nothing).
    ``depth``: calls between the module's ``forward`` and this one (the warning names the line calling the module)."""
    if getattr(module, "_bounds_checked", False) or torch.compiler.is_compiling():
        return
    if torch._C._functorch.is_batchedtensor(coords) or coords.device.type == "meta" or coords.numel() == 0:
        return
    module._bounds_checked = True  # type: ignore[assignment]
    with torch.no_grad():
        low, high = bounds
        outside = float(((coords < low) | (coords > high)).float().mean())
        if outside <= OUTSIDE_WARN_FRACTION:
            return
        span = (float(coords.min()), float(coords.max()))
    warnings.warn(
        f"{type(module).__name__}: {outside:.0%} of the coordinates lie outside {name}=({low:g}, {high:g}) "
        f"(they span [{span[0]:g}, {span[1]:g}]) and all take the grid's edge features. Pass "
        f"{name}=({span[0]:g}, {span[1]:g}) or rescale the coordinates.",
        UserWarning,
        stacklevel=5 + depth,  # past this function, forward and nn.Module.__call__'s two frames
    )
