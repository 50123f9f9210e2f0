"""``--fit``: time to quality of test-time fitting.

From one meta-learned initialization, either loaded with ``--checkpoint PATH`` (a file written by
``ContextPruningMetaLearner.save``; the learner is rebuilt from the configuration stored in it) or meta-trained
here for ``--fit-train-steps`` ECoP steps on ``skimage_crops("train", resolution=--fit-resolution)`` with the
docs' ECoP setting (SIREN 3x128, w0 30; gamma .25, K 16, L 5, lambda 100, inner lr 1e-2, bootstrap lr 5e-2, Adam
outer lr 3e-4, meta-gradient clipped to 1.0, batch 4; docs/results.md), the script fits the ``--fit-n`` builtin
test crops (``skimage_crops("test", resolution=--fit-resolution, n=--fit-n, seed=1)``) as one batch with:

* the reference: ``--fit-ref-steps`` (16) full-context steps with norm gradient scaling
  (``GradScaledAdapter(learner, steps=16)``); its final mean PSNR is the quality bar;
* ``pruned P``: ``GradScaledAdapter(learner, steps=--fit-max-steps, pruned_steps=P)`` for each P in
  ``--fit-pruned``: P training-style steps on the pruned context (unscaled, cheaper), then full-context
  scaled steps;
* with ``--fit-sampled``, ``sampled``: every step on a pruned context *sampled* with probability
  proportional to the squared error (Gumbel top-k over log-errors, the selection rule of :mod:`speed.rules`,
  which the script registers), an error-driven point sampler in the spirit of EVOS / INT;
* with ``--fit-plain``, ``plain``: ``--fit-ref-steps`` full-context steps with ``scaling="none"`` (the same
  steps without Eq. 6's pruned backward; its step time against the reference's is the scale's cost);
* with ``--fit-compile``, every schedule above again with ``compile=True`` (named ``"... +compile"``); its
  untimed warm-up is a whole fit, so that compilation is over before timing.

Each schedule is run through ``fit_steps``, whose generator computes step i's direction (ranking, gradients,
scale) between yielding state i-1 and state i; so step i's wall time is the duration of the ``next()`` call
that yields state i (it also holds step i-1's parameter update, a few elementwise operations, and for step 0
the input checks). The time to reach the parameters after j steps is the sum of the first j step times; the
final evaluation pass that ``fit`` adds is counted for no schedule. The mean PSNR after j steps (mean over crops
of each crop's PSNR, data range 1, as in docs/results.md) comes from the full-context MSE each state carries.
One untimed warm-up fit of 2 steps per schedule, then ``--repeats`` timed fits, round-robin; step times are
medians over repeats (PSNRs are deterministic; the script checks they repeat). Reported: PSNR against
cumulative wall time for every schedule, and per schedule the first step at which the mean PSNR reaches the
reference's final PSNR (less 0.01 dB, ``BAR_SLACK_DB``: compiled kernels round differently), with its time as
a fraction of the reference's 16-step time (issue 10's bar: <= 0.6), and the best PSNR reached within 0.6x
that time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren, mse_to_psnr, register_selection

from .common import describe, ecop_hyper, parse_ints, sync
from .compare import ranking_disagreement
from .rules import ErrorSampling

SAMPLED_RULE = "speed.error_sampled"
BAR_SLACK_DB = 0.01
"""A schedule reaches the bar when its mean PSNR is at least the reference's final PSNR minus this."""


def fit_learner(args: argparse.Namespace, device: torch.device) -> tuple[ContextPruningMetaLearner, str]:
    """The meta-learned initialization: loaded from ``--checkpoint`` or meta-trained here."""
    torch.manual_seed(args.seed)
    model = Siren(2, 3, args.fit_width, args.fit_layers, w0=args.fit_w0).to(device)
    if args.checkpoint:
        learner = ContextPruningMetaLearner.from_checkpoint(
            model, args.checkpoint, outer_lr=args.fit_outer_lr, seed=args.seed
        )
        return learner, f"loaded from {args.checkpoint} (meta-step {learner.step_count})"
    learner = ContextPruningMetaLearner(
        model,
        **ecop_hyper(args),
        inner_lr=1e-2,
        boot_lr=5e-2,
        outer_lr=args.fit_outer_lr,
        max_grad_norm=1.0,
        seed=args.seed,
    )
    _meta_train(args, learner, device)
    if args.fit_save_checkpoint:
        learner.save(args.fit_save_checkpoint)
    what = (
        f"meta-trained here: {args.fit_train_steps} ECoP steps (gamma {args.gamma}, K {args.K}, L {args.L}, "
        f"lambda {args.lam}, boot lr 5e-2, Adam {args.fit_outer_lr}, clip 1.0, batch {args.fit_train_batch}) on "
        f"{args.fit_train_crops} scikit-image training crops"
    )
    return learner, what


