"""``--ranking``: the ranking forward alone, in the default pieces against the whole context, per batching mode.

One graph-free ranking pass (``ContextEvaluator.errors``: every point's error, no graph) of ECoP's learner on the
meta-batch, at per-signal parameters (theta_0 plus small noise, so that no pass is shared between signals), for
``rank_chunk="auto"`` (on a CPU: pieces of ``CPU_RANK_CHUNK`` points) and ``"whole"`` in each batching mode of
``--ranking-modes``, timed round-robin ``--repeats`` times (medians). Each configuration's errors are checked
equal, bit for bit, to the whole-context loop's. A meta-step makes K such passes (the first, at theta_0, for
one signal only).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any

import torch

from ecop_wrap import ContextPruningMetaLearner, Siren
from ecop_wrap._src.builder import CPU_RANK_CHUNK

from .common import describe, ecop_hyper, meta_batch, spread, timed

PIECES = ("auto", "whole")


def _errors_fn(learner: ContextPruningMetaLearner, batch: tuple[torch.Tensor, torch.Tensor]):  # type: ignore[no-untyped-def]
    ctx = learner.evaluator(batch)
    gen = torch.Generator(device=batch[1].device).manual_seed(0)
    init = {n: learner.model.get_parameter(n).detach() for n in learner.adapted}
    params = {
        n: p.expand(ctx.batch, *p.shape) + 1e-3 * torch.randn(ctx.batch, *p.shape, generator=gen, device=p.device)
        for n, p in init.items()
    }

    def errors() -> torch.Tensor:
        ctx._errors_memo = None  # time the pass itself, not the evaluator's memo of it
        return ctx.errors(params)

    return ctx, errors


def run_ranking(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    coords, values, what = meta_batch(args, device)
    batch = (coords, values)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    modes = [m.strip() for m in args.ranking_modes.split(",") if m.strip()]
    passes, pieces = {}, {}
    for mode in modes:
        for piece in PIECES:
            learner = ContextPruningMetaLearner(
                copy.deepcopy(model), **ecop_hyper(args), batching=mode, rank_chunk=piece, seed=0
            )
            ctx, errors = _errors_fn(learner, batch)
            passes[f"{mode}, {piece}"], pieces[f"{mode}, {piece}"] = errors, ctx.rank_chunk
    with torch.no_grad():
        reference = passes[f"{modes[0]}, whole"]()
        identical = {name: bool(torch.equal(fn(), reference)) for name, fn in passes.items()}
        times: dict[str, list[float]] = {name: [] for name in passes}
        for _ in range(args.repeats):
            for name, fn in passes.items():
                times[name].append(timed(fn, device))
    rows = {
        name: {**spread(t), "rank_chunk": pieces[name], "equal_to_whole_loop": identical[name]}
        for name, t in times.items()
    }
    print(
        f"\n--ranking: one ranking pass, medians of {args.repeats} repeats (round-robin); side {args.side}, SIREN "
        f"{args.layers + 1}x{args.width}, B={args.batch}, {what}; CPU_RANK_CHUNK {CPU_RANK_CHUNK}; {describe(args)}"
    )
    print(f"{'batching, rank_chunk':22s} {'points/piece':>12s} {'median ms':>10s} {'min-max ms':>17s} {'equal':>6s}")
    for name, r in rows.items():
        shown = "all" if r["rank_chunk"] is None else str(r["rank_chunk"])
        print(
            f"{name:22s} {shown:>12s} {1e3 * r['median_s']:10.1f} {1e3 * r['min_s']:8.1f}-{1e3 * r['max_s']:<8.1f}"
            f" {'yes' if r['equal_to_whole_loop'] else 'NO':>6s}"
        )
    for mode in modes:
        whole, auto = (statistics.median(times[f"{mode}, {p}"]) for p in ("whole", "auto"))
        print(f"{mode}: pieces take {auto / whole:.2f}x the whole-context pass")
    return {"rows": rows, "data": what, "cpu_rank_chunk": CPU_RANK_CHUNK}
