"""Selection and scaling rules are registered objects: users add their own and use them by name."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from reference import make_problem

from ecop_wrap import (
    SCALING_RULES,
    SELECTION_RULES,
    ContextPruningMetaLearner,
    GradScaledAdapter,
    ScalingRule,
    SelectionRule,
    register_scaling,
    register_selection,
)
from ecop_wrap.extend import ContextEvaluator, make_backend

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from speed.rules import ErrorSampling  # the one copy of this example rule (the docs and benchmarks/speed use it)


class SmallestError:
    """A deterministic rule for exact checks: keep the points the model already fits best."""

    name = "smallest_error"

    def __init__(self, model):
        pass

    def scores(self, ctx, params, generator):
        return -ctx.errors(params)


class Halved:
    name = "halved"
    needs_selection = False

    def scale(self, ctx, params, full, pruned_idx):
        return torch.full_like(full.mse, 0.5)


@pytest.fixture
def registered():
    register_selection("error_sampling", ErrorSampling)
    register_selection("smallest_error", SmallestError)
    register_scaling("halved", Halved)
    yield
    for name in ("error_sampling", "smallest_error"):
        SELECTION_RULES.pop(name)
    SCALING_RULES.pop("halved")


def test_custom_rules_follow_the_protocols(registered):
    assert isinstance(ErrorSampling(None), SelectionRule)
    assert isinstance(Halved(), ScalingRule)


def test_error_sampling_draws_points_in_proportion_to_error(registered):
    """With 4 points of errors 1, 2, 3, 4 and k = 1, point i is kept with probability e_i / 10."""
    model, _, _ = make_problem()
    rule = SELECTION_RULES["error_sampling"](model)

    class FixedErrors(ContextEvaluator):
        def errors(self, params):
            return torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64).expand(20000, 4)

    ctx = FixedErrors(make_backend("torch.func", model), torch.zeros(4, 2), torch.zeros(20000, 4, 1))
    picked = rule.scores(ctx, {}, torch.Generator().manual_seed(0)).argmax(dim=1)
    freq = torch.bincount(picked, minlength=4).double() / 20000
    expected = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert torch.allclose(freq, expected, atol=4 * math.sqrt(0.25 / 20000))


def test_custom_selection_is_used_by_the_learner_and_the_adapter(registered):
    model, coords, values = make_problem(batch=2, side=6)
    learner = ContextPruningMetaLearner(model, gamma=0.25, K=2, L=1, selection="smallest_error", coord_range=None)
    seen = []
    make = learner.evaluator

    def recording(*args, **kwargs):
        ctx = make(*args, **kwargs)
        step = ctx.sgd_step
        ctx.sgd_step = lambda params, idx, rates, **kw: (
            seen.append((ctx.errors(params), idx)),
            step(params, idx, rates, **kw),
        )[1]
        return ctx

    learner.evaluator = recording
    assert torch.isfinite(learner.meta_loss((coords, values)))
    assert len(seen) == 2
    for errors, idx in seen:
        want = torch.argsort(errors, dim=1)[:, : idx.shape[1]]  # the 9 smallest errors of each signal
        assert all(set(idx[b].tolist()) == set(want[b].tolist()) for b in range(2))
    fit = GradScaledAdapter(learner, steps=2).fit((coords, values))
    assert torch.isfinite(fit.history["mse"]).all()


def test_custom_scaling_is_used_by_name(registered):
    model, coords, values = make_problem(batch=2, side=6)
    halved = GradScaledAdapter(model, steps=2, scaling="halved", coord_range=None).fit((coords, values))
    assert torch.equal(halved.history["scale"], torch.full((2, 2), 0.5, dtype=torch.float64))
    plain = GradScaledAdapter(model, steps=1, lr=0.5e-2, scaling="none", coord_range=None).fit((coords, values))
    halved_one = GradScaledAdapter(model, steps=1, lr=1e-2, scaling="halved", coord_range=None).fit((coords, values))
    for name in plain.params:
        torch.testing.assert_close(halved_one.params[name], plain.params[name], rtol=1e-12, atol=1e-15)


def test_registry_refuses_duplicates_and_bad_names(registered):
    with pytest.raises(ValueError, match="already registered"):
        register_selection("error", SmallestError)
    with pytest.raises(TypeError, match="callable"):
        register_scaling("broken", 42)
    with pytest.raises(ValueError, match="selection must be one of"):
        ContextPruningMetaLearner(make_problem()[0], selection="nope")
    with pytest.raises(ValueError, match="scaling must be one of"):
        GradScaledAdapter(make_problem()[0], scaling="nope")
