"""The examples of issue 22 (your own loss and data): tiny end-to-end runs (seconds, not marked slow) and
their metrics."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
from example_helpers import TINY_RUN, as_argv, has_modules, load_example

from ecop_wrap.metrics import psnr

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


TINY_PHOTOS = {
    **TINY_RUN,
    "train_signals": 6,
    "test_signals": 3,
    "hidden_features": 16,
    "hidden_layers": 2,
    "resolution": 12,
    "val_signals": 2,
    "lr_grid": "1e-4,1e-3",
    "threads": 1,
}
TINY_MASKED = as_argv(**TINY_PHOTOS, block=4, hidden_fraction=0.25)
TINY_RAGGED = as_argv(**TINY_PHOTOS, max_aspect=2.0)


def test_masked_masks_and_metrics_on_known_inputs():
    module = load_example("masked_images")
    masks = module.block_masks(5, (8, 8), 0.25, 4, seed=3)
    assert masks.shape == (5, 64) and masks.dtype == torch.bool
    assert torch.equal(masks, module.block_masks(5, (8, 8), 0.25, 4, seed=3))  # fixed by the seed
    assert (~masks).sum(dim=1).tolist() == [16] * 5  # one of the four 4x4 tiles hidden in every signal
    tiles = (~masks).view(5, 2, 4, 2, 4).float().mean(dim=(2, 4))  # hidden share of each 4x4 tile
    assert set(tiles.unique().tolist()) == {0.0, 1.0}  # whole blocks hidden, never single pixels
    assert not torch.equal(masks, module.block_masks(5, (8, 8), 0.25, 4, seed=4))
    edge = module.block_masks(2, (10, 10), 0.5, 4, seed=0)  # 3x3 tiles, the edge ones 2 pixels wide
    assert edge.shape == (2, 100) and 0 < int((~edge).sum(dim=1).min()) < 100
    with pytest.raises(ValueError, match="fraction"):
        module.block_masks(1, (8, 8), 1.0, 4, seed=0)
    truth = torch.zeros(1, 4, 3)
    observed = torch.tensor([[True, True, False, False]])
    pred = truth.clone()
    pred[0, 2:] = 0.1  # hidden pixels off by 0.1: MSE 0.01 there, 20 dB; the observed ones exact
    scores = module.scores(pred, truth, observed)
    assert float(scores["hidden"][0]) == pytest.approx(20.0) and float(scores["observed"][0]) == float("inf")
    coords = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.9], [0.0, 0.1]])
    values = torch.tensor([[[1.0], [2.0], [7.0], [8.0]]])
    filled = module.nearest_fill(coords, values, observed)
    assert filled[0, :, 0].tolist() == [1.0, 2.0, 2.0, 1.0]


def test_paired_gap_on_known_differences():
    module = load_example("masked_images")
    gap = module.paired_gap(torch.tensor([3.0, 5.0, 1.0]), torch.tensor([1.0, 1.0, 2.0]))
    # differences 2, 4, -1: mean 5/3, sample std sqrt(19/3), standard error sqrt(19/3) / sqrt(3)
    assert gap["mean"] == pytest.approx(5 / 3, abs=1e-3) and gap["better_on"] == 2 and gap["signals"] == 3
    assert gap["standard_error"] == pytest.approx((19 / 3) ** 0.5 / 3**0.5, abs=1e-3)


def test_rate_picking_skips_diverged_rates():
    for name in ("masked_images", "ragged_images"):
        module = load_example(name)
        common = sys.modules[module.sweep_outer_lrs.__module__]  # examples/_common, which both examples use
        assert common.best_rate({1e-4: 20.0, 3e-4: 21.5, 1e-3: None, 3e-3: float("nan")}) == 3e-4
        assert common.best_rate({1e-4: 20.0, 3e-4: 20.0}) == 1e-4  # the first of equals


def test_the_sweep_keeps_each_methods_best_rate_and_records_diverged_ones():
    module = load_example("masked_images")
    methods = module.compared_methods(_tiny_setup(module, TINY_MASKED)[1], (-1.0, 1.0))
    scores = {1e-4: 20.0, 3e-4: 21.5, 1e-3: None}

    def train_and_score(method, lr):
        if scores[lr] is None:
            raise FloatingPointError("meta_step 3: not finite")
        return f"{method.name}@{lr:g}", scores[lr]

    chosen, sweep = module.sweep_outer_lrs(methods, list(scores), train_and_score)
    assert chosen == {m.name: (3e-4, f"{m.name}@0.0003") for m in methods}
    assert sweep == {m.name: scores for m in methods}
    with pytest.raises(SystemExit, match="diverged at every outer lr"):
        module.sweep_outer_lrs(methods, [1e-3], train_and_score)


def _tiny_setup(module, argv):
    args = module.build_parser().parse_args(argv)
    return args, module.setup(args)


def test_masked_hidden_pixels_carry_no_weight():
    module = load_example("masked_images")
    args, config = _tiny_setup(module, TINY_MASKED)
    crops, observed = module.load_data(args, config)["train"]
    assert bool((~observed).any())
    values = crops.stacked()
    noise = torch.rand(values.shape, generator=torch.Generator().manual_seed(1))
    hidden_changed = module.SignalDataset(torch.where(observed[..., None], values, noise), crops.shape)
    seen_changed = module.SignalDataset(torch.where(observed[..., None], noise, values), crops.shape)
    torch.manual_seed(0)
    model = module.siren_factory(config, 2, 3)()
    for method in module.compared_methods(config, (-1.0, 1.0)):
        # one batching mode, not the fastest by timing: the modes agree to rounding, not bit for bit
        method = dataclasses.replace(method, settings=method.settings.replace(batching_benchmark=False))
        trained = module.train(model, method, 1e-3, crops, observed, config)
        params = list(trained.model.parameters())
        assert not all(torch.equal(p, q) for p, q in zip(params, model.parameters(), strict=True))
        other = module.train(model, method, 1e-3, hidden_changed, observed, config)
        assert all(torch.equal(p, q) for p, q in zip(params, other.model.parameters(), strict=True)), method.name
        control = module.train(model, method, 1e-3, seen_changed, observed, config)
        assert not all(torch.equal(p, q) for p, q in zip(params, control.model.parameters(), strict=True))
        fitted = module.fit(
            trained, method.test_scaling, crops, observed, config
        )  # the test-time fit reads no hidden pixel
        assert torch.equal(fitted, module.fit(trained, method.test_scaling, hidden_changed, observed, config))


@needs_examples
def test_masked_images_tiny_run_picks_rates_on_validation_and_writes_everything(tmp_path):
    module = load_example("masked_images")
    summary = module.main([*TINY_MASKED, "--out", str(tmp_path)])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (tmp_path / "inpainting.png").stat().st_size > 0
    photos = summary["photos"]
    assert not set(photos["train"]) & set(photos["test"]) and not set(photos["val"]) & set(photos["test"])
    assert summary["masks"]["hidden_share"]["test"] > 0.0
    for name in ("ECoP", "Learnit"):
        sweep = summary["validation_hidden_psnr"][name]
        row = summary["test"][name]
        assert row["outer_lr"] == float(max(sweep, key=sweep.get))
        assert row["held_bytes_per_meta_loss"] > 0 and len(summary["per_signal"][name]["hidden"]) == 3
        assert torch.load(tmp_path / f"{name.lower()}.pt", weights_only=False)["config"]["gamma"] in (0.25, 1.0)
    assert set(summary["reference"]) == {"nearest_observed_fill", "random_init_fit"}
    assert set(summary["paired_gaps"]) == {
        "ECoP - Learnit",
        "ECoP - nearest_observed_fill",
        "Learnit - nearest_observed_fill",
    }
    assert len(summary["per_signal"]["nearest_observed_fill"]["hidden"]) == 3
    gap = summary["paired_gaps"]["ECoP - Learnit"]["hidden"]
    hidden = {n: torch.tensor(summary["per_signal"][n]["hidden"]) for n in ("ECoP", "Learnit")}
    assert gap["mean"] == pytest.approx(float((hidden["ECoP"] - hidden["Learnit"]).mean()), abs=2e-3)


def test_ragged_crops_keep_their_aspect_and_pad_with_weight_zero():
    module = load_example("ragged_images")
    grid = module.aspect_grid((3, 5))
    assert grid.shape == (15, 2) and float(grid[:, 1].min()) == -1.0 and float(grid[:, 1].max()) == 1.0
    assert torch.allclose(grid[5, 0] - grid[0, 0], grid[1, 1] - grid[0, 1])  # the same spacing on both axes
    assert module.aspect_shape(100, 50, 32) == (32, 16) and module.aspect_shape(30, 90, 12) == (4, 12)
    crops = module.skimage_aspect_crops("val", 12, 8, seed=0, max_aspect=2.0)
    assert crops.ragged and len(set(crops.shapes)) > 1
    assert all(max(s) == 12 and max(s) / min(s) <= 2.0 + 1 / 6 for s in crops.shapes)
    assert all(float(v.min()) >= 0.0 and float(v.max()) <= 1.0 for v in crops.values)
    assert crops.names == module.skimage_aspect_crops("val", 12, 8, seed=0, max_aspect=2.0).names
    batches = module.loader(crops, 8)
    assert batches.collate_fn is module.collate_signals
    _, values, weights = next(iter(batches))
    sizes = [int(torch.tensor(s).prod()) for s in crops.shapes]
    assert weights.sum(dim=1).tolist() == sizes and values.shape[1] == max(sizes)
    whole = module.whole_photos("test", 32)
    assert whole.names == list(module.SKIMAGE_SPLITS["test"]) and all(max(s) == 32 for s in whole.shapes)


def test_ragged_fit_scores_each_signal_over_its_own_points():
    module = load_example("ragged_images")
    _, config = _tiny_setup(module, TINY_RAGGED)
    crops = module.skimage_aspect_crops("test", 12, 4, seed=0, max_aspect=2.0)
    assert len(set(crops.shapes)) > 1  # the batch of 4 is padded
    torch.manual_seed(0)
    model = module.siren_factory(config, 2, 3)()
    method = module.compared_methods(config, (-1.0, 1.0))[0]
    learner = module.train(model, method, 1e-3, crops, config)
    together, recons = module.fit(learner, method.test_scaling, crops, config)  # one padded batch of 4
    alone = torch.cat(
        [module.fit(learner, method.test_scaling, crops.subset([i]), config)[0] for i in range(len(crops))]
    )
    assert torch.allclose(together, alone, atol=1e-3)
    assert [r.shape[0] for r in recons] == [int(torch.tensor(s).prod()) for s in crops.shapes]
    plain = [float(psnr(recon, values)) for recon, values in zip(recons, crops.values, strict=True)]
    assert together.tolist() == pytest.approx(plain, abs=1e-4)  # the mean over the signal's own points


@needs_examples
def test_ragged_images_tiny_run_picks_rates_on_validation_and_writes_everything(tmp_path):
    module = load_example("ragged_images")
    summary = module.main([*TINY_RAGGED, "--out", str(tmp_path)])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (tmp_path / "ragged_fits.png").stat().st_size > 0
    points = summary["points_per_signal"]["train"]
    assert points["min"] < points["max"] <= 12 * 12
    assert not set(summary["photos"]["train"]) & set(summary["photos"]["test"])
    for name in ("ECoP", "Learnit"):
        sweep = summary["validation_psnr"][name]
        row = summary["test"][name]
        assert row["outer_lr"] == float(max(sweep, key=sweep.get))
        assert row["held_bytes_per_meta_loss"] > 0 and len(summary["per_signal"][name]) == 3
        assert set(row["whole_photos_psnr"]) == set(summary["whole_test_photos"])
        assert (tmp_path / f"{name.lower()}.pt").stat().st_size > 0
    assert summary["reference"]["random_init_fit"]["psnr"] > 0.0
    gap = summary["paired_gaps"]["ECoP - Learnit"]
    assert gap["signals"] == 3 and 0 <= gap["better_on"] <= 3
