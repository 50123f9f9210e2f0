"""Is a step size stable for plain SGD on your data? The bootstrap's first question (issue 24, fifth session).

    python benchmarks/sgd_stability.py --lrs 0.01,0.05 -- --audio synth --seconds 0.25 --sample-rate 8000
    python benchmarks/sgd_stability.py --lrs 0.01,0.05 -- --images builtin --resolution 32

The flags after ``--`` choose the data and the SIREN as ``benchmarks/reproduce`` does (its defaults: 3x128, w0 30).
From the model's initialization (seed 0), every one of ``--signals`` validation signals takes ``--steps`` plain
full-context SGD steps at each lr (what ECoP's bootstrap does from theta_K with ``boot_lr``), and the script prints
the median and largest loss over the initial loss after each step, with the data's median variance and initial
MSE. A ratio above 1 means the step makes the fit worse: a bootstrap at that lr builds a target that is worse than
its starting point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import RunConfig
from reproduce.models import _siren
from reproduce.splits import load_splits


def loss_ratios(
    model: torch.nn.Module, coords: torch.Tensor, signals: torch.Tensor, lr: float, steps: int
) -> torch.Tensor:
    """``[N, steps + 1]``: each signal's full-context MSE after 0..steps SGD steps at ``lr``, over its initial one."""
    start = {name: p.detach() for name, p in model.named_parameters()}
    rows = []
    for values in signals:
        params = {name: p.clone().requires_grad_(True) for name, p in start.items()}
        losses = []
        for _ in range(steps + 1):
            loss = ((functional_call(model, params, (coords,)) - values) ** 2).mean()
            losses.append(float(loss.detach()))
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {
                n: (p - lr * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads, strict=True)
            }
        rows.append([value / losses[0] for value in losses])
    return torch.tensor(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="0.01,0.05", help="comma-separated step sizes")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--signals", type=int, default=8, help="validation signals (the first ones)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("reproduce_flags", nargs="*", help="after --: benchmarks/reproduce's data and model flags")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = RunConfig.from_args(args.reproduce_flags)
    splits = load_splits(config)
    torch.manual_seed(0)
    model = _siren(config, splits)
    signals = splits.val[: args.signals]
    with torch.no_grad():
        initial = ((model(splits.coords).unsqueeze(0) - signals) ** 2).mean(dim=(1, 2))
    out = {
        "data": splits.description,
        "median_variance": float(signals.var(dim=(1, 2)).median()),
        "median_initial_mse": float(initial.median()),
        "lrs": {},
    }
    print(f"{out['data']}: median variance {out['median_variance']:.3g}, initial MSE {out['median_initial_mse']:.3g}")
    for lr in (float(v) for v in args.lrs.split(",")):
        ratios = loss_ratios(model, splits.coords, signals, lr, args.steps)
        median, largest = ratios.median(dim=0).values.tolist(), ratios.max(dim=0).values.tolist()
        out["lrs"][f"{lr:g}"] = {"median": median, "max": largest}
        print(
            f"  lr {lr:g}: loss / initial after 0..{args.steps} steps, median " + " ".join(f"{v:.3g}" for v in median)
        )
        print(f"  {'':>{len(f'lr {lr:g}')}}  largest " + " ".join(f"{v:.3g}" for v in largest))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
