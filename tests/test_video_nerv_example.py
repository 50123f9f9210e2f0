"""examples/video_nerv.py with tiny settings: --help, bad flags, and an end-to-end run on camera pans whose
Learnit test curve is checked against a plain per-signal float64 fit from the saved checkpoint."""

from __future__ import annotations

import argparse
import json
import runpy
import sys

import numpy as np
import pytest
import torch
from example_helpers import EXAMPLES, PICTURES, TINY_NERV, has_modules, load_example, plain_fit_psnr

from ecop_wrap import ContextPruningMetaLearner
from ecop_wrap.models import NeRV


def test_help_explains_every_flag(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["video_nerv.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / "video_nerv.py"), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in load_example("video_nerv").build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"flag {action.option_strings} has no help text"
        assert action.option_strings[0] in text
    assert "NeRV stem" in text and "sine layer" not in text


def test_bad_flags_exit_with_a_message():
    module = load_example("video_nerv")
    with pytest.raises(SystemExit, match="divisible by 2 \\*\\* --blocks"):
        module.main(["--resolution", "12", "--blocks", "3"])
    with pytest.raises(SystemExit, match="--gamma"):
        module.main(["--gamma", "0"])


@pytest.mark.skipif(not has_modules("skimage", "matplotlib", "PIL"), reason="needs 'ecop-wrap[examples]'")
def test_end_to_end_on_camera_pans(tmp_path):
    from PIL import Image

    from ecop_wrap.data import camera_pans

    out = tmp_path / "video_nerv"
    summary = load_example("video_nerv").main([*TINY_NERV, "--source", "pans", "--out", str(out)])
    for picture in PICTURES:
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and min(image.size) > 100, picture
    assert json.loads((out / "summary.json").read_text())["test_psnr"] == summary["test_psnr"]
    assert summary["grid"] == [4] and summary["points_per_signal"] == 4
    assert summary["notes"]["frame_shape"] == [3, 8, 8]
    for method in ("ECoP", "Learnit"):
        assert len(summary["test_psnr"][method]["mean_per_step"]) == 4
    # the saved Learnit init, fitted without scaling by an independent loop, gives the script's test curve
    args = summary["args"]
    model = NeRV(
        (3, 8, 8),
        blocks=2,
        channels=4,
        hidden_features=8,
        hidden_layers=1,
        num_frequencies=4,
        activation=args["activation"],
    )
    lr = args["inner_lr"]
    learnit = ContextPruningMetaLearner(
        model, gamma=1.0, K=2, L=0, lam=0.0, inner_lr=lr, boot_lr=args["boot_lr"], max_grad_norm=1.0
    )
    learnit.load(out / "learnit.pt")
    assert learnit.step_count == 2
    clips = camera_pans(2, 4, 8, split="test", seed=1)
    values = model.frames_to_values(clips.stacked().reshape(2, 4, 8, 8, 3))
    times = torch.linspace(-1.0, 1.0, 4).unsqueeze(-1)
    reference = plain_fit_psnr(learnit.model, times, values, steps=3, lr=lr)
    np.testing.assert_allclose(summary["test_psnr"]["Learnit"]["mean_per_step"], reference.mean(1), atol=2e-3)
