"""Memory of one meta-training step for Learnit and ECoP, per memory mode, image side and CPU allocator setting.

Usage:
    # the user's view: live bytes and peak RSS under glibc's default malloc, the pinned thresholds and the opt-in
    python benchmarks/memory.py --sides 128 --width 256 --layers 4 --batch 2 --threads 1 \
        --modes "Learnit (gamma=1, K=4);ECoP default" --allocators default,pinned,configured \
        --json benchmarks/results/memory_allocators_128_b2.json
    # a quick version of the same comparison (64x64, about a minute)
    python benchmarks/memory.py --quick
    # memory against signal size (pinned thresholds, as in docs/benchmarks.md)
    python benchmarks/memory.py --sides 64,128,256 --batch 1 --allocators pinned --budget-gb 8 --plot memory.png
    # padding costs no graph: a ragged batch (photo crops at their own aspect ratios, padded by collate_signals)
    # against the sum over its signals run one by one, per memory mode (bytes autograd holds; seconds)
    python benchmarks/memory.py --ragged --sides 32 --width 64 --layers 3 --batch 4

Every (mode, allocator, side) runs in a fresh subprocess, so the numbers are independent of each other: it
builds a SIREN and a random signal batch, then runs ``--steps`` full meta-steps (meta-loss, backward, optimizer
step) and reports two different quantities:

* **live memory** (``saved_bytes``): bytes of tensors the autograd graph still holds when the first backward
  starts (:class:`ecop_wrap.SavedTensorMeter`). It is a function of the shapes only: deterministic, the same
  under every allocator, and what the paper's equal-memory pairing is about.
* **peak RSS** (``peak_rss_bytes``): the subprocess's peak resident set size (``ru_maxrss``), what the operating
  system, a job scheduler or ``top`` sees. ``step_peak_bytes`` is that peak minus the peak before the first
  step (interpreter, torch, model and data: ``rss_before_bytes``), i.e. what the steps added. On CUDA the
  step peak is ``torch.cuda.max_memory_allocated`` instead. Peak RSS depends on the allocator as well as on
  the algorithm, hence ``--allocators``:

  - ``default``: glibc's malloc as users run it (no ``MALLOC_*`` variables): it raises its mmap threshold
    up to 32 MiB as large blocks are freed and then keeps freed heap memory between live blocks resident;
  - ``pinned``: ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` fixed at 128 KiB, which this
    benchmark used before so that RSS follows live memory;
  - ``configured``: the child calls the opt-in :func:`ecop_wrap.memory.configure_cpu_allocator` first.

Each row also reports the step's CPU seconds (user and system; system time grows with the page faults that
returning memory to the kernel costs) and its minor page faults. Wall time on a shared machine says little;
CPU time says more, but other processes on the same cores still affect it.

The largest side under ``--budget-gb`` is read off a straight-line fit of the step peak against the number of
points for each mode and allocator (memory is affine in M here), marked ``extrapolated`` beyond the measured sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

MODES: dict[str, dict[str, Any]] = {
    "Learnit (gamma=1, K=4)": {"gamma": 1.0, "K": 4, "L": 0, "lam": 0.0},
    "ECoP default": {"gamma": 0.25, "K": 16, "L": 5, "lam": 100.0},
    "ECoP bootstrap pruned": {"gamma": 0.25, "K": 16, "L": 5, "lam": 100.0, "bootstrap_chunk": "pruned"},
    "ECoP chunk_size": {"gamma": 0.25, "K": 16, "L": 5, "lam": 100.0, "chunk_size": 4096},
    "ECoP checkpoint": {"gamma": 0.25, "K": 16, "L": 5, "lam": 100.0, "checkpoint": True},
    "ECoP checkpoint + chunk_size": {
        "gamma": 0.25,
        "K": 16,
        "L": 5,
        "lam": 100.0,
        "checkpoint": True,
        "chunk_size": 4096,
    },
}
# Latent-only adaptation of a ModulatedSiren (same width and depth, --latent-dim): only the code is per signal.
_LATENT = {"model": "modulated", "adapt": ["latent"]}
# the bootstrap in pruned-size pieces (the default before it went to one piece), with checkpointing too
MODES["ECoP checkpoint bootstrap pruned"] = {**MODES["ECoP checkpoint"], "bootstrap_chunk": "pruned"}
MODES.update(
    {
        "Learnit latent-only (gamma=1, K=4)": {**MODES["Learnit (gamma=1, K=4)"], **_LATENT},
        "ECoP latent-only": {**MODES["ECoP default"], **_LATENT},
        "ECoP latent-only bootstrap pruned": {**MODES["ECoP bootstrap pruned"], **_LATENT},
        "ECoP latent-only chunk_size": {**MODES["ECoP chunk_size"], **_LATENT},
        "ECoP latent-only checkpoint": {**MODES["ECoP checkpoint"], **_LATENT},
        "ECoP latent-only checkpoint + chunk_size": {**MODES["ECoP checkpoint + chunk_size"], **_LATENT},
    }
)
LEARNIT = "Learnit (gamma=1, K=4)"
ALLOCATORS = {
    "default": "glibc malloc as it comes (dynamic mmap threshold)",
    "pinned": "MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=131072",
    "configured": "ecop_wrap.memory.configure_cpu_allocator()",
}
_MALLOC_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_ARENA_MAX",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)
QUICK = {
    "sides": "64",
    "width": 256,
    "layers": 4,
    "batch": 2,
    "threads": 1,
    "modes": f"{LEARNIT};ECoP default",
    "allocators": "default,pinned,configured",
}
MIB = 2**20


# ----------------------------------------------------------------------------------------------- ragged
def ragged_saved_bytes(
    signals: list[tuple[Any, Any]], settings: dict[str, Any], width: int, layers: int, seed: int = 0
) -> dict[str, int]:
    """Bytes autograd holds for one meta-loss of a padded ragged batch and, summed, of its signals one by one.

    Args:
        signals: ``(coords [M_i, C], values [M_i, D])`` of different sizes, padded by ``collate_signals``.
        settings: the learner's settings (a row of :data:`MODES`; SIREN modes only).
        width, layers: the SIREN's hidden width and sine layers.

    Returns:
        ``{"padded": ..., "one_by_one": ...}``: :class:`ecop_wrap.SavedTensorMeter` live bytes.
    """
    import torch

    from ecop_wrap import ContextPruningMetaLearner, SavedTensorMeter, Siren
    from ecop_wrap.data import collate_signals

    def held(batch: tuple[Any, ...]) -> int:
        torch.manual_seed(seed)
        model = Siren(signals[0][0].shape[-1], signals[0][1].shape[-1], width, layers)
        learner = ContextPruningMetaLearner(model, **settings, coord_range=None, seed=seed)
        with SavedTensorMeter() as meter:
            loss = learner.meta_loss(batch)
            live = int(meter.live_bytes())
        del loss
        return live

    alone = sum(held((coords, values.unsqueeze(0))) for coords, values in signals)
    return {"padded": held(collate_signals(signals)), "one_by_one": alone}


def _ragged(args: argparse.Namespace) -> None:
    """``--ragged``: :func:`ragged_saved_bytes` of aspect crops (long side ``--sides``' first) per SIREN mode."""
    import torch

    from ecop_wrap.data import skimage_aspect_crops

    torch.set_num_threads(args.threads)
    side = int(args.sides.split(",")[0])
    crops = skimage_aspect_crops("train", side, n=args.batch, seed=0)
    signals = [crops[i] for i in range(len(crops))]
    sizes = [int(v.shape[0]) for _, v in signals]
    print(f"ragged batch: {len(signals)} crops of long side {side}, {sizes} points; SIREN {args.layers}x{args.width}")
    rows = {}
    for mode in [m.strip() for m in args.modes.split(";") if m.strip()]:
        if "model" in MODES[mode]:
            continue
        settings = dict(MODES[mode])
        if "chunk_size" in settings:
            settings["chunk_size"] = max(1, min(sizes) // 3)  # several chunks at these sizes
        r = ragged_saved_bytes(signals, settings, args.width, args.layers)
        r["ratio"] = r["padded"] / r["one_by_one"]
        rows[mode] = r
        print(
            f"{mode:32s} padded {r['padded'] / MIB:8.2f} MiB  one by one {r['one_by_one'] / MIB:8.2f} MiB  "
            f"ratio {r['ratio']:.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ragged": rows, "points": sizes, "side": side, "torch": _torch_version()}, f, indent=2)


# ------------------------------------------------------------------------------------------------ child
def _child(args: argparse.Namespace) -> None:
    configured: dict[str, int] = {}
    if args.allocator == "configured":
        from ecop_wrap.memory import configure_cpu_allocator

        configured = configure_cpu_allocator()
    import torch

    from ecop_wrap import ContextPruningMetaLearner, ModulatedSiren, SavedTensorMeter, Siren, make_grid

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    settings = dict(MODES[args.mode])
    if settings.pop("model", "siren") == "modulated":
        model = ModulatedSiren(2, 3, args.width, args.layers, latent_dim=args.latent_dim).to(device)
        batching = "auto"  # the per-signal latent is no nn.Linear weight: vmap
    else:
        model = Siren(2, 3, args.width, args.layers).to(device)
        batching = "bmm"
    coords = make_grid((args.side, args.side), device=device)
    values = torch.rand(args.batch, args.side**2, 3, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    learner = ContextPruningMetaLearner(model, optimizer=optimizer, batching=batching, **settings)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    usage_before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    saved = 0
    for step in range(args.steps):
        with SavedTensorMeter() as meter:
            loss = learner.meta_loss((coords, values))
            if step == 0:
                saved = meter.live_bytes()
        learner.optimizer.zero_grad()
        loss.backward()
        learner.optimizer.step()
        del loss
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_before, rss_peak = usage_before.ru_maxrss * 1024, usage.ru_maxrss * 1024  # Linux reports KiB
    result = {
        "saved_bytes": saved,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": rss_peak,
        "step_peak_bytes": rss_peak - rss_before,
        "user_s": usage.ru_utime - usage_before.ru_utime,
        "sys_s": usage.ru_stime - usage_before.ru_stime,
        "minor_faults": usage.ru_minflt - usage_before.ru_minflt,
        "wall_s": wall,
        "allocator_settings": configured,
    }
    if device.type == "cuda":
        result["step_peak_bytes"] = torch.cuda.max_memory_allocated() - before
    result["peak_bytes"] = result["step_peak_bytes"]  # the name earlier result files use
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------- parent
def _child_environment(allocator: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _MALLOC_VARIABLES}
    if allocator == "pinned":
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    return env


def _measure(args: argparse.Namespace, mode: str, allocator: str, side: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--mode",
        mode,
        "--allocator",
        allocator,
        "--side",
        str(side),
        "--width",
        str(args.width),
        "--layers",
        str(args.layers),
        "--latent-dim",
        str(args.latent_dim),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--steps",
        str(args.steps),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_environment(allocator), check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _largest_side(points: list[tuple[int, int]], budget: float) -> dict[str, Any]:
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


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="64,128,256", help="comma-separated image sides")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4, help="sine layers (4 = the paper's 5-layer SIREN)")
    ap.add_argument("--latent-dim", type=int, default=128, help="latent size of the latent-only modes' ModulatedSiren")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1, help="meta-steps per subprocess (peak RSS over all of them)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", default=";".join(MODES), help="semicolon-separated subset of: " + "; ".join(MODES))
    ap.add_argument(
        "--allocators",
        default="default,pinned,configured",
        help="comma-separated subset of: " + "; ".join(f"{k} ({v})" for k, v in ALLOCATORS.items()),
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="Learnit vs ECoP default at 64x64, SIREN 5x256, B=2, 1 thread, all allocators",
    )
    ap.add_argument("--budget-gb", type=float, default=8.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of peak memory against number of points (needs matplotlib)")
    ap.add_argument(
        "--ragged", action="store_true", help="padded ragged batch against its signals one by one (saved bytes)"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--allocator", default="default", help=argparse.SUPPRESS)
    ap.add_argument("--side", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main() -> None:
    args = _parse_args()
    if args.child:
        _child(args)
        return
    if args.ragged:
        _ragged(args)
        return
    sides = [int(s) for s in args.sides.split(",")]
    modes = [m.strip() for m in args.modes.split(";") if m.strip()]
    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    unknown = [m for m in modes if m not in MODES] + [a for a in allocators if a not in ALLOCATORS]
    if unknown:
        raise SystemExit(f"unknown modes or allocators: {unknown}")
    if args.device != "cpu":
        allocators = allocators[:1]  # the CPU allocator does not change CUDA memory
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for allocator in allocators:  # one allocator's rows together, so that load changes hit them alike
        for side in sides:
            for mode in modes:
                r = _measure(args, mode, allocator, side)
                results.setdefault(mode, {}).setdefault(allocator, {})[str(side)] = r
                print(f"{mode:30s} {allocator:10s} side {side:5d}: {_short(r)}", flush=True)
    budget = args.budget_gb * 2**30
    largest = {
        f"{mode} | {allocator}": _largest_side(
            [(int(s) ** 2, r["step_peak_bytes"]) for s, r in rows.items() if "step_peak_bytes" in r], budget
        )
        for mode, by_allocator in results.items()
        for allocator, rows in by_allocator.items()
    }
    _print_tables(results, sides, allocators, largest, args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = {
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "mode", "side", "allocator")},
            "allocators": {a: ALLOCATORS[a] for a in allocators},
            "machine": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": _torch_version(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "largest_side_under_budget": largest}, f, indent=2)
    if args.plot:
        _plot(results, args.plot, args)


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _short(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    return (
        f"live {r['saved_bytes'] / MIB:.1f} MiB, step peak RSS {r['step_peak_bytes'] / MIB:.1f} MiB "
        f"(process {r['peak_rss_bytes'] / MIB:.1f}), CPU {r['user_s']:.1f}+{r['sys_s']:.1f} s, "
        f"{r['minor_faults']} faults"
    )


def _print_tables(
    results: dict[str, Any],
    sides: list[int],
    allocators: list[str],
    largest: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    print(
        f"\nSIREN {args.layers + 1}x{args.width}, B={args.batch}, {args.steps} meta-step(s), device {args.device}, "
        f"{args.threads} thread(s).\nlive = bytes autograd holds at the backward (allocator-independent); "
        "step peak RSS = peak resident set size minus the peak before the step; x Learnit = ratio to Learnit's "
        "row with the same allocator."
    )
    for side in sides:
        print(f"\n{side}x{side}")
        print(
            f"{'mode':30s} {'allocator':10s} {'live MiB':>9s} {'x Learnit':>9s} {'step peak RSS MiB':>18s} "
            f"{'x Learnit':>9s} {'process peak MiB':>16s} {'CPU user+sys s':>15s} {'faults':>9s}"
        )
        for mode, by_allocator in results.items():
            for allocator in allocators:
                r = by_allocator.get(allocator, {}).get(str(side), {})
                if "step_peak_bytes" not in r:
                    print(f"{mode:30s} {allocator:10s} failed: {r.get('error')}")
                    continue
                ref = results.get(LEARNIT, {}).get(allocator, {}).get(str(side), {})
                live_x = r["saved_bytes"] / ref["saved_bytes"] if ref.get("saved_bytes") else float("nan")
                peak_x = r["step_peak_bytes"] / ref["step_peak_bytes"] if ref.get("step_peak_bytes") else float("nan")
                print(
                    f"{mode:30s} {allocator:10s} {r['saved_bytes'] / MIB:9.1f} {live_x:9.3f} "
                    f"{r['step_peak_bytes'] / MIB:18.1f} {peak_x:9.3f} {r['peak_rss_bytes'] / MIB:16.1f} "
                    f"{r['user_s']:7.1f}+{r['sys_s']:<7.1f} {r['minor_faults']:9d}"
                )
    if len(sides) > 1:
        print(f"\nlargest side whose step peak stays under {args.budget_gb:g} GB (affine fit over the measured sides)")
        for key, big in largest.items():
            if big.get("side") is not None:
                print(f"  {key:45s} {big['side']}" + (" (extrapolated)" if big["extrapolated"] else ""))


def _plot(results: dict[str, Any], path: str, args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'ecop-wrap[examples]'); skipping the plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, by_allocator in results.items():
        for allocator, rows in by_allocator.items():
            pts = sorted((int(s) ** 2, r["step_peak_bytes"] / 2**30) for s, r in rows.items() if "step_peak_bytes" in r)
            if pts:
                label = mode if len(by_allocator) == 1 else f"{mode} ({allocator})"
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
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
