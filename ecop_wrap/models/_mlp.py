"""Small INR architectures users would otherwise rewrite.

Both are stacks of ``nn.Linear`` layers with parameter-free activations, so the torch.func backend adapts a
batch of signals with one batched matmul per layer.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from ._init_kwargs import RecordsInitKwargs

__all__ = ["FourierFeatureMLP", "SineLayer", "Siren"]


class SineLayer(nn.Module):
    """``sin(w0 * (W x + b))`` with SIREN's initialisation.

    The first layer draws weights from ``U(-1/in, 1/in)``; later layers from ``U(-sqrt(6/in)/w0, sqrt(6/in)/w0)``
    so that pre-activations keep unit-order spread through depth (Sitzmann et al., 2020).
    """

    def __init__(self, in_features: int, out_features: int, *, w0: float = 30.0, is_first: bool = False) -> None:
        super().__init__()
        self.w0 = float(w0)
        self.linear = nn.Linear(in_features, out_features)
        bound = 1.0 / in_features if is_first else math.sqrt(6.0 / in_features) / self.w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            self.linear.bias.uniform_(-1.0 / math.sqrt(in_features), 1.0 / math.sqrt(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


def siren_output_layer(hidden_features: int, out_features: int, w0: float) -> nn.Linear:
    """SIREN's linear output layer: weights ``U(-sqrt(6/in)/w0, sqrt(6/in)/w0)``, zero bias."""
    layer = nn.Linear(hidden_features, out_features)
    bound = math.sqrt(6.0 / hidden_features) / w0
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
        layer.bias.zero_()
    return layer


def sine_layers(widths: list[int], w0: float, first_w0: float | None) -> list[SineLayer]:
    """SIREN's sine layers between consecutive ``widths``: the first at ``first_w0`` (``w0`` when None) with the
    first layer's initialisation, the others at ``w0``."""
    return [
        SineLayer(a, b, w0=first_w0 if i == 0 and first_w0 is not None else w0, is_first=i == 0)
        for i, (a, b) in enumerate(itertools.pairwise(widths))
    ]


def checked_first_w0(first_w0: float | None) -> float | None:
    """``first_w0`` as a float (None stays None: the first layer takes ``w0``); a clear error if not positive."""
    if first_w0 is None:
        return None
    if isinstance(first_w0, bool) or not isinstance(first_w0, int | float) or not first_w0 > 0:
        raise ValueError(
            f"first_w0 must be a positive number or None (the first layer then takes w0); got {first_w0!r}"
        )
    return float(first_w0)


class Siren(RecordsInitKwargs, nn.Module):
    """SIREN: an MLP with sine activations, ``[..., in_features] -> [..., out_features]``.

    Args:
        in_features: coordinate dimension C.
        out_features: value dimension D.
        hidden_features: width of every hidden layer (paper: 256).
        hidden_layers: number of sine layers (paper images: 5 layers in total, i.e. 4 sine layers + output).
        w0: frequency of the sine activations (paper: 30; 50 for spherical data).
        first_w0: frequency of the first sine layer only (default: ``w0``). The first layer's weights are drawn
            from ``U(-1/in, 1/in)``, so it sees frequencies up to ``first_w0 / (2 pi)`` cycles per unit of the
            coordinates: signals sampled more densely than that need it higher (SIREN fits audio on ``[-1, 1]``
            coordinates with 3000).
        output_offset: constant added to the output; 0.5 centres an untrained model on values in [0, 1].
    """

    def __init__(
        self,
        in_features: int = 2,
        out_features: int = 3,
        hidden_features: int = 256,
        hidden_layers: int = 4,
        *,
        w0: float = 30.0,
        first_w0: float | None = None,
        output_offset: float = 0.5,
    ) -> None:
        super().__init__()
        if min(in_features, out_features, hidden_features, hidden_layers) < 1:
            raise ValueError("in_features, out_features, hidden_features and hidden_layers must all be >= 1")
        first_w0 = checked_first_w0(first_w0)
        widths = [in_features] + [hidden_features] * hidden_layers
        self.layers = nn.Sequential(*sine_layers(widths, w0, first_w0))
        self.output = siren_output_layer(hidden_features, out_features, w0)
        self.output_offset = float(output_offset)
        self._record_init_kwargs(
            in_features=int(in_features),
            out_features=int(out_features),
            hidden_features=int(hidden_features),
            hidden_layers=int(hidden_layers),
            w0=float(w0),
            first_w0=first_w0,
            output_offset=self.output_offset,
        )

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.output(self.layers(coords))
        return out + self.output_offset


class FourierFeatureMLP(RecordsInitKwargs, nn.Module):
    """ReLU MLP on random Fourier features ``[cos(2 pi B x), sin(2 pi B x)]`` (Tancik et al., 2020).

    The frequency matrix ``B ~ N(0, scale^2)`` is a buffer (fixed, saved in the state dict, not adapted).

    Args:
        in_features: coordinate dimension C.
        out_features: value dimension D.
        num_frequencies: rows of B (the encoding has twice as many features).
        scale: standard deviation of B.
        hidden_features: MLP width.
        hidden_layers: number of hidden ReLU layers.
        output_offset: constant added to the output.
        generator: random generator for B (None: torch's global one). Not part of :attr:`init_kwargs`: B is in
            the state dict, so a rebuilt model gets it from there.
    """

    #: the frequency matrix B ``[num_frequencies, C]`` (a buffer).
    frequencies: torch.Tensor

    def __init__(
        self,
        in_features: int = 2,
        out_features: int = 3,
        num_frequencies: int = 64,
        scale: float = 10.0,
        hidden_features: int = 128,
        hidden_layers: int = 3,
        *,
        output_offset: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.randn(num_frequencies, in_features, generator=generator) * scale)
        widths = [2 * num_frequencies] + [hidden_features] * hidden_layers
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(widths[-1], out_features))
        self.output_offset = float(output_offset)
        self._record_init_kwargs(
            in_features=int(in_features),
            out_features=int(out_features),
            num_frequencies=int(num_frequencies),
            scale=float(scale),
            hidden_features=int(hidden_features),
            hidden_layers=int(hidden_layers),
            output_offset=self.output_offset,
        )

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        # The projection reaches hundreds of radians (scale 10); under a bf16 autocast its rounding alone would
        # be about a radian, so it stays in the coordinates' dtype (it is a tiny C x F product).
        with torch.autocast(coords.device.type, enabled=False):
            projected = 2 * math.pi * coords @ self.frequencies.T
        features = torch.cat([torch.cos(projected), torch.sin(projected)], dim=-1)
        out: torch.Tensor = self.mlp(features)
        return out + self.output_offset
