"""Averaging meta-gradients and statistics over a ``torch.distributed`` process group.

DDP cannot be used here: it does not synchronise gradients taken through ``functional_call`` and does not
differentiate through gradients. Instead each rank computes the meta-gradient of its own shard of the batch
and one all-reduce per outer step averages it, weighted by each rank's number of signals, so every rank
steps with the meta-gradient of the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["broadcast_parameters", "parameters_in_sync", "weighted_all_reduce", "world_size"]


def world_size(group: Any = None) -> int:
    """Number of processes in ``group`` (1 when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


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
