"""Per-point losses and point weights against the independent float64 reference in reference_objective.py:
meta-gradients and fits for l1, huber and a registered loss, with masks, both backends, the memory modes,
learned rates, adapt= and a padded ragged batch."""

from __future__ import annotations

import pytest
import torch
from reference import TinySiren
from reference_objective import ref_objective_fit, ref_objective_grads

from ecop_wrap import LOSSES, ContextPruningMetaLearner, GradScaledAdapter, make_grid, register_loss
from ecop_wrap.data import collate_signals

K, L, LAM, LR, GAMMA, DELTA = 3, 2, 10.0, 1e-2, 0.4, 0.3


def log_cosh(pred, target):
    return torch.log(torch.cosh(pred - target)).mean(-1)


register_loss("log_cosh", log_cosh, overwrite=True)
LOSS_CASES = [("l1", {}), ("huber", {"huber_delta": DELTA}), ("log_cosh", {})]


def _problem(shared=True, batch=2, side=5, d=2, seed=0):
    torch.manual_seed(seed)
    grid = make_grid((side, side), dtype=torch.float64)
    coords = grid if shared else grid.unsqueeze(0).repeat(batch, 1, 1) * 0.9
    values = torch.rand(batch, side * side, d, dtype=torch.float64)
    weights = torch.rand(batch, side * side, dtype=torch.float64) + 0.5
    weights[0, ::3] = 0  # masked points
    weights[1, :4] = 0
    return coords, values, weights


def _ref(model, coords, values, weights, loss, options, **kw):
    return ref_objective_grads(
        model,
        coords,
        values,
        weights,
        gamma=GAMMA,
        K=K,
        L=L,
        lam=LAM,
        lr=LR,
        loss=loss,
        delta=options.get("huber_delta", 1.0),
        fn=LOSSES[loss] if loss == "log_cosh" else None,
        **kw,
    )


def _library(model, batch, loss, options, **settings):
    learner = ContextPruningMetaLearner(
        model, gamma=GAMMA, K=K, L=L, lam=LAM, inner_lr=LR, loss=loss, coord_range=None, **options, **settings
    )
    out = learner.meta_objective(batch)
    wrt = [p for p in model.parameters() if p.requires_grad] + list(learner.inner_lrs.values())
    return out.loss.detach(), torch.autograd.grad(out.loss, wrt), learner


