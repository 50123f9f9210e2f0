"""ecop_wrap.data.block_masks: observed-pixel masks of hidden square blocks (issue 22)."""

from __future__ import annotations

import math

import pytest
import torch

from ecop_wrap.data import block_masks


def test_block_masks_are_frozen():
    """The masks examples/masked_images.py drew (its results in docs/results.md) before the function moved into
    the library, where the example now takes it from (4x6 grid, 2x2 tiles, seed 0)."""
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
