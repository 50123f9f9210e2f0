"""Image datasets: a folder of user images and random crops of scikit-image's bundled photographs.

Values are RGB (or 1-channel) in ``[0, 1]``; coords are the ``H x W`` grid in ``[-1, 1]^2`` (row, column).
Needs ``pip install 'ecop-wrap[images]'`` (Pillow, scikit-image).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._src.validation import check_fraction, check_int
from .base import SignalDataset, as_generator, import_optional, resize_images

__all__ = [
    "SKIMAGE_SPLITS",
    "SKIMAGE_TEST",
    "SKIMAGE_TRAIN",
    "SKIMAGE_VAL",
    "ImageFolder",
    "skimage_crops",
    "skimage_photo",
]

#: scikit-image photographs (``skimage.data`` function names) used for training crops.
SKIMAGE_TRAIN: tuple[str, ...] = (
    "astronaut",
    "camera",
    "rocket",
    "retina",
    "hubble_deep_field",
    "brick",
    "grass",
    "moon",
    "immunohistochemistry",
    "clock",
)
#: photographs for validation crops.
SKIMAGE_VAL: tuple[str, ...] = ("coffee", "gravel")
#: photographs for test crops (``motorcycle`` is the left view of ``skimage.data.stereo_motorcycle``).
SKIMAGE_TEST: tuple[str, ...] = ("chelsea", "motorcycle", "coins")
#: split name -> photographs; the splits share no source photograph.
SKIMAGE_SPLITS: dict[str, tuple[str, ...]] = {"train": SKIMAGE_TRAIN, "val": SKIMAGE_VAL, "test": SKIMAGE_TEST}

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _to_channels(image: np.ndarray, gray_to_rgb: bool) -> np.ndarray:
    """``[H, W]``/``[H, W, 1|3|4]`` float image to ``[H, W, 3]`` (or ``[H, W, 1]`` for gray when not converting)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] == 1 and gray_to_rgb:
        image = np.repeat(image, 3, axis=-1)
    return image


@functools.cache
def _load_photo(name: str) -> np.ndarray:
    data = import_optional("skimage.data", "images")
    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    image = np.asarray(image)
    return (image.astype(np.float32) / 255.0) if image.dtype == np.uint8 else image.astype(np.float32)


def skimage_photo(name: str, *, gray_to_rgb: bool = True) -> np.ndarray:
    """One bundled scikit-image photograph as float32 in ``[0, 1]``.

    Args:
        name: a name from :data:`SKIMAGE_SPLITS` (``"motorcycle"`` = left stereo view).
        gray_to_rgb: replicate grayscale photos to 3 channels.

    Returns:
        ``[H, W, 3]`` (or ``[H, W, 1]`` for a grayscale photo when ``gray_to_rgb`` is False).
    """
    known = {n for names in SKIMAGE_SPLITS.values() for n in names}
    if name not in known:
        raise ValueError(f"name must be one of {sorted(known)}, got {name!r}")
    return _to_channels(_load_photo(name), gray_to_rgb)


def _check_split(split: str) -> tuple[str, ...]:
    if split not in SKIMAGE_SPLITS:
        raise ValueError(f"split must be one of {list(SKIMAGE_SPLITS)}, got {split!r}")
    return SKIMAGE_SPLITS[split]


def _random_window(
    rng: np.random.Generator, height: int, width: int, resolution: int, min_fraction: float
) -> tuple[int, int, int]:
    """Top, left and side of a random square window covering at least ``min_fraction`` of the short side."""
    short = min(height, width)
    low = max(min_fraction * short, float(resolution))
    side = round(rng.uniform(min(low, short), short))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return top, left, side


