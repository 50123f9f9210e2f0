"""One example run from start to end (:func:`run`): meta-training, checkpoints, the held-out test, the
pictures and ``summary.json``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, trace_selection
from ecop_wrap.data import SignalDataset
from ecop_wrap.plotting import plot_psnr_curves

from .flags import ExampleConfig
from .pictures import ReconstructionsPicture, SelectionPicture
from .training import ECOP, Evaluation, Method, build_learners, compared_methods, evaluate, meta_train

__all__ = ["Example", "run"]


@dataclass
class Example:
    """One modality's data, model and pictures.

    Attributes:
        name: used in titles and the default output folder.
        train, test: meta-training and held-out signals on the same grid.
        make_model: a fresh (randomly initialised) INR; called once, then copied for the second method.
        show_reconstructions: ``(test values [n, M, D], {method: reconstructions [n, M, D]}, {method: psnr [n]},
            names [n], out_dir) -> list of written paths``, for a few test signals.
        show_selection: ``(signal values [M, D], SelectionTrace, out_dir) -> written path``, Figure-1 view
            (see :mod:`.pictures` for both).
        coord_range: the coordinates' range, passed to the learners (None: no check).
        notes: extra facts for ``summary.json`` (data source, sizes, ...).
    """

    name: str
    train: SignalDataset
    test: SignalDataset
    make_model: Callable[[], nn.Module]
    show_reconstructions: ReconstructionsPicture
    show_selection: SelectionPicture
    coord_range: tuple[float, float] | None = (-1.0, 1.0)
    notes: dict[str, Any] = field(default_factory=dict)


def _summary(
    example: Example,
    config: ExampleConfig,
    seconds: float,
    results: dict[str, Evaluation],
    training: dict[str, list[float]],
) -> dict[str, Any]:
    """What ``summary.json`` holds: the data, every flag, the test PSNR per step and the late training PSNR."""
    tail = max(1, len(next(iter(training.values()))) // 10)
    return {
        "modality": example.name,
        "train_signals": len(example.train),
        "test_signals": len(example.test),
        "grid": list(example.train.shape),
        "points_per_signal": example.train.num_points,
        "meta_training_seconds": round(seconds, 1),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.flags.items()},
        "notes": example.notes,
        "test_psnr": {
            name: {
                "mean_per_step": [round(float(v), 3) for v in r.psnr.mean(dim=1)],
                "final_mean": round(float(r.psnr[-1].mean()), 3),
                "final_std": round(float(r.psnr[-1].std()) if r.psnr.shape[1] > 1 else 0.0, 3),
            }
            for name, r in results.items()
        },
        "train_psnr_last_10pct": {n: round(sum(v[-tail:]) / tail, 3) for n, v in training.items()},
    }


def _print_table(results: dict[str, Evaluation], test_steps: int) -> None:
    """The held-out PSNR of every method at a few test steps, as a table on stdout."""
    marks = sorted({0, 1, test_steps // 4, test_steps // 2, test_steps})
    print("\nheld-out PSNR (dB, mean over signals) after k full-context test steps")
    print("method   " + "".join(f"{'k=' + str(k):>9}" for k in marks))
    for name, result in results.items():
        means = result.psnr.mean(dim=1)
        print(f"{name:<9}" + "".join(f"{float(means[k]):>9.2f}" for k in marks))


def run(example: Example, config: ExampleConfig) -> dict[str, Any]:
    """Meta-train both methods, save checkpoints, test on held-out signals, draw pictures, write summary.json."""
    out = Path(config.out) if config.out is not None else Path("outputs") / example.name
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{example.name}: {len(example.train)} training and {len(example.test)} held-out signals, grid "
        f"{example.train.shape} ({example.train.num_points} points), writing to {out}/"
    )
    methods = compared_methods(config, example.coord_range)
    learners = build_learners(example.make_model, methods, config)
    for name, learner in learners.items():
        print(f"  {name}: {learner!r}")
    start = time.perf_counter()
    training = meta_train(learners, example.train, config)
    seconds = time.perf_counter() - start
    print(f"meta-training took {seconds:.0f} s")
    for method in methods:
        learners[method.name].save(out / method.checkpoint)
    results = evaluate(learners, methods, example.test, config)
    _print_table(results, config.test_steps)
    written = _draw(example, config, methods, learners, results, training, out)
    summary = _summary(example, config, seconds, results, training)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = [Path(p).name for p in written] + [m.checkpoint for m in methods] + ["summary.json"]
    print(f"wrote {', '.join(files)} in {out}/")
    return summary


def _draw(
    example: Example,
    config: ExampleConfig,
    methods: tuple[Method, ...],
    learners: dict[str, ContextPruningMetaLearner],
    results: dict[str, Evaluation],
    training: dict[str, list[float]],
    out: Path,
) -> list[str]:
    """The modality's two pictures and the two PSNR curves; returns the paths written."""
    # the first and last held-out signals and evenly spaced ones between (neighbours are often alike)
    shown = torch.linspace(0, len(example.test) - 1, min(config.show, len(example.test))).round().long().unique()
    written = example.show_reconstructions(
        example.test.stacked()[shown],
        {name: r.reconstructions[shown] for name, r in results.items()},
        {name: r.psnr[-1, shown] for name, r in results.items()},
        [example.test.names[i] for i in shown.tolist()],
        out,
    )
    written.append(
        plot_psnr_curves(
            {method.label: results[method.name].psnr for method in methods},
            out / "psnr_per_step.png",
            title=f"{example.name}: {len(example.test)} held-out signals after {config.outer_steps} outer steps "
            "(mean ± std)",
            xlabel="test-time adaptation step k (full context)",
        )
    )
    written.append(
        plot_psnr_curves(
            {name: _running_mean(v) for name, v in training.items()},
            out / "meta_training.png",
            title=f"{example.name}: training-batch PSNR after each method's inner loop (running mean)",
            xlabel="outer step",
        )
    )
    signal = (example.test.coords, example.test.stacked()[0])
    trace = trace_selection(learners[ECOP], signal)
    written.append(example.show_selection(signal[1], trace, out))
    return written


def _running_mean(values: list[float], window: int = 20) -> list[float]:
    """Mean of the last ``window`` finite values at every position (skipped steps report non-finite PSNR)."""
    out: list[float] = []
    kept: list[float] = []
    for value in values:
        if math.isfinite(value):
            kept = [*kept, value][-window:]
        out.append(sum(kept) / len(kept) if kept else float("nan"))
    return out
