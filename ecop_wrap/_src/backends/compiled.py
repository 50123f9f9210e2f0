"""``torch.compile`` of a backend's graph-free forward, with a cache large enough for a process's learners."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch

from ...typing import Params
from ..validation import user_stacklevel

__all__ = ["CUDA_GRAPH_MODES", "RECOMPILE_LIMIT", "CompiledForward"]

RECOMPILE_LIMIT = 64
"""Cached graphs allowed for the compiled forward (raised from torch's default of 8 for these calls only).

Every backend in a process shares the one compiled function's cache (torch keys it on the code object), and
each model, batch size, pruned-set size, grad mode and autocast dtype adds a graph: a learner with its
adapters needs about 6, so torch's default would run a second learner with another model eagerly, silently.
"""

Forward = Callable[[Params, torch.Tensor], torch.Tensor]


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""``torch.compile`` modes that capture CUDA graphs (cudagraph trees) on CUDA tensors."""


class CompiledForward:
    """``forward(params, coords)`` through :func:`torch.compile`, falling back to eager with one warning.

    Args:
        forward: the eager forward (``[B, *shape]`` params, coords -> ``[B, M, D]``).
        mode: ``torch.compile``'s mode (``True``: ``"default"``). A CUDA-graph mode (:data:`CUDA_GRAPH_MODES`)
            off CUDA warns once and compiles in ``"default"`` mode; on CUDA each output is cloned, since the
            next replay of a CUDA graph overwrites the memory its outputs live in.
    """

    def __init__(self, forward: Forward, mode: bool | str = "default") -> None:
        self.eager = forward
        self.option = mode  # as the user spelled it, for messages
        self.mode = "default" if mode is True else str(mode)
        self.compiled: Forward | None = None
        self.failed = False
        self._warned_limit = False
        self._graphs = False

    def __call__(self, params: Params, coords: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.eager(params, coords)
        if self.compiled is None:
            self.eager(params, coords)  # settles lazy choices (batching="auto") eagerly, outside compiled code
            mode = self._mode_for(coords.device)
            if mode == "default":  # no mode argument: the same call as compile=True always made
                self.compiled = torch.compile(self.eager, dynamic=False)
            else:
                self.compiled = torch.compile(self.eager, dynamic=False, mode=mode)
        limits, limit_hit = _recompile_limits()
        try:
            with limits:
                out = self.compiled(params, coords)
            return out.clone() if self._graphs else out
        except limit_hit:  # the graphs compiled so far stay in use; this new shape or mode runs eagerly
            self._warn_limit()
            return self.eager(params, coords)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: warn once, run eagerly from now on
            self.failed = True
            warnings.warn(
                f"compile={self.option!r}: torch.compile failed for this model ({type(exc).__name__}: "
                f"{str(exc)[:200]}); the graph-free passes run eagerly instead",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            return self.eager(params, coords)

    def _mode_for(self, device: torch.device) -> str:
        """The mode to compile with on ``device``: a CUDA-graph mode only on CUDA (else one warning)."""
        if self.mode not in CUDA_GRAPH_MODES:
            return self.mode
        if device.type == "cuda":
            self._graphs = True
            return self.mode
        warnings.warn(
            f"compile={self.option!r} captures CUDA graphs, which need CUDA tensors; on {device.type} the "
            'graph-free passes are compiled in torch.compile\'s "default" mode instead',
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
        return "default"

    def _warn_limit(self) -> None:
        if self._warned_limit:
            return
        self._warned_limit = True
        warnings.warn(
            f"compile={self.option!r}: torch.compile's cache of the graph-free forward is full (one graph per "
            f"model, shape, grad mode and dtype in this process; at least {RECOMPILE_LIMIT}); passes that need a new "
            "graph run eagerly. Set torch._dynamo.config.recompile_limit higher, or call torch._dynamo.reset() between "
            "unrelated runs",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )


class _NeverRaisedError(Exception):
    """Stands for torch's recompile-limit exception on versions without one."""


def _recompile_limits() -> tuple[contextlib.AbstractContextManager[object], type[Exception]]:
    """A context raising the compiled forward's cache to :data:`RECOMPILE_LIMIT` graphs (never lowering the
    user's setting) and turning a full cache into an exception instead of torch's silent eager fallback; and
    that exception's type."""
    import torch._dynamo  # loaded by torch.compile anyway; kept off `import ecop_wrap`

    config, exc_module = torch._dynamo.config, torch._dynamo.exc
    limit_hit = getattr(exc_module, "FailOnRecompileLimitHit", None)
    if limit_hit is None or not hasattr(config, "recompile_limit"):  # older torch: its defaults
        return contextlib.nullcontext(), _NeverRaisedError
    limit = max(RECOMPILE_LIMIT, int(config.recompile_limit))
    return config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True), limit_hit
