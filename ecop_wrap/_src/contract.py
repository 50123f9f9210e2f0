"""The model contract, checked once at the first batch of a learner and of an adapter.

ECoP evaluates the INR on pruned subsets and chunks of a signal's points, so the model must be a function of
each coordinate alone: ``[..., C] -> [..., D]``, one tensor out, the prediction at a point independent of which
other points share the call. :func:`check_model_contract` checks this with a few small forwards without a graph
and refuses what breaks it with a message that names the model, the shapes and what to do. It changes no
number: the forwards run with the global RNG forked (restored after), buffers (e.g. running statistics) are
put back and every module's training flag is restored.

:func:`check_grad_mode` refuses a meta-step asked for where autograd is off.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .validation import user_stacklevel

__all__ = ["CONTEXT_POINTS", "SUBSET_POINTS", "check_grad_mode", "check_model_contract", "point_mixing_tolerance"]

SUBSET_POINTS = 8
"""Points evaluated alone and inside the context by the points-independence check."""
CONTEXT_POINTS = 4096
"""At most this many of the first signal's points (evenly spread) form the context of the check."""

_MIXING_TYPES: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
)


def _owner_name(owner: object) -> str:
    return owner if isinstance(owner, str) else type(owner).__name__


def check_grad_mode(owner: object, what: str = "meta_step") -> None:
    """Refuse a meta-step where autograd is off (the meta-gradient needs the graph back to theta_0).

    Args:
        owner: the caller (its class name is used) or a name, e.g. ``"ContextPruningMetaLearner"``.
        what: the method named in the message.

    Raises:
        RuntimeError: under ``torch.inference_mode()`` or ``torch.no_grad()``.
    """
    name = f"{_owner_name(owner)}.{what}"
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{name} was called under torch.inference_mode(): the meta-gradient needs autograd. Call it outside "
            "inference_mode (fitting and evaluation with GradScaledAdapter.fit work inside it)"
        )
    if not torch.is_grad_enabled():
        raise RuntimeError(
            f"{name} was called under torch.no_grad() (or with torch.set_grad_enabled(False)): the meta-gradient "
            "needs autograd. Call it outside no_grad (fitting and evaluation with GradScaledAdapter.fit work there)"
        )


