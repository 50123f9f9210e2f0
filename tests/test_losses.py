"""Per-point losses and point weights against the independent float64 reference in reference_objective.py:
meta-gradients and fits for l1, huber and a registered loss, with masks, both backends, the memory modes,
learned rates, adapt= and a padded ragged batch."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from helpers import assert_all_close, meta_grads
from reference import TinySiren, ref_fit, ref_meta_grads
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


@pytest.mark.parametrize(("loss", "options"), LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
@pytest.mark.parametrize("settings", [{}, {"chunk_size": 7}], ids=["default", "chunk"])
def test_relative_lambda_with_weights_and_rates_matches_the_reference(loss, options, settings):
    """lam_mode="relative" scales lambda by each signal's weighted loss-gradient norm at theta_K."""
    coords, values, weights = _problem()
    model = TinySiren(2, 2).double()
    lib = _library(
        model, (coords, values, weights), loss, options, lam_mode="relative", learn_inner_lr="per_element", **settings
    )
    _close(lib[:2], _ref(model, coords, values, weights, loss, options, rates=lib[2].inner_lrs, lam_mode="relative"))


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


# ------------------------------------------------------------------------------------------------------------
# Against tests/reference.py, a second independently written reference (points of weight 0 masked out of the
# ranking, not dropped): the product of backend, memory mode, learned rates, adapt= and coordinates for every
# loss, the fit's three scalings, a ragged batch carrying its own masks, and the stats and history keys.
# Masked points hold values far from every prediction, so counting or ranking one cannot pass.
# ------------------------------------------------------------------------------------------------------------
REF_KW = {"gamma": 0.25, "K": 3, "L": 2, "lam": 10.0}
REF_LR = 1e-2
LOSS_RTOL = 1e-9
GRAD_TOL = {"rtol": 1e-8, "atol": 1e-12}
FIT_TOL = {"loss": {"rtol": 1e-9, "atol": 1e-14}, "params": {"rtol": 1e-9, "atol": 1e-12}}
CLAMP = 0.6


def clamped_l1(pred, target):
    """DeepSDF's clamped L1, channel-averaged: ``|clamp(pred) - clamp(target)|`` with clamp to [-0.6, 0.6]."""
    return (pred.clamp(-CLAMP, CLAMP) - target.clamp(-CLAMP, CLAMP)).abs().mean(-1)


# A name of its own: examples/sdf_glyphs.py registers a "clamped_l1" of another clamp in the same process.
CLAMPED_L1 = "test_losses_clamped_l1"
register_loss(CLAMPED_L1, clamped_l1, overwrite=True)
REF_LOSSES = {
    "l1": {"loss": "l1"},
    "huber": {"loss": "huber", "huber_delta": 0.3},
    "clamped_l1": {"loss": CLAMPED_L1},
}
MEMORY = {
    "default": {},
    "chunk": {"chunk_size": 7},
    "checkpoint": {"checkpoint": True},
    "chunk+checkpoint": {"chunk_size": 10, "checkpoint": True},
}
ADAPTED = ["hidden.1.weight", "hidden.1.bias", "out.weight", "out.bias"]


def _ref_options(loss_id: str) -> dict:
    """The reference's keywords for a loss of ``REF_LOSSES``."""
    options = dict(REF_LOSSES[loss_id])
    return options | ({"loss_fn": clamped_l1} if loss_id == "clamped_l1" else {})


def _masked_problem(shared: bool, batch: int = 2, side: int = 6, channels: int = 3, outliers: bool = True):
    """A float64 TinySiren and ``(coords, values, weights)`` with masked points (values 4.0 there, unless not
    ``outliers``: then every value is in [0, 1])."""
    torch.manual_seed(0)
    model = TinySiren(2, channels).double()
    gen = torch.Generator().manual_seed(1)
    coords = make_grid((side, side), dtype=torch.float64)
    if not shared:
        coords = coords + 0.05 * torch.randn(batch, *coords.shape, generator=gen, dtype=torch.float64)
    values = torch.rand(batch, side * side, channels, generator=gen, dtype=torch.float64)
    weights = 0.5 + torch.rand(batch, side * side, generator=gen, dtype=torch.float64)
    weights[0, ::3] = 0.0
    weights[-1, :5] = 0.0
    if outliers:
        values[weights == 0] = 4.0
    return model, coords, values, weights


