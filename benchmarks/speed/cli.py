"""Speed of meta-training and test-time fitting: backends, ECoP's phases and ops, the speed modes, time to quality.

Usage (each flag selects one measurement; without any flag the script runs the backend comparison)::

    python benchmarks/speed --side 64 --width 256 --layers 4 --batch 8 --repeats 5 --json out.json
    python benchmarks/speed --phases  --threads 1 --json benchmarks/results/speed_phases.json
    python benchmarks/speed --ops --side 32 --threads 1 --json benchmarks/results/speed_ops_32_b8.json
    python benchmarks/speed --compare --threads 1,2 --json benchmarks/results/speed_compare.json
    python benchmarks/speed --fit --threads 1 --json benchmarks/results/speed_fit.json

``--threads`` takes a comma-separated list for the measurement flags (e.g. ``1,2``): each thread count runs in a
fresh subprocess of this script (so that the compiled kernels and thread pools of one do not carry over to the
other), and the ``--compare`` tables are merged into one at the end. ``--device cuda`` runs on a GPU (timings
synchronise the device; ``--phases`` then reports host-side CPU time only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import torch

from . import backends, compare, fit, ops, phases, ranking, scale
from .common import load_average, parse_ints, run_info, write_json

MEASUREMENTS = ("phases", "ops", "compare", "fit", "scale", "ranking")
"""The measurement flags, in the order they run (and the keys of the JSON they write)."""
RUNNERS = {
    "phases": phases.run_phases,
    "ops": ops.run_ops,
    "compare": compare.run_compare,
    "fit": fit.run_fit,
    "scale": scale.run_scale,
    "ranking": ranking.run_ranking,
}


def strip_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` and ``option=VALUE``."""
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
    argv = strip_option(strip_option(argv, "--threads"), "--json")
    script = os.path.dirname(os.path.abspath(__file__))  # the package folder, run through its __main__.py
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in threads:
            out = os.path.join(tmp, f"threads{count}.json")
            print(f"\n===== {count} thread(s) =====", flush=True)
            subprocess.run([sys.executable, script, *argv, "--threads", str(count), "--json", out], check=True)
            with open(out) as f:
                runs.append(json.load(f))
    if args.compare:
        _print_compare_per_thread_count(runs)
    if args.json:
        write_json(args.json, {"meta": run_info(args), "runs": runs})


def _print_compare_per_thread_count(runs: list[dict[str, Any]]) -> None:
    print("\n--compare, all thread counts:")
    heads = [f"{r['meta']['threads']} thr median s" for r in runs]
    print(f"{'configuration':22s} " + " ".join(f"{head:>17s} {'x Learnit':>9s}" for head in heads))
    for name in runs[0]["compare"]["rows"]:
        cells = [
            f"{r['compare']['rows'][name]['median_s']:17.3f} {r['compare']['rows'][name]['ratio_to_learnit']:9.2f}"
            for r in runs
        ]
        print(f"{name:22s} " + " ".join(cells))


