"""The one builder of what a learner and an adapter share: adapted names, selection rule, backend, step sizes
and random generator, each made complete from an :class:`~ecop_wrap.ECoPConfig`."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..typing import AdaptSpec
from .backends import Backend, Precision, make_backend
from .config import ECoPConfig, split_config_kwargs
from .losses import PointLoss, make_loss
from .numerics import num_selected
from .rates import InnerRates
from .rules import SelectionRule, make_selection
from .validation import user_stacklevel

__all__ = [
    "Components",
    "build_components",
    "free_chunk",
    "model_defaults",
    "model_outer_lr",
    "rank_chunk",
    "resolve_adapted",
    "warn_if_bf16_is_emulated",
]


@dataclass
class Components:
    """The parts a learner or an adapter runs on.

    Attributes:
        adapted: names of the parameters adapted per signal, in the model's order.
        selection_rule: the rule ranking context points.
        backend: evaluates the model with per-signal parameters, with the configured precision and compilation.
        rates: the inner (or test-time) step sizes.
        generator: the seeded random source of the selection rule.
        loss: the per-point loss of every pass.
    """

    adapted: list[str]
    selection_rule: SelectionRule
    backend: Backend
    rates: InnerRates
    generator: torch.Generator
    loss: PointLoss


DEFAULT_OUTER_LR = 3e-4
"""The learner's outer lr where neither the call nor the model (``ecop_defaults["outer_lr"]``) gives one."""


def _recommended(model: nn.Module) -> dict[str, Any]:
    """The model's ``ecop_defaults`` (``{}`` without one), checked to be a dict with a positive ``outer_lr``."""
    name = f"{type(model).__name__}.ecop_defaults"
    recommended = getattr(model, "ecop_defaults", None) or {}
    if not isinstance(recommended, dict):
        raise TypeError(
            f"{name} must be a dict of ECoPConfig settings (and outer_lr), got {type(recommended).__name__}"
        )
    outer_lr = recommended.get("outer_lr", DEFAULT_OUTER_LR)
    if isinstance(outer_lr, bool) or not isinstance(outer_lr, (int, float)) or not outer_lr > 0:
        raise ValueError(f"{name}['outer_lr'] must be a positive number, got {outer_lr!r}")
    return recommended


def model_defaults(model: nn.Module) -> dict[str, Any]:
    """The configuration settings a model recommends for itself (its ``ecop_defaults``: a dict of
    :class:`ECoPConfig` fields, plus ``outer_lr`` for the learner; e.g. ``HashGridINR``'s inner lr 1.0), applied
    where the caller gives neither the setting nor a config."""
    settings = {k: v for k, v in _recommended(model).items() if k != "outer_lr"}
    return split_config_kwargs(f"{type(model).__name__}.ecop_defaults", settings)


def model_outer_lr(model: nn.Module) -> float:
    """The outer lr a model recommends (``ecop_defaults["outer_lr"]``), else :data:`DEFAULT_OUTER_LR`."""
    return float(_recommended(model).get("outer_lr", DEFAULT_OUTER_LR))


def build_components(
    model: nn.Module,
    config: ECoPConfig,
    *,
    adapted: list[str],
    selection_rule: SelectionRule | None = None,
    gradncp_layer: nn.Module | None = None,
    rates: InnerRates | None = None,
    seed: int,
) -> Components:
    """Build every shared part from ``config``.

    Args:
        model: the INR.
        config: the settings.
        adapted: names of the adapted parameters (see :func:`resolve_adapted`).
        selection_rule: reuse this rule (e.g. the learner's, at test time); None: build ``config.selection``.
        gradncp_layer: the scoring layer of a rule that takes one (``"gradncp"``).
        rates: reuse these step sizes; None: ``config.learn_inner_lr`` rates starting at ``config.inner_lr``.
        seed: the generator's seed.
    """
    named = dict(model.named_parameters())
    if selection_rule is None:
        selection_rule = make_selection(config.selection, model, layer=gradncp_layer)
    if rates is None:
        rates = InnerRates(
            config.learn_inner_lr,
            {n: named[n] for n in adapted},
            inner_lr=config.inner_lr,
            max_inner_lr=config.max_inner_lr,
            steps=config.K,
        )
    generator = torch.Generator(device=named[adapted[0]].device)
    generator.manual_seed(int(seed))
    loss = make_loss(config.loss, config.huber_delta)
    return Components(adapted, selection_rule, build_backend(model, config, adapted), rates, generator, loss)


