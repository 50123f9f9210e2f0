"""ecop_wrap.data.block_masks: observed-pixel masks of hidden square blocks (issue 22)."""

from __future__ import annotations

import math

import pytest
import torch
from example_helpers import EXAMPLES, load_example

from ecop_wrap.data import block_masks


@pytest.mark.parametrize(
    ("count", "shape", "fraction", "block", "seed"),
    [(5, (16, 16), 0.25, 4, 0), (3, (10, 7), 0.5, 3, 7), (4, (2, 2), 0.9, 1, 1), (0, (8, 8), 0.3, 2, 0)],
)
def test_block_masks_match_the_masked_images_example(count, shape, fraction, block, seed):
    if not (EXAMPLES / "masked_images.py").exists():
        pytest.skip("examples/masked_images.py is not in this checkout")
    example = load_example("masked_images")
    expected = example.block_masks(count, shape, fraction, block, seed)
    got = block_masks(count, shape, fraction, block, seed)
    assert got.dtype == torch.bool and got.shape == (count, shape[0] * shape[1])
    assert torch.equal(got, expected)


def test_block_masks_are_frozen():
    """The masks the example drew when the function moved into the library (4x6 grid, 2x2 tiles, seed 0)."""
    expected = [
        [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0],
    ]
    assert block_masks(3, (4, 6), 0.5, 2, 0).int().tolist() == expected


def test_block_masks_hide_whole_blocks_a_fraction_of_the_tiles_and_depend_on_seed_and_index():
    masks = block_masks(6, (12, 12), 0.25, 4, seed=3)
    grid = masks.view(6, 3, 4, 3, 4)  # [N, tile row, y in tile, tile col, x in tile]
    tile_observed = grid.all(dim=(2, 4))
    assert torch.equal(tile_observed, grid.any(dim=(2, 4)))  # a tile is observed or hidden as a whole
    assert ((~tile_observed).flatten(1).sum(1) == round(0.25 * 9)).all()
    assert torch.equal(block_masks(3, (12, 12), 0.25, 4, seed=3), masks[:3])  # mask i: from seed and i only
    assert not torch.equal(block_masks(6, (12, 12), 0.25, 4, seed=4), masks)
    # ragged edge tiles (block does not divide the side) and the at-least-one / all-but-one bounds
    edge = block_masks(50, (5, 5), 0.01, 2, seed=0)
    assert ((~edge).sum(1) > 0).all() and edge.any(dim=1).all()
    assert (block_masks(10, (4, 4), 0.99, 2, seed=0).view(10, -1).sum(1) == 4).all()  # 1 tile of 4 px kept


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"count": -1}, "count"),
        ({"count": 2.0}, "count"),
        ({"shape": (8,)}, "shape"),
        ({"shape": (0, 8)}, "shape"),
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.0}, "fraction"),
        ({"fraction": math.nan}, "fraction"),
        ({"block": 0}, "block"),
        ({"block": 8}, "block"),
        ({"seed": -1}, "seed"),
    ],
)
def test_block_masks_refuse_bad_arguments_naming_them(kwargs, named):
    args = {"count": 2, "shape": (8, 8), "fraction": 0.25, "block": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=named):
        block_masks(**args)
