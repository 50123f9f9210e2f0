"""Text rendered offline from matplotlib's bundled fonts: random-text images and labelled glyphs.

:func:`text_images`: each image is a random string of letters and digits in a random font (one of
matplotlib's bundled TrueType fonts), random size, random text and background colours and a random position,
in the spirit of Learnit's "Text" dataset. :func:`glyph_images`: one labelled character (a digit or an
uppercase letter) per grayscale image, with the font families split between training and test sets. Needs
``pip install 'ecop-wrap[text]'`` (matplotlib for the fonts, Pillow to render).
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._src.validation import check_int
from .base import SignalDataset, as_generator, import_optional

__all__ = [
    "FONT_FAMILIES",
    "FONT_FAMILY_SPLITS",
    "GLYPH_CLASSES",
    "TEXT_ALPHABET",
    "bundled_fonts",
    "glyph_fonts",
    "glyph_images",
    "text_images",
]

#: characters the random strings are drawn from.
TEXT_ALPHABET: str = string.ascii_letters + string.digits

#: the 36 glyph classes of :func:`glyph_images`, label ``i`` is ``GLYPH_CLASSES[i]``.
GLYPH_CLASSES: str = string.digits + string.ascii_uppercase

#: font families (typeface designs) of matplotlib's bundled fonts, each with its regular, bold and italic
#: files; :func:`glyph_images` draws every image's font from the families it is given.
FONT_FAMILIES: dict[str, tuple[str, ...]] = {
    "DejaVu Sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf"),
    "DejaVu Sans Mono": (
        "DejaVuSansMono.ttf",
        "DejaVuSansMono-Bold.ttf",
        "DejaVuSansMono-Oblique.ttf",
        "DejaVuSansMono-BoldOblique.ttf",
    ),
    "DejaVu Serif": (
        "DejaVuSerif.ttf",
        "DejaVuSerif-Bold.ttf",
        "DejaVuSerif-Italic.ttf",
        "DejaVuSerif-BoldItalic.ttf",
    ),
    "STIX General": ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf"),
    "Computer Modern Roman": ("cmr10.ttf", "cmb10.ttf", "cmti10.ttf"),
    "Computer Modern Sans": ("cmss10.ttf",),
    "Computer Modern Typewriter": ("cmtt10.ttf",),
}

#: a split of :data:`FONT_FAMILIES` into disjoint training, validation and test families (typefaces a test never
#: trained on), as :data:`~ecop_wrap.data.SKIMAGE_SPLITS` splits the photographs.
FONT_FAMILY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("DejaVu Sans", "DejaVu Serif", "STIX General", "Computer Modern Roman"),
    "val": ("Computer Modern Sans",),
    "test": ("DejaVu Sans Mono", "Computer Modern Typewriter"),
}

# Font families whose glyphs cover Latin letters and digits (symbol-only files such as cmex10, cmsy10,
# STIXSize*/STIXNonUni* and the DejaVu "Display" subsets are left out).
_FONT_PREFIXES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmb10", "cmss10", "cmti10", "cmtt10")


def bundled_fonts() -> list[Path]:
    """Paths of matplotlib's bundled TrueType fonts that render letters and digits."""
    matplotlib = import_optional("matplotlib", "text")
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(p for p in folder.glob("*.ttf") if p.name.startswith(_FONT_PREFIXES) and "Display" not in p.name)
    if not fonts:
        raise RuntimeError(f"no usable TrueType fonts found in {folder}")
    return fonts


