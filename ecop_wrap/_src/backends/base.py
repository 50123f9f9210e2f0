"""The :class:`Backend` interface: a model evaluated with per-signal parameters, in the precision asked for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ...typing import Params
from .compiled import CompiledForward
from .forward import loop_forward
from .precision import Precision

__all__ = ["Backend"]


class Backend:
    """Evaluates ``model`` with batched parameters; complete when built (precision and compilation included).

    Subclasses decide only how the B parameter sets meet the model (:meth:`forward_capture`).

    Args:
        model: the INR.
        adapted: names of the parameters passed per signal (default: every trainable one); the others are
            the model's own, shared by every signal.
        precision: the autocast policy (default: the model's dtype everywhere).
        compile: run the graph-free forwards through :func:`torch.compile` (``True``: its default mode; a
            string: that mode, e.g. ``"reduce-overhead"`` for CUDA graphs).
    """

    name: str = "base"

    def __init__(
        self,
        model: nn.Module,
        adapted: list[str] | None = None,
        *,
        precision: Precision | None = None,
        compile: bool | str = False,
    ) -> None:
        self.model = model
        self.param_names = (
            adapted if adapted is not None else [n for n, p in model.named_parameters() if p.requires_grad]
        )
        self.precision = precision if precision is not None else Precision(model)
        self.compiler = CompiledForward(self._prediction, compile) if compile else None
        self._memo: tuple[Params, dict[Any, Any]] | None = None

    @contextlib.contextmanager
    def reusing(self, params: Params, memo: dict[Any, Any]) -> Iterator[None]:
        """Within this block, passes over ``params`` (this very dict) may keep in ``memo`` what they derive from
        its tensors alone, and take it from there on the next pass over them; the caller owns ``memo`` and
        decides how long it lives (:class:`~ecop_wrap._src.evaluator.ContextEvaluator`: one per parameter set,
        for the evaluator's life). What is kept must be exactly what the pass would compute again, so results
        do not change. Backends that keep nothing ignore it."""
        previous, self._memo = self._memo, (params, memo)
        try:
            yield
        finally:
            self._memo = previous

    def memo_for(self, params: Params) -> dict[Any, Any] | None:
        """The memo of :meth:`reusing` if ``params`` is its parameter set and it may be used here (not while
        ``torch.compile`` traces, nor under inference mode), else None."""
        memo = self._memo
        if memo is None or memo[0] is not params or torch.compiler.is_compiling():
            return None
        return None if torch.is_inference_mode_enabled() else memo[1]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self.precision.autocast_dtype

    @property
    def graph_free_dtype(self) -> torch.dtype | None:
        return self.precision.graph_free_dtype

    @property
    def compile(self) -> bool:
        return self.compiler is not None

    def __call__(self, params: Params, coords: torch.Tensor) -> torch.Tensor:
        """Evaluate every signal's INR on its coordinates.

        Args:
            params: name -> ``[B, *param_shape]`` per-signal parameters (a subset of the model's parameters
                is fine: the others are the model's own, shared by every signal).
            coords: ``[B, M, C]`` per-signal or ``[M, C]`` shared coordinates.

        Returns:
            ``[B, M, D]`` predictions; under ``autocast_dtype`` computed in that dtype, returned in ``coords``'s.
        """
        return self.capture(params, coords, None)[0]

    def capture(
        self, params: Params, coords: torch.Tensor, layer: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`__call__`, also returning the ``[B, M, F]`` input of submodule ``layer`` (if not None)."""
        dtype = self.precision.autocast_dtype
        if dtype is None:
            return self.forward_capture(params, coords, layer)
        with torch.autocast(coords.device.type, dtype=dtype):
            out, cap = self.forward_capture(params, coords, layer)
        return out.to(coords.dtype), (cap.to(coords.dtype) if cap is not None else None)

    def graph_free(
        self, params: Params, coords: torch.Tensor, layer: nn.Module | None = None, *, low_precision: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`capture` for a pass whose graph never reaches theta_0 (ranking, bootstrap, test-time steps).

        With ``compile`` the forward runs through :func:`torch.compile`; with ``low_precision`` and
        ``graph_free_dtype`` set it runs under ``torch.autocast`` in that dtype, the precision policy's
        full-precision modules excepted. Results come back in ``coords``'s dtype.
        """
        dtype = self.precision.graph_free_dtype if low_precision else None
        if dtype is None:
            return self._maybe_compiled(params, coords, layer)
        with self.precision.low_precision_pass(params, coords, dtype):
            out, cap = self._maybe_compiled(params, coords, layer)
        return out.to(coords.dtype), (cap.to(coords.dtype) if cap is not None else None)

    def _maybe_compiled(
        self, params: Params, coords: torch.Tensor, layer: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.compiler is None or layer is not None:
            return self.capture(params, coords, layer)
        return self.compiler(params, coords), None

    def _prediction(self, params: Params, coords: torch.Tensor) -> torch.Tensor:
        return self.capture(params, coords, None)[0]

    def forward_capture(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The forward (no autocast of its own), also returning the ``[B, M, F]`` input of ``capture``."""
        return loop_forward(self.model, params, coords, capture)
