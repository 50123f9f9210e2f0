"""The examples of issue 22 (your own loss and data): tiny end-to-end runs (seconds, not marked slow) and
their metrics."""

from __future__ import annotations

import json

import pytest
import torch
from example_helpers import TINY_RUN, as_argv, has_modules, load_example

needs_examples = pytest.mark.skipif(not has_modules("matplotlib"), reason="needs 'ecop-wrap[examples]'")

TINY_SDF = as_argv(
    **{**TINY_RUN, "train_signals": 6, "test_signals": 3},
    hidden_features=16,
    hidden_layers=2,
    resolution=12,
    classes="AO8",
    val_signals=2,
    lr_grid="1e-4,1e-3",
    threads=1,
)


def test_sdf_metrics_on_known_fields():
    module = load_example("sdf_glyphs")
    truth = torch.tensor([[[-0.05, 0.05], [0.5, -0.5]]])
    same = module.sdf_metrics(truth, truth, band=0.1)
    assert float(same["band_error"][0]) == 0.0 and float(same["iou"][0]) == 1.0
    shifted = module.sdf_metrics(truth + 0.02, truth, band=0.1)  # two points in the band, both off by 0.02
    assert float(shifted["band_error"][0]) == pytest.approx(0.02)
    flipped = module.sdf_metrics(-truth, truth, band=0.1)
    assert float(flipped["iou"][0]) == 0.0
    loss = module.clamped_l1(0.1)
    assert torch.allclose(
        loss(torch.tensor([[[0.5], [0.0]]]), torch.tensor([[[2.0], [0.05]]])), torch.tensor([[0.0, 0.05]])
    )


@needs_examples
def test_sdf_glyphs_tiny_run_picks_rates_on_validation_and_writes_everything(tmp_path):
    module = load_example("sdf_glyphs")
    summary = module.main([*TINY_SDF, "--out", str(tmp_path)])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (tmp_path / "level_sets.png").stat().st_size > 0
    assert summary["families"]["test"] == list(module.TEST_FAMILIES)
    assert not set(summary["families"]["train"]) & set(summary["families"]["test"])
    for name in ("ECoP", "Learnit"):
        sweep = summary["validation_band_error"][name]
        assert summary["test"][name]["outer_lr"] == float(min(sweep, key=sweep.get))
        assert 0.0 <= summary["test"][name]["iou"] <= 1.0 and summary["test"][name]["band_error"] >= 0.0
        checkpoint = torch.load(tmp_path / f"{name.lower()}.pt", weights_only=False)
        assert checkpoint["config"]["loss"] == module.LOSS  # the loss is recorded by its registered name
