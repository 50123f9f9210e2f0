"""NeRV: shapes and argument checks, meta-gradients and fits against the independent float64 references, the
batching mode ``"auto"`` settles on, and the memory ECoP holds against Learnit.

A context point is a frame: coords ``[T, 1]`` (frame times in ``[-1, 1]``), values ``[B, T, C*H*W]``.
"""

from __future__ import annotations

import pytest
import torch
from reference import ref_fit, ref_meta_grads
from reference_subsets import all_subset_sequences, ref_meta_loss_given_subsets

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, SavedTensorMeter, make_grid
from ecop_wrap.models import NeRV

TINY = {"blocks": 1, "channels": (4, 3), "hidden_features": 8, "hidden_layers": 1, "num_frequencies": 3}
INNER_LR = 0.1  # the paper's NeRV inner learning rate


def _tiny_nerv() -> NeRV:
    """700 parameters, frames of 2 x 4 x 4, float64."""
    return NeRV((2, 4, 4), **TINY).double()


def _clips(batch: int = 2, frames: int = 6, shared: bool = True, d: int = 32):
    """Frame times ``[T, 1]`` (or jittered ``[B, T, 1]``) and random frames ``[B, T, d]`` in [0, 1], float64."""
    times = make_grid((frames,), dtype=torch.float64)
    if not shared:
        times = (times + 0.05 * torch.randn(batch, frames, 1, dtype=torch.float64)).clamp(-1.0, 1.0)
    return times, torch.rand(batch, frames, d, dtype=torch.float64)


def _library_grads(model, coords, values, **config):
    learner = ContextPruningMetaLearner(model, inner_lr=INNER_LR, outer_lr=1e-4, **config)
    loss = learner.meta_loss((coords, values))
    return learner, loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


def _assert_grads_close(got, want, rtol=1e-7):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=rtol, atol=1e-12)


# ------------------------------------------------------------------------------------------------- shapes
def test_output_shapes_for_any_leading_dims():
    model = NeRV((3, 8, 8), blocks=2, channels=8, hidden_features=16)
    assert model.out_features == 3 * 8 * 8 and model.feature_shape == (8, 2, 2)
    assert model(torch.zeros(1)).shape == (192,)
    assert model(make_grid((5,))).shape == (5, 192)
    assert model(torch.rand(2, 5, 1)).shape == (2, 5, 192)
    assert model(torch.rand(2, 3, 4, 1)).shape == (2, 3, 4, 192)
    # frames are decoded independently: a batch gives the frames one at a time would
    times = make_grid((4,))
    torch.testing.assert_close(model(times), torch.cat([model(t) for t in times]).reshape(4, -1))


def test_untrained_output_is_centred_and_layout_helpers_round_trip():
    model = NeRV((3, 8, 4), blocks=2, channels=(8, 6, 4), activation="sine", output_offset=0.5)
    with torch.no_grad():
        out = model(make_grid((6,)))
    assert out.shape == (6, 96) and abs(float(out.mean()) - 0.5) < 0.2
    frames = torch.rand(6, 8, 4, 3)  # [T, H, W, C] channel-last
    values = model.frames_to_values(frames)
    assert values.shape == (6, 96)
    torch.testing.assert_close(values[2].reshape(3, 8, 4), frames[2].permute(2, 0, 1))  # channel-first layout
    torch.testing.assert_close(model.values_to_frames(values), frames)


