"""Memory: deterministic accounting of what autograd graphs hold, and the CPU allocator's settings.

:class:`SavedTensorMeter` counts the bytes of tensors that live autograd graphs still hold. Inside it, every
tensor autograd saves for a backward is packed into a small holder object tracked in a ``weakref.WeakSet``.
A holder dies with the graph node that kept it, so at any moment the live holders are exactly what the
surviving graphs hold; graphs already freed (such as the bootstrap's) are not counted, unlike a running total.
Bytes are summed once per storage, since views share memory.

:func:`configure_cpu_allocator` (opt-in) fixes glibc malloc's thresholds so that the resident memory of a
CPU process follows the memory its tensors use (see its docstring for the measured trade-off);
:func:`release_cpu_memory` hands freed heap memory back to the system once, at a point of the caller's choice.
"""

from __future__ import annotations

import ctypes
import os
import sys
import weakref
from types import TracebackType

import torch

__all__ = ["SavedTensorMeter", "configure_cpu_allocator", "release_cpu_memory"]


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


# ------------------------------------------------------------------------------------------ CPU allocator
# mallopt(3) parameter numbers (glibc's malloc.h) and the environment variables / tunables that also set them.
_MALLOPT_PARAMS = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3, "M_ARENA_MAX": -8}
_ENVIRONMENT = {
    "M_TRIM_THRESHOLD": ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
    "M_MMAP_THRESHOLD": ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
    "M_ARENA_MAX": ("MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
}
DEFAULT_MMAP_THRESHOLD = 128 << 10  # 128 KiB: glibc's initial value, kept fixed
DEFAULT_TRIM_THRESHOLD = 128 << 10  # 128 KiB: glibc's initial value, kept fixed
_INT_MAX = 2**31 - 1  # mallopt takes a C int


def _load_glibc() -> ctypes.CDLL | None:
    """The running process's C library when it is glibc (it has ``mallopt``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, libc's among them
    except OSError:
        return None
    # gnu_get_libc_version exists only in glibc (musl, for one, has no mallopt thresholds to speak of).
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def _max_mmap_threshold() -> int:
    """glibc's upper bound for M_MMAP_THRESHOLD: 32 MiB on 64-bit systems (4 MiB times sizeof(long))."""
    return 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)


def _set_by_environment(param: str) -> bool:
    """Whether the user already chose ``param`` through a MALLOC_* variable or GLIBC_TUNABLES."""
    variable, tunable = _ENVIRONMENT[param]
    return variable in os.environ or f"{tunable}=" in os.environ.get("GLIBC_TUNABLES", "")


def _check_setting(name: str, value: object, low: int, high: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int number of {'arenas' if name == 'arena_max' else 'bytes'} or None, "
            f"got {type(value).__name__}"
        )
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def configure_cpu_allocator(
    *,
    mmap_threshold: int | None = DEFAULT_MMAP_THRESHOLD,
    trim_threshold: int | None = DEFAULT_TRIM_THRESHOLD,
    arena_max: int | None = None,
) -> dict[str, int]:
    """Opt-in: fix glibc malloc's thresholds so that a CPU process's resident memory follows its tensors.

    PyTorch's CPU tensors come from ``malloc``. By default glibc serves blocks of at least ``M_MMAP_THRESHOLD``
    (initially 128 KiB) with their own ``mmap`` and returns them to the system when freed, but it raises that
    threshold (up to 32 MiB) to the size of every such block freed. Medium-sized tensors (an ECoP inner step's
    activations on the pruned context: 8 MiB at 128x128, SIREN 5x256, B=2) then land on the heap, where the
    freed memory between long-lived tensors stays resident: one ECoP meta-step there peaked at 1.39x
    Learnit's resident memory although both held the same live bytes (see ``docs/benchmarks.md``). Fixing the
    thresholds turns that dynamic adjustment off: tensors of ``mmap_threshold`` bytes or more get their own
    mapping and are returned as soon as they are freed.

    Trade-off: every large tensor then costs fresh page faults (the kernel zeroes its pages), so system CPU
    time rises. Measured at 128x128, SIREN 5x256, B=2, 1 thread: ECoP's peak RSS went from 1.39x to 1.01x
    Learnit's, and its CPU time per meta-step by 40-60% (33 s -> 53 s in one run; Learnit's by up to 17%), see
    ``docs/benchmarks.md``. Use it when resident memory is the limit, not speed. Where the kernel offers
    transparent huge pages, PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` environment variable (read at start-up) takes
    a good part of that cost back (53 s -> 42 s in the same measurement). Memory held by tensors is unchanged,
    only what the allocator keeps resident after they are freed. The setting is process-wide, affects every later
    ``malloc`` (not only PyTorch's) and does not move memory already allocated, so call it early, once, before
    building models and data. Calling it again with the same arguments changes nothing.

    Options the user already set through the environment (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_ARENA_MAX`` or the matching ``GLIBC_TUNABLES`` entries) are left as
    they are. On a C library other than glibc (macOS, Windows, musl) this does nothing and returns ``{}``.

    Args:
        mmap_threshold: bytes from which a block gets its own ``mmap`` (``M_MMAP_THRESHOLD``), in
            [0, 32 MiB] on 64-bit systems; None leaves glibc's dynamic threshold.
        trim_threshold: free bytes at the top of the heap above which ``free`` returns them to the system
            (``M_TRIM_THRESHOLD``); None leaves it.
        arena_max: most malloc arenas (``M_ARENA_MAX``), e.g. 2 to bound per-thread arenas in processes
            with many threads; None (default) leaves glibc's (8 per core).

    Returns:
        The parameters set, e.g. ``{"M_MMAP_THRESHOLD": 131072, "M_TRIM_THRESHOLD": 131072}``: empty where
        the C library is not glibc, and without those the environment had already set.

    Raises:
        TypeError, ValueError: an argument that is not an int in its range.
    """
    wanted = {
        "M_MMAP_THRESHOLD": _check_setting("mmap_threshold", mmap_threshold, 0, _max_mmap_threshold()),
        "M_TRIM_THRESHOLD": _check_setting("trim_threshold", trim_threshold, 0, _INT_MAX),
        "M_ARENA_MAX": _check_setting("arena_max", arena_max, 1, _INT_MAX),
    }
    libc = _load_glibc()
    if libc is None:
        return {}
    applied: dict[str, int] = {}
    for param, value in wanted.items():
        if value is None or _set_by_environment(param):
            continue
        if libc.mallopt(ctypes.c_int(_MALLOPT_PARAMS[param]), ctypes.c_int(value)) != 1:
            raise ValueError(f"glibc's mallopt rejected {param}={value}")
        applied[param] = value
    return applied


def release_cpu_memory() -> bool:
    """Return the free memory of glibc's heaps to the system now (``malloc_trim(0)``); a no-op elsewhere.

    Freed blocks between live ones stay resident under glibc's default settings; this releases their pages
    (they are faulted in again, zeroed, when reused). Called at a few points of a meta-step where much was
    just freed, it keeps the peak resident memory near the live memory at a small cost (measured in
    ``docs/benchmarks.md``); called after every allocation it would cost as much as
    :func:`configure_cpu_allocator` without its benefit.

    Returns:
        True when glibc released some memory, False when it released none or the C library is not glibc.
    """
    libc = _load_glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(ctypes.c_size_t(0)))
