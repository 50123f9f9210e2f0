"""NeRV: shapes and argument checks, a meta-step in bf16 and a checkpoint round trip, and the memory ECoP
holds against Learnit.

A context point is a frame: coords ``[T, 1]`` (frame times in ``[-1, 1]``), values ``[B, T, C*H*W]``. The
checks every model family passes (meta-gradients in every mode and backend, random selection, batching,
fitting) run on NeRV in tests/test_conformance.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import held_bytes

from ecop_wrap import ContextPruningMetaLearner, make_grid
from ecop_wrap.models import NeRV

INNER_LR = 0.1  # the paper's NeRV inner learning rate


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
    ecop = held_bytes(model, batch, gamma=0.5, K=8, L=5, lam=100.0)
    ecop_no_boot = held_bytes(model, batch, gamma=0.5, K=8, L=0, lam=0.0)
    learnit = held_bytes(model, batch, gamma=1.0, K=4, L=0, lam=0.0)
    assert learnit > 1_000_000
    assert ecop <= 1.1 * learnit, f"ECoP {ecop} B vs Learnit {learnit} B ({ecop / learnit:.4f}x)"
    assert ecop_no_boot - learnit <= (8 - 4) * param_bytes
    assert 0 < ecop - ecop_no_boot <= param_bytes + 64
