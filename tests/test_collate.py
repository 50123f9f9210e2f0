"""Ragged batches: ecop_wrap.data.collate_signals and SignalDataset with signals of their own sizes (fast)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from ecop_wrap import GradScaledAdapter, Siren, make_grid
from ecop_wrap.data import SignalDataset, collate_signals


def _signal(points: int, seed: int, *, channels: int = 3, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(points, 2, generator=generator, dtype=dtype) * 2 - 1
    return coords, torch.rand(points, channels, generator=generator, dtype=dtype)


# ------------------------------------------------------------------------------------------- collate_signals


def test_pads_each_signal_at_its_end_with_its_first_point_and_weight_zero() -> None:
    signals = [_signal(5, 0), _signal(3, 1), _signal(4, 2)]
    coords, values, weights = collate_signals(signals)
    assert coords.shape == (3, 5, 2) and values.shape == (3, 5, 3) and weights.shape == (3, 5)
    assert weights.dtype == values.dtype
    for row, (c, v) in enumerate(signals):
        size = c.shape[0]
        assert torch.equal(coords[row, :size], c) and torch.equal(values[row, :size], v)
        assert torch.equal(coords[row, size:], c[:1].expand(5 - size, -1))
        assert torch.equal(values[row, size:], v[:1].expand(5 - size, -1))
        assert weights[row, :size].eq(1).all() and weights[row, size:].eq(0).all()


def test_item_weights_are_kept_and_bool_masks_converted() -> None:
    c0, v0 = _signal(4, 0)
    c1, v1 = _signal(2, 1)
    w0 = torch.tensor([0.5, 0.0, 2.0, 1.0])
    mask1 = torch.tensor([True, False])
    *_, weights = collate_signals([(c0, v0, w0), (c1, v1, mask1)])
    assert torch.equal(weights, torch.tensor([[0.5, 0.0, 2.0, 1.0], [1.0, 0.0, 0.0, 0.0]]))
    mixed = collate_signals([(c0, v0), (c1, v1, w0[:2].double())])  # float64 weights follow the values' dtype
    assert mixed[2].dtype == torch.float32 and torch.equal(mixed[2][1], torch.tensor([0.5, 0.0, 0.0, 0.0]))


def test_same_size_signals_are_stacked_without_padding() -> None:
    signals = [_signal(6, 0, dtype=torch.float64), _signal(6, 1, dtype=torch.float64)]
    coords, values, weights = collate_signals(signals)
    assert torch.equal(coords, torch.stack([c for c, _ in signals]))
    assert torch.equal(values, torch.stack([v for _, v in signals]))
    assert weights.dtype == torch.float64 and weights.eq(1).all()


def test_works_as_a_dataloader_collate_fn() -> None:
    signals = [_signal(m, i) for i, m in enumerate([7, 3, 5, 5, 2])]
    batches = list(DataLoader(signals, batch_size=2, shuffle=False, collate_fn=collate_signals))
    assert [b[0].shape[:2] for b in batches] == [(2, 7), (2, 5), (1, 2)]
    for start, batch in zip(range(0, 5, 2), batches, strict=True):
        expected = collate_signals(signals[start : start + 2])
        assert all(torch.equal(a, b) for a, b in zip(batch, expected, strict=True))


@pytest.mark.parametrize(
    ("signals", "error", "match"),
    [
        ([], ValueError, "at least one signal"),
        (torch.zeros(2, 3, 2), TypeError, "list of signals"),
        ([torch.zeros(3, 2)], TypeError, "signal 0 must be"),
        ([(torch.zeros(3, 2),)], TypeError, "signal 0 must be"),
        ([(torch.zeros(3, 2), [[0.0]] * 3)], TypeError, "of tensors"),
        ([(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, 1))], TypeError, "floating"),
        ([(torch.zeros(3), torch.zeros(3, 1))], ValueError, "coords must be 2-D"),
        ([(torch.zeros(0, 2), torch.zeros(0, 1))], ValueError, "no points"),
        ([(torch.zeros(3, 2), torch.zeros(4, 1))], ValueError, "same M_i"),
        ([(torch.zeros(3, 2), torch.zeros(3, 1)), (torch.zeros(2, 3), torch.zeros(2, 1))], ValueError, "C=3"),
        ([(torch.zeros(3, 2), torch.zeros(3, 1)), (torch.zeros(2, 2), torch.zeros(2, 4))], ValueError, "D=4"),
        (
            [(torch.zeros(3, 2), torch.zeros(3, 1)), (torch.zeros(2, 2).double(), torch.zeros(2, 1))],
            ValueError,
            "dtype",
        ),
        ([(torch.zeros(3, 2), torch.zeros(3, 1).double())], ValueError, "dtype"),
        (
            [
                (torch.zeros(3, 2), torch.zeros(3, 1)),
                (torch.zeros(2, 2, device="meta"), torch.zeros(2, 1, device="meta")),
            ],
            ValueError,
            "devices",
        ),
    ],
)
def test_bad_signals_are_refused_clearly(signals, error, match) -> None:
    with pytest.raises(error, match=match):
        collate_signals(signals)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (torch.tensor([1.0, float("nan"), 1.0]), "finite and >= 0"),
        (torch.tensor([1.0, float("inf"), 1.0]), "finite and >= 0"),
        (torch.tensor([1.0, -0.5, 1.0]), "finite and >= 0"),
        (torch.zeros(3), "every weight is 0"),
        (torch.ones(2), r"weights must be \[M_i\] = \[3\]"),
        (torch.ones(3, dtype=torch.complex64), "real"),
    ],
)
def test_bad_weights_are_refused_naming_weights(weights, match) -> None:
    coords, values = _signal(3, 0)
    with pytest.raises((ValueError, TypeError), match=match):
        collate_signals([(coords, values), (coords, values, weights)])


def test_a_padded_batch_reports_each_signal_over_its_own_points() -> None:
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2).double()
    signals = [_signal(m, i, dtype=torch.float64) for i, m in enumerate([9, 4, 6])]
    adapter = GradScaledAdapter(model, steps=2, lr=1e-2)
    padded = adapter.fit(collate_signals(signals)).history["loss"]
    alone = torch.stack([adapter.fit(signal).history["loss"] for signal in signals], dim=1)
    torch.testing.assert_close(padded, alone, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------- ragged SignalDataset


def _ragged(dtype: torch.dtype = torch.float32) -> SignalDataset:
    shapes = [(3, 4), (2, 2), (4, 4), (1, 5)]
    values = [torch.arange(h * w * 2, dtype=torch.float32).reshape(h * w, 2) + i for i, (h, w) in enumerate(shapes)]
    return SignalDataset(values, shapes, dtype=dtype)


def test_ragged_dataset_items_grids_and_properties() -> None:
    ds = _ragged()
    assert ds.ragged and ds.shape is None and ds.shapes == [(3, 4), (2, 2), (4, 4), (1, 5)]
    assert len(ds) == 4 and ds.num_points is None and ds.coord_dim == 2 and ds.channels == 2
    coords, values = ds[2]
    assert torch.equal(coords, make_grid((4, 4))) and values.shape == (16, 2)
    assert "ragged M=4..16" in repr(ds)
    with pytest.raises(ValueError, match="collate_signals"):
        ds.stacked()
    shared = SignalDataset(torch.zeros(3, 12, 1), (3, 4))
    assert not shared.ragged and shared.shapes == [(3, 4)] * 3 and shared.num_points == 12


def test_ragged_batches_are_collated_with_the_shared_order() -> None:
    ds = _ragged()
    batches = list(ds.batches(2, seed=3))
    order = torch.randperm(4, generator=torch.Generator().manual_seed(3)).tolist()
    assert len(batches) == 2 and all(len(batch) == 3 for batch in batches)
    for start, batch in zip((0, 2), batches, strict=True):
        expected = collate_signals([ds[i] for i in order[start : start + 2]])
        assert all(torch.equal(a, b) for a, b in zip(batch, expected, strict=True))
    tail = list(ds.batches(3, shuffle=False, drop_last=False))
    assert [b[1].shape[:2] for b in tail] == [(3, 16), (1, 5)]
    loaded = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_signals)))
    assert all(torch.equal(a, b) for a, b in zip(loaded, collate_signals([ds[i] for i in range(4)]), strict=True))


def test_shared_grid_batches_are_unchanged_by_the_ragged_path() -> None:
    values = torch.rand(6, 12, 2, generator=torch.Generator().manual_seed(0))
    shared = SignalDataset(values, (3, 4))
    same_size = SignalDataset(list(values), [(3, 4)] * 6)  # ragged form, every signal one size
    for (c_shared, v_shared), (c_ragged, v_ragged, w) in zip(
        shared.batches(2, seed=5), same_size.batches(2, seed=5), strict=True
    ):
        assert c_shared is shared.coords and torch.equal(c_ragged, c_shared.expand(2, -1, -1))
        assert torch.equal(v_ragged, v_shared) and w.eq(1).all()


def test_ragged_per_signal_coords_subset_and_to_arrays() -> None:
    coords = [torch.rand(5, 3), torch.rand(2, 3)]
    ds = SignalDataset([torch.ones(5, 1), torch.zeros(2, 1)], [(5,), (2,)], coords=coords, names=["a", "b"])
    assert ds.coord_dim == 3 and ds[1][0] is ds.coords[1]
    sub = ds.subset([1])
    assert sub.ragged and sub.names == ["b"] and torch.equal(sub[0][0], coords[1]) and sub.shapes == [(2,)]
    grid = _ragged()
    _, values, _ = collate_signals([grid[1], grid[2]])  # row 0 padded from 4 to 16 points
    assert torch.equal(grid.to_arrays(values[0], index=1), grid[1][1].reshape(2, 2, 2))
    assert torch.equal(grid.to_arrays(values[1], index=2), grid[2][1].reshape(4, 4, 2))
    with pytest.raises(ValueError, match="index="):
        grid.to_arrays(values[0])


def test_ragged_dataset_bad_arguments() -> None:
    with pytest.raises(ValueError, match="one per signal"):
        SignalDataset([torch.zeros(4, 1), torch.zeros(6, 1)], [(2, 2)] * 3)
    with pytest.raises(ValueError, match="coords lists 1"):
        SignalDataset([torch.zeros(4, 1), torch.zeros(6, 1)], [(2, 2), (2, 3)], coords=[torch.zeros(4, 2)])
    with pytest.raises(ValueError, match="signal 1: values must have M=4"):
        SignalDataset([torch.zeros(4, 1), torch.zeros(6, 1)], [(2, 2), (2, 2)])
    with pytest.raises(ValueError, match=r"signal 1: coords must be \[M=6"):
        SignalDataset([torch.zeros(4, 1), torch.zeros(6, 1)], [(2, 2), (2, 3)], coords=[torch.zeros(4, 2)] * 2)
    with pytest.raises(ValueError, match="C=3"):
        SignalDataset(
            [torch.zeros(4, 1), torch.zeros(2, 1)], [(4,), (2,)], coords=[torch.zeros(4, 2), torch.zeros(2, 3)]
        )
    with pytest.raises(ValueError, match="list of"):
        SignalDataset([torch.zeros(4, 1), torch.zeros(2, 1)], [(4,), (2,)], coords=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="a mix"):
        SignalDataset([torch.zeros(4, 1)], [(4,), 4])
    with pytest.raises(ValueError, match="channel"):
        next(SignalDataset([torch.zeros(4, 1), torch.zeros(2, 3)], [(4,), (2,)]).batches(2))
