"""``--scale``: one unprofiled meta-step at a large size, with where its CPU time goes outside the arithmetic.

One meta-step of ``--scale-method`` (``ecop``: ``--gamma --K --L``; ``learnit``: gamma 1, ``--learnit-K``) in the
memory mode of ``--scale-settings`` (learner keywords as Python literals; default
``checkpoint=True,chunk_size=16384``, issue 25's item 5), ``--repeats`` times in this process, no warm-up (the
first step is what a user of a one-step-per-image job waits for). Each step reports wall time, the process's
user and system CPU time (``os.times``), minor page faults (``getrusage``) and the process's peak resident
memory so far (``ru_maxrss``: peak RSS, not live tensor bytes). Run each method in its own process (one
invocation each) so that its peak RSS is its own.

System time is the kernel's share: mostly zeroing the fresh pages that glibc's ``mmap`` gives every block of
32 MiB or more (an activation of 65k points x 256 floats is 64 MiB). ``THP_MEM_ALLOC_ENABLE=1`` in the
environment (read by PyTorch at start-up) asks for transparent huge pages for such blocks; the JSON records it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from typing import Any

import torch

from ecop_wrap import ContextPruningMetaLearner, Siren

from .common import describe, ecop_hyper, learnit_hyper, meta_batch
from .phases import parse_settings

DEFAULT_SETTINGS = "checkpoint=True,chunk_size=16384"


def _one_step(learner: ContextPruningMetaLearner, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    cuda = batch[1].device.type == "cuda"
    if cuda:  # the step's own peak of allocated GPU memory, and a wall time that waits for its kernels
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    usage, times, started = resource.getrusage(resource.RUSAGE_SELF), os.times(), time.perf_counter()
    learner.meta_step(batch)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    usage_after, times_after = resource.getrusage(resource.RUSAGE_SELF), os.times()
    step = {
        "wall_s": round(wall, 3),
        "user_s": round(times_after.user - times.user, 2),
        "sys_s": round(times_after.system - times.system, 2),
        "minor_faults": usage_after.ru_minflt - usage.ru_minflt,
        "peak_rss_gib": round(usage_after.ru_maxrss / 2**20, 3),  # Linux: KiB
    }
    if cuda:
        step["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return step


def run_scale(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time ``--repeats`` meta-steps of one method at ``--side`` (see the module docstring)."""
    coords, values, what = meta_batch(args, device)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    settings = parse_settings(args.scale_settings)
    hyper = ecop_hyper(args) if args.scale_method == "ecop" else learnit_hyper(args)
    learner = ContextPruningMetaLearner(model, **hyper, **settings, seed=0)
    steps = []
    for repeat in range(args.repeats):
        steps.append(_one_step(learner, (coords, values)))
        print(f"--scale {args.scale_method} step {repeat + 1}/{args.repeats}: {steps[-1]}", flush=True)
    wall = statistics.median(s["wall_s"] for s in steps)
    print(
        f"\n--scale: {args.scale_method} meta-step at side {args.side} (M = {args.side**2}), SIREN "
        f"{args.layers + 1}x{args.width}, B={args.batch}, {what}; settings {settings}; median wall {wall:.1f} s; "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; {describe(args)}"
    )
    return {
        "method": args.scale_method,
        "settings": {k: str(v) for k, v in settings.items()},
        "hyper": hyper,
        "data": what,
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "steps": steps,
        "median_wall_s": wall,
    }
