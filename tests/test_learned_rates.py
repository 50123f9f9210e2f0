"""Learned inner step sizes and partial adaptation (``learn_inner_lr=``, ``adapt=``, ``ModulatedSiren``).

Meta-gradients w.r.t. theta_0 and every learned rate are checked against the independent float64 per-signal
reference in tests/reference.py, for both backends, shared and per-signal coordinates and every memory mode.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_all_close, meta_grads
from reference import TinySiren, make_problem, ref_fit, ref_meta_grads

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, ModulatedSiren, make_grid

MODES = {
    "plain": {},
    "chunked": {"chunk_size": 7},
    "checkpoint": {"checkpoint": True},
    "chunked+checkpoint": {"chunk_size": 10, "checkpoint": True},
    "first-order": {"first_order": True},
}
# Every memory mode with torch.func on a shared grid; the other combinations on the modes that differ most.
CASES = (
    [("torch.func", m, True) for m in MODES]
    + [("torch.func", m, False) for m in ("plain", "chunked")]
    + [("higher", m, s) for m in ("plain", "chunked+checkpoint") for s in (True, False)]
)
CASE_IDS = [f"{b}-{m}-{'shared' if s else 'per-signal'}" for b, m, s in CASES]
KW = {"gamma": 0.25, "K": 3, "L": 2, "lam": 10.0}


def _randomize_rates(learner: ContextPruningMetaLearner, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rates that differ per tensor, step and element (so a mix-up cannot pass), as float64 leaves for the reference."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rate in learner.inner_lrs.values():
            rate.copy_(0.5e-2 + 1e-2 * torch.rand(rate.shape, generator=gen, dtype=rate.dtype))
    return {n: r.detach().clone().requires_grad_(True) for n, r in learner.inner_lrs.items()}


def _reference(model, coords, values, boot_trains_shared: bool, **kw):
    return ref_meta_grads(model, coords, values, shared_from_fit=not boot_trains_shared, **kw)


def _assert_matches(library, reference) -> None:
    (loss, grads), (ref_loss, ref_grads) = library, reference
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    assert_all_close(grads, ref_grads, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("rates_mode", ["per_tensor", "per_element"])
@pytest.mark.parametrize(("backend", "mode", "shared"), CASES, ids=CASE_IDS)
def test_learned_rates_meta_gradients_match_reference(rates_mode, backend, mode, shared):
    mode = MODES[mode]
    model, coords, values = make_problem(2, 6, 3, shared)
    learner = ContextPruningMetaLearner(
        model, backend=backend, learn_inner_lr=rates_mode, coord_range=None, **KW, **mode
    )
    rates = _randomize_rates(learner)
    ref = ref_meta_grads(
        model, coords, values, lr=1e-2, rates=rates, mode=rates_mode, first_order=mode.get("first_order", False), **KW
    )
    _assert_matches(meta_grads(learner, (coords, values)), ref)


ADAPT = {
    "output-only": (["out.*"], ["out.weight", "out.bias"]),
    "predicate": (lambda name, p: name.startswith("hidden.1"), ["hidden.1.weight", "hidden.1.bias"]),
    "one-tensor": (["hidden.0.weight"], ["hidden.0.weight"]),
}


@pytest.mark.parametrize("boot_trains_shared", [False, True], ids=["default", "paper"])
@pytest.mark.parametrize("adapt", list(ADAPT), ids=list(ADAPT))
@pytest.mark.parametrize(("backend", "mode", "shared"), CASES, ids=CASE_IDS)
def test_partial_adaptation_meta_gradients_match_reference(adapt, backend, mode, shared, boot_trains_shared):
    mode = MODES[mode]
    spec, names = ADAPT[adapt]
    model, coords, values = make_problem(2, 6, 3, shared)
    learner = ContextPruningMetaLearner(
        model, backend=backend, adapt=spec, boot_trains_shared=boot_trains_shared, coord_range=None, **KW, **mode
    )
    assert learner.adapted == names
    first_order = mode.get("first_order", False)
    ref = _reference(model, coords, values, boot_trains_shared, lr=1e-2, adapted=names, first_order=first_order, **KW)
    _assert_matches(meta_grads(learner, (coords, values)), ref)


@pytest.mark.parametrize("boot_trains_shared", [False, True], ids=["default", "paper"])
@pytest.mark.parametrize(("backend", "mode", "shared"), CASES, ids=CASE_IDS)
def test_latent_only_with_learned_rates_matches_reference(backend, mode, shared, boot_trains_shared):
    mode = MODES[mode]
    torch.manual_seed(0)
    model = ModulatedSiren(2, 3, 12, 2, latent_dim=4).double()
    with torch.no_grad():  # a non-zero starting code, so every term of the gradient is exercised
        model.latent.normal_(0, 0.1)
    _, coords, values = make_problem(2, 6, 3, shared)
    learner = ContextPruningMetaLearner(
        model,
        backend=backend,
        adapt=["latent"],
        learn_inner_lr="per_element",
        boot_trains_shared=boot_trains_shared,
        coord_range=None,
        **KW,
        **mode,
    )
    rates = _randomize_rates(learner)
    ref = _reference(
        model,
        coords,
        values,
        boot_trains_shared,
        lr=1e-2,
        adapted=["latent"],
        rates=rates,
        mode="per_element",
        first_order=mode.get("first_order", False),
        **KW,
    )
    _assert_matches(meta_grads(learner, (coords, values)), ref)


def test_default_adapts_everything_with_the_fixed_rate():
    model, _, _ = make_problem(2, 6, 3, True)
    learner = ContextPruningMetaLearner(model, coord_range=None, **KW)
    assert learner.adapted == [n for n, _ in model.named_parameters()]
    assert learner.inner_lrs == {}
    assert len(learner.optimizer.param_groups) == 1


def test_rates_shapes_start_value_and_param_group():
    model = TinySiren(2, 3).double()
    per_tensor = ContextPruningMetaLearner(model, K=5, learn_inner_lr="per_tensor", inner_lr=3e-2, rates_lr=1e-3)
    assert {n: tuple(r.shape) for n, r in per_tensor.inner_lrs.items()} == {
        n: (5,) for n, _ in model.named_parameters()
    }
    assert all(r.is_leaf and r.requires_grad and bool((r == 3e-2).all()) for r in per_tensor.inner_lrs.values())
    assert per_tensor.optimizer.param_groups[1]["lr"] == 1e-3
    assert set(map(id, per_tensor.optimizer.param_groups[1]["params"])) == set(map(id, per_tensor.inner_lrs.values()))
    per_element = ContextPruningMetaLearner(model, learn_inner_lr="per_element", adapt=["out.*"])
    assert {n: r.shape for n, r in per_element.inner_lrs.items()} == {
        "out.weight": model.out.weight.shape,
        "out.bias": model.out.bias.shape,
    }


def test_rates_stay_in_bounds():
    model, coords, values = make_problem(2, 6, 3, True)
    learner = ContextPruningMetaLearner(
        model, learn_inner_lr="per_element", max_inner_lr=2e-2, rates_lr=1.0, outer_lr=1e-4, coord_range=None, **KW
    )
    moved = False
    for _ in range(4):
        learner.meta_step((coords, values))
        for rate in learner.inner_lrs.values():
            assert float(rate.detach().min()) >= 0.0 and float(rate.detach().max()) <= 2e-2
            moved |= bool((rate != 1e-2).any())
    assert moved  # the rates are really learned
    assert any(bool(((r == 0) | (r == 2e-2)).any()) for r in learner.inner_lrs.values())  # and the bound bites


def test_resume_with_learned_rates_is_bit_identical(tmp_path):
    def make():
        torch.manual_seed(0)
        model = TinySiren(2, 3, width=10)
        return ContextPruningMetaLearner(
            model, learn_inner_lr="per_tensor", rates_lr=1e-2, outer_lr=1e-3, seed=0, coord_range=None, **KW
        )

    gen = torch.Generator().manual_seed(1)
    grid = make_grid((6, 6))
    batches = [(grid, torch.rand(2, 36, 3, generator=gen)) for _ in range(4)]
    straight = make()
    for batch in batches:
        straight.meta_step(batch)
    first = make()
    for batch in batches[:2]:
        first.meta_step(batch)
    first.save(tmp_path / "c.pt")
    resumed = make()
    resumed.load(tmp_path / "c.pt")
    for batch in batches[2:]:
        resumed.meta_step(batch)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for name in straight.inner_lrs:
        assert torch.equal(straight.inner_lrs[name], resumed.inner_lrs[name])


def test_checkpoint_without_learned_rates_is_a_clear_error(tmp_path):
    model, _, _ = make_problem(2, 6, 3, True)
    ContextPruningMetaLearner(model, **KW).save(tmp_path / "plain.pt")
    learner = ContextPruningMetaLearner(model, learn_inner_lr="per_tensor", **KW)
    with pytest.raises(ValueError, match="learn_inner_lr"):
        learner.load(tmp_path / "plain.pt")


def test_skipped_step_leaves_rates_untouched():
    model, coords, values = make_problem(2, 6, 3, True)
    learner = ContextPruningMetaLearner(model, learn_inner_lr="per_element", coord_range=None, **KW)
    before = {n: r.detach().clone() for n, r in learner.inner_lrs.items()}
    with torch.no_grad():
        model.out.bias.fill_(float("inf"))  # every prediction is infinite: the loss is not finite
    stats = learner.meta_step((coords, values))
    assert stats["skipped"] == 1.0
    assert all(torch.equal(before[n], r) for n, r in learner.inner_lrs.items())


@pytest.mark.parametrize("rates_mode", ["per_tensor", "per_element"])
def test_adapter_fits_with_the_learned_rates(rates_mode):
    model, coords, values = make_problem(1, 6, 3, True)
    learner = ContextPruningMetaLearner(model, K=2, learn_inner_lr=rates_mode, coord_range=None)
    rates = {n: r.detach() for n, r in _randomize_rates(learner).items()}
    steps = 4  # beyond K: per-tensor rates reuse the last step's
    fit = GradScaledAdapter(learner, steps=steps, gamma=0.25).fit((coords, values[0]))
    want_params, want_mse = ref_fit(
        model, coords, values[0], steps=steps, lr=None, gamma=0.25, scaling="norm", rates=rates, mode=rates_mode
    )
    torch.testing.assert_close(fit.history["mse"], want_mse, rtol=1e-6, atol=1e-10)
    for name, want in want_params.items():
        torch.testing.assert_close(fit.params[name], want, rtol=1e-6, atol=1e-10)
    explicit = GradScaledAdapter(learner, steps=steps, lr=1e-2)
    assert explicit.lr == 1e-2 and not explicit.rates.learned  # an explicit lr still overrides


def test_latent_only_fit_returns_compact_codes():
    torch.manual_seed(0)
    model = ModulatedSiren(2, 3, 16, 2, latent_dim=8)
    learner = ContextPruningMetaLearner(model, adapt=["latent"], learn_inner_lr="per_element", K=2, coord_range=None)
    coords = make_grid((6, 6))
    values = torch.rand(5, 36, 3)
    learner.meta_step((coords, values))
    fit = GradScaledAdapter(learner).fit((coords, values))
    assert set(fit.params) == {"latent"} and fit.params["latent"].shape == (5, 8)
    assert fit(coords).shape == (5, 36, 3)


def test_gradncp_ranks_by_the_output_layer_even_when_it_is_not_adapted():
    torch.manual_seed(0)
    model = ModulatedSiren(2, 3, 16, 2, latent_dim=8)
    learner = ContextPruningMetaLearner(model, adapt=["latent"], selection="gradncp", K=2, coord_range=None)
    assert learner.selection_rule.layer is model.output
    coords = make_grid((6, 6))
    assert torch.isfinite(learner.meta_loss((coords, torch.rand(2, 36, 3))))


@pytest.mark.parametrize(
    ("adapt", "error", "match"),
    [
        (["nothing.*"], ValueError, "matches no parameter"),
        (["frozen"], ValueError, "requires_grad=False"),
        (lambda name, p: False, ValueError, "selects no parameter"),
        (42, TypeError, "adapt must be"),
    ],
)
def test_bad_adapt_is_a_clear_error(adapt, error, match):
    model = TinySiren(2, 3)
    model.register_parameter("frozen", torch.nn.Parameter(torch.zeros(2), requires_grad=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(error, match=match):
        ContextPruningMetaLearner(model, adapt=adapt)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"learn_inner_lr": "per_layer"}, "learn_inner_lr"),
        ({"learn_inner_lr": "per_tensor", "max_inner_lr": 1e-3}, "max_inner_lr"),
        ({"learn_inner_lr": "per_tensor", "rates_lr": -1.0}, "rates_lr"),
    ],
)
def test_bad_rate_options_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        ContextPruningMetaLearner(TinySiren(2, 3), **kw)


def test_the_split_meta_loss_keeps_its_graph_until_backward():
    """meta_loss with shared parameters: the same graph held (SavedTensorMeter) as the paper's meta-loss, and
    a backward that fills .grad with the split meta-gradient; nothing is computed before the backward."""
    from ecop_wrap import SavedTensorMeter

    torch.manual_seed(0)
    model = ModulatedSiren(2, 3, 12, 2, latent_dim=4).double()
    _, coords, values = make_problem(2, 6, 3, True)
    held = {}
    for split in (False, True):
        learner = ContextPruningMetaLearner(
            model, adapt=["latent"], boot_trains_shared=not split, coord_range=None, **KW
        )
        with SavedTensorMeter() as meter:
            loss = learner.meta_loss((coords, values))
            held[split] = meter.live_bytes()
        assert all(p.grad is None for p in model.parameters())
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        want = _reference(model, coords, values, not split, lr=1e-2, adapted=["latent"], **KW)
        assert_all_close(grads, want[1], rtol=1e-6, atol=1e-10)
    assert held[True] == held[False] > 0
