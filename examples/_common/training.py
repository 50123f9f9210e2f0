"""The two compared methods, their learners, interleaved meta-training and the held-out test fits."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, ECoPConfig, GradScaledAdapter, Siren
from ecop_wrap.data import SignalDataset

from .flags import ExampleConfig
from .stats import best_rate

__all__ = [
    "ECOP",
    "LEARNIT",
    "Evaluation",
    "Method",
    "Progress",
    "build_learners",
    "compared_methods",
    "evaluate",
    "meta_train",
    "siren_factory",
    "train_at_rate",
]

ECOP, LEARNIT = "ECoP", "Learnit"
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Evaluation:
    """Test-time results of one method on the held-out signals.

    Attributes:
        psnr: ``[steps + 1, N]`` PSNR before the first and after every test-time step.
        reconstructions: ``[N, M, D]`` after the last step.
    """

    psnr: torch.Tensor
    reconstructions: torch.Tensor


@dataclass(frozen=True)
class Method:
    """One compared method: its meta-training settings and its test-time fit together.

    Attributes:
        name: shown in the logs, tables and pictures; the checkpoint is ``<name lowercased>.pt``.
        settings: the learner's hyper-parameters.
        test_scaling: the test-time gradient scaling (``"norm"``, ``"loss"`` or ``"none"``).
        label: the legend of the test-time PSNR curves.
    """

    name: str
    settings: ECoPConfig
    test_scaling: str
    label: str

    @property
    def checkpoint(self) -> str:
        """File name of the saved learner."""
        return f"{self.name.lower()}.pt"


def compared_methods(config: ExampleConfig, coord_range: tuple[float, float] | None) -> tuple[Method, ...]:
    """ECoP and Learnit at equal memory (see the module docstring); both fit with ``--test-steps`` full steps."""
    shared = {"inner_lr": config.inner_lr, "max_grad_norm": config.grad_clip, "coord_range": coord_range}
    gamma, K, L = config.gamma, config.inner_steps, config.bootstrap_steps
    ecop = ECoPConfig(gamma=gamma, K=K, L=L, lam=config.lam, boot_lr=config.boot_lr, **shared)
    learnit = ECoPConfig(gamma=1.0, K=config.learnit_steps, L=0, lam=0.0, **shared)
    return (
        Method(ECOP, ecop, config.ecop_scaling, f"ECoP (gamma={gamma}, K={K}, L={L}), scaling={config.ecop_scaling}"),
        # scaling only makes sense for a learner trained on pruned sets
        Method(LEARNIT, learnit, "none", f"Learnit (K={config.learnit_steps}), unscaled"),
    )


def build_learners(
    make_model: Callable[[], nn.Module], methods: tuple[Method, ...], config: ExampleConfig
) -> dict[str, ContextPruningMetaLearner]:
    """One learner per method, all from the same random initialization."""
    torch.manual_seed(config.seed)
    model = make_model().to(config.device)
    learners = {}
    for index, method in enumerate(methods):
        init = model if index == 0 else copy.deepcopy(model)
        learners[method.name] = ContextPruningMetaLearner.from_config(
            init, method.settings, outer_lr=config.outer_lr, seed=config.seed
        )
    return learners


def siren_factory(
    config: ExampleConfig, in_features: int, out_features: int, *, output_offset: float = 0.5
) -> Callable[[], nn.Module]:
    """A function making a fresh :class:`~ecop_wrap.Siren` of the ``--hidden-features``, ``--hidden-layers`` and
    ``--w0`` flags, mapping ``C = in_features`` coordinates to ``D = out_features`` values."""

    def make_model() -> nn.Module:
        return Siren(
            in_features,
            out_features,
            config.hidden_features,
            config.hidden_layers,
            w0=config.w0,
            output_offset=output_offset,
        )

    return make_model


class Progress:
    """A tqdm bar when tqdm is installed (``pip install 'ecop-wrap[examples]'``) and wanted, else a log line every
    10 %.

    Args:
        total: the number of updates expected.
        desc: what is counted (the bar's label).
        plain: log lines even when tqdm is installed (``--no-progress``).
        unit: tqdm's unit of count.
    """

    def __init__(self, total: int, desc: str, plain: bool, *, unit: str = "it") -> None:
        self.total, self.count, self.desc, self.bar = total, 0, desc, None
        if not plain:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                print("(tqdm is not installed: pip install 'ecop-wrap[examples]' for a progress bar)")
            else:
                self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, text: str = "", count: int = 1) -> None:
        """Count ``count`` more and show ``text`` (the latest numbers)."""
        previous, self.count = self.count, self.count + count
        every = max(1, self.total // 10)
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(count)
        elif self.count == self.total or self.count // every > previous // every:
            print(f"  {self.desc} {self.count}/{self.total}: {text}", flush=True)

    def close(self) -> None:
        """Close the bar (nothing for log lines)."""
        if self.bar is not None:
            self.bar.close()


def _batches(dataset: SignalDataset, config: ExampleConfig) -> Iterator[Batch]:
    batch = min(config.batch_size, len(dataset))
    for coords, values in dataset.batches(batch, seed=config.seed, infinite=True):
        yield coords.to(config.device), values.to(config.device)


def meta_train(
    learners: dict[str, ContextPruningMetaLearner], train: SignalDataset, config: ExampleConfig
) -> dict[str, list[float]]:
    """Alternate one outer step of each learner on the same batch; returns each one's training PSNR per step.

    The live numbers are the training batch's full-context PSNR after each learner's own inner loop (ECoP: K
    pruned steps; Learnit: its K full steps), smoothed over the last steps.
    """
    history: dict[str, list[float]] = {name: [] for name in learners}
    smooth: dict[str, float] = {}
    progress = Progress(config.outer_steps, "meta-training", config.no_progress, unit="step")
    batches = _batches(train, config)
    try:
        for _ in range(config.outer_steps):
            batch = next(batches)
            for name, learner in learners.items():
                psnr = learner.meta_step(batch)["psnr"]
                history[name].append(psnr)
                if math.isfinite(psnr):
                    smooth[name] = psnr if name not in smooth else 0.9 * smooth[name] + 0.1 * psnr
            progress.update(" | ".join(f"{n} {smooth.get(n, float('nan')):.1f} dB" for n in learners))
    finally:
        progress.close()
    return history


def train_at_rate(
    model: nn.Module,
    method: Method,
    lr: float,
    batches: Iterator[tuple[torch.Tensor, ...]],
    config: ExampleConfig,
    shown: Callable[[dict[str, float]], float] = lambda stats: stats["psnr"],
    unit: str = "dB",
) -> ContextPruningMetaLearner:
    """Meta-train a copy of ``model`` as ``method`` at outer lr ``lr`` for ``config.outer_steps`` steps of
    ``batches`` (already on the device), with a progress bar of the smoothed ``shown(stats)`` (a learning-rate
    sweep: every rate gets the same batches when ``batches`` is rebuilt the same way)."""
    learner = ContextPruningMetaLearner.from_config(
        copy.deepcopy(model), method.settings, outer_lr=lr, seed=config.seed
    )
    progress = Progress(config.outer_steps, f"{method.name} lr={lr:g}", config.no_progress, unit="step")
    smooth = None
    try:
        for _ in range(config.outer_steps):
            value = shown(learner.meta_step(next(batches)))
            if math.isfinite(value):
                smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
            progress.update(f"{smooth if smooth is not None else float('nan'):.4g} {unit}")
    finally:
        progress.close()
    return learner


def sweep_outer_lrs(
    methods: tuple[Method, ...],
    lrs: list[float],
    train_and_score: Callable[[Method, float], tuple[ContextPruningMetaLearner, float]],
    label: str = "validation PSNR",
) -> tuple[dict[str, tuple[float, ContextPruningMetaLearner]], dict[str, dict[float, float | None]]]:
    """Each method at each outer lr of ``lrs``: ``train_and_score(method, lr) -> (learner, validation score)``;
    a rate whose training raises ``FloatingPointError`` diverged (score None). Returns ``chosen`` (method name ->
    the best rate and its learner, by :func:`best_rate`) and ``sweep`` (method name -> rate -> score); exits with
    an error when a method diverged at every rate."""
    chosen: dict[str, tuple[float, ContextPruningMetaLearner]] = {}
    sweep: dict[str, dict[float, float | None]] = {}
    for method in methods:
        sweep[method.name] = {}
        for lr in lrs:
            try:
                learner, score = train_and_score(method, lr)
            except FloatingPointError as error:  # the rate is too large for this model: not a candidate
                sweep[method.name][lr] = None
                print(f"  {method.name} outer lr {lr:g}: diverged ({str(error).split(':')[0]})")
                continue
            sweep[method.name][lr] = score
            print(f"  {method.name} outer lr {lr:g}: {label} {score:.3f} dB")
            if lr == best_rate(sweep[method.name]):
                chosen[method.name] = (lr, learner)
        if method.name not in chosen:
            raise SystemExit(f"error: {method.name} diverged at every outer lr of --lr-grid; try smaller ones")
    return chosen, sweep


def evaluate(
    learners: dict[str, ContextPruningMetaLearner],
    methods: tuple[Method, ...],
    test: SignalDataset,
    config: ExampleConfig,
) -> dict[str, Evaluation]:
    """Fit every held-out signal from each learner's initialization with full-context steps."""
    results = {}
    for method in methods:
        adapter = GradScaledAdapter(learners[method.name], steps=config.test_steps, scaling=method.test_scaling)
        psnrs, recons = [], []
        for coords, values in test.batches(min(8, len(test)), shuffle=False, drop_last=False):
            coords, values = coords.to(config.device), values.to(config.device)
            fit = adapter.fit((coords, values))
            psnrs.append(fit.history["psnr"].cpu())
            with torch.no_grad():
                recons.append(fit(coords).cpu())
        results[method.name] = Evaluation(psnr=torch.cat(psnrs, dim=1), reconstructions=torch.cat(recons))
    return results
