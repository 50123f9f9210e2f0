"""ecop_wrap.data.aspect_grid, aspect_shape and skimage_aspect_crops: photographs at their own aspect ratios."""

from __future__ import annotations

import pytest
import torch

from ecop_wrap import make_grid
from ecop_wrap.data import SKIMAGE_SPLITS, aspect_grid, aspect_shape, collate_signals, skimage_aspect_crops


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4), (2, 9), (1, 6), (7,), (2, 3, 4)])
def test_aspect_grid_spans_the_long_side_with_equal_spacing_on_every_axis(shape):
    grid = aspect_grid(shape)
    assert grid.shape == (int(torch.tensor(shape).prod()), len(shape))
    longest = max(shape)
    step = 2.0 / (longest - 1)
    axes = grid.reshape(*shape, len(shape))
    for axis, side in enumerate(shape):
        column = axes.movedim(axis, 0)[..., axis].reshape(side, -1)[:, 0]
        if side > 1:  # equal steps of 2 / (L - 1), centred on 0
            torch.testing.assert_close(column.diff(), torch.full((side - 1,), step), rtol=0, atol=1e-6)
        assert float(column.mean()) == pytest.approx(0.0, abs=1e-6)
        if side == longest:
            assert float(column.min()) == -1.0 and float(column.max()) == 1.0
    if len(set(shape)) == 1:  # a square grid is make_grid's
        torch.testing.assert_close(grid, make_grid(shape))


def test_aspect_grid_of_a_single_pixel_is_the_centre():
    assert aspect_grid((1, 1)).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("bad", [(), (0, 3), (3, -1), (2.5, 3), (True, 3)])
def test_aspect_grid_refuses_bad_shapes(bad):
    with pytest.raises(ValueError, match="shape"):
        aspect_grid(bad)


def test_aspect_shape_keeps_the_aspect_ratio_with_the_long_side_given():
    assert aspect_shape(100, 50, 32) == (32, 16)
    assert aspect_shape(30, 90, 12) == (4, 12)
    assert aspect_shape(64, 64, 8) == (8, 8)
    assert aspect_shape(5, 500, 8) == (2, 8)  # the short side is at least 2
    for height, width in ((480, 640), (300, 200), (17, 51)):
        h, w = aspect_shape(height, width, 24)
        assert max(h, w) == 24 and abs(h / w - height / width) <= 1 / min(h, w)


@pytest.mark.parametrize(("args", "name"), [((0, 5, 8), "height"), ((5, 0, 8), "width"), ((5, 5, 1), "long_side")])
def test_aspect_shape_refuses_bad_sizes_by_name(args, name):
    with pytest.raises(ValueError, match=name):
        aspect_shape(*args)


def test_skimage_aspect_crops_shapes_aspect_values_and_coords():
    pytest.importorskip("skimage")
    crops = skimage_aspect_crops("val", 12, 8, seed=0, max_aspect=2.0)
    assert len(crops) == 8 and crops.ragged and len(set(crops.shapes)) > 1
    assert crops.metadata["photos"] == SKIMAGE_SPLITS["val"] and crops.metadata["seed"] == 0
    for values, shape, coords, name in zip(crops.values, crops.shapes, crops.coords, crops.names, strict=True):
        h, w = shape
        assert max(h, w) == 12 and max(h, w) / min(h, w) <= 2.0 + 1 / 6  # rounding of the short side
        assert values.shape == (h * w, 3) and float(values.min()) >= 0.0 and float(values.max()) <= 1.0
        torch.testing.assert_close(coords, aspect_grid(shape))
        photo, window = name.split(":")
        assert photo in SKIMAGE_SPLITS["val"]
        top, left, height, width = (int(v) for v in window.split(","))
        assert aspect_shape(height, width, 12) == shape and top >= 0 and left >= 0
    coords, values, weights = collate_signals([crops[i] for i in range(4)])
    sizes = [h * w for h, w in crops.shapes[:4]]
    assert weights.sum(dim=1).tolist() == sizes and values.shape == (4, max(sizes), 3) and coords.shape[-1] == 2


def test_skimage_aspect_crops_are_fixed_by_the_seed():
    pytest.importorskip("skimage")
    first = skimage_aspect_crops("test", 10, 5, seed=3, max_aspect=3.0)
    again = skimage_aspect_crops("test", 10, 5, seed=3, max_aspect=3.0)
    other = skimage_aspect_crops("test", 10, 5, seed=4, max_aspect=3.0)
    assert first.names == again.names and first.shapes == again.shapes
    assert all(torch.equal(a, b) for a, b in zip(first.values, again.values, strict=True))
    assert first.names != other.names


def test_skimage_aspect_crops_of_max_aspect_one_are_square():
    pytest.importorskip("skimage")
    crops = skimage_aspect_crops("train", 8, 6, seed=0, max_aspect=1.0)
    assert all(shape == (8, 8) for shape in crops.shapes)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"split": "holdout"}, "split"),
        ({"long_side": 1}, "long_side"),
        ({"n": 0}, "n"),
        ({"seed": -1}, "seed"),
        ({"max_aspect": 0.5}, "max_aspect"),
        ({"max_aspect": float("inf")}, "max_aspect"),
        ({"min_fraction": 0.0}, "min_fraction"),
        ({"min_fraction": 1.5}, "min_fraction"),
    ],
)
def test_skimage_aspect_crops_refuse_bad_arguments_by_name(kwargs, name):
    settings = {"split": "train", "long_side": 8, "n": 2, "seed": 0, **kwargs}
    positional = [settings.pop(key) for key in ("split", "long_side", "n", "seed")]
    with pytest.raises(ValueError, match=name):
        skimage_aspect_crops(*positional, **settings)
