"""``--ops``: how many top-level aten ops one meta-step dispatches, ECoP against Learnit, per batching mode.

One ECoP meta-step (``--gamma --K --L``) and one Learnit meta-step (gamma 1, ``--learnit-K``, L 0, lambda 0)
for each backend configuration (``--ops-configs``: the default ``batching="auto"``, torch.func ``bmm``,
``vmap``, ``loop`` and ``backend="higher"``), each after one untimed warm-up step, run ``--repeats`` times
under ``torch.profiler`` (CPU activity). Counted: the profiler's events named ``aten::*`` that do not run
inside another aten op (no ``aten::`` event among their ``cpu_parent``s), i.e. the ops Python and the autograd
engine dispatch, not the ones an op calls internally (``aten::linear`` counts once, not with its
``aten::addmm``); the backward's ops count too (their parent is the engine's ``evaluate_function`` range, not
an op). On a GPU each such op is at least one kernel launch. Counts per step are medians over the repeats (they
repeat exactly; a note is printed where they do not). Reported: ECoP's and Learnit's counts per configuration
and their ratio; in the JSON also, per method and configuration, the count inside each ``ecop.*`` range (its
innermost one; "outside any ecop.* range" for the rest) and per op name. ``--ops-before JSON`` (an earlier
``--ops`` JSON, e.g. of the code before a change) adds its counts to the table and prints every configuration's
per-range counts as ``before -> now``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections import Counter
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ecop_wrap import ContextPruningMetaLearner, Siren

from .common import LEARNIT, describe, ecop_hyper, learnit_hyper, meta_batch
from .phases import OUTSIDE, enclosing_range

OPS_CONFIGS: dict[str, dict[str, Any]] = {
    "default (auto)": {},
    "torch.func bmm": {"backend": "torch.func", "batching": "bmm"},
    "torch.func vmap": {"backend": "torch.func", "batching": "vmap"},
    "torch.func loop": {"backend": "torch.func", "batching": "loop"},
    "higher": {"backend": "higher"},
    "bmm + bootstrap pruned": {"backend": "torch.func", "batching": "bmm", "bootstrap_chunk": "pruned"},
    # the graph-free passes replayed as CUDA graphs (a GPU's configuration: off CUDA it compiles without them)
    "bmm + cuda graphs": {"backend": "torch.func", "batching": "bmm", "compile": "reduce-overhead"},
}
DEFAULT_OPS_CONFIGS = tuple(name for name in OPS_CONFIGS if name != "bmm + cuda graphs")
"""What ``--ops`` counts without ``--ops-configs`` (compiling is slow on a CPU and means nothing there)."""
ECOP = "ECoP"
TOP_OPS_SHOWN = 12


def top_level_ops(prof: Any) -> list[Any]:
    """The profiled ``aten::*`` events that no other ``aten::*`` event encloses."""
    return [e for e in prof.events() if e.name.startswith("aten::") and enclosing_range(e, "aten::") is None]


def count_ops(learner: ContextPruningMetaLearner, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """One profiled meta-step: its top-level aten ops in total, per ``ecop.*`` range and per op name."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learner.meta_step(batch)
    ops = top_level_ops(prof)
    per_range = Counter(enclosing_range(e) or OUTSIDE for e in ops)
    per_name = Counter(e.name for e in ops)
    return {"total": len(ops), "per_range": dict(sorted(per_range.items())), "per_op": dict(per_name.most_common())}


def _configs(args: argparse.Namespace) -> list[str]:
    names = [c.strip() for c in args.ops_configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in OPS_CONFIGS]
    if unknown:
        raise SystemExit(f"--ops-configs: unknown {unknown}; choose from {', '.join(OPS_CONFIGS)}")
    return names


def _counted(args: argparse.Namespace, learner: ContextPruningMetaLearner, batch: Any, label: str) -> dict[str, Any]:
    """Warm-up step, then ``--repeats`` profiled steps: the median total and the first step's split."""
    learner.meta_step(batch)
    runs = [count_ops(learner, batch) for _ in range(args.repeats)]
    totals = [r["total"] for r in runs]
    if len(set(totals)) > 1:
        print(f"note: {label}'s op counts differ between steps: {totals}")
    batching = getattr(learner.backend, "batching", None)  # what "auto" chose; None for the higher backend
    backend = type(learner.backend).__name__
    return {**runs[0], "total": statistics.median(totals), "totals": totals, "backend": backend, "batching": batching}


