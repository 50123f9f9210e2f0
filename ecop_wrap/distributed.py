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

__all__ = ["world_size", "weighted_all_reduce"]


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
