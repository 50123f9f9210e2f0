"""The model contract (issue 22): one tensor [..., D] out, the coords' C, points independence, train-mode
randomness and the grad mode of a meta-step; every check leaves every number untouched."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ecop_wrap import FourierFeatureMLP, HashGridINR, ModulatedSiren, NeRV, Siren, make_grid
from ecop_wrap._src.contract import CONTEXT_POINTS, check_grad_mode, check_model_contract


def _batch(points_side: int = 8, channels: int = 3, batch: int = 2, dtype: torch.dtype = torch.float32):
    coords = make_grid((points_side, points_side), dtype=dtype)
    values = torch.rand(batch, coords.shape[0], channels, generator=torch.Generator().manual_seed(0), dtype=dtype)
    return coords, values


def _mlp(c: int = 2, d: int = 3, hidden: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c, hidden), nn.Tanh(), nn.Linear(hidden, d))


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, coords):
        out = self.net(coords)
        return out, out.norm(dim=-1)


class _DictOut(_TupleOut):
    def forward(self, coords):
        return {"rgb": self.net(coords)}


class _MeanOverPoints(_TupleOut):
    def forward(self, coords):
        return self.net(coords).mean(dim=-2)


class _Attention(nn.Module):
    """Self-attention over the points of a signal: every prediction depends on every other point."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.out = (
            nn.Linear(2, 16),
            nn.MultiheadAttention(16, 2, batch_first=True),
            nn.Linear(16, 3),
        )

    def forward(self, coords):
        h = self.embed(coords).unsqueeze(0)
        return self.out(self.attn(h, h, h, need_weights=False)[0]).squeeze(0)


class _InstanceNorm(nn.Module):
    """InstanceNorm1d over the points (channels = features, length = points)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm, self.out = nn.Linear(2, 16), nn.InstanceNorm1d(16), nn.Linear(16, 3)

    def forward(self, coords):
        h = self.embed(coords).T.unsqueeze(0)  # [1, F, M]
        return self.out(torch.sin(self.norm(h)[0].T))


class _Noisy(_TupleOut):
    """Random without a Dropout module: adds fresh noise on every call."""

    def forward(self, coords):
        out = self.net(coords)
        return out + 0.1 * torch.randn_like(out)


class _CountsCalls(_TupleOut):
    """A per-point model that writes a buffer in its forward (like running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, coords):
        self.calls += 1
        return self.net(coords)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor], rng: torch.Tensor, modes: list[bool]):
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng), "the check drew from torch's global generator"
    assert [m.training for m in model.modules()] == modes


def _checked(model: nn.Module, coords: torch.Tensor, values: torch.Tensor, **kwargs) -> None:
    """check_model_contract, asserting it changed no parameter, buffer, training flag or global RNG state."""
    before, rng, modes = _state(model), torch.get_rng_state(), [m.training for m in model.modules()]
    try:
        check_model_contract(model, coords, values, **kwargs)
    finally:
        _assert_untouched(model, before, rng, modes)


# ------------------------------------------------------------------------------------------ output form


@pytest.mark.parametrize(
    ("model", "match"),
    [(_TupleOut(), "returned a tuple of 2 items"), (_DictOut(), r"returned a dict with keys \['rgb'\]")],
)
def test_a_model_returning_a_container_is_refused(model, match) -> None:
    coords, values = _batch()
    with pytest.raises(TypeError, match=match) as info:
        _checked(model, coords, values, owner="ContextPruningMetaLearner")
    message = str(info.value)
    assert type(model).__name__ in message and "one tensor [..., D]" in message and "D=3" in message


def test_wrong_d_is_refused_naming_both() -> None:
    coords, values = _batch(channels=1)
    with pytest.raises(ValueError, match=r"Siren returns D=3 .* values have D=1"):
        _checked(Siren(2, 3, 16, 2), coords, values)


def test_one_prediction_per_point_is_required() -> None:
    coords, values = _batch()
    with pytest.raises(ValueError, match=r"_MeanOverPoints returned shape \(3,\) .* one prediction per point"):
        _checked(_MeanOverPoints(), coords, values)


