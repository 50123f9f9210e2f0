"""2-D signed distance fields of glyph outlines from matplotlib's bundled fonts.

A glyph's outline is read with :class:`matplotlib.textpath.TextPath` (its quadratic and cubic Bezier pieces
sampled into closed polylines); the field at a point is the exact Euclidean distance to those polylines,
negative inside the glyph (even-odd rule, so counters such as the hole of an ``O`` are outside). Needs
``pip install 'ecop-wrap[text]'`` (matplotlib).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._src.validation import check_int
from ..signals import make_grid
from .base import SignalDataset, as_generator, import_optional
from .text import GLYPH_CLASSES, glyph_fonts

__all__ = ["glyph_outline", "glyph_sdfs", "signed_distance"]


@functools.lru_cache(maxsize=4096)
def _outline(font: str, char: str, samples_per_curve: int) -> tuple[np.ndarray, ...]:
    textpath = import_optional("matplotlib.textpath", "text")
    font_manager = import_optional("matplotlib.font_manager", "text")
    path = textpath.TextPath((0.0, 0.0), char, size=1.0, prop=font_manager.FontProperties(fname=font))
    rings: list[list[np.ndarray]] = []
    t = np.linspace(0.0, 1.0, samples_per_curve + 1)[1:]
    for segment, _ in path.iter_bezier():
        if segment.degree == 0:  # MOVETO: a new closed ring starts
            rings.append([segment.control_points[:1]])
        elif rings:
            rings[-1].append(segment.control_points[-1:] if segment.degree == 1 else segment(t))
    closed = (np.concatenate(parts) for parts in rings)
    return tuple(ring for ring in closed if len(ring) >= 3)


def glyph_outline(font: str | Path, char: str, *, samples_per_curve: int = 8) -> list[np.ndarray]:
    """The closed outline rings of one character, in font units at size 1 (y up).

    Args:
        font: a TrueType file (e.g. one of :func:`~ecop_wrap.data.glyph_fonts`).
        char: one printable, non-blank character.
        samples_per_curve: points each Bezier piece is sampled at (straight pieces keep their end point).

    Returns:
        One ``[n_i, 2]`` float64 array per ring (the last point joins back to the first).

    Raises:
        ValueError: a blank character or one the font has no outline for.
    """
    if not isinstance(char, str) or len(char) != 1 or not char.isprintable() or char.isspace():
        raise ValueError(f"char must be one printable, non-blank character, got {char!r}")
    samples = check_int("samples_per_curve", samples_per_curve, 1)
    rings = _outline(str(font), char, samples)
    if not rings:
        raise ValueError(f"font {Path(font).name} has no outline for {char!r}")
    return [ring.copy() for ring in rings]


def _segments(rings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points ``[S, 2]`` of every edge of the closed rings."""
    starts = np.concatenate([np.asarray(r, dtype=np.float64) for r in rings])
    ends = np.concatenate([np.roll(np.asarray(r, dtype=np.float64), -1, axis=0) for r in rings])
    keep = np.any(starts != ends, axis=1)  # a repeated point is no edge
    return starts[keep], ends[keep]


