"""Test-time fitting (GradScaledAdapter.fit) against the independent float64 reference ``ref_fit``."""

from __future__ import annotations

import pytest
import torch
from helpers import state_snapshot
from reference import make_problem, ref_fit, ref_pruned_fit

from ecop_wrap import ContextPruningMetaLearner, FitResult, GradScaledAdapter

SCALINGS = ["norm", "loss", "none"]
STEPS, LR, GAMMA = 4, 1e-2, 0.25


def _problem(batch: int = 2, side: int = 6, d: int = 3, shared: bool = True):
    """A float64 TinySiren and a batch ``(coords [M, C] or [B, M, C], values [B, M, D])``."""
    return make_problem(batch, side, d, shared)


def _adapter(model, scaling="norm", **kw):
    kw = {"steps": STEPS, "lr": LR, "gamma": GAMMA, "coord_range": None, **kw}
    return GradScaledAdapter(model, scaling=scaling, **kw)


def _close(got, want, rtol=1e-6):
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-10)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_single_signal_matches_reference(scaling):
    model, coords, values = _problem(batch=1)
    want_params, want_mse, want_scale = ref_fit(
        model, coords, values[0], steps=STEPS, lr=LR, gamma=GAMMA, scaling=scaling, return_scales=True
    )
    result = _adapter(model, scaling).fit((coords, values[0]))
    assert not result.batched
    assert result.history["mse"].shape == (STEPS + 1,)
    _close(result.history["mse"], want_mse)
    assert result.history["scale"].shape == (STEPS,)
    _close(result.history["scale"], want_scale)
    if scaling != "none":
        assert (result.history["scale"] > 1).all()  # pruned points are the high-error ones
    _close(result.history["psnr"], -10 * torch.log10(want_mse))
    assert set(result.params) == set(want_params)
    for name, want in want_params.items():
        assert result.params[name].shape == want.shape
        _close(result.params[name], want)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-coords", "per-signal-coords"])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_batch_matches_reference_per_signal(scaling, shared):
    model, coords, values = _problem(batch=3, shared=shared)
    result = _adapter(model, scaling).fit((coords, values))
    assert result.batched
    assert result.history["mse"].shape == (STEPS + 1, 3)
    for b in range(3):
        x = coords if shared else coords[b]
        want_params, want_mse, want_scale = ref_fit(
            model, x, values[b], steps=STEPS, lr=LR, gamma=GAMMA, scaling=scaling, return_scales=True
        )
        _close(result.history["mse"][:, b], want_mse)
        _close(result.history["scale"][:, b], want_scale)
        for name, want in want_params.items():
            assert result.params[name].shape == (3, *want.shape)
            _close(result.params[name][b], want)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_chunked_fit_equals_unchunked(scaling):
    model, coords, values = _problem(batch=2, side=7)
    whole = _adapter(model, scaling).fit((coords, values))
    chunked = _adapter(model, scaling, chunk_size=10).fit((coords, values))
    _close(chunked.history["mse"], whole.history["mse"], rtol=1e-10)
    for name in whole.params:
        _close(chunked.params[name], whole.params[name], rtol=1e-10)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_fit_never_modifies_the_model(scaling):
    model, coords, values = _problem(batch=2)
    before = state_snapshot(model)
    grads_before = [p.grad for p in model.parameters()]
    result = _adapter(model, scaling).fit((coords, values))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert [p.grad for p in model.parameters()] == grads_before
    # The fit really moved its own copy of the parameters.
    assert any(not torch.equal(result.params[n], before[n].expand_as(result.params[n])) for n in result.params)


def test_fit_works_under_no_grad():
    model, coords, values = _problem(batch=1)
    want_params, want_mse = ref_fit(model, coords, values[0], steps=STEPS, lr=LR, gamma=GAMMA, scaling="norm")
    with torch.no_grad():
        result = _adapter(model).fit((coords, values[0]))
    _close(result.history["mse"], want_mse)
    for name, want in want_params.items():
        _close(result.params[name], want)
    assert torch.is_grad_enabled()


def test_fit_works_under_inference_mode():
    model, coords, values = _problem(batch=2)
    want = _adapter(model).fit((coords, values))
    with torch.inference_mode():
        inference_coords, inference_values = coords.clone(), values.clone()  # inference tensors
        result = _adapter(model).fit((inference_coords, inference_values))
    _close(result.history["mse"], want.history["mse"], rtol=1e-12)
    for name in want.params:
        _close(result.params[name], want.params[name], rtol=1e-12)


def test_result_call_single_and_batched():
    from torch.func import functional_call

    model, coords, values = _problem(batch=2, shared=False)
    batched = _adapter(model).fit((coords, values))
    out = batched(coords)
    assert out.shape == values.shape
    for b in range(2):
        params_b = {n: p[b] for n, p in batched.params.items()}
        _close(out[b], functional_call(model, params_b, (coords[b],)), rtol=1e-12)
        # history's last MSE is the fitted model's full-context MSE
        _close(((out[b] - values[b]) ** 2).mean(), batched.history["mse"][-1, b], rtol=1e-10)
    shared_out = batched(coords[0])  # one [M, C] grid for every fitted signal
    assert shared_out.shape == values.shape

    single = _adapter(model).fit((coords[0], values[0]))
    one = single(coords[0])
    assert one.shape == values[0].shape
    _close(one, functional_call(model, single.params, (coords[0],)), rtol=1e-12)
    with pytest.raises(ValueError, match="coords"):
        single(coords)  # [B, M, C] for an unbatched result


