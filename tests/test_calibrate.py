"""calibrate_adapter: the test-time rule picked on training signals, scored against the independent float64
fits of tests/reference.py."""

from __future__ import annotations

import math

import pytest
import torch
from reference import make_problem, ref_fit, ref_pruned_fit

from ecop_wrap import TEST_RULES, Calibration, ContextPruningMetaLearner, GradScaledAdapter, calibrate_adapter

GAMMA, K, LR = 0.25, 4, 1e-2


def _learner(model, **kw):
    return ContextPruningMetaLearner(model, gamma=GAMMA, K=K, inner_lr=kw.pop("inner_lr", LR), coord_range=None, **kw)


def _ref_score(model, coords, values, rule, lr=LR, steps=K):
    """Mean over signals of log(final MSE), each signal fitted by the plain per-signal reference."""
    logs = []
    for b in range(values.shape[0]):
        if rule == "pruned":
            _, history = ref_pruned_fit(model, coords, values[b], steps, lr, GAMMA)
        else:
            _, history = ref_fit(model, coords, values[b], steps=steps, lr=lr, gamma=GAMMA, scaling=rule)
        logs.append(math.log(float(history[-1])))
    return sum(logs) / len(logs)


def test_scores_are_each_rules_mean_log_loss_and_the_best_is_chosen():
    torch.manual_seed(0)
    model, coords, values = make_problem(batch=3, side=6, d=2)
    out = calibrate_adapter(_learner(model), (coords, values))
    assert isinstance(out, Calibration)
    assert set(out.scores) == set(TEST_RULES)
    for rule in TEST_RULES:
        assert out.scores[rule] == pytest.approx(_ref_score(model, coords, values, rule), rel=1e-9, abs=1e-12)
    assert out.rule == min(TEST_RULES, key=lambda r: out.scores[r])
    assert isinstance(out.adapter, GradScaledAdapter)
    expected = {"scaling": TEST_RULES[out.rule]["scaling"], "pruned_steps": K if out.rule == "pruned" else 0}
    assert {"scaling": out.adapter.scaling, "pruned_steps": out.adapter.pruned_steps} == expected


def test_a_step_size_at_its_limit_makes_the_paper_rule_lose():
    """Eq. 6 multiplies steps by ||g_pruned|| / ||g_full|| (> 1): at an lr near divergence it overshoots."""
    torch.manual_seed(0)
    model, coords, values = make_problem(batch=2, side=6, d=1)
    learner = _learner(model)
    scores = {lr: calibrate_adapter(learner, (coords, values), lr=lr, rules=["norm", "none"]) for lr in (1e-3, 30.0)}
    assert scores[1e-3].rule == "norm"  # small steps: the larger, scaled steps fit further
    assert scores[30.0].rule == "none"
    assert scores[30.0].scores["norm"] > scores[30.0].scores["none"]


def test_batches_and_ties():
    torch.manual_seed(0)
    model, coords, values = make_problem(batch=4, side=6, d=2)
    learner = _learner(model)
    whole = calibrate_adapter(learner, (coords, values), rules=["none", "norm"])
    halves = calibrate_adapter(learner, [(coords, values[:2]), (coords, values[2:])], rules=["none", "norm"])
    assert halves.scores == pytest.approx(whole.scores, rel=1e-12)
    tie = calibrate_adapter(learner, (coords, values), rules=["none", "none"])
    assert tie.rule == "none"


def test_a_diverging_rule_scores_inf_and_is_not_chosen():
    torch.manual_seed(0)
    model, coords, values = make_problem(batch=2, side=6, d=1)
    out = calibrate_adapter(_learner(model), (coords, values), lr=1e200, rules=["norm", "none"], steps=3)
    assert out.scores == {"norm": math.inf, "none": math.inf}
    assert out.rule == "norm"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rules": ["eq6"]}, ValueError, "rules must be a non-empty subset"),
        ({"rules": []}, ValueError, "rules must be a non-empty subset"),
        ({"scaling": "norm"}, TypeError, "chooses"),
        ({"pruned_steps": 2}, TypeError, "chooses"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model, coords, values = make_problem()
    with pytest.raises(error, match=match):
        calibrate_adapter(_learner(model), (coords, values), **kwargs)


def test_bad_learner_and_signals():
    model, coords, values = make_problem()
    with pytest.raises(TypeError, match="learner must be a ContextPruningMetaLearner"):
        calibrate_adapter(model, (coords, values))
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_adapter(_learner(model), [])
