"""Every hyper-parameter of ECoP, declared once: its type, default, check and meaning.

:class:`ECoPConfig` is the one declaration. Everything else is derived from its fields: the learner's and the
adapter's keyword arguments and their documentation (:func:`config_args_doc`), validation, the checkpoint
format (:meth:`ECoPConfig.to_dict`), which settings a resumed checkpoint must agree on (:data:`ALGORITHM_KEYS`)
and which ones the adapter may change at test time (:data:`TEST_TIME_KEYS`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, get_args

import torch

from ..typing import BackendName, BatchingMode, LearnInnerLR
from .losses import LOSSES
from .rules import SELECTION_RULES, check_rule_name
from .validation import (
    Check,
    check_autocast_dtype,
    check_compile,
    check_fraction,
    check_module_names,
    check_open_fraction,
    check_range,
    choice_check,
    flag_check,
    int_at_least,
    non_negative_check,
    optional_check,
    piece_check,
    positive_check,
)

__all__ = [
    "ALGORITHM_KEYS",
    "POSITIONAL_KEYS",
    "TEST_TIME_KEYS",
    "ECoPConfig",
    "config_args_doc",
    "config_parameters",
    "split_config_kwargs",
]

_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _hyper(
    default: Any,
    doc: str,
    check: Check,
    *,
    algorithm: bool = False,
    test_time: bool = False,
    positional: bool = False,
    dtype: bool = False,
) -> Any:
    """Declare one hyper-parameter (a dataclass field whose metadata says what it is and how it is checked).

    Args:
        default: the default value.
        doc: its meaning, one paragraph (becomes the documentation of every signature that takes it).
        check: ``check(name, value) -> value``, raising ``TypeError``/``ValueError`` naming the argument.
        algorithm: changes what is learned (a checkpoint must agree on it to be resumed).
        test_time: the adapter may change it at test time.
        positional: the learner also takes it positionally, in declaration order (``gamma, K, L, lam``).
        dtype: a ``torch.dtype`` (stored by name in checkpoints).
    """
    meta = {"doc": doc, "check": check, "algorithm": algorithm, "test_time": test_time, "positional": positional}
    return field(default=default, metadata={**meta, "dtype": dtype})


def _selection(name: str, value: Any) -> str:
    return check_rule_name(name, value, SELECTION_RULES)


def _loss(name: str, value: Any) -> str:
    if not isinstance(value, str) or value not in LOSSES:
        raise ValueError(
            f"{name} must be one of {tuple(LOSSES)} (or a name registered with register_loss), got {value!r}"
        )
    return value


def _dtype(name: str, value: Any) -> torch.dtype | None:
    return check_autocast_dtype(value, name)


@dataclass(frozen=True)
class ECoPConfig:
    # The class docstring is generated from the fields' docs below (see the end of this module).
    gamma: float = _hyper(
        0.25,
        "fraction of the context kept at each inner step, in (0, 1]; ``1.0`` is full-context MAML.",
        check_fraction,
        algorithm=True,
        test_time=True,
        positional=True,
    )
    K: int = _hyper(16, "inner steps (>= 1).", int_at_least(1), algorithm=True, positional=True)
    L: int = _hyper(
        5,
        "bootstrap steps on the full context after the inner loop (>= 0; 0 disables the bootstrap).",
        int_at_least(0),
        algorithm=True,
        positional=True,
    )
    lam: float = _hyper(
        100.0,
        "weight lambda of the bootstrap distance (0 disables the bootstrap).",
        non_negative_check,
        algorithm=True,
        positional=True,
    )
    lam_mode: str = _hyper(
        "absolute",
        'how lambda weighs the bootstrap distance mu per signal: ``"absolute"`` (the paper\'s ``lam * mu``) or '
        '``"relative"`` (``lam * stopgrad(||g||) * mu``, g the full-context loss gradient at theta_K: the '
        "bootstrap's pull on theta_K is then ``lam`` times the fit term's, whatever the number of adapted "
        "elements, the signal's scale or how far meta-training has come; the paper's term pulls with the "
        "constant size ``lam``, which dwarfs the fit term as training converges).",
        choice_check(("absolute", "relative")),
        algorithm=True,
    )
    boot_trains_shared: bool = _hyper(
        False,
        "whether the bootstrap term's gradient reaches the shared (not adapted) trainable parameters, e.g. the "
        "network of a latent-modulated model. False (the default): they learn from the fit term alone and the "
        "bootstrap trains theta_0 of the adapted parameters and the learned rates, at the cost of one more "
        "backward pass through the inner loop when the model has shared parameters. True: the paper's gradient, "
        "with which a latent-only model does not train at lambda >= 1 (the shared network learns to make the "
        "latent's gradient, and so the distance, vanish). Without shared parameters (the paper's setting: every "
        "weight adapted) both are the same, bit for bit.",
        flag_check,
        algorithm=True,
    )
    step_loss: float = _hyper(
        0.0,
        "weight of a multi-step meta-loss (MAML++'s, Antoniou et al. 2019): each signal's fit term gains "
        "``step_loss`` times the mean, over k = 1 .. K-1, of its loss at theta_k on that step's pruned context (the "
        "loss inner step k + 1 differentiates anyway: no extra pass, and with second-order steps no extra saved "
        "tensors; with ``first_order`` each step's forward graph is kept for it). It asks every intermediate step "
        "to fit, not only theta_K; 0 (the default) is the paper's meta-loss. Opt-in: docs/results.md has what it "
        "did.",
        non_negative_check,
        algorithm=True,
    )
    inner_lr: float = _hyper(
        1e-2, "inner step size alpha (and the learned rates' initial value).", positive_check, algorithm=True
    )
    boot_lr: float | None = _hyper(
        None,
        "bootstrap step size (None: ``inner_lr``; resolved on construction).",
        optional_check(positive_check),
        algorithm=True,
    )
    boot_target: str = _hyper(
        "last",
        "which point of the bootstrap's path is the target theta_boot: ``\"last\"`` (the paper's: after the L "
        'steps) or ``"best"`` (per signal, the point of lowest full-context loss among theta_K and the L steps\' '
        "results; theta_K itself, so no pull, when no step lowered the loss). ``boot_lr`` too large for a signal "
        "makes the paper's target worse than theta_K, and the bootstrap then pulls theta_K towards it; "
        '``"best"`` costs one graph-free forward more per meta-step.',
        choice_check(("last", "best")),
        algorithm=True,
    )
    selection: str = _hyper(
        "error",
        'name of a registered selection rule: ``"error"`` (the paper\'s), ``"random"``, ``"soft"`` (drawn with '
        'probabilities proportional to the error), ``"mixed"`` (error ranking with a uniformly drawn half), '
        '``"gradncp"`` (the authors\' code) or one added with '
        ":func:`~ecop_wrap.register_selection`.",
        _selection,
        algorithm=True,
        test_time=True,
    )
    loss: str = _hyper(
        "mse",
        "the per-point loss of every pass (ranking, inner steps, bootstrap, outer loss, test time): "
        '``"mse"``, ``"l1"``, ``"huber"`` or one added with :func:`~ecop_wrap.register_loss`; a signal\'s loss is '
        "``sum_j w_j l_j / sum_j w_j`` over its points (``w``: the batch's weights, 1 without).",
        _loss,
        algorithm=True,
        test_time=True,
    )
    huber_delta: float = _hyper(
        1.0,
        'the ``delta`` of ``loss="huber"`` (quadratic below it, linear above).',
        positive_check,
        algorithm=True,
        test_time=True,
    )
    data_range: float = _hyper(
        1.0,
        'the signal\'s value range for PSNR (``10 log10(data_range^2 / MSE)``), reported only with ``loss="mse"``.',
        positive_check,
        test_time=True,
    )
    first_order: bool = _hyper(
        False, "drop the second-order terms of the inner steps (FOMAML when ``gamma=1``).", flag_check, algorithm=True
    )
    max_grad_norm: float | None = _hyper(
        None,
        "clip the meta-gradient's global norm to this value (None: no clipping).",
        optional_check(positive_check),
        algorithm=True,
    )
    learn_inner_lr: LearnInnerLR | None = _hyper(
        None,
        'None (fixed ``inner_lr``), ``"per_tensor"`` (one rate per adapted tensor and inner step, MAML++) or '
        '``"per_element"`` (one rate per adapted element, Meta-SGD).',
        optional_check(choice_check(get_args(LearnInnerLR))),
        algorithm=True,
    )
    max_inner_lr: float = _hyper(
        1.0,
        "upper bound of learned inner rates (they are kept in ``[0, max_inner_lr]``).",
        positive_check,
        algorithm=True,
    )
    chunk_size: int | None = _hyper(
        None,
        "points per chunk of every full-context pass that needs no graph back to theta_0, and of the outer loss "
        "(chunked surrogate). None: graph-free passes run over the whole context (the bootstrap's in pieces of "
        "``bootstrap_chunk``) and the outer loss keeps one full-context graph.",
        optional_check(int_at_least(1)),
        test_time=True,
    )
    bootstrap_chunk: str | int = _hyper(
        "whole",
        "points per piece of the bootstrap's full-context passes while meta-learning, when ``chunk_size`` is not "
        'set: ``"whole"`` (one piece; the bootstrap runs before the outer loss, whose graph spans the whole context '
        'anyway, so the step\'s peak moves by about 1%: docs/benchmarks.md), ``"pruned"`` (the pruned-set size: '
        "a piece never holds more than one pruned step's graph, about 4x the bootstrap's ops at ``gamma=0.25``) or "
        "a number of points.",
        piece_check("pruned", "whole"),
    )
    rank_chunk: str | int = _hyper(
        "auto",
        'points per piece of the ranking forwards when ``chunk_size`` is not set: ``"auto"`` (on a CPU, pieces of '
        "1,024 points, whose activations stay in the cache from layer to layer, with the same predictions bit for "
        'bit; on an accelerator one piece, one launch per layer), ``"whole"`` (one piece) or a number of points.',
        piece_check("auto", "whole"),
        test_time=True,
    )
    checkpoint: bool = _hyper(
        False, "recompute each inner step's graph in the backward pass instead of keeping all K.", flag_check
    )
    backend: BackendName = _hyper(
        "torch.func",
        'how the model is evaluated with per-signal parameters: ``"torch.func"`` or ``"higher"``.',
        choice_check(get_args(BackendName)),
        test_time=True,
    )
    batching: BatchingMode = _hyper(
        "auto",
        'how the torch.func backend batches signals: ``"auto"``, ``"bmm"``, ``"vmap"`` or ``"loop"``. '
        '``"auto"`` keeps the modes that reproduce the per-signal loop on a probe and, with '
        "``batching_benchmark``, the fastest of them.",
        choice_check(get_args(BatchingMode)),
        test_time=True,
    )
    batching_benchmark: bool = _hyper(
        True,
        'with ``batching="auto"``: time every correct mode on the first call (a forward without a graph and a '
        "second-order step, on at most 1024 of that call's points and two of its signals; about 1.1 s for SIREN "
        "5x256 on one CPU thread) and keep the fastest (on a CPU the loop unless a batched mode beats it by 10%: "
        "the probe stays in the cache where a full context does not), once per adapted parameter shapes, "
        "coordinate dimensions, "
        "dtype and device (so every pass of a meta-step runs one mode), "
        "like cuDNN's benchmark mode; ``backend.batching_times`` and an INFO line on the ``ecop_wrap`` logger "
        "say what it measured. False, the environment variable ``ECOP_WRAP_BATCHING_BENCHMARK=0`` or "
        'torch.distributed (every rank must run the same mode): the first correct mode of ``"bmm"``, '
        '``"vmap"``, else ``"loop"``, deterministically. The modes agree to rounding, not bit for bit: turn '
        "timing off where two runs must give identical float32 numbers.",
        flag_check,
        test_time=True,
    )
    autocast_dtype: torch.dtype | None = _hyper(
        None, "run forward passes under ``torch.autocast`` with this dtype.", _dtype, test_time=True, dtype=True
    )
    graph_free_dtype: torch.dtype | None = _hyper(
        None,
        "run the passes that need no graph back to theta_0 (the ranking forwards, the bootstrap's passes) under "
        "``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``); the graph-carrying steps and every "
        "test-time gradient keep the model's dtype. None: the model's dtype everywhere. The modules in "
        "``graph_free_full_precision`` stay in the model's dtype inside these passes.",
        _dtype,
        test_time=True,
        dtype=True,
    )
    graph_free_full_precision: str | tuple[str, ...] = _hyper(
        "ends",
        "submodules that run with autocast off (their bf16/fp16 inputs cast to float32) inside the "
        '``graph_free_dtype`` passes: ``"ends"`` for the model\'s input and output layers (found by one small '
        "probe forward on the first such pass: the first ``nn.Linear`` or convolution applied to the "
        "coordinates, else the first one called, and the last one called), or a tuple of submodule names "
        "(``()``: lower everything). An input encoding that is not such a layer (e.g. Fourier features) should "
        "compute itself in float32, as ``FourierFeatureMLP`` does. Why: SIREN loses most of bf16's precision in "
        "its first layer (w0 = 30 times the input projection) and in its predictions; with the ends in float32 "
        "bf16 cost nothing measurable on the builtin comparison (docs/benchmarks.md).",
        check_module_names,
        test_time=True,
    )
    compile: bool | str = _hyper(
        False,
        "run every graph-free forward through :func:`torch.compile` (double backward through compiled graphs is "
        "not supported, so the inner steps stay eager); falls back with one warning. ``True`` compiles in "
        'torch\'s default mode; a mode string is passed on: ``"reduce-overhead"`` replays each graph-free pass '
        "(ranking, bootstrap, test-time full-context steps) as a CUDA graph, one launch instead of one per op "
        "(on another device it warns once and compiles in the default mode). The learners and adapters "
        "of a process share one cache of compiled graphs (at least 64); a pass that would need one more runs "
        "eagerly, after one warning.",
        check_compile,
        test_time=True,
    )
    max_consecutive_skips: int = _hyper(
        10,
        "raise ``FloatingPointError`` after this many consecutive non-finite steps (meta-steps; at test time, "
        "one signal's updates).",
        int_at_least(1),
        test_time=True,
    )
    monitor_window: int = _hyper(
        50,
        "meta-steps the training monitor looks at: one warning when the meta-gradient norm is above "
        "``max_grad_norm`` for this many consecutive steps, one when a window's mean meta-loss is 1.5x the "
        "best window's (or a roll-back, see ``divergence_backoff``), one when the bootstrap's path ended above twice "
        "theta_K's full-context loss for more than half the signals over a window, and (with the MSE) one when, "
        "after the first two windows, a window's fits are less than 1 dB better than predicting each signal's own "
        "mean (0: no checks).",
        int_at_least(0),
    )
    divergence_backoff: float | None = _hyper(
        None,
        "what a rising meta-loss (the monitor's check over ``monitor_window`` steps) does: None warns once; a "
        "factor in (0, 1) rolls the model, the learned rates and the optimizer state back to the start of the "
        "window with the lowest mean meta-loss (the state its losses were measured from), multiplies every "
        "parameter group's learning rate by it, warns, and goes on (again at each later rise). Nothing changes "
        "while the meta-loss does not rise. Costs up to two copies of the meta-parameters and the optimizer state "
        "(the current window's start and the best one's), taken once per window; the step counter and the pruning "
        "RNG go on. The copies are not saved in checkpoints (a resumed learner starts the monitor afresh). A "
        "scheduler that sets absolute learning rates overrides the lowered ones.",
        optional_check(check_open_fraction),
    )
    coord_range: tuple[float, float] | None = _hyper(
        (-1.0, 1.0),
        "expected coordinate range; coordinates outside it warn once (None: no check).",
        optional_check(check_range),
        test_time=True,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        if self.boot_lr is None:
            object.__setattr__(self, "boot_lr", self.inner_lr)
        if self.learn_inner_lr is not None and self.max_inner_lr < self.inner_lr:
            raise ValueError(
                f"max_inner_lr ({self.max_inner_lr}) must be >= inner_lr ({self.inner_lr}), the learned "
                "rates' initial value"
            )
        if self.divergence_backoff is not None and self.monitor_window == 0:
            raise ValueError(
                "divergence_backoff needs the monitor: set monitor_window >= 1 (the steps whose mean meta-loss "
                "is compared), or divergence_backoff=None"
            )

    @property
    def uses_bootstrap(self) -> bool:
        """Whether the meta-loss has the bootstrap term (``L > 0`` and ``lam != 0``)."""
        return self.L > 0 and self.lam != 0

    def replace(self, **changes: Any) -> ECoPConfig:
        """A validated copy with ``changes`` applied (``boot_lr`` follows a changed ``inner_lr`` if it did)."""
        _check_names(changes, FIELDS, "ECoPConfig.replace")
        if "inner_lr" in changes and "boot_lr" not in changes and self.boot_lr == self.inner_lr:
            changes["boot_lr"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (a dtype as its name, tuples as lists), as stored in checkpoints."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["dtype"] and value is not None:
                value = str(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ECoPConfig:
        """Inverse of :meth:`to_dict`; keys a checkpoint from before a field existed take its default."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.metadata["dtype"] and value is not None:
                if value not in _DTYPES:
                    raise ValueError(f"{f.name} must name one of the dtypes {tuple(_DTYPES)}, got {value!r}")
                value = _DTYPES[value]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ECoPConfig))
