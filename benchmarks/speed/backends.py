"""Default (no measurement flag): the backends against a plain per-signal loop.

Every configuration (``--configs``) is first checked to give the same meta-gradient as the plain loop
(``benchmarks/plain_loop.py``; float32, rtol 1e-3), then timed ``--repeats`` times, round-robin across
configurations so that machine noise hits all of them alike. Reported: median seconds, min-max spread and the
ratio to the plain loop measured in the same run. Values are uniform noise.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from plain_loop import plain_meta_backward

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren, make_grid

from .common import timed

CONFIGS: dict[str, dict[str, Any]] = {
    "torch.func (auto)": {"backend": "torch.func"},
    "torch.func vmap": {"backend": "torch.func", "batching": "vmap"},
    "torch.func loop": {"backend": "torch.func", "batching": "loop"},
    "higher": {"backend": "higher"},
    "torch.func chunked": {"backend": "torch.func", "chunk_size": 1024},
    "torch.func checkpoint+chunked": {"backend": "torch.func", "chunk_size": 1024, "checkpoint": True},
}
PLAIN = "plain per-signal loop"


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def _zero(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def _checked_runners(
    args: argparse.Namespace, model: torch.nn.Module, coords: torch.Tensor, values: torch.Tensor
) -> dict[str, Callable[[], object]]:
    """The plain loop and every configuration that computes its meta-gradient (else ``SystemExit``)."""
    hyper: dict[str, Any] = {"gamma": args.gamma, "K": args.K, "L": args.L, "lam": 100.0}
    plain_meta_backward(model, coords, values, lr=1e-2, **hyper)
    reference = _grads(model)
    _zero(model)
    runners: dict[str, Callable[[], object]] = {
        PLAIN: lambda: plain_meta_backward(model, coords, values, lr=1e-2, **hyper)
    }
    for name in (c.strip() for c in args.configs.split(",") if c.strip()):
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
    return runners


def run_backends(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time the backends and the plain loop round-robin; returns one row per configuration."""
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    coords = make_grid((args.side, args.side)).to(device)
    values = torch.rand(args.batch, args.side**2, 3).to(device)
    runners = _checked_runners(args, model, coords, values)
    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            times[name].append(timed(run, device))
            _zero(model)
    base = statistics.median(times[PLAIN])
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
