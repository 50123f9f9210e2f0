"""``--phases``: where one meta-step's time goes.

One ECoP meta-step (``--gamma --K --L``, defaults .25, 16, 5) and one Learnit meta-step (gamma 1, ``--learnit-K``
4, L 0, lambda 0), each after one untimed warm-up step, run ``--repeats`` times alternately under
``torch.profiler`` (CPU activity), each step inside a ``speed.meta_step`` range. For every ``ecop.*`` range the
library opens (ranking, pruned_forward, inner_gradient, bootstrap, outer_loss, outer_backward, all_reduce,
optimizer) the table gives its self + children CPU time (``key_averages().cpu_time_total``, summed over its
calls in the step). A range that runs inside another ``ecop.*`` range (found by walking each event's
``cpu_parent``: e.g. under ``checkpoint=True`` the recomputed pruned forwards run inside
``ecop.outer_backward``, and with it inside ``ecop.inner_gradient``) is reported on a row of its own, "X in Y",
and is already counted in Y's row; so the rows that are not nested, plus "outside any ecop.* range" (the step's
time not covered by a top-level range: selection bookkeeping, parameter updates, the profiler itself), add up
to the step. Rows are medians over repeats; shares are each row's time summed over repeats divided by the
step's summed over repeats, so that the shares of the top-level rows and "outside" add up to 100% exactly. The
profiler records every operator, which inflates small operators more than large ones: use the shares, not the
absolute times, and ``--compare`` for times. ``--phases-settings checkpoint=True,chunk_size=16384`` profiles both
methods in a memory mode (any learner keyword, as Python literals).
"""

from __future__ import annotations

import argparse
import ast
import copy
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ecop_wrap import ContextPruningMetaLearner, Siren

from .common import LEARNIT, describe, ecop_hyper, learnit_hyper, meta_batch

PHASES = (
    "ecop.ranking",
    "ecop.pruned_forward",
    "ecop.inner_gradient",
    "ecop.bootstrap",
    "ecop.outer_loss",
    "ecop.outer_backward",
    "ecop.all_reduce",
    "ecop.optimizer",
)
STEP_RANGE = "speed.meta_step"
OUTSIDE = "outside any ecop.* range"


def enclosing_range(event: Any, prefix: str = "ecop.") -> str | None:
    """Name of the nearest range or op named ``prefix...`` around a profiler event (None: none, up to its
    thread's root)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(prefix):
            return str(parent.name)
        parent = parent.cpu_parent
    return None


def phase_times(prof: Any) -> dict[str, float]:
    """Milliseconds per row of the phase table for one profiled step.

    Keys: every ``ecop.*`` range name (its calls that are not inside another ``ecop.*`` range), ``"X in Y"``
    (calls of X nested in range Y, already counted in Y), :data:`OUTSIDE` and ``"step"``.
    """
    totals = {
        e.key: e.cpu_time_total / 1e3 for e in prof.key_averages() if e.key.startswith("ecop.") or e.key == STEP_RANGE
    }
    nested: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name.startswith("ecop."):
            parent = enclosing_range(event)
            if parent is not None:
                nested[f"{event.name} in {parent}"] += event.cpu_time_total / 1e3
    rows: dict[str, float] = {"step": totals.get(STEP_RANGE, 0.0)}
    for name in sorted(n for n in totals if n != STEP_RANGE):
        inside = sum(ms for key, ms in nested.items() if key.startswith(name + " in "))
        rows[name] = totals[name] - inside
    rows.update(nested)
    top_level = sum(ms for key, ms in rows.items() if key.startswith("ecop.") and " in " not in key)
    rows[OUTSIDE] = rows["step"] - top_level
    return rows


def _profiled_step(learner: ContextPruningMetaLearner, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CPU]) as prof, record_function(STEP_RANGE):
        learner.meta_step(batch)
    return phase_times(prof)


def _row_order(keys: Iterable[str]) -> list[str]:
    keys = set(keys) - {"step", OUTSIDE}
    top = [p for p in PHASES if p in keys] + sorted(k for k in keys if " in " not in k and k not in PHASES)
    nested = sorted(k for k in keys if " in " in k)
    return [*top, OUTSIDE, *nested, "step"]


def _table(runs: dict[str, list[dict[str, float]]], keys: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and row: the median milliseconds over repeats and the share of the summed step time."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, rows in runs.items():
        step_sum = sum(r["step"] for r in rows)
        table[name] = {
            key: {
                "median_ms": statistics.median(r.get(key, 0.0) for r in rows),
                "share": sum(r.get(key, 0.0) for r in rows) / step_sum if step_sum > 0 else 0.0,
            }
            for key in keys
        }
    return table


def parse_settings(text: str) -> dict[str, Any]:
    """``--phases-settings``: ``"checkpoint=True,chunk_size=16384"`` -> keyword arguments (Python literals,
    else strings)."""
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--phases-settings: expected KEY=VALUE, got {item!r}")
        try:
            settings[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            settings[key.strip()] = value.strip()
    return settings


def run_phases(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Profile ECoP and Learnit meta-steps and print the per-phase table (see the module docstring)."""
    coords, values, what = meta_batch(args, device)
    batch = (coords, values)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    settings = parse_settings(getattr(args, "phases_settings", ""))
    learners = {
        "ECoP": ContextPruningMetaLearner(copy.deepcopy(model), **ecop_hyper(args), **settings, seed=0),
        LEARNIT: ContextPruningMetaLearner(copy.deepcopy(model), **learnit_hyper(args), **settings, seed=0),
    }
    for learner in learners.values():
        learner.meta_step(batch)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in learners}
    for _ in range(args.repeats):
        for name, learner in learners.items():
            runs[name].append(_profiled_step(learner, batch))
    keys = _row_order({k for rows in runs.values() for r in rows for k in r})
    table = _table(runs, keys)
    print(
        f"\n--phases: one meta-step profiled (CPU activity), medians of {args.repeats} repeats; side {args.side}, "
        f"SIREN {args.layers + 1}x{args.width}, B={args.batch}, {what}; ECoP gamma={args.gamma} K={args.K} "
        f"L={args.L} vs Learnit K={args.learnit_K}; settings {settings or 'default'}; {describe(args)}"
    )
    print(f"{'phase (self + children CPU time)':44s} {'ECoP ms':>10s} {'share':>7s} {'Learnit ms':>11s} {'share':>7s}")
    for key in keys:
        label = "step total (profiled)" if key == "step" else (f"  ({key}: counted above)" if " in " in key else key)
        cells = [f"{table[n][key]['median_ms']:10.1f} {100 * table[n][key]['share']:6.1f}%" for n in ("ECoP", LEARNIT)]
        print(f"{label:44s} {cells[0]} {' ' + cells[1]}")
    ratio = table["ECoP"]["step"]["median_ms"] / max(table[LEARNIT]["step"]["median_ms"], 1e-9)
    print(f"{'ECoP / Learnit profiled step':44s} {ratio:10.2f}x")
    used = {k: str(v) for k, v in settings.items()}
    return {"rows": keys, "table": table, "runs": runs, "data": what, "settings": used}
