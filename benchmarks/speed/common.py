"""What every measurement shares: timing, the meta-batch, the two methods' settings, the run's description."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ecop_wrap import make_grid

LEARNIT = "Learnit"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def spread(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise SystemExit(f"{what} must list non-negative integers, got {text!r}")
    return values


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON's ``meta``: arguments, threads, versions, machine and load."""
    return {
        "args": dict(vars(args)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
    }


def describe(args: argparse.Namespace) -> str:
    """The machine, for a table's header."""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{load}"
    )


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)


def meta_batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
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


def learnit_hyper(args: argparse.Namespace) -> dict[str, Any]:
    """Learnit as ECoP's special case: the full context (gamma 1), ``--learnit-K`` steps, no bootstrap."""
    return {"gamma": 1.0, "K": args.learnit_K, "L": 0, "lam": 0.0}


def ecop_hyper(args: argparse.Namespace) -> dict[str, Any]:
    return {"gamma": args.gamma, "K": args.K, "L": args.L, "lam": args.lam}
