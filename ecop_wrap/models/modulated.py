"""A SIREN with per-signal shift modulations computed from one latent vector, or from a grid of latent vectors
interpolated at each coordinate (functa and spatial functa)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from ._bounds import checked_bounds, warn_once_if_outside
from ._init_kwargs import RecordsInitKwargs
from ._mlp import SineLayer, checked_first_w0, sine_layers, siren_output_layer

__all__ = ["ModulatedSiren"]


class ModulatedSiren(RecordsInitKwargs, nn.Module):
    """SIREN whose hidden layers are shifted per signal: ``h_l = sin(w0 (W_l h_{l-1} + b_l + s_l))``.

    All shifts ``s_l`` come from one parameter ``latent`` ``[latent_dim]`` through a shared linear map
    (``modulation``), and ``latent`` starts at zero, so the zero code is the meta-learned "mean" signal.
    Adapting only the latent (``ContextPruningMetaLearner(model, adapt=["latent"])``) fits a compact code per
    signal; the weights are meta-learned and shared.

    With ``latent_grid`` (spatial functa), ``latent`` is a grid ``[*latent_grid, latent_dim]`` of codes spread
    evenly over ``latent_bounds`` (default ``[-1, 1]``) along each coordinate axis, and each point's code is the
    multilinear interpolation of its ``2^C`` neighbouring codes: a signal's code then says what happens where,
    which one global vector cannot for long or detailed signals (0.25 s of speech).

    Args:
        in_features: coordinate dimension C.
        out_features: value dimension D.
        hidden_features: width of every hidden layer.
        hidden_layers: number of modulated sine layers.
        latent_dim: size of the per-signal latent vector (of each grid code, with ``latent_grid``).
        latent_grid: codes per coordinate axis (``in_features`` sizes, each >= 2), or None for one global code.
            Coordinates outside ``latent_bounds`` take the nearest edge's codes.
        latent_bounds: ``(low, high)``, the interval of every coordinate axis that the grid spans. Give the
            data's coordinate range when it is not ``[-1, 1]`` (the audio datasets' ``coord_scale``): codes past
            it are never used.
        w0: frequency of the sine activations.
        first_w0: frequency of the first sine layer only (default: ``w0``; see :class:`~ecop_wrap.Siren`).
        output_offset: constant added to the output; 0.5 centres an untrained model on values in [0, 1].
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int,
        hidden_layers: int,
        *,
        latent_dim: int,
        latent_grid: Sequence[int] | None = None,
        latent_bounds: Sequence[float] = (-1.0, 1.0),
        w0: float = 30.0,
        first_w0: float | None = None,
        output_offset: float = 0.5,
    ) -> None:
        super().__init__()
        if min(in_features, out_features, hidden_features, hidden_layers, latent_dim) < 1:
            raise ValueError(
                "in_features, out_features, hidden_features, hidden_layers and latent_dim must all be >= 1"
            )
        self.latent_grid = _checked_grid(latent_grid, in_features)
        self.latent_bounds = checked_bounds("latent_bounds", latent_bounds)
        first_w0 = checked_first_w0(first_w0)
        self.hidden_features = hidden_features
        self.latent = nn.Parameter(torch.zeros(*(self.latent_grid or ()), latent_dim))
        self.modulation = nn.Linear(latent_dim, hidden_features * hidden_layers)
        with torch.no_grad():
            self.modulation.bias.zero_()
        widths = [in_features] + [hidden_features] * hidden_layers
        self.layers = nn.ModuleList(sine_layers(widths, w0, first_w0))
        self.output = siren_output_layer(hidden_features, out_features, w0)
        self.output_offset = float(output_offset)
        self._record_init_kwargs(
            in_features=int(in_features),
            out_features=int(out_features),
            hidden_features=int(hidden_features),
            hidden_layers=int(hidden_layers),
            latent_dim=int(latent_dim),
            latent_grid=list(self.latent_grid) if self.latent_grid is not None else None,
            latent_bounds=list(self.latent_bounds),
            w0=float(w0),
            first_w0=first_w0,
            output_offset=self.output_offset,
        )

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """``[..., M, C] -> [..., M, D]``; a latent with a leading batch (``[B, latent_dim]``, or
        ``[B, *latent_grid, latent_dim]``) shifts ``[B, M, .]``."""
        shifts: torch.Tensor = self.modulation(self._codes(coords))
        if shifts.ndim > 1 and self.latent_grid is None:
            shifts = shifts.unsqueeze(-2)
        h = coords
        for layer, shift in zip(self.layers, torch.split(shifts, self.hidden_features, dim=-1), strict=True):
            assert isinstance(layer, SineLayer)
            h = torch.sin(layer.w0 * (layer.linear(h) + shift))
        out: torch.Tensor = self.output(h) + self.output_offset
        return out

    def _codes(self, coords: torch.Tensor) -> torch.Tensor:
        """The latent (no grid), or each point's interpolated code ``[..., M, latent_dim]``."""
        if self.latent_grid is None:
            return self.latent
        warn_once_if_outside(self, coords, self.latent_bounds, "latent_bounds", depth=1)
        return interpolate_grid(self.latent, self.latent_grid, coords, self.latent_bounds)


