"""Forward strategies shared by the backends: one signal at a time, and capturing a submodule's input."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

from ...typing import Params

__all__ = ["call_with_capture", "loop_forward", "per_signal"]


def per_signal(params: Params, coords: torch.Tensor) -> list[tuple[Params, torch.Tensor]]:
    """Each signal's parameters and coordinates out of ``[B, ...]`` parameters and ``[M, C]`` or ``[B, M, C]``.

    One ``unbind`` per tensor rather than one ``select`` per tensor and signal: its backward stacks the B
    gradients in one op, where B selects' backwards would each write a zero-filled ``[B, ...]`` tensor for the
    autograd engine to sum.
    """
    batch = next(iter(params.values())).shape[0]
    unbound = {n: p.unbind(0) for n, p in params.items()}
    signal_points = coords.unbind(0) if coords.ndim == 3 else (coords,) * batch
    return [({n: u[b] for n, u in unbound.items()}, signal_points[b]) for b in range(batch)]


def _capture_hook(module: nn.Module | None, store: list[torch.Tensor]) -> RemovableHandle | None:
    if module is None:
        return None
    return module.register_forward_hook(lambda _m, inputs, _out: store.append(inputs[0]))


def call_with_capture(
    call: Callable[[], torch.Tensor], capture: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``call()``, and the input of submodule ``capture`` in that call (None if ``capture`` is None)."""
    store: list[torch.Tensor] = []
    handle = _capture_hook(capture, store)
    try:
        out = call()
    finally:
        if handle is not None:
            handle.remove()
    if capture is not None and not store:
        raise RuntimeError(f"the capture module {capture!r} was not called by the model's forward")
    return out, (store[-1] if store else None)


def loop_forward(
    model: nn.Module, params: Params, coords: torch.Tensor, capture: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every signal through :func:`torch.func.functional_call`, one at a time: ``[B, M, D]`` (and captures)."""
    outs, caps = [], []
    for one_params, one_coords in per_signal(params, coords):
        call = partial(functional_call, model, one_params, (one_coords,))
        out, cap = call_with_capture(call, capture)
        outs.append(out)
        caps.append(cap)
    return torch.stack(outs), (torch.stack(caps) if capture is not None else None)  # type: ignore[arg-type]
