"""Averaging meta-gradients and statistics over a ``torch.distributed`` process group.

DDP cannot be used here: it does not synchronise gradients taken through ``functional_call`` and does not
differentiate through gradients. Instead each rank computes the meta-gradient of its own shard of the batch
and one all-reduce per outer step averages it, weighted by each rank's number of signals, so every rank
steps with the meta-gradient of the global batch.

Faults: before any rank enters the gradient all-reduce, :func:`exchange_status` all-gathers a small status
record (ok flag, step counter, call tag, error message) from every rank. A rank whose local computation
failed reports it there, so the other ranks raise :class:`RankFailedError` naming it and its reason at once
instead of waiting in the all-reduce, and ranks whose step counters or calls disagree raise instead of
pairing one step's collective with another's. :func:`status_guard` wraps a block in that protocol.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "STATUS_BYTES",
    "RankFailedError",
    "broadcast_parameters",
    "exchange_status",
    "gather_rank_states",
    "group_rank",
    "parameters_in_sync",
    "rank_generator_state",
    "status_guard",
    "weighted_all_reduce",
    "world_size",
]

# Status record: little-endian int64 ok, step and message length, a 24-byte tag, the UTF-8 message; as uint8.
_TAG_BYTES = 24
_MESSAGE_BYTES = 464
_RECORD = struct.Struct(f"<qqq{_TAG_BYTES}s{_MESSAGE_BYTES}s")
#: Bytes each rank contributes to the status all-gather of every ``meta_step`` and ``save``.
STATUS_BYTES = _RECORD.size  # 512


def world_size(group: Any = None) -> int:
    """Number of processes in ``group`` (1 when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def group_rank(group: Any = None) -> int:
    """This process's rank within ``group`` (0 when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


def _global_rank(group: Any, rank_in_group: int) -> int:
    """The world rank of ``group``'s rank ``rank_in_group`` (the name users see in logs and torchrun)."""
    if group is None:
        return rank_in_group
    return dist.get_global_rank(group, rank_in_group)


class RankFailedError(RuntimeError):
    """A collective call cannot go on because another rank failed or is out of step.

    Raised by :func:`exchange_status` on every rank whose own part went well; the failing rank raises its own
    exception instead.

    Attributes:
        failures: world rank -> why it cannot go on (the failing rank's exception type and message, or where
            an out-of-step rank is).
        step: this rank's step counter at the call.
        tag: the call that was interrupted (e.g. ``"meta_step"``, ``"save"``).
    """

    def __init__(self, message: str, failures: dict[int, str], step: int, tag: str) -> None:
        super().__init__(message)
        self.failures = failures
        self.step = step
        self.tag = tag


def _encode_status(ok: bool, message: str, step: int, tag: str) -> torch.Tensor:
    """The fixed-size ``[STATUS_BYTES]`` uint8 record of one rank (tag and message truncated to fit)."""
    text = message.encode("utf-8", errors="replace")[:_MESSAGE_BYTES]
    label = tag.encode("utf-8", errors="replace")[:_TAG_BYTES]
    return torch.frombuffer(bytearray(_RECORD.pack(int(ok), int(step), len(text), label, text)), dtype=torch.uint8)


def _decode_status(record: torch.Tensor) -> tuple[bool, int, str, str]:
    """``(ok, step, tag, message)`` of a record written by :func:`_encode_status`."""
    ok, step, length, label, text = _RECORD.unpack(record.cpu().numpy().tobytes())
    tag = label.rstrip(b"\0").decode("utf-8", errors="replace")
    return bool(ok), int(step), tag, text[:length].decode("utf-8", errors="replace")


def _status_device(group: Any, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if dist.get_backend(group) == "nccl":  # NCCL only moves CUDA tensors
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def exchange_status(
    ok: bool,
    message: str,
    step: int,
    group: Any = None,
    *,
    tag: str = "meta_step",
    device: torch.device | str | None = None,
) -> None:
    """Tell every rank of ``group`` whether this rank's part of a collective call went well; raise if not all did.

    One ``all_gather`` of a ``[STATUS_BYTES]`` (512) uint8 record per rank holding ``ok``, ``step``, ``tag`` and
    ``message``. Every rank must call it at the same point of the same call (a collective); it then raises
    :class:`RankFailedError` on every rank, at once, when any rank reports ``ok=False`` or when the ranks'
    ``(tag, step)`` disagree (a rank that called ``meta_step`` again after an error, skipped a call, or was
    resumed from another checkpoint). A no-op on a single process.

    Args:
        ok: whether this rank's local work succeeded.
        message: why not (e.g. ``"ValueError: ..."``); truncated to 464 bytes of UTF-8.
        step: this rank's step counter for the call; it must be equal on all ranks.
        group: process group (default: the world).
        tag: which call this is (up to 24 bytes); it must be equal on all ranks.
        device: where the record travels (default: the current CUDA device for NCCL, else the CPU).

    Raises:
        RankFailedError: a rank failed or the ranks are out of step; the message names the ranks (world ranks)
            and their reasons. A rank that passed ``ok=False`` gets it too (callers re-raise their own error).
    """
    size = world_size(group)
    if size == 1:
        return
    record = _encode_status(ok, message, step, tag).to(_status_device(group, device))
    gathered = [torch.empty_like(record) for _ in range(size)]
    dist.all_gather(gathered, record, group=group)
    statuses = [_decode_status(r) for r in gathered]
    ranks = [_global_rank(group, r) for r in range(size)]
    failures = {
        rank: msg or "failed (no message)" for rank, (good, _, _, msg) in zip(ranks, statuses, strict=True) if not good
    }
    if failures:
        _, fail_step, fail_tag, _ = next(s for s in statuses if not s[0])
        names = "; ".join(f"rank {rank}: {reason}" for rank, reason in failures.items())
        plural = "s" if len(failures) > 1 else ""
        raise RankFailedError(
            f"{fail_tag} at step {fail_step} failed on rank{plural} {', '.join(map(str, failures))} of {size} "
            f"({names}). Every rank of the process group raises at this call, so none is left waiting in a "
            "collective and none has applied this step.",
            failures,
            step,
            tag,
        )
    _, step0, tag0, _ = statuses[0]
    behind = {
        rank: f"in {other_tag} at step {other_step}"
        for rank, (_, other_step, other_tag, _) in zip(ranks, statuses, strict=True)
        if (other_tag, other_step) != (tag0, step0)
    }
    if behind:
        where = ", ".join(f"rank {rank} {pos}" for rank, pos in behind.items())
        raise RankFailedError(
            f"ranks are out of step: rank {ranks[0]} is in {tag0} at step {step0}, {where}. Every rank must make "
            "the same calls in the same order (the same number of meta_step calls, and save on every rank); "
            "nothing was applied. Resume all ranks from one checkpoint.",
            behind,
            step,
            tag,
        )


@contextlib.contextmanager
def status_guard(
    step: int, group: Any = None, *, tag: str = "meta_step", device: torch.device | str | None = None
) -> Iterator[None]:
    """Run a block of rank-local work, then :func:`exchange_status` its outcome with every rank.

    If the block raises, this rank reports the exception's type and message to the others and re-raises its
    own exception; the other ranks raise :class:`RankFailedError` naming this rank. If the block succeeds and
    every rank's did, execution goes on past the ``with`` on every rank, all at the same ``(tag, step)``.
    Put the first collective of the call (e.g. the gradient all-reduce) after the ``with`` block.

    Example::

        with status_guard(learner.step_count + 1, group):
            loss = compute_loss(batch)  # may raise on one rank only
            grads = torch.autograd.grad(loss, params)
        grads = all_reduce(grads)  # reached by all ranks or by none
    """
    try:
        yield
    except Exception as exc:
        # Best effort: if the exchange itself fails (a peer is gone) the rank's own error is what matters.
        with contextlib.suppress(Exception):
            exchange_status(False, f"{type(exc).__name__}: {exc}", step, group, tag=tag, device=device)
        raise
    exchange_status(True, "", step, group, tag=tag, device=device)


def gather_rank_states(
    generator_state: torch.Tensor, step: int, group: Any = None, *, device: torch.device | str | None = None
) -> dict[str, Any] | None:
    """Every rank's pruning RNG state, for a checkpoint that resumes each rank exactly (collective).

    First checks with :func:`exchange_status` (tag ``"save"``) that every rank is saving at the same step, so
    a ``save`` called on one rank only raises at once on every rank instead of pairing with another call.

    Args:
        generator_state: this rank's ``torch.Generator.get_state()`` (1-D uint8).
        step: this rank's step counter.
        group: process group (default: the world).
        device: where the status record travels (see :func:`exchange_status`).

    Returns:
        ``{"world_size": W, "generator_states": [W uint8 tensors, indexed by group rank]}``, on every rank; None
        on a single process.
    """
    size = world_size(group)
    if size == 1:
        return None
    exchange_status(True, "", step, group, tag="save", device=device)
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, generator_state.detach().cpu(), group=group)
    return {"world_size": size, "generator_states": gathered}


def _check_distributed_state(distributed_state: Any) -> None:
    """Raise ValueError unless ``distributed_state`` has the layout :func:`gather_rank_states` returns."""
    if not isinstance(distributed_state, dict):
        raise ValueError(f"checkpoint distributed_state must be a dict, got {type(distributed_state).__name__}")  # noqa: TRY004
    size = distributed_state.get("world_size")
    states = distributed_state.get("generator_states")
    if not isinstance(size, int) or size < 1 or not isinstance(states, list) or len(states) != size:
        raise ValueError(
            "checkpoint distributed_state must hold 'world_size' (int >= 1) and 'generator_states' (a list of "
            f"that many RNG states), got world_size={size!r} and {type(states).__name__}"
        )
    for rank, state in enumerate(states):
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.ndim != 1:
            raise ValueError(f"checkpoint RNG state of rank {rank} must be a 1-D torch.uint8 tensor, got {state!r:.80}")


def rank_generator_state(state: dict[str, Any], group: Any = None, *, uses_rng: bool = True) -> torch.Tensor:
    """The pruning RNG state this rank resumes from, out of a checkpoint ``state`` (no collective).

    * A checkpoint with a ``distributed_state`` taken with the same number of ranks: this rank's own state.
    * Taken with another number of ranks (including one process loading a multi-rank checkpoint): the saved
      ``"generator"`` (rank 0's) when ``uses_rng`` is False, since deterministic selections never draw from it;
      otherwise ValueError, because the random subsets could not continue as they would have.
    * A checkpoint without one (saved by a single process): its ``"generator"``, on every rank.

    Raises:
        ValueError: the world sizes differ and ``uses_rng``, or the entry is malformed.
    """
    saved_generator: torch.Tensor = state["generator"]
    distributed_state = state.get("distributed_state")
    if distributed_state is None:
        return saved_generator
    _check_distributed_state(distributed_state)
    saved, size = distributed_state["world_size"], world_size(group)
    if saved == size:
        own: torch.Tensor = distributed_state["generator_states"][group_rank(group)]
        return own
    if not uses_rng:
        return saved_generator
    raise ValueError(
        f"this checkpoint was saved by {saved} ranks, each with its own pruning RNG state (selection='random'), "
        f"but this process group has {size}: the random subsets cannot continue as they would have. Resume with "
        f"{saved} ranks, or load_state_dict(state) a state whose 'distributed_state' entry you removed (every "
        "rank then continues rank 0's stream; re-seed per rank with learner.generator.manual_seed(...))."
    )


def weighted_all_reduce(
    tensors: list[torch.Tensor], weight: float, group: Any = None
) -> tuple[list[torch.Tensor], float]:
    """Average ``tensors`` over the group, each rank weighted by ``weight`` (its number of signals).

    Args:
        tensors: this rank's tensors (gradients, statistics), any shapes, same dtype and device.
        weight: this rank's weight.
        group: process group (default: the world).

    Returns:
        ``(averaged tensors, total weight)``; the inputs are returned unchanged on a single process.
    """
    if world_size(group) == 1:
        return tensors, weight
    flat = torch.cat([t.reshape(-1) for t in tensors])
    buffer = torch.cat([flat * weight, flat.new_tensor([weight])])
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
    total = buffer[-1]
    averaged = buffer[:-1] / total
    out, offset = [], 0
    for t in tensors:
        out.append(averaged[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out, float(total)


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t.data for t in model.parameters()] + list(model.buffers())


def broadcast_parameters(model: nn.Module, src: int = 0, group: Any = None) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank of ``group`` (in place).

    Call it once after building the model (or after loading a checkpoint on one rank only) so that every
    rank starts from the same theta_0; :meth:`ContextPruningMetaLearner.meta_step` then keeps them equal.
    A no-op on a single process.

    Args:
        model: the INR, on this rank's device (CUDA for NCCL).
        src: global rank whose values are kept.
        group: process group (default: the world).
    """
    if world_size(group) == 1:
        return
    for tensor in _state_tensors(model):
        dist.broadcast(tensor, src=src, group=group)


def parameters_in_sync(model: nn.Module, group: Any = None) -> bool:
    """Whether every rank of ``group`` holds bit-identical parameters and buffers (collective; True alone).

    Compares the element-wise maximum and minimum over ranks, so it costs two all-reduces of the model.
    """
    if world_size(group) == 1:
        return True
    tensors = [t for t in _state_tensors(model) if t.is_floating_point()]
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    return bool(torch.equal(high, low))
