"""Bad inputs fail early with a clear error that names the argument, and change nothing.

"Nothing" means: the model's parameters and buffers, the optimizer's state (after one real step, so Adam has
moments to lose), the learner's step counter and the caller's data tensors are bit-identical afterwards.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import meta_grads
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren, make_grid

SIDE, BATCH = 6, 2
M = SIDE * SIDE


def _model() -> nn.Module:
    torch.manual_seed(0)
    return Siren(2, 3, 16, 2)


def _batch(batch: int = BATCH, dtype=torch.float32):
    coords = make_grid((SIDE, SIDE), dtype=dtype)
    values = torch.rand(batch, M, 3, dtype=dtype)
    return coords, values


def _learner(**kw) -> ContextPruningMetaLearner:
    kw = {"gamma": 0.25, "K": 2, "L": 1, "outer_lr": 1e-3, **kw}
    learner = ContextPruningMetaLearner(_model(), **kw)
    learner.meta_step(_batch())  # give the optimizer state to lose
    return learner


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        equal = a == b
        if a.is_floating_point():
            equal |= a.isnan() & b.isnan()
        return bool(equal.all())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _state(learner: ContextPruningMetaLearner):
    return {
        "model": _clone(learner.model.state_dict()),
        "optimizer": _clone(learner.optimizer.state_dict()),
        "step": learner.step_count,
        "generator": learner.generator.get_state().clone(),
    }


def _assert_rejected(learner, batch, error, match):
    """meta_step, meta_loss and a fit on ``batch`` all raise ``error`` and leave everything as it was."""
    before = _state(learner)
    data = _clone(batch)
    adapter = GradScaledAdapter(learner, steps=2)
    calls = [learner.meta_step, learner.meta_loss]
    values = batch[1] if isinstance(batch, (tuple, list)) and len(batch) == 2 else None
    if isinstance(values, torch.Tensor) and values.ndim == 3:
        calls.append(adapter.fit)
    for call in calls:
        with pytest.raises(error, match=match):
            call(batch)
    assert _same(_state(learner), before)
    assert _same(batch, data)


# ------------------------------------------------------------------------------------------- shapes
def test_mismatched_points():
    coords, values = _batch()
    _assert_rejected(_learner(), (coords[:-1], values), ValueError, "coords has M=35 points but values has M=36")


def test_mismatched_signals():
    coords, values = _batch()
    per_signal = coords.unsqueeze(0).repeat(3, 1, 1)
    _assert_rejected(_learner(), (per_signal, values), ValueError, "coords has B=3 signals but values has B=2")


def test_model_output_size_differs_from_values():
    coords, values = _batch()
    _assert_rejected(_learner(), (coords, values[..., :2]), ValueError, r"output size D must equal the values")


@pytest.mark.parametrize(
    ("coords_shape", "values_shape", "match"),
    [
        ((M,), (BATCH, M, 3), "coords must be"),
        ((M, 2), (M * BATCH * 3,), "values must be"),
        ((1, 1, M, 2), (BATCH, M, 3), "coords must be"),
    ],
)
def test_wrong_ranks(coords_shape, values_shape, match):
    coords, values = torch.zeros(coords_shape), torch.rand(values_shape)
    _assert_rejected(_learner(), (coords, values), ValueError, match)


def test_empty_context_and_empty_batch():
    learner = _learner()
    _assert_rejected(learner, (torch.zeros(0, 2), torch.zeros(BATCH, 0, 3)), ValueError, "at least one point")
    _assert_rejected(learner, (make_grid((SIDE, SIDE)), torch.zeros(0, M, 3)), ValueError, "B=0")
    adapter = GradScaledAdapter(learner)
    with pytest.raises(ValueError, match="at least one point"):
        adapter.fit((torch.zeros(0, 2), torch.zeros(0, 3)))


# ------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values(bad):
    coords, values = _batch()
    values[1, 5, 2] = bad
    _assert_rejected(_learner(), (coords, values), ValueError, "values contains NaN or inf")


def test_non_finite_coords():
    coords, values = _batch()
    coords = coords.clone()
    coords[3, 0] = float("nan")
    _assert_rejected(_learner(), (coords, values), ValueError, "coords contains NaN or inf")


def test_integer_tensors():
    coords, values = _batch()
    _assert_rejected(_learner(), (coords, (values * 255).to(torch.uint8)), TypeError, "values must be a floating-point")
    _assert_rejected(_learner(), (coords.long(), values), TypeError, "coords must be a floating-point")


def test_dtype_differs_from_model():
    coords, values = _batch()
    _assert_rejected(_learner(), (coords, values.double()), TypeError, "values has dtype torch.float64")
    _assert_rejected(_learner(), (coords.double(), values), TypeError, "coords has dtype torch.float64")


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ("not a batch", "pair"),
        ((make_grid((SIDE, SIDE)),), "pair"),
        ((make_grid((SIDE, SIDE)).tolist(), torch.rand(BATCH, M, 3)), "coords must be a torch.Tensor"),
        ((make_grid((SIDE, SIDE)), torch.rand(BATCH, M, 3).numpy()), "values must be a torch.Tensor"),
    ],
    ids=["string", "one-tuple", "list-coords", "numpy-values"],
)
def test_non_tensor_inputs(batch, match):
    learner = _learner()
    before = _state(learner)
    for call in (learner.meta_step, learner.meta_loss, GradScaledAdapter(learner).fit):
        with pytest.raises(TypeError, match=match):
            call(batch)
    assert _same(_state(learner), before)


def test_fit_single_signal_with_batched_coords():
    coords, values = _batch()
    adapter = GradScaledAdapter(_model())
    with pytest.raises(ValueError, match=r"single signal needs coords \[M, C\]"):
        adapter.fit((coords.unsqueeze(0), values[0]))


# ------------------------------------------------------------------------------------ hyper-parameters
@pytest.mark.parametrize("gamma", [0, 0.0, -0.1, 1.5, float("nan")])
def test_gamma_outside_unit_interval(gamma):
    with pytest.raises(ValueError, match="gamma"):
        ContextPruningMetaLearner(_model(), gamma=gamma)
    with pytest.raises(ValueError, match="gamma"):
        GradScaledAdapter(_model(), gamma=gamma)


@pytest.mark.parametrize("gamma", ["0.25", True])
def test_gamma_wrong_type(gamma):
    with pytest.raises(TypeError, match="gamma"):
        ContextPruningMetaLearner(_model(), gamma=gamma)
    with pytest.raises(TypeError, match="gamma"):
        GradScaledAdapter(_model(), gamma=gamma)


def test_gamma_none_is_only_a_default_for_the_adapter():
    with pytest.raises(TypeError, match="gamma"):
        ContextPruningMetaLearner(_model(), gamma=None)
    assert GradScaledAdapter(_model(), gamma=None).gamma == 0.25


@pytest.mark.parametrize("K", [0, -1])
def test_k_below_one(K):
    with pytest.raises(ValueError, match="K must be >= 1"):
        ContextPruningMetaLearner(_model(), K=K)


def test_k_not_an_int():
    with pytest.raises(TypeError, match="K must be an int"):
        ContextPruningMetaLearner(_model(), K=2.0)


def test_l_negative():
    with pytest.raises(ValueError, match="L must be >= 0"):
        ContextPruningMetaLearner(_model(), L=-1)


@pytest.mark.parametrize(
    ("name", "value"), [("inner_lr", 0.0), ("inner_lr", -1e-2), ("outer_lr", float("inf")), ("lam", -1.0)]
)
def test_bad_rates(name, value):
    with pytest.raises(ValueError, match=name):
        ContextPruningMetaLearner(_model(), **{name: value})


def test_fit_bad_steps_and_lr():
    with pytest.raises(ValueError, match="steps"):
        GradScaledAdapter(_model(), steps=-1)
    with pytest.raises(ValueError, match="lr"):
        GradScaledAdapter(_model(), lr=0.0)
    with pytest.raises(ValueError, match="steps"):
        GradScaledAdapter(_model(), coord_range=None).fit(_batch(), steps=-2)


def test_unknown_backend_selection_and_scaling():
    with pytest.raises(ValueError, match="backend must be one of"):
        ContextPruningMetaLearner(_model(), backend="jax")
    with pytest.raises(ValueError, match="selection must be one of"):
        ContextPruningMetaLearner(_model(), selection="largest")
    with pytest.raises(ValueError, match="batching must be one of"):
        ContextPruningMetaLearner(_model(), batching="fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        GradScaledAdapter(_model(), backend="jax")
    with pytest.raises(ValueError, match="selection must be one of"):
        GradScaledAdapter(_model(), selection="largest")
    with pytest.raises(ValueError, match="scaling must be one of"):
        GradScaledAdapter(_model(), scaling="grad")
    with pytest.raises(ValueError, match="scaling must be one of"):
        GradScaledAdapter(_model(), scaling=None)


def test_bad_optimizer():
    with pytest.raises(TypeError, match="optimizer must be"):
        ContextPruningMetaLearner(_model(), optimizer="adam")


# --------------------------------------------------------------------------------------------- models
class _WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_batchnorm_model():
    with pytest.raises(ValueError, match="BatchNorm1d"):
        ContextPruningMetaLearner(_WithBatchNorm())
    with pytest.raises(ValueError, match="BatchNorm1d"):
        GradScaledAdapter(_WithBatchNorm())


def test_model_without_trainable_parameters():
    frozen = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ContextPruningMetaLearner(frozen)
    with pytest.raises(ValueError, match="no trainable parameters"):
        GradScaledAdapter(frozen)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ContextPruningMetaLearner(nn.ReLU())


@pytest.mark.parametrize("model", ["siren", None, lambda x: x])
def test_not_a_module(model):
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        ContextPruningMetaLearner(model)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        GradScaledAdapter(model)


# ------------------------------------------------------------------------------- layouts and ranges
def _non_contiguous(coords: torch.Tensor, values: torch.Tensor):
    """The same data through transposed and strided views."""
    coords_nc = coords.T.contiguous().T
    values_nc = values.permute(0, 2, 1).contiguous().permute(0, 2, 1)
    padded = torch.zeros(values.shape[0], values.shape[1], 2 * values.shape[2])
    padded[..., ::2] = values
    values_strided = padded[..., ::2]
    assert not coords_nc.is_contiguous() and not values_nc.is_contiguous() and not values_strided.is_contiguous()
    return (coords_nc, values_nc), (coords_nc, values_strided)


def test_non_contiguous_inputs_give_the_contiguous_result():
    coords, values = _batch()
    learner = ContextPruningMetaLearner(_model(), gamma=0.25, K=2, L=1, seed=0)
    want_loss, want_grads = meta_grads(learner, (coords, values))
    adapter = GradScaledAdapter(learner, steps=3)
    want_fit = adapter.fit((coords, values))
    for batch in _non_contiguous(coords, values):
        loss, grads = meta_grads(learner, batch)
        torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
        fit = adapter.fit(batch)
        torch.testing.assert_close(fit.history["mse"], want_fit.history["mse"], rtol=1e-6, atol=0)


def test_expanded_inputs_give_the_contiguous_result():
    coords, values = _batch(batch=1)
    learner = ContextPruningMetaLearner(_model(), gamma=0.25, K=2, L=1, seed=0)
    dense = (coords.unsqueeze(0).repeat(3, 1, 1), values.repeat(3, 1, 1))
    expanded = (coords.unsqueeze(0).expand(3, -1, -1), values.expand(3, -1, -1))
    assert expanded[0].stride(0) == 0 and expanded[1].stride(0) == 0
    want_loss, want_grads = meta_grads(learner, dense)
    loss, grads = meta_grads(learner, expanded)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    adapter = GradScaledAdapter(learner, steps=3)
    want_fit, fit = adapter.fit(dense), adapter.fit(expanded)
    torch.testing.assert_close(fit.history["mse"], want_fit.history["mse"], rtol=1e-6, atol=0)
    for name in fit.params:
        torch.testing.assert_close(fit.params[name], want_fit.params[name], rtol=1e-5, atol=1e-7)


def _range_warnings(call) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if "outside the expected range" in str(w.message)]


def test_coords_outside_unit_box_warn_once_per_learner():
    coords, values = _batch()
    wide = coords * 2.0
    first = ContextPruningMetaLearner(_model(), K=1, L=0)
    assert len(_range_warnings(lambda: first.meta_loss((wide, values)))) == 1
    assert len(_range_warnings(lambda: first.meta_loss((wide, values)))) == 0
    assert len(_range_warnings(lambda: first.meta_step((wide, values)))) == 0
    second = ContextPruningMetaLearner(_model(), K=1, L=0)
    assert len(_range_warnings(lambda: second.meta_loss((wide, values)))) == 1
    # inside the box, or with the check switched off: no warning
    third = ContextPruningMetaLearner(_model(), K=1, L=0)
    assert len(_range_warnings(lambda: third.meta_loss((coords, values)))) == 0
    quiet = ContextPruningMetaLearner(_model(), K=1, L=0, coord_range=None)
    assert len(_range_warnings(lambda: quiet.meta_loss((wide, values)))) == 0
    adapter = GradScaledAdapter(first, steps=1)
    assert len(_range_warnings(lambda: adapter.fit((wide, values)))) == 1
    assert len(_range_warnings(lambda: adapter.fit((wide, values)))) == 0


def test_warning_memory_is_not_inherited_by_a_new_object():
    """An adapter created at the address of a garbage-collected one that warned still warns."""
    coords, values = _batch()
    model = _model()
    warned_ids = set()
    for _ in range(200):
        adapter = GradScaledAdapter(model, steps=0)
        reused = id(adapter) in warned_ids
        assert len(_range_warnings(lambda fit=adapter.fit: fit((coords * 2, values)))) == 1
        warned_ids.add(id(adapter))
        del adapter  # freed at once by reference counting; CPython tends to reuse the address right away
        if reused:
            return
    pytest.skip("CPython never reused an address in 200 tries; nothing to check")
