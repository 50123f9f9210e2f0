"""NeRV (Chen et al., NeurIPS 2021): a convolutional decoder from a frame's time to the whole frame.

Here a context point is a frame: the coordinate is the frame's time ``t`` in ``[-1, 1]`` and the value is every
pixel of that frame, so ECoP prunes whole frames by their error (NeRV decodes a frame at a time, so a frame is
the unit a pruned inner step can skip).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._init_kwargs import RecordsInitKwargs

__all__ = ["NeRV", "NeRVBlock"]

ACTIVATIONS = ("gelu", "sine")


def _activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    return _Sine()


class _Sine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class NeRVBlock(nn.Module):
    """3x3 convolution, pixel shuffle by ``upscale``, activation.

    ``[N, in, h, w] -> [N, out, upscale*h, upscale*w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, upscale: int, activation: str = "gelu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels * upscale**2, kernel_size=3, padding=1)
        self.upscale = int(upscale)
        self.activation = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.activation(F.pixel_shuffle(self.conv(x), self.upscale))
        return out


def _int_at_least(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


class NeRV(RecordsInitKwargs, nn.Module):
    """NeRV video INR: frame time ``[..., 1]`` -> frame values ``[..., C*H*W]`` (channel-first order).

    The time ``t`` is encoded as ``(sin(b^0 pi t), cos(b^0 pi t), ..., sin(b^(L-1) pi t), cos(b^(L-1) pi t))``
    (NeRV's positional encoding with ``b = base`` and ``L = num_frequencies``), an MLP stem maps it to a
    ``channels[0] x h0 x w0`` feature map, ``blocks`` NeRV blocks (3x3 conv, pixel shuffle by ``upscale``,
    activation) grow it to ``H x W``, and a 3x3 convolution head gives the ``C`` output channels plus
    ``output_offset``. Any leading dimensions are flattened into one batch of frames.

    Values are laid out channel-first: ``frame.reshape(C, H, W)`` is the picture; :meth:`frames_to_values` and
    :meth:`values_to_frames` convert from and to channel-last ``[..., H, W, C]`` arrays.

    Args:
        out_shape: ``(C, H, W)`` of a frame; ``H`` and ``W`` must be divisible by ``upscale ** blocks``.
        blocks: number of NeRV blocks (paper: 4 at 128x128, 5 at 256x256).
        channels: channels of the stem's feature map and of every block's output: one int for all, or
            ``blocks + 1`` ints. With ``hidden_features`` this sets the parameter count.
        upscale: pixel-shuffle factor of every block.
        hidden_features: width of the stem's hidden layers.
        hidden_layers: hidden layers of the stem (0: the encoding maps straight to the feature map).
        num_frequencies: ``L`` of the positional encoding (the encoding has ``2 L`` features).
        base: ``b`` of the positional encoding (NeRV: 1.25).
        activation: ``"gelu"`` (NeRV) or ``"sine"``, used in the stem and every block.
        output_offset: constant added to the output; 0.5 centres an untrained model on values in ``[0, 1]``.

    Shapes:
        ``[..., 1]`` -> ``[..., C*H*W]``.
    """

    frequencies: torch.Tensor

    ecop_defaults: ClassVar[dict[str, Any]] = {"inner_lr": 1.0}
    """Settings a learner takes for this model when it is given neither them nor a config: at the library's inner
    lr of 1e-2 a NeRV does not learn in 100 outer steps (validation PSNR 13.96 -> 13.07 dB with GELU, 13.83 ->
    13.03 with sine; 1.0: 14.18 -> 15.14 with GELU, 14.82 -> 20.45 with sine;
    ``benchmarks/results/nerv_defaults100.json``)."""

    def __init__(
        self,
        out_shape: Sequence[int] = (3, 16, 16),
        *,
        blocks: int = 2,
        channels: int | Sequence[int] = 32,
        upscale: int = 2,
        hidden_features: int = 64,
        hidden_layers: int = 1,
        num_frequencies: int = 16,
        base: float = 1.25,
        activation: str = "gelu",
        output_offset: float = 0.5,
    ) -> None:
        super().__init__()
        shape = tuple(out_shape) if isinstance(out_shape, Sequence) and not isinstance(out_shape, str) else ()
        if len(shape) != 3:
            raise ValueError(f"out_shape must be a sequence (C, H, W) of three ints, got {out_shape!r}")
        self.out_shape = tuple(_int_at_least(f"out_shape[{i}]", v, 1) for i, v in enumerate(shape))
        blocks = _int_at_least("blocks", blocks, 1)
        upscale = _int_at_least("upscale", upscale, 1)
        _int_at_least("hidden_features", hidden_features, 1)
        _int_at_least("hidden_layers", hidden_layers, 0)
        _int_at_least("num_frequencies", num_frequencies, 1)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 0:
            raise ValueError(f"base must be a finite number > 0, got {base!r}")
        if not isinstance(channels, (int, Sequence)) or isinstance(channels, (bool, str)):
            raise TypeError(f"channels must be an int or a sequence of ints, got {type(channels).__name__}")
        widths = [channels] * (blocks + 1) if isinstance(channels, int) else list(channels)
        if len(widths) != blocks + 1:
            raise ValueError(
                f"channels must be an int or a sequence of blocks + 1 = {blocks + 1} ints, got {channels!r}"
            )
        widths = [_int_at_least(f"channels[{i}]", v, 1) for i, v in enumerate(widths)]
        factor = upscale**blocks
        _, height, width = self.out_shape
        if height % factor or width % factor:
            raise ValueError(
                f"out_shape (C, H, W) = {self.out_shape}: H and W must be divisible by upscale ** blocks = {factor}"
            )
        self.feature_shape = (widths[0], height // factor, width // factor)
        frequencies = base ** torch.arange(num_frequencies, dtype=torch.float32) * math.pi
        self.register_buffer("frequencies", frequencies, persistent=False)  # fixed by the arguments
        stem_widths = [2 * num_frequencies] + [hidden_features] * hidden_layers + [math.prod(self.feature_shape)]
        stem: list[nn.Module] = []
        for a, b in itertools.pairwise(stem_widths):
            stem += [nn.Linear(a, b), _activation(activation)]
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.Sequential(*[NeRVBlock(a, b, upscale, activation) for a, b in itertools.pairwise(widths)])
        self.head = nn.Conv2d(widths[-1], self.out_shape[0], kernel_size=3, padding=1)
        self.output_offset = float(output_offset)
        self._record_init_kwargs(
            out_shape=list(self.out_shape),
            blocks=blocks,
            channels=channels if isinstance(channels, int) else widths,
            upscale=upscale,
            hidden_features=hidden_features,
            hidden_layers=hidden_layers,
            num_frequencies=num_frequencies,
            base=float(base),
            activation=activation,
            output_offset=self.output_offset,
        )

    @property
    def out_features(self) -> int:
        """``C*H*W``, the value dimension D of one frame."""
        return math.prod(self.out_shape)

    def encode(self, t: torch.Tensor) -> torch.Tensor:
        """NeRV's positional encoding ``[N, 1] -> [N, 2 L]`` (sines then cosines)."""
        angles = t * self.frequencies.to(t.dtype)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Frames at times ``coords [..., 1]`` as ``[..., C*H*W]``."""
        if coords.shape[-1] != 1:
            raise ValueError(f"NeRV takes frame times coords [..., 1], got shape {tuple(coords.shape)}")
        leading = coords.shape[:-1]
        features = self.stem(self.encode(coords.reshape(-1, 1)))
        frames: torch.Tensor = self.head(self.blocks(features.reshape(-1, *self.feature_shape)))
        return frames.reshape(*leading, self.out_features) + self.output_offset

    def frames_to_values(self, frames: torch.Tensor) -> torch.Tensor:
        """Channel-last frames ``[..., H, W, C]`` -> values ``[..., C*H*W]`` in this model's layout."""
        channels, height, width = self.out_shape
        if tuple(frames.shape[-3:]) != (height, width, channels):
            raise ValueError(
                f"frames must be [..., H, W, C] = [..., {height}, {width}, {channels}], got {tuple(frames.shape)}"
            )
        return frames.movedim(-1, -3).reshape(*frames.shape[:-3], self.out_features)

    def values_to_frames(self, values: torch.Tensor) -> torch.Tensor:
        """Values ``[..., C*H*W]`` -> channel-last frames ``[..., H, W, C]``."""
        if values.shape[-1] != self.out_features:
            raise ValueError(f"values must be [..., C*H*W = {self.out_features}], got {tuple(values.shape)}")
        return values.reshape(*values.shape[:-1], *self.out_shape).movedim(-3, -1)
