"""The loop batching mode before and after it split signals by ``unbind`` (issue 25, eighth session).

Before, ``loop_forward`` took each signal's parameters with one ``select`` per tensor and signal, whose backward
writes a zero-filled ``[B, ...]`` tensor per signal for the autograd engine to sum; now one ``unbind`` per tensor,
whose backward stacks the B gradients once. This script keeps the old function and times one meta-step
(``meta_objective`` and its backward) of ECoP and of Learnit in ``batching="loop"`` under each, alternating
old/new round-robin in one process, and checks that both give the same meta-gradients bit for bit in float64.

    python benchmarks/loop_unbind_ab.py --side 32 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial

import torch
from torch.func import functional_call

import ecop_wrap._src.backends.torch_func as torch_func
from ecop_wrap import ContextPruningMetaLearner, make_grid
from ecop_wrap._src.backends.forward import call_with_capture
from ecop_wrap.models import Siren

NEW_LOOP = torch_func.loop_forward


def old_loop(model, params, coords, capture):  # type: ignore[no-untyped-def]
    """The loop as it was: one ``select`` per parameter tensor and signal."""
    outs, caps = [], []
    for b in range(next(iter(params.values())).shape[0]):
        one = {n: p[b] for n, p in params.items()}
        signal_coords = coords if coords.ndim == 2 else coords[b]
        out, cap = call_with_capture(partial(functional_call, model, one, (signal_coords,)), capture)
        outs.append(out)
        caps.append(cap)
    return torch.stack(outs), (torch.stack(caps) if capture is not None else None)


def _learners(model: torch.nn.Module) -> dict[str, ContextPruningMetaLearner]:
    def make(K: int, L: int, gamma: float) -> ContextPruningMetaLearner:
        return ContextPruningMetaLearner(model, K=K, L=L, gamma=gamma, batching="loop", coord_range=None)

    return {"ECoP": make(16, 5, 0.25), "Learnit": make(4, 0, 1.0)}


def _meta_gradient(learner: ContextPruningMetaLearner, batch: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    loss = learner.meta_objective(batch).loss
    return [loss.detach(), *torch.autograd.grad(loss, list(learner.model.parameters()))]


def float64_identical() -> bool:
    """Old and new loop give the same ECoP meta-loss and meta-gradient, bit for bit (SIREN 5x32, 32x32, B 8)."""
    torch.manual_seed(0)
    model = Siren(2, 1, hidden_features=32, hidden_layers=4).double()
    batch = (make_grid((32, 32), dtype=torch.float64), torch.rand(8, 1024, 1, dtype=torch.float64))
    learner = _learners(model)["ECoP"]
    results = []
    for loop in (old_loop, NEW_LOOP):
        torch_func.loop_forward = loop
        learner.generator.manual_seed(0)
        results.append(_meta_gradient(learner, batch))
    torch_func.loop_forward = NEW_LOOP
    return all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    identical = float64_identical()
    torch.manual_seed(0)
    model = Siren(2, 1, hidden_features=256, hidden_layers=4)
    learners = _learners(model)
    points = args.side * args.side
    batch = (make_grid((args.side, args.side)), torch.rand(args.batch, points, 1))
    times: dict[str, list[float]] = {}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up
        for method, learner in learners.items():
            for name, loop in (("old", old_loop), ("new", NEW_LOOP)):
                torch_func.loop_forward = loop
                start = time.perf_counter()
                learner.meta_objective(batch).loss.backward()
                seconds = time.perf_counter() - start
                model.zero_grad()
                if repeat:
                    times.setdefault(f"{method} {name}", []).append(seconds)
    torch_func.loop_forward = NEW_LOOP
    medians = {key: statistics.median(values) for key, values in times.items()}
    print(
        f"loop before/after unbind: side {args.side}, SIREN 5x256, B={args.batch}, {args.threads} thread(s), "
        f"medians of {args.repeats} alternated repeats, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}; float64 meta-gradients bit-identical: {identical}"
    )
    for method in learners:
        old, new = medians[f"{method} old"], medians[f"{method} new"]
        print(f"{method:8s} old {old:7.3f} s   new {new:7.3f} s   new/old {new / old:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "identical_float64": identical, "times": times, "medians": medians}, f, indent=1
            )


if __name__ == "__main__":
    main()
