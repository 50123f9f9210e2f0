"""``--compare``: the speed modes against Learnit, side by side in one process.

Learnit (gamma 1, K ``--learnit-K``, L 0, lambda 0), ECoP default, ECoP ``graph_free_dtype=torch.bfloat16``,
ECoP ``compile=True`` and ECoP with both; ``bf16-all`` and ``bf16-all+compile`` lower every product of those
passes (``graph_free_full_precision=()``; the bf16 modes keep the model's input and output layers in float32 by
default) (``--compare-configs`` picks a subset; Learnit is always run). ``auto-untimed``, ``bmm``, ``vmap`` and
``loop`` set ``batching`` (or ``batching_benchmark=False``) instead: ``--compare-configs
default,auto-untimed,bmm,vmap,loop`` puts ``batching="auto"`` (timed on its first warm-up step) beside every
mode. Each configuration has its own copy of the same initial model and first takes untimed warm-up steps (two
for compiled configurations: ``torch.compile`` compiles on the first call, which can take a minute, and may
compile again for the second call's shapes); their time is reported apart as "warm-up s". Then every
configuration takes one meta-step per repeat, round-robin. Reported: median seconds, min-max and the ratio of
medians to Learnit's. A compiled configuration that fell back to eager (no C++ compiler, unsupported model) is
marked. Also reported: how often bf16 ranking changes the pruned set: along one inner loop
(``GradScaledAdapter(learner, steps=K, pruned_steps=K).fit_steps``, the same K pruned SGD steps as training, on
the ECoP default learner's initial model), at each of the K+1 parameter states the script ranks the context twice
with
``learner.evaluator(batch).errors(params)`` of two learners of that configuration on the same model, one with
``graph_free_dtype`` unset (float32) and one with it bfloat16, and counts the fraction of the top-k indices
(k = ``num_selected(M, gamma)``) of one that are not in the other's.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import warnings
from functools import partial
from typing import Any

import torch

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren
from ecop_wrap.extend import num_selected

from .common import LEARNIT, describe, ecop_hyper, learnit_hyper, meta_batch, spread, timed

SPEED_MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "bf16": {"graph_free_dtype": torch.bfloat16},
    "compile": {"compile": True},
    "bf16+compile": {"graph_free_dtype": torch.bfloat16, "compile": True},
    # the graph-free passes replayed as CUDA graphs (on a GPU; elsewhere compiled without them, after a warning)
    "cuda-graphs": {"compile": "reduce-overhead"},
    # activation checkpointing (the paper configuration's memory row)
    "checkpoint": {"checkpoint": True},
    # the bootstrap in pruned-size pieces: the default before issue 25's fourth pass
    "bootstrap-pruned": {"bootstrap_chunk": "pruned"},
    # the ranking forwards over the whole context at once: the CPU default before rank_chunk="auto"
    "rank-whole": {"rank_chunk": "whole"},
    # every product of the graph-free passes in bf16: what "bf16" measured before graph_free_full_precision
    "bf16-all": {"graph_free_dtype": torch.bfloat16, "graph_free_full_precision": ()},
    "bf16-all+compile": {"graph_free_dtype": torch.bfloat16, "graph_free_full_precision": (), "compile": True},
    # batching="auto" ("default" above: timed) against its untimed choice and every explicit mode
    "auto-untimed": {"batching_benchmark": False},
    "bmm": {"batching": "bmm"},
    "vmap": {"batching": "vmap"},
    "loop": {"batching": "loop"},
}
DEFAULT_MODES = ("default", "bf16", "compile", "bf16+compile", "bf16-all", "bf16-all+compile")
"""What ``--compare`` runs without ``--compare-configs``; ``default,auto-untimed,bmm,vmap,loop`` compares the
batching modes (the warm-up line and the JSON say what ``"auto"`` picked and the times it measured)."""


def ranking_disagreement(
    learner: ContextPruningMetaLearner, batch: tuple[torch.Tensor, torch.Tensor], steps: int
) -> dict[str, Any]:
    """How often a bf16 ranking pass keeps other points than a float32 one, along one inner loop.

    At each of the ``steps + 1`` parameter states of ``steps`` pruned SGD steps from the learner's model
    (float32 ranking), rank the context with two learners of the learner's configuration on its model, one
    with ``graph_free_dtype`` unset and one with it bfloat16, and compare the top-k sets.

    Returns:
        ``per_step``: fraction of the k kept points (mean over signals) that the bf16 set does not share with
        the float32 set, per state; ``mean``, ``max`` over states; ``k`` and ``points``.
    """
    num_points = batch[1].shape[1]
    k = num_selected(num_points, learner.config.gamma)
    adapter = GradScaledAdapter(learner, steps=steps, pruned_steps=steps, graph_free_dtype=None)
    # the learner's configuration on the same model, with float32 and with bf16 ranking passes
    rankers = [
        ContextPruningMetaLearner.from_config(learner.model, dataclasses.replace(learner.config, graph_free_dtype=d))
        for d in (None, torch.bfloat16)
    ]
    per_step = []
    for state in adapter.fit_steps(batch):
        masks = []
        for ranker in rankers:
            errors = ranker.evaluator(batch).errors(state.params)
            masks.append(torch.zeros_like(errors, dtype=torch.bool).scatter_(1, errors.topk(k, dim=1).indices, True))
        shared = (masks[0] & masks[1]).sum(dim=1).double()
        per_step.append(float((1.0 - shared / k).mean()))
    return {
        "per_step": per_step,
        "mean": statistics.fmean(per_step),
        "max": max(per_step),
        "k": k,
        "points": num_points,
    }


def _compare_learners(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, ContextPruningMetaLearner]:
    modes = [m.strip() for m in args.compare_configs.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SPEED_MODES]
    if unknown:
        raise SystemExit(f"--compare-configs: unknown {unknown}; choose from {', '.join(SPEED_MODES)}")
    learners = {LEARNIT: ContextPruningMetaLearner(copy.deepcopy(model), **learnit_hyper(args), seed=0)}
    for mode in modes:
        learners[f"ECoP {mode}"] = ContextPruningMetaLearner(
            copy.deepcopy(model), **ecop_hyper(args), **SPEED_MODES[mode], seed=0
        )
    return learners


def _warm_up(learner: ContextPruningMetaLearner, batch: Any, device: torch.device) -> tuple[float, list[str]]:
    """Untimed steps before timing (two when compiling); returns their seconds and any compile warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seconds = sum(
            timed(lambda: learner.meta_step(batch), device) for _ in range(2 if learner.config.compile else 1)
        )
    notes = sorted({str(w.message)[:160] for w in caught if str(w.message).startswith("compile=True")})
    return seconds, notes


