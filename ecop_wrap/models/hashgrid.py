"""A multiresolution hash-grid INR (Instant-NGP, Muller et al. 2022) in plain PyTorch.

Every level ``l`` holds a trainable table of feature vectors at the vertices of a grid of resolution ``N_l``;
levels whose grid has more vertices than the table size share table entries through a spatial hash. A point's
encoding is, per level, the multilinear interpolation of the ``2^C`` surrounding vertices' features; the
concatenated levels go through a small ReLU MLP. Tables and MLP are ordinary ``nn.Parameter`` tensors, gathered
with ``torch.index_select``, so the model is differentiable to any order and runs under ``torch.func.vmap``
with per-signal tables.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ._bounds import checked_bounds, warn_once_if_outside
from ._init_kwargs import RecordsInitKwargs

__all__ = ["HASH_PRIMES", "HashGridINR"]

#: multipliers of the spatial hash, one per coordinate dimension (the first is 1, as in Instant-NGP).
HASH_PRIMES: tuple[int, ...] = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


class HashGridINR(RecordsInitKwargs, nn.Module):
    """Hash-grid encoding + ReLU MLP: ``[..., in_features]`` in ``bounds`` -> ``[..., out_features]``.

    Level ``l`` has resolution ``N_l = floor(base_resolution * b^l)`` with ``b`` chosen so that the last level
    has ``max_resolution``. Its table has ``min((N_l + 1)^C, 2^log2_table_size)`` entries: the vertices are
    indexed densely when they fit, otherwise by the hash ``XOR_i(v_i * prime_i) mod 2^log2_table_size``.
    Coordinates are mapped from ``bounds`` (default ``[-1, 1]``) to ``[0, 1]`` and clamped there.

    Args:
        in_features: coordinate dimension C (any C >= 1; the cost grows as ``2^C``).
        out_features: value dimension D.
        levels: number of resolution levels.
        features_per_level: F, features stored per vertex.
        log2_table_size: log2 of the largest table (hash collisions start above it).
        base_resolution: resolution of the coarsest level.
        max_resolution: resolution of the finest level (>= base_resolution).
        hidden_features: width of the MLP's hidden layers.
        hidden_layers: number of hidden ReLU layers (0: a linear read-out of the encoding).
        output_offset: constant added to the output; 0.5 centres an untrained model on values in ``[0, 1]``.
        init_scale: tables start uniform in ``[-init_scale, init_scale]`` (Instant-NGP: 1e-4).
        bounds: ``(low, high)``, the interval of every coordinate axis the grids span (Instant-NGP's bounding
            box). Give the data's coordinate range when it is not ``[-1, 1]`` (the audio datasets'
            ``coord_scale``); the first call warns when most coordinates lie outside it.

    Shapes:
        ``[..., C]`` -> ``[..., D]``.
    """

    corners: torch.Tensor
    primes: torch.Tensor
    ecop_defaults: ClassVar[dict[str, Any]] = {"inner_lr": 1.0, "outer_lr": 1e-2}
    """Settings a learner takes for this model when it is given neither them nor a config: plain SGD on hash
    tables needs large steps, each entry sees few points (inner lr picked on validation crops: 0.1 gave 18.29 dB,
    1.0 18.54, 3.0 13.89, 10 diverged; at the library's 1e-2 sixteen steps move a crop from 12.0 to 13.6 dB), and
    so does the outer lr: in 100 steps at the other defaults, validation PSNR (unscaled test steps) 18.32 ->
    18.47 dB at 3e-4, -> 19.93 at 3e-3, -> 20.66 at 1e-2 (``diagnose_defaults_hashgrid_*.json``; 1e-2 is also
    what the hash-grid ECoP row picked on validation)."""

    def __init__(
        self,
        in_features: int = 2,
        out_features: int = 3,
        *,
        levels: int = 8,
        features_per_level: int = 2,
        log2_table_size: int = 12,
        base_resolution: int = 4,
        max_resolution: int = 64,
        hidden_features: int = 64,
        hidden_layers: int = 2,
        output_offset: float = 0.5,
        init_scale: float = 1e-4,
        bounds: Sequence[float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        self.in_features = _check_int("in_features", in_features, 1)
        if in_features > len(HASH_PRIMES):
            raise ValueError(f"in_features must be at most {len(HASH_PRIMES)} (one hash prime each), got {in_features}")
        self.out_features = _check_int("out_features", out_features, 1)
        self.levels = _check_int("levels", levels, 1)
        self.features_per_level = _check_int("features_per_level", features_per_level, 1)
        self.log2_table_size = _check_int("log2_table_size", log2_table_size, 1)
        if log2_table_size > 30:
            raise ValueError(f"log2_table_size must be at most 30, got {log2_table_size}")
        _check_int("base_resolution", base_resolution, 1)
        _check_int("max_resolution", max_resolution, base_resolution)
        _check_int("hidden_features", hidden_features, 1)
        _check_int("hidden_layers", hidden_layers, 0)
        if (
            isinstance(init_scale, bool)
            or not isinstance(init_scale, (int, float))
            or not math.isfinite(init_scale)
            or init_scale < 0
        ):
            raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
        self.bounds = checked_bounds("bounds", bounds)
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(levels - 1, 1))
        self.resolutions = [math.floor(base_resolution * growth**level + 1e-9) for level in range(levels)]
        table_size = 2**log2_table_size
        self.hashed = [(n + 1) ** in_features > table_size for n in self.resolutions]
        sizes = [
            table_size if hashed else (n + 1) ** in_features
            for n, hashed in zip(self.resolutions, self.hashed, strict=True)
        ]
        # One attribute per level (table_0, table_1, ...) rather than an nn.ParameterList: higher's patched
        # modules do not see fast weights held in a ParameterList and would silently use the initial tables.
        for level, size in enumerate(sizes):
            table = torch.empty(size, features_per_level).uniform_(-init_scale, init_scale)
            self.register_parameter(f"table_{level}", nn.Parameter(table))
        corners = torch.tensor(list(itertools.product((0, 1), repeat=in_features)), dtype=torch.long)
        self.register_buffer("corners", corners, persistent=False)  # [2^C, C]
        self.register_buffer("primes", torch.tensor(HASH_PRIMES[:in_features], dtype=torch.long), persistent=False)
        widths = [levels * features_per_level] + [hidden_features] * hidden_layers
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(widths[-1], out_features))
        self.output_offset = float(output_offset)
        self._record_init_kwargs(
            in_features=in_features,
            out_features=out_features,
            levels=levels,
            features_per_level=features_per_level,
            log2_table_size=log2_table_size,
            base_resolution=base_resolution,
            max_resolution=max_resolution,
            hidden_features=hidden_features,
            hidden_layers=hidden_layers,
            output_offset=self.output_offset,
            init_scale=float(init_scale),
            bounds=list(self.bounds),
        )

    def table(self, level: int) -> torch.Tensor:
        """The ``[entries, F]`` feature table of ``level`` (the parameter ``table_<level>``)."""
        table: torch.Tensor = getattr(self, f"table_{level}")
        return table

    def _vertex_index(self, vertices: torch.Tensor, level: int) -> torch.Tensor:
        """Table rows of integer grid vertices ``[N, 2^C, C] -> [N, 2^C]``."""
        if self.hashed[level]:
            products = vertices * self.primes
            index = products[..., 0]
            for dim in range(1, self.in_features):
                index = torch.bitwise_xor(index, products[..., dim])
            return torch.bitwise_and(index, 2**self.log2_table_size - 1)
        strides = (self.resolutions[level] + 1) ** torch.arange(self.in_features, device=vertices.device)
        return (vertices * strides).sum(-1)

    def _encode_level(self, unit: torch.Tensor, level: int) -> torch.Tensor:
        """Interpolated features of points ``unit [N, C]`` in ``[0, 1]`` at one level, ``[N, F]``."""
        resolution = self.resolutions[level]
        position = unit * resolution
        lower = position.detach().floor().clamp(max=resolution - 1)
        fraction = position - lower  # [N, C]
        vertices = lower.long().unsqueeze(1) + self.corners  # [N, 2^C, C]
        upper = self.corners.bool()  # [2^C, C]: the corner takes the upper vertex along that axis
        weights = torch.where(upper, fraction.unsqueeze(1), 1 - fraction.unsqueeze(1)).prod(-1)  # [N, 2^C]
        rows = self._vertex_index(vertices, level)
        table = self.table(level)
        features = torch.index_select(table, 0, rows.reshape(-1)).reshape(*rows.shape, table.shape[-1])
        return (weights.unsqueeze(-1).to(features.dtype) * features).sum(1)

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """The multiresolution encoding ``[N, C]`` in ``bounds`` -> ``[N, levels * F]``."""
        low, high = self.bounds
        unit = ((coords - low) / (high - low)).clamp(0.0, 1.0)
        return torch.cat([self._encode_level(unit, level) for level in range(self.levels)], dim=-1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Values at ``coords [..., C]``, ``[..., D]``."""
        if coords.shape[-1] != self.in_features:
            raise ValueError(f"coords must be [..., C={self.in_features}], got shape {tuple(coords.shape)}")
        warn_once_if_outside(self, coords, self.bounds, "bounds", depth=0)
        leading = coords.shape[:-1]
        encoded = self.encode(coords.reshape(-1, self.in_features))
        values: torch.Tensor = self.mlp(encoded)
        return values.reshape(*leading, self.out_features) + self.output_offset