def parser() -> argparse.ArgumentParser:
    docs = "\n".join(m.__doc__ or "" for m in (sys.modules[__name__], backends, phases, ops, compare, fit, scale))
    ap = argparse.ArgumentParser(
        prog="benchmarks/speed", description=docs, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--side", type=int, default=64, help="image side (M = side^2 points)")
    ap.add_argument("--width", type=int, default=256, help="SIREN hidden width")
    ap.add_argument("--layers", type=int, default=4, help="SIREN sine layers (4 = the paper's 5-layer SIREN)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gamma", type=float, default=0.25)
    ap.add_argument("--K", type=int, default=16)
    ap.add_argument("--L", type=int, default=5)
    ap.add_argument("--lam", type=float, default=100.0, help="bootstrap weight of ECoP (--phases, --compare, --fit)")
    ap.add_argument("--learnit-K", type=int, default=4, help="Learnit's inner steps (--phases, --ops, --compare)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; 3 for the measurement flags)")
    ap.add_argument(
        "--threads",
        default="0",
        help="torch threads (0: torch's default); a comma-separated list for the measurement flags",
    )
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    configs = backends.CONFIGS
    ap.add_argument("--configs", default=",".join(configs), help="comma-separated subset of: " + ", ".join(configs))
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--seed", type=int, default=0)
    modes = ap.add_argument_group("measurements (any combination; none: the backend comparison)")
    modes.add_argument("--phases", action="store_true", help="per-phase profile of an ECoP and a Learnit meta-step")
    modes.add_argument("--ops", action="store_true", help="top-level aten ops per meta-step, ECoP vs Learnit")
    modes.add_argument("--compare", action="store_true", help="Learnit vs ECoP default / bf16 / compile / both")
    modes.add_argument("--fit", action="store_true", help="time to quality of test-time fitting schedules")
    modes.add_argument("--scale", action="store_true", help="one unprofiled meta-step in a memory mode, at scale")
    modes.add_argument(
        "--ranking", action="store_true", help="the ranking pass alone, in cache-sized pieces against the whole context"
    )
    ops_group = ap.add_argument_group("--ops")
    ops_group.add_argument(
        "--ops-configs",
        default=",".join(ops.DEFAULT_OPS_CONFIGS),
        help="backend configurations to count, subset of: " + ", ".join(ops.OPS_CONFIGS),
    )
    ops_group.add_argument(
        "--ops-before",
        default=None,
        metavar="JSON",
        help="an earlier --ops JSON: its counts next to this run's (before -> now, also per range)",
    )
    ap.add_argument_group("--phases").add_argument(
        "--phases-settings",
        default="",
        metavar="KEY=VALUE,...",
        help="learner settings for both profiled methods, e.g. checkpoint=True,chunk_size=16384 (the memory modes)",
    )
    ap.add_argument_group("--compare").add_argument(
        "--compare-configs",
        default=",".join(compare.DEFAULT_MODES),
        help="ECoP modes to time against Learnit, subset of: " + ", ".join(compare.SPEED_MODES),
    )
    ap.add_argument_group("--ranking").add_argument(
        "--ranking-modes", default="loop,bmm", help="batching modes to time the ranking pass in (default: loop,bmm)"
    )
    _add_fit_options(ap.add_argument_group("--fit"))
    scale_group = ap.add_argument_group("--scale")
    scale_group.add_argument("--scale-method", choices=["ecop", "learnit"], default="ecop")
    scale_group.add_argument(
        "--scale-settings",
        default=scale.DEFAULT_SETTINGS,
        metavar="KEY=VALUE,...",
        help="learner settings of the step (default: the memory modes of issue 25's item 5)",
    )
    return ap


def _add_fit_options(group: Any) -> None:
    group.add_argument(
        "--checkpoint",
        default=None,
        help="initialization written by ContextPruningMetaLearner.save (of a SIREN matching --fit-width/-layers/-w0)",
    )
    group.add_argument("--fit-save-checkpoint", default=None, help="save the initialization meta-trained here")
    group.add_argument("--fit-train-steps", type=int, default=200, help="ECoP meta-steps when no --checkpoint")
    group.add_argument("--fit-train-crops", type=int, default=2048, help="training crops when no --checkpoint")
    group.add_argument("--fit-train-batch", type=int, default=4)
    group.add_argument("--fit-outer-lr", type=float, default=3e-4)
    group.add_argument("--fit-resolution", type=int, default=32)
    group.add_argument("--fit-width", type=int, default=128)
    group.add_argument("--fit-layers", type=int, default=3, help="SIREN hidden sine layers")
    group.add_argument("--fit-w0", type=float, default=30.0)
    group.add_argument("--fit-n", type=int, default=32, help="test crops, fitted as one batch")
    group.add_argument("--fit-ref-steps", type=int, default=16, help="full-context scaled steps of the reference")
    group.add_argument("--fit-pruned", default="4,8,12,16", help="pruned_steps of the schedules")
    group.add_argument("--fit-max-steps", type=int, default=24, help="total steps of every non-reference schedule")
    group.add_argument("--fit-sampled", action="store_true", help="also an error-sampled schedule (every step pruned)")
    group.add_argument(
        "--fit-plain",
        action="store_true",
        help="also plain full-context steps (scaling='none'): what the norm scale costs per step",
    )
    group.add_argument(
        "--fit-compile", action="store_true", help="also every schedule with compile=True (its warm-up: a whole fit)"
    )
    group.add_argument("--fit-bar", type=float, default=0.6, help="time budget as a fraction of the reference's")
    group.add_argument(
        "--fit-ranking-check",
        action="store_true",
        help="also the bf16 vs float32 ranking disagreement at the fitted initialization",
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    threads = parse_ints(args.threads, "--threads")
    chosen = [m for m in MEASUREMENTS if getattr(args, m)]
    if args.repeats is None:
        args.repeats = 3 if chosen else 5
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if len(threads) > 1:
        if not chosen:
            raise SystemExit("a list of --threads needs --phases, --ops, --compare, --fit or --scale")
        run_per_thread_count(args, argv, threads)
        return
    if threads[0]:
        torch.set_num_threads(threads[0])
    device = torch.device(args.device)
    if not chosen:
        rows = backends.run_backends(args, device)
        if args.json:
            write_json(args.json, {"meta": run_info(args), "results": rows})
        return
    payload: dict[str, Any] = {"meta": run_info(args)}
    for measurement in chosen:
        payload[measurement] = RUNNERS[measurement](args, device)
    payload["meta"]["load_average_after"] = load_average()
    if args.json:
        write_json(args.json, payload)
