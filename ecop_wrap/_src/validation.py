"""Input checks shared by the learner and the adapter: clear errors before any state changes."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "Check",
    "check_autocast_dtype",
    "check_fraction",
    "check_int",
    "check_model",
    "check_module_names",
    "check_open_fraction",
    "check_positive",
    "check_range",
    "check_signal",
    "check_signal_batch",
    "choice_check",
    "flag_check",
    "int_at_least",
    "non_negative_check",
    "optional_check",
    "piece_check",
    "positive_check",
    "register_in",
    "user_stacklevel",
]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # .../ecop_wrap/


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a :func:`warnings.warn` in the calling function point at the first frame
    outside ecop_wrap (the user's line), however deep inside the library the warning is raised."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def check_model(model: Any) -> None:
    """The model must be an ``nn.Module`` with trainable parameters and no batch normalisation."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters (all have requires_grad=False): nothing to meta-learn")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(  # noqa: TRY004 - a supported type, but an unsupported model configuration
                f"model.{name or '<root>'} is a {type(module).__name__}: batch statistics mix points of a "
                "signal and are undefined for per-signal adaptation; use LayerNorm or no normalisation"
            )


def register_in(registry: dict[str, Any], what: str, name: Any, value: Any, overwrite: bool) -> None:
    """Add ``registry[name] = value`` (a callable), refusing a bad name or an existing one unless ``overwrite``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a {what}'s name must be a non-empty str, got {name!r}")
    if not callable(value):
        raise TypeError(f"the {what} registered as {name!r} must be callable, got {type(value).__name__}")
    if name in registry and not overwrite:
        raise ValueError(f"a {what} named {name!r} is already registered; pass overwrite=True to replace it")
    registry[name] = value


def check_module_names(name: str, value: Any) -> str | tuple[str, ...]:
    if value == "ends":
        return "ends"
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise (ValueError if isinstance(value, str) else TypeError)(
        f'{name} must be "ends" or a tuple of submodule names (e.g. ("net.0", "head")); got {value!r}'
    )


def check_range(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not float(value[0]) < float(value[1]):
        raise ValueError(f"{name} must be a pair (low, high) with low < high, or None; got {value!r}")
    return float(value[0]), float(value[1])


def piece_check(*words: str) -> Check:
    """A check that the value is one of ``words`` or a number of points >= 1 (how a pass is cut into pieces)."""
    named = " or ".join([", ".join(f'"{w}"' for w in words), "a number of points >= 1"])

    def check(name: str, value: Any) -> str | int:
        if value in words:
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError(f"{name} must be {named}, got {value!r}")

    return check


def check_fraction(name: str, value: Any) -> float:
    """A float in (0, 1]."""
    return _fraction(name, value, include_one=True)


def check_open_fraction(name: str, value: Any) -> float:
    """A float in (0, 1)."""
    return _fraction(name, value, include_one=False)


def _fraction(name: str, value: Any, *, include_one: bool) -> float:
    interval = "(0, 1]" if include_one else "(0, 1)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in {interval}, got {type(value).__name__}")
    if not (0.0 < float(value) <= 1.0 if include_one else 0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite float > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return float(value)


Check = Callable[[str, Any], Any]
"""``check(name, value) -> value``: a hyper-parameter's check, raising an error that names the argument."""


def optional_check(check: Check) -> Check:
    """``check``, letting None through."""
    return lambda name, value: None if value is None else check(name, value)


def choice_check(choices: Iterable[str]) -> Check:
    """A check that the value is one of ``choices``."""
    options = tuple(choices)

    def check(name: str, value: Any) -> str:
        if value not in options:
            raise ValueError(f"{name} must be one of {options}, got {value!r}")
        return str(value)

    return check


def int_at_least(minimum: int) -> Check:
    """A check for an integer ``>= minimum``."""
    return lambda name, value: check_int(name, value, minimum)


def positive_check(name: str, value: Any) -> float:
    return check_positive(name, value)


def non_negative_check(name: str, value: Any) -> float:
    return check_positive(name, value, allow_zero=True)


def flag_check(name: str, value: Any) -> bool:
    return bool(value)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile``'s modes, accepted by the ``compile`` hyper-parameter as well as True / False."""


