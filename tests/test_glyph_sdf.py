"""ecop_wrap.data.glyph_sdf: exact signed distances to polylines and the glyph SDF dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from example_helpers import has_modules

from ecop_wrap.data import glyph_fonts, glyph_outline, glyph_sdfs, signed_distance

needs_matplotlib = pytest.mark.skipif(not has_modules("matplotlib"), reason="needs 'ecop-wrap[text]'")


def _circle(radius: float, n: int = 2000) -> np.ndarray:
    angle = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def test_square_distances_are_exact_and_negative_inside():
    square = [np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])]
    points = np.array([[0.5, 0.5], [0.1, 0.5], [2.0, 0.5], [0.5, -1.0], [2.0, 2.0], [1.0, 0.3]])
    expected = np.array([-0.5, -0.1, 1.0, 1.0, np.sqrt(2.0), 0.0])
    np.testing.assert_allclose(signed_distance(square, points), expected, atol=1e-12)


def test_annulus_follows_the_even_odd_rule():
    rings = [_circle(1.0), _circle(0.5)[::-1]]
    radii = np.array([0.0, 0.25, 0.75, 0.9, 1.5])
    points = np.stack([radii, np.zeros_like(radii)], axis=1)
    # inside the hole: outside the shape, distance to the inner circle; in the ring: negative
    expected = np.array([0.5, 0.25, -0.25, -0.1, 0.5])
    np.testing.assert_allclose(signed_distance(rings, points), expected, atol=1e-5)


def test_random_points_match_a_brute_force_loop_and_are_1_lipschitz():
    rng = np.random.default_rng(0)
    ring = rng.uniform(-1, 1, size=(7, 2))
    points = rng.uniform(-1.5, 1.5, size=(50, 2))
    got = signed_distance([ring], points)
    edges = list(zip(ring, np.roll(ring, -1, axis=0), strict=True))
    for p, value in zip(points, got, strict=True):
        nearest = min(
            np.linalg.norm(p - a - np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0, 1) * (b - a))
            for a, b in edges
        )
        crossings = sum(
            (a[1] > p[1]) != (b[1] > p[1]) and p[0] < a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
            for a, b in edges
        )
        assert value == pytest.approx(-nearest if crossings % 2 else nearest, abs=1e-12)
    gaps = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert np.all(np.abs(got[:, None] - got[None]) <= gaps + 1e-12)


@needs_matplotlib
def test_glyph_outline_has_a_hole_for_o_and_none_for_l():
    font = glyph_fonts(["DejaVu Sans"])["DejaVu Sans"][0]
    o_rings, l_rings = glyph_outline(font, "O"), glyph_outline(font, "l")
    assert len(o_rings) == 2 and len(l_rings) == 1
    every = np.concatenate(o_rings)
    centre = (every.min(axis=0) + every.max(axis=0)) / 2
    assert signed_distance(o_rings, centre[None])[0] > 0  # the counter is outside
    with pytest.raises(ValueError, match="char"):
        glyph_outline(font, " ")


@needs_matplotlib
def test_glyph_sdfs_shape_order_and_determinism():
    data = glyph_sdfs(["Computer Modern Sans"], classes="AB8", resolution=16, seed=3, n_per_glyph=2)
    assert data.shape == (16, 16) and data.stacked().shape == (6, 256, 1)
    assert [n.split("|")[:2] for n in data.names] == [[c, "cmss10.ttf"] for c in "AABB88"]
    again = glyph_sdfs(["Computer Modern Sans"], classes="AB8", resolution=16, seed=3, n_per_glyph=2)
    assert torch.equal(data.stacked(), again.stacked())
    other = glyph_sdfs(["Computer Modern Sans"], classes="AB8", resolution=16, seed=4, n_per_glyph=2)
    assert not torch.equal(data.stacked(), other.stacked())
    fields = data.to_arrays(data.stacked())[..., 0]
    assert bool((fields < 0).any(dim=(1, 2)).all()) and bool((fields > 0).any(dim=(1, 2)).all())


@needs_matplotlib
@pytest.mark.parametrize("char", ["A", "B", "8", "e", "%"])
def test_the_sign_agrees_with_matplotlibs_point_in_polygon(char):
    from matplotlib.path import Path as MplPath

    font = glyph_fonts(["DejaVu Serif"])["DejaVu Serif"][0]
    rings = glyph_outline(font, char)
    every = np.concatenate(rings)
    low, high = every.min(axis=0) - 0.05, every.max(axis=0) + 0.05
    xs, ys = np.meshgrid(np.linspace(low[0], high[0], 41), np.linspace(low[1], high[1], 41))
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    sdf = signed_distance(rings, points)
    # even-odd over the rings, each ring tested by matplotlib's own point-in-polygon
    inside = np.logical_xor.reduce([MplPath(ring).contains_points(points) for ring in rings])
    clear = np.abs(sdf) > 1e-9
    assert inside.any() and (~inside).any() and len(rings) >= 1
    assert np.array_equal((sdf < 0)[clear], inside[clear])


def test_glyph_sdfs_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size_range"):
        glyph_sdfs(["DejaVu Sans"], size_range=(0.5, 2.5))
    with pytest.raises(ValueError, match="max_rotation"):
        glyph_sdfs(["DejaVu Sans"], max_rotation=100)
    with pytest.raises(ValueError, match="families"):
        glyph_sdfs(["No Such Font"])