def _meta_train(args: argparse.Namespace, learner: ContextPruningMetaLearner, device: torch.device) -> None:
    """``--fit-train-steps`` meta-steps on batches drawn (seeded) from the training crops."""
    from ecop_wrap.data import skimage_crops

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


def _schedule_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Name -> the ``GradScaledAdapter`` keyword arguments of each eager schedule."""
    settings: dict[str, dict[str, Any]] = {"reference": {"steps": args.fit_ref_steps}}
    if args.fit_plain:
        settings["plain"] = {"steps": args.fit_ref_steps, "scaling": "none"}
    for pruned in parse_ints(args.fit_pruned, "--fit-pruned"):
        if pruned > args.fit_max_steps:
            raise SystemExit(f"--fit-pruned {pruned} is more than --fit-max-steps {args.fit_max_steps}")
        settings[f"pruned {pruned}"] = {"steps": args.fit_max_steps, "pruned_steps": pruned}
    if args.fit_sampled:
        register_selection(SAMPLED_RULE, ErrorSampling, overwrite=True)
        every_step = {"steps": args.fit_max_steps, "pruned_steps": args.fit_max_steps}
        settings["sampled"] = {**every_step, "selection": SAMPLED_RULE}
    return settings


def fit_schedules(args: argparse.Namespace, learner: ContextPruningMetaLearner) -> dict[str, GradScaledAdapter]:
    """Every schedule's adapter, and with ``--fit-compile`` each again compiled (``"... +compile"``)."""
    settings = _schedule_settings(args)
    schedules = {name: GradScaledAdapter(learner, **kwargs) for name, kwargs in settings.items()}
    if args.fit_compile:
        for name, kwargs in settings.items():
            schedules[f"{name} +compile"] = GradScaledAdapter(learner, **kwargs, compile=True)
    return schedules


def timed_fit(
    adapter: GradScaledAdapter, signal: Any, device: torch.device, steps: int | None = None
) -> tuple[list[float], list[float]]:
    """Per-step wall seconds ``[steps]`` and mean PSNR before the first and after every step ``[steps + 1]``."""
    adapter.generator.manual_seed(0)
    seconds, psnrs = [], []
    states = adapter.fit_steps(signal, steps=steps)
    while True:
        sync(device)
        start = time.perf_counter()
        state = next(states, None)
        sync(device)
        if state is None:
            break
        psnrs.append(float(torch.as_tensor(mse_to_psnr(state.mse)).mean()))
        if not state.final:
            seconds.append(time.perf_counter() - start)
    return seconds, psnrs


def time_to_bar(cumulative: list[float], psnrs: list[float], bar: float, budget_s: float) -> dict[str, Any]:
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


def _timed_round_robin(
    args: argparse.Namespace, schedules: dict[str, GradScaledAdapter], signal: Any, device: torch.device
) -> tuple[dict[str, list[list[float]]], dict[str, list[float]]]:
    """Per schedule: the step seconds of every repeat, and the PSNR curve (checked to repeat)."""
    step_times: dict[str, list[list[float]]] = {n: [] for n in schedules}
    curves: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for name, adapter in schedules.items():
            seconds, psnrs = timed_fit(adapter, signal, device)
            step_times[name].append(seconds)
            if name in curves and curves[name] != psnrs:
                gap = max(abs(a - b) for a, b in zip(curves[name], psnrs, strict=True))
                print(f"note: {name}'s PSNRs differ between repeats (max {gap:.2e} dB)")
            curves.setdefault(name, psnrs)
        print(
            f"fit repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{n} {sum(t[-1]):.2f} s" for n, t in step_times.items()),
            flush=True,
        )
    return step_times, curves


def run_fit(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time to quality of test-time fitting schedules (see the module docstring)."""
    from ecop_wrap.data import skimage_crops

    learner, init_what = fit_learner(args, device)
    test = skimage_crops("test", resolution=args.fit_resolution, n=args.fit_n, seed=1)
    signal = (test.coords.to(device), torch.as_tensor(test.values).to(device))
    schedules = fit_schedules(args, learner)
    for adapter in schedules.values():
        # warm-up; a compiled schedule's whole fit, so that every shape it meets is compiled before timing
        timed_fit(adapter, signal, device, steps=None if adapter.config.compile else min(2, adapter.steps))
    step_times, curves = _timed_round_robin(args, schedules, signal, device)
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
        r.update(time_to_bar(r["cumulative_s"], r["psnr"], bar, budget))
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
        f"{args.repeats} repeats; {describe(args)}"
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
