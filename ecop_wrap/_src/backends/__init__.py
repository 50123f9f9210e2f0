"""Backends: how a model is evaluated with per-signal ("fast") parameters.

Everything else in the library (selection, inner loop, bootstrap, outer step, test-time fitting) works on a
dict ``params`` of parameter name -> tensor with a leading batch dimension ``B`` and calls
``backend(params, coords)``. A backend only decides how those B parameter sets meet the model:

* ``"torch.func"`` (:mod:`.torch_func`) evaluates the user's module statelessly with
  :func:`torch.func.functional_call`, batched by ``"bmm"``, ``"vmap"`` or ``"loop"`` (``"auto"`` picks);
* ``"higher"`` (:mod:`.higher`) evaluates a :func:`higher.monkeypatch` copy of the module, one signal at a time.

Around that, one precision policy (:mod:`.precision`) and optional compilation (:mod:`.compiled`), both given
when the backend is built. Gradients always come from :func:`torch.autograd.grad`, so both backends are
differentiable to any order and both work under non-reentrant activation checkpointing.
"""

from __future__ import annotations

from typing import get_args

from torch import nn

from ...typing import BackendName, BatchingMode
from .base import Backend
from .compiled import RECOMPILE_LIMIT, CompiledForward
from .higher import HigherBackend
from .precision import Precision, resolve_full_precision
from .torch_func import TorchFuncBackend

__all__ = [
    "BACKENDS",
    "BATCHING_MODES",
    "RECOMPILE_LIMIT",
    "Backend",
    "CompiledForward",
    "HigherBackend",
    "Precision",
    "TorchFuncBackend",
    "make_backend",
    "resolve_full_precision",
]

BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
BATCHING_MODES: tuple[BatchingMode, ...] = get_args(BatchingMode)


def make_backend(
    name: BackendName,
    model: nn.Module,
    batching: BatchingMode = "auto",
    adapted: list[str] | None = None,
    *,
    precision: Precision | None = None,
    compile: bool | str = False,
    benchmark: bool = True,
) -> Backend:
    """Build the backend called ``name`` (one of :data:`BACKENDS`) for ``model``, complete.

    Args:
        name: ``"torch.func"`` or ``"higher"``.
        model: the INR.
        batching: the torch.func batching mode (``"auto"``, ``"bmm"``, ``"vmap"``, ``"loop"``).
        adapted: names of the parameters that will be passed per signal (default: every trainable one).
        precision: the autocast policy (default: the model's dtype everywhere).
        compile: ``torch.compile`` the graph-free forwards (``True`` or a ``torch.compile`` mode).
        benchmark: with ``batching="auto"``, time the correct modes on the first call and keep the fastest.
    """
    if batching not in BATCHING_MODES:
        raise ValueError(f"batching must be one of {BATCHING_MODES}, got {batching!r}")
    if name == "torch.func":
        return TorchFuncBackend(model, batching, adapted, precision=precision, compile=compile, benchmark=benchmark)
    if name == "higher":
        if batching not in ("auto", "loop"):
            raise ValueError(f"the higher backend runs one signal at a time; batching={batching!r} is not supported")
        return HigherBackend(model, adapted, precision=precision, compile=compile)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
