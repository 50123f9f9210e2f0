"""The models a method can start from, by name (:data:`MODELS`), and :func:`build_model`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ecop_wrap.models import HashGridINR, ModulatedSiren, NeRV, Siren

from .config import RunConfig
from .splits import Splits


def _output_offset(splits: Splits) -> float:
    """The models' output bias: 0.5 for signals in [0, 1], 0 for audio in [-1, 1] and signed distances."""
    return 0.0 if splits.modality in ("audio", "sdf") else 0.5


def _coordinate_range(splits: Splits) -> tuple[float, float]:
    """What a grid (hash tables, latent codes) spans: ``[-1, 1]`` (the models' default), stretched to the data's
    coordinates where they reach beyond it (audio's reach +-coord_scale, 12.5 for 0.25 s)."""
    return min(-1.0, float(splits.coords.min())), max(1.0, float(splits.coords.max()))


def _siren(config: RunConfig, splits: Splits) -> nn.Module:
    return Siren(
        splits.coords.shape[1],
        splits.train.channels,
        config.width,
        config.depth,
        w0=config.w0_for(splits.modality),
        first_w0=config.first_w0,
        output_offset=_output_offset(splits),
    )


def _modulated(config: RunConfig, splits: Splits) -> nn.Module:
    return ModulatedSiren(
        splits.coords.shape[1],
        splits.train.channels,
        config.width,
        config.depth,
        latent_dim=config.latent_dim,
        latent_grid=(config.latent_grid,) * splits.coords.shape[1] if config.latent_grid else None,
        # the grid spans the data's coordinates (audio's reach +-coord_scale, not +-1)
        latent_bounds=_coordinate_range(splits),
        w0=config.w0_for(splits.modality),
        first_w0=config.first_w0,
        output_offset=_output_offset(splits),
    )


def _nerv(config: RunConfig, splits: Splits) -> nn.Module:
    if splits.modality != "video":
        raise ValueError("the nerv_* methods decode video frames: run them with --video")
    _, height, width = splits.grid
    return NeRV(
        (splits.train.channels, height, width),
        blocks=config.nerv_blocks,
        channels=config.nerv_channels,
        hidden_features=config.nerv_width,
        hidden_layers=1,
        activation=config.nerv_activation,
    )


def _hashgrid(config: RunConfig, splits: Splits) -> nn.Module:
    return HashGridINR(
        splits.coords.shape[1],
        splits.train.channels,
        levels=config.hash_levels,
        log2_table_size=config.hash_log2_table,
        base_resolution=4,
        max_resolution=config.hash_max_resolution or max(max(splits.grid), 5),
        hidden_features=config.hash_width,
        hidden_layers=config.hash_depth,
        output_offset=_output_offset(splits),
        bounds=_coordinate_range(splits),
    )


@dataclass(frozen=True)
class ModelKind:
    """How a method's model is built, and on which layout of the data it is trained and tested.

    Attributes:
        build: ``(config, splits) -> model``; ``splits`` is the pixel layout for every kind.
        frames: a context point is a whole frame (the model sees :func:`splits.frame_view`; ``--video`` only).
    """

    build: Callable[[RunConfig, Splits], nn.Module]
    frames: bool = False


MODELS: dict[str, ModelKind] = {
    "siren": ModelKind(_siren),
    "modulated": ModelKind(_modulated),  # ModulatedSiren with --latent-dim (the *_latent methods)
    "nerv": ModelKind(_nerv, frames=True),
    "hashgrid": ModelKind(_hashgrid),
}


def build_model(config: RunConfig, splits: Splits, kind: str = "siren") -> nn.Module:
    """The SIREN every method starts from (identical weights: seeded by ``--seed``), or the row's other model.

    ``splits`` is the pixel layout for every kind (a NeRV's frame shape is read from its grid).
    """
    torch.manual_seed(config.seed)
    return MODELS[kind].build(config, splits)


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The model's class, its constructor settings as ``repr`` shows them, and its parameter count."""
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "repr": " ".join(repr(model).split())[:400],
    }
