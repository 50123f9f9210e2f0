"""Meta-learn 2-D signed distance fields of glyphs with ECoP and Learnit, testing on unseen font families.

Each signal is the exact signed distance to a glyph's outline (negative inside) on an R x R grid in [-1, 1]^2,
from the fonts matplotlib ships (``ecop_wrap.data.glyph_sdfs``): training fonts, validation fonts and test fonts
are different families. Both methods use DeepSDF's clamped L1 loss, |clamp(f, -d, d) - clamp(y, -d, d)|,
(``ecop_wrap.clamped_l1``, ``--one-sided`` for its version without the flat part beyond the clamp) registered
with ``ecop_wrap.register_loss``; each method's outer learning rate is picked on the validation
family (``--lr-grid``), never on the test families.

    python examples/sdf_glyphs.py                               # a few minutes on 2 CPU cores
    python examples/sdf_glyphs.py --resolution 64 --outer-steps 2000 --device cuda

Writes to ``--out`` (default ``outputs/sdf_glyphs/``): ``level_sets.png`` (zero level sets of both fits over
the truth, and their error maps), ``ecop.pt``, ``learnit.pt`` and ``summary.json`` (the command, the sweep,
the test metrics: mean |SDF error| within ``--band`` of the outline and IoU of the interiors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ExampleConfig,
    Method,
    add_common_flags,
    compared_methods,
    example_parser,
    setup,
    siren_factory,
    train_at_rate,
)

import ecop_wrap
from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, SavedTensorMeter, clamped_l1
from ecop_wrap.data import FONT_FAMILIES, FONT_FAMILY_SPLITS, SignalDataset, glyph_sdfs

LOSS = "clamped_l1"
TRAIN_FAMILIES, VAL_FAMILIES, TEST_FAMILIES = (FONT_FAMILY_SPLITS[s] for s in ("train", "val", "test"))


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = example_parser(__doc__, "Font families: " + ", ".join(FONT_FAMILIES))
    data = parser.add_argument_group("data and objective")
    data.add_argument("--resolution", type=int, default=32, help="grid side R (signals are R x R x 1)")
    data.add_argument("--classes", default="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", help="the characters drawn")
    for split, families in (("train", TRAIN_FAMILIES), ("val", VAL_FAMILIES), ("test", TEST_FAMILIES)):
        data.add_argument(
            f"--{split}-families", default=",".join(families), help=f"comma-separated font families of the {split} set"
        )
    data.add_argument("--delta", type=float, default=0.1, help="clamp d of the clamped L1 loss (DeepSDF)")
    data.add_argument(
        "--one-sided",
        action="store_true",
        help="the clamped L1 without its flat part beyond the clamp (ecop_wrap.clamped_l1(one_sided=True))",
    )
    data.add_argument("--band", type=float, default=0.1, help="the SDF error is averaged where |truth| < band")
    data.add_argument("--val-signals", type=int, default=16, help="validation glyphs the learning rate is picked on")
    data.add_argument("--lr-grid", default="1e-4,3e-4,1e-3", help="outer learning rates tried for each method")
    return add_common_flags(parser, outer_steps=200, hidden_features=64, w0=10.0, test_signals=32, inner_lr=1e-2)


def load_data(args: argparse.Namespace, config: ExampleConfig) -> dict[str, SignalDataset]:
    """Training, validation and test SDFs, ``[N, R*R, 1]``, of disjoint font families."""
    sizes = {"train": config.train_signals, "val": args.val_signals, "test": config.test_signals}
    out = {}
    for offset, split in enumerate(sizes):
        families = [f.strip() for f in getattr(args, f"{split}_families").split(",") if f.strip()]
        data = glyph_sdfs(families, args.classes, args.resolution, seed=config.seed + offset)
        # evenly spread over fonts and characters when fewer are asked for
        keep = torch.linspace(0, len(data) - 1, min(sizes[split], len(data))).round().long().unique()
        out[split] = data.subset(keep.tolist())
    return out


def sdf_metrics(pred: torch.Tensor, truth: torch.Tensor, band: float) -> dict[str, torch.Tensor]:
    """Per signal ``[N]``: mean |error| where ``|truth| < band`` and the IoU of the interiors (``< 0``)."""
    near = truth.abs() < band
    error = ((pred - truth).abs() * near).sum(dim=(1, 2)) / near.sum(dim=(1, 2)).clamp_min(1)
    inside_pred, inside_true = pred < 0, truth < 0
    union = (inside_pred | inside_true).sum(dim=(1, 2)).clamp_min(1)
    return {"band_error": error, "iou": (inside_pred & inside_true).sum(dim=(1, 2)) / union}


def fit(learner: ContextPruningMetaLearner, method: Method, data: SignalDataset, config: ExampleConfig) -> torch.Tensor:
    """Each signal fitted from the learner's init with ``--test-steps`` full-context steps; ``[N, M, 1]``."""
    adapter = GradScaledAdapter(learner, steps=config.test_steps, scaling=method.test_scaling)
    recons = []
    for coords, values in data.batches(min(8, len(data)), shuffle=False, drop_last=False):
        result = adapter.fit((coords.to(config.device), values.to(config.device)))
        with torch.no_grad():
            recons.append(result(coords.to(config.device)).cpu())
    return torch.cat(recons)


def train(
    model: torch.nn.Module, method: Method, lr: float, data: SignalDataset, config: ExampleConfig
) -> ContextPruningMetaLearner:
    """Meta-train a copy of ``model`` as ``method`` at outer lr ``lr`` (the same batches for every run)."""
    batches = data.batches(min(config.batch_size, len(data)), seed=config.seed, infinite=True)
    on_device = ((coords.to(config.device), values.to(config.device)) for coords, values in batches)
    return train_at_rate(model, method, lr, on_device, config, lambda stats: stats["fit_loss"], "clamped L1")


