"""The ``"torch.func"`` backend: stateless evaluation with :func:`torch.func.functional_call`, batched by one
batched matmul per ``nn.Linear`` (``"bmm"``), :func:`torch.func.vmap` or a loop over signals."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from ...typing import BatchingMode, Params
from .autotune import SHARED_CHOICES, BatchingChoice, logger, pick_mode, time_modes, timing_off_reason
from .base import Backend
from .forward import call_with_capture, loop_forward
from .precision import Precision

__all__ = ["TorchFuncBackend"]


class TorchFuncBackend(Backend):
    """Stateless evaluation with :func:`torch.func.functional_call`, batched by ``bmm``, ``vmap`` or a loop.

    Args:
        model: the INR.
        batching: ``"auto"`` (default: among ``"bmm"``, ``"vmap"`` and ``"loop"``, the modes that run and
            reproduce the loop on a probe; with ``benchmark`` the fastest of them on the first call, else the
            first of ``"bmm"``, ``"vmap"``, else ``"loop"``; see :mod:`.autotune`), ``"bmm"``, ``"vmap"`` or
            ``"loop"``. ``"bmm"`` needs every adapted parameter to belong to an ``nn.Linear``.
        adapted, precision, compile: see :class:`Backend`.
        benchmark: with ``batching="auto"``, time the correct modes and keep the fastest.

    ``"auto"`` settles on the first call of each kind: per set of adapted parameter shapes, coordinate
    dimensions, dtype and device. Neither the number of signals or points nor whether the coordinates are
    shared is part of it, so that every pass of a meta-step (ranking chunks on the shared grid, pruned steps on
    gathered points, the full-context loss) runs in one mode and gives that mode's numbers exactly; the first
    call's points are the ones timed.
    """

    name = "torch.func"

    def __init__(
        self,
        model: nn.Module,
        batching: BatchingMode = "auto",
        adapted: list[str] | None = None,
        *,
        precision: Precision | None = None,
        compile: bool | str = False,
        benchmark: bool = True,
    ) -> None:
        super().__init__(model, adapted, precision=precision, compile=compile)
        if batching == "bmm" and not self._linear_only():
            raise ValueError("batching='bmm' needs every trainable parameter to belong to an nn.Linear")
        self.requested_batching: BatchingMode = batching
        self.benchmark = benchmark
        self.batching_choices: dict[tuple[object, ...], BatchingChoice] = {}
        """What ``"auto"`` chose, per kind of call (see the class docstring)."""
        self.latest_choice: BatchingChoice | None = None

    @property
    def batching(self) -> BatchingMode:
        """The batching mode: the one asked for, or the one ``"auto"`` chose last (``"auto"`` before any call)."""
        if self.requested_batching == "auto" and self.latest_choice is not None:
            return self.latest_choice.mode
        return self.requested_batching

    @property
    def batching_choice(self) -> BatchingMode | None:
        """The mode ``"auto"`` chose last (None before the first call, or when a mode was asked for)."""
        return self.latest_choice.mode if self.latest_choice is not None else None

    @property
    def batching_times(self) -> dict[BatchingMode, float]:
        """Median seconds per correct mode of the last timing ``"auto"`` made (empty when not timed)."""
        return dict(self.latest_choice.times) if self.latest_choice is not None else {}

    def _linear_only(self) -> bool:
        owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in self.param_names}
        modules = dict(self.model.named_modules())
        return all(isinstance(modules.get(o), nn.Linear) for o in owners)

    def forward_capture(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._forward_in(self._mode_for(params, coords), params, coords, capture)

    def _forward_in(
        self, mode: BatchingMode, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mode == "bmm":
            with _BatchedLinear(self.memo_for(params)):
                return call_with_capture(lambda: functional_call(self.model, params, (coords,)), capture)
        if mode == "vmap":
            return self._vmap_forward(params, coords, capture)
        return loop_forward(self.model, params, coords, capture)

    def _vmap_forward(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        def one(signal_params: Params, signal_coords: torch.Tensor):  # type: ignore[no-untyped-def]
            out, cap = call_with_capture(lambda: functional_call(self.model, signal_params, (signal_coords,)), capture)
            return (out, cap) if cap is not None else (out,)

        results = vmap(one, in_dims=(0, 0 if coords.ndim == 3 else None))(params, coords)
        return results[0], (results[1] if capture is not None else None)

    # -------------------------------------------------------------------------------------- "auto"
    def _mode_for(self, params: Params, coords: torch.Tensor) -> BatchingMode:
        if self.requested_batching != "auto":
            return self.requested_batching
        key = _call_kind(params, coords)
        choice = self.batching_choices.get(key)
        if choice is None:
            choice = self._settle(key, params, coords)
            self.batching_choices[key] = choice
        if choice is not self.latest_choice:
            self.latest_choice = choice
        return choice.mode

    def _settle(self, key: tuple[object, ...], params: Params, coords: torch.Tensor) -> BatchingChoice:
        """Probe the modes for correctness, then time the correct ones (unless timing is off); log the choice.

        Another backend of the same model (a learner's adapters) reuses a choice made for the same kind of
        call, precision and timing setting.
        """
        note = timing_off_reason(self.benchmark)
        shared = SHARED_CHOICES.setdefault(self.model, {})
        shared_key = (key, self.precision.autocast_dtype, bool(note))
        if shared_key in shared:
            return shared[shared_key]
        shared[shared_key] = choice = self._choose(params, coords, note)
        return choice

    def _choose(self, params: Params, coords: torch.Tensor, note: str) -> BatchingChoice:
        correct = self._correct_modes(params, coords, first_only=bool(note))
        if note:
            choice = BatchingChoice(correct[0], tuple(correct), note=note)
        else:
            # the timing's own graphs are not the caller's: outside any saved-tensor hooks around this call
            # (activation checkpointing would otherwise record them and refuse the recomputation)
            with self._timing_precision(coords), torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
                times = time_modes(lambda m, p, x: self._forward_in(m, p, x, None)[0], correct, params, coords)
            if times:
                choice = BatchingChoice(pick_mode(times, coords.device), tuple(correct), times)
            else:
                choice = BatchingChoice(correct[0], tuple(correct), note="every mode failed while being timed")
        logger.info("%s; model %s, coords %s", choice.describe(), type(self.model).__name__, tuple(coords.shape))
        return choice

    @torch.no_grad()
    def _correct_modes(self, params: Params, coords: torch.Tensor, *, first_only: bool) -> list[BatchingMode]:
        """The modes that run and reproduce the per-signal loop on a few probe points, ``"loop"`` last.

        With ``first_only``, stop at the first batched one that does (what the untimed choice needs).
        """
        with torch.autocast(coords.device.type, enabled=False):
            probe_params = {n: p[:2].detach() for n, p in params.items()}
            probe_coords = coords[..., :8, :] if coords.ndim == 2 else coords[:2, :8]
            reference = loop_forward(self.model, probe_params, probe_coords, None)[0]
            correct: list[BatchingMode] = []
            for mode in _BATCHED_MODES if self._linear_only() else ("vmap",):
                try:
                    out = self._forward_in(mode, probe_params, probe_coords, None)[0]
                except Exception:  # noqa: BLE001 - any failure means "this mode does not fit this model"
                    continue
                if out.shape == reference.shape and torch.allclose(out, reference, rtol=1e-4, atol=1e-5):
                    correct.append(mode)
                    if first_only:
                        break
        return [*correct, "loop"]

    def _timing_precision(self, coords: torch.Tensor) -> contextlib.AbstractContextManager[object]:
        """The main passes' precision, whatever pass the first call came from (e.g. a bf16 ranking pass)."""
        dtype = self.precision.autocast_dtype
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(coords.device.type, enabled=False))
        if dtype is not None:
            stack.enter_context(torch.autocast(coords.device.type, dtype=dtype))
        return stack


