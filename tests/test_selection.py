"""Context pruning: exact top-k sets, sizes, per-step re-ranking, random and GradNCP selection.

Every expected index set is computed here from plain per-signal ``functional_call`` forwards and an
independent ``argsort``, never from ecop_wrap's own scoring code.
"""

from __future__ import annotations

import copy

import pytest
import torch
from reference import TinySiren, make_problem
from torch import nn
from torch.func import functional_call

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren, make_grid, make_selection
from ecop_wrap._src.numerics import expand_params
from ecop_wrap.extend import (
    ALL_POINTS,
    ContextEvaluator,
    InnerRates,
    MixedSelection,
    SoftSelection,
    inner_loop,
    make_backend,
    make_loss,
    num_selected,
    select,
)


class Selector:
    """A rule from the registry with the batch passed per call (keeps the tests below short)."""

    def __init__(self, kind, gamma, *, model=None, layer=None):
        self.rule = make_selection(kind, model, layer=layer)
        self.gamma = gamma
        self.layer = getattr(self.rule, "layer", None)

    def scores(self, backend, params, coords, values, generator=None):
        return self.rule.scores(ContextEvaluator(backend, coords, values), params, generator or torch.Generator())

    def select(self, backend, params, coords, values, generator=None):
        ctx = ContextEvaluator(backend, coords, values)
        return select(ctx, params, self.rule, self.gamma, generator or torch.Generator())


def adapt(backend, leaves, coords, values, *, steps, lr, selector, on_select, generator=None):
    """First-order pruned inner steps from ``leaves`` (shared by the batch), reporting each pruned set."""
    ctx = ContextEvaluator(backend, coords, values)
    rates = InnerRates(None, leaves, inner_lr=lr, max_inner_lr=1.0, steps=steps)
    inner_loop(
        ctx,
        ctx.expand(leaves),
        steps=steps,
        rates=rates,
        rule=selector.rule,
        gamma=selector.gamma,
        generator=generator or torch.Generator(),
        create_graph=False,
        on_select=lambda k, _params, idx: on_select(k, idx),
    )


def _problem(batch: int = 2, side: int = 6, d: int = 3, shared: bool = False):
    return make_problem(batch, side, d, shared)


def _signal_coords(coords: torch.Tensor, b: int) -> torch.Tensor:
    return coords if coords.ndim == 2 else coords[b]


def _ref_errors(model, params_b, x, y) -> torch.Tensor:
    """``||f(x_i) - y_i||^2`` for one signal, ``[M]``."""
    with torch.no_grad():
        return ((functional_call(model, params_b, (x,)) - y) ** 2).sum(-1)


def _top_set(scores: torch.Tensor, k: int) -> set[int]:
    assert torch.unique(scores).numel() == scores.numel(), "the test needs distinct scores"
    return set(torch.argsort(scores, descending=True)[:k].tolist())


