"""Inner-loop step sizes: one fixed rate, or rates meta-learned with theta_0 (Meta-SGD, MAML++).

``"per_tensor"`` keeps one rate per adapted tensor and per inner step (shape ``[K]``, MAML++);
``"per_element"`` one rate per adapted element, shared by all steps (shape of the parameter, Meta-SGD).
Learned rates start at ``inner_lr`` and are kept in ``[0, max_inner_lr]`` after every outer update.
"""

from __future__ import annotations

from typing import get_args

import torch

from ..typing import LearnInnerLR
from .evaluator import Rates

__all__ = ["LEARN_INNER_LR_MODES", "InnerRates"]

LEARN_INNER_LR_MODES: tuple[LearnInnerLR, ...] = get_args(LearnInnerLR)


class InnerRates:
    """The step size of every adapted parameter at every inner step.

    Args:
        mode: None (the fixed ``inner_lr``), ``"per_tensor"`` or ``"per_element"``.
        params: adapted parameter name -> the model's tensor (shapes, dtype and device of the rates).
        inner_lr: the fixed rate, and the learned rates' initial value.
        max_inner_lr: upper bound of learned rates.
        steps: K, the number of inner steps (``"per_tensor"`` learns one rate per step).
    """

    def __init__(
        self, mode: str | None, params: dict[str, torch.Tensor], *, inner_lr: float, max_inner_lr: float, steps: int
    ) -> None:
        self.mode = mode
        self.inner_lr = inner_lr
        self.max_inner_lr = max_inner_lr
        self.tensors: dict[str, torch.Tensor] = {}
        for name, p in params.items():
            shape = (steps,) if mode == "per_tensor" else p.shape
            if mode is not None:
                rate = torch.full(shape, inner_lr, dtype=p.dtype, device=p.device)
                self.tensors[name] = rate.requires_grad_(True)
        self._names = list(params)

    @property
    def learned(self) -> bool:
        return self.mode is not None

    def at(self, step: int) -> Rates:
        """Rates of inner step ``step``; for ``"per_tensor"``, steps beyond K reuse the last step's rates."""
        if self.mode is None:
            return dict.fromkeys(self._names, self.inner_lr)
        if self.mode == "per_tensor":
            return {n: r[min(step, r.shape[0] - 1)] for n, r in self.tensors.items()}
        return dict(self.tensors)

    def detached(self) -> InnerRates:
        """A copy whose rates are constants (for test-time fitting)."""
        copy = InnerRates.__new__(InnerRates)
        copy.__dict__.update(self.__dict__)
        copy.tensors = {n: r.detach() for n, r in self.tensors.items()}
        return copy

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep every learned rate in ``[0, max_inner_lr]`` (after an outer update): two ``torch._foreach_*`` ops
        over all rates, elementwise ``min(max(r, 0), max_inner_lr)`` as ``clamp_`` computes it."""
        rates = list(self.tensors.values())
        if rates:
            torch._foreach_clamp_min_(rates, 0.0)
            torch._foreach_clamp_max_(rates, self.max_inner_lr)
