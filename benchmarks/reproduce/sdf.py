"""Glyph signed distance fields (``--sdf glyphs``): the data, DeepSDF's clamped L1 loss and the SDF metrics of
``examples/sdf_glyphs.py``, as rows of the comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

import ecop_wrap
from ecop_wrap.data import FONT_FAMILY_SPLITS

if TYPE_CHECKING:
    from .config import RunConfig
    from .splits import Splits

CLAMPED_L1 = "clamped_l1"
"""The name ``--loss`` takes for DeepSDF's clamped L1 (clamp ``--sdf-clamp``)."""
CLAMPED_L1_ONE_SIDED = "clamped_l1_one_sided"
"""``--loss`` for the clamped L1 without its flat part beyond the clamp (``ecop_wrap.clamped_l1(one_sided=True)``)."""
# disjoint font families, as examples/sdf_glyphs.py: the test set is typefaces never trained on
TRAIN_FAMILIES, VAL_FAMILIES, TEST_FAMILIES = (FONT_FAMILY_SPLITS[s] for s in ("train", "val", "test"))


def register_losses(clamp: float) -> None:
    """Register ``clamped_l1`` and ``clamped_l1_one_sided`` (``ecop_wrap.clamped_l1`` with ``one_sided``) with
    clamp ``clamp`` in ``ecop_wrap.LOSSES`` (replacing earlier ones)."""
    ecop_wrap.register_loss(CLAMPED_L1, ecop_wrap.clamped_l1(clamp), overwrite=True)
    ecop_wrap.register_loss(CLAMPED_L1_ONE_SIDED, ecop_wrap.clamped_l1(clamp, one_sided=True), overwrite=True)


def sdf_splits(config: RunConfig) -> Splits:
    """``--sdf glyphs``: SDFs ``[N, R*R, 1]`` of every character of the training, validation and test font
    families (``ecop_wrap.data.glyph_sdfs``), each split thinned evenly over fonts and characters to
    ``--train-size`` / ``--eval-size`` signals."""
    from ecop_wrap.data import glyph_sdfs

    from .splits import Splits

    r = config.resolution
    sizes = {"train": config.train_size, "val": config.eval_size, "test": config.eval_size}
    seeds = {"train": config.seed, "val": config.eval_seed + 1, "test": config.eval_seed}
    families = {"train": TRAIN_FAMILIES, "val": VAL_FAMILIES, "test": TEST_FAMILIES}
    parts = {}
    for split, size in sizes.items():
        data = glyph_sdfs(list(families[split]), resolution=r, seed=seeds[split])
        keep = torch.linspace(0, len(data) - 1, min(size, len(data))).round().long().unique()
        parts[split] = data.subset(keep.tolist())
    train, val, test = parts["train"], parts["val"].stacked(), parts["test"].stacked()
    desc = (
        f"glyph SDFs {r}x{r} in [-1, 1]^2: train {', '.join(TRAIN_FAMILIES)}; val {', '.join(VAL_FAMILIES)}; "
        f"test {', '.join(TEST_FAMILIES)}"
    )
    meta = {"band": config.sdf_band, "clamp": config.sdf_clamp}
    return Splits(train.coords, train, val, test, (r, r), "sdf", 2.0, desc, meta)


def sdf_scores(
    pred: torch.Tensor, truth: torch.Tensor, band: float, data_range: float
) -> dict[str, float | list[float]]:
    """Per signal and mean: ``band_error``, the mean ``|SDF error|`` where ``|truth| < band``; ``band_psnr``, the
    PSNR over the same points (``10 log10(data_range^2 / MSE)``: the field's PSNR where the clamped loss is
    fitted, so beyond the clamp nothing counts); and ``iou``, the IoU of the interiors (``< 0``); ``pred``,
    ``truth``: ``[N, M, 1]``."""
    near = truth.abs() < band
    count = near.sum(dim=(1, 2)).clamp_min(1)
    error = ((pred - truth).abs() * near).sum(dim=(1, 2)) / count
    band_mse = ((pred - truth).pow(2) * near).sum(dim=(1, 2)) / count
    band_psnr = 10.0 * torch.log10(data_range**2 / band_mse.clamp_min(torch.finfo(band_mse.dtype).tiny))
    inside_pred, inside_true = pred < 0, truth < 0
    union = (inside_pred | inside_true).sum(dim=(1, 2)).clamp_min(1)
    iou = (inside_pred & inside_true).sum(dim=(1, 2)) / union
    return {
        "band_error": float(error.mean()),
        "band_error_per_signal": [round(float(v), 6) for v in error],
        "band_psnr": float(band_psnr.mean()),
        "band_psnr_per_signal": [round(float(v), 3) for v in band_psnr],
        "iou": float(iou.mean()),
        "iou_per_signal": [round(float(v), 5) for v in iou],
    }
