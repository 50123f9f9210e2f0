"""Speed of meta-training and test-time fitting: backends, ECoP's phases, the speed modes, time to quality.

Usage (each flag selects one measurement; without any flag the script runs the backend comparison)::

    python benchmarks/speed.py --side 64 --width 256 --layers 4 --batch 8 --repeats 5 --json out.json
    python benchmarks/speed.py --phases  --threads 1 --json benchmarks/results/speed_phases.json
    python benchmarks/speed.py --compare --threads 1,2 --json benchmarks/results/speed_compare.json
    python benchmarks/speed.py --fit --threads 1 --json benchmarks/results/speed_fit.json

Default (backends). Every configuration is first checked to give the same meta-gradient as the plain loop
(float32, rtol 1e-3), then timed ``--repeats`` times, round-robin across configurations so that machine noise
hits all of them alike. Reported: median seconds, min-max spread and the ratio to the plain loop measured in
the same run. Values are uniform noise.

``--phases``: where one meta-step's time goes. One ECoP meta-step (``--gamma --K --L``, defaults .25, 16, 5)
and one Learnit meta-step (gamma 1, ``--learnit-K`` 4, L 0, lambda 0), each after one untimed warm-up step,
run ``--repeats`` times alternately under ``torch.profiler`` (CPU activity), each step inside a
``speed.meta_step`` range. For every ``ecop.*`` range the library opens (ranking, pruned_forward,
inner_gradient, bootstrap, outer_loss, outer_backward, all_reduce, optimizer) the table gives its
self + children CPU time (``key_averages().cpu_time_total``, summed over its calls in the step). A range
that runs inside another ``ecop.*`` range (found by walking each event's ``cpu_parent``: e.g. under
``checkpoint=True`` the recomputed pruned forwards run inside ``ecop.outer_backward``, and with it
inside ``ecop.inner_gradient``) is reported on a row of its own, "X in Y", and is already counted in Y's
row; so the rows that are not nested, plus "outside any ecop.* range" (the step's time not covered by a
top-level range: selection bookkeeping, parameter updates, the profiler itself), add up to the step. Rows
are medians over repeats; shares are each row's time summed over repeats divided by the step's summed over
repeats, so that the shares of the top-level rows and "outside" add up to 100% exactly. The profiler
records every operator, which inflates small operators more than large ones: use the shares, not the
absolute times, and ``--compare`` for times.

``--compare``: the speed modes against Learnit, side by side in one process: Learnit (gamma 1, K
``--learnit-K``, L 0, lambda 0), ECoP default, ECoP ``graph_free_dtype=torch.bfloat16``, ECoP
``compile=True`` and ECoP with both; ``bf16-all`` and ``bf16-all+compile`` lower every product of those passes
(``graph_free_full_precision=()``; the bf16 modes keep the model's input and output layers in float32 by
default) (``--compare-configs`` picks a subset; Learnit is always run). Each
configuration has its own copy of the same initial model and first takes untimed warm-up steps (two for
compiled configurations: ``torch.compile`` compiles on the first call, which can take a minute, and may
compile again for the second call's shapes); their time is reported apart as "warm-up s". Then every
configuration takes one meta-step per repeat, round-robin. Reported: median seconds, min-max and the ratio of
medians to Learnit's. A compiled configuration that fell back to eager (no C++ compiler, unsupported model)
is marked. Also reported: how often bf16 ranking changes the pruned set: along one inner loop
(``GradScaledAdapter(learner, steps=K, pruned_steps=K).fit_steps``, the same K pruned SGD steps as
training, on the ECoP default learner's initial model), at each of the K+1 parameter states the script
ranks the context twice with ``learner.evaluator(batch).errors(params)``, with the learner's backend
``graph_free_dtype`` unset (float32) and set to bfloat16, and counts the fraction of the top-k indices
(k = ``num_selected(M, gamma)``) of one that are not in the other's.

``--fit``: time to quality of test-time fitting. From one meta-learned initialization, either loaded with
``--checkpoint PATH`` (a file written by ``ContextPruningMetaLearner.save``; the learner is rebuilt from the
configuration stored in it) or meta-trained here for ``--fit-train-steps`` ECoP steps on
``skimage_crops("train", resolution=--fit-resolution)`` with the docs' ECoP setting (SIREN 3x128, w0 30;
gamma .25, K 16, L 5, lambda 100, inner lr 1e-2, bootstrap lr 5e-2, Adam outer lr 3e-4, meta-gradient clipped
to 1.0, batch 4; docs/results.md), the script fits the ``--fit-n`` builtin test crops
(``skimage_crops("test", resolution=--fit-resolution, n=--fit-n, seed=1)``) as one batch with:

* the reference: ``--fit-ref-steps`` (16) full-context steps with norm gradient scaling
  (``GradScaledAdapter(learner, steps=16)``); its final mean PSNR is the quality bar;
* ``pruned P``: ``GradScaledAdapter(learner, steps=--fit-max-steps, pruned_steps=P)`` for each P in
  ``--fit-pruned``: P training-style steps on the pruned context (unscaled, cheaper), then full-context
  scaled steps;
* with ``--fit-sampled``, ``sampled``: every step on a pruned context *sampled* with probability
  proportional to the squared error (Gumbel top-k over log-errors, a selection rule this script registers),
  an error-driven point sampler in the spirit of EVOS / INT;
* with ``--fit-plain``, ``plain``: ``--fit-ref-steps`` full-context steps with ``scaling="none"`` (the same
  steps without Eq. 6's pruned backward; its step time against the reference's is the scale's cost);
* with ``--fit-compile``, every schedule above again with ``compile=True`` (named ``"... +compile"``); its
  untimed warm-up is a whole fit, so that compilation is over before timing.

Each schedule is run through ``fit_steps``, whose generator computes step i's direction (ranking, gradients,
scale) between yielding state i-1 and state i; so step i's wall time is the duration of the ``next()``
call that yields state i (it also holds step i-1's parameter update, a few elementwise operations, and for
step 0 the input checks). The time to reach the parameters after j steps is the sum of the first j step
times; the final evaluation pass that ``fit`` adds is counted for no schedule. The mean PSNR after j steps
(mean over crops of each crop's PSNR, data range 1, as in docs/results.md) comes from the full-context MSE
each state carries. One untimed warm-up fit of 2 steps per schedule, then ``--repeats`` timed fits,
round-robin; step times are medians over repeats (PSNRs are deterministic; the script checks they repeat).
Reported: PSNR against cumulative wall time for every schedule, and per schedule the first step at which the
mean PSNR reaches the reference's final PSNR (less 0.01 dB, ``BAR_SLACK_DB``: compiled kernels round
differently), with its time as a fraction of the reference's 16-step time (issue 10's bar: <= 0.6), and the
best PSNR reached within 0.6x that time.

``--threads`` takes a comma-separated list for the new modes (e.g. ``1,2``): each thread count runs in a
fresh subprocess of this script (so that the compiled kernels and thread pools of one do not carry over to
the other), and the ``--compare`` tables are merged into one at the end. ``--device cuda`` runs on a GPU
(timings synchronise the device; ``--phases`` then reports host-side CPU time only).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(__file__))
from plain_loop import plain_meta_backward

from ecop_wrap import (
    ContextEvaluator,
    ContextPruningMetaLearner,
    GradScaledAdapter,
    Siren,
    make_grid,
    mse_to_psnr,
    num_selected,
    register_selection,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "torch.func (auto)": {"backend": "torch.func"},
    "torch.func vmap": {"backend": "torch.func", "batching": "vmap"},
    "torch.func loop": {"backend": "torch.func", "batching": "loop"},
    "higher": {"backend": "higher"},
    "torch.func chunked": {"backend": "torch.func", "chunk_size": 1024},
    "torch.func checkpoint+chunked": {"backend": "torch.func", "chunk_size": 1024, "checkpoint": True},
}

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
LEARNIT = "Learnit"
SPEED_MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "bf16": {"graph_free_dtype": torch.bfloat16},
    "compile": {"compile": True},
    "bf16+compile": {"graph_free_dtype": torch.bfloat16, "compile": True},
    # every product of the graph-free passes in bf16: what "bf16" measured before graph_free_full_precision
    "bf16-all": {"graph_free_dtype": torch.bfloat16, "graph_free_full_precision": ()},
    "bf16-all+compile": {"graph_free_dtype": torch.bfloat16, "graph_free_full_precision": (), "compile": True},
}
SAMPLED_RULE = "speed.error_sampled"


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _zero(model):
    for p in model.parameters():
        p.grad = None


# ------------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _spread(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise SystemExit(f"{what} must list non-negative integers, got {text!r}")
    return values


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "args": dict(vars(args)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _describe(args: argparse.Namespace) -> str:
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{load}"
    )


def _write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)


def _meta_batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(coords [M, 2], values [B, M, 3], description)``: training crops of the scikit-image photos (the
    ranking statistics need real images), or uniform noise where scikit-image is missing."""
    try:
        from ecop_wrap.data import skimage_crops

        crops = skimage_crops("train", resolution=args.side, n=args.batch, seed=0)
        coords, values, what = crops.coords, crops.values, "scikit-image training crops"
    except ImportError:
        torch.manual_seed(0)
        coords, values = make_grid((args.side, args.side)), torch.rand(args.batch, args.side**2, 3)
        what = "uniform noise (scikit-image not installed)"
    return coords.to(device), torch.as_tensor(values).to(device), what


