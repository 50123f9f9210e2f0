"""Meta-learn a SIREN for images with ECoP inside PyTorch Lightning, with checkpoints that resume exactly.

A :class:`LightningModule` wraps a :class:`~ecop_wrap.ContextPruningMetaLearner` around a
:class:`~ecop_wrap.Siren`: each training step is one ``learner.meta_step(batch)`` on random crops of
scikit-image's photographs (nothing is downloaded), and each validation fits held-out crops of other photographs
with :class:`~ecop_wrap.GradScaledAdapter` and logs their PSNR. Lightning checkpoints carry the learner's whole
state (model, outer optimizer, step counter, pruning RNG), so ``--ckpt-path`` resumes the very run that was
interrupted: the same batches in the same order and, on the same machine, bit-identical parameters.

    python examples/lightning_image.py                                # 300 outer steps on 32x32 crops, CPU
    python examples/lightning_image.py --max-steps 600 --ckpt-path outputs/lightning/checkpoints/last.ckpt

Writes to ``--output`` (default ``outputs/lightning/``): ``checkpoints/`` (``last.ckpt`` and one every
``--ckpt-every`` steps) and ``logs/`` (Lightning's CSV logger: ``train/loss``, ``train/psnr``,
``train/grad_norm``, ``val/psnr``). Needs ``pip install 'ecop-wrap[lightning,images]'``.

How the learner and Lightning share the work:

- Manual optimization (``automatic_optimization = False``): the learner computes the meta-gradient and steps
  its own outer optimizer inside ``meta_step``. Lightning gets a stand-in optimizer, :class:`LearnerStep`,
  whose ``step(closure)`` only runs the closure. Calling ``meta_step`` through it lets Lightning count outer steps
  (``global_step``, ``max_steps``, ``ModelCheckpoint``), which it does only for steps of the optimizers it was
  given. The learner's Adam is not handed to Lightning, because stepping it through Lightning would apply every
  update twice.
- Checkpoints: ``on_save_checkpoint`` stores ``learner.state_dict()`` and ``on_load_checkpoint`` restores it.
  Lightning's ``optimizer_states`` then hold only the stand-in's empty state. The SIREN's weights appear twice,
  in Lightning's ``state_dict`` and in the learner's state, and both copies hold the same values.
- Data: the batch of outer step ``s`` is a function of ``s`` (:class:`StepBatches`), and ``train_dataloader`` starts
  at the learner's step counter, which is already restored when Lightning builds the loader. A resumed run
  therefore continues the batch sequence where the interrupted run stopped.
- Validation needs gradients, but Lightning runs it under ``torch.inference_mode``.
  ``GradScaledAdapter.fit`` switches gradients back on for its own steps and copies its inputs out of
  inference mode.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

try:
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
except ImportError as exc:  # pragma: no cover - a message instead of a traceback
    raise SystemExit("this example needs PyTorch Lightning: pip install 'ecop-wrap[lightning,images]'") from exc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_flags, example_parser

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren
from ecop_wrap.data import SignalDataset, skimage_crops

Batch = tuple[torch.Tensor, torch.Tensor]
LEARNER_KEY = "ecop_learner"  # where the learner's state_dict lives in a Lightning checkpoint


class StepBatches(IterableDataset):  # type: ignore[type-arg]
    """Endless training batches in which the batch of outer step ``s`` is a pure function of ``s``.

    Steps are grouped into epochs of ``N // B`` batches. Each epoch visits the signals in a random order drawn from
    ``(seed, epoch)``. Iteration starts at step ``start``, so a resumed run continues the sequence exactly.

    Args:
        signals: training signals on one grid: coords ``[M, C]``, values ``[N, M, D]``.
        batch_size: signals per batch ``B`` (at most ``N``).
        seed: seed of the epoch orders.
        start: index of the first step to yield.
    """

    def __init__(self, signals: SignalDataset, batch_size: int, *, seed: int = 0, start: int = 0) -> None:
        self.coords = signals.coords
        self.values = signals.stacked()
        if not 1 <= batch_size <= len(self.values):
            raise ValueError(f"batch_size must be in [1, {len(self.values)}] (the number of signals), got {batch_size}")
        self.batch_size = batch_size
        self.batches_per_epoch = len(self.values) // batch_size
        self.seed = seed
        self.start = start

    def batch(self, step: int) -> Batch:
        """The batch of outer step ``step``: ``(coords [M, C], values [B, M, D])``."""
        epoch, position = divmod(step, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.values))
        chosen = order[position * self.batch_size : (position + 1) * self.batch_size]
        return self.coords, self.values[torch.from_numpy(chosen)]

    def __iter__(self) -> Iterator[Batch]:
        step = self.start
        while True:
            yield self.batch(step)
            step += 1


class LearnerStep(torch.optim.Optimizer):
    """The optimizer Lightning is given: ``step(closure)`` returns ``closure()`` and changes nothing itself.

    The closure calls ``learner.meta_step``, which updates the parameters with the learner's own optimizer.

    Args:
        params: the learner's trainable parameters (Lightning expects an optimizer to own some).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter]) -> None:
        super().__init__(list(params), defaults={})

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None:
            raise RuntimeError("LearnerStep.step needs a closure that calls learner.meta_step(batch)")
        return closure()


