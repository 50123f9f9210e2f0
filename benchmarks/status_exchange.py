"""Per-step cost of the fault-status exchange that ``meta_step`` runs before its gradient all-reduce.

Usage:
    python benchmarks/status_exchange.py --json benchmarks/results/status_exchange.json

Starts two CPU processes (gloo, 127.0.0.1, one thread each) and measures, on rank 0:

* ``exchange_status`` alone: one all_gather of a 512-byte record per rank, median microseconds per call;
* ``meta_step`` with the exchange (the library as shipped) and without it (``exchange_status`` replaced by a
  no-op for the measurement only), in alternating blocks so that machine noise hits both alike, for a small SIREN
  (the example's defaults: width 64, 3 hidden layers, 16x16 images, 4 signals per rank, K=4, L=2);
* ``weighted_all_reduce`` of that model's gradient, for scale.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ecop_wrap.distributed as distributed
from ecop_wrap import ContextPruningMetaLearner, Siren, make_grid
from ecop_wrap.distributed import exchange_status, weighted_all_reduce


def _no_status(*args: Any, **kwargs: Any) -> None:
    """Stands in for exchange_status: the step without the exchange, for the comparison only."""


def _per_call_us(fn: Any, calls: int, blocks: int) -> list[tuple[float, float]]:
    """``(wall, cpu)`` microseconds per call for each of ``blocks`` blocks of ``calls`` calls.

    CPU time is this process's (all its threads, gloo's included): what the call costs the machine, which a
    busy machine does not inflate the way it inflates the wall time of a collective (both ranks must be
    scheduled for it to complete).
    """
    out = []
    for _ in range(blocks):
        dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        out.append(((time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6))
    return out


def _run(rank: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=300)
    )
    exchange = _per_call_us(lambda: exchange_status(True, "", 1), args.calls, args.blocks)

    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.depth)
    learner = ContextPruningMetaLearner(model, 0.25, args.K, args.L, 1.0, outer_lr=1e-4)
    coords = make_grid((args.side, args.side))
    values = torch.rand(args.batch, coords.shape[0], 3, generator=torch.Generator().manual_seed(rank))
    grads = [torch.zeros_like(p) for p in model.parameters()]
    reduce = _per_call_us(lambda: weighted_all_reduce(grads, 1.0), args.calls, args.blocks)

    shipped = distributed.exchange_status
    for _ in range(args.warmup):
        learner.meta_step((coords, values))
    times: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
    for block in range(2 * args.step_blocks):
        mode = "with" if block % 2 == 0 else "without"
        distributed.exchange_status = shipped if mode == "with" else _no_status
        times[mode] += _per_call_us(lambda: learner.meta_step((coords, values)), args.steps, 1)
    distributed.exchange_status = shipped
    if rank == 0:
        queue.put(
            {
                "exchange_us": exchange,
                "all_reduce_us": reduce,
                "meta_step_us": times,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500, help="exchange / all-reduce calls per block")
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="meta_steps per block")
    ap.add_argument("--step-blocks", type=int, default=7, help="blocks per mode (alternating)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--side", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="signals per rank")
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--L", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_run, args=(r, port, args, queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    result = queue.get(timeout=1800)
    for proc in procs:
        proc.join(60)

    def median(samples: list[tuple[float, float]], which: int, scale: float = 1.0) -> float:
        return round(statistics.median(s[which] for s in samples) / scale, 3)

    steps = result["meta_step_us"]
    summary = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread per rank",
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "exchange_status_us": {"wall": median(result["exchange_us"], 0), "cpu": median(result["exchange_us"], 1)},
        "weighted_all_reduce_us": {
            "wall": median(result["all_reduce_us"], 0),
            "cpu": median(result["all_reduce_us"], 1),
        },
        "model_parameters": result["parameters"],
        "meta_step_ms_with_exchange": {"wall": median(steps["with"], 0, 1e3), "cpu": median(steps["with"], 1, 1e3)},
        "meta_step_ms_without_exchange": {
            "wall": median(steps["without"], 0, 1e3),
            "cpu": median(steps["without"], 1, 1e3),
        },
        "raw": result,
        "args": vars(args),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)


if __name__ == "__main__":
    main()