def _learnit_hyper(args: argparse.Namespace) -> dict[str, Any]:
    return {"gamma": 1.0, "K": args.learnit_K, "L": 0, "lam": 0.0}


def _ecop_hyper(args: argparse.Namespace) -> dict[str, Any]:
    return {"gamma": args.gamma, "K": args.K, "L": args.L, "lam": args.lam}


# -------------------------------------------------------------------------------------- default mode
def run_backends(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The backend comparison against the plain per-signal loop (the script's original behaviour)."""
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    coords = make_grid((args.side, args.side)).to(device)
    values = torch.rand(args.batch, args.side**2, 3).to(device)
    hyper: dict[str, Any] = {"gamma": args.gamma, "K": args.K, "L": args.L, "lam": 100.0}
    names = [c.strip() for c in args.configs.split(",") if c.strip()]

    plain_meta_backward(model, coords, values, lr=1e-2, **hyper)
    reference = _grads(model)
    _zero(model)
    runners: dict[str, Callable[[], object]] = {
        "plain per-signal loop": lambda: plain_meta_backward(model, coords, values, lr=1e-2, **hyper)
    }
    for name in names:
        learner = ContextPruningMetaLearner(
            model, **hyper, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), **CONFIGS[name]
        )
        learner.meta_loss((coords, values)).backward()
        got = _grads(model)
        _zero(model)
        worst = max(float((g - r).abs().max() / (r.abs().max() + 1e-12)) for g, r in zip(got, reference, strict=True))
        print(f"{name}: max relative gradient difference to the plain loop {worst:.2e}", flush=True)
        if worst > 1e-3:
            raise SystemExit(f"{name} does not compute the plain loop's meta-gradient")
        runners[name] = partial(learner.meta_step, (coords, values))
    adapter = GradScaledAdapter(model, steps=args.K, gamma=args.gamma)
    runners["fit (norm scaling)"] = lambda: adapter.fit((coords, values))

    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            times[name].append(_timed(run, device))
            _zero(model)
    base = statistics.median(times["plain per-signal loop"])
    rows = {
        n: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "ratio_to_plain": statistics.median(t) / base,
        }
        for n, t in times.items()
    }
    print(
        f"\nside {args.side}, SIREN {args.layers + 1}x{args.width}, B={args.batch}, gamma={args.gamma}, K={args.K}, "
        f"L={args.L}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'configuration':32s} {'median s':>9s} {'min-max s':>15s} {'x plain':>8s}")
    for n, r in rows.items():
        print(f"{n:32s} {r['median_s']:9.3f} {r['min_s']:7.3f}-{r['max_s']:<7.3f} {r['ratio_to_plain']:8.2f}")
    return rows


