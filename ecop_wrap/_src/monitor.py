"""Warnings for meta-training that has stopped learning: a meta-gradient that sits at the clip, or a training
loss (the meta-loss) that rises. Each warns once per learner; ``monitor_window=0`` turns both off."""

from __future__ import annotations

import math
import warnings

from .validation import user_stacklevel

__all__ = ["TrainingMonitor"]

RISE = 1.5
"""A window's mean meta-loss this many times the best window's counts as rising."""


class TrainingMonitor:
    """Watches each taken meta-step's meta-gradient norm and meta-loss (what the outer optimizer minimises: a
    rise means divergence, while the fit loss at theta_K alone may rise as the bootstrap term falls).

    Args:
        window: consecutive steps the two checks look at (0: no checks).
        max_grad_norm: the clip (None: no clip, no clip check).
    """

    def __init__(self, window: int, max_grad_norm: float | None) -> None:
        self.window = window
        self.max_grad_norm = max_grad_norm
        self._clipped_run = 0
        self._losses: list[float] = []
        self._best_mean = math.inf
        self._warned: set[str] = set()

    def update(self, step: int, grad_norm: float, loss: float) -> None:
        """Record one taken step; warn (once each) when a check fires."""
        if self.window <= 0:
            return
        self._check_clip(step, grad_norm)
        self._check_rise(step, loss)

    def _check_clip(self, step: int, grad_norm: float) -> None:
        if self.max_grad_norm is None:
            return
        self._clipped_run = self._clipped_run + 1 if grad_norm > self.max_grad_norm else 0
        if self._clipped_run >= self.window:
            self._warn(
                "clip",
                f"meta_step {step}: the meta-gradient norm has been above max_grad_norm={self.max_grad_norm:g} "
                f"for {self._clipped_run} consecutive steps (now {grad_norm:.3g}): every step is clipped, so its "
                "size is the outer learning rate's alone. Lower the outer learning rate (or lam), or raise "
                "max_grad_norm.",
            )

    def _check_rise(self, step: int, loss: float) -> None:
        self._losses.append(loss)
        if len(self._losses) < self.window:
            return
        mean = sum(self._losses) / len(self._losses)
        self._losses.clear()
        if mean > RISE * self._best_mean:
            self._warn(
                "rise",
                f"meta_step {step}: the meta-loss rose from a mean of {self._best_mean:.4g} to "
                f"{mean:.4g} over windows of {self.window} steps: meta-training is diverging. Lower the outer "
                "learning rate (or inner_lr), or clip the meta-gradient with max_grad_norm.",
            )
        self._best_mean = min(self._best_mean, mean)

    def _warn(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        warnings.warn(message, UserWarning, stacklevel=user_stacklevel())
