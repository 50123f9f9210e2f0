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

SelectionName = str
"""A registered context-selection rule: a key of :data:`ecop_wrap.SELECTION_RULES` (``"error"``, ``"random"``,
``"gradncp"`` and any added with :func:`ecop_wrap.register_selection`); an open set, so a ``str``."""

ScalingName = str
"""A registered test-time gradient-scaling rule: a key of :data:`ecop_wrap.SCALING_RULES`."""

# The closed sets are declared here once; the tuples the library checks against are derived from them
# (``BACKENDS = typing.get_args(BackendName)`` and so on).
BackendName = Literal["torch.func", "higher"]
"""How the model is evaluated with per-signal parameters (see :func:`ecop_wrap.extend.make_backend`)."""

BatchingMode = Literal["auto", "bmm", "vmap", "loop"]
"""How the ``"torch.func"`` backend batches signals."""

LearnInnerLR = Literal["per_tensor", "per_element"]
"""Learned inner step sizes: one per adapted tensor and inner step, or one per adapted element."""

AdaptSpec = Sequence[str] | Callable[[str, nn.Parameter], bool] | None
"""Which parameters are adapted per signal: names or glob patterns, a predicate ``(name, param) -> bool``,
or ``None`` for every trainable parameter."""
