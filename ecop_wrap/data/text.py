"""Images of random text, in the spirit of Learnit's "Text" dataset, rendered offline.

Each image is a random string of letters and digits in a random font (one of matplotlib's bundled TrueType
fonts), random size, random text and background colours and a random position. Needs
``pip install 'ecop-wrap[text]'`` (matplotlib for the fonts, Pillow to render).
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch

from .._src.validation import check_int
from .base import SignalDataset, as_generator, import_optional

__all__ = ["TEXT_ALPHABET", "bundled_fonts", "text_images"]

#: characters the random strings are drawn from.
TEXT_ALPHABET: str = string.ascii_letters + string.digits

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