def glyph_fonts(families: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """The font files of the given :data:`FONT_FAMILIES` (default: all), as found in matplotlib's data folder.

    Raises:
        ValueError: a family name that is not in :data:`FONT_FAMILIES`.
        RuntimeError: a family none of whose files is installed.
    """
    matplotlib = import_optional("matplotlib", "text")
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = list(FONT_FAMILIES) if families is None else [str(f) for f in families]
    unknown = [name for name in names if name not in FONT_FAMILIES]
    if unknown or not names:
        raise ValueError(
            f"families must be a non-empty list of names from FONT_FAMILIES {list(FONT_FAMILIES)}, "
            f"got {unknown or names}"
        )
    found = {name: [folder / file for file in FONT_FAMILIES[name] if (folder / file).is_file()] for name in names}
    missing = [name for name, files in found.items() if not files]
    if missing:
        raise RuntimeError(f"no font file of {missing} found in {folder}")
    return found


def _colours(rng: np.random.Generator, min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Random background and text colours whose luminances differ by at least ``min_contrast``."""
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        background, foreground = rng.integers(0, 256, size=(2, 3))
        if abs(float((background - foreground) @ weights)) / 255.0 >= min_contrast:
            return background, foreground


def _render(
    rng: np.random.Generator, fonts: list[Path], resolution: int, lengths: tuple[int, int], min_contrast: float
) -> tuple[np.ndarray, str]:
    image_module = import_optional("PIL.Image", "text")
    draw_module = import_optional("PIL.ImageDraw", "text")
    font_module = import_optional("PIL.ImageFont", "text")
    text = "".join(rng.choice(list(TEXT_ALPHABET), size=int(rng.integers(lengths[0], lengths[1] + 1))))
    font_path = fonts[int(rng.integers(0, len(fonts)))]
    size = int(rng.integers(max(6, resolution // 6), max(7, resolution // 2) + 1))
    font = font_module.truetype(str(font_path), size)
    background, foreground = _colours(rng, min_contrast)
    canvas = image_module.new("RGB", (resolution, resolution), tuple(int(c) for c in background))
    draw = draw_module.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = rng.uniform(-left, max(-left, resolution - right))
    y = rng.uniform(-top, max(-top, resolution - bottom))
    draw.text((x, y), text, font=font, fill=tuple(int(c) for c in foreground))
    return np.asarray(canvas, dtype=np.float32) / 255.0, f"{text}|{font_path.name}|{size}"


def text_images(
    n: int,
    resolution: int = 64,
    seed: int = 0,
    *,
    min_length: int = 2,
    max_length: int = 8,
    min_contrast: float = 0.25,
    dtype: torch.dtype = torch.float32,
) -> SignalDataset:
    """Random-text RGB images.

    Args:
        n: number of images ``N``.
        resolution: image side ``R``.
        seed: random seed (the dataset is fully determined by it and the installed fonts).
        min_length, max_length: range of the string length (characters from :data:`TEXT_ALPHABET`); long
            strings in large fonts run off the right edge, as in the original dataset.
        min_contrast: least luminance difference between text and background, in ``[0, 1)``.
        dtype: of coords and values.

    Returns:
        :class:`SignalDataset` with shape ``(R, R)``, coords ``[R*R, 2]``, values ``[N, R*R, 3]`` in ``[0, 1]``;
        ``names[i]`` = ``"text|font file|font size"``.
    """
    n = check_int("n", n, 1)
    resolution = check_int("resolution", resolution, 8)
    min_length = check_int("min_length", min_length, 1)
    max_length = check_int("max_length", max_length, min_length)
    if not 0.0 <= float(min_contrast) < 1.0:
        raise ValueError(f"min_contrast must be in [0, 1), got {min_contrast}")
    rng = as_generator(seed)
    fonts = bundled_fonts()
    images, names = [], []
    for _ in range(n):
        image, name = _render(rng, fonts, resolution, (min_length, max_length), float(min_contrast))
        images.append(torch.from_numpy(image).reshape(-1, 3))
        names.append(name)
    metadata = {"source": "random text", "fonts": [f.name for f in fonts], "seed": seed}
    return SignalDataset(torch.stack(images), (resolution, resolution), names=names, metadata=metadata, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _truetype(path: str, pixels: int) -> Any:
    """A loaded font (loading a file takes milliseconds; every glyph image reuses it)."""
    return import_optional("PIL.ImageFont", "text").truetype(path, pixels)


def _glyph_mask(font_path: Path, char: str, stroke: int, angle: float, pixels: int) -> Any:
    """The character drawn white on black at ``pixels`` px, thickened by ``stroke`` px, rotated and cropped."""
    image_module = import_optional("PIL.Image", "text")
    draw_module = import_optional("PIL.ImageDraw", "text")
    font = _truetype(str(font_path), pixels)
    canvas = image_module.new("L", (3 * pixels, 3 * pixels), 0)
    draw_module.Draw(canvas).text((pixels, pixels), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    box = canvas.getbbox()
    if box is None:
        raise RuntimeError(f"font {font_path.name} draws nothing for {char!r}")
    glyph = canvas.crop((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2))  # rotating the crop is ~10x cheaper
    rotated = glyph.rotate(angle, resample=image_module.Resampling.BICUBIC, expand=True, fillcolor=0)
    return rotated.crop(rotated.getbbox())


def _render_glyph(
    rng: np.random.Generator,
    font_path: Path,
    char: str,
    resolution: int,
    size_range: tuple[float, float],
    max_rotation: float,
    max_weight: float,
) -> tuple[np.ndarray, str]:
    """One ``[R, R]`` image in ``[0, 1]``: the glyph's longer side is a random fraction of ``R``, placed at a
    random sub-pixel position (drawn at 4x and averaged down, which antialiases it)."""
    image_module = import_optional("PIL.Image", "text")
    supersample, pixels = 4, 96
    stroke = round(float(rng.uniform(0.0, max_weight)) * pixels)
    angle = float(rng.uniform(-max_rotation, max_rotation))
    mask = _glyph_mask(font_path, char, stroke, angle, pixels)
    side = rng.uniform(*size_range) * resolution * supersample
    scale = side / max(mask.size)
    width, height = (max(1, round(extent * scale)) for extent in mask.size)
    glyph = mask.resize((width, height), resample=image_module.Resampling.LANCZOS)
    canvas = image_module.new("L", (resolution * supersample, resolution * supersample), 0)
    left = int(rng.integers(0, canvas.size[0] - width + 1))
    top = int(rng.integers(0, canvas.size[1] - height + 1))
    canvas.paste(glyph, (left, top))
    small = canvas.resize((resolution, resolution), resample=image_module.Resampling.BOX)
    name = f"{char}|{font_path.name}|{side / supersample:.1f}px|{angle:+.0f}deg|w{stroke}"
    return np.asarray(small, dtype=np.float32) / 255.0, name


def glyph_images(
    n_per_class: int,
    resolution: int = 24,
    seed: int = 0,
    *,
    families: Sequence[str] | None = None,
    classes: str = GLYPH_CLASSES,
    size_range: tuple[float, float] = (0.55, 0.95),
    max_rotation: float = 12.0,
    max_weight: float = 0.04,
    dtype: torch.dtype = torch.float32,
) -> tuple[SignalDataset, torch.Tensor]:
    """Labelled grayscale images of single characters (digits and uppercase letters) in matplotlib's fonts.

    Each image shows one character, white on black, in a font file drawn at random from ``families`` (the
    regular, bold and italic files of each family, :data:`FONT_FAMILIES`), with a random size (the glyph's
    longer side is ``size_range`` times ``R``), a random stroke thickening (weight), a random rotation and a
    random position. Give the training and test sets disjoint ``families`` to test on unseen typefaces.

    Args:
        n_per_class: images per character ``n``; ``N = n * len(classes)``, ordered class by class.
        resolution: image side ``R`` (at least 8).
        seed: random seed (the dataset is fully determined by it, the arguments and the installed fonts).
        families: names from :data:`FONT_FAMILIES` (default: all of them).
        classes: the characters, one class each (default :data:`GLYPH_CLASSES`: 0-9 and A-Z).
        size_range: ``(low, high)`` fractions of ``R`` for the glyph's longer side, ``0 < low <= high <= 1``.
        max_rotation: rotations are uniform in ``[-max_rotation, max_rotation]`` degrees.
        max_weight: the stroke is thickened by up to this fraction of the font size (0: the font's own weight).
        dtype: of coords and values.

    Returns:
        ``(dataset, labels)``: a :class:`SignalDataset` with shape ``(R, R)``, coords ``[R*R, 2]``, values
        ``[N, R*R, 1]`` in ``[0, 1]``, ``names[i]`` = ``"char|font file|size|rotation|stroke"``, and ``labels``
        ``[N]`` (int64), the index of each image's character in ``classes``.
    """
    n_per_class = check_int("n_per_class", n_per_class, 1)
    resolution = check_int("resolution", resolution, 8)
    if not isinstance(classes, str) or not classes or len(set(classes)) != len(classes) or not classes.isprintable():
        raise ValueError(f"classes must be a non-empty string of distinct printable characters, got {classes!r}")
    low, high = (float(v) for v in size_range)
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"size_range must be (low, high) with 0 < low <= high <= 1, got {size_range}")
    if not 0.0 <= float(max_rotation) <= 90.0 or not 0.0 <= float(max_weight) <= 0.2:
        raise ValueError(
            f"max_rotation must be in [0, 90] and max_weight in [0, 0.2], got {max_rotation}, {max_weight}"
        )
    fonts = [path for files in glyph_fonts(families).values() for path in files]
    rng = as_generator(seed)
    images, names, labels = [], [], []
    for label, char in enumerate(classes):
        for _ in range(n_per_class):
            font_path = fonts[int(rng.integers(0, len(fonts)))]
            image, name = _render_glyph(
                rng, font_path, char, resolution, (low, high), float(max_rotation), float(max_weight)
            )
            images.append(torch.from_numpy(image).reshape(-1, 1))
            names.append(name)
            labels.append(label)
    metadata = {
        "source": "glyphs of matplotlib's bundled fonts",
        "classes": classes,
        "seed": seed,
        "families": list(families) if families is not None else list(FONT_FAMILIES),
        "fonts": [f.name for f in fonts],
    }
    dataset = SignalDataset(torch.stack(images), (resolution, resolution), names=names, metadata=metadata, dtype=dtype)
    return dataset, torch.tensor(labels, dtype=torch.int64)
