"""Memory of one meta-training step for Learnit and ECoP in each memory mode, against image side.

Usage:
    python benchmarks/memory.py --sides 64,128,256 --width 256 --layers 4 --batch 2 \
        --budget-gb 8 --json benchmarks/results/memory.json --plot benchmarks/results/memory.png

For every (mode, side) a fresh subprocess builds a SIREN and a random signal batch, then runs one full
meta-step (meta-loss, backward, optimizer step) and reports:

* ``saved_bytes``: bytes of tensors the autograd graph still holds when the backward starts
  (:class:`ecop_wrap.SavedTensorMeter`; deterministic for a given configuration);
* ``peak_bytes``: on CUDA ``torch.cuda.max_memory_allocated`` for the step; on CPU the peak resident set
  size of the subprocess during the step minus its peak before the step (``ru_maxrss``). The subprocess
  runs with glibc's ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` fixed at 128 KiB: otherwise
  glibc raises its mmap threshold as large blocks are freed and keeps later freed memory resident, so RSS
  would measure the allocator's caching rather than the algorithm's memory.

The largest side under ``--budget-gb`` is read off a straight-line fit of peak memory against the number
of points for each mode (memory is affine in M here), marked ``extrapolated`` when beyond the measured sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys

MODES = {
    "Learnit (gamma=1, K=4)": dict(gamma=1.0, K=4, L=0, lam=0.0),
    "ECoP default": dict(gamma=0.25, K=16, L=5, lam=100.0),
    "ECoP chunk_size": dict(gamma=0.25, K=16, L=5, lam=100.0, chunk_size=4096),
    "ECoP checkpoint": dict(gamma=0.25, K=16, L=5, lam=100.0, checkpoint=True),
    "ECoP checkpoint + chunk_size": dict(gamma=0.25, K=16, L=5, lam=100.0, checkpoint=True, chunk_size=4096),
}


def _child(args: argparse.Namespace) -> None:
    import torch

    from ecop_wrap import ContextPruningMetaLearner, SavedTensorMeter, Siren, make_grid

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Siren(2, 3, args.width, args.layers).to(device)
    coords = make_grid((args.side, args.side), device=device)
    values = torch.rand(args.batch, args.side**2, 3, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    learner = ContextPruningMetaLearner(model, optimizer=optimizer, batching="bmm", **MODES[args.mode])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with SavedTensorMeter() as meter:
        loss = learner.meta_loss((coords, values))
        saved = meter.live_bytes()
    learner.optimizer.zero_grad()
    loss.backward()
    learner.optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps({"saved_bytes": saved, "peak_bytes": peak}))


def _measure(args: argparse.Namespace, mode: str, side: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--mode",
        mode,
        "--side",
        str(side),
        "--width",
        str(args.width),
        "--layers",
        str(args.layers),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _largest_side(points: list[tuple[int, int]], budget: float) -> dict:
    """Largest square side whose affine-fit peak memory stays under ``budget`` bytes."""
    if len(points) < 2:
        return {"side": None}
    n = len(points)
    mean_m = sum(m for m, _ in points) / n
    mean_b = sum(b for _, b in points) / n
    slope = sum((m - mean_m) * (b - mean_b) for m, b in points) / sum((m - mean_m) ** 2 for m, _ in points)
    intercept = mean_b - slope * mean_m
    if slope <= 0:
        return {"side": None}
    side = int(((budget - intercept) / slope) ** 0.5)
    return {"side": side, "extrapolated": side**2 > max(m for m, _ in points), "bytes_per_point": slope}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="64,128,256", help="comma-separated image sides")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4, help="sine layers (4 = the paper's 5-layer SIREN)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", default=";".join(MODES), help="semicolon-separated subset of: " + "; ".join(MODES))
    ap.add_argument("--budget-gb", type=float, default=8.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of peak memory against number of points (needs matplotlib)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--side", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    sides = [int(s) for s in args.sides.split(",")]
    modes = [m.strip() for m in args.modes.split(";") if m.strip()]
    results: dict[str, dict] = {}
    for mode in modes:
        results[mode] = {}
        for side in sides:
            r = _measure(args, mode, side)
            results[mode][str(side)] = r
            print(f"{mode:32s} side {side:5d}: {r}", flush=True)
    budget = args.budget_gb * 2**30
    largest = {
        mode: _largest_side([(int(s) ** 2, r["peak_bytes"]) for s, r in rows.items() if "peak_bytes" in r], budget)
        for mode, rows in results.items()
    }
    _print_table(results, sides, largest, args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = {
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "mode", "side")},
            "machine": platform.platform(),
            "cpu_count": os.cpu_count(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "largest_side_under_budget": largest}, f, indent=2)
    if args.plot:
        _plot(results, args.plot, args)


def _print_table(results: dict, sides: list[int], largest: dict, args: argparse.Namespace) -> None:
    print(
        f"\nSIREN {args.layers + 1}x{args.width}, B={args.batch}, device {args.device}; "
        "MiB saved by autograd / MiB peak"
    )
    print(f"{'mode':32s}" + "".join(f"{s:>20d}" for s in sides) + f"  largest side <= {args.budget_gb:g} GB")
    for mode, rows in results.items():
        cells = []
        for s in sides:
            r = rows[str(s)]
            cells.append(
                f"{r['saved_bytes'] / 2**20:9.1f}/{r['peak_bytes'] / 2**20:<9.1f}"
                if "peak_bytes" in r
                else f"{'failed':>19s}"
            )
        big = largest[mode]
        tag = "" if big.get("side") is None else (f"{big['side']}" + (" (extrapolated)" if big["extrapolated"] else ""))
        print(f"{mode:32s}" + " ".join(cells) + f"  {tag}")


def _plot(results: dict, path: str, args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'ecop-wrap[examples]'); skipping the plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, rows in results.items():
        pts = sorted((int(s) ** 2, r["peak_bytes"] / 2**30) for s, r in rows.items() if "peak_bytes" in r)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of points M (side^2)")
    ax.set_ylabel("peak memory of one meta-step (GiB)")
    ax.set_title(f"SIREN {args.layers + 1}x{args.width}, B={args.batch}, {args.device}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