ALGORITHM_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ECoPConfig) if f.metadata["algorithm"])
"""Settings that change what is learned: a checkpoint must agree on them to be resumed."""
TEST_TIME_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ECoPConfig) if f.metadata["test_time"])
"""Settings the adapter may change at test time (the others are the learner's)."""
POSITIONAL_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ECoPConfig) if f.metadata["positional"])
"""Settings the learner also takes positionally after the model, in this order."""


def config_args_doc(names: Iterable[str], indent: int = 8) -> str:
    """Google-style ``name: doc`` lines for the fields ``names`` (for generated docstrings)."""
    docs = {f.name: f.metadata["doc"] for f in dataclasses.fields(ECoPConfig)}
    pad = " " * indent
    return "\n".join(f"{pad}{name}: {docs[name]}" for name in names)


def config_parameters(names: Iterable[str], kind: inspect._ParameterKind) -> list[inspect.Parameter]:
    """Signature parameters for the fields ``names``: their declared types and defaults (for ``__signature__``)."""
    declared = {f.name: f for f in dataclasses.fields(ECoPConfig)}
    return [inspect.Parameter(n, kind, default=declared[n].default, annotation=declared[n].type) for n in names]


def split_config_kwargs(owner: str, kwargs: dict[str, Any], allowed: tuple[str, ...] = FIELDS) -> dict[str, Any]:
    """The configuration settings among a call's keyword arguments; any other name is a ``TypeError``."""
    _check_names(kwargs, allowed, owner)
    return dict(kwargs)


def _check_names(kwargs: dict[str, Any], allowed: Iterable[str], owner: str) -> None:
    allowed = tuple(allowed)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise TypeError(f"{owner} got unexpected keyword argument(s) {unknown}; the settings it takes: {allowed}")


ECoPConfig.__doc__ = f"""Hyper-parameters of ECoP meta-learning and of test-time fitting (validated on construction).

    Each field is declared once, with its default and check; the learner and the adapter take them as keyword
    arguments (the adapter only those it uses at test time, :data:`TEST_TIME_KEYS`).

    Attributes:
{config_args_doc(FIELDS)}
    """
