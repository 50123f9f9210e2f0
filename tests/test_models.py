"""Frozen parameters, float64 end to end, SIREN's initialisation, Fourier features, parameter containers
higher cannot swap, and CUDA when there is one.

Every model family (the bundled INRs and a custom module with a buffer and a non-Linear parameter) runs through
the same meta-gradient, batching and fitting checks in tests/test_conformance.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ScaledSine, assert_all_close, meta_grads, state_snapshot
from reference import ref_meta_grads

from ecop_wrap import (
    ContextPruningMetaLearner,
    FourierFeatureMLP,
    GradScaledAdapter,
    ModulatedSiren,
    Siren,
    make_grid,
)

BACKENDS = ["torch.func", "higher"]


def _batch(batch: int = 2, side: int = 6, d: int = 3, dtype=torch.float32, shared: bool = True):
    grid = make_grid((side, side), dtype=dtype)
    coords = (
        grid
        if shared
        else 0.95 * grid.unsqueeze(0).repeat(batch, 1, 1) + 0.05 * torch.rand(batch, side * side, 2, dtype=dtype)
    )
    return coords, torch.rand(batch, side * side, d, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_parameters_stay_bit_identical(backend):
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2)
    model.layers[0].linear.weight.requires_grad_(False)
    model.output.bias.requires_grad_(False)
    before = state_snapshot(model)
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
    _, grads = meta_grads(ContextPruningMetaLearner(model, coord_range=None, **kw), (coords, values))
    assert len(grads) == len(ref_grads) == 3
    assert_all_close(grads, ref_grads, rtol=1e-8, atol=1e-12)


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


# ------------------------------------------------------------------------------ ModulatedSiren's latent grid
def _grid_sample_reference(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample`` (bilinear, corners aligned, border padding) of ``grid [H, W, F]`` at ``coords [M, 2]``
    (coordinate 0 along H, 1 along W): an implementation that shares nothing with the library's."""
    image = grid.permute(2, 0, 1).unsqueeze(0)  # [1, F, H, W]
    where = coords.flip(-1).view(1, 1, -1, 2)  # grid_sample wants (x along W, y along H)
    out = torch.nn.functional.grid_sample(image, where, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].T  # [M, F]