def run_ops(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Count ECoP's and Learnit's top-level ops per configuration and print the table (see the docstring)."""
    coords, values, what = meta_batch(args, device)
    batch = (coords, values)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    hypers = {ECOP: ecop_hyper(args), LEARNIT: learnit_hyper(args)}
    rows: dict[str, dict[str, Any]] = {}
    for config in _configs(args):
        counts = {}
        for method, hyper in hypers.items():
            learner = ContextPruningMetaLearner(copy.deepcopy(model), **hyper, **OPS_CONFIGS[config], seed=0)
            counts[method] = _counted(args, learner, batch, f"{method} {config}")
        rows[config] = {**counts, "ratio": counts[ECOP]["total"] / max(counts[LEARNIT]["total"], 1)}
        print(f"counted {config}: ECoP {counts[ECOP]['total']:g}, Learnit {counts[LEARNIT]['total']:g}", flush=True)
    before = _before(args)
    _print_ops(args, rows, what, before)
    result: dict[str, Any] = {"rows": rows, "data": what}
    if before is not None:
        result["before"] = {"path": args.ops_before, "rows": before}
    return result


def _before(args: argparse.Namespace) -> dict[str, Any] | None:
    """The rows of the ``--ops-before`` JSON (None without it)."""
    path = getattr(args, "ops_before", None)
    if not path:
        return None
    with open(path) as f:
        payload = json.load(f)
    rows = payload.get("ops", payload).get("rows")
    if not isinstance(rows, dict):
        raise SystemExit(f"--ops-before {path}: no --ops rows in it")
    return rows


def _print_ops(
    args: argparse.Namespace, rows: dict[str, dict[str, Any]], what: str, before: dict[str, Any] | None = None
) -> None:
    print(
        f"\n--ops: top-level aten ops per meta-step (torch.profiler, CPU activity), medians of {args.repeats} "
        f"steps; side {args.side}, SIREN {args.layers + 1}x{args.width}, B={args.batch}, {what}; ECoP "
        f"gamma={args.gamma} K={args.K} L={args.L} vs Learnit K={args.learnit_K}; {describe(args)}"
    )
    header = f"{'configuration':22s} {'batching':>13s} {'ECoP ops':>9s} {'Learnit ops':>12s} {'ECoP / Learnit':>15s}"
    if before is not None:
        header += f" {'before: ECoP':>13s} {'Learnit':>8s} {'ratio':>7s}"
    print(header)
    for config, row in rows.items():
        batching = row[ECOP]["batching"] or row[ECOP]["backend"]
        ecop, learnit = row[ECOP]["total"], row[LEARNIT]["total"]
        line = f"{config:22s} {batching:>13s} {ecop:9g} {learnit:12g} {row['ratio']:14.2f}x"
        if before is not None and config in before:
            old = before[config]
            line += f" {old[ECOP]['total']:13g} {old[LEARNIT]['total']:8g} {old['ratio']:6.2f}x"
        print(line)
    for config, row in rows.items():
        for method in (ECOP, LEARNIT):
            now = row[method]["per_range"]
            if before is not None and config in before:
                old = before[config][method]["per_range"]
                names = sorted(set(now) | set(old))
                split = ", ".join(f"{_short(n)} {old.get(n, 0)} -> {now.get(n, 0)}" for n in names)
            else:
                split = ", ".join(f"{_short(n)} {k}" for n, k in now.items())
            print(f"{method} {config}, per range: {split}")
    first = next(iter(rows))
    for method in (ECOP, LEARNIT):
        common = ", ".join(f"{name[6:]} {n}" for name, n in list(rows[first][method]["per_op"].items())[:TOP_OPS_SHOWN])
        print(f"{method} {first}, most frequent: {common}")


def _short(range_name: str) -> str:
    return range_name[5:] if range_name.startswith("ecop.") else range_name
