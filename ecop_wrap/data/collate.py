"""Ragged batches: signals of different sizes padded into one ``(coords, values, weights)`` batch.

A padded point has weight 0, so the learner and the adapter never select it, never count it and hold no graph
for it; its coords and values are copies of its signal's first point, so the model only sees in-range inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["collate_signals"]

_ITEM_FORM = "(coords [M_i, C], values [M_i, D]) or (coords, values, weights [M_i])"


def collate_signals(signals: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad signals of different sizes into one weighted batch (also a ``DataLoader`` ``collate_fn``).

    Args:
        signals: ``B`` items ``(coords [M_i, C], values [M_i, D])`` or ``(coords, values, weights [M_i])``
            (finite and ``>= 0``, any real dtype or a bool mask), every item with the same ``C``, ``D``,
            floating dtype and device, and ``M_i >= 1``.

    Returns:
        ``(coords [B, M_max, C], values [B, M_max, D], weights [B, M_max])`` with ``M_max = max_i M_i``: signal
        ``i`` in row ``i``, its own points first (weights 1 where the item has none), then ``M_max - M_i``
        padded points of weight 0 carrying the coords and values of its first point. Weights are in the values'
        dtype.

    Raises:
        TypeError: an item that is not such a tuple of tensors, non-floating coords/values or complex weights.
        ValueError: no items, ``M_i = 0``, inconsistent shapes inside an item, different ``C``, ``D``, dtypes or
            devices across items, or weights that are NaN, inf, negative or all zero for a signal.
    """
    if isinstance(signals, torch.Tensor) or not isinstance(signals, Sequence) or isinstance(signals, (str, bytes)):
        raise TypeError(f"collate_signals needs a list of signals {_ITEM_FORM}, got {type(signals).__name__}")
    if len(signals) == 0:
        raise ValueError("collate_signals needs at least one signal, got an empty list")
    items = [_checked_item(i, item) for i, item in enumerate(signals)]
    _check_consistent(items)
    longest = max(int(coords.shape[0]) for coords, _, _ in items)
    padded = [_pad(item, longest) for item in items]
    coords, values, weights = (torch.stack(part) for part in zip(*padded, strict=True))
    return coords, values, weights


def _checked_item(index: int, item: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Signal ``index`` as ``(coords [M, C], values [M, D], weights [M] or None)``, shapes checked."""
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise TypeError(f"signal {index} must be {_ITEM_FORM}, got {_describe(item)}")
    if not all(isinstance(part, torch.Tensor) for part in item):
        raise TypeError(f"signal {index} must be {_ITEM_FORM} of tensors, got ({', '.join(map(_describe, item))})")
    coords, values = item[0], item[1]
    weights = item[2] if len(item) == 3 else None
    for name, tensor in (("coords", coords), ("values", values)):
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"signal {index}: {name} must be a floating tensor, got {tensor.dtype}")
        if tensor.ndim != 2:
            raise ValueError(f"signal {index}: {name} must be 2-D [M_i, *], got shape {tuple(tensor.shape)}")
    points = int(coords.shape[0])
    if points == 0:
        raise ValueError(f"signal {index} has no points (coords {tuple(coords.shape)}): every signal needs M_i >= 1")
    if int(values.shape[0]) != points:
        raise ValueError(
            f"signal {index}: coords {tuple(coords.shape)} and values {tuple(values.shape)} must have the same M_i"
        )
    if weights is not None:
        weights = _checked_weights(index, weights, values)
    return coords, values, weights


def _checked_weights(index: int, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``weights [M_i]`` of signal ``index`` in the values' dtype: finite, ``>= 0``, at least one positive."""
    if tuple(weights.shape) != (int(values.shape[0]),):
        raise ValueError(
            f"signal {index}: weights must be [M_i] = [{values.shape[0]}] (one per point), got {tuple(weights.shape)}"
        )
    if weights.is_complex():
        raise TypeError(f"signal {index}: weights must be real (or a bool mask), got {weights.dtype}")
    if weights.device != values.device:
        raise ValueError(f"signal {index}: weights are on {weights.device} but values on {values.device}")
    weights = weights.to(values.dtype)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"signal {index}: weights must be finite and >= 0 (0 marks a missing point)")
    if not bool((weights > 0).any()):
        raise ValueError(f"signal {index}: every weight is 0; a signal needs at least one point of positive weight")
    return weights


def _check_consistent(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> None:
    """Every item shares the first one's ``C``, ``D``, dtype and device."""
    coords0, values0, _ = items[0]
    for index, (coords, values, _) in enumerate(items[1:], start=1):
        if coords.shape[1] != coords0.shape[1]:
            raise ValueError(
                f"signal {index} has coords with C={coords.shape[1]} but signal 0 has C={coords0.shape[1]}; "
                "every signal of a batch needs the same coordinate dimension"
            )
        if values.shape[1] != values0.shape[1]:
            raise ValueError(
                f"signal {index} has values with D={values.shape[1]} but signal 0 has D={values0.shape[1]}; "
                "every signal of a batch needs the same number of channels"
            )
    dtypes = {t.dtype for coords, values, _ in items for t in (coords, values)}
    if len(dtypes) > 1:
        names = ", ".join(sorted(str(d) for d in dtypes))
        raise ValueError(f"signals mix dtypes ({names}); convert coords and values to one dtype (the model's)")
    devices = {t.device for coords, values, _ in items for t in (coords, values)}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"signals are on different devices ({names}); move them to one device (the model's)")


def _pad(
    item: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One signal padded to ``length`` points with copies of its first point, weight 0."""
    coords, values, weights = item
    if weights is None:
        weights = torch.ones(coords.shape[0], dtype=values.dtype, device=values.device)
    missing = length - int(coords.shape[0])
    if missing == 0:
        return coords, values, weights
    return (
        torch.cat([coords, coords[:1].expand(missing, -1)]),
        torch.cat([values, values[:1].expand(missing, -1)]),
        torch.cat([weights, weights.new_zeros(missing)]),
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"Tensor{tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of {len(obj)}"
    return type(obj).__name__
