"""Time to quality (the paper's Figure 9): how much meta-training CPU time each method needs to reach the best
validation PSNR that Learnit (and Learnit + learned rates) reach within their whole budget.

    python benchmarks/time_to_quality.py                          # builtin 32x32 crops, SIREN 3x128, B = 4
    python benchmarks/time_to_quality.py --steps 3000 --eval-every 50 --json benchmarks/results/ttq.json
    python benchmarks/time_to_quality.py --quick                  # seconds: a smoke test of the whole path

The methods and their learning rates come from ``benchmarks/reproduce``'s method table and the rates that
docs/results.md picked on the validation photos (ECoP and ECoP + per-tensor rates: outer lr 3e-4; Learnit and
Learnit + per-tensor rates: 1e-3; inner lr 1e-2; meta-gradient clipped at 1.0); ``--outer-lr-for`` changes them.
Every ``--eval-every`` outer steps (4x less often past ``--dense-until``) each method fits the validation crops
from its current initialization (``--test-steps`` full-context steps, as ``reproduce`` tests it: ECoP gradient-
scaled, learned rates where the method learns them) and records the mean PSNR against the CPU time spent in its
meta-steps so far (``time.process_time`` around ``meta_step`` only: the validation fits and the rest are not
counted).

The baselines (Learnit, Learnit + rates) run their whole ``--steps`` first; their best validation PSNR is then
each ECoP method's target. An ECoP method stops once it has passed every target it is compared with, or at
``--steps`` (``--full`` runs every method for the whole budget, for the complete picture). Reported for every
pair: the CPU seconds at which the method first reached the baseline's best, the baseline's CPU seconds to its
own best, and their ratio (the issue's bar: <= 0.15). The machine's load average before and after the run is in
the JSON: CPU time is robust to other jobs but not immune (shared caches, memory bandwidth).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnose.cli import machine
from reproduce.config import RunConfig
from reproduce.evaluation import evaluate
from reproduce.methods import METHOD_TABLE, Method
from reproduce.models import build_model
from reproduce.splits import Splits, load_splits
from reproduce.training import make_trainer

BASELINES = ("learnit", "learnit_lr_tensor")
"""The methods whose best validation PSNR are the targets."""
COMPARED = {"ecop": ("learnit", "learnit_lr_tensor"), "ecop_lr_tensor": ("learnit_lr_tensor", "learnit")}
"""Each ECoP method and the baselines it is timed against (the first is the issue's pair)."""
VALIDATED_OUTER_LR = {"ecop": 3e-4, "ecop_lr_tensor": 3e-4, "learnit": 1e-3, "learnit_lr_tensor": 1e-3}
"""Outer learning rates picked on the validation photos (docs/results.md, "Learning rates ...")."""
BAR = 0.15


@dataclass
class Curve:
    """One method's validation PSNR against the CPU seconds of its meta-steps."""

    method: str
    steps: list[int] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)

    def add(self, step: int, cpu: float, psnr: float) -> None:
        self.steps.append(step)
        self.cpu_seconds.append(round(cpu, 3))
        self.psnr.append(round(psnr, 4))

    def best(self) -> tuple[float, float]:
        """``(best PSNR, CPU seconds when it was first reached)``."""
        i = max(range(len(self.psnr)), key=lambda j: (self.psnr[j], -j))
        return self.psnr[i], self.cpu_seconds[i]

    def time_to(self, target: float) -> float | None:
        """CPU seconds at the first evaluation at or above ``target`` (None: never)."""
        return next((t for t, p in zip(self.cpu_seconds, self.psnr, strict=True) if p >= target), None)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="outer steps of each baseline (the budget)")
    parser.add_argument("--eval-every", type=int, default=25, help="outer steps between validation fits")
    parser.add_argument(
        "--dense-until", type=int, default=500, help="past this step, validation fits come 4x less often"
    )
    parser.add_argument("--val-size", type=int, default=50, help="validation crops fitted at every evaluation")
    parser.add_argument("--test-steps", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--outer-lr-for", action="append", default=[], metavar="METHOD=LR", help="override a validated outer lr"
    )
    parser.add_argument("--methods", default=",".join((*BASELINES, *COMPARED)), help="comma-separated subset")
    parser.add_argument("--full", action="store_true", help="run every method for the whole budget")
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test): 8x8 crops, 6 steps")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="write PSNR against CPU time as a PNG here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.val_size, args.test_steps, args.dense_until = 6, 2, 4, 2, 4
        args.resolution, args.width, args.depth, args.train_size = 8, 16, 1, 16
    unknown = set(args.methods.split(",")) - set(BASELINES) - set(COMPARED)
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {[*BASELINES, *COMPARED]}")
    return args


def run_config(args: argparse.Namespace) -> RunConfig:
    """The ``reproduce`` settings of this comparison (the builtin crops, each method's validated rates)."""
    rates = dict(VALIDATED_OUTER_LR)
    for item in args.outer_lr_for:
        name, _, value = item.partition("=")
        rates[name] = float(value)
    return RunConfig(
        images="builtin",
        resolution=args.resolution,
        width=args.width,
        depth=args.depth,
        batch=args.batch,
        train_size=args.train_size,
        eval_size=args.val_size,
        test_steps=args.test_steps,
        seed=args.seed,
        threads=args.threads,
        max_grad_norm=1.0,
        outer_lr_for=tuple(rates.items()),
    )


