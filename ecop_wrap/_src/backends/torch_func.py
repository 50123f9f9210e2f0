"""The ``"torch.func"`` backend: stateless evaluation with :func:`torch.func.functional_call`, batched by one
batched matmul per ``nn.Linear`` (``"bmm"``), :func:`torch.func.vmap` or a loop over signals."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from ...typing import BatchingMode, Params
from .base import Backend
from .forward import call_with_capture, loop_forward
from .precision import Precision

__all__ = ["TorchFuncBackend"]


class TorchFuncBackend(Backend):
    """Stateless evaluation with :func:`torch.func.functional_call`, batched by ``bmm``, ``vmap`` or a loop.

    Args:
        model: the INR.
        batching: ``"auto"`` (default: the first of ``"bmm"``, ``"vmap"`` that runs and matches the loop on a
            probe, else ``"loop"``), ``"bmm"``, ``"vmap"`` or ``"loop"``. ``"bmm"`` needs every adapted
            parameter to belong to an ``nn.Linear``.
        adapted, precision, compile: see :class:`Backend`.
    """

    name = "torch.func"

    def __init__(
        self,
        model: nn.Module,
        batching: BatchingMode = "auto",
        adapted: list[str] | None = None,
        *,
        precision: Precision | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(model, adapted, precision=precision, compile=compile)
        if batching == "bmm" and not self._linear_only():
            raise ValueError("batching='bmm' needs every trainable parameter to belong to an nn.Linear")
        self.batching = batching

    def _linear_only(self) -> bool:
        owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in self.param_names}
        modules = dict(self.model.named_modules())
        return all(isinstance(modules.get(o), nn.Linear) for o in owners)

    def forward_capture(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.batching == "auto":
            self.batching = self._choose(params, coords)
        if self.batching == "bmm":
            with _BatchedLinear():
                return call_with_capture(lambda: functional_call(self.model, params, (coords,)), capture)
        if self.batching == "vmap":
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

    @torch.no_grad()
    def _choose(self, params: Params, coords: torch.Tensor) -> BatchingMode:
        """First batching mode that runs and reproduces the per-signal loop on a few probe points."""
        with torch.autocast(coords.device.type, enabled=False):
            probe_params = {n: p[:2].detach() for n, p in params.items()}
            probe_coords = coords[..., :8, :] if coords.ndim == 2 else coords[:2, :8]
            reference = loop_forward(self.model, probe_params, probe_coords, None)[0]
            candidates: list[BatchingMode] = ["bmm", "vmap"] if self._linear_only() else ["vmap"]
            for mode in candidates:
                self.batching = mode
                try:
                    out = self.forward_capture(probe_params, probe_coords, None)[0]
                except Exception:  # noqa: BLE001 - any failure means "this mode does not fit this model"
                    continue
                if out.shape == reference.shape and torch.allclose(out, reference, rtol=1e-4, atol=1e-5):
                    return mode
        return "loop"


class _BatchedLinear(TorchFunctionMode):
    """Turns ``F.linear`` with a batched ``[B, out, in]`` weight or ``[B, out]`` bias into a batched matmul."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.ndim == 3 or (bias is not None and bias.ndim == 2):
                return _batched_linear(x, weight, bias)
        return func(*args, **kwargs)


def _batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if weight.ndim == 3 and x.ndim == 3 and bias is not None and bias.ndim == 2:
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
    out = torch.matmul(x, weight.transpose(-1, -2))
    if bias is not None:
        out = out + (bias.unsqueeze(-2) if bias.ndim == 2 else bias)
    return out
