"""End to end on real photographs: meta-learn a small SIREN with ECoP on crops of some scikit-image
photographs, then fit held-out crops of a different photograph with GradScaledAdapter.

The learned initialisation must beat the same fitting from a randomly initialised SIREN by a clear margin.
The data pipeline is written here (block-average downscale, random crops) so the test depends only on
scikit-image's bundled photographs, not on ecop_wrap.data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren, make_grid

skimage_data = pytest.importorskip("skimage.data", reason="the end-to-end test needs scikit-image's photographs")

TRAIN_PHOTOS = ("camera", "astronaut", "coffee")
TEST_PHOTO = "chelsea"


def _photo(name: str, factor: int = 4) -> np.ndarray:
    """An ``H x W x 3`` float image in [0, 1], downscaled ``factor`` times by block averaging."""
    image = getattr(skimage_data, name)().astype(np.float64) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))


def _crops(images: list[np.ndarray], count: int, side: int, rng: np.random.Generator) -> torch.Tensor:
    """``[count, side * side, 3]`` float32 values of random crops, row-major like ``make_grid((side, side))``."""
    out = []
    for _ in range(count):
        image = images[rng.integers(len(images))]
        i = rng.integers(image.shape[0] - side + 1)
        j = rng.integers(image.shape[1] - side + 1)
        out.append(image[i : i + side, j : j + side].reshape(-1, 3))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def _test_psnr(model: torch.nn.Module, coords: torch.Tensor, values: torch.Tensor, steps: int, scaling: str) -> float:
    """Mean PSNR over the test crops after ``steps`` gradient-scaled full-context steps."""
    result = GradScaledAdapter(model, steps=steps, lr=1e-2, gamma=0.25, scaling=scaling).fit((coords, values))
    return float(result.history["psnr"][-1].mean())


def _run(
    seed: int,
    side: int,
    width: int,
    meta_steps: int,
    test_crops: int,
    K: int,
    L: int,
    outer_lr: float = 1e-3,
    max_grad_norm: float | None = None,
    log: list | None = None,
):
    rng = np.random.default_rng(seed)
    train = [_photo(name) for name in TRAIN_PHOTOS]
    test = _crops([_photo(TEST_PHOTO)], test_crops, side, rng)
    coords = make_grid((side, side))
    torch.manual_seed(seed)
    model = Siren(2, 3, width, 3)
    learner = ContextPruningMetaLearner(
        model, gamma=0.25, K=K, L=L, lam=1.0, boot_lr=5e-2, outer_lr=outer_lr, max_grad_norm=max_grad_norm, seed=seed
    )
    for _ in range(meta_steps):
        stats = learner.meta_step((coords, _crops(train, 4, side, rng)))
        assert stats["skipped"] == 0.0
        if log is not None:
            log.append(stats["psnr"])
    torch.manual_seed(seed + 1000)
    random_init = Siren(2, 3, width, 3)
    return {
        "meta_scaled": _test_psnr(model, coords, test, K, "norm"),
        "meta_unscaled": _test_psnr(model, coords, test, K, "none"),
        "random_scaled": _test_psnr(random_init, coords, test, K, "norm"),
        "random_unscaled": _test_psnr(random_init, coords, test, K, "none"),
    }


def test_meta_learned_init_beats_random_init_on_held_out_photo():
    # Siren(2, 3, 64, 3), 16x16 crops, 50 meta_steps of ECoP (gamma=0.25, K=16, L=2), batch 4, 16 test crops of
    # chelsea fitted with 16 steps. Measured with this _run (torch 2.13 CPU) for seeds 0/1/2/3, mean test PSNR in dB:
    #   meta-learned, norm-scaled: 38.7 / 36.2 / 40.1 / 37.6;  unscaled: 34.0 / 32.3 / 34.4 / 33.1
    #   random init,  norm-scaled: 22.2 / 22.0 / 23.3 / 22.0;  unscaled: 20.4 / 19.4 / 21.4 / 19.8
    # so the smallest margin seen was 12.9 dB; 5 dB leaves room for other platforms' rounding.
    # 16-20 s on one loaded core.
    psnr = _run(seed=0, side=16, width=64, meta_steps=50, test_crops=16, K=16, L=2)
    assert psnr["meta_scaled"] >= psnr["random_scaled"] + 5.0, psnr
    assert psnr["meta_unscaled"] >= psnr["random_unscaled"] + 5.0, psnr
    # a learner trained on pruned contexts profits from the test-time gradient scaling (paper §2.4)
    assert psnr["meta_scaled"] > psnr["meta_unscaled"], psnr


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_meta_learned_init_beats_random_init_longer(seed):
    # Siren(2, 3, 64, 3), 24x24 crops, 300 meta_steps of ECoP with the paper's K=16, L=5, 32 test crops of
    # chelsea; 3-6 minutes per seed on one (loaded) core. At outer lr 1e-3 without clipping seed 1 collapsed after
    # ~250 steps (test PSNR 14.5 dB), hence 3e-4 and max_grad_norm=1. Measured, mean test PSNR in dB:
    #   seed 0: meta-learned 40.6 scaled / 35.0 unscaled; random init 20.6 / 19.0
    #   seed 1: meta-learned 40.5 scaled / 35.3 unscaled; random init 21.5 / 19.1
    psnr = _run(
        seed=seed, side=24, width=64, meta_steps=300, test_crops=32, K=16, L=5, outer_lr=3e-4, max_grad_norm=1.0
    )
    assert psnr["meta_scaled"] >= psnr["random_scaled"] + 10.0, psnr
    assert psnr["meta_unscaled"] >= psnr["random_unscaled"] + 10.0, psnr
    assert psnr["meta_scaled"] > psnr["meta_unscaled"], psnr
