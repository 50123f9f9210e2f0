"""Meta-learn photographs of different shapes in one batch: crops at their own aspect ratios, padded by
``collate_signals``, with ECoP and Learnit.

Each signal is a crop of one of scikit-image's bundled photographs (``ecop_wrap.data.skimage_aspect_crops``; the
training, validation and test photographs are disjoint) with its own aspect ratio, drawn between
``1:--max-aspect`` and ``--max-aspect:1``, downscaled so that its long side is ``--resolution`` pixels: a 2:1
crop at R = 32 is 16 x 32 = 512 points, a square one 32 x 32 = 1,024. Coordinates keep the aspect: the long side
spans [-1, 1] and both axes have the same pixel spacing. A ``torch.utils.data.DataLoader`` with
``collate_fn=ecop_wrap.data.collate_signals`` pads each batch to its longest signal with points of weight 0, which
neither method ever uses; every held-out signal is fitted and scored over its own points. The whole test
photographs, downscaled at their own aspect ratios, are fitted too. Each method's outer learning rate is picked
from ``--lr-grid`` by the validation PSNR, never on the test photographs.

    python examples/ragged_images.py                             # minutes on 2 CPU cores
    python examples/ragged_images.py --resolution 64 --outer-steps 2000 --device cuda

Writes to ``--out`` (default ``outputs/ragged_images/``): ``ragged_fits.png`` (a few test crops and the whole
test photographs with both fits), ``ecop.pt``, ``learnit.pt`` and ``summary.json`` (the command, the shapes,
the sweep, the test PSNRs, the paired gaps and the memory of both methods).
Needs ``pip install 'ecop-wrap[examples,images]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ExampleConfig,
    Method,
    add_common_flags,
    compared_methods,
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
from ecop_wrap.data import (
    SKIMAGE_SPLITS,
    SignalDataset,
    aspect_grid,
    aspect_shape,
    collate_signals,
    skimage_aspect_crops,
    skimage_photo,
)
from ecop_wrap.data.base import resize_images

SPLITS = ("train", "val", "test")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = example_parser(
        __doc__, "Photographs: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in SKIMAGE_SPLITS.items())
    )
    data = parser.add_argument_group("data")
    data.add_argument("--resolution", type=int, default=32, help="long side R of every signal, in pixels")
    data.add_argument(
        "--max-aspect", type=float, default=2.0, help="crops' aspect ratios lie between 1:this and this:1"
    )
    data.add_argument("--val-signals", type=int, default=32, help="validation crops the learning rate is picked on")
    data.add_argument("--lr-grid", default="1e-4,3e-4,1e-3,3e-3", help="outer learning rates tried for each method")
    return add_common_flags(parser, outer_steps=250, hidden_features=64, test_signals=64, train_signals=512)


def whole_photos(split: str, long_side: int) -> SignalDataset:
    """Every photograph of a split, whole, downscaled to a long side of ``long_side`` at its own aspect ratio."""
    values, shapes = [], []
    for name in SKIMAGE_SPLITS[split]:
        photo = skimage_photo(name)
        shape = aspect_shape(photo.shape[0], photo.shape[1], long_side)
        values.append(resize_images(photo, *shape).clamp(0.0, 1.0).reshape(-1, 3))
        shapes.append(shape)
    coords = [aspect_grid(s) for s in shapes]
    names = list(SKIMAGE_SPLITS[split])
    return SignalDataset(values, shapes, coords=coords, names=names, metadata={"split": split, "whole": True})


def loader(data: SignalDataset, batch_size: int, *, seed: int | None = None) -> DataLoader:
    """Padded batches through ``collate_signals``: shuffled by a generator seeded with ``seed`` (full batches
    only), or in order when ``seed`` is None."""
    if seed is None:
        return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_signals)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        data, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate_signals, generator=generator
    )


def endless(batches: DataLoader) -> Iterator[Batch]:
    """Epoch after epoch of a DataLoader (a shuffled one draws a new order each epoch)."""
    while True:
        yield from batches


def _to(batch: Batch, device: str) -> Batch:
    """A padded batch on ``device``."""
    coords, values, weights = batch
    return coords.to(device), values.to(device), weights.to(device)


def train(
    model: torch.nn.Module, method: Method, lr: float, data: SignalDataset, config: ExampleConfig
) -> ContextPruningMetaLearner:
    """Meta-train a copy of ``model`` as ``method`` at outer lr ``lr`` on padded ragged batches (the same batches
    for every run)."""
    batches = endless(loader(data, min(config.batch_size, len(data)), seed=config.seed))
    return train_at_rate(model, method, lr, (_to(batch, config.device) for batch in batches), config)


def fit(
    source: ContextPruningMetaLearner | torch.nn.Module, scaling: str, data: SignalDataset, config: ExampleConfig
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each signal fitted over its own points with ``--test-steps`` steps at ``--inner-lr``, in padded batches.

    Args:
        source: a meta-learner (fitted from its init) or a plain model (fitted from its weights).
        scaling: the test-time gradient scaling (``Method.test_scaling``; ``"none"`` for a plain model).
        data: the signals.
        config: the run's settings.

    Returns:
        ``[N]`` PSNR per signal over its own points, and each signal's reconstruction ``[M_i, 3]``.
    """
    settings = {} if isinstance(source, ContextPruningMetaLearner) else {"lr": config.inner_lr}
    adapter = GradScaledAdapter(source, steps=config.test_steps, scaling=scaling, **settings)
    psnrs, recons = [], []
    for batch in loader(data, 8):
        coords, values, weights = _to(batch, config.device)
        result = adapter.fit((coords, values, weights))
        with torch.no_grad():
            pred = result(coords)
        psnrs.append(weighted_psnr(pred, values, weights).cpu())
        recons += [row[weight > 0].cpu() for row, weight in zip(pred, weights, strict=True)]
    return torch.cat(psnrs), recons