def test_parameter_count_follows_the_arguments():
    def count(**kw):
        return sum(p.numel() for p in NeRV((3, 16, 16), **kw).parameters())

    assert count(channels=16) < count(channels=32)
    assert count(blocks=2) != count(blocks=1)
    assert count(hidden_layers=0) < count(hidden_layers=2)
    assert count(blocks=4, channels=8) > 0  # 16 = 2**4: a 1x1 feature map


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"out_shape": (3, 16)}, ValueError, "out_shape"),
        ({"out_shape": (3, 16, 0)}, ValueError, r"out_shape\[2\]"),
        ({"out_shape": (3, 16, 16.0)}, TypeError, r"out_shape\[2\]"),
        ({"out_shape": (3, 12, 16), "blocks": 3}, ValueError, "divisible by upscale"),
        ({"blocks": 0}, ValueError, "blocks"),
        ({"channels": (8, 8)}, ValueError, "blocks \\+ 1"),
        ({"channels": 1.5}, TypeError, "channels"),
        ({"channels": (8, 0, 8)}, ValueError, r"channels\[1\]"),
        ({"hidden_layers": -1}, ValueError, "hidden_layers"),
        ({"num_frequencies": 0}, ValueError, "num_frequencies"),
        ({"upscale": True}, TypeError, "upscale"),
        ({"activation": "relu"}, ValueError, "activation"),
        ({"base": 0.0}, ValueError, "base"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    kwargs = {"out_shape": (3, 16, 16), **kwargs}
    with pytest.raises(error, match=match):
        NeRV(**kwargs)


def test_bad_inputs_name_the_expected_shape():
    model = NeRV((3, 8, 8), blocks=1, channels=4)
    with pytest.raises(ValueError, match=r"\[\.\.\., 1\]"):
        model(torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, C\]"):
        model.frames_to_values(torch.rand(5, 3, 8, 8))
    with pytest.raises(ValueError, match="C\\*H\\*W = 192"):
        model.values_to_frames(torch.rand(5, 191))


# -------------------------------------------------------------------------------------- meta-gradients
SETTINGS = {
    "ecop": {"gamma": 0.5, "K": 3, "L": 2, "lam": 10.0},  # error selection, bootstrap L > 0, lam > 0
    "learnit": {"gamma": 1.0, "K": 2, "L": 0, "lam": 0.0},
    "pruned-no-boot": {"gamma": 0.34, "K": 2, "L": 0, "lam": 0.0},  # keeps 2 of 6 frames
}


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-signal"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_meta_gradients_match_reference(backend, shared, setting):
    model = _tiny_nerv()
    coords, values = _clips(shared=shared)
    config = SETTINGS[setting]
    ref_loss, ref_grads = ref_meta_grads(model, coords, values, lr=INNER_LR, **config)
    _, loss, grads = _library_grads(model, coords, values, backend=backend, **config)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=0)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize(
    "mode",
    [
        {"chunk_size": 2},
        {"checkpoint": True},
        {"chunk_size": 4, "checkpoint": True},
        {"batching": "vmap"},
        {"batching": "loop"},
        {"backend": "higher", "checkpoint": True, "chunk_size": 1},
    ],
    ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()),
)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-signal"])
def test_every_memory_mode_matches_reference(mode, shared):
    model = _tiny_nerv()
    coords, values = _clips(shared=shared)
    config = SETTINGS["ecop"]
    ref_loss, ref_grads = ref_meta_grads(model, coords, values, lr=INNER_LR, **config)
    _, loss, grads = _library_grads(model, coords, values, **config, **mode)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=0)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
def test_random_selection_matches_the_reference_for_the_subsets_it_drew(backend):
    """4 frames, 2 kept per step, K = 2: the library's draw must be one of the 36 possible subset sequences."""
    model = _tiny_nerv()
    coords, values = _clips(batch=1, frames=4)
    config = {"gamma": 0.5, "K": 2, "L": 2, "lam": 10.0}
    _, loss, grads = _library_grads(model, coords, values, backend=backend, selection="random", seed=3, **config)
    matches = []
    with torch.no_grad():
        for subsets in all_subset_sequences(num_points=4, keep=2, steps=2):
            with torch.enable_grad():
                candidate = ref_meta_loss_given_subsets(model, coords, values, [subsets], L=2, lam=10.0, lr=INNER_LR)
            if torch.isclose(candidate, loss, rtol=1e-12, atol=0):
                matches.append(subsets)
    assert len(matches) == 1, f"the library's random-selection loss matches {len(matches)} subset sequences"
    ref_loss = ref_meta_loss_given_subsets(model, coords, values, [matches[0]], L=2, lam=10.0, lr=INNER_LR)
    _assert_grads_close(grads, torch.autograd.grad(ref_loss, list(model.parameters())))


def test_first_order_and_bootstrap_lr_match_reference():
    model = _tiny_nerv()
    coords, values = _clips()
    config = SETTINGS["ecop"]
    ref_loss, ref_grads = ref_meta_grads(model, coords, values, lr=INNER_LR, boot_lr=0.05, first_order=True, **config)
    _, loss, grads = _library_grads(model, coords, values, boot_lr=0.05, first_order=True, **config)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=0)
    _assert_grads_close(grads, ref_grads)


# ------------------------------------------------------------------------------------------- batching
def test_auto_batching_settles_on_vmap_and_agrees_with_the_loop():
    """bmm only applies to stacks of nn.Linear; NeRV's convolutions run under vmap, which auto picks lazily."""
    model = _tiny_nerv()
    coords, values = _clips()
    config = SETTINGS["ecop"]
    learner = ContextPruningMetaLearner(model, inner_lr=INNER_LR, **config)
    assert learner.backend.batching == "auto"  # chosen on the first forward, not at construction
    loss = learner.meta_loss((coords, values))
    assert learner.backend.batching == "vmap"
    _, loop_loss, loop_grads = _library_grads(model, coords, values, batching="loop", **config)
    torch.testing.assert_close(loss.detach(), loop_loss, rtol=1e-12, atol=0)
    _assert_grads_close(torch.autograd.grad(loss, list(model.parameters())), loop_grads, rtol=1e-10)
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        ContextPruningMetaLearner(model, batching="bmm")


