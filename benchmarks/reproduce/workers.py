"""Parallel runs: the methods split over ``--workers`` subprocesses, and merging their (or any) result files."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .config import RunConfig
from .methods import METHOD_TABLE, METHODS

PACKAGE = Path(__file__).resolve().parent
"""What a worker runs: this package's ``__main__.py``."""


def partition(methods: Sequence[str], workers: int) -> list[list[str]]:
    """Split methods over workers, balancing the estimated cost; evaluation-only rows follow the model they test."""
    groups: list[list[str]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    trained = [m for m in methods if METHOD_TABLE[m].train is not None]
    for method in sorted(trained, key=lambda m: -METHOD_TABLE[m].cost):
        i = loads.index(min(loads))
        groups[i].append(method)
        loads[i] += METHOD_TABLE[method].cost
    for method in methods:
        if METHOD_TABLE[method].train is None:
            source = METHOD_TABLE[method].trained_as
            target = next((g for g in groups if source in g), None) if source is not None else None
            (target if target is not None else groups[loads.index(min(loads))]).append(method)
    return [g for g in groups if g]


def run_parallel(config: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run method groups in ``--workers`` subprocesses (``--threads`` each) and merge their results."""
    groups = partition(config.methods, config.workers)
    with tempfile.TemporaryDirectory(prefix="ecop-reproduce-") as tmp:
        for i, group in enumerate(groups):
            log(f"worker {i}: {', '.join(group)}")
        with ExitStack() as logs:
            procs = [_start_worker(config, group, Path(tmp, str(i)), logs) for i, group in enumerate(groups)]
            codes = [proc.wait() for proc in procs]
        failed = [i for i, code in enumerate(codes) if code != 0]
        for i in range(len(groups)):
            log(Path(tmp, f"{i}.log").read_text())
        if failed:
            raise RuntimeError(f"workers {failed} failed; see their logs above")
        parts = [json.loads(Path(tmp, f"{i}.json").read_text()) for i in range(len(groups))]
    results = _methods_of(parts, [f"worker {i}" for i in range(len(groups))])
    results["_meta"] = dict(
        parts[0]["_meta"],
        command=config.command,
        workers=groups,
        worker_wall_seconds=[p["_meta"].get("wall_seconds") for p in parts],
    )
    return results


def _start_worker(config: RunConfig, group: list[str], stem: Path, logs: ExitStack) -> subprocess.Popen[bytes]:
    """This package on ``group`` alone, writing ``<stem>.json`` and its output to ``<stem>.log``."""
    own = ["--workers", "1", "--methods", ",".join(group), "--json", f"{stem}.json", "--no-plot"]
    argv = [*_strip_flags(config.argv, ("--workers", "--methods", "--json")), *own]
    # the caller's ExitStack closes the log once the worker has finished
    logfile = logs.enter_context(open(f"{stem}.log", "w"))  # noqa: SIM115
    command = [sys.executable, str(PACKAGE), *argv]
    return subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT)


def _strip_flags(argv: Sequence[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` without ``flags`` and their values (``--flag VALUE`` and ``--flag=VALUE``)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in flags:
            skip = True
            continue
        if any(item.startswith(f + "=") for f in flags):
            continue
        out.append(item)
    return out


def merge_results(paths: Sequence[Path]) -> dict[str, Any]:
    """Combine result files of disjoint method sets (e.g. a rerun of some methods) into one."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    results = _methods_of(parts, [str(p) for p in paths])
    results["_meta"] = dict(
        parts[0]["_meta"],
        merged_from=[
            {"file": str(p), "command": part["_meta"]["command"], "wall_seconds": part["_meta"].get("wall_seconds")}
            for p, part in zip(paths, parts, strict=True)
        ],
    )
    return results


def _methods_of(parts: Sequence[dict[str, Any]], sources: Sequence[str]) -> dict[str, Any]:
    """The method records of result files of disjoint method sets, in :data:`METHODS` order (no ``_`` keys)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for method, record in part.items():
            if method.startswith("_"):
                continue
            if method in merged:
                raise ValueError(f"method {method!r} appears in more than one of {list(sources)}")
            merged[method] = record
    return {m: merged[m] for m in METHODS if m in merged}
