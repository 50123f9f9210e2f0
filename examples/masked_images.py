"""Meta-learn photographs with hidden pixels: ECoP and Learnit see only the observed pixels, and the meta-learned
INR, fitted to a held-out photo's observed pixels, fills in the hidden ones.

Signals are crops of scikit-image's bundled photographs (``ecop_wrap.data.skimage_crops``; the training,
validation and test photographs are disjoint). In every crop a fraction of the pixels is hidden in square blocks
(``--hidden-fraction``, ``--block``; each crop's mask is fixed by ``--seed``). Batches are ``(coords, values,
weights)`` with weight 1 on the observed and 0 on the hidden pixels, so no pass of meta-training or of the
test-time fit ever uses a hidden pixel. The test reports PSNR on the hidden pixels (the meta-learned INR as a
prior) and on the observed ones, per method, with paired per-crop gaps. Each method's outer learning rate is
picked from ``--lr-grid`` by the hidden-pixel PSNR on the validation photographs, never on the test ones.

    python examples/masked_images.py                             # minutes on 2 CPU cores
    python examples/masked_images.py --resolution 64 --outer-steps 2000 --device cuda

Writes to ``--out`` (default ``outputs/masked_images/``): ``inpainting.png`` (truth, masked input and both
fits of a few test crops), ``ecop.pt``, ``learnit.pt`` and ``summary.json`` (the command, the masks, the sweep,
the test PSNRs, the paired gaps, a nearest-observed-pixel fill as a reference and the memory of both methods).
Needs ``pip install 'ecop-wrap[examples,images]'``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ExampleConfig,
    Method,
    add_common_flags,
    compared_methods,
    cycle_indices,
    example_parser,
    paired_gap,
    setup,
    siren_factory,
    summary_mean,
    summary_std,
    sweep_outer_lrs,
    train_at_rate,
    weighted_psnr,
)

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, SavedTensorMeter
from ecop_wrap.data import SKIMAGE_SPLITS, SignalDataset, block_masks, skimage_crops

SPLITS = ("train", "val", "test")


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = example_parser(
        __doc__, "Photographs: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in SKIMAGE_SPLITS.items())
    )
    data = parser.add_argument_group("data and masks")
    data.add_argument("--resolution", type=int, default=32, help="crop side R (signals are R x R x 3)")
    data.add_argument(
        "--hidden-fraction", type=float, default=0.25, help="fraction of each crop's pixels hidden, in (0, 1)"
    )
    data.add_argument("--block", type=int, default=4, help="side of the square blocks of hidden pixels")
    data.add_argument("--val-signals", type=int, default=32, help="validation crops the learning rate is picked on")
    data.add_argument("--lr-grid", default="3e-5,1e-4,3e-4,1e-3", help="outer learning rates tried for each method")
    return add_common_flags(parser, outer_steps=250, hidden_features=64, w0=10.0, test_signals=64, train_signals=512)


def nearest_fill(coords: torch.Tensor, values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """A reference inpainting: every pixel takes the value of the nearest observed pixel; ``[N, M, D]``."""
    distances = torch.cdist(coords, coords)  # [M, M]
    filled = []
    for signal, seen in zip(values, observed, strict=True):
        nearest = distances[:, seen].argmin(dim=1)  # index among the observed pixels
        filled.append(signal[seen][nearest])
    return torch.stack(filled)


def load_data(args: argparse.Namespace, config: ExampleConfig) -> dict[str, tuple[SignalDataset, torch.Tensor]]:
    """Crops ``[N, R*R, 3]`` of each split's photographs and their observed-pixel masks ``[N, R*R]``."""
    sizes = {"train": config.train_signals, "val": args.val_signals, "test": config.test_signals}
    shape = (args.resolution, args.resolution)
    out = {}
    for offset, split in enumerate(SPLITS):
        crops = skimage_crops(split, args.resolution, n=sizes[split], seed=config.seed + offset)
        masks = block_masks(len(crops), shape, args.hidden_fraction, args.block, seed=config.seed + offset)
        out[split] = (crops, masks)
    return out


def train(
    model: torch.nn.Module,
    method: Method,
    lr: float,
    data: SignalDataset,
    observed: torch.Tensor,
    config: ExampleConfig,
) -> ContextPruningMetaLearner:
    """Meta-train a copy of ``model`` as ``method`` at outer lr ``lr`` on the observed pixels only (weight 1
    observed, 0 hidden; the same batches for every run)."""
    coords, values = data.coords.to(config.device), data.stacked()

    def batches() -> Iterator[tuple[torch.Tensor, ...]]:
        for picked in cycle_indices(len(data), config.batch_size, config.seed):
            weights = observed[picked].to(values.dtype)
            yield coords, values[picked].to(config.device), weights.to(config.device)

    return train_at_rate(model, method, lr, batches(), config)


