"""Coordinate grids and conversions between arrays and ``(coords, values)`` context sets.

An INR signal is a context set: ``coords`` of shape ``[M, C]`` (points in ``[-1, 1]^C``) and ``values`` of
shape ``[M, D]``. A grid-shaped array ``[*S, D]`` (e.g. an ``H x W x 3`` image) flattens to ``M = prod(S)``
points in row-major order, so :func:`signal_to_array` can undo :func:`array_to_signal` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["array_to_signal", "image_to_signal", "make_grid", "signal_to_array", "signal_to_image"]


def make_grid(
    shape: Sequence[int],
    *,
    low: float = -1.0,
    high: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Coordinates of a regular grid, flattened in row-major order.

    Each axis of size ``n`` is sampled at ``n`` equally spaced points from ``low`` to ``high`` (both
    included; a size-1 axis sits at the centre).

    Args:
        shape: grid size per axis ``(S_1, ..., S_C)``, e.g. ``(H, W)`` or ``(T, H, W)``.
        low, high: range of every axis.
        dtype, device: of the result (default dtype: ``torch.get_default_dtype()``).

    Returns:
        ``[prod(shape), C]`` coordinates; column ``i`` runs along axis ``i``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty sequence of positive sizes, got {shape}")
    axes = [
        torch.linspace(low, high, s, dtype=dtype, device=device)
        if s > 1
        else torch.full((1,), (low + high) / 2, dtype=dtype, device=device)
        for s in shape
    ]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, len(shape))


def array_to_signal(
    array: np.ndarray | torch.Tensor,
    *,
    channels_last: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a grid-shaped array into a context set.

    Args:
        array: ``[*S, D]`` (``channels_last``) or ``[D, *S]`` values. The last axis is always the channel axis
            when ``channels_last``, so a 1-channel grid of two or more axes needs an explicit ``D=1``
            (``[H, W]`` would be read as ``H`` points with ``W`` channels; :func:`image_to_signal` adds it); only a
            1-D ``[S]`` array is taken as ``[S, 1]``. Integer arrays (e.g. ``uint8`` images) are scaled to
            ``[0, 1]`` by their dtype's maximum.
        channels_last: where the channel axis is.
        dtype, device: of the returned tensors (default dtype: ``torch.get_default_dtype()``).

    Returns:
        ``(coords [M, C], values [M, D])`` with ``M = prod(S)`` and ``C = len(S)``.
    """
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if tensor.ndim == 0:
        raise ValueError("array must have at least one grid axis, got a scalar")
    if not (tensor.is_floating_point() or tensor.dtype == torch.bool):
        info = torch.iinfo(tensor.dtype)
        tensor = tensor.to(torch.float64) / float(info.max)
    out_dtype = dtype or torch.get_default_dtype()
    tensor = tensor.to(dtype=out_dtype, device=device)
    if not channels_last:
        tensor = torch.movedim(tensor, 0, -1)
    elif tensor.ndim == 1:
        tensor = tensor[:, None]
    grid_shape = tensor.shape[:-1] if tensor.ndim > 1 else tensor.shape
    coords = make_grid(grid_shape, dtype=out_dtype, device=device)
    return coords, tensor.reshape(-1, tensor.shape[-1])


def signal_to_array(values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`array_to_signal`: ``[..., M, D]`` values back to ``[..., *shape, D]``."""
    shape = tuple(int(s) for s in shape)
    m = int(np.prod(shape))
    if values.ndim < 2 or values.shape[-2] != m:
        raise ValueError(f"values must be [..., M={m}, D] for grid shape {shape}, got {tuple(values.shape)}")
    return values.reshape(*values.shape[:-2], *shape, values.shape[-1])


def image_to_signal(
    image: np.ndarray | torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``H x W`` or ``H x W x D`` image (uint8 or float in [0, 1]) to ``(coords [H*W, 2], values [H*W, D])``."""
    arr = image if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [H, W, D], got shape {tuple(arr.shape)}")
    if arr.ndim == 2:
        arr = arr[..., None]
    return array_to_signal(arr, dtype=dtype, device=device)


def signal_to_image(values: torch.Tensor, height: int, width: int, *, clip: bool = True) -> np.ndarray:
    """``[H*W, D]`` values to an ``H x W x D`` float numpy image, clipped to ``[0, 1]`` by default."""
    img = signal_to_array(values.detach().cpu(), (height, width))
    if clip:
        img = img.clamp(0.0, 1.0)
    return img.numpy()