_BATCHED_MODES: tuple[BatchingMode, ...] = ("bmm", "vmap")


def _call_kind(params: Params, coords: torch.Tensor) -> tuple[object, ...]:
    """What an ``"auto"`` choice is cached by: adapted names and per-signal shapes, coordinate dimensions, dtype
    and device; not the number of signals or points, nor whether coordinates are shared (a meta-step ranks a
    shared grid and steps on per-signal gathered points, in one mode)."""
    shapes = tuple((n, tuple(p.shape[1:]), p.dtype) for n, p in params.items())
    return (shapes, coords.shape[-1], coords.dtype, coords.device)


class _BatchedLinear(TorchFunctionMode):
    """Turns ``F.linear`` with a batched ``[B, out, in]`` weight or ``[B, out]`` bias into a batched matmul.

    Args:
        memo: where the transposed weights ``[B, in, out]`` and unsqueezed biases ``[B, 1, out]`` of these
            parameters are kept for the next pass over them (see :meth:`Backend.reusing`), or None.
    """

    def __init__(self, memo: dict[Any, Any] | None = None) -> None:
        super().__init__()
        self.memo = memo

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.ndim == 3 or (bias is not None and bias.ndim == 2):
                return _batched_linear(x, weight, bias, self.memo)
        return func(*args, **kwargs)


def _batched_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, memo: dict[Any, Any] | None = None
) -> torch.Tensor:
    if weight.ndim == 3 and x.ndim == 3 and bias is not None and bias.ndim == 2:
        return torch.baddbmm(_view(memo, bias, 1), x, _view(memo, weight, 2))
    out = torch.matmul(x, _view(memo, weight, 2) if weight.ndim == 3 else weight.transpose(-1, -2))
    if bias is not None:
        out = out + (_view(memo, bias, 1) if bias.ndim == 2 else bias)
    return out


def _view(memo: dict[Any, Any] | None, tensor: torch.Tensor, ndim: int) -> torch.Tensor:
    """A batched weight ``[B, out, in]`` (``ndim`` 2) transposed to ``[B, in, out]``, or a batched bias ``[B, out]``
    (``ndim`` 1) unsqueezed to ``[B, 1, out]``: from ``memo`` when an earlier pass over these parameters made it.

    The views are made with autograd recording (when the tensor requires grad), even inside a graph-free pass,
    so that a later pass with a graph can use them: a graph-free ranking's views serve the pruned step after it.
    A tensor changed in place since, or whose ``requires_grad`` changed, gets a new view.
    """
    if memo is None:
        return tensor.transpose(1, 2) if ndim == 2 else tensor.unsqueeze(1)
    key = (id(tensor), ndim)
    entry = memo.get(key)
    if entry is not None and entry[0] is tensor and entry[1] == (tensor._version, tensor.requires_grad):
        return entry[2]  # type: ignore[no-any-return]
    with torch.enable_grad():
        view = tensor.transpose(1, 2) if ndim == 2 else tensor.unsqueeze(1)
    memo[key] = (tensor, (tensor._version, tensor.requires_grad), view)
    return view


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