def test_latent_grid_interpolates_like_grid_sample():
    from ecop_wrap.models.modulated import interpolate_grid

    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    coords = torch.cat([torch.rand(50, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2, torch.eye(2) * 2 - 1])
    want = _grid_sample_reference(grid, coords)
    torch.testing.assert_close(interpolate_grid(grid, (3, 5), coords), want, rtol=1e-12, atol=1e-14)
    batched = torch.stack([grid, 2 * grid])  # [B, *sizes, F] with shared and with per-signal coordinates
    torch.testing.assert_close(interpolate_grid(batched, (3, 5), coords)[1], 2 * want, rtol=1e-12, atol=1e-14)
    per_signal = torch.stack([coords, coords.flip(0)])
    out = interpolate_grid(batched, (3, 5), per_signal)
    torch.testing.assert_close(out[1], 2 * want.flip(0), rtol=1e-12, atol=1e-14)


def test_latent_grid_in_one_dimension_is_linear_interpolation():
    from ecop_wrap.models.modulated import interpolate_grid

    nodes = torch.tensor([[0.0], [1.0], [4.0], [2.0]], dtype=torch.float64)  # 4 codes at -1, -1/3, 1/3, 1
    times = torch.tensor([[-1.0], [-2.0 / 3.0], [0.0], [0.5], [1.0]], dtype=torch.float64)
    want = torch.tensor([[0.0], [0.5], [2.5], [3.5], [2.0]], dtype=torch.float64)
    torch.testing.assert_close(interpolate_grid(nodes, (4,), times), want, rtol=1e-12, atol=1e-14)


def test_modulated_siren_with_a_latent_grid_builds_and_rebuilds():
    model = ModulatedSiren(1, 1, 8, 2, latent_dim=3, latent_grid=[16])
    assert model.latent.shape == (16, 3) and not model.latent.any()
    assert model(torch.zeros(5, 1)).shape == (5, 1)
    again = ModulatedSiren(**model.init_kwargs)
    assert again.latent_grid == (16,) and again.latent.shape == (16, 3)


@pytest.mark.parametrize("grid", [(4,), (4, 1), (4, 2.0), [4, 4, 4]])
def test_modulated_siren_rejects_a_bad_latent_grid(grid):
    with pytest.raises(ValueError, match="latent_grid must give 2 sizes"):
        ModulatedSiren(2, 1, 8, 2, latent_dim=3, latent_grid=grid)


def test_modulated_siren_names_latent_grid_when_it_is_not_a_sequence():
    with pytest.raises(TypeError, match="latent_grid must be a sequence of 2 ints"):
        ModulatedSiren(2, 1, 8, 2, latent_dim=3, latent_grid=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["siren", "modulated"])
def test_first_w0_sets_the_first_sine_layers_frequency_only(family):
    torch.manual_seed(0)
    build = {
        "siren": lambda **kw: Siren(1, 1, 8, 2, **kw),
        "modulated": lambda **kw: ModulatedSiren(1, 1, 8, 2, latent_dim=3, **kw),
    }[family]
    model = build(w0=20.0, first_w0=3000.0)
    assert [layer.w0 for layer in model.layers] == [3000.0, 20.0]
    # the first layer's weights keep SIREN's U(-1/in, 1/in): only its frequency changes
    assert float(model.layers[0].linear.weight.detach().abs().max()) <= 1.0
    coords = torch.linspace(-1, 1, 7, dtype=torch.float64).unsqueeze(-1)
    model = model.double()
    with torch.no_grad():
        first = model.layers[0].linear
        want = torch.sin(3000.0 * (coords @ first.weight.T + first.bias))
        if family == "modulated":  # the zero latent's shifts are the modulation's zero bias
            got = torch.sin(model.layers[0].w0 * (first(coords) + model.modulation(model.latent)[:8]))
        else:
            got = model.layers[0](coords)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    again = type(model)(**model.init_kwargs)
    assert again.init_kwargs["first_w0"] == 3000.0 and [layer.w0 for layer in again.layers] == [3000.0, 20.0]
    default = build(w0=20.0)
    assert default.init_kwargs["first_w0"] is None and [layer.w0 for layer in default.layers] == [20.0, 20.0]


@pytest.mark.parametrize("bad", [0.0, -30.0, True, "3000"])
def test_first_w0_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="first_w0 must be a positive number"):
        Siren(1, 1, 8, 2, first_w0=bad)
    with pytest.raises(ValueError, match="first_w0 must be a positive number"):
        ModulatedSiren(1, 1, 8, 2, latent_dim=3, first_w0=bad)


def test_latent_bounds_stretch_the_grid_over_the_datas_coordinates():
    from ecop_wrap.models.modulated import interpolate_grid

    torch.manual_seed(0)
    nodes = torch.randn(2, 4, 3, 6, dtype=torch.float64)  # two signals, a 4 x 3 grid of 6-vectors
    unit = torch.rand(9, 2, dtype=torch.float64) * 2.2 - 1.1  # some points past the edges
    stretched = interpolate_grid(nodes, (4, 3), 12.5 * unit, (-12.5, 12.5))
    torch.testing.assert_close(stretched, interpolate_grid(nodes, (4, 3), unit), rtol=1e-12, atol=1e-12)
    shifted = interpolate_grid(nodes, (4, 3), unit + 3.0, (2.0, 4.0))
    torch.testing.assert_close(shifted, interpolate_grid(nodes, (4, 3), unit), rtol=1e-12, atol=1e-12)
    model = ModulatedSiren(1, 1, 8, 2, latent_dim=3, latent_grid=[16], latent_bounds=(-12.5, 12.5))
    assert model.latent_bounds == (-12.5, 12.5)
    times = torch.linspace(-12.5, 12.5, 200).unsqueeze(-1)
    with pytest.warns(UserWarning, match=r"92% of the coordinates lie outside latent_bounds=\(-1, 1\)"):
        ModulatedSiren(1, 1, 8, 2, latent_dim=3, latent_grid=[16])(times)
    assert ModulatedSiren(**model.init_kwargs).latent_bounds == (-12.5, 12.5)


@pytest.mark.parametrize("bounds", [(1.0, -1.0), (0.0, 0.0), (0.0,), (0.0, float("inf")), "ab", (0, True)])
def test_modulated_siren_rejects_bad_latent_bounds(bounds):
    with pytest.raises(ValueError, match="latent_bounds must"):
        ModulatedSiren(1, 1, 8, 2, latent_dim=3, latent_grid=[4], latent_bounds=bounds)
