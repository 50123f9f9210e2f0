"""``benchmarks/reproduce`` with ``--graph-free-dtype bfloat16`` honoured by one kind of pass only.

Usage: ``python benchmarks/device/bf16_one_pass.py {rank,boot,both}[-ends] REPRODUCE_ARGS...``

* ``rank``: bf16 everywhere except inside ``ContextEvaluator.full_grad`` (so the bootstrap runs in float32);
* ``boot``: bf16 only inside ``full_grad`` (the bootstrap's passes; the adapter's full-context gradient asks
  for no low precision, so test-time fitting stays float32);
* ``both``: ranking and bootstrap, as the library's option does (only useful with ``-ends``);
* ``-ends`` (``rank-ends``, ``boot-ends``, ``both-ends``): the library's default
  ``graph_free_full_precision="ends"`` (the model's first and last ``nn.Linear`` in float32 inside the bf16
  passes); without the suffix, ``--graph-free-full-precision none`` is passed to ``reproduce`` and every
  product of those passes is bf16. (Until the library had the option, this script kept the ends in float32
  with module hooks; its three ``-ends`` results in docs/benchmarks.md were measured that way. The library's
  wrappers give the same numbers: checked equal, bit for bit, on a SIREN's bf16 pass.)

Used for docs/benchmarks.md's split of bf16's PSNR cost. ``reproduce.py`` builds its learners and adapters
itself, so the split wraps two methods of the extension classes (``ecop_wrap.extend``) for the whole process:
``Backend.graph_free`` (every graph-free pass; its ``low_precision`` flag is where bf16 is asked for) and
``ContextEvaluator.full_grad`` (the bootstrap's and the adapter's full-context gradient). A measurement aid, not
an API.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

from ecop_wrap.extend import Backend, ContextEvaluator

VARIANT = sys.argv.pop(1) if len(sys.argv) > 1 else ""
if VARIANT not in ("rank", "boot", "both", "rank-ends", "boot-ends", "both-ends"):
    raise SystemExit("usage: bf16_one_pass.py {rank,boot,both}[-ends] REPRODUCE_ARGS...")
PASS, FLOAT32_ENDS = VARIANT.split("-")[0], VARIANT.endswith("-ends")
_inside_full_grad = [False]
_graph_free = Backend.graph_free
_full_grad = ContextEvaluator.full_grad


def graph_free(self: Any, *args: Any, low_precision: bool = False, **kwargs: Any) -> Any:
    allowed = {"boot": _inside_full_grad[0], "rank": not _inside_full_grad[0], "both": True}[PASS]
    return _graph_free(self, *args, low_precision=low_precision and allowed, **kwargs)


def full_grad(self: Any, *args: Any, **kwargs: Any) -> Any:
    _inside_full_grad[0] = True
    try:
        return _full_grad(self, *args, **kwargs)
    finally:
        _inside_full_grad[0] = False


Backend.graph_free = graph_free  # type: ignore[method-assign]
ContextEvaluator.full_grad = full_grad  # type: ignore[method-assign]
where = {"rank": "ranking", "boot": "bootstrap", "both": "ranking and bootstrap"}[PASS]
print(f"bf16 only in: {where}{' (first and last Linear in float32)' if FLOAT32_ENDS else ''}", flush=True)
# benchmarks/reproduce, the package (run through its __main__.py), or the single script it replaced
REPRODUCE = "benchmarks/reproduce" if os.path.isfile("benchmarks/reproduce/__main__.py") else "benchmarks/reproduce.py"
sys.argv[0] = REPRODUCE
if not FLOAT32_ENDS:
    sys.argv += ["--graph-free-full-precision", "none"]
runpy.run_path(REPRODUCE, run_name="__main__")
