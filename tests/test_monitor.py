"""The training monitor: one warning when the meta-gradient sits at the clip, one when the meta-loss rises, one when
the fits stay at the trivial floor."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from reference import TinySiren

from ecop_wrap import ContextPruningMetaLearner, make_grid

AT_FLOOR = ".*better than predicting each signal's own mean value"
"""The floor warning's message: the toy problems below (noise on 36 points, a 12-wide network, K = 2) never leave
the trivial floor, so the tests of the other checks ignore it; it has its own tests at the end."""


def _run(steps: int, **settings) -> list[str]:
    torch.manual_seed(0)
    coords, values = make_grid((6, 6), dtype=torch.float64), torch.rand(2, 36, 1, dtype=torch.float64)
    learner = ContextPruningMetaLearner(TinySiren(2, 1).double(), K=2, L=1, coord_range=None, **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=AT_FLOOR)
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


def _learner(**settings) -> tuple[ContextPruningMetaLearner, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    coords, values = make_grid((6, 6), dtype=torch.float64), torch.rand(2, 36, 1, dtype=torch.float64)
    model = TinySiren(2, 1).double()
    settings = {"K": 2, "L": 1, "coord_range": None, "monitor_window": 5, **settings}
    learner = ContextPruningMetaLearner(model, **settings)
    return learner, (coords, values)


def test_divergence_backoff_changes_nothing_while_training_is_healthy():
    finals = []
    for backoff in (None, 0.5):
        learner, batch = _learner(outer_lr=1e-3, learn_inner_lr="per_tensor", divergence_backoff=backoff)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # neither a warning nor a roll-back
            warnings.filterwarnings("ignore", message=AT_FLOOR)
            for _ in range(30):
                learner.meta_step(batch)
        finals.append([p.detach().clone() for p in learner._meta_params])
    assert all(torch.equal(a, b) for a, b in zip(*finals, strict=True))


def test_divergence_backoff_rolls_back_to_the_best_window_start_and_lowers_the_lr():
    learner, batch = _learner(outer_lr=0.5, learn_inner_lr="per_tensor", divergence_backoff=0.25)
    before = {}  # meta-step number -> the weights and learned rates it started from
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=AT_FLOOR)
        for step in range(1, 21):
            before[step] = [p.detach().clone() for p in learner._meta_params]
            learner.meta_step(batch)
    messages = [str(w.message) for w in caught if w.category is UserWarning]
    assert len(messages) == 1 and "the meta-loss rose" in messages[0], messages
    found = re.search(r"rolled back to the state before meta_step (\d+)", messages[0])
    assert found is not None and int(found.group(1)) in (1, 6, 11, 16)  # a window's first step
    back_to = int(found.group(1))
    assert all(torch.equal(p, q) for p, q in zip(learner._meta_params, before[back_to], strict=True))
    adam_steps = {float(s["step"]) for s in learner.optimizer.state_dict()["state"].values()}
    assert adam_steps <= {float(back_to - 1)}  # Adam's moments are those of that step too
    assert [g["lr"] for g in learner.optimizer.param_groups] == [0.5 * 0.25, 0.5 * 0.25]
    assert learner.step_count == 20  # the counter goes on


def test_divergence_backoff_ends_lower_than_a_diverging_run():
    losses = {}
    for backoff in (None, 0.5):
        learner, batch = _learner(outer_lr=0.5, divergence_backoff=backoff)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses[backoff] = [learner.meta_step(batch)["loss"] for _ in range(60)][-5:]
    assert max(losses[0.5]) < min(losses[None]) / 10, losses


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"divergence_backoff": 1.0}, ValueError, r"divergence_backoff must be in \(0, 1\), got 1.0"),
        ({"divergence_backoff": True}, TypeError, "divergence_backoff must be a float in"),
        ({"divergence_backoff": 0.5, "monitor_window": 0}, ValueError, "divergence_backoff needs the monitor"),
    ],
)
def test_divergence_backoff_is_checked(settings, error, match):
    with pytest.raises(error, match=match):
        ContextPruningMetaLearner(TinySiren(2, 1), **settings)


@pytest.mark.parametrize(("boot_lr", "rise"), [(1e-4, 0.0), (50.0, 1.0)])
def test_boot_rise_reports_signals_whose_bootstrap_path_ended_above_twice_theta_k(boot_lr, rise):
    learner, batch = _learner(L=2, boot_lr=boot_lr, outer_lr=1e-4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = [learner.meta_step(batch) for _ in range(6)]
    assert {s["boot_rise"] for s in stats} == {rise}
    messages = [str(w.message) for w in caught if "bootstrap's full-context steps" in str(w.message)]
    if rise:
        assert (
            len(messages) == 1
            and "(boot_lr=50) ended above twice theta_K's loss for 100% of the signals" in messages[0]
        )
    else:
        assert not messages


def test_boot_rise_counts_a_path_only_above_boot_rise_factor_times_theta_k(monkeypatch):
    from ecop_wrap._src import algorithm

    learner, batch = _learner(L=2, boot_lr=50.0, outer_lr=1e-4)
    out = learner.meta_objective(batch)
    assert out.boot_rise is not None and bool(out.boot_rise.all())  # boot_lr 50 diverges on every signal
    monkeypatch.setattr(algorithm, "BOOT_RISE_FACTOR", 1e30)  # the same paths, below the factor: not counted
    out = learner.meta_objective(batch)
    assert out.boot_rise is not None and not bool(out.boot_rise.any())


@pytest.mark.parametrize("settings", [{"L": 1, "boot_lr": 50.0}, {"lam": 0.0}])
def test_boot_rise_is_absent_where_nothing_is_measured(settings):
    """L = 1 measures no point after theta_K, lam = 0 runs no bootstrap: no key, rather than a made-up 0."""
    learner, batch = _learner(**settings)
    stats = learner.meta_step(batch)
    assert "boot_rise" not in stats and {"loss", "boot_distance", "grad_norm"} <= set(stats)


class _Constant(torch.nn.Module):
    """A model that can only predict one value per channel: its best fit is each signal's mean (the floor)."""

    def __init__(self) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, coords):
        return self.value.expand(coords.shape[-2], 1)