def held_mib(learner: ContextPruningMetaLearner, data: SignalDataset, config: ExampleConfig) -> float:
    """MiB autograd holds for one meta-loss on the first training batch (the equal-memory check)."""
    coords, values = next(data.batches(min(config.batch_size, len(data)), shuffle=False))
    with SavedTensorMeter() as meter:
        loss = learner.meta_loss((coords.to(config.device), values.to(config.device)))
        held = meter.live_bytes()
    del loss
    return held / 2**20


def draw(truth: torch.Tensor, recons: dict[str, torch.Tensor], names: list[str], delta: float, out: Path) -> Path:
    """Rows: a test glyph's zero level sets (truth black, each method coloured) over the truth, then each
    method's clamped error map ``|clamp(f, -d, d) - clamp(y, -d, d)|`` (what the loss sees). ``truth`` and
    ``recons[...]``: ``[n, R, R]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, recons = truth.numpy(), {name: recon.numpy() for name, recon in recons.items()}
    colours = ("tab:red", "tab:blue")
    rows, cols = truth.shape[0], 1 + len(recons)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for i in range(rows):
        ax = axes[i, 0]
        ax.imshow(truth[i], cmap="RdBu", vmin=-0.5, vmax=0.5)
        ax.contour(truth[i], levels=[0.0], colors="black", linewidths=2)
        for colour, (name, recon) in zip(colours, recons.items(), strict=False):
            ax.contour(recon[i], levels=[0.0], colors=colour, linewidths=1)
            ax.plot([], [], color=colour, label=name)
        ax.set_title(names[i].split("|")[0] + " | " + names[i].split("|")[1], fontsize=8)
        for j, (name, recon) in enumerate(recons.items(), start=1):
            error = abs(recon[i].clip(-delta, delta) - truth[i].clip(-delta, delta))
            image = axes[i, j].imshow(error, cmap="magma", vmin=0.0, vmax=delta)
            axes[i, j].set_title(f"{name}: clamped |SDF error|", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].legend(loc="lower right", fontsize=7)
    fig.colorbar(image, ax=axes[:, 1:].ravel().tolist(), shrink=0.6)
    path = out / "level_sets.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _mean(values: torch.Tensor) -> float:
    return round(float(values.float().mean()), 5)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    config = setup(args)
    lrs = [float(v) for v in args.lr_grid.split(",") if v.strip()]
    if not lrs or args.delta <= 0 or args.band <= 0 or args.val_signals < 1:
        raise SystemExit("error: --lr-grid needs a value; --delta, --band and --val-signals must be positive")
    out = Path(config.out) if config.out is not None else Path("outputs") / "sdf_glyphs"
    out.mkdir(parents=True, exist_ok=True)
    ecop_wrap.register_loss(LOSS, clamped_l1(args.delta, one_sided=args.one_sided), overwrite=True)
    data = load_data(args, config)
    print(", ".join(f"{k}: {len(v)} glyphs" for k, v in data.items()) + f" on {args.resolution}x{args.resolution}")
    methods = [
        dataclasses.replace(m, settings=m.settings.replace(loss=LOSS)) for m in compared_methods(config, (-1.0, 1.0))
    ]
    torch.manual_seed(config.seed)
    model = siren_factory(config, 2, 1, output_offset=0.0)().to(config.device)
    val_truth = data["val"].to_arrays(data["val"].stacked())[..., 0]
    chosen, sweep, start = {}, {}, time.perf_counter()
    for method in methods:
        sweep[method.name] = {}
        for lr in lrs:
            learner = train(model, method, lr, data["train"], config)
            recon = data["val"].to_arrays(fit(learner, method, data["val"], config))[..., 0]
            score = _mean(sdf_metrics(recon, val_truth, args.band)["band_error"])
            sweep[method.name][lr] = score
            print(f"  {method.name} outer lr {lr:g}: validation band error {score:.5f}")
            if lr == min(sweep[method.name], key=sweep[method.name].get):
                chosen[method.name] = (lr, learner)
    seconds = time.perf_counter() - start
    truth = data["test"].to_arrays(data["test"].stacked())[..., 0]
    results, recons = {}, {}
    for method in methods:
        lr, learner = chosen[method.name]
        learner.save(out / method.checkpoint)
        recons[method.name] = data["test"].to_arrays(fit(learner, method, data["test"], config))[..., 0]
        metrics = sdf_metrics(recons[method.name], truth, args.band)
        results[method.name] = {
            "outer_lr": lr,
            "band_error": _mean(metrics["band_error"]),
            "iou": _mean(metrics["iou"]),
            "held_mib_per_meta_loss": round(held_mib(learner, data["train"], config), 2),
        }
        row = results[method.name]
        print(f"{method.name}: test band error {row['band_error']:.5f}, IoU {row['iou']:.4f}")
    shown = torch.linspace(0, len(truth) - 1, min(config.show, len(truth))).round().long().unique()
    names = [data["test"].names[i] for i in shown]
    picture = draw(truth[shown], {n: r[shown] for n, r in recons.items()}, names, args.delta, out)
    summary = {
        "command": "python examples/sdf_glyphs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "signals": {k: len(v) for k, v in data.items()},
        "families": {k: v.metadata["families"] for k, v in data.items()},
        "meta_training_seconds_all_runs": round(seconds, 1),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.flags.items()},
        "validation_band_error": {n: {str(lr): s for lr, s in v.items()} for n, v in sweep.items()},
        "test": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {picture.name}, ecop.pt, learnit.pt, summary.json in {out}/")
    return summary


if __name__ == "__main__":
    main()