def fit(
    source: ContextPruningMetaLearner | torch.nn.Module,
    scaling: str,
    data: SignalDataset,
    observed: torch.Tensor,
    config: ExampleConfig,
) -> torch.Tensor:
    """Each signal fitted on its observed pixels with ``--test-steps`` steps at ``--inner-lr``, evaluated on every
    pixel; ``[N, M, 3]``.

    Args:
        source: a meta-learner (fitted from its init) or a plain model (fitted from its weights).
        scaling: the test-time gradient scaling (``Method.test_scaling``; ``"none"`` for a plain model).
        data, observed: the signals and their observed-pixel masks ``[N, M]``.
        config: the run's settings.
    """
    settings = {} if isinstance(source, ContextPruningMetaLearner) else {"lr": config.inner_lr}
    adapter = GradScaledAdapter(source, steps=config.test_steps, scaling=scaling, **settings)
    coords, values, recons = data.coords.to(config.device), data.stacked(), []
    for start in range(0, len(data), 8):
        rows = slice(start, start + 8)
        weights = observed[rows].to(values.dtype).to(config.device)
        result = adapter.fit((coords, values[rows].to(config.device), weights))
        with torch.no_grad():
            recons.append(result(coords).cpu())
    return torch.cat(recons)


def scores(pred: torch.Tensor, truth: torch.Tensor, observed: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per signal ``[N]``: PSNR (data range 1) over the hidden and over the observed pixels."""
    return {"hidden": weighted_psnr(pred, truth, ~observed), "observed": weighted_psnr(pred, truth, observed)}


def held_bytes(
    learner: ContextPruningMetaLearner, data: SignalDataset, observed: torch.Tensor, config: ExampleConfig
) -> int:
    """Bytes autograd holds for one meta-loss on the first training batch (the equal-memory check)."""
    batch = min(config.batch_size, len(data))
    values, weights = data.stacked()[:batch], observed[:batch].to(data.stacked().dtype)
    signal = (data.coords.to(config.device), values.to(config.device), weights.to(config.device))
    with SavedTensorMeter() as meter:
        loss = learner.meta_loss(signal)
        held = meter.live_bytes()
    del loss
    return held


def draw(
    truth: torch.Tensor,
    observed: torch.Tensor,
    recons: dict[str, torch.Tensor],
    hidden_psnr: dict[str, torch.Tensor],
    names: list[str],
    out: Path,
) -> Path:
    """One test crop per row: the truth, the masked input (hidden pixels magenta) and each method's fit, titled with
    its hidden-pixel PSNR. ``truth`` and ``recons[...]``: ``[n, R, R, 3]``; ``observed``: ``[n, R, R]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masked = torch.where(observed[..., None], truth, truth.new_tensor([1.0, 0.0, 1.0]).expand_as(truth))
    rows, cols = truth.shape[0], 2 + len(recons)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for i in range(rows):
        panels = [(truth[i], names[i]), (masked[i], "observed (hidden = magenta)")]
        panels += [(r[i], f"{n}: hidden {float(hidden_psnr[n][i]):.2f} dB") for n, r in recons.items()]
        for ax, (image, title) in zip(axes[i], panels, strict=True):
            ax.imshow(image.clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("held-out crops: fitted on the observed pixels only", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the title
    path = out / "inpainting.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _check(args: argparse.Namespace, lrs: list[float]) -> None:
    """Exit clearly for flags of this script that cannot work."""
    if not lrs or args.val_signals < 1 or args.block < 1 or args.resolution < 2:
        raise SystemExit("error: --lr-grid needs a value; --val-signals and --block >= 1, --resolution >= 2")
    if not 0.0 < args.hidden_fraction < 1.0:
        raise SystemExit(f"error: --hidden-fraction must be in (0, 1), got {args.hidden_fraction}")
    if math.ceil(args.resolution / args.block) ** 2 < 2:
        raise SystemExit("error: --block must be smaller than --resolution (some pixels must stay observed)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the example: sweep the outer lr on validation, test both methods, draw, write ``summary.json``.

    Args:
        argv: the command line without the program name (default ``sys.argv[1:]``).

    Returns:
        The summary, as written to ``summary.json``.
    """
    args = build_parser().parse_args(argv)
    config = setup(args)
    lrs = [float(v) for v in args.lr_grid.split(",") if v.strip()]
    _check(args, lrs)
    out = Path(config.out) if config.out is not None else Path("outputs") / "masked_images"
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args, config)
    hidden_share = {split: round(1.0 - float(m.float().mean()), 4) for split, (_, m) in data.items()}
    print(
        ", ".join(f"{k}: {len(v[0])} crops" for k, v in data.items())
        + f" of {args.resolution}x{args.resolution}, {hidden_share['train']:.1%} hidden in {args.block}x{args.block}"
        " blocks"
    )
    methods = compared_methods(config, (-1.0, 1.0))
    torch.manual_seed(config.seed)
    model = siren_factory(config, 2, 3)().to(config.device)
    val, val_observed = data["val"]

    def train_and_score(method: Method, lr: float) -> tuple[ContextPruningMetaLearner, float]:
        learner = train(model, method, lr, *data["train"], config)
        recon = fit(learner, method.test_scaling, val, val_observed, config)
        return learner, summary_mean(scores(recon, val.stacked(), val_observed)["hidden"])

    start = time.perf_counter()
    chosen, sweep = sweep_outer_lrs(methods, lrs, train_and_score, "validation hidden-pixel PSNR")
    seconds = time.perf_counter() - start
    test, observed = data["test"]
    truth, coords = test.stacked(), test.coords
    results, recons, per_signal = {}, {}, {}
    for method in methods:
        lr, learner = chosen[method.name]
        learner.save(out / method.checkpoint)
        recons[method.name] = fit(learner, method.test_scaling, test, observed, config)
        per_signal[method.name] = scores(recons[method.name], truth, observed)
        with torch.no_grad():
            prior = learner.model(coords.to(config.device)).cpu().expand_as(truth)
        held = held_bytes(learner, *data["train"], config)
        results[method.name] = {
            "outer_lr": lr,
            "hidden_psnr": summary_mean(per_signal[method.name]["hidden"]),
            "hidden_psnr_std": summary_std(per_signal[method.name]["hidden"]),
            "observed_psnr": summary_mean(per_signal[method.name]["observed"]),
            "observed_psnr_std": summary_std(per_signal[method.name]["observed"]),
            "init_hidden_psnr": summary_mean(scores(prior, truth, observed)["hidden"]),
            "held_bytes_per_meta_loss": held,
            "held_mib_per_meta_loss": round(held / 2**20, 2),
        }
        row = results[method.name]
        print(
            f"{method.name} (outer lr {lr:g}): test PSNR hidden {row['hidden_psnr']:.2f} dB, observed "
            f"{row['observed_psnr']:.2f} dB; autograd holds {row['held_mib_per_meta_loss']:.2f} MiB per meta-loss"
        )
    fill = {"hidden": scores(nearest_fill(coords, truth, observed), truth, observed)["hidden"]}  # observed: exact
    plain = scores(fit(model, "none", test, observed, config), truth, observed)  # no meta-learning
    references = {"nearest_observed_fill": fill, "random_init_fit": plain}
    first, second = (m.name for m in methods)
    gaps = {
        f"{first} - {second}": {
            part: paired_gap(per_signal[first][part], per_signal[second][part]) for part in ("hidden", "observed")
        }
    }
    gaps |= {
        f"{m.name} - nearest_observed_fill": {"hidden": paired_gap(per_signal[m.name]["hidden"], fill["hidden"])}
        for m in methods
    }
    for pair, parts in gaps.items():
        for part, gap in parts.items():
            print(
                f"{pair}, {part} pixels: {gap['mean']:+.2f} ± {gap['standard_error']:.2f} dB "
                f"(better on {gap['better_on']} of {gap['signals']})"
            )
    print(
        f"references: nearest observed pixel, hidden {summary_mean(fill['hidden']):.2f} dB; the random init "
        f"fitted the same way, hidden {summary_mean(plain['hidden']):.2f} dB, "
        f"observed {summary_mean(plain['observed']):.2f} dB"
    )
    R = args.resolution
    shown = torch.linspace(0, len(test) - 1, min(config.show, len(test))).round().long().unique()
    picture = draw(
        truth[shown].reshape(-1, R, R, 3),
        observed[shown].reshape(-1, R, R),
        {n: r[shown].reshape(-1, R, R, 3) for n, r in recons.items()},
        {n: s["hidden"][shown] for n, s in per_signal.items()},
        [test.names[i] for i in shown],
        out,
    )
    summary = {
        "command": "python examples/masked_images.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "signals": {k: len(v[0]) for k, v in data.items()},
        "photos": {k: list(v[0].metadata["photos"]) for k, v in data.items()},
        "masks": {"hidden_fraction_asked": args.hidden_fraction, "block": args.block, "hidden_share": hidden_share},
        "meta_training_seconds_all_runs": round(seconds, 1),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.flags.items()},
        "validation_hidden_psnr": {n: {str(lr): s for lr, s in v.items()} for n, v in sweep.items()},
        "test": results,
        "paired_gaps": gaps,
        "reference": {
            name: {f"{part}_psnr": summary_mean(v) for part, v in ref.items()}
            | {"hidden_psnr_std": summary_std(ref["hidden"])}
            for name, ref in references.items()
        },
        "per_signal": {
            "names": list(test.names),
            **{
                n: {k: [round(float(x), 3) for x in v] for k, v in s.items()}
                for n, s in (per_signal | references).items()
            },
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {picture.name}, ecop.pt, learnit.pt, summary.json in {out}/")
    return summary


if __name__ == "__main__":
    main()