def _randomized_rates(learner: ContextPruningMetaLearner) -> dict[str, torch.Tensor]:
    """Rates differing per tensor, step and element, as float64 leaves for the reference."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for rate in learner.inner_lrs.values():
            rate.copy_(0.5e-2 + 1e-2 * torch.rand(rate.shape, generator=gen, dtype=rate.dtype))
    return {n: r.detach().clone().requires_grad_(True) for n, r in learner.inner_lrs.items()}


PRODUCT = list(itertools.product(REF_LOSSES, ("torch.func", "higher"), MEMORY, (None, "per_tensor", "per_element")))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-signal"])
@pytest.mark.parametrize("adapt", [None, ADAPTED], ids=["all", "adapt"])
@pytest.mark.parametrize(
    ("loss_id", "backend", "memory", "rates_mode"), PRODUCT, ids=["-".join(map(str, c)) for c in PRODUCT]
)
def test_masked_meta_gradients_match_reference_py(loss_id, backend, memory, rates_mode, adapt, shared):
    model, coords, values, weights = _masked_problem(shared)
    learner = ContextPruningMetaLearner(
        model,
        inner_lr=REF_LR,
        backend=backend,
        learn_inner_lr=rates_mode,
        adapt=adapt,
        coord_range=None,
        **REF_LOSSES[loss_id],
        **MEMORY[memory],
        **REF_KW,
    )
    rates = _randomized_rates(learner) if rates_mode else None
    want = ref_meta_grads(
        model,
        coords,
        values,
        lr=REF_LR,
        weights=weights,
        adapted=learner.adapted,
        shared_from_fit=True,  # boot_trains_shared=False, the default
        rates=rates,
        mode=rates_mode,
        **_ref_options(loss_id),
        **REF_KW,
    )
    got = meta_grads(learner, (coords, values, weights))
    torch.testing.assert_close(got[0], want[0], rtol=LOSS_RTOL, atol=0)
    assert_all_close(got[1], want[1], **GRAD_TOL)


FIT_VARIANTS = {
    "shared": (True, None, None),
    "per-signal": (False, None, None),
    "per_tensor-adapt": (True, "per_tensor", ADAPTED),
    "per_element-per-signal": (False, "per_element", None),
}
FIT_LOSSES = {**REF_LOSSES, "mse": {"loss": "mse"}}


@pytest.mark.parametrize("variant", list(FIT_VARIANTS))
@pytest.mark.parametrize("scaling", ["norm", "loss", "none"])
@pytest.mark.parametrize("loss_id", list(FIT_LOSSES))
def test_masked_fit_matches_reference_py(loss_id, scaling, variant):
    """Every step, scale and fitted parameter of a weighted fit; 4 steps (past K: per-tensor rates reuse the last)."""
    shared, rates_mode, adapt = FIT_VARIANTS[variant]
    model, coords, values, weights = _masked_problem(shared)
    settings = {"learn_inner_lr": rates_mode, "adapt": adapt, "coord_range": None, **FIT_LOSSES[loss_id]}
    learner = ContextPruningMetaLearner(model, inner_lr=REF_LR, **settings, **REF_KW)
    rates = {n: r.detach() for n, r in _randomized_rates(learner).items()} if rates_mode else None
    fit = GradScaledAdapter(learner, steps=4, scaling=scaling).fit((coords, values, weights))
    options = _ref_options(loss_id) if loss_id in REF_LOSSES else {"loss": "mse"}
    for b in range(values.shape[0]):
        want_params, want_loss, want_scales = ref_fit(
            model,
            coords if shared else coords[b],
            values[b],
            steps=4,
            lr=REF_LR,
            gamma=REF_KW["gamma"],
            scaling=scaling,
            return_scales=True,
            adapted=learner.adapted,
            rates=rates,
            mode=rates_mode,
            weights=weights[b],
            **options,
        )
        torch.testing.assert_close(fit.history["loss"][:, b], want_loss, **FIT_TOL["loss"])
        torch.testing.assert_close(fit.history["scale"][:, b], want_scales, rtol=1e-9, atol=1e-14)
        assert set(fit.params) == set(want_params)
        for name, want in want_params.items():
            torch.testing.assert_close(fit.params[name][b], want, **FIT_TOL["params"])


def _ragged_signals():
    """Three signals of their own sizes; the second carries its own mask (values 4.0 where masked)."""
    gen = torch.Generator().manual_seed(3)
    signals = []
    for i, shape in enumerate(((5, 5), (3, 6), (4, 3))):
        coords = make_grid(shape, dtype=torch.float64)
        values = torch.rand(coords.shape[0], 2, generator=gen, dtype=torch.float64)
        if i == 1:
            weights = 0.5 + torch.rand(coords.shape[0], generator=gen, dtype=torch.float64)
            weights[::4] = 0.0
            values[weights == 0] = 4.0
            signals.append((coords, values, weights))
        else:
            signals.append((coords, values))
    return signals


@pytest.mark.parametrize(
    ("loss_id", "settings"),
    [("huber", {"chunk_size": 7}), ("clamped_l1", {"backend": "higher", "checkpoint": True})],
    ids=["huber-chunk", "clamped_l1-higher-checkpoint"],
)
def test_a_ragged_masked_batch_is_each_signal_at_its_own_size(loss_id, settings):
    signals = _ragged_signals()
    torch.manual_seed(0)
    model = TinySiren(2, 2).double()
    learner = ContextPruningMetaLearner(
        model,
        inner_lr=REF_LR,
        learn_inner_lr="per_tensor",
        coord_range=None,
        **REF_LOSSES[loss_id],
        **settings,
        **REF_KW,
    )
    rates = _randomized_rates(learner)
    got = meta_grads(learner, collate_signals(signals))
    alone = []
    for signal in signals:
        weights = signal[2].unsqueeze(0) if len(signal) == 3 else None
        alone.append(
            ref_meta_grads(
                model,
                signal[0],
                signal[1].unsqueeze(0),
                lr=REF_LR,
                rates=rates,
                mode="per_tensor",
                weights=weights if weights is not None else torch.ones(1, signal[1].shape[0], dtype=torch.float64),
                **_ref_options(loss_id),
                **REF_KW,
            )
        )
    want_loss = sum(a[0] for a in alone) / len(alone)
    want_grads = [sum(a[1][i] for a in alone) / len(alone) for i in range(len(got[1]))]
    torch.testing.assert_close(got[0], want_loss, rtol=1e-6, atol=0)
    assert_all_close(got[1], want_grads, rtol=1e-6, atol=1e-10)


def test_a_ragged_masked_fit_reports_each_signal_over_its_own_points():
    signals = _ragged_signals()
    torch.manual_seed(0)
    model = TinySiren(2, 2).double()
    fit = GradScaledAdapter(model, steps=3, lr=REF_LR, gamma=0.25, coord_range=None, **REF_LOSSES["huber"]).fit(
        collate_signals(signals)
    )
    for b, signal in enumerate(signals):
        weights = signal[2] if len(signal) == 3 else torch.ones(signal[1].shape[0], dtype=torch.float64)
        want_params, want_loss = ref_fit(
            model,
            signal[0],
            signal[1],
            steps=3,
            lr=REF_LR,
            gamma=0.25,
            scaling="norm",
            weights=weights,
            **_ref_options("huber"),
        )
        torch.testing.assert_close(fit.history["loss"][:, b], want_loss, **FIT_TOL["loss"])
        for name, want in want_params.items():
            torch.testing.assert_close(fit.params[name][b], want, **FIT_TOL["params"])


@pytest.mark.parametrize(
    "settings",
    [{}, {"backend": "higher", "chunk_size": 7, "checkpoint": True}, {"learn_inner_lr": "per_element"}],
    ids=["default", "higher-chunk-checkpoint", "per_element"],
)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-signal"])
def test_mse_with_unit_weights_equals_mse_without_to_1e_12(settings, shared):
    """Values in [0, 1]: with the outliers of 4.0 the inner steps amplify rounding to ~1e-11 (the unweighted path
    against the reference too), which would test conditioning rather than the weighted path."""
    model, coords, values, _ = _masked_problem(shared, outliers=False)
    ones = torch.ones(values.shape[:2], dtype=torch.float64)
    make = lambda: ContextPruningMetaLearner(model, inner_lr=REF_LR, coord_range=None, **settings, **REF_KW)  # noqa: E731
    plain, weighted = make(), make()
    if "learn_inner_lr" in settings:
        _randomized_rates(plain), _randomized_rates(weighted)
    without = meta_grads(plain, (coords, values))
    with_ones = meta_grads(weighted, (coords, values, ones))
    torch.testing.assert_close(with_ones[0], without[0], rtol=1e-12, atol=0)
    assert_all_close(with_ones[1], without[1], rtol=1e-12, atol=1e-12)
    fit_plain = GradScaledAdapter(plain, steps=3).fit((coords, values))
    fit_ones = GradScaledAdapter(weighted, steps=3).fit((coords, values, ones))
    for key in ("loss", "mse", "psnr", "scale"):
        torch.testing.assert_close(fit_ones.history[key], fit_plain.history[key], rtol=1e-12, atol=1e-12)


STATS_KEYS = {"loss", "fit_loss", "boot_distance", "grad_norm", "skipped", "step"}


@pytest.mark.parametrize("loss_id", ["mse", *REF_LOSSES])
def test_meta_step_stats_and_fit_history_keys_follow_the_loss(loss_id):
    """mse/psnr (with data_range) only for the MSE; fit_loss and loss equal the reference's full-context loss."""
    model, coords, values, weights = _masked_problem(False)
    options = _ref_options(loss_id) if loss_id != "mse" else {"loss": "mse"}
    data_range = 2.0
    settings = {"inner_lr": REF_LR, "coord_range": None, "data_range": data_range, **FIT_LOSSES[loss_id]}
    no_boot = {**REF_KW, "lam": 0.0}
    want_fit = ref_meta_grads(model, coords, values, lr=REF_LR, weights=weights, **options, **no_boot)[0]
    want_meta = ref_meta_grads(model, coords, values, lr=REF_LR, weights=weights, **options, **REF_KW)[0]
    meta = ContextPruningMetaLearner(copy.deepcopy(model), **settings, **REF_KW).meta_step((coords, values, weights))
    fit_only = ContextPruningMetaLearner(copy.deepcopy(model), **settings, **no_boot).meta_step(
        (coords, values, weights)
    )
    is_mse = loss_id == "mse"
    for stats, measured in ((meta, {"boot_rise"}), (fit_only, set())):  # boot_rise: only with a bootstrap (L >= 2)
        assert set(stats) == STATS_KEYS | measured | ({"mse", "psnr", "floor_mse"} if is_mse else set())
        assert stats["skipped"] == 0.0 and stats["step"] == 1.0
    assert meta["loss"] == pytest.approx(float(want_meta), rel=LOSS_RTOL)
    assert fit_only["fit_loss"] == pytest.approx(float(want_fit), rel=LOSS_RTOL)
    assert fit_only["loss"] == pytest.approx(fit_only["fit_loss"], rel=1e-12)
    assert meta["boot_distance"] > 0.0 and fit_only["boot_distance"] == 0.0
    if is_mse:
        assert meta["mse"] == meta["fit_loss"]
        assert meta["psnr"] == pytest.approx(10 * math.log10(data_range**2 / meta["mse"]), rel=1e-12)
    fit = GradScaledAdapter(ContextPruningMetaLearner(model, **settings, **REF_KW), steps=2).fit(
        (coords, values, weights)
    )
    assert set(fit.history) == {"loss", "scale"} | ({"mse", "psnr"} if is_mse else set())
    assert fit.history["loss"].shape == (3, 2) and fit.history["scale"].shape == (2, 2)
    if is_mse:
        assert torch.equal(fit.history["mse"], fit.history["loss"])
        torch.testing.assert_close(
            fit.history["psnr"], 10 * torch.log10(data_range**2 / fit.history["loss"]), rtol=1e-12, atol=0
        )