def _floor_run(model: torch.nn.Module, values: torch.Tensor, steps: int, **settings) -> list[str]:
    coords = make_grid((6, 6), dtype=torch.float64)
    learner = ContextPruningMetaLearner(model, K=2, L=1, coord_range=None, monitor_window=5, **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            learner.meta_step((coords, values))
    return [str(w.message) for w in caught if w.category is UserWarning]


def test_fits_at_the_trivial_floor_warn_once_after_the_grace_windows():
    values = torch.rand(2, 36, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert not _floor_run(_Constant(), values, 14)  # two grace windows and 4 steps of the third: no warning
    messages = _floor_run(_Constant(), values, 30)
    assert len(messages) == 1 and "better than predicting each signal's own mean value" in messages[0]
    assert messages[0].startswith("meta_step 15:")


def _planes() -> torch.Tensor:
    """Two signals a linear model fits exactly: ``[2, 36, 1]`` on the 6x6 grid."""
    coords = make_grid((6, 6), dtype=torch.float64)
    slopes = torch.tensor([[[1.0], [0.5]], [[-0.5], [1.0]]], dtype=torch.float64)
    return coords @ slopes + torch.tensor([0.0, 0.2], dtype=torch.float64).view(2, 1, 1)


def test_a_model_that_learns_its_signals_does_not_warn_about_the_floor():
    torch.manual_seed(0)
    assert not _floor_run(torch.nn.Linear(2, 1).double(), _planes(), 30, inner_lr=0.3, outer_lr=1e-2)


def _floor_stats(values: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, float]:
    learner = ContextPruningMetaLearner(torch.nn.Linear(2, 1).double(), K=2, L=1, coord_range=None)
    coords = make_grid((6, 6), dtype=torch.float64)
    return learner.meta_step((coords, values) if weights is None else (coords, values, weights))


def test_floor_mse_is_the_mse_of_each_signals_own_mean():
    values = _planes()
    per_signal = [float(((v - v.mean()) ** 2).mean()) for v in values]  # one channel: the variance
    assert _floor_stats(values)["floor_mse"] == pytest.approx(sum(per_signal) / 2, rel=1e-12)


def test_floor_mse_with_weights_counts_only_the_weighted_points():
    values = _planes().clone()
    weights = torch.ones(2, 36, dtype=torch.float64)
    weights[0, :18] = 0.0  # the first signal's upper half is not observed
    values[0, :18] = 1e6  # and holds placeholders that must not count
    per_signal = [float(((v - v.mean()) ** 2).mean()) for v in (values[0, 18:], values[1])]
    assert _floor_stats(values, weights)["floor_mse"] == pytest.approx(sum(per_signal) / 2, rel=1e-12)


def test_constant_signals_have_a_zero_floor():
    values = torch.full((2, 36, 1), 0.3, dtype=torch.float64)
    assert _floor_stats(values)["floor_mse"] == pytest.approx(0.0, abs=1e-30)