def skimage_crops(
    split: str = "train",
    resolution: int = 32,
    n: int = 512,
    seed: int = 0,
    gray_to_rgb: bool = True,
    *,
    min_fraction: float = 0.25,
    dtype: torch.dtype = torch.float32,
) -> SignalDataset:
    """Random crops of the scikit-image photographs of one split.

    Each crop picks a photograph uniformly, draws a square window whose side is uniform between
    ``max(min_fraction * short_side, resolution)`` and the short side (a random downscale factor, so a crop
    sees a sizeable part of the photo), places it uniformly, and resizes it (antialiased) to
    ``resolution x resolution``. Fully determined by ``seed``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint source photographs, see :data:`SKIMAGE_SPLITS`).
        resolution: output side ``R``.
        n: number of crops ``N``.
        seed: random seed.
        gray_to_rgb: replicate grayscale photos to RGB; if False they keep ``D = 1`` and a split mixing gray
            and colour photos gives a dataset whose values are a list.
        min_fraction: smallest window side as a fraction of the photo's short side, in ``(0, 1]``.
        dtype: of coords and values.

    Returns:
        :class:`SignalDataset` with shape ``(R, R)``, coords ``[R*R, 2]``, values ``[N, R*R, 3]`` in ``[0, 1]``;
        ``names[i]`` = ``"photo:top,left,side"``.
    """
    photos = _check_split(split)
    resolution = check_int("resolution", resolution, 2)
    n = check_int("n", n, 1)
    min_fraction = check_fraction("min_fraction", min_fraction)
    rng = as_generator(seed)
    values, names = [], []
    for index in rng.integers(0, len(photos), size=n):
        name = photos[int(index)]
        photo = skimage_photo(name, gray_to_rgb=gray_to_rgb)
        top, left, side = _random_window(rng, photo.shape[0], photo.shape[1], resolution, min_fraction)
        crop = resize_images(photo[top : top + side, left : left + side], resolution, resolution)
        values.append(crop.clamp(0.0, 1.0).reshape(-1, crop.shape[-1]))
        names.append(f"{name}:{top},{left},{side}")
    metadata = {"source": "skimage.data", "split": split, "photos": photos, "seed": seed}
    return SignalDataset(values, (resolution, resolution), names=names, metadata=metadata, dtype=dtype)


def _image_files(path: str | Path, suffixes: Sequence[str]) -> list[Path]:
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"path must be an existing directory, got {str(path)!r}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"path {str(path)!r} holds no image files with suffixes {tuple(suffixes)}")
    return files


def _read_image(file: Path, gray_to_rgb: bool) -> np.ndarray:
    image_module = import_optional("PIL.Image", "images")
    with image_module.open(file) as img:
        if img.mode in ("L", "I", "I;16", "F", "1", "LA"):
            array = np.asarray(img.convert("F" if img.mode in ("I", "I;16", "F") else "L"), dtype=np.float32)
            scale = 65535.0 if img.mode in ("I", "I;16") else 255.0
            array = array / (1.0 if img.mode == "F" else scale)
        else:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return _to_channels(array, gray_to_rgb)


def _resize_short_side(image: np.ndarray, resolution: int) -> torch.Tensor:
    height, width = image.shape[:2]
    scale = resolution / min(height, width)
    new_h, new_w = max(resolution, round(height * scale)), max(resolution, round(width * scale))
    return resize_images(image, new_h, new_w)


def _crop_offsets(height: int, width: int, resolution: int, crop: str, rng: np.random.Generator) -> tuple[int, int]:
    if crop == "center":
        return (height - resolution) // 2, (width - resolution) // 2
    return int(rng.integers(0, height - resolution + 1)), int(rng.integers(0, width - resolution + 1))


class ImageFolder(SignalDataset):
    """Every Pillow-readable image under a folder (recursively), as ``resolution x resolution`` signals.

    Each image is resized (antialiased) so its short side equals ``resolution`` and then cropped to a square:
    the central one (``crop="center"``) or ``n_per_image`` random ones (``crop="random"``, deterministic given
    ``seed``). Images are loaded eagerly.

    Args:
        path: folder to search.
        resolution: output side ``R``.
        crop: ``"center"`` or ``"random"``.
        n_per_image: crops per image (must be 1 for ``"center"``).
        seed: random seed for ``"random"`` crops.
        gray_to_rgb: replicate grayscale images to RGB; if False they keep ``D = 1``.
        suffixes: file suffixes to read (lower case, with the dot).
        dtype: of coords and values.

    Attributes:
        files: the image paths, in sorted order; ``names[i]`` is ``"relative/path#k"``.
    """

    def __init__(
        self,
        path: str | Path,
        resolution: int,
        *,
        crop: str = "center",
        n_per_image: int = 1,
        seed: int = 0,
        gray_to_rgb: bool = True,
        suffixes: Sequence[str] = _IMAGE_SUFFIXES,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        resolution = check_int("resolution", resolution, 1)
        n_per_image = check_int("n_per_image", n_per_image, 1)
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        if crop == "center" and n_per_image != 1:
            raise ValueError(f"n_per_image must be 1 with crop='center', got {n_per_image}")
        rng = as_generator(seed)
        self.files = _image_files(path, tuple(s.lower() for s in suffixes))
        values, names = [], []
        for file in self.files:
            image = _resize_short_side(_read_image(file, gray_to_rgb), resolution)
            for k in range(n_per_image):
                top, left = _crop_offsets(image.shape[0], image.shape[1], resolution, crop, rng)
                patch = image[top : top + resolution, left : left + resolution].clamp(0.0, 1.0)
                values.append(patch.reshape(-1, patch.shape[-1]))
                names.append(f"{file.relative_to(path).as_posix()}#{k}")
        metadata = {"root": str(path), "crop": crop, "seed": seed}
        super().__init__(values, (resolution, resolution), names=names, metadata=metadata, dtype=dtype)
