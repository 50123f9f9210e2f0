"""One frozen, validated configuration object shared by the learner, its checkpoints and the adapter."""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..typing import AdaptSpec
from .backends import BACKENDS, BATCHING_MODES, Backend
from .rates import LEARN_INNER_LR_MODES
from .rules import SELECTION_RULES, check_rule_name
from .validation import check_autocast_dtype, check_fraction, check_int, check_positive, user_stacklevel

__all__ = ["ALGORITHM_KEYS", "ECoPConfig", "configure_backend", "resolve_adapted"]

ALGORITHM_KEYS = (
    "gamma",
    "K",
    "L",
    "lam",
    "inner_lr",
    "boot_lr",
    "selection",
    "first_order",
    "max_grad_norm",
    "learn_inner_lr",
    "max_inner_lr",
)
"""Settings that change what is learned: a checkpoint must agree on them to be resumed."""

_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


@dataclass(frozen=True)
class ECoPConfig:
    """Hyper-parameters of ECoP meta-learning and of test-time fitting (validated on construction).

    Attributes:
        gamma: fraction of the context kept at each inner step, in (0, 1]; ``1.0`` is full-context MAML.
        K: inner steps (>= 1).
        L: bootstrap steps on the full context after the inner loop (>= 0; 0 disables the bootstrap).
        lam: weight lambda of the bootstrap distance (0 disables the bootstrap).
        inner_lr: inner step size alpha (and the learned rates' initial value).
        boot_lr: bootstrap step size (None: ``inner_lr``; resolved on construction).
        selection: name of a registered selection rule (``"error"``, ``"random"``, ``"gradncp"``, ...).
        first_order: drop the second-order terms of the inner steps.
        max_grad_norm: clip the meta-gradient's global norm (None: no clipping).
        learn_inner_lr: None (fixed ``inner_lr``), ``"per_tensor"`` or ``"per_element"``.
        max_inner_lr: upper bound of learned inner rates (they are kept in ``[0, max_inner_lr]``).
        chunk_size: points per chunk of every full-context pass that needs no graph back to theta_0, and of
            the outer loss (chunked surrogate). None: graph-free passes run in pieces of the pruned-set size
            and the outer loss keeps one full-context graph.
        checkpoint: recompute each inner step's graph in the backward pass instead of keeping all K.
        backend: ``"torch.func"`` or ``"higher"``.
        batching: torch.func batching: ``"auto"``, ``"bmm"``, ``"vmap"`` or ``"loop"``.
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype.
        graph_free_dtype: run the passes that need no graph back to theta_0 (the ranking forwards, the
            bootstrap's passes) under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``); the
            graph-carrying steps and every test-time gradient keep the model's dtype. None: the model's dtype
            everywhere. The modules in ``graph_free_full_precision`` stay in the model's dtype inside these
            passes.
        graph_free_full_precision: submodules that run with autocast off (their bf16/fp16 inputs cast to
            float32) inside the ``graph_free_dtype`` passes: ``"ends"`` (default) for the model's input and
            output layers (found by one small probe forward on the first such pass: the first ``nn.Linear``
            or convolution applied to the coordinates, else the first one called, and the last one called),
            or a tuple of submodule names (``()``: lower everything). An input encoding that is not such a
            layer (e.g. Fourier features) should compute itself in float32, as ``FourierFeatureMLP`` does.
            Why: SIREN loses most of bf16's precision in its first layer (w0 = 30 times the input projection,
            rounded by ~0.06 rad before the sine) and in its predictions (rounded by up to 0.002, a third of
            a 44 dB fit's residual). Measured on the builtin comparison (1000 outer steps,
            docs/benchmarks.md): with every product lowered bf16 cost 0.5-1.3 dB; with the ends in float32,
            over three seeds on a GPU, -0.01, +0.12 and +0.38 dB (no cost), and bf16 with ``compile=True``
            made a 256x256 meta-step 1.26x Learnit's. The ends are a few percent of an MLP's multiply-adds.
        compile: run every graph-free forward through :func:`torch.compile` (double backward through compiled
            graphs is not supported, so the inner steps stay eager); falls back with one warning. The learners
            and adapters of a process share one cache of compiled graphs (one per model, shape, grad mode and
            dtype; at least 64 of them, see ``torch._dynamo.config.recompile_limit``); a pass that would need
            one more runs eagerly, after one warning.
        max_consecutive_skips: raise after this many consecutive non-finite steps.
        coord_range: expected coordinate range; coordinates outside it warn once (None: no check).
    """

    gamma: float = 0.25
    K: int = 16
    L: int = 5
    lam: float = 100.0
    inner_lr: float = 1e-2
    boot_lr: float | None = None
    selection: str = "error"
    first_order: bool = False
    max_grad_norm: float | None = None
    learn_inner_lr: str | None = None
    max_inner_lr: float = 1.0
    chunk_size: int | None = None
    checkpoint: bool = False
    backend: str = "torch.func"
    batching: str = "auto"
    autocast_dtype: torch.dtype | None = None
    graph_free_dtype: torch.dtype | None = None
    graph_free_full_precision: str | tuple[str, ...] = "ends"
    compile: bool = False
    max_consecutive_skips: int = 10
    coord_range: tuple[float, float] | None = field(default=(-1.0, 1.0))

    def __post_init__(self) -> None:
        check: dict[str, Any] = {
            "gamma": check_fraction("gamma", self.gamma),
            "K": check_int("K", self.K, 1),
            "L": check_int("L", self.L, 0),
            "lam": check_positive("lam", self.lam, allow_zero=True),
            "inner_lr": check_positive("inner_lr", self.inner_lr),
            "max_inner_lr": check_positive("max_inner_lr", self.max_inner_lr),
            "max_consecutive_skips": check_int("max_consecutive_skips", self.max_consecutive_skips, 1),
            "first_order": bool(self.first_order),
            "checkpoint": bool(self.checkpoint),
            "compile": bool(self.compile),
        }
        check["boot_lr"] = check["inner_lr"] if self.boot_lr is None else check_positive("boot_lr", self.boot_lr)
        if self.max_grad_norm is not None:
            check["max_grad_norm"] = check_positive("max_grad_norm", self.max_grad_norm)
        if self.chunk_size is not None:
            check["chunk_size"] = check_int("chunk_size", self.chunk_size, 1)
        check_rule_name("selection", self.selection, SELECTION_RULES)
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("batching", self.batching, BATCHING_MODES)
        if self.learn_inner_lr is not None:
            _check_choice("learn_inner_lr", self.learn_inner_lr, LEARN_INNER_LR_MODES)
            if check["max_inner_lr"] < check["inner_lr"]:
                raise ValueError(
                    f"max_inner_lr ({self.max_inner_lr}) must be >= inner_lr ({self.inner_lr}), the learned "
                    "rates' initial value"
                )
        check_autocast_dtype(self.autocast_dtype)
        check_autocast_dtype(self.graph_free_dtype, "graph_free_dtype")
        check["graph_free_full_precision"] = _check_module_names(
            "graph_free_full_precision", self.graph_free_full_precision
        )
        if self.coord_range is not None:
            check["coord_range"] = _check_range(self.coord_range)
        for name, value in check.items():
            object.__setattr__(self, name, value)

    @property
    def uses_bootstrap(self) -> bool:
        """Whether the meta-loss has the bootstrap term (``L > 0`` and ``lam != 0``)."""
        return self.L > 0 and self.lam != 0

    def replace(self, **changes: Any) -> ECoPConfig:
        """A validated copy with ``changes`` applied (``boot_lr`` follows a changed ``inner_lr`` if it did)."""
        if "inner_lr" in changes and "boot_lr" not in changes and self.boot_lr == self.inner_lr:
            changes["boot_lr"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (dtype as its name), as stored in checkpoints."""
        out = dataclasses.asdict(self)
        for key in ("autocast_dtype", "graph_free_dtype"):
            out[key] = None if out[key] is None else str(out[key])
        out["coord_range"] = None if self.coord_range is None else list(self.coord_range)
        if isinstance(self.graph_free_full_precision, tuple):
            out["graph_free_full_precision"] = list(self.graph_free_full_precision)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ECoPConfig:
        """Inverse of :meth:`to_dict`; keys a checkpoint from before a field existed take its default."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("autocast_dtype", "graph_free_dtype"):
            if kwargs.get(key) is not None:
                kwargs[key] = _DTYPES[kwargs[key]]
        if kwargs.get("coord_range") is not None:
            kwargs["coord_range"] = tuple(kwargs["coord_range"])
        return cls(**kwargs)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_module_names(name: str, value: Any) -> str | tuple[str, ...]:
    if value == "ends":
        return "ends"
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise (ValueError if isinstance(value, str) else TypeError)(
        f'{name} must be "ends" or a tuple of submodule names (e.g. ("net.0", "head")); got {value!r}'
    )


def _check_range(value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not float(value[0]) < float(value[1]):
        raise ValueError(f"coord_range must be a pair (low, high) with low < high, or None; got {value!r}")
    return float(value[0]), float(value[1])


def resolve_adapted(model: nn.Module, spec: AdaptSpec) -> list[str]:
    """Names of the parameters adapted per signal, in the model's order.

    Args:
        model: the INR.
        spec: None (every trainable parameter), a name or glob pattern, a sequence of them (``["output.*"]``),
            or a predicate ``(name, param) -> bool``.

    Raises:
        ValueError: a pattern matches no parameter, a matched parameter is frozen, or nothing is selected.
        TypeError: ``spec`` is none of the above.
    """
    named = dict(model.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    if spec is None:
        return trainable
    if isinstance(spec, str):
        spec = [spec]
    if callable(spec):
        predicate: Callable[[str, nn.Parameter], bool] = spec
        chosen = [n for n, p in named.items() if predicate(n, p)]
    elif isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec):
        chosen = []
        for pattern in spec:
            matches = [n for n in named if fnmatch.fnmatchcase(n, pattern)]
            if not matches:
                raise ValueError(
                    f"adapt pattern {pattern!r} matches no parameter of the model; its parameters: {list(named)}"
                )
            chosen += [n for n in matches if n not in chosen]
        chosen = [n for n in named if n in chosen]
    else:
        raise TypeError(
            "adapt must be None, a list of parameter names or glob patterns, or a predicate (name, param) -> bool; "
            f"got {type(spec).__name__}"
        )
    frozen = [n for n in chosen if not named[n].requires_grad]
    if frozen:
        raise ValueError(f"adapt selects parameters with requires_grad=False, which cannot be adapted: {frozen}")
    if not chosen:
        raise ValueError("adapt selects no parameter: at least one trainable parameter must be adapted per signal")
    return chosen


def configure_backend(backend: Backend, config: ECoPConfig) -> None:
    """Apply the configuration's precision and compilation settings to ``backend``."""
    backend.autocast_dtype = config.autocast_dtype
    backend.graph_free_dtype = config.graph_free_dtype
    backend.compile = config.compile
    backend.set_full_precision(config.graph_free_full_precision)
    lowered = [n for n in ("autocast_dtype", "graph_free_dtype") if getattr(config, n) is not None]
    if lowered and any(p.dtype == torch.float64 for p in backend.model.parameters()):
        warnings.warn(
            f"{' and '.join(lowered)} has no effect on this float64 model: torch.autocast lowers float32 "
            "tensors only, so every pass stays in float64",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    elif torch.bfloat16 in (config.autocast_dtype, config.graph_free_dtype) and _on_cpu(backend.model):
        warn_if_bf16_is_emulated()


def _on_cpu(model: nn.Module) -> bool:
    return any(p.device.type == "cpu" for p in model.parameters())


def warn_if_bf16_is_emulated() -> bool:
    """Warn (once per call site) when this CPU has no native bfloat16 matrix multiply; returns True if it warned.

    Without AVX512-BF16 or AMX, oneDNN is not used for bf16 and PyTorch's fallback GEMM is many times slower
    than float32 (measured on an AVX2-only AMD EPYC VM: a batched 1024x256 @ 256x256 product took 1.1 s in
    bf16 against 30 ms in float32), so the bf16 speed modes slow the step down instead of speeding it up.
    """
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an unusual build: do not guess
        return False
    if native:
        return False
    warnings.warn(
        "bfloat16 was requested (graph_free_dtype or autocast_dtype) on a CPU without native bf16 matrix "
        "multiplies (no AVX512-BF16/AMX: torch.ops.mkldnn._is_mkldnn_bf16_supported() is False); bf16 passes "
        "are emulated here and run several times slower than float32. Leave the dtype unset on this machine.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
    return True
