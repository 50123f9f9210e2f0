"""Type aliases shared across ecop-wrap (one home, as in torchopt's ``typing`` module).

Shapes follow one convention everywhere: ``B`` signals, ``M`` context points per signal, ``C`` coordinate
dimensions, ``D`` value channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    "AdaptSpec",
    "BackendName",
    "BatchingMode",
    "LearnInnerLR",
    "Params",
    "ScalingName",
    "SelectionName",
    "SignalBatch",
]

Params = dict[str, torch.Tensor]
"""Parameter name -> per-signal tensor ``[B, *param_shape]`` (the "fast weights" of every signal)."""

SignalBatch = tuple[torch.Tensor, torch.Tensor]
"""``(coords, values)``: coords ``[M, C]`` (one grid shared by the batch) or ``[B, M, C]``; values ``[B, M, D]``."""

SelectionName = Literal["error", "random", "gradncp"]
"""Built-in context-selection rules (more can be registered with :func:`ecop_wrap.register_selection`)."""

ScalingName = Literal["norm", "loss", "none"]
"""Built-in test-time gradient-scaling rules (more with :func:`ecop_wrap.register_scaling`)."""

BackendName = Literal["torch.func", "higher"]
"""How the model is evaluated with per-signal parameters (see :func:`ecop_wrap.make_backend`)."""

BatchingMode = Literal["auto", "bmm", "vmap", "loop"]
"""How the ``"torch.func"`` backend batches signals."""

LearnInnerLR = Literal["per_tensor", "per_element"]
"""Learned inner step sizes: one per adapted tensor and inner step, or one per adapted element."""

AdaptSpec = Sequence[str] | Callable[[str, nn.Parameter], bool] | None
"""Which parameters are adapted per signal: names or glob patterns, a predicate ``(name, param) -> bool``,
or ``None`` for every trainable parameter."""
