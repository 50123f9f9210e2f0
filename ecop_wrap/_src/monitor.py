"""Watching meta-training: a warning when the meta-gradient sits at the clip, one when the bootstrap's path ends
above twice theta_K's loss for most signals (its step size is too large for the data), one when the adapted fits
stay at the trivial floor (no better than each signal's own mean), and a rising training loss (the meta-loss) that
either warns or, with ``divergence_backoff``, rolls the learner back to its best window and lowers its outer
learning rate. ``monitor_window=0`` turns every check off."""

from __future__ import annotations

import math
import warnings
from typing import Literal

from .validation import user_stacklevel

__all__ = ["BOOT_RISE", "FLOOR_DB", "FLOOR_GRACE_WINDOWS", "RISE", "MonitorEvent", "TrainingMonitor"]

RISE = 1.5
"""A window's mean meta-loss this many times the best window's counts as rising."""
BOOT_RISE = 0.5
"""A window in which the bootstrap's path rose (ended above ``BOOT_RISE_FACTOR`` times theta_K's loss) for more
than this share of the signals warns."""

FLOOR_DB = 1.0
"""A window whose mean fit loss at theta_K is less than this many dB below the trivial floor's (each signal's own
mean predicted everywhere) counts as "at the floor"."""
FLOOR_GRACE_WINDOWS = 2
"""Windows before the floor check starts: a model may start at the floor (a zero latent predicts about the mean)
and leave it within its first hundred steps."""

MonitorEvent = Literal["best", "rise"]
"""What a completed window showed: a new best mean meta-loss, or a rise above ``RISE`` times the best."""


class TrainingMonitor:
    """Watches each taken meta-step's meta-gradient norm and meta-loss (what the outer optimizer minimises: a
    rise means divergence, while the fit loss at theta_K alone may rise as the bootstrap term falls).

    Args:
        window: consecutive steps the two checks look at (0: no checks).
        max_grad_norm: the clip (None: no clip, no clip check).
        boot_lr: the bootstrap's step size, named in the bootstrap warning (None: not named).
        warn_on_rise: warn (once) when the meta-loss rises; False when the caller acts on the ``"rise"`` event
            itself (the learner's ``divergence_backoff``).
    """

    def __init__(
        self, window: int, max_grad_norm: float | None, *, boot_lr: float | None = None, warn_on_rise: bool = True
    ) -> None:
        self.window = window
        self.max_grad_norm = max_grad_norm
        self.boot_lr = boot_lr
        self.warn_on_rise = warn_on_rise
        self._clipped_run = 0
        self._losses: list[float] = []
        self._boot_rises: list[float] = []
        self._fit_losses: list[float] = []
        self._floors: list[float] = []
        self._floor_windows = 0
        self._best_mean = math.inf
        self._warned: set[str] = set()

    @property
    def best_mean(self) -> float:
        """The lowest mean meta-loss over a completed window so far (inf before the first)."""
        return self._best_mean

    @property
    def window_starts(self) -> bool:
        """Whether the next recorded step begins a window (its state is the one a roll-back returns to)."""
        return self.window > 0 and not self._losses

    def update(
        self,
        step: int,
        grad_norm: float,
        loss: float,
        boot_rise: float | None = None,
        *,
        fit_loss: float | None = None,
        floor: float | None = None,
    ) -> MonitorEvent | None:
        """Record one taken step; warn (once each) when a check fires.

        ``boot_rise``: the share of the step's signals whose bootstrap path ended above twice their full-context loss
        at theta_K; None where it is not measured (no bootstrap, or ``L < 2``): the check then skips the step.
        ``fit_loss`` and ``floor``: the batch's mean full-context loss at theta_K and the trivial floor's (each
        signal's own mean predicted everywhere); the floor check skips steps without them (losses other than MSE).

        Returns:
            ``"best"`` when this step completed a window with the lowest mean meta-loss so far, ``"rise"`` when it
            completed one whose mean is ``RISE`` times the best, else None.
        """
        if self.window <= 0:
            return None
        self._check_clip(step, grad_norm)
        self._check_bootstrap(step, boot_rise)
        self._check_floor(step, fit_loss, floor)
        return self._check_rise(step, loss)

    def restart_window(self) -> None:
        """Start a new window (after a roll-back: the steps since the best window no longer count)."""
        self._losses.clear()
        self._fit_losses.clear()
        self._floors.clear()
        self._clipped_run = 0

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

    def _window_mean(self, values: list[float], value: float) -> float | None:
        """Append ``value``; when ``values`` holds a whole window, empty it and return its mean."""
        values.append(value)
        if len(values) < self.window:
            return None
        mean = sum(values) / len(values)
        values.clear()
        return mean

    def _check_bootstrap(self, step: int, boot_rise: float | None) -> None:
        if boot_rise is None:
            return
        share = self._window_mean(self._boot_rises, boot_rise)
        if share is not None and share > BOOT_RISE:
            self._warn(
                "bootstrap",
                f"meta_step {step}: over the last {self.window} steps the bootstrap's full-context steps"
                + (f" (boot_lr={self.boot_lr:g})" if self.boot_lr is not None else "")
                + f" ended above twice theta_K's loss for {100 * share:.0f}% of the signals: the step size is too "
                "large for this data, so the bootstrap's target is worse than theta_K and the bootstrap term pulls "
                "towards it. Lower boot_lr (benchmarks/sgd_stability.py measures a step size on your data), or "
                'use boot_target="best" or lam=0.',
            )

    def _check_floor(self, step: int, fit_loss: float | None, floor: float | None) -> None:
        if fit_loss is None or floor is None or not (fit_loss > 0 and floor > 0):
            return
        fits, floors = self._window_mean(self._fit_losses, fit_loss), self._window_mean(self._floors, floor)
        if fits is None or floors is None:
            return
        self._floor_windows += 1
        gain_db = 10 * math.log10(floors / fits)
        if self._floor_windows > FLOOR_GRACE_WINDOWS and gain_db < FLOOR_DB:
            self._warn(
                "floor",
                f"meta_step {step}: over the last {self.window} steps the adapted fits were only {gain_db:.2f} dB "
                "better than predicting each signal's own mean value everywhere (the trivial floor): the model is "
                "not learning these signals. Check that it can represent them (its width, its frequencies such "
                "as a SIREN's w0, a latent's size), that inner_lr is large enough to move a fit in K steps, and "
                "the outer learning rate.",
            )

    def _check_rise(self, step: int, loss: float) -> MonitorEvent | None:
        mean = self._window_mean(self._losses, loss)
        if mean is None:
            return None
        if mean > RISE * self._best_mean:
            if self.warn_on_rise:
                self._warn(
                    "rise",
                    f"meta_step {step}: the meta-loss rose from a mean of {self._best_mean:.4g} to "
                    f"{mean:.4g} over windows of {self.window} steps: meta-training is diverging. Lower the outer "
                    "learning rate (or inner_lr), clip the meta-gradient with max_grad_norm, or set "
                    "divergence_backoff to roll back and lower it automatically.",
                )
            return "rise"
        if mean < self._best_mean:
            self._best_mean = mean
            return "best"
        return None

    def _warn(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        warnings.warn(message, UserWarning, stacklevel=user_stacklevel())
