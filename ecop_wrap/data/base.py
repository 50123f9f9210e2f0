"""The dataset type shared by every loader, plus small helpers the loaders reuse.

A :class:`SignalDataset` holds ``N`` signals sampled on one shared grid: ``coords [M, C]`` and values
``[N, M, D]``. Item ``i`` is the context set ``(coords [M, C], values [M, D])``; :meth:`SignalDataset.batches`
yields ``(coords [M, C], values [B, M, D])`` with the shared grid, the form the meta-learner accepts.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._src.validation import check_int
from ..signals import make_grid, signal_to_array

__all__ = ["SignalDataset", "as_generator", "crop_square", "import_optional", "resize_images"]


def import_optional(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or explain which extra provides it.

    Args:
        module: importable module name, e.g. ``"PIL.Image"`` or ``"av"``.
        extra: the ``ecop-wrap`` extra that installs it, e.g. ``"images"``.

    Raises:
        ImportError: naming the exact ``pip install 'ecop-wrap[extra]'`` command.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"this loader needs the optional package providing '{module}'; "
            f"install it with: pip install 'ecop-wrap[{extra}]'"
        ) from err


def as_generator(seed: int) -> np.random.Generator:
    """A numpy generator for ``seed`` (validated as a non-negative int)."""
    return np.random.default_rng(check_int("seed", seed, 0))


def crop_square(image: np.ndarray) -> np.ndarray:
    """Central square of an ``[H, W, ...]`` array, side ``min(H, W)``."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def resize_images(images: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of float images.

    Args:
        images: ``[H, W, D]`` or ``[N, H, W, D]`` float values.
        height, width: output size.

    Returns:
        float32 tensor ``[height, width, D]`` or ``[N, height, width, D]``.
    """
    tensor = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    tensor = tensor.to(torch.float32)
    single = tensor.ndim == 3
    batch = tensor[None] if single else tensor
    if tuple(batch.shape[1:3]) != (height, width):
        batch = batch.permute(0, 3, 1, 2)
        batch = F.interpolate(batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        batch = batch.permute(0, 2, 3, 1)
    return batch[0] if single else batch


def _as_values(values: torch.Tensor | Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(values, torch.Tensor):
        if values.ndim != 3:
            raise ValueError(f"values must be [N, M, D], got shape {tuple(values.shape)}")
        return values.to(dtype)
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise TypeError(f"values must be a tensor [N, M, D] or a list of [M, D] tensors, got {type(values).__name__}")
    items = [torch.as_tensor(v).to(dtype) for v in values]
    if any(v.ndim != 2 for v in items):
        raise ValueError("every entry of a values list must be a [M, D] tensor")
    if items and len({v.shape for v in items}) == 1:
        return torch.stack(items)
    return items


class SignalDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``N`` signals on one shared coordinate grid.

    Args:
        values: ``[N, M, D]`` tensor, or a list of ``[M, D]`` tensors (a list whose entries share a shape is
            stacked; otherwise it is kept, e.g. grayscale and colour images with different ``D``).
        shape: grid shape ``S`` with ``prod(S) == M``, e.g. ``(H, W)``, ``(T, H, W)``, ``(n_lat, n_lon)`` or
            ``(samples,)``; used by :meth:`to_arrays`.
        coords: ``[M, C]`` coordinates; default ``make_grid(shape)`` (points in ``[-1, 1]^len(shape)``).
        names: one label per signal (default ``"0", "1", ...``).
        metadata: free-form information about the source (units, normalisation, ...).
        dtype: of coords and values (default float32).

    Attributes:
        coords: ``[M, C]``.
        values: ``[N, M, D]`` tensor, or a list of ``[M, D]`` tensors.
        shape: the grid shape.
        names: one label per signal.
        metadata: free-form information about the source.
    """

    def __init__(
        self,
        values: torch.Tensor | Sequence[torch.Tensor],
        shape: Sequence[int],
        *,
        coords: torch.Tensor | None = None,
        names: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be a non-empty sequence of positive sizes, got {shape!r}")
        self.values = _as_values(values, dtype)
        self.coords = make_grid(self.shape, dtype=dtype) if coords is None else torch.as_tensor(coords).to(dtype)
        self._check_points()
        count = len(self.values)
        self.names = [str(i) for i in range(count)] if names is None else [str(n) for n in names]
        if len(self.names) != count:
            raise ValueError(f"names has {len(self.names)} entries for {count} signals")
        self.metadata = dict(metadata or {})

    def _check_points(self) -> None:
        points = int(np.prod(self.shape))
        if self.coords.ndim != 2 or self.coords.shape[0] != points:
            raise ValueError(
                f"coords must be [M={points}, C] for grid shape {self.shape}, got {tuple(self.coords.shape)}"
            )
        sizes = {int(v.shape[-2]) for v in self.values}
        if sizes and sizes != {points}:
            raise ValueError(f"values must have M={points} points per signal for grid shape {self.shape}, got {sizes}")

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords [M, C], values [M, D])`` of signal ``index``."""
        return self.coords, self.values[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(N={len(self)}, shape={self.shape}, C={self.coord_dim}, D={self.channels})"

    @property
    def num_points(self) -> int:
        """``M``, points per signal."""
        return int(self.coords.shape[0])

    @property
    def coord_dim(self) -> int:
        """``C``, coordinate dimensions."""
        return int(self.coords.shape[1])

    @property
    def channels(self) -> int | None:
        """``D``, value channels (``None`` when signals differ)."""
        sizes = {int(v.shape[-1]) for v in self.values}
        return sizes.pop() if len(sizes) == 1 else None

    def stacked(self) -> torch.Tensor:
        """All values as one ``[N, M, D]`` tensor (raises ValueError if the channel counts differ)."""
        if isinstance(self.values, torch.Tensor):
            return self.values
        if self.channels is None:
            raise ValueError("signals have different channel counts D; they cannot be stacked into one batch")
        return torch.stack(self.values)

    def subset(self, indices: Sequence[int]) -> SignalDataset:
        """A dataset with the signals at ``indices`` (same grid, metadata copied)."""
        indices = [int(i) for i in indices]
        picked = [self.values[i] for i in indices]
        return SignalDataset(
            picked if picked else torch.empty(0, self.num_points, self.channels or 1),
            self.shape,
            coords=self.coords,
            names=[self.names[i] for i in indices],
            metadata=self.metadata,
            dtype=self.coords.dtype,
        )

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        infinite: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over batches sharing the grid.

        Args:
            batch_size: signals per batch ``B``.
            seed: seed of the shuffling order (each epoch draws a new order from one generator).
            shuffle: shuffle the order each epoch; otherwise dataset order.
            drop_last: skip a last batch smaller than ``batch_size``.
            infinite: cycle over epochs forever.

        Yields:
            ``(coords [M, C], values [B, M, D])``.
        """
        batch_size = check_int("batch_size", batch_size, 1)
        generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
        count = len(self)
        if count == 0 or (drop_last and batch_size > count):
            raise ValueError(f"batch_size={batch_size} gives no batch from {count} signals (drop_last={drop_last})")
        data = self.stacked()
        while True:
            order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
            stop = count - count % batch_size if drop_last else count
            for start in range(0, stop, batch_size):
                yield self.coords, data[order[start : start + batch_size]]
            if not infinite:
                return

    def to_arrays(self, values: torch.Tensor) -> torch.Tensor:
        """Reshape ``[..., M, D]`` values (e.g. a batch or a reconstruction) to ``[..., *shape, D]``."""
        return signal_to_array(values, self.shape)