# -------------------------------------------------------------------------------------------- fitting
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-signal"])
def test_gradient_scaled_fit_matches_reference(shared):
    model = _tiny_nerv()
    coords, values = _clips(shared=shared)
    fit = GradScaledAdapter(model, steps=3, lr=INNER_LR, gamma=0.5, scaling="norm").fit((coords, values))
    for b in range(values.shape[0]):
        x = coords if shared else coords[b]
        ref_params, ref_mse = ref_fit(model, x, values[b], steps=3, lr=INNER_LR, gamma=0.5, scaling="norm")
        torch.testing.assert_close(fit.history["mse"][:, b], ref_mse, rtol=1e-9, atol=1e-14)
        for name, param in ref_params.items():
            torch.testing.assert_close(fit.params[name][b], param, rtol=1e-9, atol=1e-12)
    assert fit(coords).shape == values.shape


# ---------------------------------------------------------------------------------- steps, checkpoints
def test_meta_step_bf16_and_checkpoint_round_trip(tmp_path):
    def learner(**kw):
        model = NeRV((3, 8, 8), blocks=1, channels=4, hidden_features=8, num_frequencies=4)
        return ContextPruningMetaLearner(model, 0.5, 2, 1, 100.0, inner_lr=INNER_LR, outer_lr=1e-4, **kw)

    batch = (make_grid((8,)), torch.rand(2, 8, 192))
    trained = learner()
    assert trained.meta_step(batch)["skipped"] == 0.0
    assert learner(autocast_dtype=torch.bfloat16).meta_step(batch)["skipped"] == 0.0
    trained.save(tmp_path / "nerv.pt")
    restored = learner()
    restored.load(tmp_path / "nerv.pt")
    assert restored.step_count == 1
    for (name, a), b in zip(trained.model.state_dict().items(), restored.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert trained.meta_step(batch)["loss"] == restored.meta_step(batch)["loss"]


# --------------------------------------------------------------------------------------------- memory
def _held_bytes(model, batch, **config) -> int:
    learner = ContextPruningMetaLearner(model, coord_range=None, **config)
    with SavedTensorMeter() as meter:
        loss = learner.meta_loss(batch)
        held = meter.live_bytes()
    assert torch.isfinite(loss)
    return held


def test_ecop_at_half_the_frames_and_twice_the_steps_holds_about_what_learnit_holds():
    """ECoP (gamma 0.5, K = 8, L = 5) against Learnit (gamma 1, K = 4) on 8 frames of 3 x 16 x 16.

    Measured with torch 2.13 CPU, float32, B = 1, NeRV((3, 16, 16), channels=8, hidden_features=16,
    num_frequencies=4) (28,844 parameters, P = 115,376 B): ECoP 2,054,288 B, Learnit 1,915,488 B (1.0725x);
    ECoP without the bootstrap 2,025,904 B. The activations balance (8 steps x 4 frames = 4 steps x 8 frames);
    what does not is one parameter-sized tensor per inner step (theta_k saved for the next step's backward:
    measured 0.95 P per extra step) and, with the bootstrap, theta_K - theta_boot (P + 4 B). So the excess is
    bounded by (K_ECoP - K_Learnit + 1) P, and it is a small fraction only when the frames' activations dwarf
    the parameters (the default NeRV((3, 16, 16)) with 440,972 parameters on 16 frames: 1.14x).
    """
    torch.manual_seed(0)
    model = NeRV((3, 16, 16), channels=8, hidden_features=16, num_frequencies=4)
    param_bytes = 4 * sum(p.numel() for p in model.parameters())
    batch = (make_grid((8,)), torch.rand(1, 8, 768))
    ecop = _held_bytes(model, batch, gamma=0.5, K=8, L=5, lam=100.0)
    ecop_no_boot = _held_bytes(model, batch, gamma=0.5, K=8, L=0, lam=0.0)
    learnit = _held_bytes(model, batch, gamma=1.0, K=4, L=0, lam=0.0)
    assert learnit > 1_000_000
    assert ecop <= 1.1 * learnit, f"ECoP {ecop} B vs Learnit {learnit} B ({ecop / learnit:.4f}x)"
    assert ecop_no_boot - learnit <= (8 - 4) * param_bytes
    assert 0 < ecop - ecop_no_boot <= param_bytes + 64
