"""HashGridINR: the encoding against hand-computed values, shapes and argument checks, and adapting only the
tables or only the MLP against the independent float64 reference.

The checks every model family passes (meta-gradients in every mode and backend, random selection, batching,
fitting) run on HashGridINR in tests/test_conformance.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import TINY_HASHGRID, assert_all_close, meta_grads
from reference import ref_meta_grads
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, ECoPConfig, GradScaledAdapter, make_grid
from ecop_wrap.models import HashGridINR

INNER_LR = 1e-2
ECOP = {"gamma": 0.25, "K": 3, "L": 2, "lam": 10.0}  # error selection, bootstrap L > 0, lam > 0


def _tiny_grid_inr(out_features: int = 3) -> HashGridINR:
    return HashGridINR(2, out_features, **TINY_HASHGRID).double()


def _images(batch: int = 2, side: int = 5, shared: bool = True, d: int = 3):
    coords = make_grid((side, side), dtype=torch.float64)
    if not shared:
        coords = (coords + 0.05 * torch.randn(batch, side * side, 2, dtype=torch.float64)).clamp(-1.0, 1.0)
    return coords, torch.rand(batch, side * side, d, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- encoding
def test_levels_and_table_sizes():
    model = _tiny_grid_inr()
    assert model.resolutions == [2, 4, 8]
    assert model.hashed == [False, False, True]
    assert [model.table(level).shape for level in range(3)] == [(9, 2), (25, 2), (32, 2)]
    assert model.encode(torch.zeros(7, 2, dtype=torch.float64)).shape == (7, 6)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_dense_levels_interpolate_affine_tables_exactly(dims):
    """Multilinear interpolation reproduces any affine function of the vertex position."""
    model = HashGridINR(
        dims, 1, levels=1, features_per_level=1, log2_table_size=12, base_resolution=4, max_resolution=4
    ).double()
    assert model.hashed == [False]
    weights = torch.tensor([0.7, -1.3, 0.4][:dims], dtype=torch.float64)
    # the dense row of vertex (v_0, ..., v_{C-1}) on a 5^C grid is sum_i v_i * 5^i
    rows = torch.arange(5**dims)
    vertices = torch.stack([(rows // 5**i) % 5 for i in range(dims)], dim=-1).to(torch.float64)
    with torch.no_grad():
        model.table_0.copy_((vertices @ weights + 0.25).unsqueeze(-1))
    points = torch.rand(50, dims, dtype=torch.float64) * 2 - 1
    expected = ((points + 1) / 2 * 4) @ weights + 0.25
    torch.testing.assert_close(model.encode(points)[:, 0], expected, rtol=1e-12, atol=1e-12)


def test_hashed_level_reads_the_spatial_hash_row():
    """On a vertex the encoding is that vertex's row: (x * 1) xor (y * 2654435761) mod 2^log2_table_size."""
    model = HashGridINR(
        2, 1, levels=1, features_per_level=1, log2_table_size=6, base_resolution=16, max_resolution=16
    ).double()
    assert model.hashed == [True]
    with torch.no_grad():
        model.table_0.copy_(torch.arange(64, dtype=torch.float64).unsqueeze(-1))
    for x, y in [(0, 0), (3, 5), (16, 1), (7, 16), (16, 16)]:
        row = ((x * 1) ^ (y * 2654435761)) % 64
        point = torch.tensor([[x / 16, y / 16]], dtype=torch.float64) * 2 - 1
        with torch.no_grad():
            assert float(model.encode(point)) == pytest.approx(row, abs=1e-9), (x, y)


def test_shapes_clamping_and_offset():
    model = HashGridINR(
        3,
        2,
        levels=4,
        log2_table_size=8,
        base_resolution=2,
        max_resolution=16,
        hidden_features=16,
        hidden_layers=2,
        init_scale=0.0,
    )
    with torch.no_grad():
        assert model(torch.rand(10, 3)).shape == (10, 2)
        assert model(torch.rand(2, 5, 3)).shape == (2, 5, 2)
        assert model(torch.zeros(3)).shape == (2,)
        inside, outside = model(torch.ones(1, 3)), model(torch.full((1, 3), 3.0))
    torch.testing.assert_close(inside, outside)  # coordinates are clamped to [-1, 1]
    assert HashGridINR(1, 1).mlp[-1].out_features == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_features": 0}, ValueError, "in_features"),
        ({"in_features": 8}, ValueError, "in_features"),
        ({"out_features": 2.0}, TypeError, "out_features"),
        ({"levels": 0}, ValueError, "levels"),
        ({"log2_table_size": 31}, ValueError, "log2_table_size"),
        ({"base_resolution": 8, "max_resolution": 4}, ValueError, "max_resolution"),
        ({"hidden_layers": -1}, ValueError, "hidden_layers"),
        ({"init_scale": -1.0}, ValueError, "init_scale"),
        ({"bounds": (1.0, -1.0)}, ValueError, "bounds must be finite with low < high"),
        ({"bounds": (0.0,)}, ValueError, r"bounds must be \(low, high\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        HashGridINR(**{"in_features": 2, "out_features": 3, **kwargs})


def test_bounds_stretch_the_grids_over_the_datas_coordinates():
    torch.manual_seed(0)
    unit_model = HashGridINR(2, 1, levels=3, log2_table_size=6, max_resolution=16, init_scale=0.1).double()
    audio_like = HashGridINR(**{**unit_model.init_kwargs, "bounds": (-12.5, 12.5)}).double()
    audio_like.load_state_dict(unit_model.state_dict())
    assert audio_like.init_kwargs["bounds"] == [-12.5, 12.5]
    coords = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(audio_like(12.5 * coords), unit_model(coords), rtol=1e-12, atol=1e-12)


def test_coordinates_mostly_outside_the_bounds_warn_once():
    coords = torch.linspace(-12.5, 12.5, 200).unsqueeze(-1)  # audio's coordinates: 92% outside [-1, 1]
    model = HashGridINR(1, 1, levels=2, max_resolution=8)
    with pytest.warns(
        UserWarning, match=r"92% of the coordinates lie outside bounds=\(-1, 1\).*bounds=\(-12.5, 12.5\)"
    ):
        model(coords)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(coords)  # once per model
        HashGridINR(1, 1, levels=2, max_resolution=8, bounds=(-12.5, 12.5))(coords)
        HashGridINR(1, 1, levels=2, max_resolution=8)(coords * 0.08)  # inside


def test_bad_coords_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"\[\.\.\., C=2\]"):
        HashGridINR(2, 3)(torch.rand(4, 3))