@pytest.mark.parametrize("model", [Siren(2, 3, 16, 2), _mlp(2, 3), NeRV((1, 4, 4), channels=4, hidden_features=8)])
def test_wrong_c_is_a_value_error_naming_the_coords_c_and_the_model(model) -> None:
    coords = torch.rand(2, 10, 3)  # per-signal coords with C = 3
    values = torch.rand(2, 10, 3 if not isinstance(model, NeRV) else 16)
    with pytest.raises(ValueError, match=r"C=3") as info:
        _checked(model, coords, values, owner="GradScaledAdapter")
    message = str(info.value)
    assert type(model).__name__ in message and "GradScaledAdapter" in message and "[M=10, C=3]" in message
    if isinstance(model, Siren):
        assert "in_features=2" in message
    if isinstance(model, nn.Sequential):
        assert "first nn.Linear takes 2 inputs" in message


# -------------------------------------------------------------------------------- points independence


@pytest.mark.parametrize(
    ("model", "layer"), [(_Attention(), "MultiheadAttention"), (_InstanceNorm(), "InstanceNorm1d")]
)
def test_models_that_mix_points_are_refused_with_the_reason(model, layer) -> None:
    coords, values = _batch(16)
    with pytest.raises(ValueError, match="mixes points") as info:
        _checked(model, coords, values)
    message = str(info.value)
    assert layer in message and "allow_point_mixing=True" in message and "256 points" in message
    _checked(model, coords, values, allow_point_mixing=True)  # the explicit opt-out


def test_the_independence_check_caps_the_context_and_skips_a_single_point() -> None:
    coords = torch.rand(CONTEXT_POINTS + 904, 2) * 2 - 1
    with pytest.raises(ValueError, match=f"context of {CONTEXT_POINTS} points"):
        _checked(_InstanceNorm(), coords, torch.rand(1, coords.shape[0], 3))
    _checked(_Attention(), torch.zeros(1, 2), torch.zeros(1, 1, 3))  # nothing to compare with one point


# ------------------------------------------------------------------------------------------ randomness


def test_dropout_in_train_mode_gets_one_warning_and_eval_none() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    coords, values = _batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _checked(model, coords, values)
    assert len(caught) == 1 and issubclass(caught[0].category, UserWarning)
    assert "Dropout with p > 0 in training mode at 2" in str(caught[0].message) and "model.eval()" in str(
        caught[0].message
    )
    assert caught[0].filename == __file__  # points at the caller's line
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _checked(model, coords, values)


def test_randomness_without_dropout_gets_one_warning_and_skips_the_independence_check() -> None:
    coords, values = _batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _checked(_Noisy(), coords, values)
    assert len(caught) == 1 and "two identical calls give different predictions" in str(caught[0].message)


def test_buffers_written_by_the_forward_are_put_back() -> None:
    model = _CountsCalls()
    coords, values = _batch()
    _checked(model, coords, values)  # _checked asserts the buffer is unchanged
    assert float(model.calls) == 0.0


# ------------------------------------------------------------------------------------- library models


def _library_models() -> list[tuple[nn.Module, int, int]]:
    torch.manual_seed(0)
    return [
        (Siren(2, 3, 32, 3), 2, 3),
        (FourierFeatureMLP(2, 3, num_frequencies=16, hidden_features=32, hidden_layers=2), 2, 3),
        (ModulatedSiren(2, 3, 32, 2, latent_dim=8), 2, 3),
        (HashGridINR(2, 3, levels=4, log2_table_size=8, hidden_features=16), 2, 3),
        (Siren(3, 1, 32, 2), 3, 1),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index", range(5))
def test_library_models_pass_silently_and_untouched(index, dtype) -> None:
    model, c, d = _library_models()[index]
    model = model.to(dtype)
    coords = (torch.rand(3, 300, c, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dtype)
    values = torch.rand(3, 300, d, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _checked(model, coords, values)  # per-signal coords
        _checked(model, coords[0], values)  # shared coords
        _checked(model, coords[0], values[0])  # one signal


def test_nerv_passes_with_frames_as_points() -> None:
    torch.manual_seed(0)
    model = NeRV((3, 8, 8), channels=8, hidden_features=16)
    times = torch.linspace(-1, 1, 12)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _checked(model, times, torch.rand(2, 12, model.out_features))


# ------------------------------------------------------------------------------------------- grad mode


def test_grad_mode_is_checked() -> None:
    check_grad_mode("ContextPruningMetaLearner")  # autograd on: nothing to say
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"ContextPruningMetaLearner.meta_step .* no_grad"):
        check_grad_mode("ContextPruningMetaLearner")
    with torch.set_grad_enabled(False), pytest.raises(RuntimeError, match="no_grad"):
        check_grad_mode(Siren(2, 1, 4, 1), "meta_loss")
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"meta_step was called under torch.inference_mode"):
        check_grad_mode("ContextPruningMetaLearner")
