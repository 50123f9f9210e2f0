"""The dataset type shared by every loader, plus small helpers the loaders reuse.

A :class:`SignalDataset` holds ``N`` signals sampled on one shared grid: ``coords [M, C]`` and values
``[N, M, D]``, or signals of their own sizes (one grid shape or coordinate set per signal). Item ``i`` is the
context set ``(coords [M_i, C], values [M_i, D])``; :meth:`SignalDataset.batches` yields
``(coords [M, C], values [B, M, D])`` with the shared grid, or padded ``(coords [B, M_max, C],
values [B, M_max, D], weights [B, M_max])`` batches (:func:`~ecop_wrap.data.collate_signals`) for signals of
their own sizes: the forms the meta-learner accepts.
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
from .collate import collate_signals

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


def _grid_shape(shape: Sequence[int]) -> tuple[int, ...]:
    grid = tuple(int(s) for s in shape)
    if not grid or any(s < 1 for s in grid):
        raise ValueError(f"shape must be a non-empty sequence of positive sizes, got {shape!r}")
    return grid


def _is_shape_list(shape: Any) -> bool:
    """Whether ``shape`` is a list of grid shapes (one per signal) rather than one grid shape."""
    nested = [isinstance(s, Sequence) for s in shape]
    if any(nested) and not all(nested):
        raise ValueError(f"shape must be one grid shape (ints) or a list of grid shapes, got a mix: {shape!r}")
    return bool(nested) and all(nested)


def _per_signal_shapes(shape: Any, count: int) -> list[tuple[int, ...]]:
    if not _is_shape_list(shape):
        return [_grid_shape(shape)] * count
    shapes = [_grid_shape(s) for s in shape]
    if len(shapes) != count:
        raise ValueError(f"shape lists {len(shapes)} grid shapes for {count} signals; give one per signal")
    return shapes


def _per_signal_coords(
    coords: Sequence[torch.Tensor] | None, shapes: list[tuple[int, ...]], dtype: torch.dtype
) -> list[torch.Tensor]:
    if coords is None:
        return [make_grid(s, dtype=dtype) for s in shapes]
    if len(coords) != len(shapes):
        raise ValueError(f"coords lists {len(coords)} tensors for {len(shapes)} signals; give one [M_i, C] per signal")
    return [torch.as_tensor(c).to(dtype) for c in coords]


class SignalDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``N`` signals on one shared coordinate grid, or signals of their own sizes.

    A dataset is *ragged* when ``shape`` is a list of grid shapes or ``coords`` a list of tensors: every signal
    then has its own points, and :meth:`batches` pads them into weighted batches with
    :func:`~ecop_wrap.data.collate_signals`.

    Args:
        values: ``[N, M, D]`` tensor, or a list of ``[M_i, D]`` tensors (a list whose entries share a shape is
            stacked; otherwise it is kept, e.g. grayscale and colour images with different ``D``, or signals of
            different sizes).
        shape: grid shape ``S`` shared by every signal, with ``prod(S) == M``, e.g. ``(H, W)``, ``(T, H, W)``,
            ``(n_lat, n_lon)`` or ``(samples,)``; or a list of ``N`` grid shapes, one per signal (ragged), e.g.
            ``[(8, 8), (6, 10)]`` (scattered points: ``[(M_0,), (M_1,)]``); used by :meth:`to_arrays`.
        coords: ``[M, C]`` coordinates shared by every signal, or a list of ``N`` ``[M_i, C]`` tensors, one per
            signal (ragged; every signal with the same ``C``); default ``make_grid`` of each grid shape (points
            in ``[-1, 1]^len(shape)``).
        names: one label per signal (default ``"0", "1", ...``).
        metadata: free-form information about the source (units, normalisation, ...).
        dtype: of coords and values (default float32).

    Attributes:
        coords: ``[M, C]``, or (ragged) a list of ``N`` ``[M_i, C]`` tensors.
        values: ``[N, M, D]`` tensor, or a list of ``[M_i, D]`` tensors.
        shape: the shared grid shape (None when ragged; see :attr:`shapes`).
        names: one label per signal.
        metadata: free-form information about the source.
    """

    def __init__(
        self,
        values: torch.Tensor | Sequence[torch.Tensor],
        shape: Sequence[int] | Sequence[Sequence[int]],
        *,
        coords: torch.Tensor | Sequence[torch.Tensor] | None = None,
        names: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.values = _as_values(values, dtype)
        count = len(self.values)
        self.coords: torch.Tensor | list[torch.Tensor]
        self.shape: tuple[int, ...] | None
        self._shapes: list[tuple[int, ...]] | None
        if isinstance(coords, (list, tuple)) or _is_shape_list(shape):
            if isinstance(coords, torch.Tensor):
                raise ValueError("with one grid shape per signal, coords must be a list of [M_i, C] tensors (or None)")
            self.shape, self._shapes = None, _per_signal_shapes(shape, count)
            self.coords = _per_signal_coords(coords, self._shapes, dtype)
            self._check_ragged_points()
        else:
            self.shape, self._shapes = _grid_shape(shape), None  # type: ignore[arg-type]
            self.coords = make_grid(self.shape, dtype=dtype) if coords is None else torch.as_tensor(coords).to(dtype)
            self._check_points(self.shape, self.coords)
        self.names = [str(i) for i in range(count)] if names is None else [str(n) for n in names]
        if len(self.names) != count:
            raise ValueError(f"names has {len(self.names)} entries for {count} signals")
        self.metadata = dict(metadata or {})

    def _check_points(self, shape: tuple[int, ...], coords: torch.Tensor) -> None:
        points = int(np.prod(shape))
        if coords.ndim != 2 or coords.shape[0] != points:
            raise ValueError(f"coords must be [M={points}, C] for grid shape {shape}, got {tuple(coords.shape)}")
        sizes = {int(v.shape[-2]) for v in self.values}
        if sizes and sizes != {points}:
            raise ValueError(f"values must have M={points} points per signal for grid shape {shape}, got {sizes}")

    def _check_ragged_points(self) -> None:
        shapes, coords = self.shapes, self.coords
        for i, (shape, coord, value) in enumerate(zip(shapes, coords, self.values, strict=True)):
            points = int(np.prod(shape))
            if coord.ndim != 2 or coord.shape[0] != points:
                raise ValueError(
                    f"signal {i}: coords must be [M={points}, C] for grid shape {shape}, got {tuple(coord.shape)}"
                )
            if value.shape[0] != points:
                raise ValueError(f"signal {i}: values must have M={points} points for grid shape {shape}")
            if coord.shape[1] != coords[0].shape[1]:
                raise ValueError(f"signal {i} has coords with C={coord.shape[1]}, signal 0 with C={coords[0].shape[1]}")

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords [M_i, C], values [M_i, D])`` of signal ``index``."""
        coords = self.coords[index] if isinstance(self.coords, list) else self.coords
        return coords, self.values[index]

    def __repr__(self) -> str:
        if self.ragged:
            sizes = [int(np.prod(s)) for s in self.shapes]
            span = f"{min(sizes)}..{max(sizes)}" if sizes else "-"
            points = f"ragged M={span}, C={self._ragged_coord_dim()}"
            return f"{type(self).__name__}(N={len(self)}, {points}, D={self.channels})"
        return f"{type(self).__name__}(N={len(self)}, shape={self.shape}, C={self.coord_dim}, D={self.channels})"

    @property
    def ragged(self) -> bool:
        """Whether every signal has its own grid (``shape`` a list of shapes or ``coords`` a list)."""
        return self._shapes is not None

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """One grid shape per signal (all equal to :attr:`shape` unless ragged)."""
        if self._shapes is not None:
            return list(self._shapes)
        assert self.shape is not None
        return [self.shape] * len(self)

    @property
    def num_points(self) -> int | None:
        """``M``, points per signal (``None`` when the signals of a ragged dataset differ in size)."""
        if isinstance(self.coords, torch.Tensor):
            return int(self.coords.shape[0])
        sizes = {int(c.shape[0]) for c in self.coords}
        return sizes.pop() if len(sizes) == 1 else None

    @property
    def coord_dim(self) -> int:
        """``C``, coordinate dimensions."""
        if isinstance(self.coords, torch.Tensor):
            return int(self.coords.shape[1])
        if not self.coords:
            raise ValueError("an empty ragged dataset has no coordinates to take C from")
        return int(self.coords[0].shape[1])

    def _ragged_coord_dim(self) -> int | None:
        return self.coord_dim if self.coords else None

    @property
    def channels(self) -> int | None:
        """``D``, value channels (``None`` when signals differ)."""
        sizes = {int(v.shape[-1]) for v in self.values}
        return sizes.pop() if len(sizes) == 1 else None

    def stacked(self) -> torch.Tensor:
        """All values as one ``[N, M, D]`` tensor (raises ValueError if the channel counts or sizes differ)."""
        if isinstance(self.values, torch.Tensor):
            return self.values
        if self.channels is None:
            raise ValueError("signals have different channel counts D; they cannot be stacked into one batch")
        if self.num_points is None:
            raise ValueError("signals have different sizes M_i; pad them with ecop_wrap.data.collate_signals")
        return torch.stack(self.values)

    def subset(self, indices: Sequence[int]) -> SignalDataset:
        """A dataset with the signals at ``indices`` (same grid or grids, metadata copied)."""
        indices = [int(i) for i in indices]
        picked = [self.values[i] for i in indices]
        names = [self.names[i] for i in indices]
        if isinstance(self.coords, list):
            shapes = self.shapes
            return SignalDataset(
                picked,
                [shapes[i] for i in indices],
                coords=[self.coords[i] for i in indices],
                names=names,
                metadata=self.metadata,
                dtype=self.coords[0].dtype if self.coords else torch.float32,
            )
        assert self.shape is not None
        return SignalDataset(
            picked if picked else torch.empty(0, self.coords.shape[0], self.channels or 1),
            self.shape,
            coords=self.coords,
            names=names,
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
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Iterate over batches: sharing the grid, or padded when the dataset is ragged.

        Args:
            batch_size: signals per batch ``B``.
            seed: seed of the shuffling order (each epoch draws a new order from one generator).
            shuffle: shuffle the order each epoch; otherwise dataset order.
            drop_last: skip a last batch smaller than ``batch_size``.
            infinite: cycle over epochs forever.

        Yields:
            ``(coords [M, C], values [B, M, D])`` on a shared grid; for a ragged dataset
            ``(coords [B, M_max, C], values [B, M_max, D], weights [B, M_max])`` from
            :func:`~ecop_wrap.data.collate_signals` (weight 0 on the padding, even when a batch's signals happen
            to have one size).
        """
        batch_size = check_int("batch_size", batch_size, 1)
        generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
        count = len(self)
        if count == 0 or (drop_last and batch_size > count):
            raise ValueError(f"batch_size={batch_size} gives no batch from {count} signals (drop_last={drop_last})")
        data = None
        if self.ragged:
            if self.channels is None:
                raise ValueError("signals have different channel counts D; they cannot share a padded batch")
        else:
            data = self.stacked()
        while True:
            order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
            stop = count - count % batch_size if drop_last else count
            for start in range(0, stop, batch_size):
                picked = order[start : start + batch_size]
                if data is None:
                    yield collate_signals([self[int(i)] for i in picked])
                else:
                    yield self.coords, data[picked]  # type: ignore[misc]
            if not infinite:
                return

    def to_arrays(self, values: torch.Tensor, index: int | None = None) -> torch.Tensor:
        """Reshape ``[..., M, D]`` values (e.g. a batch or a reconstruction) to ``[..., *shape, D]``.

        Args:
            values: ``[..., M, D]``; for signal ``index`` of a ragged dataset ``[..., M_i, D]``, or a padded
                row ``[..., M_max, D]`` of a :func:`~ecop_wrap.data.collate_signals` batch (cut to its
                ``M_i`` points).
            index: the signal whose grid shape to use (needed when the dataset is ragged).
        """
        if index is None:
            if self.shape is None:
                raise ValueError("a ragged dataset has one grid shape per signal; pass index= (the signal's)")
            return signal_to_array(values, self.shape)
        shape = self.shapes[index]
        return signal_to_array(values[..., : int(np.prod(shape)), :], shape)
