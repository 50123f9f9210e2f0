"""Fitted codes as data: GradScaledAdapter.encode writes safetensors shards, LatentDataset reads exactly them."""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, make_grid
from ecop_wrap.data import LatentDataset, SignalDataset
from ecop_wrap.models import ModulatedSiren

GRID = make_grid((5, 5))


def _adapter(adapt: list[str] | None = None, steps: int = 2) -> GradScaledAdapter:
    model = ModulatedSiren(2, 1, 8, 1, latent_dim=3)
    learner = ContextPruningMetaLearner(model, K=2, L=0, lam=0.0, adapt=adapt or ["latent"], seed=0)
    return GradScaledAdapter(learner, steps=steps)


def _dataset(n: int = 7) -> SignalDataset:
    values = torch.rand(n, GRID.shape[0], 1, generator=torch.Generator().manual_seed(2))
    return SignalDataset(values, (5, 5), names=[f"signal-{i}" for i in range(n)])


def test_codes_round_trip_in_order_with_their_labels(tmp_path):
    adapter, data = _adapter(), _dataset(7)
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    codes = adapter.encode(data, 3, tmp_path, labels=labels, shard_size=4, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "codes-00000.safetensors",
        "codes-00001.safetensors",
        "index.json",
    ]
    # the same batches of three fitted by hand: exactly the tensors written
    fits = [adapter.fit((data.coords, data.stacked()[i : i + 3])) for i in range(0, 7, 3)]
    expected = torch.cat([f.params["latent"] for f in fits])
    again = LatentDataset(tmp_path)
    for dataset in (codes, again):
        assert len(dataset) == 7 and torch.equal(dataset.codes["latent"], expected)
        assert torch.equal(dataset.labels, labels) and torch.equal(dataset.indices, torch.arange(7))
        assert torch.equal(dataset.psnr, torch.cat([f.history["psnr"].T for f in fits]))
        assert torch.equal(dataset.loss, torch.cat([f.history["loss"].T for f in fits]))
        assert dataset.names == data.names and dataset.steps == 2
        for i in range(7):
            code, label = dataset[i]
            assert torch.equal(code, expected[i]) and int(label) == int(labels[i])
    assert torch.equal(codes.features(), expected)


def test_labelled_items_of_different_sizes_and_dict_items(tmp_path):
    adapter = _adapter(adapt=["latent", "output.bias"])
    small, large = make_grid((4, 4)), make_grid((6, 6))
    gen = torch.Generator().manual_seed(3)
    items = [
        (small, torch.rand(16, 1, generator=gen), 0),
        (small, torch.rand(16, 1, generator=gen), 1),
        (large, torch.rand(36, 1, generator=gen), 2),
        (large * 0.5, torch.rand(36, 1, generator=gen), 3),  # other coordinates: a [B, M, C] batch
    ]
    codes = adapter.encode(iter(items), 8, tmp_path, progress=False)
    assert len(codes) == 4 and codes.labels.tolist() == [0, 1, 2, 3] and codes.names is None
    first = adapter.fit((small, torch.stack([items[0][1], items[1][1]])))
    second = adapter.fit((torch.stack([large, large * 0.5]), torch.stack([items[2][1], items[3][1]])))
    for name in ("latent", "output.bias"):
        assert torch.equal(codes.codes[name], torch.cat([first.params[name], second.params[name]]))
    item = codes[2]  # two adapted tensors and no key: dict items
    assert set(item) == {"codes", "label", "index", "loss", "psnr"} and set(item["codes"]) == {"latent", "output.bias"}
    assert torch.equal(item["codes"]["latent"], second.params["latent"][0]) and int(item["index"]) == 2
    code, label = LatentDataset(tmp_path, key="output.bias")[3]
    assert torch.equal(code, second.params["output.bias"][1]) and int(label) == 3
    assert codes.features().shape == (4, 3 + 1)
    batch = next(iter(DataLoader(LatentDataset(tmp_path, key="latent"), batch_size=4)))
    assert torch.equal(batch[0], codes.codes["latent"]) and batch[1].tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="bias"):
        LatentDataset(tmp_path, key="bias")


def test_without_labels_the_label_is_the_index_and_without_tqdm_it_still_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    codes = _adapter().encode(_dataset(3), 2, tmp_path, progress=True)
    assert codes.labels is None and [int(codes[i][1]) for i in range(3)] == [0, 1, 2]


def test_bad_input_and_existing_codes_are_refused(tmp_path):
    adapter, data = _adapter(), _dataset(3)
    with pytest.raises(ValueError, match="labels has 2 entries for 3 signals"):
        adapter.encode(data, 2, tmp_path / "a", labels=[0, 1], progress=False)
    with pytest.raises(ValueError, match="labels= was given too"):
        adapter.encode([(GRID, data.values[0], 1)], 2, tmp_path / "b", labels=[0], progress=False)
    with pytest.raises(ValueError, match="some signals have a label"):
        adapter.encode([(GRID, data.values[0], 1), (GRID, data.values[1])], 2, tmp_path / "c", progress=False)
    with pytest.raises(TypeError, match="signal 0"):
        adapter.encode([data.values[0]], 2, tmp_path / "d", progress=False)
    adapter.encode(data, 2, tmp_path / "e", progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        adapter.encode(data, 2, tmp_path / "e", progress=False)
    codes = adapter.encode(data.subset([0]), 2, tmp_path / "e", progress=False, overwrite=True)
    assert len(codes) == 1 and sorted(p.name for p in (tmp_path / "e").iterdir())[0] == "codes-00000.safetensors"


def test_incomplete_or_tampered_code_directories_are_refused(tmp_path):
    _adapter().encode(_dataset(3), 2, tmp_path, progress=False)
    index_path, shard = tmp_path / "index.json", tmp_path / "codes-00000.safetensors"
    index = json.loads(index_path.read_text())
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="SHA-256"):
        LatentDataset(tmp_path)
    shard.write_bytes(data)
    for change, message in (
        ({"shards": [{**index["shards"][0], "file": "../codes-00000.safetensors"}]}, "codes-NNNNN"),
        ({"count": 4}, "do not add up"),
        ({"format": "other"}, "format"),
        ({"extra": 1}, "exactly the keys"),
    ):
        index_path.write_text(json.dumps({**index, **change}))
        with pytest.raises(ValueError, match=message):
            LatentDataset(tmp_path)
    index_path.unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        LatentDataset(tmp_path)


def test_code_shards_are_not_pickles(tmp_path):
    _adapter().encode(_dataset(2), 2, tmp_path, labels=[1, 0], progress=False)
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert data[:2] != b"PK"
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the first bytes make pickle fail with
            pickle.loads(data)