def _close(lib, ref):
    torch.testing.assert_close(lib[0], ref[0], rtol=1e-9, atol=1e-12)
    for a, b in zip(lib[1], ref[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize(("loss", "options"), LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
@pytest.mark.parametrize(
    "settings",
    [{}, {"backend": "higher"}, {"chunk_size": 7}, {"checkpoint": True}, {"chunk_size": 5, "checkpoint": True}],
    ids=["default", "higher", "chunk", "checkpoint", "chunk+checkpoint"],
)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-signal"])
def test_meta_gradient_matches_the_reference(loss, options, settings, shared):
    coords, values, weights = _problem(shared)
    model = TinySiren(2, 2).double()
    _close(
        _library(model, (coords, values, weights), loss, options, **settings)[:2],
        _ref(model, coords, values, weights, loss, options),
    )


@pytest.mark.parametrize(("loss", "options"), LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_learned_rates_and_adapt_match_the_reference(loss, options):
    coords, values, weights = _problem()
    model = TinySiren(2, 2).double()
    adapted = [n for n, _ in model.named_parameters()][-2:]
    lib = _library(model, (coords, values, weights), loss, options, adapt=adapted, learn_inner_lr="per_element")
    _close(lib[:2], _ref(model, coords, values, weights, loss, options, adapted=adapted, rates=lib[2].inner_lrs))


@pytest.mark.parametrize(("loss", "options"), [("mse", {}), *LOSS_CASES], ids=["mse", *[c[0] for c in LOSS_CASES]])
def test_fit_matches_the_reference(loss, options):
    coords, values, weights = _problem()
    model = TinySiren(2, 2).double()
    learner = ContextPruningMetaLearner(model, gamma=GAMMA, K=K, loss=loss, coord_range=None, **options)
    fit = GradScaledAdapter(learner, steps=3, lr=LR).fit((coords, values, weights))
    fn = LOSSES[loss] if loss == "log_cosh" else None
    for b in range(2):
        ref = ref_objective_fit(
            model,
            coords,
            values[b],
            weights[b],
            steps=3,
            lr=LR,
            gamma=GAMMA,
            loss=loss,
            delta=options.get("huber_delta", 1.0),
            fn=fn,
        )
        torch.testing.assert_close(fit.history["loss"][:, b], ref, rtol=1e-9, atol=1e-12)
    assert ("psnr" in fit.history) == (loss == "mse")


def test_a_padded_ragged_batch_is_each_signal_at_its_own_size():
    torch.manual_seed(1)
    signals = [
        (make_grid(shape, dtype=torch.float64), torch.rand(shape[0] * shape[1], 2, dtype=torch.float64))
        for shape in ((5, 5), (3, 6), (4, 3))
    ]
    coords, values, weights = collate_signals(signals)
    model = TinySiren(2, 2).double()
    lib = _library(model, (coords, values, weights), "l1", {})
    per_signal = [
        ref_objective_grads(
            model,
            c,
            v.unsqueeze(0),
            torch.ones(1, v.shape[0], dtype=torch.float64),
            gamma=GAMMA,
            K=K,
            L=L,
            lam=LAM,
            lr=LR,
            loss="l1",
        )
        for c, v in signals
    ]
    torch.testing.assert_close(lib[0], sum(r[0] for r in per_signal) / 3, rtol=1e-6, atol=1e-9)
    for i, grad in enumerate(lib[1]):
        torch.testing.assert_close(grad, sum(r[1][i] for r in per_signal) / 3, rtol=1e-6, atol=1e-9)


def test_mse_with_unit_weights_equals_mse_without():
    coords, values, _ = _problem()
    model = TinySiren(2, 2).double()
    plain = _library(model, (coords, values), "mse", {})
    ones = _library(model, (coords, values, torch.ones(values.shape[:2], dtype=torch.float64)), "mse", {})
    _close(plain[:2], ones[:2])


def test_weight_zero_points_are_never_selected():
    coords, values, weights = _problem()
    learner = ContextPruningMetaLearner(TinySiren(2, 2).double(), gamma=GAMMA, K=2, coord_range=None)
    adapter = GradScaledAdapter(learner, steps=2, pruned_steps=2)
    for state in adapter.fit_steps((coords, values, weights)):
        if state.pruned_idx is not None:
            kept = torch.gather(weights, 1, state.pruned_idx)
            counts = [max(1, int(GAMMA * int((weights[b] > 0).sum()))) for b in range(2)]
            assert [int((kept[b] > 0).sum()) for b in range(2)] == counts


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (torch.zeros(2, 25), "no point of positive weight"),
        (torch.full((2, 25), float("nan")), "finite and >= 0"),
        (-torch.ones(2, 25), "finite and >= 0"),
        (torch.ones(2, 24), r"weights must be \[B, M\]"),
    ],
    ids=["all-zero", "nan", "negative", "shape"],
)
def test_bad_weights_are_refused_and_change_nothing(weights, match):
    coords, values, _ = _problem()
    learner = ContextPruningMetaLearner(TinySiren(2, 2).double(), K=2, coord_range=None)
    before = [p.detach().clone() for p in learner.model.parameters()]
    with pytest.raises(ValueError, match=match):
        learner.meta_step((coords, values, weights.double()))
    with pytest.raises(ValueError, match=match):
        GradScaledAdapter(learner).fit((coords, values, weights.double()))
    assert all(torch.equal(a, b) for a, b in zip(before, learner.model.parameters(), strict=True))
    assert learner.step_count == 0


def test_a_user_loss_with_the_wrong_shape_is_named():
    register_loss("bad_shape", lambda pred, target: (pred - target).abs(), overwrite=True)
    coords, values, _ = _problem()
    learner = ContextPruningMetaLearner(TinySiren(2, 2).double(), K=2, loss="bad_shape", coord_range=None)
    with pytest.raises(ValueError, match="loss 'bad_shape' must return one value per point"):
        learner.meta_step((coords, values))
    with pytest.raises(ValueError, match="loss must be one of"):
        ContextPruningMetaLearner(TinySiren(2, 2), loss="nope")
