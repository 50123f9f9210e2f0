"""Meta-learn a SIREN for images with ECoP and compare it with Learnit on held-out images.

By default the images are random crops of the photographs that ship inside scikit-image (training crops from
ten photos, held-out crops from three others: chelsea, motorcycle, coins), so nothing is downloaded. Use
``--images DIR`` for your own pictures or ``--text`` for random-text images (Learnit's Text dataset).

    python examples/image_siren.py                      # about 5 minutes on 2 CPU cores
    python examples/image_siren.py --images ~/photos --resolution 64 --outer-steps 2000 --device cuda

Writes to ``--out`` (default ``outputs/image/``): ``reconstructions.png`` (held-out crops, both methods,
error maps), ``selection.png`` (the paper's Figure 1: pruned points and error at k = 0, K/2, K-1),
``psnr_per_step.png`` (test PSNR against adaptation step), ``meta_training.png``, the checkpoints
``ecop.pt`` and ``learnit.pt`` (``ContextPruningMetaLearner.load``) and ``summary.json``.
Needs ``pip install 'ecop-wrap[examples]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Example, add_common_flags, example_parser, reconstructions, run, selection, setup, siren_factory

from ecop_wrap.data import ImageFolder, SignalDataset, skimage_crops, text_images


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = example_parser(
        __doc__, "The defaults (32x32 crops, SIREN 3x128, batch 4, 300 outer steps) finish in minutes on a 2-core CPU."
    )
    data = parser.add_argument_group("data")
    data.add_argument("--resolution", type=int, default=32, help="image side R (signals are R x R x 3)")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of your own images (any Pillow format, searched recursively) instead of the "
        "scikit-image photographs; files are split into training and held-out images",
    )
    source.add_argument("--text", action="store_true", help="random-text images rendered with matplotlib's fonts")
    data.add_argument(
        "--test-images",
        type=Path,
        default=None,
        help="with --images: a separate folder of held-out images (default: hold out every 10th file)",
    )
    data.add_argument(
        "--crops-per-image", type=int, default=16, help="with --images: random crops taken from each training image"
    )
    return add_common_flags(parser)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _folder_splits(args: argparse.Namespace) -> tuple[SignalDataset, SignalDataset, dict]:
    crops = {"crop": "random", "n_per_image": args.crops_per_image, "seed": args.seed}
    if args.test_images is not None:
        train = ImageFolder(args.images, args.resolution, **crops)
        test = ImageFolder(args.test_images, args.resolution)
        return train, test.subset(range(min(args.test_signals, len(test)))), {"source": str(args.images)}
    folder = ImageFolder(args.images, args.resolution, **crops)
    files = sorted({name.rsplit("#", 1)[0] for name in folder.names})
    if len(files) < 2:
        raise SystemExit(f"error: --images {args.images} needs at least 2 images to hold one out (or --test-images)")
    held = set(files[::10])
    test_idx = [i for i, n in enumerate(folder.names) if n.rsplit("#", 1)[0] in held]
    train_idx = [i for i in range(len(folder)) if i not in set(test_idx)]
    notes = {"source": str(args.images), "held_out_files": sorted(held)}
    return folder.subset(train_idx), folder.subset(test_idx[: args.test_signals]), notes


def load_data(args: argparse.Namespace) -> tuple[SignalDataset, SignalDataset, dict]:
    """Training and held-out images, ``[N, R*R, 3]`` in ``[0, 1]`` on the ``R x R`` grid."""
    if args.images is not None:
        return _folder_splits(args)
    if args.text:
        train = text_images(args.train_signals, args.resolution, seed=args.seed)
        test = text_images(args.test_signals, args.resolution, seed=args.seed + 1_000_003)
        return train, test, {"source": "text_images (matplotlib fonts)"}
    train = skimage_crops("train", args.resolution, n=args.train_signals, seed=args.seed)
    test = skimage_crops("test", args.resolution, n=args.test_signals, seed=args.seed + 1)
    return train, test, {"source": "scikit-image photographs", "test_crops": test.names}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = setup(args)
    train, test, notes = load_data(args)
    if train.channels is None or test.channels != train.channels:
        raise SystemExit("error: training and held-out images must all have the same number of channels")
    example = Example(
        "image",
        train,
        test,
        siren_factory(config, 2, train.channels),
        reconstructions(f"held-out images after {config.test_steps} test-time steps", to_arrays=train.to_arrays),
        selection(
            train,
            f"ECoP's pruned context (gamma = {config.gamma}) on a held-out image, from the meta-learned init",
        ),
        notes=notes,
    )
    return run(example, config)


if __name__ == "__main__":
    main()
