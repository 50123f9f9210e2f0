"""SSIM of ecop_wrap.quality against scikit-image's structural_similarity, and LPIPS honesty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecop_wrap.quality import gaussian_window, lpips_distance, lpips_status, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")


def _reference(pred: np.ndarray, target: np.ndarray) -> float:
    return float(
        skimage_metrics.structural_similarity(
            pred, target, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
        )
    )


@pytest.mark.parametrize("shape", [(32, 32, 3), (24, 40, 1), (16, 17, 2)])
@pytest.mark.parametrize("noise", [0.02, 0.2])
def test_ssim_matches_skimage(shape, noise):
    rng = np.random.default_rng(0)
    target = rng.random(shape)
    smooth = np.cumsum(np.cumsum(target, axis=0), axis=1)
    target = smooth / smooth.max()  # structured, not white noise
    pred = np.clip(target + noise * rng.standard_normal(shape), 0.0, 1.0)
    got = ssim(torch.from_numpy(pred), torch.from_numpy(target))
    assert got.shape == ()
    assert float(got) == pytest.approx(_reference(pred, target), abs=1e-9)


def test_ssim_batched_equals_per_image():
    rng = np.random.default_rng(1)
    target = rng.random((2, 3, 20, 20, 3))
    pred = np.clip(target + 0.1 * rng.standard_normal(target.shape), 0, 1)
    got = ssim(torch.from_numpy(pred), torch.from_numpy(target))
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert float(got[i, j]) == pytest.approx(_reference(pred[i, j], target[i, j]), abs=1e-9)


def test_ssim_identity_and_float32():
    image = torch.rand(2, 16, 16, 3)
    torch.testing.assert_close(ssim(image, image), torch.ones(2))
    assert ssim(image, image).dtype == torch.float32


def test_ssim_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(16, 16, 3), torch.rand(16, 16, 1))
    with pytest.raises(ValueError, match="window_size"):
        ssim(torch.rand(8, 8, 3), torch.rand(8, 8, 3))
    with pytest.raises(TypeError):
        ssim(np.zeros((16, 16, 3)), torch.rand(16, 16, 3))
    with pytest.raises(ValueError, match="odd"):
        gaussian_window(10)


def test_gaussian_window_is_normalised_and_symmetric():
    taps = gaussian_window(11, 1.5)
    assert float(taps.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(taps, taps.flip(0))
    assert int(taps.argmax()) == 5


def test_lpips_never_faked_when_unavailable():
    available, reason = lpips_status()
    if available:
        pytest.skip("LPIPS weights are installed here")
    assert reason
    with pytest.raises(RuntimeError, match="LPIPS unavailable"):
        lpips_distance(torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3))
