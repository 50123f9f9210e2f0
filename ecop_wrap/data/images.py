"""Image datasets: a folder of user images and random crops of scikit-image's bundled photographs (square, or
at their own aspect ratios: :func:`skimage_aspect_crops`).

Values are RGB (or 1-channel) in ``[0, 1]``; coords are the ``H x W`` grid in ``[-1, 1]^2`` (row, column).
Needs ``pip install 'ecop-wrap[images]'`` (Pillow, scikit-image).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._src.validation import check_fraction, check_int
from ..signals import make_grid
from .base import SignalDataset, as_generator, import_optional, resize_images

__all__ = [
    "SKIMAGE_SPLITS",
    "SKIMAGE_TEST",
    "SKIMAGE_TRAIN",
    "SKIMAGE_VAL",
    "ImageFolder",
    "aspect_grid",
    "aspect_shape",
    "skimage_aspect_crops",
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


def _window_crop(
    image: np.ndarray, resolution: int, min_fraction: float, rng: np.random.Generator
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A random window of ``image`` (:func:`_random_window`) resized to ``[R, R, D]`` and clamped to ``[0, 1]``,
    with its top, left and side."""
    top, left, side = _random_window(rng, image.shape[0], image.shape[1], resolution, min_fraction)
    crop = resize_images(image[top : top + side, left : left + side], resolution, resolution)
    return crop.clamp(0.0, 1.0), (top, left, side)


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
        crop, (top, left, side) = _window_crop(photo, resolution, min_fraction, rng)
        values.append(crop.reshape(-1, crop.shape[-1]))
        names.append(f"{name}:{top},{left},{side}")
    metadata = {"source": "skimage.data", "split": split, "photos": photos, "seed": seed}
    return SignalDataset(values, (resolution, resolution), names=names, metadata=metadata, dtype=dtype)


def aspect_grid(shape: Sequence[int]) -> torch.Tensor:
    """Pixel centres of an image that keep its aspect ratio: the long side spans ``[-1, 1]`` and both axes have
    the same spacing (:func:`~ecop_wrap.make_grid` stretches each axis to ``[-1, 1]`` instead).

    Args:
        shape: ``(H, W)`` (any number of axes ``(S_1, ..., S_C)``), each ``>= 1``.

    Returns:
        ``[H * W, 2]`` coordinates (row, column) in row-major order: axis ``i`` spans
        ``[-(S_i - 1) / (L - 1), (S_i - 1) / (L - 1)]`` with ``L`` the longest side (all 0 when ``L = 1``).

    Raises:
        ValueError: ``shape`` empty or with a side < 1.
    """
    sides = tuple(shape)
    if len(sides) == 0 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sides):
        raise ValueError(f"shape must be a non-empty sequence of ints >= 1, got {shape!r}")
    longest = max(sides)
    scale = torch.tensor([(s - 1) / (longest - 1) if longest > 1 else 1.0 for s in sides])
    return make_grid(sides) * scale


def aspect_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """The shape of a ``height x width`` image downscaled at its own aspect ratio to a long side of ``long_side``.

    Args:
        height: ``H >= 1``.
        width: ``W >= 1``.
        long_side: ``R >= 2``, the output's long side.

    Returns:
        ``(h, w)``: ``(R, round(R * W / H))`` when ``H >= W``, else ``(round(R * H / W), R)``; the short side is
        at least 2.

    Raises:
        TypeError: a non-int argument.
        ValueError: ``height`` or ``width`` < 1, or ``long_side`` < 2.
    """
    height, width = check_int("height", height, 1), check_int("width", width, 1)
    long_side = check_int("long_side", long_side, 2)
    if height >= width:
        return long_side, max(2, round(long_side * width / height))
    return max(2, round(long_side * height / width)), long_side