# ------------------------------------------------------------------------------------------------------------
# ecop_wrap.clamped_l1: DeepSDF's clamped L1 and its one-sided version, against definitions written out here.
# ------------------------------------------------------------------------------------------------------------
SDF_CLAMP = 0.1


def _one_sided_reference(pred, target):
    """Branch by branch: ``|f - y|`` in the band, ``max(0, d - f)`` outside (``y >= d``), ``max(0, f + d)``
    inside (``y <= -d``), channel-averaged."""
    d = SDF_CLAMP
    band = (pred - target).abs()
    outside = torch.relu(d - pred)
    inside = torch.relu(pred + d)
    per_channel = torch.where(target >= d, outside, torch.where(target <= -d, inside, band))
    return per_channel.mean(-1)


def _sdf_points(seed=0):
    torch.manual_seed(seed)
    pred = (torch.rand(3, 40, 2, dtype=torch.float64) - 0.5) * 0.8  # half of them beyond the clamp
    target = (torch.rand(3, 40, 2, dtype=torch.float64) - 0.5) * 0.8
    return pred.requires_grad_(True), target


def test_clamped_l1_is_deepsdfs_clamp_and_its_one_sided_version_the_written_branches():
    import ecop_wrap

    pred, target = _sdf_points()
    flat = ecop_wrap.clamped_l1(SDF_CLAMP)(pred, target)
    torch.testing.assert_close(flat, (pred.clamp(-0.1, 0.1) - target.clamp(-0.1, 0.1)).abs().mean(-1), rtol=0, atol=0)
    one_sided = ecop_wrap.clamped_l1(SDF_CLAMP, one_sided=True)
    ours, theirs = one_sided(pred, target), _one_sided_reference(pred, target)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-15)
    (g_ours,) = torch.autograd.grad(ours.sum(), pred)
    (g_ref,) = torch.autograd.grad(theirs.sum(), pred)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=0)
    # equal to the clamped loss (value and gradient) wherever every channel's prediction is within the clamp
    within = (pred.detach().abs() <= SDF_CLAMP).all(-1)
    assert within.any() and (~within).any()
    torch.testing.assert_close(ours[within], flat[within], rtol=0, atol=1e-15)
    (g_flat,) = torch.autograd.grad(flat.sum(), pred)
    torch.testing.assert_close(g_ours[within], g_flat[within], rtol=0, atol=0)