# -------------------------------------------------------------------------------------------- phases
def _enclosing_range(event: Any) -> str | None:
    """Name of the nearest ``ecop.*`` range around a profiler event (None: none, up to its thread's root)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("ecop."):
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
            parent = _enclosing_range(event)
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


def run_phases(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Profile ECoP and Learnit meta-steps and print the per-phase table (see the module docstring)."""
    coords, values, what = _meta_batch(args, device)
    batch = (coords, values)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    learners = {
        "ECoP": ContextPruningMetaLearner(copy.deepcopy(model), **_ecop_hyper(args), seed=0),
        LEARNIT: ContextPruningMetaLearner(copy.deepcopy(model), **_learnit_hyper(args), seed=0),
    }
    for learner in learners.values():
        learner.meta_step(batch)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in learners}
    for _ in range(args.repeats):
        for name, learner in learners.items():
            runs[name].append(_profiled_step(learner, batch))
    table: dict[str, dict[str, dict[str, float]]] = {}
    keys = _row_order({k for rows in runs.values() for r in rows for k in r})
    for name, rows in runs.items():
        step_sum = sum(r["step"] for r in rows)
        table[name] = {
            key: {
                "median_ms": statistics.median(r.get(key, 0.0) for r in rows),
                "share": sum(r.get(key, 0.0) for r in rows) / step_sum if step_sum > 0 else 0.0,
            }
            for key in keys
        }
    print(
        f"\n--phases: one meta-step profiled (CPU activity), medians of {args.repeats} repeats; side {args.side}, "
        f"SIREN {args.layers + 1}x{args.width}, B={args.batch}, {what}; ECoP gamma={args.gamma} K={args.K} "
        f"L={args.L} vs Learnit K={args.learnit_K}; {_describe(args)}"
    )
    print(f"{'phase (self + children CPU time)':44s} {'ECoP ms':>10s} {'share':>7s} {'Learnit ms':>11s} {'share':>7s}")
    for key in keys:
        label = "step total (profiled)" if key == "step" else (f"  ({key}: counted above)" if " in " in key else key)
        cells = [f"{table[n][key]['median_ms']:10.1f} {100 * table[n][key]['share']:6.1f}%" for n in ("ECoP", LEARNIT)]
        print(f"{label:44s} {cells[0]} {' ' + cells[1]}")
    ratio = table["ECoP"]["step"]["median_ms"] / max(table[LEARNIT]["step"]["median_ms"], 1e-9)
    print(f"{'ECoP / Learnit profiled step':44s} {ratio:10.2f}x")
    return {"rows": keys, "table": table, "runs": runs, "data": what}


