"""What the example scripts share: flags, meta-training ECoP and Learnit side by side, testing both on
held-out signals, checkpoints, pictures and a summary.

Each ``examples/<modality>_siren.py`` parses its flags, turns the shared ones into an :class:`ExampleConfig`
(:func:`setup`), builds an :class:`Example` (its datasets, its model and two drawing functions) and hands both
to :func:`run`. The two compared methods, training and test-time settings together, are defined once, in
:func:`compared_methods`. This file is not part of the library: copy what you need.

The comparison follows the paper at equal memory: ECoP prunes to a fraction gamma of the context for K steps
(``K = 4 / gamma`` by default) plus L bootstrap steps; Learnit (MAML on the full context, no bootstrap) takes
4 steps. Both start from the same random SIREN, see the same batches for the same number of outer steps and
are tested with the same number of full-context steps: ECoP with gradient scaling (paper Eq. 6), Learnit
without (scaling only makes sense for a learner trained on pruned sets).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, ECoPConfig, GradScaledAdapter, SelectionTrace, trace_selection
from ecop_wrap.data import SignalDataset
from ecop_wrap.memory import configure_cpu_allocator
from ecop_wrap.plotting import plot_psnr_curves

__all__ = [
    "Evaluation",
    "Example",
    "ExampleConfig",
    "Method",
    "add_common_flags",
    "build_learners",
    "compared_methods",
    "evaluate",
    "meta_train",
    "run",
    "setup",
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


@dataclass
class Example:
    """One modality's data, model and pictures.

    Attributes:
        name: used in titles and the default output folder.
        train, test: meta-training and held-out signals on the same grid.
        make_model: a fresh (randomly initialised) INR; called once, then copied for the second method.
        show_reconstructions: ``(test values [n, M, D], {method: reconstructions [n, M, D]}, {method: psnr [n]},
            names [n], out_dir) -> list of written paths``, for a few test signals.
        show_selection: ``(signal values [M, D], SelectionTrace, out_dir) -> written path``, Figure-1 view.
        coord_range: the coordinates' range, passed to the learners (None: no check).
        notes: extra facts for ``summary.json`` (data source, sizes, ...).
    """

    name: str
    train: SignalDataset
    test: SignalDataset
    make_model: Callable[[], nn.Module]
    show_reconstructions: Callable[
        [torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], list[str], Path], list[str]
    ]
    show_selection: Callable[[torch.Tensor, SelectionTrace, Path], str]
    coord_range: tuple[float, float] | None = (-1.0, 1.0)
    notes: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- flags
def add_common_flags(parser: argparse.ArgumentParser, **defaults: Any) -> argparse.ArgumentParser:
    """The flags every example shares; keyword arguments override their defaults (e.g. ``outer_steps=200``)."""
    values = {
        "outer_steps": 300,
        "batch_size": 4,
        "train_signals": 1024,
        "test_signals": 16,
        "hidden_features": 128,
        "hidden_layers": 3,
        "w0": 30.0,
        "gamma": 0.25,
        "inner_steps": 16,
        "bootstrap_steps": 5,
        "lam": 100.0,
        "learnit_steps": 4,
        "test_steps": 16,
        "inner_lr": 1e-2,
        "boot_lr": 5e-2,
        "outer_lr": 3e-4,
        "max_grad_norm": 1.0,
        "show": 4,
    }
    unknown = set(defaults) - set(values) - {"out"}
    if unknown:
        raise ValueError(f"unknown defaults {sorted(unknown)}")
    values.update(defaults)
    group = parser.add_argument_group("meta-training (both methods)")
    group.add_argument(
        "--outer-steps",
        type=int,
        default=values["outer_steps"],
        help="outer (meta) steps for each method; both see the same batches",
    )
    group.add_argument("--batch-size", type=int, default=values["batch_size"], help="signals per outer step (B)")
    group.add_argument(
        "--train-signals",
        type=int,
        default=values["train_signals"],
        help="number of training signals to build (when the source allows a choice)",
    )
    group.add_argument(
        "--outer-lr", type=float, default=values["outer_lr"], help="Adam learning rate beta of the outer loop"
    )
    group.add_argument(
        "--max-grad-norm",
        type=float,
        default=values["max_grad_norm"],
        help="clip the meta-gradient's global norm (0 disables)",
    )
    group.add_argument(
        "--inner-lr", type=float, default=values["inner_lr"], help="inner step size alpha (meta-training and test time)"
    )
    group = parser.add_argument_group("ECoP (paper Algorithm 1)")
    group.add_argument(
        "--gamma", type=float, default=values["gamma"], help="fraction of the context kept per inner step"
    )
    group.add_argument("--inner-steps", type=int, default=values["inner_steps"], help="ECoP's inner steps K")
    group.add_argument(
        "--bootstrap-steps",
        type=int,
        default=values["bootstrap_steps"],
        help="L full-context steps building the bootstrap target (0 disables it)",
    )
    group.add_argument("--lam", type=float, default=values["lam"], help="weight lambda of the bootstrap distance")
    group.add_argument("--boot-lr", type=float, default=values["boot_lr"], help="step size of the bootstrap steps")
    group.add_argument(
        "--ecop-scaling",
        choices=("norm", "loss", "none"),
        default="norm",
        help="ECoP's test-time gradient scaling: gradient-norm ratio (Eq. 6), loss ratio, or none",
    )
    group = parser.add_argument_group("Learnit baseline (full-context MAML)")
    group.add_argument("--learnit-steps", type=int, default=values["learnit_steps"], help="Learnit's inner steps K")
    group = parser.add_argument_group("model (SIREN)")
    group.add_argument(
        "--hidden-features", type=int, default=values["hidden_features"], help="width of each sine layer"
    )
    group.add_argument("--hidden-layers", type=int, default=values["hidden_layers"], help="number of sine layers")
    group.add_argument("--w0", type=float, default=values["w0"], help="SIREN frequency omega_0")
    group = parser.add_argument_group("testing and output")
    group.add_argument("--test-signals", type=int, default=values["test_signals"], help="held-out signals to test on")
    group.add_argument(
        "--test-steps", type=int, default=values["test_steps"], help="full-context test-time steps for both methods"
    )
    group.add_argument(
        "--show", type=int, default=values["show"], help="test signals drawn in the reconstruction picture"
    )
    group.add_argument(
        "--out",
        type=Path,
        default=values.get("out"),
        help="output folder for checkpoints, PNGs and summary.json (default: outputs/<modality>)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the model initialisation, data and batch order")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    group.add_argument("--no-progress", action="store_true", help="plain log lines instead of a tqdm progress bar")
    group.add_argument(
        "--pin-malloc",
        action="store_true",
        help="on CPU, call ecop_wrap.memory.configure_cpu_allocator() first: resident memory then follows live "
        "memory, for more CPU time (docs/benchmarks.md)",
    )
    return parser


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class ExampleConfig:
    """The shared flags of an example run, parsed once and checked (:meth:`from_namespace`); see ``--help``.

    Attributes:
        flags: every flag of the script as parsed (its own ones too), recorded in ``summary.json``.
    """

    outer_steps: int
    batch_size: int
    train_signals: int
    test_signals: int
    outer_lr: float
    max_grad_norm: float
    inner_lr: float
    gamma: float
    inner_steps: int
    bootstrap_steps: int
    lam: float
    boot_lr: float
    ecop_scaling: str
    learnit_steps: int
    test_steps: int
    hidden_features: int
    hidden_layers: int
    w0: float
    show: int
    out: Path | None
    seed: int
    threads: int | None
    device: str
    no_progress: bool
    pin_malloc: bool
    flags: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> ExampleConfig:
        """The shared settings of a namespace parsed by a parser with :func:`add_common_flags`.

        Raises:
            SystemExit: a flag that cannot work (before any data is loaded).
        """
        names = [name for name in cls.__dataclass_fields__ if name != "flags"]
        config = cls(**{name: getattr(args, name) for name in names}, flags=dict(vars(args)))
        config.check()
        return config

    def check(self) -> None:
        """Reject flags that cannot work."""
        positive = (
            "outer_steps",
            "batch_size",
            "train_signals",
            "test_signals",
            "inner_steps",
            "learnit_steps",
            "hidden_features",
            "hidden_layers",
            "show",
        )
        bad = [f"--{name.replace('_', '-')}" for name in positive if getattr(self, name) < 1]
        if bad:
            raise SystemExit(f"error: {', '.join(bad)} must be at least 1")
        if not 0.0 < self.gamma <= 1.0:
            raise SystemExit(f"error: --gamma must be in (0, 1], got {self.gamma}")
        if self.test_steps < 0 or self.bootstrap_steps < 0:
            raise SystemExit("error: --test-steps and --bootstrap-steps must be >= 0")

    @property
    def grad_clip(self) -> float | None:
        """``--max-grad-norm``, None when it is 0 (no clipping)."""
        return self.max_grad_norm if self.max_grad_norm > 0 else None


# ----------------------------------------------------------------------------------------------- methods
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


class _Progress:
    """tqdm when it is installed (``pip install 'ecop-wrap[examples]'``), else a log line every 10 %."""

    def __init__(self, total: int, plain: bool) -> None:
        self.total, self.count, self.bar = total, 0, None
        if not plain:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                print("(tqdm is not installed: pip install 'ecop-wrap[examples]' for a progress bar)")
            else:
                self.bar = tqdm(total=total, desc="meta-training", unit="step", dynamic_ncols=True)

    def update(self, text: str) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.count == self.total or self.count % max(1, self.total // 10) == 0:
            print(f"  step {self.count}/{self.total}: {text}", flush=True)

    def close(self) -> None:
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
    progress = _Progress(config.outer_steps, config.no_progress)
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


# -------------------------------------------------------------------------------------------------- output
def _summary(
    example: Example,
    config: ExampleConfig,
    seconds: float,
    results: dict[str, Evaluation],
    training: dict[str, list[float]],
) -> dict[str, Any]:
    tail = max(1, len(next(iter(training.values()))) // 10)
    return {
        "modality": example.name,
        "train_signals": len(example.train),
        "test_signals": len(example.test),
        "grid": list(example.train.shape),
        "points_per_signal": example.train.num_points,
        "meta_training_seconds": round(seconds, 1),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.flags.items()},
        "notes": example.notes,
        "test_psnr": {
            name: {
                "mean_per_step": [round(float(v), 3) for v in r.psnr.mean(dim=1)],
                "final_mean": round(float(r.psnr[-1].mean()), 3),
                "final_std": round(float(r.psnr[-1].std()) if r.psnr.shape[1] > 1 else 0.0, 3),
            }
            for name, r in results.items()
        },
        "train_psnr_last_10pct": {n: round(sum(v[-tail:]) / tail, 3) for n, v in training.items()},
    }


def _print_table(results: dict[str, Evaluation], test_steps: int) -> None:
    marks = sorted({0, 1, test_steps // 4, test_steps // 2, test_steps})
    print("\nheld-out PSNR (dB, mean over signals) after k full-context test steps")
    print("method   " + "".join(f"{'k=' + str(k):>9}" for k in marks))
    for name, result in results.items():
        means = result.psnr.mean(dim=1)
        print(f"{name:<9}" + "".join(f"{float(means[k]):>9.2f}" for k in marks))


def run(example: Example, config: ExampleConfig) -> dict[str, Any]:
    """Meta-train both methods, save checkpoints, test on held-out signals, draw pictures, write summary.json."""
    out = Path(config.out) if config.out is not None else Path("outputs") / example.name
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{example.name}: {len(example.train)} training and {len(example.test)} held-out signals, grid "
        f"{example.train.shape} ({example.train.num_points} points), writing to {out}/"
    )
    methods = compared_methods(config, example.coord_range)
    learners = build_learners(example.make_model, methods, config)
    for name, learner in learners.items():
        print(f"  {name}: {learner!r}")
    start = time.perf_counter()
    training = meta_train(learners, example.train, config)
    seconds = time.perf_counter() - start
    print(f"meta-training took {seconds:.0f} s")
    for method in methods:
        learners[method.name].save(out / method.checkpoint)
    results = evaluate(learners, methods, example.test, config)
    _print_table(results, config.test_steps)
    written = _draw(example, config, methods, learners, results, training, out)
    summary = _summary(example, config, seconds, results, training)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = [Path(p).name for p in written] + [m.checkpoint for m in methods] + ["summary.json"]
    print(f"wrote {', '.join(files)} in {out}/")
    return summary


def _draw(
    example: Example,
    config: ExampleConfig,
    methods: tuple[Method, ...],
    learners: dict[str, ContextPruningMetaLearner],
    results: dict[str, Evaluation],
    training: dict[str, list[float]],
    out: Path,
) -> list[str]:
    # the first and last held-out signals and evenly spaced ones between (neighbours are often alike)
    shown = torch.linspace(0, len(example.test) - 1, min(config.show, len(example.test))).round().long().unique()
    written = example.show_reconstructions(
        example.test.stacked()[shown],
        {name: r.reconstructions[shown] for name, r in results.items()},
        {name: r.psnr[-1, shown] for name, r in results.items()},
        [example.test.names[i] for i in shown.tolist()],
        out,
    )
    written.append(
        plot_psnr_curves(
            {method.label: results[method.name].psnr for method in methods},
            out / "psnr_per_step.png",
            title=f"{example.name}: {len(example.test)} held-out signals after {config.outer_steps} outer steps "
            "(mean ± std)",
            xlabel="test-time adaptation step k (full context)",
        )
    )
    written.append(
        plot_psnr_curves(
            {name: _running_mean(v) for name, v in training.items()},
            out / "meta_training.png",
            title=f"{example.name}: training-batch PSNR after each method's inner loop (running mean)",
            xlabel="outer step",
        )
    )
    signal = (example.test.coords, example.test.stacked()[0])
    trace = trace_selection(learners[ECOP], signal)
    written.append(example.show_selection(signal[1], trace, out))
    return written


def _running_mean(values: list[float], window: int = 20) -> list[float]:
    """Mean of the last ``window`` finite values at every position (skipped steps report non-finite PSNR)."""
    out: list[float] = []
    kept: list[float] = []
    for value in values:
        if math.isfinite(value):
            kept = [*kept, value][-window:]
        out.append(sum(kept) / len(kept) if kept else float("nan"))
    return out


def setup(args: argparse.Namespace) -> ExampleConfig:
    """The run's :class:`ExampleConfig`; sets the threads (and with ``--pin-malloc`` the CPU allocator's
    thresholds) and exits clearly for a device that is not there."""
    config = ExampleConfig.from_namespace(args)
    if config.pin_malloc and torch.device(config.device).type == "cpu":
        configure_cpu_allocator()  # a no-op where the C library is not glibc
    if config.threads is not None:
        torch.set_num_threads(max(1, config.threads))
    if str(config.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return config