def held_bytes(learner: ContextPruningMetaLearner, data: SignalDataset, config: ExampleConfig) -> int:
    """Bytes autograd holds for one meta-loss on the first (padded) training batch: the equal-memory check."""
    batch = _to(next(iter(loader(data, min(config.batch_size, len(data))))), config.device)
    with SavedTensorMeter() as meter:
        loss = learner.meta_loss(batch)
        held = meter.live_bytes()
    del loss
    return held


def draw(rows: list[tuple[str, torch.Tensor, dict[str, torch.Tensor], dict[str, float]]], out: Path) -> Path:
    """One signal per row at its own shape: the truth, then each method's fit titled with its PSNR. A row is
    ``(name, truth [h, w, 3], {method: fit [h, w, 3]}, {method: PSNR})``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(rows[0][2])
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.8 * cols, 2.4 * len(rows)), squeeze=False)
    for ax_row, (name, truth, fits, psnr) in zip(axes, rows, strict=True):
        shape = f"{truth.shape[0]}x{truth.shape[1]}"
        panels = [(truth, f"{name} ({shape})"), *((fits[n], f"{n}: {psnr[n]:.2f} dB") for n in fits)]
        for ax, (image, title) in zip(ax_row, panels, strict=True):
            ax.imshow(image.clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("held-out signals at their own shapes, fitted over their own points", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the title
    path = out / "ragged_fits.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _points(data: SignalDataset) -> dict[str, float]:
    """The smallest, largest and mean number of points of the signals."""
    sizes = [int(np.prod(s)) for s in data.shapes]
    return {"min": min(sizes), "max": max(sizes), "mean": round(sum(sizes) / len(sizes), 1)}


def _rows(
    data: SignalDataset,
    picked: list[int],
    recons: dict[str, list[torch.Tensor]],
    psnr: dict[str, torch.Tensor],
    label: str,
) -> list[tuple[str, torch.Tensor, dict[str, torch.Tensor], dict[str, float]]]:
    """The rows of :func:`draw` for signals ``picked`` of ``data``, named ``"<photo> <label>"``."""
    return [
        (
            f"{data.names[i].split(':')[0]} {label}",
            data.to_arrays(data.values[i], index=i),
            {n: data.to_arrays(r[i], index=i) for n, r in recons.items()},
            {n: float(p[i]) for n, p in psnr.items()},
        )
        for i in picked
    ]


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
    if not lrs or args.val_signals < 1 or args.resolution < 2 or args.max_aspect < 1:
        raise SystemExit("error: --lr-grid needs a value; --val-signals >= 1, --resolution >= 2, --max-aspect >= 1")
    out = Path(config.out) if config.out is not None else Path("outputs") / "ragged_images"
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": config.train_signals, "val": args.val_signals, "test": config.test_signals}
    data = {
        split: skimage_aspect_crops(
            split, args.resolution, sizes[split], config.seed + offset, max_aspect=args.max_aspect
        )
        for offset, split in enumerate(SPLITS)
    }
    whole = whole_photos("test", args.resolution)
    points = {k: _points(v) for k, v in data.items()}
    print(", ".join(f"{k}: {len(v)} crops of {points[k]['min']}..{points[k]['max']} points" for k, v in data.items()))
    methods = compared_methods(config, (-1.0, 1.0))
    torch.manual_seed(config.seed)
    model = siren_factory(config, 2, 3)().to(config.device)

    def train_and_score(method: Method, lr: float) -> tuple[ContextPruningMetaLearner, float]:
        learner = train(model, method, lr, data["train"], config)
        return learner, summary_mean(fit(learner, method.test_scaling, data["val"], config)[0])

    start = time.perf_counter()
    chosen, sweep = sweep_outer_lrs(methods, lrs, train_and_score)
    seconds = time.perf_counter() - start
    results, psnr, recons, whole_psnr, whole_recons = {}, {}, {}, {}, {}
    for method in methods:
        lr, learner = chosen[method.name]
        learner.save(out / method.checkpoint)
        psnr[method.name], recons[method.name] = fit(learner, method.test_scaling, data["test"], config)
        whole_psnr[method.name], whole_recons[method.name] = fit(learner, method.test_scaling, whole, config)
        held = held_bytes(learner, data["train"], config)
        results[method.name] = {
            "outer_lr": lr,
            "psnr": summary_mean(psnr[method.name]),
            "psnr_std": summary_std(psnr[method.name]),
            "whole_photos_psnr": {
                n: round(float(p), 3) for n, p in zip(whole.names, whole_psnr[method.name], strict=True)
            },
            "held_bytes_per_meta_loss": held,
            "held_mib_per_meta_loss": round(held / 2**20, 2),
        }
        row = results[method.name]
        print(
            f"{method.name} (outer lr {lr:g}): test PSNR {row['psnr']:.2f} ± {row['psnr_std']:.2f} dB (std over "
            f"crops); autograd holds {row['held_mib_per_meta_loss']:.2f} MiB per meta-loss"
        )
    first, second = (m.name for m in methods)
    gap = paired_gap(psnr[first], psnr[second])
    print(
        f"{first} - {second}: {gap['mean']:+.2f} ± {gap['standard_error']:.2f} dB (better on {gap['better_on']} "
        f"of {gap['signals']} crops)"
    )
    plain = fit(model, "none", data["test"], config)[0]  # the random init fitted the same way: no meta-learning
    print(f"reference, the random init fitted the same way: {summary_mean(plain):.2f} dB")
    test = data["test"]
    shown = torch.linspace(0, len(test) - 1, min(config.show, len(test))).round().long().unique().tolist()
    picture = draw(
        _rows(test, shown, recons, psnr, "crop")
        + _rows(whole, list(range(len(whole))), whole_recons, whole_psnr, "whole"),
        out,
    )
    summary = {
        "command": "python examples/ragged_images.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "signals": {k: len(v) for k, v in data.items()},
        "photos": {k: list(v.metadata["photos"]) for k, v in data.items()},
        "points_per_signal": points,
        "whole_test_photos": {n: list(s) for n, s in zip(whole.names, whole.shapes, strict=True)},
        "meta_training_seconds_all_runs": round(seconds, 1),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.flags.items()},
        "validation_psnr": {n: {str(lr): s for lr, s in v.items()} for n, v in sweep.items()},
        "test": results,
        "paired_gaps": {f"{first} - {second}": gap},
        "reference": {"random_init_fit": {"psnr": summary_mean(plain), "psnr_std": summary_std(plain)}},
        "per_signal": {
            "names": list(test.names),
            "shapes": [list(s) for s in test.shapes],
            **{n: [round(float(x), 3) for x in p] for n, p in psnr.items()},
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {picture.name}, ecop.pt, learnit.pt, summary.json in {out}/")
    return summary


if __name__ == "__main__":
    main()