# ------------------------------------------------------------------------------------------- compare
def ranking_disagreement(
    learner: ContextPruningMetaLearner, batch: tuple[torch.Tensor, torch.Tensor], steps: int
) -> dict[str, Any]:
    """How often a bf16 ranking pass keeps other points than a float32 one, along one inner loop.

    At each of the ``steps + 1`` parameter states of ``steps`` pruned SGD steps from the learner's model
    (float32 ranking), rank the context with the learner's backend ``graph_free_dtype`` unset and set to
    bfloat16 and compare the top-k sets.

    Returns:
        ``per_step``: fraction of the k kept points (mean over signals) that the bf16 set does not share with
        the float32 set, per state; ``mean``, ``max`` over states; ``k`` and ``points``.
    """
    backend = learner.backend
    saved = backend.graph_free_dtype
    num_points = batch[1].shape[1]
    k = num_selected(num_points, learner.config.gamma)
    adapter = GradScaledAdapter(learner, steps=steps, pruned_steps=steps, graph_free_dtype=None)
    per_step = []
    try:
        for state in adapter.fit_steps(batch):
            masks = []
            for dtype in (None, torch.bfloat16):
                backend.graph_free_dtype = dtype
                errors = learner.evaluator(batch).errors(state.params)  # a new evaluator: no cached errors
                masks.append(
                    torch.zeros_like(errors, dtype=torch.bool).scatter_(1, errors.topk(k, dim=1).indices, True)
                )
            shared = (masks[0] & masks[1]).sum(dim=1).double()
            per_step.append(float((1.0 - shared / k).mean()))
    finally:
        backend.graph_free_dtype = saved
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
    learners = {LEARNIT: ContextPruningMetaLearner(copy.deepcopy(model), **_learnit_hyper(args), seed=0)}
    for mode in modes:
        learners[f"ECoP {mode}"] = ContextPruningMetaLearner(
            copy.deepcopy(model), **_ecop_hyper(args), **SPEED_MODES[mode], seed=0
        )
    return learners


def _warm_up(learner: ContextPruningMetaLearner, batch: Any, device: torch.device) -> tuple[float, list[str]]:
    """Untimed steps before timing (two when compiling); returns their seconds and any compile warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seconds = sum(
            _timed(lambda: learner.meta_step(batch), device) for _ in range(2 if learner.config.compile else 1)
        )
    notes = sorted({str(w.message)[:160] for w in caught if str(w.message).startswith("compile=True")})
    return seconds, notes


def run_compare(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time Learnit and the ECoP speed modes side by side (see the module docstring)."""
    coords, values, what = _meta_batch(args, device)
    batch = (coords, values)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    learners = _compare_learners(args, model)
    warm: dict[str, dict[str, Any]] = {}
    for name, learner in learners.items():
        seconds, notes = _warm_up(learner, batch, device)
        warm[name] = {"warmup_s": seconds, "fell_back_to_eager": bool(notes), "warnings": notes}
        print(
            f"warm-up {name}: {seconds:.1f} s" + (f" (compile fell back to eager: {notes[0]})" if notes else ""),
            flush=True,
        )
    times: dict[str, list[float]] = {n: [] for n in learners}
    for repeat in range(args.repeats):
        for name, learner in learners.items():
            times[name].append(_timed(partial(learner.meta_step, batch), device))
        print(
            f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
            flush=True,
        )
    base = statistics.median(times[LEARNIT])
    rows = {n: {**_spread(t), "ratio_to_learnit": statistics.median(t) / base, **warm[n]} for n, t in times.items()}
    # ranked from the initial parameters every configuration started from (the timed learners have moved on)
    reference = ContextPruningMetaLearner(copy.deepcopy(model), **_ecop_hyper(args), seed=0)
    disagreement = ranking_disagreement(reference, batch, steps=args.K)
    print(
        f"\n--compare: meta-step seconds, medians of {args.repeats} repeats (round-robin); side {args.side}, "
        f"SIREN {args.layers + 1}x{args.width}, B={args.batch}, {what}; ECoP gamma={args.gamma} K={args.K} "
        f"L={args.L} lam={args.lam} vs Learnit K={args.learnit_K}; {_describe(args)}"
    )
    _print_compare_rows(rows)
    print(
        f"bf16 vs float32 ranking: {100 * disagreement['mean']:.2f}% of the k={disagreement['k']} kept points differ "
        f"on average over the {len(disagreement['per_step'])} parameter states of one inner loop "
        f"(max {100 * disagreement['max']:.2f}%)"
    )
    return {"rows": rows, "ranking_disagreement": disagreement, "data": what}