def interpolate_grid(
    grid: torch.Tensor, sizes: Sequence[int], coords: torch.Tensor, bounds: tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    """Multilinear interpolation of a grid of vectors over ``[low, high]^C`` at coordinates.

    Args:
        grid: ``[*batch, *sizes, F]`` (``batch`` empty or one dimension B).
        sizes: the grid's C sizes (each >= 2).
        coords: ``[M, C]`` or ``[B, M, C]`` (clamped to ``bounds``).
        bounds: ``(low, high)``: the first and last grid nodes' coordinate on every axis.

    Returns:
        ``[*batch, M, F]`` (``[B, M, F]`` when either is batched). Built from gathers, products and sums only,
        so gradients of any order flow to ``grid``.
    """
    dims = len(sizes)
    flat = grid.reshape(*grid.shape[: grid.ndim - dims - 1], math.prod(sizes), grid.shape[-1])
    size = torch.tensor(sizes, dtype=coords.dtype, device=coords.device)
    low_bound, high_bound = bounds
    position = (coords.clamp(low_bound, high_bound) - low_bound) * (1.0 / (high_bound - low_bound)) * (size - 1)
    low = torch.minimum(position.floor(), size - 2)
    frac = position - low
    low = low.long()
    strides = torch.tensor([math.prod(sizes[d + 1 :]) for d in range(dims)], device=coords.device)
    codes: torch.Tensor | None = None
    for corner in itertools.product((0, 1), repeat=dims):
        index = ((low + torch.tensor(corner, device=coords.device)) * strides).sum(dim=-1)
        weight = frac[..., 0] if corner[0] else 1.0 - frac[..., 0]
        for d in range(1, dims):
            weight = weight * (frac[..., d] if corner[d] else 1.0 - frac[..., d])
        term = weight.unsqueeze(-1) * _gather_rows(flat, index)
        codes = term if codes is None else codes + term
    assert codes is not None
    return codes


def _gather_rows(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``flat [*batch, P, F]`` rows at ``index`` ``[M]`` or ``[B, M]``: ``[*batch, M, F]``."""
    if index.ndim == 1:
        return flat.index_select(-2, index)
    if flat.ndim == 2:  # one grid, per-signal points
        return flat[index]
    return torch.gather(flat, -2, index.unsqueeze(-1).expand(*index.shape, flat.shape[-1]))


def _checked_grid(latent_grid: Sequence[int] | None, in_features: int) -> tuple[int, ...] | None:
    if latent_grid is None:
        return None
    if not isinstance(latent_grid, Sequence):
        raise TypeError(f"latent_grid must be a sequence of {in_features} ints (one per coordinate axis) or None")
    sizes = tuple(latent_grid)
    if len(sizes) != in_features or not all(isinstance(n, int) and n >= 2 for n in sizes):
        raise ValueError(
            f"latent_grid must give {in_features} sizes (one per coordinate axis), each an int >= 2; got "
            f"{latent_grid!r}"
        )
    return sizes
