"""The two pictures every example draws of its own modality, built from a few facts about it: the held-out
reconstructions (``reconstructions.png``) and the pruned context of one held-out signal (``selection.png``).

Each function returns a drawing function of the shape :class:`~.runner.Example` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ecop_wrap import SelectionTrace
from ecop_wrap.data import SignalDataset
from ecop_wrap.plotting import plot_reconstructions, plot_selection

__all__ = ["ReconstructionsPicture", "SelectionPicture", "frame_reconstructions", "reconstructions", "selection"]

#: ``(test values [n, M, D], {method: reconstructions [n, M, D]}, {method: psnr [n]}, names [n], out_dir)`` ->
#: the paths written.
ReconstructionsPicture = Callable[
    [torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], list[str], Path], list[str]
]
#: ``(signal values [M, D], SelectionTrace, out_dir)`` -> the path written.
SelectionPicture = Callable[[torch.Tensor, SelectionTrace, Path], str]


def _unchanged(values: torch.Tensor) -> torch.Tensor:
    return values


def reconstructions(
    title: str,
    *,
    to_arrays: Callable[[torch.Tensor], Any] = _unchanged,
    plot: Callable[..., str] = plot_reconstructions,
    **options: Any,
) -> ReconstructionsPicture:
    """Originals next to both methods' reconstructions, one held-out signal per row, labelled with its name.

    Args:
        title: the figure's title.
        to_arrays: ``[n, M, D]`` values -> what ``plot`` draws (e.g. ``SignalDataset.to_arrays`` for images).
        plot: :func:`~ecop_wrap.plotting.plot_reconstructions` or :func:`~ecop_wrap.plotting.plot_waveforms`.
        **options: more keyword arguments of ``plot`` (colour map, extent, sample rate, ...).
    """

    def draw(
        originals: torch.Tensor,
        recons: dict[str, torch.Tensor],
        psnr: dict[str, torch.Tensor],
        names: list[str],
        out: Path,
    ) -> list[str]:
        return [
            plot(
                to_arrays(originals),
                {n: to_arrays(v) for n, v in recons.items()},
                out / "reconstructions.png",
                psnr=psnr,
                row_labels=names,
                title=title,
                **options,
            )
        ]

    return draw


def frame_reconstructions(
    title: str, to_clips: Callable[[torch.Tensor], torch.Tensor], frames: Sequence[int]
) -> ReconstructionsPicture:
    """Some frames of each held-out clip, one frame per row (labelled ``"<clip>, t = <frame>"``, with the clip's
    PSNR).

    Args:
        title: the figure's title.
        to_clips: ``[n, M, D]`` values -> ``[n, T, H, W, 3]`` channel-last frames.
        frames: the frame indices shown.
    """
    frames = list(frames)

    def pick(values: torch.Tensor) -> torch.Tensor:
        chosen = to_clips(values)[:, frames]
        return chosen.reshape(-1, *chosen.shape[2:])

    def draw(
        originals: torch.Tensor,
        recons: dict[str, torch.Tensor],
        psnr: dict[str, torch.Tensor],
        names: list[str],
        out: Path,
    ) -> list[str]:
        labels = [f"{names[i]}, t = {t}" for i in range(originals.shape[0]) for t in frames]
        return [
            plot_reconstructions(
                pick(originals),
                {n: pick(v) for n, v in recons.items()},
                out / "reconstructions.png",
                psnr={n: v.repeat_interleave(len(frames)) for n, v in psnr.items()},
                row_labels=labels,
                title=title,
            )
        ]

    return draw


def selection(dataset: SignalDataset, title: str, *, frame: int | None = None, **options: Any) -> SelectionPicture:
    """The paper's Figure 1 on the dataset's grid (:func:`~ecop_wrap.plotting.plot_selection`).

    Args:
        dataset: gives the grid shape of the signal and of the trace.
        title: the figure's title.
        frame: for a video grid ``(T, H, W)``, the one frame drawn (the points were chosen over the whole clip).
        **options: more keyword arguments of ``plot_selection`` (extent, colour map, sample rate, ...).
    """

    def draw(values: torch.Tensor, trace: SelectionTrace, out: Path) -> str:
        original = dataset.to_arrays(values)
        masks, errors, predictions = trace.as_grid(dataset.shape)
        if frame is not None:
            original, masks, errors, predictions = (
                original[frame],
                masks[:, frame],
                errors[:, frame],
                predictions[:, frame],
            )
        path = out / "selection.png"
        return plot_selection(original, trace.steps, masks, errors, predictions, path, title=title, **options)

    return draw
