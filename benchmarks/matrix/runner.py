"""Running the cells: ``benchmarks/reproduce`` subprocesses, one per data set and shared settings.

Cells whose shared flags agree (the same data and settings; only their methods and per-method lrs differ) run as
one ``benchmarks/reproduce`` invocation, so the data is loaded once. A run that fails is rerun cell by cell, so
one cell's failure (a missing optional package, an error in one model) skips that cell only, with its reason.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cells import Cell, Setting, as_argv, method_flags
from .report import score_key

BENCHMARKS = Path(__file__).resolve().parent.parent
ROOT = BENCHMARKS.parent
REPRODUCE = BENCHMARKS / "reproduce"


@dataclass(frozen=True)
class Job:
    """One ``benchmarks/reproduce`` run: its cells and its command line (without ``--json``)."""

    name: str
    cells: tuple[Cell, ...]
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(["python", "benchmarks/reproduce", *self.argv])


@dataclass
class Outcome:
    """What one run gave a cell: the reproduce results (None if it failed) and how it ran."""

    results: dict[str, Any] | None
    command: str
    seconds: float
    error: str | None = None
    log: str = ""


@dataclass
class Plan:
    """The shared settings of every run of a matrix (see ``--help``)."""

    steps: int
    eval_size: int
    threads: int = 1
    quick: bool = False
    train_size: int | None = None
    video_source: str | None = None
    extra: tuple[str, ...] = ()
    work: Path = field(default_factory=lambda: Path("."))


Execute = Callable[[Job, Path], Outcome]
"""Runs one job, writing its results under the folder it is given (tests replace it)."""


def run_argv(
    cells: Sequence[Cell],
    plan: Plan,
    settings: dict[str, Setting],
    *,
    split: str,
    steps: int,
    outer_lr: float | None = None,
    workers: int = 1,
) -> list[str]:
    """The command line of one run of ``cells`` (which share their flags); ``workers``: its methods trained at a
    time (benchmarks/reproduce ``--workers``)."""
    flags = cells[0].flags(plan.quick)
    if plan.video_source is not None and "--video" in flags:
        flags["--video"] = plan.video_source
    flags |= {"--outer-steps": str(steps), "--eval-size": str(plan.eval_size), "--eval-split": split}
    if plan.train_size is not None:
        flags["--train-size"] = str(plan.train_size)
    flags |= {"--seed": "0", "--threads": str(plan.threads), "--workers": str(workers)}
    argv = as_argv(flags)
    for cell in cells:
        argv += method_flags(cell, settings[cell.key], outer_lr)
    methods = [m for cell in cells for m in (cell.methods if split == "val" else cell.scored)]
    return [*argv, *plan.extra, "--methods", ",".join(methods), "--no-plot"]


def group(cells: Sequence[Cell], quick: bool) -> list[list[Cell]]:
    """Cells that share their flags, in the order of their first cell."""
    groups: dict[tuple[tuple[str, str], ...], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(tuple(sorted(cell.flags(quick).items())), []).append(cell)
    return list(groups.values())


def execute(job: Job, work: Path) -> Outcome:
    """Run ``job`` as a subprocess; its output goes to ``<work>/<name>.log``, its results to ``<name>.json``."""
    out, log = work / f"{job.name}.json", work / f"{job.name}.log"
    started = time.perf_counter()
    with open(log, "w") as stream:
        done = subprocess.run(
            [sys.executable, str(REPRODUCE), *job.argv, "--json", str(out)],
            stdout=stream,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            check=False,
        )
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if done.returncode != 0 or not out.exists():
        return Outcome(None, job.command, seconds, error_of(text, done.returncode), text)
    return Outcome(json.loads(out.read_text()), job.command, seconds, log=text)


def error_of(log: str, returncode: int) -> str:
    """The reason a run failed: the last line of its output that names an error (else its exit status)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line or "error:" in line or "Exception" in line]
    return (named or lines or [f"exit status {returncode}"])[-1][:400]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def run_cells(
    cells: Sequence[Cell],
    plan: Plan,
    settings: dict[str, Setting],
    *,
    split: str,
    steps: int,
    tag: str,
    outer_lrs: Sequence[float | None] = (None,),
    workers: int = 1,
    run: Execute = execute,
    log: Callable[[str], None] = print,
) -> dict[tuple[str, float | None], Outcome]:
    """Run every cell once per outer lr of ``outer_lrs`` (None: the setting's own); ``(cell key, lr) -> outcome``.

    Cells that share their flags run together; a failed run is retried cell by cell. With fewer runs than
    ``workers``, each run trains its methods ``workers // runs`` at a time, so every worker is used.
    """

    def jobs_of(groups: Sequence[Sequence[Cell]], suffix: str = "") -> list[tuple[Job, float | None]]:
        out = []
        per_run = max(1, workers // max(1, len(groups) * len(outer_lrs)))
        for lr in outer_lrs:
            for cells_of in groups:
                argv = run_argv(cells_of, plan, settings, split=split, steps=steps, outer_lr=lr, workers=per_run)
                label = "+".join(c.key for c in cells_of) if len(cells_of) == 1 else cells_of[0].data.name
                name = _safe(f"{tag}_{label}{'' if lr is None else f'_lr{lr:g}'}{suffix}")
                out.append((Job(name, tuple(cells_of), tuple(argv)), lr))
        return out

    def batch(jobs: list[tuple[Job, float | None]]) -> list[tuple[Job, float | None, Outcome]]:
        def one(item: tuple[Job, float | None]) -> tuple[Job, float | None, Outcome]:
            job, lr = item
            log(f"[{tag}] start {job.name}: {', '.join(c.key for c in job.cells)}")
            outcome = run(job, plan.work)
            state = "ok" if outcome.error is None else f"FAILED: {outcome.error}"
            log(f"[{tag}] done {job.name} in {outcome.seconds:.0f} s: {state}")
            return job, lr, outcome

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(one, sorted(jobs, key=lambda j: -_cost(j[0]))))

    outcomes: dict[tuple[str, float | None], Outcome] = {}
    retry: list[tuple[Job, float | None]] = []
    for job, lr, outcome in batch(jobs_of(group(cells, plan.quick))):
        if outcome.error is not None and len(job.cells) > 1:
            retry += [(j, r) for j, r in jobs_of([[c] for c in job.cells], "_alone") if r == lr]
            continue
        for cell in job.cells:
            outcomes[(cell.key, lr)] = outcome
    for job, lr, outcome in batch(retry):
        outcomes[(job.cells[0].key, lr)] = outcome
    return outcomes


_DATA_COST = {"images": 1.0, "video": 3.0, "sphere": 0.4, "audio": 1.5, "glyphs": 0.6}


def _cost(job: Job) -> float:
    """A rough cost, to start the longest runs first when runs go in parallel."""
    return sum(_DATA_COST.get(c.data.name, 1.0) for c in job.cells)


def val_score(record: dict[str, Any] | None) -> float:
    """A method's validation PSNR in a sweep run (``--eval-split val``), over the band near the outline for SDFs
    (the score the cell's gap uses); -inf if missing or not finite."""
    key = score_key(record) if record else "psnr"
    if not record or not isinstance(record.get(key), (int, float)) or not math.isfinite(record[key]):
        return -math.inf
    return float(record[key])


def pick(scores: dict[float, float]) -> float | None:
    """The lr with the best validation score (the smaller lr on a tie); None if none is finite."""
    finite = {lr: s for lr, s in scores.items() if math.isfinite(s)}
    return max(sorted(finite), key=lambda lr: finite[lr]) if finite else None