def _timed_round_robin(
    args: argparse.Namespace, learners: dict[str, ContextPruningMetaLearner], batch: Any, device: torch.device
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {n: [] for n in learners}
    for repeat in range(args.repeats):
        for name, learner in learners.items():
            times[name].append(timed(partial(learner.meta_step, batch), device))
        print(
            f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
            flush=True,
        )
    return times


def run_compare(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time Learnit and the ECoP speed modes side by side (see the module docstring)."""
    coords, values, what = meta_batch(args, device)
    batch = (coords, values)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    learners = _compare_learners(args, model)
    warm: dict[str, dict[str, Any]] = {}
    for name, learner in learners.items():
        seconds, notes = _warm_up(learner, batch, device)
        backend = learner.backend
        times = getattr(backend, "batching_times", {})
        batching = {"batching": getattr(backend, "batching", None), "batching_times": times}
        warm[name] = {"warmup_s": seconds, "fell_back_to_eager": bool(notes), "warnings": notes, **batching}
        timed_modes = ", ".join(f"{m} {1e3 * t:.1f} ms" for m, t in batching["batching_times"].items())
        print(
            f"warm-up {name}: {seconds:.1f} s, batching {batching['batching']}"
            + (f" (timed: {timed_modes})" if timed_modes else "")
            + (f" (compile fell back to eager: {notes[0]})" if notes else ""),
            flush=True,
        )
    times = _timed_round_robin(args, learners, batch, device)
    base = statistics.median(times[LEARNIT])
    rows = {n: {**spread(t), "ratio_to_learnit": statistics.median(t) / base, **warm[n]} for n, t in times.items()}
    # ranked from the initial parameters every configuration started from (the timed learners have moved on)
    reference = ContextPruningMetaLearner(copy.deepcopy(model), **ecop_hyper(args), seed=0)
    disagreement = ranking_disagreement(reference, batch, steps=args.K)
    print(
        f"\n--compare: meta-step seconds, medians of {args.repeats} repeats (round-robin); side {args.side}, "
        f"SIREN {args.layers + 1}x{args.width}, B={args.batch}, {what}; ECoP gamma={args.gamma} K={args.K} "
        f"L={args.L} lam={args.lam} vs Learnit K={args.learnit_K}; {describe(args)}"
    )
    print_compare_rows(rows)
    print(
        f"bf16 vs float32 ranking: {100 * disagreement['mean']:.2f}% of the k={disagreement['k']} kept points differ "
        f"on average over the {len(disagreement['per_step'])} parameter states of one inner loop "
        f"(max {100 * disagreement['max']:.2f}%)"
    )
    return {"rows": rows, "ranking_disagreement": disagreement, "data": what}


def print_compare_rows(rows: dict[str, dict[str, Any]]) -> None:
    print(f"{'configuration':22s} {'median s':>9s} {'min-max s':>17s} {'x Learnit':>10s} {'warm-up s':>10s}")
    for name, r in rows.items():
        note = "  (compile fell back to eager)" if r["fell_back_to_eager"] else ""
        print(
            f"{name:22s} {r['median_s']:9.3f} {r['min_s']:8.3f}-{r['max_s']:<8.3f} {r['ratio_to_learnit']:10.2f} "
            f"{r['warmup_s']:10.1f}{note}"
        )
