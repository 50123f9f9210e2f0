"""Deterministic memory accounting: bytes of tensors that live autograd graphs still hold.

Inside :class:`SavedTensorMeter`, every tensor autograd saves for a backward is packed into a small holder
object tracked in a ``weakref.WeakSet``. A holder dies with the graph node that kept it, so at any moment
the live holders are exactly what the surviving graphs hold; graphs already freed (such as the bootstrap's)
are not counted, unlike a running total. Bytes are summed once per storage, since views share memory.
"""

from __future__ import annotations

import weakref
from types import TracebackType

import torch

__all__ = ["SavedTensorMeter"]


class _Holder:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class SavedTensorMeter:
    """Context manager measuring what autograd graphs created inside it keep alive.

    Example::

        with SavedTensorMeter() as meter:
            loss = learner.meta_loss(batch)
            held = meter.live_bytes()  # what the backward of `loss` will need
        loss.backward()
    """

    def __init__(self) -> None:
        self._live: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Holder:
        # Keep a detached alias (same storage): a tensor an op saves from its own output carries that op as
        # grad_fn, and holding it would form a node -> holder -> tensor -> node cycle that is never freed.
        # Autograd re-attaches the right grad_fn when it unpacks, so higher-order gradients are unaffected.
        holder = _Holder(tensor.detach())
        self._live.add(holder)
        return holder

    @staticmethod
    def _unpack(holder: _Holder) -> torch.Tensor:
        return holder.tensor

    def live_bytes(self) -> int:
        """Bytes of distinct storages held by saved tensors still referenced by a graph."""
        seen: dict[tuple[str, int], int] = {}
        for holder in list(self._live):
            storage = holder.tensor.untyped_storage()
            key = (str(holder.tensor.device), storage.data_ptr())
            seen[key] = max(seen.get(key, 0), storage.nbytes())
        return sum(seen.values())

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._hooks.__exit__(exc_type, exc, tb)