def test_one_sided_clamped_l1_has_no_plateau_where_a_field_says_outside_everywhere():
    import ecop_wrap

    target = torch.tensor([[[-0.3], [-0.05], [0.05], [0.3]]], dtype=torch.float64)  # inside, band, band, outside
    pred = torch.full_like(target, 2 * SDF_CLAMP).requires_grad_(True)  # "outside" everywhere
    (g_flat,) = torch.autograd.grad(ecop_wrap.clamped_l1(SDF_CLAMP)(pred, target).sum(), pred)
    (g_one,) = torch.autograd.grad(ecop_wrap.clamped_l1(SDF_CLAMP, one_sided=True)(pred, target).sum(), pred)
    assert g_flat.abs().sum() == 0  # DeepSDF's clamp: no point tells the field it is wrong
    assert g_one.flatten().tolist() == [1.0, 1.0, 1.0, 0.0]  # one-sided: the inside and band points push it down


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (0, ValueError, "delta must be a finite number > 0, got 0"),
        (-0.1, ValueError, "delta must be a finite number > 0, got -0.1"),
        (float("nan"), ValueError, "delta must be a finite number > 0, got nan"),
        (float("inf"), ValueError, "delta must be a finite number > 0, got inf"),
        (True, TypeError, "delta must be a float, got bool"),
        ("0.1", TypeError, "delta must be a float, got str"),
    ],
)
def test_clamped_l1_refuses_a_bad_clamp(bad, error, match):
    import ecop_wrap

    with pytest.raises(error, match=match):
        ecop_wrap.clamped_l1(bad)