def test_defaults_come_from_the_learner():
    model, coords, values = _problem(batch=1)
    learner = ContextPruningMetaLearner(model, gamma=0.5, K=3, L=0, inner_lr=2e-2, coord_range=None)
    adapter = GradScaledAdapter(learner, coord_range=None)
    assert (adapter.steps, adapter.lr, adapter.gamma) == (3, 2e-2, 0.5)
    assert adapter.selection_rule.name == learner.config.selection
    assert adapter.backend.name == learner.config.backend
    result = adapter.fit((coords, values[0]))
    want_params, want_mse = ref_fit(model, coords, values[0], steps=3, lr=2e-2, gamma=0.5, scaling="norm")
    _close(result.history["mse"], want_mse)
    for name, want in want_params.items():
        _close(result.params[name], want)
    # explicit arguments override the learner's values
    override = GradScaledAdapter(learner, steps=5, lr=1e-3, gamma=0.1)
    assert (override.steps, override.lr, override.gamma) == (5, 1e-3, 0.1)


def test_module_source_defaults():
    model, _, _ = _problem(batch=1)
    adapter = GradScaledAdapter(model)
    assert (adapter.steps, adapter.lr, adapter.gamma, adapter.scaling) == (16, 1e-2, 0.25, "norm")
    explicit = GradScaledAdapter(model, steps=16, lr=1e-2, gamma=0.25)
    assert (explicit.steps, explicit.lr, explicit.gamma) == (16, 1e-2, 0.25)


@pytest.mark.parametrize("batched", [False, True])
def test_zero_steps_gives_the_initial_mse_only(batched):
    model, coords, values = _problem(batch=2)
    signal = (coords, values) if batched else (coords, values[0])
    result = _adapter(model, steps=0).fit(signal)
    _, want_mse = ref_fit(model, coords, values[0], steps=0, lr=LR, gamma=GAMMA, scaling="norm")
    assert result.history["mse"].shape == ((1, 2) if batched else (1,))
    first = result.history["mse"][:, 0] if batched else result.history["mse"]
    _close(first, want_mse)
    for name, p in model.named_parameters():
        want = p.detach().expand(2, *p.shape) if batched else p.detach()
        assert torch.equal(result.params[name], want)


def test_steps_override_in_fit_call():
    model, coords, values = _problem(batch=1)
    result = _adapter(model).fit((coords, values[0]), steps=2)
    _, want_mse = ref_fit(model, coords, values[0], steps=2, lr=LR, gamma=GAMMA, scaling="norm")
    _close(result.history["mse"], want_mse)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_higher_backend_gives_the_same_fit(scaling):
    model, coords, values = _problem(batch=2, shared=False)
    a = _adapter(model, scaling, backend="torch.func").fit((coords, values))
    b = _adapter(model, scaling, backend="higher").fit((coords, values))
    _close(b.history["mse"], a.history["mse"], rtol=1e-9)
    for name in a.params:
        _close(b.params[name], a.params[name], rtol=1e-9)


def test_fit_result_is_a_fit_result_with_skips_counted():
    model, coords, values = _problem(batch=2)
    result = _adapter(model).fit((coords, values))
    assert isinstance(result, FitResult)
    assert result.skipped.shape == (2,) and int(result.skipped.sum()) == 0


def test_gamma_one_norm_scaling_equals_plain_steps():
    """With gamma=1 the pruned set is the whole context, so every scaling is 1."""
    model, coords, values = _problem(batch=2)
    plain = _adapter(model, "none").fit((coords, values))
    for scaling in ("norm", "loss"):
        full = _adapter(model, scaling, gamma=1.0).fit((coords, values))
        _close(full.history["mse"], plain.history["mse"], rtol=1e-12)


@pytest.mark.parametrize("pruned_steps", [4, 2])
def test_pruned_steps_match_reference(pruned_steps):
    """``pruned_steps`` steps on the pruned context (unscaled), then full-context scaled steps."""
    model, coords, values = _problem(batch=2, side=5, d=1)
    adapter = _adapter(model, "none", pruned_steps=pruned_steps)
    result = adapter.fit((coords, values))
    assert torch.equal(result.history["scale"], torch.ones(STEPS, 2, dtype=values.dtype))
    for b in range(2):
        if pruned_steps == STEPS:
            ref_pred, ref_hist = ref_pruned_fit(model, coords, values[b], STEPS, LR, GAMMA)
            _close(result(coords)[b], ref_pred, rtol=1e-9)
            _close(result.history["mse"][:, b], ref_hist, rtol=1e-9)
        else:  # the pruned prefix matches the pruned reference up to its length
            _, ref_hist = ref_pruned_fit(model, coords, values[b], pruned_steps, LR, GAMMA)
            _close(result.history["mse"][: pruned_steps + 1, b], ref_hist, rtol=1e-9)


def test_fit_steps_yields_every_state():
    model, coords, values = _problem(batch=2)
    adapter = _adapter(model, "norm")
    states = list(adapter.fit_steps((coords, values)))
    assert [s.step for s in states] == list(range(STEPS + 1))
    assert [s.final for s in states] == [False] * STEPS + [True]
    whole = adapter.fit((coords, values))
    torch.testing.assert_close(torch.stack([s.mse for s in states]), whole.history["mse"], rtol=0, atol=0)
    assert all(s.pruned_idx.shape == (2, max(1, int(GAMMA * 36))) for s in states[:-1])