# ------------------------------------------------------------------------------------ partial adaptation
@pytest.mark.parametrize("backend", ["torch.func", "higher"])
@pytest.mark.parametrize("part", [["table_*"], ["mlp.*"]], ids=["tables-only", "mlp-only"])
def test_adapting_only_the_tables_or_only_the_mlp_matches_reference(backend, part):
    """adapt= picks the per-signal part; the rest is meta-learned and shared (its meta-gradient included)."""
    model = _tiny_grid_inr()
    coords, values = _images(shared=False)
    learner = ContextPruningMetaLearner(model, inner_lr=INNER_LR, outer_lr=1e-4, adapt=part, backend=backend, **ECOP)
    adapted = list(learner.adapted)
    prefix = part[0].rstrip("*")
    assert adapted and all(n.startswith(prefix) for n in adapted)
    ref_loss, ref_grads = ref_meta_grads(
        model, coords, values, lr=INNER_LR, adapted=adapted, shared_from_fit=True, **ECOP
    )
    loss, grads = meta_grads(learner, (coords, values))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=0)
    assert_all_close(grads, ref_grads, rtol=1e-7, atol=1e-12)
    shared = [g for (n, _), g in zip(model.named_parameters(), grads, strict=True) if n not in adapted]
    assert shared and all(float(g.abs().sum()) > 0 for g in shared), "the shared part is meta-learned too"


def test_the_model_recommends_its_inner_lr_where_the_caller_gives_none():
    """HashGridINR.ecop_defaults: inner (and so bootstrap) lr 1.0 unless the call or a config says otherwise."""
    model = _tiny_grid_inr()
    assert ContextPruningMetaLearner(model).config.inner_lr == 1.0
    assert ContextPruningMetaLearner(model).config.boot_lr == 1.0
    assert ContextPruningMetaLearner(model, inner_lr=0.3).config.inner_lr == 0.3
    assert ContextPruningMetaLearner(model, boot_lr=0.5).config.boot_lr == 0.5
    assert ContextPruningMetaLearner(model, config=ECoPConfig()).config.inner_lr == 1e-2  # a config is complete


def test_a_models_recommendations_are_checked():
    class Bad(nn.Module):
        def __init__(self, defaults):
            super().__init__()
            self.lin = nn.Linear(2, 1)
            self.ecop_defaults = defaults

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(TypeError, match=r"Bad\.ecop_defaults got unexpected keyword"):
        ContextPruningMetaLearner(Bad({"inner_rate": 1.0}))
    with pytest.raises(ValueError, match="inner_lr"):
        ContextPruningMetaLearner(Bad({"inner_lr": -1.0}))
    with pytest.raises(TypeError, match="must be a dict"):
        ContextPruningMetaLearner(Bad(1.0))
    # one reader checks the recommendation, also where a config makes the other settings moot
    for outer_lr in (0.0, "1e-3", True):
        with pytest.raises(ValueError, match=r"Bad\.ecop_defaults\['outer_lr'\] must be a positive number"):
            ContextPruningMetaLearner(Bad({"outer_lr": outer_lr}), config=ECoPConfig())
    with pytest.raises(TypeError, match="must be a dict"):
        ContextPruningMetaLearner(Bad([("inner_lr", 1.0)]), config=ECoPConfig())


def test_an_adapter_of_a_bare_model_takes_its_recommended_step_size():
    model = _tiny_grid_inr()
    assert GradScaledAdapter(model).lr == 1.0
    assert GradScaledAdapter(model, lr=0.2).lr == 0.2


def test_the_model_recommends_its_outer_lr_where_the_caller_gives_none():
    model = _tiny_grid_inr()
    assert ContextPruningMetaLearner(model).optimizer.param_groups[0]["lr"] == 1e-2
    assert ContextPruningMetaLearner(model, outer_lr=1e-4).optimizer.param_groups[0]["lr"] == 1e-4
    siren = TinySirenForDefaults()
    assert ContextPruningMetaLearner(siren).optimizer.param_groups[0]["lr"] == 3e-4  # the library's default


class TinySirenForDefaults(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        return torch.sin(self.lin(x))
