"""Any module, both backends: the bundled INRs, a custom module with a buffer and a non-Linear parameter,
frozen parameters, float64, SIREN's initialisation, and CUDA when there is one."""

from __future__ import annotations

import math

import pytest
import torch
from reference import ref_meta_grads
from torch import nn

from ecop_wrap import (
    ContextPruningMetaLearner,
    FourierFeatureMLP,
    GradScaledAdapter,
    Siren,
    make_grid,
)

BACKENDS = ["torch.func", "higher"]


class ScaledSine(nn.Module):
    """A custom INR: sine features, a learnable per-channel output scale (not an nn.Linear) and a buffer."""

    def __init__(self, in_features: int = 2, out_features: int = 3, width: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.out = nn.Linear(width, out_features)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, out_features))
        self.register_buffer("shift", torch.full((out_features,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.sin(10.0 * self.inp(x))) * self.scale + self.shift


def _batch(batch: int = 2, side: int = 6, d: int = 3, dtype=torch.float32, shared: bool = True):
    grid = make_grid((side, side), dtype=dtype)
    coords = (
        grid
        if shared
        else 0.95 * grid.unsqueeze(0).repeat(batch, 1, 1) + 0.05 * torch.rand(batch, side * side, 2, dtype=dtype)
    )
    return coords, torch.rand(batch, side * side, d, dtype=dtype)


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "siren": Siren(2, 3, 16, 2),
        "fourier": FourierFeatureMLP(2, 3, num_frequencies=8, scale=2.0, hidden_features=16, hidden_layers=2),
        "custom": ScaledSine(),
    }


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["siren", "fourier", "custom"])
def test_meta_step_and_fit_work_for_any_module(name, backend):
    model = _models()[name]
    batch = _batch(shared=(name != "custom"))
    before = _snapshot(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    learner = ContextPruningMetaLearner(model, gamma=0.25, K=3, L=2, lam=10.0, outer_lr=1e-3, backend=backend)
    stats = [learner.meta_step(batch) for _ in range(2)]
    assert all(s["skipped"] == 0.0 and math.isfinite(s["loss"]) for s in stats)
    params_after = dict(model.named_parameters())
    assert all(not torch.equal(params_after[n], before[n]) for n in params_after), "every parameter was updated"
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), f"buffer {n} must stay fixed"
    if backend == "torch.func":
        expected = ("vmap", "loop") if name == "custom" else ("bmm",)
        assert learner.backend.batching in expected
    result = GradScaledAdapter(learner, steps=4).fit(batch)
    mse = result.history["mse"]
    assert mse.shape == (5, 2) and bool(torch.isfinite(mse).all())
    assert bool((mse[-1] < mse[0]).all()), "fitting reduces every signal's error"
    assert result(batch[0]).shape == batch[1].shape
    assert set(result.params) == {n for n, _ in model.named_parameters()}


def test_custom_module_does_not_take_the_bmm_path():
    learner = ContextPruningMetaLearner(ScaledSine(), K=1, L=0)
    assert learner.backend.batching == "auto"
    learner.meta_step(_batch())
    assert learner.backend.batching in ("vmap", "loop")
    with pytest.raises(ValueError, match="bmm"):
        ContextPruningMetaLearner(ScaledSine(), batching="bmm")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_match_the_reference_on_a_non_linear_model(backend):
    torch.manual_seed(1)
    model = ScaledSine().double()
    coords, values = _batch(dtype=torch.float64, shared=False)
    kw = {"gamma": 0.25, "K": 3, "L": 2, "lam": 10.0}
    ref_loss, ref_grads = ref_meta_grads(model, coords, values, lr=1e-2, **kw)
    learner = ContextPruningMetaLearner(model, backend=backend, coord_range=None, **kw)
    loss = learner.meta_loss((coords, values))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-9, atol=0)
    for g, w in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)


def test_both_backends_agree_on_a_non_linear_model():
    torch.manual_seed(2)
    model = ScaledSine().double()
    coords, values = _batch(batch=3, dtype=torch.float64, shared=False)
    grads = {}
    for backend in BACKENDS:
        learner = ContextPruningMetaLearner(model, 0.25, 3, 2, 10.0, backend=backend, coord_range=None)
        grads[backend] = torch.autograd.grad(learner.meta_loss((coords, values)), list(model.parameters()))
    for a, b in zip(grads["torch.func"], grads["higher"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_parameters_stay_bit_identical(backend):
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2)
    model.layers[0].linear.weight.requires_grad_(False)
    model.output.bias.requires_grad_(False)
    before = _snapshot(model)
    learner = ContextPruningMetaLearner(model, gamma=0.25, K=2, L=1, outer_lr=1e-2, backend=backend)
    batch = _batch()
    for _ in range(2):
        learner.meta_step(batch)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"{name} should have been trained"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
            assert p.grad is None
    result = GradScaledAdapter(learner, steps=3).fit(batch)
    assert "layers.0.linear.weight" not in result.params and "output.bias" not in result.params
    assert bool((result.history["mse"][-1] < result.history["mse"][0]).all())
    assert torch.equal(model.layers[0].linear.weight, before["layers.0.linear.weight"])


def test_frozen_parameters_match_the_reference():
    torch.manual_seed(3)
    model = ScaledSine().double()
    model.inp.bias.requires_grad_(False)
    model.scale.requires_grad_(False)
    coords, values = _batch(dtype=torch.float64)
    kw = {"gamma": 0.25, "K": 2, "L": 1, "lam": 10.0}
    _, ref_grads = ref_meta_grads(model, coords, values, lr=1e-2, **kw)
    learner = ContextPruningMetaLearner(model, coord_range=None, **kw)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(learner.meta_loss((coords, values)), trainable)
    assert len(grads) == len(ref_grads) == 3
    for g, w in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_end_to_end(backend):
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2).double()
    batch = _batch(dtype=torch.float64)
    learner = ContextPruningMetaLearner(model, gamma=0.25, K=2, L=1, outer_lr=1e-3, backend=backend)
    stats = learner.meta_step(batch)
    assert stats["skipped"] == 0.0
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(s.dtype == torch.float64 for s in learner.optimizer.state[next(model.parameters())].values() if s.ndim)
    result = GradScaledAdapter(learner, steps=2).fit(batch)
    assert result.history["mse"].dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in result.params.values())
    assert result(batch[0]).dtype == torch.float64


