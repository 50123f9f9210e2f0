"""Median meta_step / fit times per backend and memory mode against a plain per-signal autograd loop.

Usage:
    python benchmarks/speed.py --side 64 --width 256 --layers 4 --batch 8 --repeats 5 \
        --json benchmarks/results/speed.json

Every configuration is first checked to give the same meta-gradient as the plain loop (float32, rtol 1e-3),
then timed ``--repeats`` times, round-robin across configurations so that machine noise hits all of them alike.
Reported: median seconds, min-max spread and the ratio to the plain loop measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from plain_loop import plain_meta_backward

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren, make_grid

CONFIGS = {
    "torch.func (auto)": dict(backend="torch.func"),
    "torch.func vmap": dict(backend="torch.func", batching="vmap"),
    "torch.func loop": dict(backend="torch.func", batching="loop"),
    "higher": dict(backend="higher"),
    "torch.func chunked": dict(backend="torch.func", chunk_size=1024),
    "torch.func checkpoint+chunked": dict(backend="torch.func", chunk_size=1024, checkpoint=True),
}


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _zero(model):
    for p in model.parameters():
        p.grad = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=64, help="image side (M = side^2 points)")
    ap.add_argument("--width", type=int, default=256, help="SIREN hidden width")
    ap.add_argument("--layers", type=int, default=4, help="SIREN sine layers (4 = the paper's 5-layer SIREN)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gamma", type=float, default=0.25)
    ap.add_argument("--K", type=int, default=16)
    ap.add_argument("--L", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers)
    coords = make_grid((args.side, args.side))
    values = torch.rand(args.batch, args.side**2, 3)
    hyper = dict(gamma=args.gamma, K=args.K, L=args.L, lam=100.0)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]

    plain_meta_backward(model, coords, values, lr=1e-2, **hyper)
    reference = _grads(model)
    _zero(model)
    runners = {"plain per-signal loop": lambda: plain_meta_backward(model, coords, values, lr=1e-2, **hyper)}
    for name in names:
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
        runners[name] = lambda lr=learner: lr.meta_step((coords, values))
    adapter = GradScaledAdapter(model, steps=args.K, gamma=args.gamma)
    runners["fit (norm scaling)"] = lambda: adapter.fit((coords, values))

    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            _zero(model)
    base = statistics.median(times["plain per-signal loop"])
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
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = {
            "args": vars(args),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.platform(),
            "cpu_count": os.cpu_count(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
