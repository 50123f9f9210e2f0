"""Signals of different sizes in one batch: :func:`collate_signals` pads them and marks the padding with weight 0.

The learner and the adapter take the padded batch ``(coords, values, weights)``: a point of weight 0 is never
selected, never counted and holds no graph, so each signal is meta-learned and fitted over its own points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["collate_signals"]


def collate_signals(signals: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a list of signals into one batch (also a ``torch.utils.data.DataLoader`` ``collate_fn``).

    Args:
        signals: items ``(coords [M_i, C], values [M_i, D])`` or ``(coords, values, weights [M_i])``, of one dtype
            and device.

    Returns:
        ``(coords [B, M, C], values [B, M, D], weights [B, M])`` with ``M = max_i M_i``: each signal's points
        first, then padding that repeats its first point with weight 0 (so a model sees in-range inputs);
        weights 1 where an item has none.

    Raises:
        TypeError: an item is not such a pair or triple of tensors.
        ValueError: no signals, a signal without points, or items whose C, D, dtype or device differ.
    """
    if isinstance(signals, (str, bytes)) or not isinstance(signals, Sequence) or len(signals) == 0:
        raise ValueError("collate_signals needs a non-empty list of (coords [M_i, C], values [M_i, D]) signals")
    items = [_check_item(i, item) for i, item in enumerate(signals)]
    first_coords, first_values, _ = items[0]
    for i, (coords, values, _) in enumerate(items):
        if coords.shape[1] != first_coords.shape[1] or values.shape[1] != first_values.shape[1]:
            raise ValueError(
                f"signal {i} has C={coords.shape[1]}, D={values.shape[1]} but signal 0 has C={first_coords.shape[1]}, "
                f"D={first_values.shape[1]}: every signal of a batch needs the same coordinate and value dimensions"
            )
        if values.dtype != first_values.dtype or values.device != first_values.device:
            raise ValueError(
                f"signal {i} is {values.dtype} on {values.device} but signal 0 is {first_values.dtype} on "
                f"{first_values.device}; convert them to one dtype and device first"
            )
    size = max(coords.shape[0] for coords, _, _ in items)
    coords = torch.stack([_pad(c, size) for c, _, _ in items])
    values = torch.stack([_pad(v, size) for _, v, _ in items])
    weights = torch.stack([torch.cat([w, w.new_zeros(size - w.shape[0])]) for _, _, w in items])
    return coords, values, weights


def _check_item(index: int, item: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise TypeError(
            f"signal {index} must be (coords [M_i, C], values [M_i, D]) or (coords, values, weights [M_i]), "
            f"got {type(item).__name__}"
        )
    if not all(isinstance(t, torch.Tensor) for t in item):
        raise TypeError(f"signal {index}: coords, values (and weights) must be torch.Tensors")
    coords, values = item[0], item[1]
    if coords.ndim != 2 or values.ndim != 2 or coords.shape[0] != values.shape[0]:
        raise ValueError(
            f"signal {index} needs coords [M_i, C] and values [M_i, D] with the same M_i; got coords "
            f"{tuple(coords.shape)}, values {tuple(values.shape)}"
        )
    if coords.shape[0] == 0:
        raise ValueError(f"signal {index} has no points (M_i = 0)")
    weights = item[2] if len(item) == 3 else torch.ones(values.shape[0], dtype=values.dtype, device=values.device)
    if tuple(weights.shape) != (values.shape[0],):
        raise ValueError(f"signal {index}: weights must be [M_i] = [{values.shape[0]}], got {tuple(weights.shape)}")
    return coords, values, weights.to(values.dtype)


def _pad(tensor: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([tensor, tensor[:1].expand(size - tensor.shape[0], -1)])