def test_a_meta_gradient_with_the_one_sided_clamp_matches_the_reference():
    import ecop_wrap

    register_loss("test_one_sided_clamp", ecop_wrap.clamped_l1(SDF_CLAMP, one_sided=True), overwrite=True)
    coords, values, weights = _problem()
    values = (values - 0.5) * 0.8  # signed, half beyond the clamp
    model = TinySiren(2, 2).double()
    lib = _library(model, (coords, values, weights), "test_one_sided_clamp", {})
    ref = ref_objective_grads(
        model, coords, values, weights, gamma=GAMMA, K=K, L=L, lam=LAM, lr=LR, loss="custom", fn=_one_sided_reference
    )
    _close(lib[:2], ref)


@pytest.mark.parametrize(("loss", "options"), LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
@pytest.mark.parametrize(
    "settings", [{}, {"chunk_size": 7, "checkpoint": True}, {"first_order": True}], ids=["default", "chunk+ckpt", "fo"]
)
def test_multi_step_loss_with_weights_and_rates_matches_tests_reference(loss, options, settings):
    """step_loss with a per-point loss, masked points and per-element rates: each step's weighted pruned loss
    (tests/reference.py, the other independent reference) joins the fit term."""
    coords, values, weights = _problem(shared=False)
    model = TinySiren(2, 2).double()
    lib = _library(
        model, (coords, values, weights), loss, options, step_loss=0.5, learn_inner_lr="per_element", **settings
    )
    ref = ref_meta_grads(
        model,
        coords,
        values,
        gamma=GAMMA,
        K=K,
        L=L,
        lam=LAM,
        lr=LR,
        loss=loss,
        weights=weights,
        huber_delta=options.get("huber_delta", 1.0),
        loss_fn=LOSSES[loss] if loss == "log_cosh" else None,
        rates=lib[2].inner_lrs,
        mode="per_element",
        first_order=settings.get("first_order", False),
        step_loss=0.5,
    )
    _close(lib[:2], ref)
