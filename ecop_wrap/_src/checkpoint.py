"""Checkpoint files: atomic, checksummed writes and safe (``weights_only``) reads, and learner-state checks."""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any

import torch
from torch import nn

from .config import ALGORITHM_KEYS, ECoPConfig

__all__ = ["CHECKPOINT_FORMAT", "check_state", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FORMAT = "ecop-wrap/1"
_REQUIRED = ("format", "config", "model", "optimizer", "step", "generator")


def write_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` atomically: a temporary file, fsync, then rename over ``path``.

    A crash at any point leaves either the previous file or the complete new one. The file holds a SHA-256
    digest of its content, which :func:`read_checkpoint` checks.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    state = {**state, "digest": _state_digest(state)}
    fd, tmp = tempfile.mkstemp(prefix=".ecop-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # POSIX
                os.fchmod(handle.fileno(), _file_mode(path))
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`write_checkpoint` with ``torch.load(weights_only=True)``; check its digest.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupted, or not an ecop-wrap checkpoint.
    """
    path = os.fspath(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"could not read checkpoint {path!r}: truncated or corrupted ({exc})") from exc
    if not isinstance(state, dict) or "digest" not in state:
        raise ValueError(f"{path!r} is not a checkpoint written by ContextPruningMetaLearner.save (no digest)")
    digest = state.pop("digest")
    if digest != _state_digest(state):
        raise ValueError(f"checkpoint {path!r} is corrupted: its content does not match its SHA-256 digest")
    return state


def check_state(
    state: Any,
    *,
    config: ECoPConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    adapted: list[str],
    rates: dict[str, torch.Tensor],
) -> None:
    """Raise a ``ValueError`` naming what does not fit when ``state`` cannot be loaded into this learner."""
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        raise ValueError(f"not an ecop-wrap checkpoint: expected a dict with keys {_REQUIRED}")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {state['format']!r} is not {CHECKPOINT_FORMAT!r}")
    _check_config(state["config"], config)
    _check_tensors("parameters", state["model"], model.state_dict(), "model")
    # Before `adapt=` existed every trainable parameter was adapted.
    saved_adapted = state.get("adapted", [n for n, p in model.named_parameters() if p.requires_grad])
    if list(saved_adapted) != adapted:
        raise ValueError(f"checkpoint adapts parameters {saved_adapted} per signal but this learner adapts {adapted}")
    _check_tensors("inner rates", state.get("inner_lrs", {}), rates, "learner")
    _check_optimizer(state["optimizer"], optimizer)
    generator = state["generator"]
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8 or generator.ndim != 1:
        raise ValueError(f"checkpoint RNG state must be a 1-D torch.uint8 tensor, got {generator!r:.80}")


def _check_config(saved: Any, config: ECoPConfig) -> None:
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint config must be a dict, got {type(saved).__name__}")  # noqa: TRY004 - a damaged checkpoint
    own = config.to_dict()
    legacy = ECoPConfig().to_dict()  # a key missing from an older checkpoint had its default then
    mismatched = [
        f"{k}: checkpoint {saved.get(k, legacy[k])!r} vs learner {own[k]!r}"
        for k in ALGORITHM_KEYS
        if saved.get(k, legacy[k]) != own[k]
    ]
    if mismatched:
        raise ValueError("checkpoint configuration does not match this learner: " + "; ".join(mismatched))


def _check_tensors(what: str, saved: Any, own: dict[str, torch.Tensor], owner: str) -> None:
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint {what} must be a dict, got {type(saved).__name__}")  # noqa: TRY004
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint {what} do not match the {owner}: missing {missing}, unexpected {unexpected}")
    wrong = [
        f"{k}: {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} vs {tuple(own[k].shape)}"
        for k, v in saved.items()
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(
            f"checkpoint {what} shapes do not match the {owner} (checkpoint vs {owner}): " + "; ".join(wrong)
        )


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(saved, dict) or "param_groups" not in saved or "state" not in saved:
        raise ValueError("checkpoint optimizer state must be an optimizer state_dict with 'state' and 'param_groups'")
    saved_sizes = [len(g.get("params", ())) for g in saved["param_groups"]]
    own_sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != own_sizes:
        raise ValueError(
            f"checkpoint optimizer has parameter groups of sizes {saved_sizes} but this learner's "
            f"{type(optimizer).__name__} has {own_sizes}"
        )


def _file_mode(path: str) -> int:
    """The mode a plain ``open(path, "wb")`` would give: the existing file's, else 0o666 less the umask.

    ``mkstemp`` creates 0o600 files; without this a checkpoint would not be readable by the user's group.
    """
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _state_digest(state: Any) -> str:
    """SHA-256 over a checkpoint's content: every tensor's dtype, shape and bytes, and every other value's repr."""
    digest = hashlib.sha256()
    _update_digest(digest, state)
    return digest.hexdigest()


def _update_digest(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{data.dtype}{tuple(value.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            digest.update(repr(key).encode())
            _update_digest(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)}".encode())
        for item in value:
            _update_digest(digest, item)
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())