def skimage_aspect_crops(
    split: str, long_side: int, n: int, seed: int, *, max_aspect: float = 2.0, min_fraction: float = 0.25
) -> SignalDataset:
    """Crops of one split's scikit-image photographs at random aspect ratios, each downscaled to a long side of
    ``long_side``: a ragged :class:`SignalDataset` (pad batches with :func:`~ecop_wrap.data.collate_signals`).

    A crop picks a photograph uniformly, an aspect ratio ``h / w`` log-uniform in ``[1/max_aspect, max_aspect]``
    and a size (the geometric mean of its sides) uniform between ``min_fraction`` and all of the photo's short side,
    shrunk to fit the photo; it is placed uniformly and resized (antialiased) to :func:`aspect_shape`. Fully
    determined by ``seed``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint source photographs, see :data:`SKIMAGE_SPLITS`).
        long_side: ``R >= 2``, the long side of every signal.
        n: number of crops ``N >= 1``.
        seed: random seed (``>= 0``).
        max_aspect: the largest ratio of long to short side, a finite float ``>= 1`` (the rounding of the short
            side can exceed it by up to ``1 / R`` relative).
        min_fraction: smallest crop size as a fraction of the photo's short side, in ``(0, 1]``.

    Returns:
        A ragged :class:`SignalDataset`: signal ``i`` has values ``[h_i * w_i, 3]`` in ``[0, 1]``, grid shape
        ``(h_i, w_i)`` with ``max(h_i, w_i) = R``, coords :func:`aspect_grid` ``[h_i * w_i, 2]``;
        ``names[i]`` = ``"photo:top,left,height,width"`` (the crop's window in the photo).

    Raises:
        ValueError: an unknown ``split``, ``long_side`` < 2, ``n`` < 1, a negative ``seed``, ``max_aspect`` < 1
            (or not finite), ``min_fraction`` outside ``(0, 1]``.
    """
    photos = _check_split(split)
    long_side = check_int("long_side", long_side, 2)
    n = check_int("n", n, 1)
    min_fraction = check_fraction("min_fraction", min_fraction)
    if isinstance(max_aspect, bool) or not isinstance(max_aspect, (int, float)):
        raise TypeError(f"max_aspect must be a float >= 1, got {type(max_aspect).__name__}")
    if not (math.isfinite(max_aspect) and max_aspect >= 1):
        raise ValueError(f"max_aspect must be a finite float >= 1, got {max_aspect}")
    rng = as_generator(seed)
    values, shapes, names = [], [], []
    for index in rng.integers(0, len(photos), size=n):
        name = photos[int(index)]
        photo = skimage_photo(name)
        height, width = photo.shape[:2]
        aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
        size = rng.uniform(min_fraction, 1.0) * min(height, width)
        h, w = size * math.sqrt(aspect), size / math.sqrt(aspect)
        shrink = min(1.0, height / h, width / w)
        h, w = max(2, min(height, round(h * shrink))), max(2, min(width, round(w * shrink)))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        shape = aspect_shape(h, w, long_side)
        crop = resize_images(photo[top : top + h, left : left + w], *shape).clamp(0.0, 1.0)
        values.append(crop.reshape(-1, 3))
        shapes.append(shape)
        names.append(f"{name}:{top},{left},{h},{w}")
    metadata = {"source": "skimage.data", "split": split, "photos": photos, "seed": seed}
    coords = [aspect_grid(s) for s in shapes]
    return SignalDataset(values, shapes, coords=coords, names=names, metadata=metadata)


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


def _window_crops(
    image: np.ndarray, resolution: int, n: int, min_fraction: float, rng: np.random.Generator
) -> list[torch.Tensor]:
    """``n`` random windows of ``image`` (:func:`_window_crop`), each ``[R, R, D]`` in ``[0, 1]``."""
    if min(image.shape[:2]) < resolution:
        raise ValueError(f"crop='window' needs images at least {resolution} pixels on each side, got {image.shape[:2]}")
    return [_window_crop(image, resolution, min_fraction, rng)[0] for _ in range(n)]


class ImageFolder(SignalDataset):
    """Every Pillow-readable image under a folder (recursively), as ``resolution x resolution`` signals.

    Each image is resized (antialiased) so its short side equals ``resolution`` and then cropped to a square:
    the central one (``crop="center"``) or ``n_per_image`` random ones (``crop="random"``, deterministic given
    ``seed``). ``crop="window"`` crops as :func:`skimage_crops` does instead: ``n_per_image`` random square windows
    of the full-resolution image, each with a side uniform between ``max(min_fraction * short_side, resolution)``
    and the short side, resized to ``R x R`` (so your own photos can be scored like the builtin crops). Images
    are loaded eagerly.

    Args:
        path: folder to search.
        resolution: output side ``R``.
        crop: ``"center"``, ``"random"`` or ``"window"``.
        n_per_image: crops per image (must be 1 for ``"center"``).
        seed: random seed for ``"random"`` and ``"window"`` crops.
        gray_to_rgb: replicate grayscale images to RGB; if False they keep ``D = 1``.
        suffixes: file suffixes to read (lower case, with the dot).
        dtype: of coords and values.
        min_fraction: ``"window"`` only: the smallest window side as a fraction of the image's short side, in
            ``(0, 1]``.

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
        min_fraction: float = 0.25,
    ) -> None:
        resolution = check_int("resolution", resolution, 1)
        n_per_image = check_int("n_per_image", n_per_image, 1)
        min_fraction = check_fraction("min_fraction", min_fraction)
        if crop not in ("center", "random", "window"):
            raise ValueError(f"crop must be 'center', 'random' or 'window', got {crop!r}")
        if crop == "center" and n_per_image != 1:
            raise ValueError(f"n_per_image must be 1 with crop='center', got {n_per_image}")
        rng = as_generator(seed)
        self.files = _image_files(path, tuple(s.lower() for s in suffixes))
        values, names = [], []
        for file in self.files:
            if crop == "window":
                patches = _window_crops(_read_image(file, gray_to_rgb), resolution, n_per_image, min_fraction, rng)
            else:
                image = _resize_short_side(_read_image(file, gray_to_rgb), resolution)
                patches = []
                for _ in range(n_per_image):
                    top, left = _crop_offsets(image.shape[0], image.shape[1], resolution, crop, rng)
                    patches.append(image[top : top + resolution, left : left + resolution].clamp(0.0, 1.0))
            for k, patch in enumerate(patches):
                values.append(patch.reshape(-1, patch.shape[-1]))
                names.append(f"{file.relative_to(path).as_posix()}#{k}")
        metadata = {"root": str(path), "crop": crop, "seed": seed}
        if crop == "window":
            metadata["min_fraction"] = min_fraction
        super().__init__(values, (resolution, resolution), names=names, metadata=metadata, dtype=dtype)
