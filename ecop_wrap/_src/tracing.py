"""What the pruned inner loop does on one signal: the pruned context, the errors ``R_k`` and the
reconstruction at chosen adaptation steps (the data behind the paper's Figure 1).

:func:`trace_selection` runs the learner's own inner loop through :meth:`GradScaledAdapter.fit_steps` and
needs only torch; :func:`ecop_wrap.plotting.plot_selection` draws what it records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .adapter import GradScaledAdapter
from .learner import ContextPruningMetaLearner

__all__ = ["SelectionTrace", "default_trace_steps", "trace_selection"]


@dataclass
class SelectionTrace:
    """What the inner loop did on one signal at chosen adaptation steps.

    Attributes:
        steps: the recorded adaptation steps ``k`` (0-based, ``k < K``), length ``S``.
        masks: ``[S, M]`` bool, True where the point is in the pruned context ``C_high^k`` used by step ``k``
            (all True for a full-context learner, gamma = 1).
        errors: ``[S, M]`` the paper's score ``R_k = ||f_theta_k(x) - y||_2`` of every point.
        predictions: ``[S, M, D]`` ``f_theta_k`` on the full context (the reconstruction before step ``k``).
    """

    steps: list[int]
    masks: torch.Tensor
    errors: torch.Tensor
    predictions: torch.Tensor

    def as_grid(self, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(masks [S, *shape], errors [S, *shape], predictions [S, *shape, D])`` for ``prod(shape) == M``."""
        shape = tuple(int(s) for s in shape)
        num_points = self.masks.shape[1]
        if int(np.prod(shape)) != num_points:
            raise ValueError(f"shape {shape} has {int(np.prod(shape))} points but the trace has M={num_points}")
        count = len(self.steps)
        return (
            self.masks.reshape(count, *shape),
            self.errors.reshape(count, *shape),
            self.predictions.reshape(count, *shape, self.predictions.shape[-1]),
        )


def default_trace_steps(K: int) -> list[int]:
    """The steps of the paper's Figure 1: ``k = 0, K // 2, K - 1`` (without repeats)."""
    return sorted({0, K // 2, K - 1})


def trace_selection(
    learner: ContextPruningMetaLearner,
    signal: tuple[torch.Tensor, torch.Tensor],
    steps: Sequence[int] | None = None,
    *,
    seed: int = 0,
) -> SelectionTrace:
    """Run the learner's pruned inner loop from theta_0 on one signal and record it (paper Figure 1).

    The steps are the learner's own (its selection rule and step sizes, first order), taken with
    :meth:`GradScaledAdapter.fit_steps` with ``pruned_steps`` covering them all. The model is not modified.

    Args:
        learner: the meta-learner whose initialization and pruning rule are traced.
        signal: ``(coords [M, C], values [M, D])``.
        steps: adaptation steps to record, each in ``[0, K)`` (default :func:`default_trace_steps`).
        seed: seed of the generator for ``selection="random"``.

    Returns:
        A :class:`SelectionTrace` over the sorted, de-duplicated ``steps``.
    """
    if not isinstance(learner, ContextPruningMetaLearner):
        raise TypeError(f"learner must be a ContextPruningMetaLearner, got {type(learner).__name__}")
    coords, values = _check_one_signal(signal, learner)
    K = learner.config.K
    wanted = default_trace_steps(K) if steps is None else sorted({int(k) for k in steps})
    if not wanted or wanted[0] < 0 or wanted[-1] >= K:
        raise ValueError(f"steps must be a non-empty set of adaptation steps in [0, K={K}), got {steps!r}")
    adapter = GradScaledAdapter(
        learner, steps=wanted[-1] + 1, pruned_steps=wanted[-1] + 1, scaling="none", coord_range=None, seed=seed
    )
    masks, errors, predictions = [], [], []
    for state in adapter.fit_steps((coords, values)):
        if state.step not in wanted:
            continue
        with torch.no_grad():
            pred = adapter.backend(state.params, coords)[0]
        predictions.append(pred)
        errors.append((pred - values).pow(2).sum(-1).sqrt())
        mask = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
        mask[state.pruned_idx[0] if state.pruned_idx is not None else slice(None)] = True
        masks.append(mask)
    return SelectionTrace(
        steps=wanted,
        masks=torch.stack(masks).cpu(),
        errors=torch.stack(errors).cpu(),
        predictions=torch.stack(predictions).cpu(),
    )


def _check_one_signal(
    signal: tuple[torch.Tensor, torch.Tensor], learner: ContextPruningMetaLearner
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coords [M, C], values [M, D])`` checked and moved to the device and dtype of the learner's parameters."""
    if not isinstance(signal, (tuple, list)) or len(signal) != 2:
        raise TypeError("signal must be a pair (coords [M, C], values [M, D])")
    coords, values = signal
    if not isinstance(coords, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError("signal must be a pair of tensors (coords [M, C], values [M, D])")
    if coords.ndim != 2 or values.ndim != 2 or coords.shape[0] != values.shape[0]:
        raise ValueError(
            f"signal must be (coords [M, C], values [M, D]) with the same M, got {tuple(coords.shape)} and "
            f"{tuple(values.shape)}"
        )
    first = next(iter(learner.init_params().values()))
    return coords.to(first.device, first.dtype), values.to(first.device, first.dtype)
