"""The flags the examples share, each declared once (:data:`FLAGS`), and the checked settings they parse into
(:class:`ExampleConfig`, :func:`setup`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ecop_wrap.memory import configure_cpu_allocator

__all__ = ["FLAGS", "ExampleConfig", "Flag", "add_common_flags", "add_flags", "example_parser", "setup"]


@dataclass(frozen=True)
class Flag:
    """One command-line flag ``--<name with dashes>``.

    Attributes:
        kind: converts the text (``int``, ``float``, ``Path``, ...); None for an on/off switch (default off).
        default: the value when the flag is not given (a script may override it, see :func:`add_flags`).
        help: the ``--help`` text.
        choices: the values allowed, if only some are.
    """

    kind: Callable[[str], Any] | None
    default: Any
    help: str
    choices: tuple[str, ...] | None = None


FLAGS: dict[str, Flag] = {
    # meta-training (both methods)
    "outer_steps": Flag(int, 300, "outer (meta) steps for each method; both see the same batches"),
    "batch_size": Flag(int, 4, "signals per outer step (B)"),
    "train_signals": Flag(int, 1024, "number of training signals to build (when the source allows a choice)"),
    "outer_lr": Flag(float, 3e-4, "Adam learning rate beta of the outer loop"),
    "max_grad_norm": Flag(float, 1.0, "clip the meta-gradient's global norm (0 disables)"),
    "inner_lr": Flag(float, 1e-2, "inner step size alpha (meta-training and test time)"),
    # ECoP (paper Algorithm 1)
    "gamma": Flag(float, 0.25, "fraction of the context kept per inner step"),
    "inner_steps": Flag(int, 16, "ECoP's inner steps K"),
    "bootstrap_steps": Flag(int, 5, "L full-context steps building the bootstrap target (0 disables it)"),
    "lam": Flag(float, 100.0, "weight lambda of the bootstrap distance"),
    "boot_lr": Flag(float, 5e-2, "step size of the bootstrap steps"),
    "ecop_scaling": Flag(
        str,
        "norm",
        "ECoP's test-time gradient scaling: gradient-norm ratio (Eq. 6), loss ratio, or none",
        choices=("norm", "loss", "none"),
    ),
    # Learnit baseline
    "learnit_steps": Flag(int, 4, "Learnit's inner steps K"),
    # model (SIREN)
    "hidden_features": Flag(int, 128, "width of each sine layer"),
    "hidden_layers": Flag(int, 3, "number of sine layers"),
    "w0": Flag(float, 30.0, "SIREN frequency omega_0"),
    # testing and output
    "test_signals": Flag(int, 16, "held-out signals to test on"),
    "test_steps": Flag(int, 16, "full-context test-time steps for both methods"),
    "show": Flag(int, 4, "test signals drawn in the reconstruction picture"),
    "out": Flag(Path, None, "output folder for checkpoints, PNGs and summary.json (default: outputs/<modality>)"),
    "seed": Flag(int, 0, "seed of the model initialisation, data and batch order"),
    "threads": Flag(int, None, "torch CPU threads (default: PyTorch's choice)"),
    "device": Flag(str, "cpu", "torch device, e.g. cpu or cuda"),
    "no_progress": Flag(None, False, "plain log lines instead of a tqdm progress bar"),
    "pin_malloc": Flag(
        None,
        False,
        "on CPU, call ecop_wrap.memory.configure_cpu_allocator() first: resident memory then follows live "
        "memory, for more CPU time (docs/benchmarks.md)",
    ),
}

#: The groups of ``--help`` and the flags in each, in order.
_GROUPS: dict[str, tuple[str, ...]] = {
    "meta-training (both methods)": (
        "outer_steps",
        "batch_size",
        "train_signals",
        "outer_lr",
        "max_grad_norm",
        "inner_lr",
    ),
    "ECoP (paper Algorithm 1)": ("gamma", "inner_steps", "bootstrap_steps", "lam", "boot_lr", "ecop_scaling"),
    "Learnit baseline (full-context MAML)": ("learnit_steps",),
    "model (SIREN)": ("hidden_features", "hidden_layers", "w0"),
    "testing and output": (
        "test_signals",
        "test_steps",
        "show",
        "out",
        "seed",
        "threads",
        "device",
        "no_progress",
        "pin_malloc",
    ),
}


def example_parser(doc: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of a script's docstring, showing every default in ``--help``."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0], epilog=epilog, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def add_flags(
    group: Any,
    names: Sequence[str],
    helps: Mapping[str, str] | None = None,
    *,
    table: Mapping[str, Flag] = FLAGS,
    **defaults: Any,
) -> None:
    """Add declared flags to a parser or argument group.

    Args:
        group: an ``argparse`` parser or argument group.
        names: keys of ``table``, in the order they are shown.
        helps: name -> help text that replaces the declared one (a flag whose meaning differs in one script).
        table: the declarations (default :data:`FLAGS`).
        **defaults: name -> default that replaces the declared one.
    """
    for name in names:
        flag = table[name]
        option = "--" + name.replace("_", "-")
        text = (helps or {}).get(name, flag.help)
        if flag.kind is None:
            group.add_argument(option, action="store_true", help=text)
        else:
            default = defaults.get(name, flag.default)
            group.add_argument(option, type=flag.kind, default=default, choices=flag.choices, help=text)


def add_common_flags(
    parser: argparse.ArgumentParser,
    *,
    helps: Mapping[str, str] | None = None,
    titles: Mapping[str, str] | None = None,
    **defaults: Any,
) -> argparse.ArgumentParser:
    """Every flag of :data:`FLAGS`, grouped; keyword arguments override their defaults (e.g. ``outer_steps=200``).

    Args:
        parser: the script's parser.
        helps: flag name -> help text, for flags that mean something else in this script.
        titles: group title -> the title shown instead (e.g. ``{"model (SIREN)": "model (NeRV stem)"}``).
        **defaults: flag name -> this script's default.
    """
    unknown = set(defaults) - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown defaults {sorted(unknown)}")
    for title, names in _GROUPS.items():
        group = parser.add_argument_group((titles or {}).get(title, title))
        add_flags(group, names, helps, **defaults)
    return parser


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
