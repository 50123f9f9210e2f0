"""``benchmarks/reproduce.py`` with ``--graph-free-dtype bfloat16`` honoured by one kind of pass only.

Usage: ``python benchmarks/device/bf16_one_pass.py {rank,boot} REPRODUCE_ARGS...``

* ``rank``: bf16 everywhere except inside ``ContextEvaluator.full_grad`` (so the bootstrap runs in float32);
* ``boot``: bf16 only inside ``full_grad`` (the bootstrap's passes; the adapter's full-context gradient asks
  for no low precision, so test-time fitting stays float32).

Used for docs/benchmarks.md's split of bf16's PSNR cost. The split patches two private methods: it is a
measurement aid, not an API.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

from ecop_wrap._src import backends, evaluator

VARIANT = sys.argv.pop(1) if len(sys.argv) > 1 else ""
if VARIANT not in ("rank", "boot"):
    raise SystemExit("usage: bf16_one_pass.py {rank,boot} REPRODUCE_ARGS...")
_inside_full_grad = [False]
_graph_free = backends.Backend.graph_free
_full_grad = evaluator.ContextEvaluator.full_grad


def graph_free(self: Any, params: Any, coords: Any, layer: Any = None, *, low_precision: bool = False) -> Any:
    allowed = _inside_full_grad[0] if VARIANT == "boot" else not _inside_full_grad[0]
    return _graph_free(self, params, coords, layer, low_precision=low_precision and allowed)


def full_grad(self: Any, *args: Any, **kwargs: Any) -> Any:
    _inside_full_grad[0] = True
    try:
        return _full_grad(self, *args, **kwargs)
    finally:
        _inside_full_grad[0] = False


backends.Backend.graph_free = graph_free  # type: ignore[method-assign]
evaluator.ContextEvaluator.full_grad = full_grad  # type: ignore[method-assign]
print(f"bf16 only in: {'ranking' if VARIANT == 'rank' else 'bootstrap'}", flush=True)
sys.argv[0] = "benchmarks/reproduce.py"
runpy.run_path("benchmarks/reproduce.py", run_name="__main__")
