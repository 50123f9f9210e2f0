"""Fitted codes as data: fit every signal of a dataset and write the adapted tensors to safetensors shards.

A code directory holds ``codes-00000.safetensors``, ``codes-00001.safetensors``, ... and ``index.json``, written
last, so a directory without it is incomplete. Each shard holds, for its ``n`` signals, ``code.<name>``
``[n, *shape]`` per adapted tensor, ``index`` ``[n]`` (the signals' positions in the dataset), ``loss``
``[n, steps + 1]`` (full-context loss before and after every step), with ``loss="mse"`` also ``psnr`` (the same
as PSNR) and, when the signals have labels, ``label`` ``[n, ...]``. :class:`ecop_wrap.data.LatentDataset` reads
it back; ``docs/sharing.md`` describes the format.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from .pretrained import _write_atomic
from .validation import check_int

if TYPE_CHECKING:
    from ..data.latents import LatentDataset
    from .adapter import GradScaledAdapter

__all__ = ["CODE_PREFIX", "INDEX_NAME", "LATENTS_FORMAT", "SHARD_NAME", "encode_signals", "shard_name"]

LATENTS_FORMAT = "ecop-wrap-latents/1"
INDEX_NAME = "index.json"
CODE_PREFIX = "code."
#: shard file names: ``codes-<5 digits>.safetensors``.
SHARD_NAME = re.compile(r"^codes-\d{5}\.safetensors$")

Item = tuple[torch.Tensor, torch.Tensor, Any]


def shard_name(number: int) -> str:
    """File name of shard ``number``."""
    return f"codes-{number:05d}.safetensors"


def encode_signals(
    adapter: GradScaledAdapter,
    signals: Iterable[Any],
    batch_size: int,
    directory: str | os.PathLike[str],
    *,
    labels: Sequence[Any] | torch.Tensor | None = None,
    steps: int | None = None,
    shard_size: int = 4096,
    progress: bool = True,
    overwrite: bool = False,
) -> LatentDataset:
    """Fit every signal with ``adapter`` in batches and write the codes (see :meth:`GradScaledAdapter.encode`)."""
    from ..data.latents import LatentDataset

    batch_size = check_int("batch_size", batch_size, 1)
    shard_size = check_int("shard_size", shard_size, 1)
    total = _length(signals)
    if labels is not None and total is not None and len(labels) != total:
        raise ValueError(f"labels has {len(labels)} entries for {total} signals")
    directory = _prepare(Path(directory), overwrite)
    first = adapter.model.get_parameter(adapter.adapted[0])
    writer = _ShardWriter(directory, shard_size)
    bar = _progress_bar(total, progress)
    try:
        for start, coords, values, batch_labels in _batches(_items(signals, labels), batch_size):
            fit = adapter.fit((coords.to(first.device, first.dtype), values.to(first.device, first.dtype)), steps=steps)
            block = {CODE_PREFIX + n: p.detach().cpu() for n, p in fit.params.items()}
            block["index"] = torch.arange(start, start + values.shape[0])
            block["loss"] = fit.history["loss"].T.detach().cpu().float()
            if "psnr" in fit.history:  # the loss is the MSE
                block["psnr"] = fit.history["psnr"].T.detach().cpu().float()
            if batch_labels is not None:
                block["label"] = batch_labels
            writer.add(block)
            if bar is not None:
                bar.update(values.shape[0])
                bar.set_postfix_str(_progress_text(fit.history), refresh=False)
        writer.close(adapted=list(adapter.adapted), names=getattr(signals, "names", None))
    finally:
        if bar is not None:
            bar.close()
    return LatentDataset(directory)


def _prepare(directory: Path, overwrite: bool) -> Path:
    """Create ``directory``; refuse one holding codes unless ``overwrite`` (then remove them, index first)."""
    directory.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in directory.iterdir() if SHARD_NAME.match(p.name))
    index = directory / INDEX_NAME
    if (old or index.exists()) and not overwrite:
        raise FileExistsError(f"{directory} already holds codes; pass overwrite=True to replace them")
    index.unlink(missing_ok=True)
    for path in old:
        path.unlink()
    return directory


def _length(signals: Any) -> int | None:
    try:
        return len(signals)
    except TypeError:
        return None


def _items(signals: Iterable[Any], labels: Sequence[Any] | torch.Tensor | None) -> Iterator[Item]:
    """``(coords [M, C], values [M, D], label or None)`` per signal, checked."""
    indexed = hasattr(signals, "__getitem__") and _length(signals) is not None
    source: Iterable[Any] = (signals[i] for i in range(len(signals))) if indexed else signals  # type: ignore[index, arg-type]
    count, labelled = 0, None
    for count, item in enumerate(source, start=1):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(
                f"signal {count - 1}: expected (coords, values) or (coords, values, label), got {item!r:.80}"
            )
        has_label = len(item) == 3
        if labelled is not None and has_label != labelled:
            raise ValueError(f"signal {count - 1}: some signals have a label and some do not")
        if has_label and labels is not None:
            raise ValueError("the signals carry labels and labels= was given too; give them once")
        labelled = has_label
        if labels is not None and count > len(labels):
            raise ValueError(f"labels has {len(labels)} entries for more signals")
        label = item[2] if has_label else (labels[count - 1] if labels is not None else None)
        coords, values = (torch.as_tensor(t) for t in item[:2])
        if coords.ndim != 2 or values.ndim != 2 or coords.shape[0] != values.shape[0]:
            raise ValueError(
                f"signal {count - 1}: expected coords [M, C] and values [M, D], got {tuple(coords.shape)} and "
                f"{tuple(values.shape)}"
            )
        yield coords, values, label
    if labels is not None and len(labels) != count:
        raise ValueError(f"labels has {len(labels)} entries for {count} signals")


def _batches(items: Iterator[Item], batch_size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, Any]]:
    """``(first index, coords [M, C] or [B, M, C], values [B, M, D], labels [B, ...] or None)``.

    Consecutive signals of one shape form a batch; coordinates shared by all of them are passed once.
    """
    pending: list[Item] = []
    start = 0
    for item in items:
        if pending and (len(pending) == batch_size or not _same_shapes(pending[0], item)):
            yield start, *_collate(pending)
            start += len(pending)
            pending = []
        pending.append(item)
    if pending:
        yield start, *_collate(pending)


def _same_shapes(a: Item, b: Item) -> bool:
    return a[0].shape == b[0].shape and a[1].shape == b[1].shape


def _collate(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    first = items[0][0]
    shared = all(c is first or torch.equal(c, first) for c, _, _ in items)
    coords = first if shared else torch.stack([c for c, _, _ in items])
    values = torch.stack([v for _, v, _ in items])
    if items[0][2] is None:
        return coords, values, None
    return coords, values, torch.stack([torch.as_tensor(label).detach().cpu() for _, _, label in items])


def _progress_bar(total: int | None, enabled: bool) -> Any:
    """A tqdm bar, or None without tqdm (an optional dependency) or when not wanted."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="encoding", unit="signal", dynamic_ncols=True)


