"""batching="auto" by speed: timing picks a correct mode and records the times; caching; timing off is today's
first-correct choice; a mode that cannot run the model is never picked."""

from __future__ import annotations

import logging

import pytest
import torch
from reference import TinySiren
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, make_grid
from ecop_wrap._src.backends import autotune
from ecop_wrap.extend import make_backend


@pytest.fixture
def timing_on(monkeypatch):
    monkeypatch.setenv(autotune.BENCHMARK_ENV, "1")


def _learner(model=None, **settings):
    return ContextPruningMetaLearner(model or TinySiren(2, 1).double(), K=2, L=1, coord_range=None, **settings)


def _batch(side=5, batch=2):
    return make_grid((side, side), dtype=torch.float64), torch.rand(batch, side * side, 1, dtype=torch.float64)


def test_timing_picks_a_correct_mode_and_records_every_candidate(timing_on, caplog):
    learner = _learner()
    with caplog.at_level(logging.INFO, logger="ecop_wrap"):
        learner.meta_step(_batch())
    backend = learner.backend
    assert set(backend.batching_times) == {"bmm", "vmap", "loop"}
    assert all(t > 0 for t in backend.batching_times.values())
    assert backend.batching == autotune.pick_mode(backend.batching_times, torch.device("cpu"))
    assert any("batching='auto' chose" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("times", "device", "picked"),
    [
        ({"bmm": 0.95, "vmap": 1.2, "loop": 1.0}, "cpu", "loop"),  # a near-tie on a CPU keeps the loop
        ({"bmm": 0.85, "vmap": 1.2, "loop": 1.0}, "cpu", "bmm"),  # a clear win does not
        ({"bmm": 1.1, "vmap": 0.8, "loop": 1.0}, "cpu", "vmap"),
        ({"bmm": 1.1, "vmap": 1.2, "loop": 1.0}, "cpu", "loop"),
        ({"bmm": 0.95, "vmap": 1.2, "loop": 1.0}, "meta", "bmm"),  # off the CPU the fastest wins outright
        ({"bmm": 0.95, "vmap": 0.99}, "cpu", "bmm"),  # no loop timed (it failed): the fastest
    ],
)
def test_pick_mode_keeps_the_loop_on_a_cpu_near_tie(times, device, picked):
    assert autotune.pick_mode(times, torch.device(device)) == picked


def test_the_log_says_when_the_margin_kept_the_loop():
    choice = autotune.BatchingChoice("loop", ("bmm", "loop"), {"bmm": 0.143, "loop": 0.145})
    assert "no batched mode beat it by 10%" in choice.describe() and "bmm 143.0 ms" in choice.describe()
    fastest = autotune.BatchingChoice("bmm", ("bmm", "loop"), {"bmm": 0.1, "loop": 0.145})
    assert "the fastest of the correct modes" in fastest.describe()


def test_the_choice_is_cached_per_kind_of_call(timing_on):
    learner = _learner()
    learner.meta_step(_batch())
    first = dict(learner.backend.batching_choices)
    learner.meta_step(_batch(side=6, batch=3))  # more points and signals: the same kind of call
    assert learner.backend.batching_choices == first
    assert first and all(choice.times for choice in first.values())  # each kind was timed once


def test_timing_off_is_the_first_correct_mode():
    learner = _learner(batching_benchmark=False)
    learner.meta_step(_batch())
    assert learner.backend.batching == "bmm" and learner.backend.batching_times == {}


class _NoVmap(nn.Module):
    """A model vmap cannot run (a data-dependent Python branch) and bmm does not apply to (no nn.Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, dtype=torch.float64))

    def forward(self, x):
        if float(x.sum()) > 1e9:  # .item() on a batched tensor: vmap fails
            return x[:, :1]
        return self.scale * x[:, :1]


def test_a_mode_that_fails_is_never_picked(timing_on):
    learner = _learner(_NoVmap())
    coords, values = _batch()
    learner.meta_step((coords.unsqueeze(0).repeat(2, 1, 1), values))  # per-signal coords: vmap batches them
    assert learner.backend.batching == "loop" and set(learner.backend.batching_times) == {"loop"}


def test_timed_checkpointed_steps_give_the_chosen_modes_numbers(timing_on):
    """Timing inside a checkpointed first step must not be recorded by the checkpoint (it refused it once)."""
    batch = _batch()
    timed = _learner(checkpoint=True)
    timed.meta_step(batch)
    mode = timed.backend.batching
    torch.manual_seed(0)
    explicit = _learner(checkpoint=True, batching=mode)
    explicit.model.load_state_dict(timed.model.state_dict())
    timed.model.load_state_dict(explicit.model.state_dict())
    a, b = timed.meta_objective(batch).loss, explicit.meta_objective(batch).loss
    assert torch.equal(a.detach(), b.detach())


def test_a_new_kind_of_call_is_timed_again(timing_on):
    model = TinySiren(2, 1).double()
    backend = make_backend("torch.func", model)
    params = {n: p.detach().expand(2, *p.shape) for n, p in model.named_parameters()}
    coords = _batch()[0]
    backend(params, coords)
    backend({n: p[:1].expand(3, *p.shape[1:]) for n, p in params.items()}, coords[:7])  # other sizes: reused
    assert len(backend.batching_choices) == 1
    last = list(params)[-1]
    backend({last: params[last]}, coords)  # another set of adapted parameters: a new kind
    assert len(backend.batching_choices) == 2
    assert all(set(choice.times) == set(choice.candidates) for choice in backend.batching_choices.values())


def test_timing_off_under_distributed(timing_on, monkeypatch):
    """Ranks timing differently must not run different modes: under torch.distributed nothing is timed."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args, **kwargs: 2)
    model = TinySiren(2, 1).double()
    backend = make_backend("torch.func", model)
    backend({n: p.detach().expand(2, *p.shape) for n, p in model.named_parameters()}, _batch()[0])
    choice = next(iter(backend.batching_choices.values()))
    assert choice.times == {} and "torch.distributed" in choice.note and backend.batching == "bmm"


def test_the_environment_variable_turns_timing_off(monkeypatch):
    monkeypatch.setenv(autotune.BENCHMARK_ENV, "0")
    learner = _learner()
    learner.meta_step(_batch())
    assert learner.backend.batching == "bmm" and learner.backend.batching_times == {}
