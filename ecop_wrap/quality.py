"""Perceptual image-quality metrics for reconstructions: SSIM (written here) and LPIPS (only when available).

SSIM follows Wang et al. (2004): local means, variances and covariance under an 11x11 Gaussian window with
sigma 1.5, constants ``C1 = (0.01 R)^2`` and ``C2 = (0.03 R)^2`` for data range ``R``, averaged over the
positions where the window fits inside the image ("valid" region) and over channels. This matches
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=R, channel_axis=-1)``.

LPIPS needs the ``lpips`` package *and* its pretrained backbone weights on disk; nothing is downloaded. When
either is missing :func:`lpips_status` says why and :func:`lpips_distance` raises; it is never faked.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "lpips_distance", "lpips_status", "ssim"]


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``[size]`` centred on the middle tap.

    Args:
        size: odd number of taps (>= 1).
        sigma: standard deviation in pixels (> 0).
        dtype: of the result.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be an odd int >= 1, got {size!r}")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    offsets = torch.arange(size, dtype=dtype) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _check_images(pred: torch.Tensor, target: torch.Tensor, window: int) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("pred and target must be tensors [..., H, W, C]")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.ndim < 3:
        raise ValueError(f"pred and target must be images [..., H, W, C], got shape {tuple(pred.shape)}")
    if min(pred.shape[-3], pred.shape[-2]) < window:
        raise ValueError(
            f"images [..., H, W, C] must be at least window_size={window} pixels on each side, got {tuple(pred.shape)}"
        )


def _blur(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of ``[N, 1, H, W]`` with the 1-D ``taps``."""
    size = taps.numel()
    out = F.conv2d(images, taps.view(1, 1, size, 1))
    return F.conv2d(out, taps.view(1, 1, 1, size))


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image, channels-last.

    Args:
        pred: ``[..., H, W, C]`` reconstructed images (e.g. ``SignalDataset.to_arrays`` of a prediction).
        target: ``[..., H, W, C]`` ground truth, same shape.
        data_range: ``R``, the span of valid values (1.0 for images in ``[0, 1]``).
        window_size: odd Gaussian window side; the images must be at least this large.
        sigma: Gaussian standard deviation in pixels.
        k1, k2: stabilising constants of Wang et al.

    Returns:
        ``[...]`` mean SSIM over the valid window positions and the channels (1.0 for identical images).
    """
    _check_images(pred, target, window_size)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    batch_shape, (height, width, channels) = pred.shape[:-3], pred.shape[-3:]
    dtype = pred.dtype if pred.dtype in (torch.float32, torch.float64) else torch.float32

    def planes(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype).reshape(-1, height, width, channels).permute(0, 3, 1, 2).reshape(-1, 1, height, width)

    x, y = planes(pred), planes(target)
    taps = gaussian_window(window_size, sigma, dtype=dtype).to(pred.device)
    mu_x, mu_y = _blur(x, taps), _blur(y, taps)
    var_x = _blur(x * x, taps) - mu_x**2
    var_y = _blur(y * y, taps) - mu_y**2
    cov = _blur(x * y, taps) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_plane = index.mean(dim=(1, 2, 3)).reshape(-1, channels)
    return per_plane.mean(dim=1).reshape(batch_shape)


# ----------------------------------------------------------------------------------------------- LPIPS
_LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS can be computed offline, and why not.

    LPIPS needs the ``lpips`` package (which ships its small linear heads) and the torchvision backbone
    weights already in the torch hub cache (``$TORCH_HOME/hub/checkpoints``); this function never downloads.

    Returns:
        ``(available, reason)``; ``reason`` names what is missing (empty when available).
    """
    if net not in _LPIPS_BACKBONE_FILES:
        raise ValueError(f"net must be one of {sorted(_LPIPS_BACKBONE_FILES)}, got {net!r}")
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False, "the 'lpips' package is not installed"
    weights = os.path.join(torch.hub.get_dir(), "checkpoints", _LPIPS_BACKBONE_FILES[net])
    if not os.path.isfile(weights):
        return False, f"LPIPS backbone weights not found at {weights} (they are never downloaded here)"
    return True, ""


_LPIPS_MODELS: dict[str, torch.nn.Module] = {}


def lpips_distance(pred: torch.Tensor, target: torch.Tensor, *, net: str = "alex") -> torch.Tensor:
    """LPIPS distance per image (lower is better) with locally available weights only.

    Args:
        pred, target: ``[..., H, W, 3]`` images in ``[0, 1]``.
        net: backbone, ``"alex"`` (the usual choice), ``"vgg"`` or ``"squeeze"``.

    Returns:
        ``[...]`` distances.

    Raises:
        RuntimeError: when :func:`lpips_status` reports LPIPS unavailable.
    """
    available, reason = lpips_status(net)
    if not available:
        raise RuntimeError(f"LPIPS unavailable: {reason}")
    if pred.shape != target.shape or pred.ndim < 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and target must be RGB images [..., H, W, 3] of one shape, got {tuple(pred.shape)}")
    import lpips

    if net not in _LPIPS_MODELS:
        _LPIPS_MODELS[net] = lpips.LPIPS(net=net, verbose=False).eval()
    model = _LPIPS_MODELS[net].to(pred.device)
    batch_shape, (height, width) = pred.shape[:-3], pred.shape[-3:-1]

    def nchw(x: torch.Tensor) -> torch.Tensor:
        return (x.float().reshape(-1, height, width, 3).permute(0, 3, 1, 2) * 2.0) - 1.0

    with torch.no_grad():
        distance: torch.Tensor = model(nchw(pred), nchw(target)).flatten()
    return distance.reshape(batch_shape)