class _ShardWriter:
    """Buffers per-batch tensors and writes a shard whenever ``shard_size`` signals are waiting."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        self.directory, self.shard_size = directory, shard_size
        self.pending: list[dict[str, torch.Tensor]] = []
        self.shards: list[dict[str, Any]] = []
        self.layout: dict[str, dict[str, Any]] | None = None
        self.steps = 0

    def add(self, block: dict[str, torch.Tensor]) -> None:
        if self.layout is None:
            self.layout = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in block.items()}
            self.steps = int(block["loss"].shape[1]) - 1
        wrong = [
            k for k, v in block.items() if {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} != self.layout.get(k)
        ]
        if wrong or set(block) != set(self.layout):
            raise ValueError(f"signals give codes or labels of different shapes or dtypes: {sorted(wrong)}")
        self.pending.append(block)
        if sum(b["index"].shape[0] for b in self.pending) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        tensors = {k: torch.cat([b[k] for b in self.pending]).contiguous() for k in self.pending[0]}
        data = safetensors.torch.save(tensors, metadata={"format": "pt", "ecop_wrap": LATENTS_FORMAT})
        name = shard_name(len(self.shards))
        _write_atomic(self.directory / name, data)
        count = int(tensors["index"].shape[0])
        self.shards.append({"file": name, "count": count, "sha256": hashlib.sha256(data).hexdigest()})
        self.pending = []

    def close(self, *, adapted: list[str], names: Any) -> None:
        """Write the last shard and ``index.json``."""
        import ecop_wrap

        self._flush()
        count = sum(s["count"] for s in self.shards)
        index = {
            "format": LATENTS_FORMAT,
            "library_version": ecop_wrap.__version__,
            "count": count,
            "adapted": adapted,
            "steps": self.steps,
            "tensors": self.layout or {},
            "names": [str(n) for n in names] if names is not None and len(names) == count else None,
            "shards": self.shards,
        }
        _write_atomic(self.directory / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())


def _progress_text(history: dict[str, torch.Tensor]) -> str:
    if "psnr" in history:
        return f"{float(history['psnr'][-1].mean()):.1f} dB"
    return f"loss {float(history['loss'][-1].mean()):.3g}"