def is_validated(step: int, steps: int, every: int, dense_until: int) -> bool:
    """The fixed schedule: every ``every`` steps up to ``dense_until``, every ``4 every`` after, and the last."""
    return step == steps or step % (every if step <= dense_until else 4 * every) == 0


def train_curve(
    method: Method,
    config: RunConfig,
    splits: Splits,
    steps: int,
    every: int,
    targets: dict[str, float],
    dense_until: int | None = None,
) -> Curve:
    """Meta-train ``method`` for up to ``steps`` outer steps, fitting the validation crops on the schedule of
    :func:`is_validated` (every ``every`` steps when ``dense_until`` is None).

    Stops early once every value of ``targets`` (baseline name -> PSNR) has been reached.
    """
    model = build_model(config, splits)
    trainer = make_trainer(method.training(config), model, config)
    setting = method.fit_setting(config)
    batches = splits.train.batches(config.batch, seed=config.seed, infinite=True)
    curve, cpu = Curve(method.name), 0.0

    def validate(step: int) -> None:
        psnr = evaluate(trainer, splits, splits.val, config.test_steps, setting)["psnr"]
        curve.add(step, cpu, psnr)
        print(f"  {method.name}: step {step:5d}  CPU {cpu:8.1f} s  validation PSNR {psnr:.2f} dB", flush=True)

    validate(0)
    for step in range(1, steps + 1):
        batch = next(batches)
        started = time.process_time()
        trainer.meta_step(batch)
        cpu += time.process_time() - started
        if is_validated(step, steps, every, steps if dense_until is None else dense_until):
            validate(step)
            if targets and all(curve.time_to(t) is not None for t in targets.values()):
                print(f"  {method.name}: passed {sorted(targets)} at step {step}; stopping", flush=True)
                break
    return curve


def compare(curves: dict[str, Curve]) -> list[dict[str, Any]]:
    """Every compared pair: time to the baseline's best and the ratio to the baseline's own time."""
    rows = []
    for name, baselines in COMPARED.items():
        for base in baselines:
            if name not in curves or base not in curves:
                continue
            best, base_time = curves[base].best()
            reached = curves[name].time_to(best)
            ratio = None if reached is None or base_time <= 0 else reached / base_time
            rows.append(
                {
                    "method": name,
                    "baseline": base,
                    "baseline_best_psnr": best,
                    "baseline_cpu_seconds_to_best": base_time,
                    "method_cpu_seconds_to_it": reached,
                    "ratio": None if ratio is None else round(ratio, 4),
                    "meets_bar": None if ratio is None else ratio <= BAR,
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | baseline | baseline best (dB) | baseline CPU s to best | method CPU s to it | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        reached = "never" if r["method_cpu_seconds_to_it"] is None else f"{r['method_cpu_seconds_to_it']:.2f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(
            f"| {r['method']} | {r['baseline']} | {r['baseline_best_psnr']:.2f} | "
            f"{r['baseline_cpu_seconds_to_best']:.2f} | {reached} | {ratio} |"
        )
    return "\n".join(lines)


def plot(curves: dict[str, Curve], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for curve in curves.values():
        ax.plot(curve.cpu_seconds, curve.psnr, marker=".", label=curve.method)
    for base in BASELINES:
        if base in curves:
            ax.axhline(curves[base].best()[0], color="grey", lw=0.6, ls="--")
    ax.set_xscale("symlog", linthresh=10.0)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("CPU seconds of meta-steps")
    ax.set_ylabel("validation PSNR after test-time fit (dB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = run_config(args)
    # the validation photos play the held-out role here: learning rates were picked on them, nothing on test
    splits = load_splits(config)
    splits = replace(splits, val=splits.val[: args.val_size])
    load_before = os.getloadavg()
    methods = args.methods.split(",")
    curves: dict[str, Curve] = {}
    for name in [m for m in methods if m in BASELINES]:
        print(f"{name}: {args.steps} outer steps (the budget)", flush=True)
        curves[name] = train_curve(
            METHOD_TABLE[name], config, splits, args.steps, args.eval_every, {}, args.dense_until
        )
    for name in [m for m in methods if m in COMPARED]:
        targets = {} if args.full else {b: curves[b].best()[0] for b in COMPARED[name] if b in curves}
        print(f"{name}: up to {args.steps} outer steps, targets {targets}", flush=True)
        curves[name] = train_curve(
            METHOD_TABLE[name], config, splits, args.steps, args.eval_every, targets, args.dense_until
        )
    rows = compare(curves)
    print(format_rows(rows))
    result = {
        "command": "python benchmarks/time_to_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "outer_lr": {m: config.outer_lr_of(m) for m in methods},
        "data": splits.description,
        "machine": {
            **machine(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "curves": {name: vars(curve) for name, curve in curves.items()},
        "pairs": rows,
        "bar": BAR,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(curves, args.plot)
    return result


if __name__ == "__main__":
    main()