def _print_compare_rows(rows: dict[str, dict[str, Any]]) -> None:
    print(f"{'configuration':22s} {'median s':>9s} {'min-max s':>17s} {'x Learnit':>10s} {'warm-up s':>10s}")
    for name, r in rows.items():
        note = "  (compile fell back to eager)" if r["fell_back_to_eager"] else ""
        print(
            f"{name:22s} {r['median_s']:9.3f} {r['min_s']:8.3f}-{r['max_s']:<8.3f} {r['ratio_to_learnit']:10.2f} "
            f"{r['warmup_s']:10.1f}{note}"
        )


# ----------------------------------------------------------------------------------------------- fit
class ErrorSampledSelection:
    """Samples the pruned context with probability proportional to each point's squared error.

    Gumbel top-k: the top-k of ``log(error) + Gumbel noise`` is a sample of k points without replacement with
    probabilities proportional to the errors.
    """

    name = SAMPLED_RULE

    def __init__(self, model: torch.nn.Module, layer: torch.nn.Module | None = None) -> None:
        del model, layer

    def scores(
        self, ctx: ContextEvaluator, params: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        errors = ctx.errors(params).float()
        uniform = torch.rand(errors.shape, generator=generator, device=errors.device).clamp_(1e-12, 1.0)
        return errors.clamp_min(1e-30).log() - (-uniform.log()).log()


def _fit_learner(args: argparse.Namespace, device: torch.device) -> tuple[ContextPruningMetaLearner, str]:
    """The meta-learned initialization: loaded from ``--checkpoint`` or meta-trained here."""
    torch.manual_seed(args.seed)
    model = Siren(2, 3, args.fit_width, args.fit_layers, w0=args.fit_w0).to(device)
    if args.checkpoint:
        learner = ContextPruningMetaLearner.from_checkpoint(
            model, args.checkpoint, outer_lr=args.fit_outer_lr, seed=args.seed
        )
        return learner, f"loaded from {args.checkpoint} (meta-step {learner.step_count})"
    from ecop_wrap.data import skimage_crops

    learner = ContextPruningMetaLearner(
        model,
        **_ecop_hyper(args),
        inner_lr=1e-2,
        boot_lr=5e-2,
        outer_lr=args.fit_outer_lr,
        max_grad_norm=1.0,
        seed=args.seed,
    )
    train = skimage_crops("train", resolution=args.fit_resolution, n=args.fit_train_crops, seed=0)
    order = torch.Generator().manual_seed(args.seed)
    coords = train.coords.to(device)
    start = time.perf_counter()
    for step in range(args.fit_train_steps):
        pick = torch.randint(0, len(train), (args.fit_train_batch,), generator=order)
        stats = learner.meta_step((coords, train.values[pick].to(device)))
        if (step + 1) % 50 == 0 or step + 1 == args.fit_train_steps:
            print(
                f"meta-train step {step + 1}/{args.fit_train_steps}: train PSNR at theta_K {stats['psnr']:.2f} dB "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    if args.fit_save_checkpoint:
        learner.save(args.fit_save_checkpoint)
    what = (
        f"meta-trained here: {args.fit_train_steps} ECoP steps (gamma {args.gamma}, K {args.K}, L {args.L}, "
        f"lambda {args.lam}, boot lr 5e-2, Adam {args.fit_outer_lr}, clip 1.0, batch {args.fit_train_batch}) on "
        f"{args.fit_train_crops} scikit-image training crops"
    )
    return learner, what


def _fit_schedules(args: argparse.Namespace, learner: ContextPruningMetaLearner) -> dict[str, GradScaledAdapter]:
    schedules = {"reference": GradScaledAdapter(learner, steps=args.fit_ref_steps)}
    if args.fit_plain:
        schedules["plain"] = GradScaledAdapter(learner, steps=args.fit_ref_steps, scaling="none")
    for pruned in _parse_ints(args.fit_pruned, "--fit-pruned"):
        if pruned > args.fit_max_steps:
            raise SystemExit(f"--fit-pruned {pruned} is more than --fit-max-steps {args.fit_max_steps}")
        schedules[f"pruned {pruned}"] = GradScaledAdapter(learner, steps=args.fit_max_steps, pruned_steps=pruned)
    if args.fit_sampled:
        register_selection(SAMPLED_RULE, ErrorSampledSelection, overwrite=True)
        schedules["sampled"] = GradScaledAdapter(
            learner, steps=args.fit_max_steps, pruned_steps=args.fit_max_steps, selection=SAMPLED_RULE
        )
    if args.fit_compile:
        for name, adapter in list(schedules.items()):
            schedules[f"{name} +compile"] = GradScaledAdapter(
                learner,
                steps=adapter.steps,
                pruned_steps=adapter.pruned_steps,
                scaling=adapter.scaling,
                selection=adapter.selection_rule.name,
                compile=True,
            )
    return schedules


def _timed_fit(
    adapter: GradScaledAdapter, signal: Any, device: torch.device, steps: int | None = None
) -> tuple[list[float], list[float]]:
    """Per-step wall seconds ``[steps]`` and mean PSNR before the first and after every step ``[steps + 1]``."""
    adapter.generator.manual_seed(0)
    seconds, psnrs = [], []
    states = adapter.fit_steps(signal, steps=steps)
    while True:
        _sync(device)
        start = time.perf_counter()
        state = next(states, None)
        _sync(device)
        if state is None:
            break
        psnrs.append(float(torch.as_tensor(mse_to_psnr(state.mse)).mean()))
        if not state.final:
            seconds.append(time.perf_counter() - start)
    return seconds, psnrs


BAR_SLACK_DB = 0.01
"""A schedule reaches the bar when its mean PSNR is at least the reference's final PSNR minus this."""


def _time_to_bar(cumulative: list[float], psnrs: list[float], bar: float, budget_s: float) -> dict[str, Any]:
    """First step whose PSNR reaches ``bar``, its cumulative time, and the best PSNR within ``budget_s``."""
    # 0.01 dB of slack: a compiled schedule's kernels round differently and can end 1e-3 dB short of the
    # eager reference's own final PSNR
    reached = next((j for j, p in enumerate(psnrs) if p >= bar - BAR_SLACK_DB), None)
    within = [p for j, p in enumerate(psnrs) if cumulative[j] <= budget_s]
    return {
        "steps_to_bar": reached,
        "time_to_bar_s": cumulative[reached] if reached is not None else None,
        "best_psnr_within_budget": max(within) if within else None,
    }


def run_fit(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time to quality of test-time fitting schedules (see the module docstring)."""
    from ecop_wrap.data import skimage_crops

    learner, init_what = _fit_learner(args, device)
    test = skimage_crops("test", resolution=args.fit_resolution, n=args.fit_n, seed=1)
    signal = (test.coords.to(device), torch.as_tensor(test.values).to(device))
    schedules = _fit_schedules(args, learner)
    for adapter in schedules.values():
        # warm-up; a compiled schedule's whole fit, so that every shape it meets is compiled before timing
        _timed_fit(adapter, signal, device, steps=None if adapter.config.compile else min(2, adapter.steps))
    step_times: dict[str, list[list[float]]] = {n: [] for n in schedules}
    curves: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for name, adapter in schedules.items():
            seconds, psnrs = _timed_fit(adapter, signal, device)
            step_times[name].append(seconds)
            if name in curves and curves[name] != psnrs:
                spread = max(abs(a - b) for a, b in zip(curves[name], psnrs, strict=True))
                print(f"note: {name}'s PSNRs differ between repeats (max {spread:.2e} dB)")
            curves.setdefault(name, psnrs)
        print(
            f"fit repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{n} {sum(t[-1]):.2f} s" for n, t in step_times.items()),
            flush=True,
        )
    results: dict[str, dict[str, Any]] = {}
    for name, runs in step_times.items():
        medians = [statistics.median(step) for step in zip(*runs, strict=True)]
        cumulative = [0.0] + [sum(medians[: j + 1]) for j in range(len(medians))]
        results[name] = {
            "step_median_s": medians,
            "cumulative_s": cumulative,
            "psnr": curves[name],
            "pruned_steps": schedules[name].pruned_steps,
            "steps": schedules[name].steps,
        }
    ref = results["reference"]
    ref_time, bar = ref["cumulative_s"][-1], ref["psnr"][-1]
    budget = args.fit_bar * ref_time
    for r in results.values():
        r.update(_time_to_bar(r["cumulative_s"], r["psnr"], bar, budget))
        r["fraction_of_reference_time"] = r["time_to_bar_s"] / ref_time if r["time_to_bar_s"] is not None else None
    summary = {"reference_time_s": ref_time, "bar_psnr": bar, "budget_fraction": args.fit_bar}
    _print_fit(args, results, summary, init_what, len(test))
    disagreement = None
    if args.fit_ranking_check:
        disagreement = ranking_disagreement(learner, signal, steps=args.K)
        print(
            f"bf16 vs float32 ranking at this initialization: {100 * disagreement['mean']:.2f}% of the "
            f"k={disagreement['k']} kept points differ on average (max {100 * disagreement['max']:.2f}%)"
        )
    return {
        "initialization": init_what,
        "crops": len(test),
        "summary": summary,
        "schedules": results,
        "ranking_disagreement": disagreement,
    }


def _print_fit(
    args: argparse.Namespace, results: dict[str, dict[str, Any]], summary: dict[str, float], init_what: str, crops: int
) -> None:
    names = list(results)
    print(
        f"\n--fit: {crops} test crops {args.fit_resolution}x{args.fit_resolution}, SIREN {args.fit_layers}x"
        f"{args.fit_width} w0 {args.fit_w0}; initialization {init_what}; step times are medians of "
        f"{args.repeats} repeats; {_describe(args)}"
    )
    print("PSNR (dB) after each step, at the cumulative wall time (s) of the steps so far:")
    print(f"{'step':>4s} " + " ".join(f"{n:>18s}" for n in names))
    for j in range(max(len(r["psnr"]) for r in results.values())):
        cells = []
        for name in names:
            r = results[name]
            cells.append(f"{r['cumulative_s'][j]:8.3f}s {r['psnr'][j]:7.2f}" if j < len(r["psnr"]) else " " * 17)
        print(f"{j:4d} " + " ".join(f"{c:>18s}" for c in cells))
    print(
        f"\nbar: the reference's PSNR after {args.fit_ref_steps} steps, {summary['bar_psnr']:.2f} dB, reached in "
        f"{summary['reference_time_s']:.3f} s; budget {args.fit_bar} x that = "
        f"{args.fit_bar * summary['reference_time_s']:.3f} s"
    )
    print(
        f"{'schedule':22s} {'step s (pruned / full)':>23s} {'steps to bar':>12s} {'time to bar s':>14s} "
        f"{'x ref time':>10s} {'best PSNR in budget':>20s} {'final PSNR':>11s}"
    )
    for name, r in results.items():
        pruned = r["step_median_s"][: r["pruned_steps"]]
        full = r["step_median_s"][r["pruned_steps"] :]
        per_step = " / ".join(f"{statistics.median(part):.3f}" if part else "-" for part in (pruned, full))
        steps = "-" if r["steps_to_bar"] is None else str(r["steps_to_bar"])
        when = "not reached" if r["time_to_bar_s"] is None else f"{r['time_to_bar_s']:.3f}"
        frac = "-" if r["fraction_of_reference_time"] is None else f"{r['fraction_of_reference_time']:.2f}"
        best = "-" if r["best_psnr_within_budget"] is None else f"{r['best_psnr_within_budget']:.2f}"
        print(f"{name:22s} {per_step:>23s} {steps:>12s} {when:>14s} {frac:>10s} {best:>20s} {r['psnr'][-1]:11.2f}")


# ------------------------------------------------------------------------------------- thread counts
def _strip_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == option:
            skip = True
        elif not token.startswith(option + "="):
            out.append(token)
    return out


def run_per_thread_count(args: argparse.Namespace, argv: list[str], threads: list[int]) -> None:
    """Run this script once per thread count in a fresh subprocess, then merge the JSON and the tables."""
    argv = _strip_option(_strip_option(argv, "--threads"), "--json")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in threads:
            out = os.path.join(tmp, f"threads{count}.json")
            print(f"\n===== {count} thread(s) =====", flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--threads", str(count), "--json", out]
            subprocess.run(cmd, check=True)
            with open(out) as f:
                runs.append(json.load(f))
    if args.compare:
        print("\n--compare, all thread counts:")
        heads = [f"{r['meta']['threads']} thr median s" for r in runs]
        print(f"{'configuration':22s} " + " ".join(f"{head:>17s} {'x Learnit':>9s}" for head in heads))
        for name in runs[0]["compare"]["rows"]:
            cells = [
                f"{r['compare']['rows'][name]['median_s']:17.3f} {r['compare']['rows'][name]['ratio_to_learnit']:9.2f}"
                for r in runs
            ]
            print(f"{name:22s} " + " ".join(cells))
    if args.json:
        _write_json(args.json, {"meta": _meta(args), "runs": runs})


# ---------------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=64, help="image side (M = side^2 points)")
    ap.add_argument("--width", type=int, default=256, help="SIREN hidden width")
    ap.add_argument("--layers", type=int, default=4, help="SIREN sine layers (4 = the paper's 5-layer SIREN)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gamma", type=float, default=0.25)
    ap.add_argument("--K", type=int, default=16)
    ap.add_argument("--L", type=int, default=5)
    ap.add_argument("--lam", type=float, default=100.0, help="bootstrap weight of ECoP (--phases, --compare, --fit)")
    ap.add_argument("--learnit-K", type=int, default=4, help="Learnit's inner steps (--phases, --compare)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (default 5; 3 for --phases/--compare/--fit)"
    )
    ap.add_argument(
        "--threads",
        default="0",
        help="torch threads (0: torch's default); a comma-separated list for --phases/--compare/--fit",
    )
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--seed", type=int, default=0)
    modes = ap.add_argument_group("measurements (any combination; none: the backend comparison)")
    modes.add_argument("--phases", action="store_true", help="per-phase profile of an ECoP and a Learnit meta-step")
    modes.add_argument("--compare", action="store_true", help="Learnit vs ECoP default / bf16 / compile / both")
    modes.add_argument("--fit", action="store_true", help="time to quality of test-time fitting schedules")
    cmp = ap.add_argument_group("--compare")
    cmp.add_argument(
        "--compare-configs",
        default=",".join(SPEED_MODES),
        help="ECoP modes to time against Learnit, subset of: " + ", ".join(SPEED_MODES),
    )
    fit = ap.add_argument_group("--fit")
    fit.add_argument(
        "--checkpoint",
        default=None,
        help="initialization written by ContextPruningMetaLearner.save (of a SIREN matching --fit-width/-layers/-w0)",
    )
    fit.add_argument("--fit-save-checkpoint", default=None, help="save the initialization meta-trained here")
    fit.add_argument("--fit-train-steps", type=int, default=200, help="ECoP meta-steps when no --checkpoint")
    fit.add_argument("--fit-train-crops", type=int, default=2048, help="training crops when no --checkpoint")
    fit.add_argument("--fit-train-batch", type=int, default=4)
    fit.add_argument("--fit-outer-lr", type=float, default=3e-4)
    fit.add_argument("--fit-resolution", type=int, default=32)
    fit.add_argument("--fit-width", type=int, default=128)
    fit.add_argument("--fit-layers", type=int, default=3, help="SIREN hidden sine layers")
    fit.add_argument("--fit-w0", type=float, default=30.0)
    fit.add_argument("--fit-n", type=int, default=32, help="test crops, fitted as one batch")
    fit.add_argument("--fit-ref-steps", type=int, default=16, help="full-context scaled steps of the reference")
    fit.add_argument("--fit-pruned", default="4,8,12,16", help="pruned_steps of the schedules")
    fit.add_argument("--fit-max-steps", type=int, default=24, help="total steps of every non-reference schedule")
    fit.add_argument("--fit-sampled", action="store_true", help="also an error-sampled schedule (every step pruned)")
    fit.add_argument(
        "--fit-plain",
        action="store_true",
        help="also plain full-context steps (scaling='none'): what the norm scale costs per step",
    )
    fit.add_argument(
        "--fit-compile", action="store_true", help="also every schedule with compile=True (its warm-up: a whole fit)"
    )
    fit.add_argument("--fit-bar", type=float, default=0.6, help="time budget as a fraction of the reference's")
    fit.add_argument(
        "--fit-ranking-check",
        action="store_true",
        help="also the bf16 vs float32 ranking disagreement at the fitted initialization",
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    threads = _parse_ints(args.threads, "--threads")
    new_modes = args.phases or args.compare or args.fit
    if args.repeats is None:
        args.repeats = 3 if new_modes else 5
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if len(threads) > 1:
        if not new_modes:
            raise SystemExit("a list of --threads needs --phases, --compare or --fit")
        run_per_thread_count(args, argv, threads)
        return
    if threads[0]:
        torch.set_num_threads(threads[0])
    device = torch.device(args.device)
    if not new_modes:
        rows = run_backends(args, device)
        if args.json:
            _write_json(args.json, {"meta": _meta(args), "results": rows})
        return
    payload: dict[str, Any] = {"meta": _meta(args)}
    if args.phases:
        payload["phases"] = run_phases(args, device)
    if args.compare:
        payload["compare"] = run_compare(args, device)
    if args.fit:
        payload["fit"] = run_fit(args, device)
    payload["meta"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.json:
        _write_json(args.json, payload)


if __name__ == "__main__":
    main()