def signed_distance(rings: Sequence[np.ndarray], points: np.ndarray) -> np.ndarray:
    """Exact distance from each point to the closed polylines, negative inside (even-odd rule).

    Args:
        rings: closed polylines, ``[n_i, 2]`` each (as :func:`glyph_outline` returns them).
        points: ``[P, 2]`` query points ``(x, y)``.

    Returns:
        ``[P]`` float64 signed distances.
    """
    a, b = _segments(rings)
    p = np.asarray(points, dtype=np.float64)[:, None, :]  # [P, 1, 2]
    edge = b - a  # [S, 2]
    length2 = np.maximum((edge**2).sum(-1), 1e-300)
    t = np.clip(((p - a) * edge).sum(-1) / length2, 0.0, 1.0)  # [P, S]
    distance = np.sqrt(((p - a - t[..., None] * edge) ** 2).sum(-1).min(axis=1))
    # even-odd rule: a ray towards +x crosses the outline an odd number of times from inside
    py, px = p[..., 1], p[..., 0]
    straddles = (a[:, 1] > py) != (b[:, 1] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = a[:, 0] + (py - a[:, 1]) * edge[:, 0] / edge[:, 1]
    inside = (straddles & (px < cross_x)).sum(axis=1) % 2 == 1
    signed: np.ndarray = np.where(inside, -distance, distance)
    return signed


def _placed(rings: list[np.ndarray], rng: np.random.Generator, size: float, angle: float) -> list[np.ndarray]:
    """The rings rotated by ``angle`` degrees, scaled so their longer side is ``size`` and moved to a random
    position inside ``[-1, 1]^2`` (the box is centred when ``size`` leaves no room)."""
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    turned = [ring @ rotation.T for ring in rings]
    every = np.concatenate(turned)
    low, high = every.min(axis=0), every.max(axis=0)
    scale = size / float(np.max(high - low))
    centre = (low + high) / 2
    room = np.maximum(1.0 - scale * (high - low) / 2, 0.0)
    shift = rng.uniform(-room, room)
    return [(ring - centre) * scale + shift for ring in turned]


def glyph_sdfs(
    families: Sequence[str] | None = None,
    classes: str = GLYPH_CLASSES,
    resolution: int = 32,
    seed: int = 0,
    *,
    n_per_glyph: int = 1,
    size_range: tuple[float, float] = (1.3, 1.7),
    max_rotation: float = 10.0,
    dtype: torch.dtype = torch.float32,
) -> SignalDataset:
    """Signed distance fields of every character in every font file of ``families``, on the ``R x R`` grid.

    Each field is the exact distance to the glyph's outline (:func:`signed_distance`), negative inside, in the
    units of the coordinates (``[-1, 1]^2``). Every (font file, character) pair is drawn ``n_per_glyph`` times,
    each with a random rotation, a random size (the outline's longer side, in coordinate units) and a random
    position inside the square. Give the training and test sets disjoint ``families`` to test on unseen
    typefaces.

    Args:
        families: names from :data:`~ecop_wrap.data.FONT_FAMILIES` (default: all of them).
        classes: the characters (default :data:`~ecop_wrap.data.GLYPH_CLASSES`: 0-9 and A-Z).
        resolution: grid side ``R`` (at least 4).
        seed: random seed of the placements (the dataset is fully determined by it, the arguments and the
            installed fonts).
        n_per_glyph: placements per (font file, character).
        size_range: ``(low, high)`` of the outline's longer side, ``0 < low <= high <= 2``.
        max_rotation: rotations are uniform in ``[-max_rotation, max_rotation]`` degrees, at most 90.
        dtype: of coords and values.

    Returns:
        :class:`SignalDataset` with shape ``(R, R)``, coords ``[R*R, 2]`` (row, column: the grid of
        :func:`~ecop_wrap.make_grid`, the glyph upright in :meth:`~SignalDataset.to_arrays`), values
        ``[N, R*R, 1]``, ``N = files x len(classes) x n_per_glyph``, ordered font by font, then character;
        ``names[i]`` = ``"char|font file|size|rotation"``.
    """
    resolution = check_int("resolution", resolution, 4)
    n_per_glyph = check_int("n_per_glyph", n_per_glyph, 1)
    if not isinstance(classes, str) or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be a non-empty string of distinct characters, got {classes!r}")
    low, high = (float(v) for v in size_range)
    if not 0.0 < low <= high <= 2.0:
        raise ValueError(f"size_range must be (low, high) with 0 < low <= high <= 2, got {size_range}")
    if not 0.0 <= float(max_rotation) <= 90.0:
        raise ValueError(f"max_rotation must be in [0, 90] degrees, got {max_rotation}")
    fonts = [path for files in glyph_fonts(families).values() for path in files]
    grid = make_grid((resolution, resolution), dtype=torch.float64).numpy()
    points = grid[:, ::-1] * np.array([1.0, -1.0])  # (x = column, y = -row): y points up
    rng = as_generator(seed)
    fields, names = [], []
    for font in fonts:
        for char in classes:
            rings = glyph_outline(font, char)
            for _ in range(n_per_glyph):
                size, angle = float(rng.uniform(low, high)), float(rng.uniform(-max_rotation, max_rotation))
                distance = signed_distance(_placed(rings, rng, size, angle), points)
                fields.append(torch.from_numpy(distance).reshape(-1, 1))
                names.append(f"{char}|{font.name}|{size:.2f}|{angle:+.0f}deg")
    metadata = {
        "source": "signed distance fields of matplotlib's bundled fonts",
        "families": list(families) if families is not None else "all",
        "fonts": [f.name for f in fonts],
        "classes": classes,
        "seed": seed,
    }
    return SignalDataset(torch.stack(fields), (resolution, resolution), names=names, metadata=metadata, dtype=dtype)