def _model_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _leaf_params(model) -> dict[str, torch.Tensor]:
    """Detached copies that require grad: a starting point for ``adapt`` that leaves the model alone."""
    return {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("shared", [True, False])
def test_error_selection_is_exactly_the_top_k(gamma, shared):
    model, coords, values = _problem(batch=3, side=7, shared=shared)
    backend = make_backend("torch.func", model)
    params = expand_params(_model_params(model), 3)
    # Different parameters per signal, so each signal ranks with its own INR.
    params = {n: p + 0.05 * torch.randn_like(p) for n, p in params.items()}
    idx = Selector("error", gamma).select(backend, params, coords, values)
    k = max(1, int(gamma * 49))
    assert idx.shape == (3, k)
    for b in range(3):
        errors = _ref_errors(model, {n: p[b] for n, p in params.items()}, _signal_coords(coords, b), values[b])
        assert set(idx[b].tolist()) == _top_set(errors, k)


@pytest.mark.parametrize(
    ("num_points", "gamma"),
    [(1, 0.25), (2, 0.25), (3, 0.3), (4, 0.25), (7, 0.5), (10, 0.25), (10, 0.99), (64, 0.25), (100, 0.29), (33, 0.01)],
)
def test_selection_size(num_points, gamma):
    k = max(1, int(gamma * num_points))
    assert num_selected(num_points, gamma) == k
    model = TinySiren(1, 1).double()
    backend = make_backend("torch.func", model)
    coords = torch.linspace(-1, 1, num_points, dtype=torch.float64)[:, None]
    values = torch.rand(2, num_points, 1, dtype=torch.float64)
    params = expand_params(_model_params(model), 2)
    for kind in ("error", "random", "gradncp"):
        idx = Selector(kind, gamma, model=model).select(
            backend, params, coords, values, torch.Generator().manual_seed(0)
        )
        if k >= num_points:
            assert idx is ALL_POINTS  # the pruned set is the whole context
        else:
            assert idx.shape == (2, k)
            assert all(len(set(row.tolist())) == k for row in idx)


def test_gamma_one_keeps_the_full_context():
    model, coords, values = _problem()
    backend = make_backend("torch.func", model)
    assert Selector("error", 1.0).select(backend, expand_params(_model_params(model), 2), coords, values) is ALL_POINTS


def _recorder():
    record: list[tuple[int, torch.Tensor | None]] = []
    return record, lambda step, idx: record.append((step, None if idx is ALL_POINTS else idx.clone()))


@pytest.mark.parametrize("shared", [True, False])
def test_every_inner_step_reranks_from_the_current_parameters(shared):
    model, coords, values = _problem(batch=2, side=8, shared=shared)
    gamma, steps, lr = 0.25, 6, 1e-2  # a larger lr makes the w0=30 dynamics chaotic (rounding grows 1e4x per step)
    backend = make_backend("torch.func", model)
    record, on_select = _recorder()
    adapt(
        backend,
        _leaf_params(model),
        coords,
        values,
        steps=steps,
        lr=lr,
        selector=Selector("error", gamma),
        on_select=on_select,
    )
    assert [s for s, _ in record] == list(range(steps))
    k = max(1, int(gamma * 64))
    for b in range(2):
        x, y = _signal_coords(coords, b), values[b]
        params = {n: p.clone().requires_grad_(True) for n, p in _model_params(model).items()}
        sets = []
        for step in range(steps):
            errors = _ref_errors(model, params, x, y)
            want = _top_set(errors, k)
            assert set(record[step][1][b].tolist()) == want, f"signal {b} step {step}"
            sets.append(want)
            idx = torch.tensor(sorted(want))
            loss = ((functional_call(model, params, (x[idx],)) - y[idx]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {
                n: (p - lr * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads, strict=True)
            }
        # the test is only meaningful if the ranking really changes between steps
        assert len({frozenset(s) for s in sets}) > 1


def test_learner_ranks_once_per_inner_step():
    model, coords, values = _problem(batch=2)
    learner = ContextPruningMetaLearner(model, gamma=0.25, K=4, L=1, coord_range=None)
    calls = []
    make_evaluator = learner.evaluator

    def recording_evaluator(*args, **kwargs):
        ctx = make_evaluator(*args, **kwargs)
        scores = ctx.errors
        ctx.errors = lambda params: calls.append(scores(params)) or calls[-1]  # type: ignore[method-assign]
        return ctx

    learner.evaluator = recording_evaluator  # type: ignore[method-assign]
    learner.meta_loss((coords, values))
    assert len(calls) == 4  # one graph-free ranking pass per inner step
    assert all(errors.shape == (2, 36) for errors in calls)


def _random_record(seed: int, steps: int = 5, gamma: float = 0.25):
    model, coords, values = _problem(batch=2, side=6)
    backend = make_backend("torch.func", model)
    record, on_select = _recorder()
    adapt(
        backend,
        _leaf_params(model),
        coords,
        values,
        steps=steps,
        lr=1e-2,
        selector=Selector("random", gamma),
        on_select=on_select,
        generator=torch.Generator().manual_seed(seed),
    )
    return [idx for _, idx in record]


def test_random_selection_size_uniqueness_and_reproducibility():
    first = _random_record(seed=3)
    again = _random_record(seed=3)
    other = _random_record(seed=4)
    k = max(1, int(0.25 * 36))
    for idx in first:
        assert idx.shape == (2, k)
        for row in idx:
            assert len(set(row.tolist())) == k and int(row.min()) >= 0 and int(row.max()) < 36
    sets = [frozenset(idx[0].tolist()) for idx in first]
    assert len(set(sets)) > 1, "random subsets must differ between steps"
    assert frozenset(first[0][0].tolist()) != frozenset(first[0][1].tolist()), "and between signals"
    assert all(torch.equal(a.sort(1).values, b.sort(1).values) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a.sort(1).values, b.sort(1).values) for a, b in zip(first, other, strict=True))


def test_random_selection_is_uniform():
    """Counts over 4000 seeded draws of 5 of 20 points: each point expects 1000 (sd ~27); allow +-15%."""
    selector = Selector("random", 0.25)
    model = TinySiren(1, 1).double()
    backend = make_backend("torch.func", model)
    values = torch.zeros(4000, 20, 1, dtype=torch.float64)
    coords = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]
    params = expand_params(_model_params(model), 1)
    idx = selector.select(backend, params, coords, values, torch.Generator().manual_seed(0))
    counts = torch.bincount(idx.flatten(), minlength=20)
    assert counts.sum() == 4000 * 5
    assert int(counts.min()) > 850 and int(counts.max()) < 1150


def test_learner_random_selection_is_reproducible_with_seed():
    model, coords, values = _problem(batch=2)
    losses = []
    for seed in (7, 7, 8):
        learner = ContextPruningMetaLearner(
            model, gamma=0.25, K=3, L=0, selection="random", seed=seed, coord_range=None
        )
        losses.append(learner.meta_loss((coords, values)).item())
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def _ref_gradncp_norms(model, layer, params_b, x, y) -> torch.Tensor:
    """Per-point ``||d (||f(x_i) - y_i||^2 / 2) / d (layer.weight, layer.bias)||``, one autograd call per point."""
    names = {id(p): n for n, p in model.named_parameters()}
    wanted = [names[id(layer.weight)], names[id(layer.bias)]]
    norms = []
    for i in range(x.shape[0]):
        params = {n: p.detach().clone().requires_grad_(True) for n, p in params_b.items()}
        loss = 0.5 * ((functional_call(model, params, (x[i : i + 1],)) - y[i : i + 1]) ** 2).sum()
        grads = torch.autograd.grad(loss, [params[n] for n in wanted])
        norms.append(torch.sqrt(sum((g**2).sum() for g in grads)))
    return torch.stack(norms)


@pytest.mark.parametrize("backend_name", ["torch.func", "higher"])
def test_gradncp_scores_are_per_point_gradient_norms(backend_name):
    model, coords, values = _problem(batch=2, side=5)
    backend = make_backend(backend_name, model)
    params = {n: p + 0.05 * torch.randn_like(p) for n, p in expand_params(_model_params(model), 2).items()}
    selector = Selector("gradncp", 0.25, model=model)
    assert selector.layer is model.out
    scores = selector.scores(backend, params, coords, values)
    idx = selector.select(backend, params, coords, values)
    k = max(1, int(0.25 * 25))
    for b in range(2):
        params_b = {n: p[b] for n, p in params.items()}
        want = _ref_gradncp_norms(model, model.out, params_b, _signal_coords(coords, b), values[b])
        torch.testing.assert_close(scores[b].sqrt(), want, rtol=1e-10, atol=1e-12)
        assert set(idx[b].tolist()) == _top_set(want, k)
    # the ranking really differs from the plain error ranking on this problem
    errors = torch.stack(
        [
            _ref_errors(model, {n: p[b] for n, p in params.items()}, _signal_coords(coords, b), values[b])
            for b in range(2)
        ]
    )
    assert any(set(idx[b].tolist()) != _top_set(errors[b], k) for b in range(2))


class _OutputFirst(nn.Module):
    """The output layer is registered before an unrelated Linear, so "last nn.Linear" is the wrong layer."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.body = nn.Sequential(nn.Linear(2, 16), nn.Tanh())
        self.aux = nn.Linear(3, 3)  # used only for an unrelated additive term

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) + 0.0 * self.aux.bias


def test_gradncp_custom_layer():
    model = _OutputFirst().double()
    coords = make_grid((5, 5), dtype=torch.float64)
    values = torch.rand(1, 25, 3, dtype=torch.float64)
    backend = make_backend("torch.func", model)
    params = expand_params(_model_params(model), 1)
    assert Selector("gradncp", 0.25, model=model).layer is model.aux  # the automatic choice
    selector = Selector("gradncp", 0.25, model=model, layer=model.head)
    scores = selector.scores(backend, params, coords, values)
    want = _ref_gradncp_norms(model, model.head, {n: p[0] for n, p in params.items()}, coords, values[0])
    torch.testing.assert_close(scores[0].sqrt(), want, rtol=1e-10, atol=1e-12)
    learner = ContextPruningMetaLearner(model, selection="gradncp", gradncp_layer=model.head, K=2, coord_range=None)
    assert learner.selection_rule.layer is model.head
    assert GradScaledAdapter(learner).selection_rule.layer is model.head
    assert torch.isfinite(learner.meta_loss((coords, values)))


class _NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x.sum(-1, keepdim=True)) * self.scale


def test_gradncp_without_linear_is_a_clear_error():
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        ContextPruningMetaLearner(_NoLinear(), selection="gradncp")
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        GradScaledAdapter(_NoLinear(), selection="gradncp")
    # the other rules need no linear layer
    ContextPruningMetaLearner(_NoLinear(), selection="error")


def test_gradncp_layer_must_belong_to_the_model():
    model = Siren(2, 3, 8, 1)
    with pytest.raises(ValueError, match="gradncp_layer"):
        ContextPruningMetaLearner(model, selection="gradncp", gradncp_layer=nn.Linear(8, 3))
    with pytest.raises(TypeError, match="gradncp_layer"):
        ContextPruningMetaLearner(model, selection="gradncp", gradncp_layer=model.layers[0])


def test_gradncp_without_bias_uses_the_weight_gradient_only():
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2, bias=False)).double()
    coords = make_grid((4, 4), dtype=torch.float64)
    values = torch.rand(1, 16, 2, dtype=torch.float64)
    backend = make_backend("torch.func", model)
    params = expand_params(_model_params(model), 1)
    scores = Selector("gradncp", 0.25, model=model).scores(backend, params, coords, values)
    for i in range(16):
        leaves = {n: p[0].clone().requires_grad_(True) for n, p in params.items()}
        loss = 0.5 * ((functional_call(model, leaves, (coords[i : i + 1],)) - values[0, i : i + 1]) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, [leaves["2.weight"]])
        torch.testing.assert_close(scores[0, i].sqrt(), grad.norm(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("loss_name", "delta"), [("l1", 1.0), ("huber", 0.05)])
def test_gradncp_with_a_loss_and_weights_ranks_by_the_weighted_loss_gradient(loss_name, delta):
    """Issue 22: with any loss, GradNCP scores are the per-point ``||d (w_j l_j) / d (out.weight, out.bias)||^2``
    (an independent autograd call per point; equal up to one constant factor per loss)."""
    model, coords, values = _problem(batch=2, side=5)
    backend = make_backend("torch.func", model)
    params = {n: p + 0.05 * torch.randn_like(p) for n, p in expand_params(_model_params(model), 2).items()}
    weights = torch.rand(2, 25, dtype=torch.float64) + 0.5
    weights[:, :3] = 0.0
    ctx = ContextEvaluator(backend, coords, values, weights, loss=make_loss(loss_name, delta))
    scores = make_selection("gradncp", model).scores(ctx, params, torch.Generator())
    names = {id(p): n for n, p in model.named_parameters()}
    wanted = [names[id(model.out.weight)], names[id(model.out.bias)]]
    for b in range(2):
        want = []
        for i in range(25):
            leaves = {n: p[b].detach().clone().requires_grad_(True) for n, p in params.items()}
            diff = functional_call(model, leaves, (_signal_coords(coords, b)[i : i + 1],)) - values[b, i : i + 1]
            point = (
                diff.abs()
                if loss_name == "l1"
                else torch.where(diff.abs() <= delta, 0.5 * diff**2, delta * (diff.abs() - 0.5 * delta))
            )
            grads = torch.autograd.grad(weights[b, i] * point.mean(), [leaves[n] for n in wanted])
            want.append(sum((g**2).sum() for g in grads))
        want = torch.stack(want)
        assert bool((scores[b, :3] == 0).all()) and bool((want[:3] == 0).all())
        ratio = scores[b, 3:] / want[3:]
        torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-8, atol=0)


class _FixedErrors:
    """The part of a ContextEvaluator a selection rule reads: errors ``[B, M]`` and weights."""

    def __init__(self, errors, weights=None):
        self._errors, self.weights = errors, weights

    def errors(self, params):
        return self._errors


def test_soft_selection_draws_each_point_with_probability_proportional_to_its_error():
    """The Gumbel-top-1 of 40,000 seeded draws: point j is kept with frequency e_j / sum(e) (sd <= 0.0025)."""
    errors = torch.tensor([0.0, 0.05, 0.1, 0.15, 0.2, 0.5], dtype=torch.float64)
    rule = make_selection("soft", None)
    scores = rule.scores(_FixedErrors(errors.expand(40_000, -1)), {}, torch.Generator().manual_seed(0))
    frequency = torch.bincount(scores.argmax(1), minlength=6).double() / 40_000
    torch.testing.assert_close(frequency, errors / errors.sum(), rtol=0, atol=0.01)
    assert frequency[0] == 0  # a point without error is never drawn before the others


def test_soft_selection_temperature_interpolates_between_error_ranking_and_uniform():
    errors = torch.tensor([[0.3, 0.1, 0.9, 0.2, 0.6]], dtype=torch.float64).expand(20_000, -1)
    cold = SoftSelection(temperature=1e-3).scores(_FixedErrors(errors), {}, torch.Generator().manual_seed(1))
    assert bool((cold.argmax(1) == 2).all())  # the paper's rule
    hot = SoftSelection(temperature=1e3).scores(_FixedErrors(errors), {}, torch.Generator().manual_seed(1))
    frequency = torch.bincount(hot.argmax(1), minlength=5).double() / 20_000
    torch.testing.assert_close(frequency, torch.full((5,), 0.2, dtype=torch.float64), rtol=0, atol=0.015)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SoftSelection(temperature=0.0)


def _kept_frequency(rule, errors, keep, draws=20_000, weights=None):
    """How often each of the points of ``errors [M]`` is among the top ``keep`` scores, over seeded draws."""
    batch = errors.expand(draws, -1)
    scores = rule.scores(
        _FixedErrors(batch, None if weights is None else weights.expand(draws, -1)),
        {},
        torch.Generator().manual_seed(0),
    )
    kept = torch.zeros_like(batch).scatter_(1, scores.topk(keep, dim=1).indices, 1.0)
    return kept.mean(0)


def test_mixed_selection_interpolates_between_error_ranking_and_uniform_sampling():
    errors = torch.tensor([0.5, 0.1, 0.9, 0.0, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6], dtype=torch.float64)
    top = errors.topk(4).indices
    paper = torch.zeros(10, dtype=torch.float64).index_fill_(0, top, 1.0)
    assert torch.equal(_kept_frequency(MixedSelection(uniform_share=0.0), errors, 4, draws=50), paper)
    uniform = _kept_frequency(MixedSelection(uniform_share=1.0), errors, 4)
    torch.testing.assert_close(uniform, torch.full((10,), 0.4, dtype=torch.float64), rtol=0, atol=0.015)
    # half and half: about half of the kept points are the top errors of the rest, the others uniform, so the
    # lowest-error point is kept about as often as a uniform draw of half the kept points keeps it (2 of 10)
    half = _kept_frequency(MixedSelection(uniform_share=0.5), errors, 4)
    assert 0.12 < float(half[3]) < 0.28 and float(half[2]) > 0.6  # 0.0 error vs 0.9 error
    assert float(half[top].sum()) / 4 > 0.5 + 0.05
    torch.testing.assert_close(half.sum(), torch.tensor(4.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"uniform_share must be in \[0, 1\]"):
        MixedSelection(uniform_share=1.5)


def test_mixed_selection_never_draws_a_point_of_weight_zero():
    errors = torch.tensor([0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    weights = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1], dtype=torch.float64)
    frequency = _kept_frequency(MixedSelection(uniform_share=1.0), errors, 3, weights=weights)
    assert bool((frequency[:3] == 0).all())
    torch.testing.assert_close(frequency[3:], torch.full((5,), 0.6, dtype=torch.float64), rtol=0, atol=0.02)
    # padding changes nothing for the real points: the same frequencies as the 5 real points alone
    half = _kept_frequency(MixedSelection(uniform_share=0.5), errors, 3, weights=weights)
    alone = _kept_frequency(MixedSelection(uniform_share=0.5), errors[3:], 3)
    assert bool((half[:3] == 0).all())
    torch.testing.assert_close(half[3:], alone, rtol=0, atol=0.02)


def test_soft_selection_keeps_k_distinct_points_of_positive_weight_and_the_learner_is_seeded():
    model, coords, values = _problem(batch=2)
    weights = torch.ones(2, 36, dtype=torch.float64)
    weights[0, :30] = 0  # six points of signal 0 may be kept
    ctx = ContextEvaluator(make_backend("torch.func", model), coords, values, weights)
    params = expand_params(_model_params(model), 2)
    idx = select(ctx, params, make_selection("soft", model), 0.5, torch.Generator().manual_seed(0))
    kept = idx[0, :3].tolist()  # 3 of signal 0's 6 points; its later ranks point at a weight-0 placeholder
    assert set(kept) <= set(range(30, 36)) and len(set(kept)) == 3
    assert len(set(idx[1].tolist())) == idx.shape[1] == 18
    runs = [
        ContextPruningMetaLearner(copy.deepcopy(model), selection="soft", K=2, L=1, seed=5, coord_range=None)
        .meta_objective((coords, values))
        .loss
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