def build_backend(model: nn.Module, config: ECoPConfig, adapted: list[str]) -> Backend:
    """The configured backend, precision policy and compilation included."""
    precision = Precision(
        model,
        autocast_dtype=config.autocast_dtype,
        graph_free_dtype=config.graph_free_dtype,
        full_precision=config.graph_free_full_precision,
    )
    backend = make_backend(
        config.backend,
        model,
        config.batching,
        adapted,
        precision=precision,
        compile=config.compile,
        benchmark=config.batching_benchmark,
    )
    _warn_about_dtypes(model, config)
    return backend


def free_chunk(config: ECoPConfig, num_points: int, *, meta_learning: bool) -> int | None:
    """Points per piece of every graph-free pass over a context of ``num_points`` (None: all at once).

    ``chunk_size`` if set. Otherwise, while meta-learning, ``bootstrap_chunk``: by default (``"whole"``) one
    piece. The bootstrap runs before the outer loss, whose graph spans the whole context (without
    ``chunk_size``), so a whole-context piece sits on the same inner-loop graph as that graph does and moves
    the step's peak by about 1% (tests/test_memory.py), for a quarter of the pieces' ops at ``gamma=0.25``;
    ``"pruned"`` bounds each piece by what one pruned step holds in its graph. At test time no graph back to
    theta_0 exists, so a whole-context pass is the smaller peak of the two and the fastest: one piece.
    """
    if config.chunk_size is not None:
        return config.chunk_size
    if not meta_learning:
        return None
    if config.bootstrap_chunk == "pruned":
        return num_selected(num_points, config.gamma)
    return None if config.bootstrap_chunk == "whole" else int(config.bootstrap_chunk)


CPU_RANK_CHUNK = 1024
"""Points per piece of the ranking forwards on a CPU (where ``chunk_size`` is not set): a piece's activations
stay in the cache from layer to layer instead of streaming the whole context's through memory, with the same
predictions bit for bit (each point's row of a product is reduced in the same order). Measured in
docs/benchmarks.md ("Ranking in cache-sized pieces on a CPU")."""


def rank_chunk(config: ECoPConfig, num_points: int, device: torch.device) -> int | None:
    """Points per piece of the ranking forwards over ``num_points`` (None: all at once).

    ``chunk_size`` if set, else ``rank_chunk``. Its default, ``"auto"``: one piece on an accelerator (the ranking
    forwards hold no graph, so a whole-context pass keeps only about two activations of the context alive at a
    time, less than one pruned step's graph unless gamma is tiny, and one launch per layer is what a GPU wants);
    on a CPU, pieces of :data:`CPU_RANK_CHUNK` points, which are faster there and give the same predictions.
    """
    if config.chunk_size is not None:
        return config.chunk_size
    if config.rank_chunk == "whole":
        return None
    if config.rank_chunk != "auto":
        return int(config.rank_chunk)
    if device.type == "cpu" and num_points > CPU_RANK_CHUNK:
        return CPU_RANK_CHUNK
    return None


def _warn_about_dtypes(model: nn.Module, config: ECoPConfig) -> None:
    lowered = [n for n in ("autocast_dtype", "graph_free_dtype") if getattr(config, n) is not None]
    if lowered and any(p.dtype == torch.float64 for p in model.parameters()):
        warnings.warn(
            f"{' and '.join(lowered)} has no effect on this float64 model: torch.autocast lowers float32 "
            "tensors only, so every pass stays in float64",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    elif torch.bfloat16 in (config.autocast_dtype, config.graph_free_dtype) and _on_cpu(model):
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
        chosen = _match_patterns(spec, named)
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


def _match_patterns(patterns: Sequence[str], named: dict[str, nn.Parameter]) -> list[str]:
    chosen: list[str] = []
    for pattern in patterns:
        matches = [n for n in named if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            raise ValueError(
                f"adapt pattern {pattern!r} matches no parameter of the model; its parameters: {list(named)}"
            )
        chosen += [n for n in matches if n not in chosen]
    return [n for n in named if n in chosen]
