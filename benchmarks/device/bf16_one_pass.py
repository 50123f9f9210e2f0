"""``benchmarks/reproduce.py`` with ``--graph-free-dtype bfloat16`` honoured by one kind of pass only.

Usage: ``python benchmarks/device/bf16_one_pass.py {rank,boot,both}[-ends] REPRODUCE_ARGS...``

* ``rank``: bf16 everywhere except inside ``ContextEvaluator.full_grad`` (so the bootstrap runs in float32);
* ``boot``: bf16 only inside ``full_grad`` (the bootstrap's passes; the adapter's full-context gradient asks
  for no low precision, so test-time fitting stays float32);
* ``both``: ranking and bootstrap, as the library's option does (only useful with ``-ends``);
* ``-ends`` (``rank-ends``, ``boot-ends``, ``both-ends``): in those bf16 passes the model's first and last
  ``nn.Linear`` run in float32 (autocast off, input cast up), so only the hidden products are bf16. For SIREN
  this keeps the first layer's large pre-activations (w0 = 30 times the coordinates' projection) and the
  predictions themselves at float32 resolution, while nearly every multiply-add (the hidden width x width
  products) is bf16.

Used for docs/benchmarks.md's split of bf16's PSNR cost. The split patches two private methods and adds module
hooks: it is a measurement aid, not an API.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

import torch
from torch import nn

from ecop_wrap._src import backends, evaluator

VARIANT = sys.argv.pop(1) if len(sys.argv) > 1 else ""
if VARIANT not in ("rank", "boot", "both", "rank-ends", "boot-ends", "both-ends"):
    raise SystemExit("usage: bf16_one_pass.py {rank,boot,both}[-ends] REPRODUCE_ARGS...")
PASS, FLOAT32_ENDS = VARIANT.split("-")[0], VARIANT.endswith("-ends")
_inside_full_grad = [False]
_in_bf16_pass = [False]
_hooked: set[int] = set()
_graph_free = backends.Backend.graph_free
_full_grad = evaluator.ContextEvaluator.full_grad


def _hook_ends(model: nn.Module) -> None:
    """First and last nn.Linear of ``model``: float32 (autocast off) whenever a bf16 pass runs."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    stack: list[torch.autocast] = []

    def before(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not _in_bf16_pass[0]:
            return None
        off = torch.autocast(args[0].device.type, enabled=False)
        off.__enter__()
        stack.append(off)
        return (args[0].float(), *args[1:])

    def after(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if _in_bf16_pass[0] and stack:
            stack.pop().__exit__(None, None, None)

    for module in {id(m): m for m in (linears[0], linears[-1])}.values():
        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)


def graph_free(self: Any, params: Any, coords: Any, layer: Any = None, *, low_precision: bool = False) -> Any:
    allowed = {"boot": _inside_full_grad[0], "rank": not _inside_full_grad[0], "both": True}[PASS]
    bf16 = low_precision and allowed and self.graph_free_dtype is not None
    if FLOAT32_ENDS and id(self.model) not in _hooked:
        _hooked.add(id(self.model))
        _hook_ends(self.model)
    _in_bf16_pass[0] = bf16
    try:
        return _graph_free(self, params, coords, layer, low_precision=bf16)
    finally:
        _in_bf16_pass[0] = False


def full_grad(self: Any, *args: Any, **kwargs: Any) -> Any:
    _inside_full_grad[0] = True
    try:
        return _full_grad(self, *args, **kwargs)
    finally:
        _inside_full_grad[0] = False


backends.Backend.graph_free = graph_free  # type: ignore[method-assign]
evaluator.ContextEvaluator.full_grad = full_grad  # type: ignore[method-assign]
where = {"rank": "ranking", "boot": "bootstrap", "both": "ranking and bootstrap"}[PASS]
print(f"bf16 only in: {where}{' (first and last Linear in float32)' if FLOAT32_ENDS else ''}", flush=True)
sys.argv[0] = "benchmarks/reproduce.py"
runpy.run_path("benchmarks/reproduce.py", run_name="__main__")