def _uniform_bound_check(tensor: torch.Tensor, bound: float) -> None:
    """Samples of U(-bound, bound): all inside, reaching close to the edges, with the uniform's spread."""
    flat = tensor.detach().flatten()
    assert float(flat.abs().max()) <= bound
    assert float(flat.abs().max()) >= 0.9 * bound
    torch.testing.assert_close(flat.std(), torch.tensor(bound / math.sqrt(3.0)), rtol=0.1, atol=0)


def test_siren_initialisation():
    torch.manual_seed(0)
    w0, width = 30.0, 256
    model = Siren(2, 3, width, 4, w0=w0)
    first = model.layers[0].linear
    _uniform_bound_check(first.weight, 1.0 / 2)
    for layer in model.layers[1:]:
        _uniform_bound_check(layer.linear.weight, math.sqrt(6.0 / width) / w0)
    _uniform_bound_check(model.output.weight, math.sqrt(6.0 / width) / w0)
    assert torch.equal(model.output.bias, torch.zeros(3))
    assert len(model.layers) == 4 and all(layer.w0 == w0 for layer in model.layers)
    # sine activations of an untrained SIREN stay in the unit-variance regime through depth
    coords = make_grid((64, 64))
    with torch.no_grad():
        hidden = model.layers(coords)
        out = model(coords)
    assert 0.5 < float(hidden.std()) < 0.9  # arcsine distribution of sin: std 1/sqrt(2) ~ 0.71
    # the output offset centres the untrained model on 0.5, the middle of [0, 1] data
    assert abs(float(out.mean()) - 0.5) < 0.05
    assert float(out.std()) < 0.5
    shifted = Siren(2, 3, width, 4, output_offset=0.0)
    with torch.no_grad():
        assert abs(float(shifted(coords).mean())) < 0.05


def test_siren_rejects_bad_sizes():
    with pytest.raises(ValueError, match="hidden_layers"):
        Siren(2, 3, 16, 0)


def test_fourier_features_buffer_is_saved_and_fixed():
    model = FourierFeatureMLP(2, 3, num_frequencies=4, hidden_features=8, hidden_layers=1)
    assert "frequencies" in model.state_dict()
    assert "frequencies" not in dict(model.named_parameters())
    assert model.frequencies.shape == (4, 2)
    out = model(make_grid((4, 4)))
    assert out.shape == (16, 3)


def test_fourier_features_are_computed_in_float32_under_bf16_autocast():
    """B x reaches hundreds of radians at scale 10; in bf16 its rounding would be about a radian."""
    model = FourierFeatureMLP(2, 3, num_frequencies=16, scale=10.0, hidden_features=8, hidden_layers=1)
    coords = torch.rand(50, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    projected = 2 * math.pi * coords.double() @ model.frequencies.double().T
    want = torch.cat([torch.cos(projected), torch.sin(projected)], dim=-1)
    seen = []
    model.mlp[0].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(coords)
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0].double(), want, rtol=0, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_step_and_fit_on_cuda(backend):
    torch.manual_seed(0)
    model = Siren(2, 3, 32, 2).cuda()
    coords, values = _batch()
    batch = (coords.cuda(), values.cuda())
    learner = ContextPruningMetaLearner(model, gamma=0.25, K=2, L=1, outer_lr=1e-3, backend=backend, seed=0)
    stats = learner.meta_step(batch)
    assert stats["skipped"] == 0.0 and math.isfinite(stats["loss"])
    result = GradScaledAdapter(learner, steps=2).fit(batch)
    assert result.history["mse"].device.type == "cuda"
    with pytest.raises(ValueError, match="cuda"):
        learner.meta_step((coords, values))  # CPU data for a CUDA model


class _ListINR(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.zeros(3))]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weights[0] + self.weights[1] + 0.5


def test_higher_refuses_parameter_containers_it_cannot_swap():
    """higher's patched copy leaves ParameterList entries at theta_0: refuse instead of returning wrong numbers."""
    with pytest.raises(ValueError, match="ParameterList"):
        ContextPruningMetaLearner(_ListINR(), backend="higher")
    ContextPruningMetaLearner(_ListINR(), backend="torch.func")  # torch.func swaps them correctly