def check_compile(name: str, value: Any) -> bool | str:
    """``True``/``False``, or one of :data:`COMPILE_MODES` (``torch.compile``'s ``mode``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in COMPILE_MODES:
            raise ValueError(
                f"{name} must be True, False or one of torch.compile's modes {COMPILE_MODES}, got {value!r}"
            )
        return value
    raise TypeError(f"{name} must be a bool or a torch.compile mode string, got {type(value).__name__}")


def check_autocast_dtype(value: Any, name: str = "autocast_dtype") -> torch.dtype | None:
    """``None`` or a ``torch.dtype`` for ``torch.autocast``."""
    if value is not None and not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype or None, got {value!r}")
    return value


def _check_tensor(name: str, tensor: Any, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor of the model's dtype {dtype}, got {tensor.dtype} "
            f"(convert with {name}.to({dtype}); images in uint8 can go through ecop_wrap.image_to_signal)"
        )
    if tensor.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {tensor.dtype} but the model's parameters are {dtype}; use {name}.to({dtype})"
        )
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but the model is on {device}; use {name}.to('{device}')")


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"{name} contains NaN or inf values; clean them, or give those points weight 0 with a batch "
            "(coords, values, weights) and finite placeholder values"
        )


def _check_weights(weights: Any, values: torch.Tensor) -> torch.Tensor:
    """``weights [B, M]``: finite, >= 0, at least one positive weight per signal."""
    _check_tensor("weights", weights, values.dtype, values.device)
    if tuple(weights.shape) != tuple(values.shape[:2]):
        raise ValueError(
            f"weights must be [B, M] = {tuple(values.shape[:2])} (one weight per point of values "
            f"{tuple(values.shape)}), got {tuple(weights.shape)}"
        )
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("weights must be finite and >= 0 (0 marks a missing or padded point); got NaN, inf or < 0")
    empty = (~(weights > 0).any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"weights of signal(s) {empty} of the batch are all 0: no point of positive weight, nothing to fit"
        )
    checked: torch.Tensor = weights
    return checked


# Owners (learners, adapters) that already warned; weak, so a new object never inherits an old one's id.
_warned_range: weakref.WeakSet[object] = weakref.WeakSet()


def _has_warned(owner: object) -> bool:
    try:
        return owner in _warned_range
    except TypeError:  # None or an object without weak references: warn every time
        return False


def _remember_warning(owner: object) -> None:
    with contextlib.suppress(TypeError):
        _warned_range.add(owner)


def _warn_coord_range(owner: object, coords: torch.Tensor, coord_range: tuple[float, float] | None) -> None:
    if coord_range is None or _has_warned(owner):
        return
    low, high = coord_range
    if coords.numel() and (float(coords.min()) < low - 1e-6 or float(coords.max()) > high + 1e-6):
        _remember_warning(owner)
        warnings.warn(
            f"coords span [{float(coords.min()):.3g}, {float(coords.max()):.3g}], outside the expected range "
            f"[{low}, {high}] (INR initialisations such as SIREN's assume it); pass coord_range=None to silence",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def check_signal_batch(
    batch: Any,
    *,
    dtype: torch.dtype,
    device: torch.device,
    owner: object = None,
    coord_range: tuple[float, float] | None = (-1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate ``(coords [M, C] or [B, M, C], values [B, M, D])`` or ``(coords, values, weights [B, M])``;
    returns ``(coords, values, weights or None)`` unchanged."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise TypeError(
            "batch must be a pair (coords, values) or a triple (coords, values, weights) with coords [M, C] or "
            "[B, M, C], values [B, M, D] and weights [B, M]"
        )
    coords, values = batch[0], batch[1]
    _check_tensor("coords", coords, dtype, device)
    _check_tensor("values", values, dtype, device)
    if values.ndim != 3:
        raise ValueError(f"values must be [B, M, D], got shape {tuple(values.shape)}")
    if coords.ndim not in (2, 3):
        raise ValueError(f"coords must be [M, C] (shared) or [B, M, C], got shape {tuple(coords.shape)}")
    b, m, d = values.shape
    if b == 0:
        raise ValueError("the batch is empty: values has B=0 signals")
    if m == 0 or d == 0:
        raise ValueError(f"every signal needs at least one point and one channel; values has M={m}, D={d}")
    if coords.shape[-2] != m:
        raise ValueError(f"coords has M={coords.shape[-2]} points but values has M={m}; they must match")
    if coords.ndim == 3 and coords.shape[0] != b:
        raise ValueError(f"coords has B={coords.shape[0]} signals but values has B={b}; they must match")
    if coords.shape[-1] == 0:
        raise ValueError("coords has C=0 coordinate dimensions")
    weights = _check_weights(batch[2], values) if len(batch) == 3 and batch[2] is not None else None
    _check_finite("values", values)
    _check_finite("coords", coords)
    _warn_coord_range(owner, coords, coord_range)
    return coords, values, weights


def check_signal(
    signal: Any,
    *,
    dtype: torch.dtype,
    device: torch.device,
    owner: object = None,
    coord_range: tuple[float, float] | None = (-1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """Validate one signal ``([M, C], [M, D][, weights [M]])`` or a batch; returns ``(coords, values [B, M, D],
    weights [B, M] or None, batched)``."""
    if not isinstance(signal, (tuple, list)) or len(signal) not in (2, 3):
        raise TypeError(
            "signal must be a pair (coords, values) or a triple (coords, values, weights): ([M, C], [M, D], [M]) "
            "for one signal, ([B, M, C] / [M, C], [B, M, D], [B, M]) for a batch"
        )
    coords, values = signal[0], signal[1]
    weights = signal[2] if len(signal) == 3 else None
    batched = not (isinstance(values, torch.Tensor) and values.ndim == 2)
    if not batched:
        if isinstance(coords, torch.Tensor) and coords.ndim != 2:
            raise ValueError(
                f"a single signal needs coords [M, C] with values [M, D]; got coords {tuple(coords.shape)}"
            )
        values = values.unsqueeze(0)
        if isinstance(weights, torch.Tensor):
            weights = weights.unsqueeze(0)
    coords, values, weights = check_signal_batch(
        (coords, values, weights), dtype=dtype, device=device, owner=owner, coord_range=coord_range
    )
    return coords, values, weights, batched