def check_model_contract(
    model: nn.Module,
    coords: torch.Tensor,
    values: torch.Tensor,
    *,
    owner: object = "ContextPruningMetaLearner",
    allow_point_mixing: bool = False,
) -> None:
    """Check that ``model`` is a per-point INR for this batch, on the first signal's points.

    Evaluates the model (its own parameters, no graph) on the first signal: on up to :data:`CONTEXT_POINTS` of
    its points, then twice on :data:`SUBSET_POINTS` of them alone. Costs three or four small forwards.

    Args:
        model: the INR, called as ``model(coords [M, C])`` like the loop and vmap batchings call it.
        coords: ``[M, C]`` (shared) or ``[B, M, C]`` (per signal) coordinates of a validated batch.
        values: ``[B, M, D]`` (or one signal's ``[M, D]``) values; only ``D`` is read.
        owner: the caller (its class name is used in messages) or a name.
        allow_point_mixing: accept a model whose prediction at a point depends on the other points of the call
            (the pruned and chunked passes then see a different function than the full context).

    Raises:
        TypeError: the model returns something other than one floating tensor (a tuple, a dict, ...).
        ValueError: its output is not ``[M, D]`` with the values' ``D``; it fails on the coords (the message
            names their ``C``); or its prediction at a point depends on the other points of the call (unless
            ``allow_point_mixing``).

    Warns:
        UserWarning: once, when the model is random in its current mode (Dropout with ``p > 0`` in training
        mode, or two identical calls that differ).
    """
    signal = coords if coords.ndim == 2 else coords[0]
    context = _spread(signal, CONTEXT_POINTS)
    subset = _spread(context, min(SUBSET_POINTS, context.shape[0] // 2)) if context.shape[0] >= 2 else None
    checker = _Checker(model, _owner_name(owner), int(values.shape[-1]), int(signal.shape[0]))
    with _untouched(model, signal.device):
        full = checker.forward(context)
        dropouts = _active_dropouts(model)
        for module in dropouts.values():
            module.eval()
        repeat_differs = subset is not None and not _close(checker.forward(subset), checker.forward(subset))
        if dropouts or repeat_differs:
            _warn_random(checker.model_name, checker.owner, list(dropouts), repeat_differs)
        if subset is None or repeat_differs or allow_point_mixing:
            return
        if dropouts:
            full = checker.forward(context)
        checker.check_independent(context, full, subset)


class _Checker:
    """The forwards of one contract check and their messages."""

    def __init__(self, model: nn.Module, owner: str, channels: int, points: int) -> None:
        self.model, self.owner, self.channels, self.points = model, owner, channels, points
        self.model_name = type(model).__name__

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """``model(coords [M', C])``, refused unless it is one floating ``[M', D]`` tensor."""
        try:
            out = self.model(coords)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(self._failed_on_coords(coords, err)) from err
        if not isinstance(out, torch.Tensor):
            raise TypeError(self._not_a_tensor(out))
        if not out.dtype.is_floating_point:
            raise TypeError(f"model {self.model_name} returned a {out.dtype} tensor; an INR returns floating values")
        expected = (*coords.shape[:-1], self.channels)
        if out.ndim == 0 or tuple(out.shape[:-1]) != tuple(coords.shape[:-1]):
            raise ValueError(
                f"model {self.model_name} returned shape {tuple(out.shape)} for coords {tuple(coords.shape)}: "
                f"{self.owner} needs one prediction per point, [M, D] = {expected} for coords [M, C] (the model "
                "must map [..., C] -> [..., D] and keep the leading dimensions)"
            )
        if out.shape[-1] != self.channels:
            raise ValueError(
                f"model {self.model_name} returns D={out.shape[-1]} channels per point (shape {tuple(out.shape)}) "
                f"but the values have D={self.channels}; build the model with {self.channels} outputs or pass "
                f"values [B, M, {out.shape[-1]}]"
            )
        return out

    def check_independent(self, context: torch.Tensor, full: torch.Tensor, subset: torch.Tensor) -> None:
        """Refuse a model whose prediction on ``subset`` alone differs from the same points in ``context``."""
        index = _spread_index(context.shape[0], subset.shape[0], context.device)
        alone = self.forward(subset)
        tolerance = point_mixing_tolerance(full.dtype, full.device) * max(1.0, float(full.abs().max()))
        difference = float((alone - full[index]).abs().max())
        if difference <= tolerance:
            return
        suspects = [f"{name or '<root>'} ({type(m).__name__})" for name, m in self.model.named_modules() if _mixes(m)]
        where = f" Suspects: {', '.join(suspects)}." if suspects else ""
        raise ValueError(
            f"model {self.model_name} mixes points: its prediction at {subset.shape[0]} points evaluated alone "
            f"differs from the same points inside a context of {context.shape[0]} points of the first signal "
            f"(max |difference| {difference:.3g}, tolerance {tolerance:.2g}). {self.owner} evaluates pruned subsets "
            "and chunks of each signal, so the prediction at a point must depend only on its own coordinate; "
            "attention over the points, InstanceNorm/GroupNorm over the points or batch statistics break that."
            f"{where} Use a per-point model, or pass allow_point_mixing=True to accept it (the pruned and chunked "
            "passes then see a different function than the full context)"
        )

    def _failed_on_coords(self, coords: torch.Tensor, err: Exception) -> str:
        dim = int(coords.shape[-1])
        takes = _coord_dim_hint(self.model)
        hint = f" ({takes})" if takes else ""
        return (
            f"model {self.model_name} failed on the first signal's coords [M={self.points}, C={dim}] "
            f"({type(err).__name__}: {err}). Check that C={dim} is the coordinate dimension the model takes{hint}: "
            f"{self.owner} calls model(coords [M, C]) -> [M, D] on each signal's coordinates"
        )

    def _not_a_tensor(self, out: Any) -> str:
        if isinstance(out, dict):
            kind = f"a dict with keys {list(out)[:5]}"
        elif isinstance(out, (tuple, list)):
            kind = f"a {type(out).__name__} of {len(out)} items"
        else:
            kind = f"a {type(out).__name__}"
        return (
            f"model {self.model_name} returned {kind}; {self.owner} needs it to return one tensor [..., D] "
            f"(D={self.channels}, the values' channels). Wrap it in a module whose forward returns the prediction "
            "tensor alone (e.g. model(coords)[0] or model(coords)['rgb'])"
        )


def point_mixing_tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """Relative tolerance of the points-independence check: ``8 sqrt(eps)`` of ``dtype`` (the rounding of the
    same products summed in another order when the number of points changes), at least ``8 * 2**-10`` when
    float32 may run as TF32 on CUDA."""
    eps = torch.finfo(dtype).eps
    tolerance = 8.0 * math.sqrt(eps)
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    if device.type == "cuda" and dtype == torch.float32 and tf32:
        tolerance = max(tolerance, 8.0 * 2.0**-10)
    return tolerance


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tolerance = point_mixing_tolerance(a.dtype, a.device) * max(1.0, float(a.abs().max()))
    return a.shape == b.shape and float((a - b).abs().max()) <= tolerance


def _spread_index(size: int, count: int, device: torch.device) -> torch.Tensor:
    """``count`` distinct indices evenly spread over ``range(size)`` (first and last included)."""
    if count >= size:
        return torch.arange(size, device=device)
    steps = torch.arange(count, device=device)
    return steps * (size - 1) // max(count - 1, 1)


def _spread(points: torch.Tensor, count: int) -> torch.Tensor:
    return points[_spread_index(points.shape[0], count, points.device)]


def _active_dropouts(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name or "<root>": m
        for name, m in model.named_modules()
        if isinstance(m, (nn.modules.dropout._DropoutNd, nn.AlphaDropout)) and m.training and float(m.p) > 0
    }


def _mixes(module: nn.Module) -> bool:
    return isinstance(module, _MIXING_TYPES)


def _coord_dim_hint(model: nn.Module) -> str:
    kwargs = getattr(model, "init_kwargs", None)
    declared = kwargs.get("in_features") if isinstance(kwargs, dict) else getattr(model, "in_features", None)
    if isinstance(declared, int):
        return f"it was built with in_features={declared}"
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    return f"its first nn.Linear takes {first.in_features} inputs" if first is not None else ""


def _warn_random(model_name: str, owner: str, dropouts: list[str], repeat_differs: bool) -> None:
    reasons = [f"Dropout with p > 0 in training mode at {', '.join(dropouts)}"] if dropouts else []
    if repeat_differs:
        reasons.append("two identical calls give different predictions (points independence was not checked)")
    warnings.warn(
        f"model {model_name} is random in its current mode: {'; '.join(reasons)}. Every pass of {owner} "
        "(ranking, inner steps, bootstrap, outer loss, test-time steps) then sees a different function and draws "
        "from torch's random generator; call model.eval() or remove the randomness (an INR rarely wants Dropout)",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


@contextlib.contextmanager
def _untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """No graph, the global RNG forked, buffers and training flags restored on exit."""
    modes = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            yield
    finally:
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
