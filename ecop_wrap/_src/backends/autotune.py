"""``batching="auto"``: which batching modes are correct for a model, and which of them is fastest.

Correctness first: a mode is a candidate only if it runs and reproduces the per-signal loop on a small probe
(8 points of 2 signals). Then, with timing on, every candidate (the loop included) is timed on at most
:data:`TIMING_POINTS` of the call's points and :data:`TIMING_SIGNALS` of its signals, in the passes that
dominate a meta-step: a forward without a graph (ranking, bootstrap) on the call's coordinates and a
second-order step (a forward, its gradient with ``create_graph`` and the backward through that gradient, i.e.
one inner step and its share of the outer backward) on per-signal coordinates (a shared grid repeated, as
gathered points are). Each mode is warmed up by one graph-free forward, then timed :data:`TIMING_REPEATS`
times, round-robin (a mode that fails in any of these is dropped); the fastest median wins (like cuDNN's
benchmark mode), except that on a CPU a batched mode must beat the loop by :data:`CPU_LOOP_MARGIN` (see
:func:`pick_mode`). With timing off, or under ``torch.distributed`` (every rank must run the same mode; ranks
timing differently could pick different ones), the first correct mode of ``"bmm"``, ``"vmap"`` wins, else
``"loop"``.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ...typing import BatchingMode, Params

__all__ = [
    "BENCHMARK_ENV",
    "CPU_LOOP_MARGIN",
    "SHARED_CHOICES",
    "TIMING_POINTS",
    "TIMING_REPEATS",
    "TIMING_SIGNALS",
    "BatchingChoice",
    "pick_mode",
    "time_modes",
    "timing_off_reason",
]

logger = logging.getLogger("ecop_wrap")

BENCHMARK_ENV = "ECOP_WRAP_BATCHING_BENCHMARK"
"""Set to ``"0"`` to turn the timing of ``batching="auto"`` off process-wide (the test suite does)."""
TIMING_SIGNALS = 2
"""Signals of the call that are timed (one signal is repeated to make two)."""
TIMING_POINTS = 1024
"""Points of the call that are timed (the first ones): the pruned set of a 64x64 image at gamma = 0.25. The
first call of a meta-step is a full-context pass; timed whole at 64x64 (4096 points) the modes would take about
10 s, most of a meta-step (SIREN 5x256, B=8, one CPU thread: about 13 s); capped, about 1.1 s."""
TIMING_REPEATS = 3
"""Timed repeats per mode after one warm-up (their median is the mode's time)."""
CPU_LOOP_MARGIN = 0.10
"""On a CPU, the fraction of the loop's time by which a batched mode must beat it to be picked. The probe is small
enough to stay in the CPU's caches, where batching loses nothing; a call's full context does not (``[8, 4096, 256]``
floats per layer at 64x64, B = 8), and there the loop, one signal's activations at a time, was 1.4x faster than
``bmm`` after ``bmm`` had won the probe by 1% (docs/benchmarks.md). Losing a near-tie costs at most this margin
on the probe; winning one with ``bmm`` cost 40% on the step."""

SHARED_CHOICES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], BatchingChoice]] = (
    weakref.WeakKeyDictionary()
)
"""Choices per model, shared by its backends (a learner and its adapters time once), dropped with the model."""

ForwardIn = Callable[[BatchingMode, Params, torch.Tensor], torch.Tensor]
"""``forward(mode, params [B, ...], coords) -> [B, M, D]``: the backend's forward in one batching mode."""


@dataclass(frozen=True)
class BatchingChoice:
    """What ``batching="auto"`` chose for one kind of call, and why.

    Attributes:
        mode: the batching mode used.
        candidates: the modes that reproduced the loop on the probe (``"loop"`` always among them).
        times: median seconds of the timed passes per mode; empty when nothing was timed. A candidate that
            failed while being timed is missing.
        note: why nothing was timed (empty when timed).
    """

    mode: BatchingMode
    candidates: tuple[BatchingMode, ...]
    times: dict[BatchingMode, float] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> str:
        if not self.times:
            return f"batching='auto' chose {self.mode!r} (the first correct mode; not timed: {self.note})"
        timed = ", ".join(f"{mode} {1e3 * seconds:.1f} ms" for mode, seconds in self.times.items())
        if self.mode == min(self.times, key=self.times.__getitem__):
            return f"batching='auto' chose {self.mode!r}, the fastest of the correct modes ({timed})"
        return (
            f"batching='auto' chose {self.mode!r}: no batched mode beat it by {CPU_LOOP_MARGIN:.0%} on this CPU "
            f"({timed})"
        )