class MetaSirenModule(L.LightningModule):
    """ECoP meta-learning of a SIREN on scikit-image crops, one ``meta_step`` per training step.

    The learner is built on the device the module trains on: ``setup`` moves the SIREN to the Trainer's device
    before the learner exists, because the learner keeps device-bound state (its pruning RNG) that Lightning's
    own move of the module would not reach. One device only (``devices=1``); for data-parallel meta-training
    see ``examples/train_distributed.py``. For mixed precision use the learner's ``autocast_dtype`` rather
    than Lightning's ``precision``, whose gradient scaler would act on the stand-in optimizer. Every constructor
    argument is a hyper-parameter saved in the checkpoint.

    Args:
        resolution: crop side ``R`` (signals are ``R x R x 3``).
        train_signals, test_signals: number of training and held-out crops.
        batch_size: crops per outer step ``B``.
        hidden_features, hidden_layers, w0: the SIREN.
        gamma, inner_steps, bootstrap_steps, lam, inner_lr, boot_lr, outer_lr, max_grad_norm, selection: the
            learner (paper gamma, K, L, lambda, alpha, bootstrap step size, Adam's lr beta, clipping, ranking rule).
        test_steps: full-context steps of each held-out fit.
        seed: seed of the SIREN's initialization, the crops, the batch order and the pruning RNG.
    """

    def __init__(
        self,
        resolution: int = 32,
        train_signals: int = 1024,
        test_signals: int = 16,
        batch_size: int = 4,
        hidden_features: int = 128,
        hidden_layers: int = 3,
        w0: float = 30.0,
        gamma: float = 0.25,
        inner_steps: int = 16,
        bootstrap_steps: int = 5,
        lam: float = 100.0,
        inner_lr: float = 1e-2,
        boot_lr: float = 5e-2,
        outer_lr: float = 3e-4,
        max_grad_norm: float | None = 1.0,
        selection: str = "error",
        test_steps: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        with torch.random.fork_rng(devices=[]):  # the initialization depends on the seed, not on global RNG state
            torch.manual_seed(seed)
            self.inr = Siren(2, 3, hidden_features, hidden_layers, w0=w0, output_offset=0.5)
        self._learner: ContextPruningMetaLearner | None = None
        self._learner_device: torch.device | None = None
        self.train_set: SignalDataset | None = None
        self.test_set: SignalDataset | None = None

    @property
    def learner(self) -> ContextPruningMetaLearner:
        """The meta-learner around ``self.inr``, built on first use on the SIREN's current device."""
        if self._learner is None:
            hp = self.hparams
            self._learner = ContextPruningMetaLearner(
                self.inr,
                gamma=hp["gamma"],
                K=hp["inner_steps"],
                L=hp["bootstrap_steps"],
                lam=hp["lam"],
                inner_lr=hp["inner_lr"],
                boot_lr=hp["boot_lr"],
                outer_lr=hp["outer_lr"],
                max_grad_norm=hp["max_grad_norm"],
                selection=hp["selection"],
                seed=hp["seed"],
            )
            self._learner_device = next(self.inr.parameters()).device
        return self._learner

    # ------------------------------------------------------------------------------------------ setup and data
    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        if self._learner is not None and self._learner_device != device:
            raise RuntimeError(
                f"the learner was built on {self._learner_device} but this Trainer runs on {device}; create the "
                "module (or load_from_checkpoint) again for this Trainer"
            )
        self.inr.to(device)
        _ = self.learner  # built now, on that device, before Lightning restores a checkpoint into it
        hp = self.hparams
        if self.train_set is None:
            self.train_set = skimage_crops("train", hp["resolution"], n=hp["train_signals"], seed=hp["seed"])
            self.test_set = skimage_crops("test", hp["resolution"], n=hp["test_signals"], seed=hp["seed"] + 1)

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        # Called after a checkpoint is restored, so step_count is the next step to train.
        assert self.train_set is not None
        batches = StepBatches(
            self.train_set, self.hparams["batch_size"], seed=self.hparams["seed"], start=self.learner.step_count
        )
        return DataLoader(batches, batch_size=None)  # batch_size=None: no collation, batches pass through as built

    def val_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        assert self.test_set is not None
        held_out = [(self.test_set.coords, self.test_set.stacked())]  # one batch: every held-out crop
        return DataLoader(held_out, batch_size=None)  # type: ignore[arg-type]  # a list is a map-style dataset

    # ------------------------------------------------------------------------------------------------- steps
    def configure_optimizers(self) -> LearnerStep:
        return LearnerStep(self.inr.parameters())

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        stats = optimizer.step(closure=lambda: self.learner.meta_step(batch))
        self.log_dict(
            {f"train/{name}": stats[name] for name in ("loss", "psnr", "grad_norm", "skipped")},
            prog_bar=False,
            batch_size=batch[1].shape[0],
        )
        self.log("psnr", stats["psnr"], prog_bar=True, logger=False, batch_size=batch[1].shape[0])

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        coords, values = batch
        fit = GradScaledAdapter(self.learner, steps=self.hparams["test_steps"]).fit((coords, values))
        psnr = fit.history["psnr"]  # [test_steps + 1, B]: before the first step and after every step
        self.log("val/psnr", psnr[-1].mean(), prog_bar=True, batch_size=values.shape[0])
        self.log("val/psnr_init", psnr[0].mean(), batch_size=values.shape[0])

    # ------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[LEARNER_KEY] = self.learner.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if LEARNER_KEY not in checkpoint:
            raise ValueError(f"not a checkpoint of {type(self).__name__}: it has no {LEARNER_KEY!r} entry")
        self.learner.load_state_dict(checkpoint[LEARNER_KEY])


# ------------------------------------------------------------------------------------------------ command line
MODULE_FLAGS = (
    "resolution",
    "train_signals",
    "test_signals",
    "batch_size",
    "hidden_features",
    "hidden_layers",
    "w0",
    "gamma",
    "inner_steps",
    "bootstrap_steps",
    "lam",
    "inner_lr",
    "boot_lr",
    "outer_lr",
    "max_grad_norm",
    "selection",
    "test_steps",
    "seed",
)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``). The flags this script shares with the other
    examples are declared once, in ``_common.FLAGS``."""
    parser = example_parser(__doc__)
    run = parser.add_argument_group("run")
    run.add_argument("--max-steps", type=int, default=300, help="outer steps in total, counting resumed ones")
    run.add_argument("--ckpt-path", type=Path, default=None, help="Lightning checkpoint to resume from")
    run.add_argument("--output", type=Path, default=Path("outputs/lightning"), help="checkpoints and logs go here")
    run.add_argument("--ckpt-every", type=int, default=100, help="save a checkpoint every this many outer steps")
    run.add_argument("--val-every", type=int, default=100, help="fit the held-out crops every this many outer steps")
    run.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu, gpu, auto, ...")
    add_flags(run, ["no_progress"], {"no_progress": "no progress bar"})
    data = parser.add_argument_group("data and model")
    data.add_argument("--resolution", type=int, default=32, help="crop side R (signals are R x R x 3)")
    add_flags(
        data,
        ["batch_size", "train_signals", "test_signals", "hidden_features", "hidden_layers", "w0", "seed"],
        {
            "train_signals": "training crops (from 10 photographs)",
            "test_signals": "held-out crops (from 3 other photographs)",
            "seed": "seed of the initialization, crops, batch order and RNG",
        },
    )
    ecop = parser.add_argument_group("ECoP")
    add_flags(
        ecop,
        ["gamma", "inner_steps", "bootstrap_steps", "lam", "inner_lr", "boot_lr", "outer_lr", "max_grad_norm"],
        {"inner_lr": "inner step size alpha (meta-training and validation)"},
    )
    ecop.add_argument(
        "--selection", choices=("error", "random", "gradncp"), default="error", help="how the pruned context is chosen"
    )
    add_flags(ecop, ["test_steps"], {"test_steps": "full-context steps of each held-out fit"})
    return parser


def module_from_args(args: argparse.Namespace) -> MetaSirenModule:
    """A fresh module with the hyper-parameters of the command line."""
    hparams = {name: getattr(args, name) for name in MODULE_FLAGS}
    hparams["max_grad_norm"] = hparams["max_grad_norm"] or None
    return MetaSirenModule(**hparams)


def make_trainer(args: argparse.Namespace, callbacks: list[Callback] | None = None, **overrides: Any) -> L.Trainer:
    """A Trainer for ``args``: step-based training, validation and checkpoints; ``overrides`` go to ``L.Trainer``."""
    checkpoints = ModelCheckpoint(
        dirpath=args.output / "checkpoints",
        filename="{step}",
        every_n_train_steps=args.ckpt_every,
        save_top_k=-1,
        save_last=True,
    )
    options: dict[str, Any] = {
        "accelerator": args.accelerator,
        "devices": 1,
        "max_steps": args.max_steps,
        "max_epochs": -1,
        "val_check_interval": args.val_every,
        "check_val_every_n_epoch": None,
        "log_every_n_steps": 10,
        "logger": CSVLogger(args.output, name="logs"),
        "enable_progress_bar": not args.no_progress,
        "callbacks": [checkpoints, *(callbacks or [])],
        "default_root_dir": args.output,
    }
    options.update(overrides)
    return L.Trainer(**options)


def main(argv: list[str] | None = None) -> MetaSirenModule:
    """Train (or resume) and fit the held-out crops once more at the end; returns the trained module."""
    args = build_parser().parse_args(argv)
    # The batches are views of tensors already in memory: worker processes would only add copying.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # Lightning 2.6 warns that manual-optimization checkpoints hold the state after the step; that is the state
    # a checkpoint named step=s should hold (the learner's step counter, RNG and optimizer agree with it). Lightning
    # would swap in a pre-step copy of the weights if the module had attributes named `saved_models` and `layer`;
    # don't use those names, or the saved weights would be one step older than the saved optimizer and counter.
    warnings.filterwarnings("ignore", "Using ModelCheckpoint with manual optimization.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    module = module_from_args(args)
    trainer = make_trainer(args)
    trainer.fit(module, ckpt_path=args.ckpt_path)
    metrics = trainer.validate(module, verbose=False)[0]
    print(
        f"after {module.learner.step_count} outer steps: held-out PSNR {metrics['val/psnr']:.2f} dB after "
        f"{args.test_steps} test-time steps ({metrics['val/psnr_init']:.2f} dB before); checkpoints in "
        f"{args.output / 'checkpoints'}"
    )
    return module


if __name__ == "__main__":
    main()
