"""A SIREN with per-signal shift modulations computed from one latent vector (functa-style)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ._init_kwargs import RecordsInitKwargs
from ._mlp import SineLayer, siren_output_layer

__all__ = ["ModulatedSiren"]


class ModulatedSiren(RecordsInitKwargs, nn.Module):
    """SIREN whose hidden layers are shifted per signal: ``h_l = sin(w0 (W_l h_{l-1} + b_l + s_l))``.

    All shifts ``s_l`` come from one parameter ``latent`` ``[latent_dim]`` through a shared linear map
    (``modulation``), and ``latent`` starts at zero, so the zero code is the meta-learned "mean" signal.
    Adapting only the latent (``ContextPruningMetaLearner(model, adapt=["latent"])``) fits a compact code per
    signal; the weights are meta-learned and shared.

    Args:
        in_features: coordinate dimension C.
        out_features: value dimension D.
        hidden_features: width of every hidden layer.
        hidden_layers: number of modulated sine layers.
        latent_dim: size of the per-signal latent vector.
        w0: frequency of the sine activations.
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
        w0: float = 30.0,
        output_offset: float = 0.5,
    ) -> None:
        super().__init__()
        if min(in_features, out_features, hidden_features, hidden_layers, latent_dim) < 1:
            raise ValueError(
                "in_features, out_features, hidden_features, hidden_layers and latent_dim must all be >= 1"
            )
        self.hidden_features = hidden_features
        self.latent = nn.Parameter(torch.zeros(latent_dim))
        self.modulation = nn.Linear(latent_dim, hidden_features * hidden_layers)
        with torch.no_grad():
            self.modulation.bias.zero_()
        widths = [in_features] + [hidden_features] * hidden_layers
        self.layers = nn.ModuleList(
            SineLayer(a, b, w0=w0, is_first=i == 0) for i, (a, b) in enumerate(itertools.pairwise(widths))
        )
        self.output = siren_output_layer(hidden_features, out_features, w0)
        self.output_offset = float(output_offset)
        self._record_init_kwargs(
            in_features=int(in_features),
            out_features=int(out_features),
            hidden_features=int(hidden_features),
            hidden_layers=int(hidden_layers),
            latent_dim=int(latent_dim),
            w0=float(w0),
            output_offset=self.output_offset,
        )

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """``[..., M, C] -> [..., M, D]``; a latent with a leading batch ``[B, latent_dim]`` shifts ``[B, M, .]``."""
        shifts: torch.Tensor = self.modulation(self.latent)
        if shifts.ndim > 1:
            shifts = shifts.unsqueeze(-2)
        h = coords
        for layer, shift in zip(self.layers, torch.split(shifts, self.hidden_features, dim=-1), strict=True):
            assert isinstance(layer, SineLayer)
            h = torch.sin(layer.w0 * (layer.linear(h) + shift))
        out: torch.Tensor = self.output(h) + self.output_offset
        return out
