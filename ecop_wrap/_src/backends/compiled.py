"""``torch.compile`` of a backend's graph-free forward, with a cache large enough for a process's learners."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch

from ...typing import Params
from ..validation import user_stacklevel

__all__ = ["RECOMPILE_LIMIT", "CompiledForward"]

RECOMPILE_LIMIT = 64
"""Cached graphs allowed for the compiled forward (raised from torch's default of 8 for these calls only).

Every backend in a process shares the one compiled function's cache (torch keys it on the code object), and
each model, batch size, pruned-set size, grad mode and autocast dtype adds a graph: a learner with its
adapters needs about 6, so torch's default would run a second learner with another model eagerly, silently.
"""

Forward = Callable[[Params, torch.Tensor], torch.Tensor]


class CompiledForward:
    """``forward(params, coords)`` through :func:`torch.compile`, falling back to eager with one warning.

    Args:
        forward: the eager forward (``[B, *shape]`` params, coords -> ``[B, M, D]``).
    """

    def __init__(self, forward: Forward) -> None:
        self.eager = forward
        self.compiled: Forward | None = None
        self.failed = False
        self._warned_limit = False

    def __call__(self, params: Params, coords: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.eager(params, coords)
        if self.compiled is None:
            self.eager(params, coords)  # settles lazy choices (batching="auto") eagerly, outside compiled code
            self.compiled = torch.compile(self.eager, dynamic=False)
        limits, limit_hit = _recompile_limits()
        try:
            with limits:
                return self.compiled(params, coords)
        except limit_hit:  # the graphs compiled so far stay in use; this new shape or mode runs eagerly
            self._warn_limit()
            return self.eager(params, coords)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: warn once, run eagerly from now on
            self.failed = True
            warnings.warn(
                f"compile=True: torch.compile failed for this model ({type(exc).__name__}: {str(exc)[:200]}); "
                "the graph-free passes run eagerly instead",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            return self.eager(params, coords)

    def _warn_limit(self) -> None:
        if self._warned_limit:
            return
        self._warned_limit = True
        warnings.warn(
            "compile=True: torch.compile's cache of the graph-free forward is full (one graph per model, shape, "
            f"grad mode and dtype in this process; at least {RECOMPILE_LIMIT}); passes that need a new graph run "
            "eagerly. Set torch._dynamo.config.recompile_limit higher, or call torch._dynamo.reset() between "
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
