"""Fitted codes as a dataset: read what :meth:`ecop_wrap.GradScaledAdapter.encode` wrote.

The directory's ``index.json`` lists its safetensors shards with their SHA-256 digests; every shard is read with
``safetensors`` (no pickle) and checked against the index. ``docs/sharing.md`` describes the format.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch.utils.data import Dataset

from .._src.encode import CODE_PREFIX, INDEX_NAME, LATENTS_FORMAT, SHARD_NAME

__all__ = ["LatentDataset"]

_INDEX_KEYS = ("format", "library_version", "count", "adapted", "steps", "tensors", "names", "shards")


class LatentDataset(Dataset[Any]):
    """The codes of ``N`` fitted signals, in the order they were encoded.

    Item ``i`` is ``(code, label)``: the adapted tensor ``[*shape]`` named ``key`` and the signal's label (its
    index in the encoded dataset, an int64 scalar, when the signals had no labels). With ``as_dict=True``, or
    when several tensors were adapted and no ``key`` is given, item ``i`` is
    ``{"codes": {name: tensor}, "label": ..., "index": ..., "loss": [steps + 1]}`` (and ``"psnr"`` when the
    loss was the MSE).

    Args:
        directory: a directory written by :meth:`~ecop_wrap.GradScaledAdapter.encode`.
        key: the adapted tensor of the ``(code, label)`` items (default: the only one).
        as_dict: return dict items.

    Attributes:
        codes: adapted name -> ``[N, *shape]``.
        labels: ``[N, ...]``, or None when the signals had no labels.
        indices: ``[N]`` position of each signal in the encoded dataset.
        loss: ``[N, steps + 1]`` full-context loss of each fit before and after every step.
        psnr: the same as PSNR when the loss was the MSE, else None.
        names: one name per signal (the ``names`` of an encoded ``SignalDataset``), or None.
        steps: fitting steps per signal.

    Raises:
        FileNotFoundError: ``directory`` has no ``index.json`` (not written, or the encoding did not finish).
        ValueError: the index or a shard is malformed, or a shard does not match its digest or the index.
    """

    def __init__(self, directory: str | os.PathLike[str], *, key: str | None = None, as_dict: bool = False) -> None:
        self.directory = Path(directory)
        index = _read_index(self.directory / INDEX_NAME)
        shards = [_read_shard(self.directory, entry, index) for entry in index["shards"]]
        adapted: list[str] = index["adapted"]
        self.steps: int = index["steps"]
        self.names: list[str] | None = index["names"]
        self.codes = {n: _cat(shards, CODE_PREFIX + n) for n in adapted}
        self.indices = _cat(shards, "index")
        self.loss = _cat(shards, "loss")
        self.psnr = _cat(shards, "psnr") if "psnr" in index["tensors"] else None
        self.labels = _cat(shards, "label") if "label" in index["tensors"] else None
        if key is not None and key not in self.codes:
            raise KeyError(f"key {key!r} is not an adapted tensor of these codes: {adapted}")
        self.key = key if key is not None else (adapted[0] if len(adapted) == 1 else None)
        self.as_dict = bool(as_dict) or self.key is None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, index: int) -> Any:
        label = self.labels[index] if self.labels is not None else self.indices[index]
        if not self.as_dict:
            assert self.key is not None
            return self.codes[self.key][index], label
        return {
            "codes": {n: c[index] for n, c in self.codes.items()},
            "label": label,
            "index": self.indices[index],
            "loss": self.loss[index],
            **({"psnr": self.psnr[index]} if self.psnr is not None else {}),
        }

    def __repr__(self) -> str:
        shapes = {n: tuple(c.shape[1:]) for n, c in self.codes.items()}
        return f"{type(self).__name__}(N={len(self)}, codes={shapes}, labels={self.labels is not None})"

    def features(self) -> torch.Tensor:
        """Every code flattened and concatenated in the adapted order: ``[N, F]`` (e.g. a classifier's input)."""
        return torch.cat([c.reshape(len(self), -1) for c in self.codes.values()], dim=1)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist: not a code directory, or its encoding did not finish"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(index, dict) or sorted(index) != sorted(_INDEX_KEYS):
        raise ValueError(f"{path} must be an object with exactly the keys {list(_INDEX_KEYS)}")
    if index["format"] != LATENTS_FORMAT:
        raise ValueError(f"{path}: format {index['format']!r} is not {LATENTS_FORMAT!r}")
    shards = index["shards"]
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("file"), str) and SHARD_NAME.match(s["file"]) for s in shards
    ):
        raise ValueError(f"{path}: 'shards' must list files named codes-NNNNN.safetensors in this directory")
    if sum(int(s.get("count", -1)) for s in shards) != index["count"]:
        raise ValueError(f"{path}: the shards' counts do not add up to 'count' ({index['count']})")
    expected = {CODE_PREFIX + n for n in index["adapted"]} | {"index", "loss"}
    if index["count"] and not expected <= set(index["tensors"]) <= expected | {"label", "psnr"}:
        raise ValueError(
            f"{path}: 'tensors' must be {sorted(expected)} (and 'label', 'psnr'), got {sorted(index['tensors'])}"
        )
    return index


def _read_shard(directory: Path, entry: dict[str, Any], index: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = directory / entry["file"]
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ValueError(f"{path} does not match the SHA-256 digest in {INDEX_NAME}")
    tensors = safetensors.torch.load(data)
    layout = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in tensors.items()}
    if layout != index["tensors"] or any(v.shape[0] != entry["count"] for v in tensors.values()):
        raise ValueError(f"{path} does not hold the tensors {INDEX_NAME} describes ({entry['count']} signals)")
    return tensors


def _cat(shards: list[dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    """``name`` of every shard end to end; an empty ``[0]`` tensor for a directory of no signals."""
    return torch.cat([s[name] for s in shards]) if shards else torch.empty(0)
