"""The training monitor: one warning when the meta-gradient sits at the clip, one when the meta-loss rises."""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import TinySiren

from ecop_wrap import ContextPruningMetaLearner, make_grid


def _run(steps: int, **settings) -> list[str]:
    torch.manual_seed(0)
    coords, values = make_grid((6, 6), dtype=torch.float64), torch.rand(2, 36, 1, dtype=torch.float64)
    learner = ContextPruningMetaLearner(TinySiren(2, 1).double(), K=2, L=1, coord_range=None, **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            learner.meta_step((coords, values))
    return [str(w.message) for w in caught if w.category is UserWarning]


def test_a_clipped_meta_gradient_warns_once_after_the_window():
    assert not _run(4, max_grad_norm=1e-9, monitor_window=5)  # not yet: 4 of 5 steps
    messages = _run(12, max_grad_norm=1e-9, monitor_window=5)
    assert len(messages) == 1 and "above max_grad_norm=1e-09 for 5 consecutive steps" in messages[0]


def test_a_rising_training_loss_warns_once():
    messages = _run(30, outer_lr=0.5, monitor_window=5)
    assert len(messages) == 1 and "the meta-loss rose" in messages[0]


@pytest.mark.parametrize("settings", [{"outer_lr": 1e-4, "monitor_window": 5}, {"outer_lr": 0.5, "monitor_window": 0}])
def test_healthy_training_or_window_zero_gives_no_warning(settings):
    assert not _run(30, max_grad_norm=1e6, **settings)


def test_monitor_window_is_checked():
    with pytest.raises(ValueError, match="monitor_window must be >= 0"):
        ContextPruningMetaLearner(TinySiren(2, 1), monitor_window=-1)
