"""Non-finite losses and gradients: skipped steps that change nothing, then a clear error; odd inputs.

Skips are provoked through the real code path (a model that is NaN for some inputs, a diverging inner
learning rate, a gradient hook that poisons only the meta-gradient), never by patching the library.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from helpers import SqrtSiren
from reference import TinySiren, ref_fit

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, make_grid

CFG = {"gamma": 0.25, "K": 2, "L": 1, "lam": 1.0, "coord_range": None}
MODES = [{}, {"chunk_size": 7}, {"checkpoint": True}, {"first_order": True}, {"backend": "higher"}]
MODE_IDS = ["direct", "chunked", "checkpoint", "first-order", "higher"]


def _model(cls: type = SqrtSiren, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(2, 3, width=10).to(dtype)


def _batch(bad: bool = False, dtype: torch.dtype = torch.float64, seed: int = 0):
    """``(coords [2, 36, 2], values [2, 36, 3])``; with ``bad`` signal 1 has points where SqrtSiren is NaN."""
    gen = torch.Generator().manual_seed(seed)
    coords = make_grid((6, 6), dtype=dtype).repeat(2, 1, 1)
    if bad:
        coords[1, :, 0] -= 1.0
    return coords, torch.rand(2, 36, 3, generator=gen, dtype=dtype)


def _learner(model, **kw) -> ContextPruningMetaLearner:
    return ContextPruningMetaLearner(model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), **{**CFG, **kw})


def _state(learner: ContextPruningMetaLearner) -> dict:
    return copy.deepcopy({"model": learner.model.state_dict(), "optim": learner.optimizer.state_dict()})


def _assert_same_state(a: dict, b: dict) -> None:
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["optim"]["param_groups"] == b["optim"]["param_groups"]
    assert a["optim"]["state"].keys() == b["optim"]["state"].keys()
    for i, entry in a["optim"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, b["optim"]["state"][i][key]), (i, key)


# --------------------------------------------------------------------------------------------- meta_step
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_nan_forward_skips_without_touching_model_or_adam(mode):
    learner = _learner(_model(), max_consecutive_skips=3, **mode)
    assert learner.meta_step(_batch(seed=1))["skipped"] == 0.0  # Adam now has moments to protect
    before = _state(learner)
    stats = learner.meta_step(_batch(bad=True))
    assert stats["skipped"] == 1.0 and stats["step"] == 2.0
    assert not math.isfinite(stats["loss"]) or not math.isfinite(stats["grad_norm"])
    _assert_same_state(_state(learner), before)
    # a good batch afterwards trains normally and resets the count of consecutive skips
    assert learner.meta_step(_batch(seed=2))["skipped"] == 0.0
    assert any(not torch.equal(p, before["model"][n]) for n, p in learner.model.state_dict().items())


def test_skips_equal_the_run_without_the_bad_batches():
    """Skipped steps are exact no-ops: good, bad, good, bad, good == good, good, good."""
    mixed = _learner(_model(), max_consecutive_skips=2)
    clean = _learner(_model())
    for seed in (1, 2, 3):
        mixed.meta_step(_batch(seed=seed))
        clean.meta_step(_batch(seed=seed))
        if seed < 3:
            assert mixed.meta_step(_batch(bad=True))["skipped"] == 1.0  # 1 < max: never raises
    _assert_same_state(_state(mixed), _state(clean))


def test_consecutive_skips_raise_with_step_and_cause():
    learner = _learner(_model(), max_consecutive_skips=3)
    learner.meta_step(_batch(seed=1))
    before = _state(learner)
    for _ in range(2):
        assert learner.meta_step(_batch(bad=True))["skipped"] == 1.0
    with pytest.raises(FloatingPointError) as info:
        learner.meta_step(_batch(bad=True))
    message = str(info.value)
    assert "meta_step 4" in message and "3 consecutive steps" in message
    assert "inner_lr" in message and "range" in message
    _assert_same_state(_state(learner), before)


@pytest.mark.parametrize("mode", MODES[:3], ids=MODE_IDS[:3])
def test_diverging_inner_lr_is_skipped_then_raises(mode):
    model = _model(TinySiren, torch.float32)
    learner = _learner(model, inner_lr=1e4, K=4, max_consecutive_skips=2, **mode)
    before = _state(learner)
    assert learner.meta_step(_batch(dtype=torch.float32))["skipped"] == 1.0
    with pytest.raises(FloatingPointError, match=r"meta_step 2: .*inner_lr \(10000.0\)"):
        learner.meta_step(_batch(dtype=torch.float32))
    _assert_same_state(_state(learner), before)


@pytest.mark.parametrize("mode", MODES[:3], ids=MODE_IDS[:3])
def test_finite_loss_with_non_finite_meta_gradient_is_skipped(mode):
    """A hook on theta_0 poisons only the outer gradient (the inner loop differentiates expanded views)."""
    model = _model(TinySiren)
    learner = _learner(model, **mode)
    learner.meta_step(_batch(seed=1))
    before = _state(learner)
    handle = model.out.bias.register_hook(lambda grad: grad * float("inf"))
    stats = learner.meta_step(_batch(seed=2))
    handle.remove()
    assert math.isfinite(stats["loss"]) and not math.isfinite(stats["grad_norm"])
    assert stats["skipped"] == 1.0
    _assert_same_state(_state(learner), before)


def test_skip_count_survives_a_checkpoint(tmp_path):
    learner = _learner(_model(), max_consecutive_skips=2)
    learner.meta_step(_batch(bad=True))
    learner.save(tmp_path / "c.pt")
    resumed = _learner(_model(), max_consecutive_skips=2)
    resumed.load(tmp_path / "c.pt")
    with pytest.raises(FloatingPointError, match="meta_step 2"):
        resumed.meta_step(_batch(bad=True))


# --------------------------------------------------------------------------------------------------- fit
def test_fit_skips_only_the_bad_signal():
    model = _model()
    coords, values = _batch(bad=True)
    result = GradScaledAdapter(model, steps=4, lr=1e-2, coord_range=None, max_consecutive_skips=5).fit((coords, values))
    assert result.skipped.tolist() == [0, 4]
    init = dict(model.named_parameters())
    for name, p in result.params.items():
        assert torch.equal(p[1], init[name].detach())  # every step of signal 1 was a no-op
    # signal 0 is unaffected by its neighbour: it matches the independent reference
    want, want_mse = ref_fit(model, coords[0], values[0], steps=4, lr=1e-2, gamma=0.25, scaling="norm")
    for name, p in want.items():
        torch.testing.assert_close(result.params[name][0], p, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(result.history["mse"][:, 0], want_mse, rtol=1e-6, atol=0)


def test_fit_raises_after_consecutive_skips_naming_signal_and_step():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    adapter = GradScaledAdapter(model, steps=4, lr=1e-2, coord_range=None, max_consecutive_skips=2)
    with pytest.raises(FloatingPointError, match=r"fit step 1: the update of signal\(s\) \[1\]"):
        adapter.fit(_batch(bad=True))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fit_with_diverging_lr_counts_skips():
    model = _model(TinySiren, torch.float32)
    adapter = GradScaledAdapter(model, steps=6, lr=1e4, coord_range=None, max_consecutive_skips=10)
    result = adapter.fit(_batch(dtype=torch.float32))
    assert (result.skipped > 0).all()
    assert all(torch.isfinite(p).all() for p in result.params.values())  # only finite updates were applied


# ------------------------------------------------------------------------------------------------ inputs
def _layouts():
    """The same float64 batch as contiguous tensors and as strided / expanded views."""
    gen = torch.Generator().manual_seed(3)
    grid = make_grid((5, 5), dtype=torch.float64)
    wide = torch.rand(3, 25, 6, generator=gen, dtype=torch.float64)
    values_t = torch.rand(3, 3, 25, generator=gen, dtype=torch.float64)
    views = {
        "strided-values": (grid, wide[..., ::2]),
        "transposed-values": (grid, values_t.transpose(1, 2)),
        "expanded-coords": (grid.expand(3, 25, 2), wide[..., 1::2]),
        "expanded-values": (grid, wide[:1, :, :3].expand(3, 25, 3)),
    }
    return {name: (view, (view[0].contiguous(), view[1].contiguous())) for name, view in views.items()}


@pytest.mark.parametrize("layout", ["strided-values", "transposed-values", "expanded-coords", "expanded-values"])
@pytest.mark.parametrize("backend", ["torch.func", "higher"])
def test_non_contiguous_and_expanded_inputs_give_the_contiguous_result(layout, backend):
    view, dense = _layouts()[layout]
    assert not (view[0].is_contiguous() and view[1].is_contiguous())
    results = []
    for batch in (view, dense):
        model = _model(TinySiren)
        learner = _learner(model, backend=backend)
        stats = learner.meta_step(batch)
        fit = GradScaledAdapter(learner, steps=2).fit(batch)
        results.append((stats, [p.detach() for p in model.parameters()], fit.history["mse"]))
    (s1, p1, h1), (s2, p2, h2) = results
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-12)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1, h2, rtol=1e-10, atol=1e-14)


BAD_INPUTS = {
    "nan-values": lambda c, v: (c, v.clone().index_fill_(1, torch.tensor([3]), float("nan"))),
    "inf-coords": lambda c, v: (c.clone().index_fill_(0, torch.tensor([0]), float("inf")), v),
    "int-values": lambda c, v: (c, (v * 255).long()),
    "float32-values": lambda c, v: (c, v.float()),
    "meta-device-values": lambda c, v: (c, v.to("meta")),
    "empty-batch": lambda c, v: (c, v[:0]),
    "no-points": lambda c, v: (c[:0], v[:, :0]),
    "wrong-channels": lambda c, v: (c, v[..., :2]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_fail_early_and_change_nothing(case):
    """A clear TypeError/ValueError raised by the input checks, not deep inside autograd, state untouched."""
    learner = _learner(_model(TinySiren))
    learner.meta_step(_batch(seed=1))
    before = _state(learner)
    coords, values = BAD_INPUTS[case](make_grid((6, 6), dtype=torch.float64), _batch(seed=2)[1])
    with pytest.raises((TypeError, ValueError)) as info:
        learner.meta_step((coords, values))
    frames = [f.name for f in info.traceback]
    assert "backward" not in frames and "grad" not in frames
    assert any(word in str(info.value) for word in ("coords", "values", "batch", "predicts"))
    _assert_same_state(_state(learner), before)
    assert learner.step_count == 1
    with pytest.raises((TypeError, ValueError)):
        GradScaledAdapter(learner).fit((coords, values))


def test_out_of_range_coords_warn_once_per_learner():
    learner = ContextPruningMetaLearner(_model(TinySiren), **{**CFG, "coord_range": (-1.0, 1.0)})
    coords, values = _batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner.meta_step((coords * 3, values))
        learner.meta_step((coords * 3, values))
    assert sum("outside the expected range" in str(w.message) for w in caught) == 1