def timing_off_reason(requested: bool) -> str:
    """Why the modes will not be timed ("" when they will)."""
    if not requested:
        return "batching_benchmark=False"
    if os.environ.get(BENCHMARK_ENV, "1").strip() == "0":
        return f"{BENCHMARK_ENV}=0"
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size() > 1:
        return "under torch.distributed every rank must run the same mode"
    return ""


def pick_mode(times: dict[BatchingMode, float], device: torch.device) -> BatchingMode:
    """The fastest timed mode; on a CPU the loop unless a batched mode takes under ``1 - CPU_LOOP_MARGIN`` of its time.

    Args:
        times: mode -> median seconds (not empty).
        device: where the modes were timed.
    """
    fastest = min(times, key=times.__getitem__)
    if device.type != "cpu" or "loop" not in times or fastest == "loop":
        return fastest
    return fastest if times[fastest] < (1.0 - CPU_LOOP_MARGIN) * times["loop"] else "loop"


def time_modes(
    forward: ForwardIn, modes: Sequence[BatchingMode], params: Params, coords: torch.Tensor
) -> dict[BatchingMode, float]:
    """Median seconds of one graph-free forward plus one second-order step, per mode that runs.

    Args:
        forward: the backend's forward in a given mode.
        modes: the candidates.
        params: name -> ``[B, *shape]`` (the first :data:`TIMING_SIGNALS` signals are timed; one signal is
            repeated to make two).
        coords: ``[M, C]`` or ``[B, M, C]`` (the first :data:`TIMING_POINTS` points are timed).

    Returns:
        mode -> median seconds, for the modes that ran every time (in the order of ``modes``).
    """
    leaves, sample_coords = _timing_inputs(params, coords)

    def unit(mode: BatchingMode, *, warm_up: bool = False) -> float:
        _sync(coords.device)
        start = time.perf_counter()
        _graph_free_and_second_order(forward, mode, leaves, sample_coords, graph_free_only=warm_up)
        _sync(coords.device)
        return time.perf_counter() - start

    times: dict[BatchingMode, list[float]] = {mode: [] for mode in modes}
    for repeat in range(TIMING_REPEATS + 1):  # repeat 0 is the warm-up: one graph-free forward per mode
        for mode in [m for m in modes if m in times]:  # round-robin: machine noise hits every mode alike
            try:
                seconds = unit(mode, warm_up=repeat == 0)
            except Exception:  # noqa: BLE001 - a mode that fails here is not a candidate
                del times[mode]
                continue
            if repeat > 0:
                times[mode].append(seconds)
    return {mode: statistics.median(t) for mode, t in times.items()}


def _timing_inputs(params: Params, coords: torch.Tensor) -> tuple[Params, torch.Tensor]:
    batch = next(iter(params.values())).shape[0]
    signals = min(batch, TIMING_SIGNALS)
    picked = torch.arange(signals, device=coords.device).repeat_interleave(-(-TIMING_SIGNALS // signals))
    picked = picked[:TIMING_SIGNALS]
    leaves = {n: p.detach()[picked].clone().requires_grad_(True) for n, p in params.items()}
    points = coords.detach()[..., :TIMING_POINTS, :]
    return leaves, (points if coords.ndim == 2 else points[picked])


def _per_signal(coords: torch.Tensor, signals: int) -> torch.Tensor:
    """``[signals, M, C]`` coordinates: per-signal ones as they are, a shared grid repeated (gathered points)."""
    return coords if coords.ndim == 3 else coords.unsqueeze(0).expand(signals, *coords.shape).contiguous()


def _graph_free_and_second_order(
    forward: ForwardIn, mode: BatchingMode, leaves: Params, coords: torch.Tensor, *, graph_free_only: bool
) -> None:
    with torch.no_grad():
        forward(mode, leaves, coords)
    if graph_free_only or torch.is_inference_mode_enabled():  # (in inference mode no graph can be built)
        return
    gathered = _per_signal(coords, next(iter(leaves.values())).shape[0])  # what a pruned step sees
    with torch.enable_grad():
        loss = forward(mode, leaves, gathered).float().square().mean()
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
        carried = [g.square().sum() for g in grads if g is not None and g.requires_grad]
        if carried:
            torch.autograd.grad(torch.stack(carried).sum(), list(leaves.values()), allow_unused=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
