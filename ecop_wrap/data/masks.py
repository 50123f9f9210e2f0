"""Observed-pixel masks: random square blocks of an image grid hidden per signal (inpainting benchmarks).

A mask is True where a pixel is observed; as batch weights (``mask.float()``) a hidden pixel gets weight 0, so the
learner and the adapter never use its value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["block_masks"]


def _int_at_least(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def block_masks(count: int, shape: Sequence[int], fraction: float, block: int, seed: int) -> torch.Tensor:
    """Observed-pixel masks with ``fraction`` of each signal hidden in random square blocks.

    The ``H x W`` grid is cut into ``block x block`` tiles (smaller at the bottom and right edges when ``block``
    does not divide the side); each signal hides ``round(fraction * tiles)`` of them (at least 1, at most all
    but 1), drawn in turn from one CPU generator seeded with ``seed``: mask ``i`` depends only on ``seed`` and
    ``i`` (the first ``n`` masks of a larger ``count`` are the same).

    Args:
        count: number of signals ``N`` (``>= 0``).
        shape: grid ``(H, W)``, both ``>= 1``.
        fraction: share of tiles to hide, in ``(0, 1)``.
        block: tile side in pixels, ``>= 1``; the grid must have at least 2 tiles.
        seed: seed of the generator (``>= 0``).

    Returns:
        ``[N, H * W]`` bool, True where the pixel is observed (row-major like :func:`~ecop_wrap.make_grid`).

    Raises:
        ValueError: naming the argument that is out of range (or the grid that has a single tile).
    """
    count = _int_at_least("count", count, 0)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 2:
        raise ValueError(f"shape must be a pair (H, W) of ints >= 1, got {shape!r}")
    height, width = (_int_at_least("shape", side, 1) for side in shape)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be a number in (0, 1), got {fraction!r}")
    block = _int_at_least("block", block, 1)
    seed = _int_at_least("seed", seed, 0)
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    tiles = rows * cols
    if tiles < 2:
        raise ValueError(
            f"block={block} covers the whole {height}x{width} grid (shape) in one tile: nothing could stay observed"
        )
    hidden = min(tiles - 1, max(1, round(fraction * tiles)))
    generator = torch.Generator().manual_seed(seed)
    masks = torch.ones(count, tiles, dtype=torch.bool)
    for i in range(count):
        masks[i, torch.randperm(tiles, generator=generator)[:hidden]] = False
    pixels = masks.view(count, rows, cols).repeat_interleave(block, 1).repeat_interleave(block, 2)
    return pixels[:, :height, :width].reshape(count, height * width)
