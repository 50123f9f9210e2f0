"""Coordinate grids, array/signal conversions and metric conventions, checked against values written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecop_wrap import (
    array_to_signal,
    image_to_signal,
    make_grid,
    mse,
    mse_to_psnr,
    psnr,
    signal_to_array,
    signal_to_image,
)

# ----------------------------------------------------------------------------------------------- grids


def test_grid_1d():
    grid = make_grid((5,))
    assert grid.shape == (5, 1)
    assert torch.equal(grid[:, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))


def test_grid_2d_is_row_major_with_column_i_along_axis_i():
    grid = make_grid((2, 3))
    want = torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(grid, want)


def test_grid_3d_ordering():
    grid = make_grid((2, 2, 3), dtype=torch.float64)
    assert grid.shape == (12, 3)
    t, h, w = np.meshgrid([-1.0, 1.0], [-1.0, 1.0], [-1.0, 0.0, 1.0], indexing="ij")
    want = np.stack([t.ravel(), h.ravel(), w.ravel()], axis=1)
    assert np.array_equal(grid.numpy(), want)
    # point (i, j, k) sits at row i * 6 + j * 3 + k
    assert torch.equal(grid[1 * 6 + 0 * 3 + 2], torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))


def test_grid_size_one_axes_sit_at_the_centre():
    assert torch.equal(make_grid((1,)), torch.tensor([[0.0]]))
    grid = make_grid((3, 1))
    assert torch.equal(grid, torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
    grid = make_grid((1, 2, 1), low=0.0, high=2.0)
    assert torch.equal(grid, torch.tensor([[1.0, 0.0, 1.0], [1.0, 2.0, 1.0]]))


def test_grid_range_dtype_and_endpoints():
    grid = make_grid((64, 48), dtype=torch.float64)
    assert grid.dtype == torch.float64
    assert grid.shape == (64 * 48, 2)
    assert float(grid.min()) == -1.0 and float(grid.max()) == 1.0
    assert torch.equal(torch.unique(grid[:, 0]), torch.linspace(-1, 1, 64, dtype=torch.float64))
    assert torch.equal(torch.unique(grid[:, 1]), torch.linspace(-1, 1, 48, dtype=torch.float64))
    assert make_grid((4,)).dtype == torch.get_default_dtype()
    assert torch.equal(make_grid((3,), low=0.0, high=1.0)[:, 0], torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (-2, 2)])
def test_grid_rejects_empty_shapes(shape):
    with pytest.raises(ValueError, match="shape"):
        make_grid(shape)


# ------------------------------------------------------------------------------------------ conversions


def test_array_round_trip_channels_last():
    array = np.random.default_rng(0).random((4, 5, 3))
    coords, values = array_to_signal(array, dtype=torch.float64)
    assert coords.shape == (20, 2) and values.shape == (20, 3)
    assert torch.equal(coords, make_grid((4, 5), dtype=torch.float64))
    # point (i, j) is array[i, j] at coordinate (row_i, col_j)
    assert torch.equal(values[2 * 5 + 3], torch.from_numpy(array[2, 3]))
    assert np.array_equal(signal_to_array(values, (4, 5)).numpy(), array)


def test_array_round_trip_channels_first_and_1d():
    array = torch.rand(2, 3, 4)  # [D, H, W]
    coords, values = array_to_signal(array, channels_last=False)
    assert coords.shape == (12, 2) and values.shape == (12, 2)
    assert torch.equal(signal_to_array(values, (3, 4)), array.permute(1, 2, 0))
    audio = torch.rand(7)
    coords, values = array_to_signal(audio)
    assert coords.shape == (7, 1) and values.shape == (7, 1)
    assert torch.equal(values[:, 0], audio)


def test_signal_to_array_keeps_leading_batch_dims_and_checks_m():
    values = torch.rand(2, 12, 3)
    assert torch.equal(signal_to_array(values, (3, 4))[1, 2, 1], values[1, 2 * 4 + 1])
    with pytest.raises(ValueError, match="M=12"):
        signal_to_array(torch.rand(2, 11, 3), (3, 4))


def test_uint8_scaling():
    image = np.array([[[0, 128, 255]], [[1, 2, 3]]], dtype=np.uint8)  # [2, 1, 3]
    _, values = array_to_signal(image, dtype=torch.float64)
    want = torch.tensor([[0.0, 128 / 255, 1.0], [1 / 255, 2 / 255, 3 / 255]], dtype=torch.float64)
    torch.testing.assert_close(values, want, rtol=0, atol=1e-15)
    _, values16 = array_to_signal(np.full((2, 1), 65535, dtype=np.uint16))
    assert torch.equal(values16, torch.ones(2, 1))


def test_float_arrays_are_not_rescaled():
    _, values = array_to_signal(np.array([[0.25], [2.0]]), dtype=torch.float64)
    assert torch.equal(values, torch.tensor([[0.25], [2.0]], dtype=torch.float64))


def test_image_to_signal_and_back():
    rgb = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 9).astype(np.uint8)
    coords, values = image_to_signal(rgb)
    assert coords.shape == (6, 2) and values.shape == (6, 3)
    assert values.dtype == torch.get_default_dtype()
    back = signal_to_image(values, 2, 3)
    assert isinstance(back, np.ndarray) and back.shape == (2, 3, 3)
    np.testing.assert_allclose(back, rgb / 255.0, rtol=0, atol=1e-7)
    gray = np.random.default_rng(1).random((4, 6))
    coords, values = image_to_signal(gray, dtype=torch.float64)
    assert coords.shape == (24, 2) and values.shape == (24, 1)
    assert np.array_equal(signal_to_image(values, 4, 6)[..., 0], gray)
    with pytest.raises(ValueError, match="image"):
        image_to_signal(np.zeros(5))


def test_signal_to_image_clips_unless_asked():
    values = torch.tensor([[-0.5], [0.5], [1.5], [1.0]])
    assert signal_to_image(values, 2, 2)[..., 0].tolist() == [[0.0, 0.5], [1.0, 1.0]]
    assert signal_to_image(values, 2, 2, clip=False)[..., 0].tolist() == [[-0.5, 0.5], [1.5, 1.0]]


def test_conversions_follow_dtype_and_device():
    coords, values = array_to_signal(np.zeros((2, 2, 1)), dtype=torch.float64, device="cpu")
    assert coords.dtype == values.dtype == torch.float64
    assert coords.device.type == values.device.type == "cpu"


# ---------------------------------------------------------------------------------------------- metrics


def test_mse_is_the_mean_over_points_and_channels():
    pred = torch.zeros(2, 4, 3, dtype=torch.float64)
    target = torch.zeros(2, 4, 3, dtype=torch.float64)
    target[0, 1, 2] = 1.2  # one wrong channel of one point of the first signal
    target[1] = 0.5
    got = mse(pred, target)
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.tensor([1.44 / 12, 0.25], dtype=torch.float64), rtol=1e-15, atol=0)
    assert mse(pred[0], target[0]).shape == ()
    with pytest.raises(ValueError, match="same shape"):
        mse(pred, target[..., :2])


def test_psnr_convention_data_range_one():
    pred = torch.zeros(1, 10, 3, dtype=torch.float64)
    target = torch.full((1, 10, 3), 0.1, dtype=torch.float64)  # MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(pred, target), torch.tensor([20.0], dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        psnr(pred, target, data_range=2.0),
        torch.tensor([20.0 + 20 * math.log10(2.0)], dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )
    assert mse_to_psnr(1e-3) == pytest.approx(30.0, rel=1e-12)
    assert mse_to_psnr(0.0) == math.inf
    assert float(mse_to_psnr(torch.tensor(0.0))) == math.inf
    torch.testing.assert_close(mse_to_psnr(torch.tensor([1.0, 1e-4])), torch.tensor([0.0, 40.0]))


def test_psnr_is_per_signal_not_of_the_batch_mean():
    pred = torch.zeros(2, 5, 1, dtype=torch.float64)
    target = torch.cat(
        [torch.full((1, 5, 1), 0.1, dtype=torch.float64), torch.full((1, 5, 1), 0.01, dtype=torch.float64)]
    )
    torch.testing.assert_close(psnr(pred, target), torch.tensor([20.0, 40.0], dtype=torch.float64), rtol=1e-12, atol=0)
