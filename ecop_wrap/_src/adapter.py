"""Test-time fitting from a meta-learned initialization with gradient scaling (paper §2.4, Eq. 6).

At test time every step uses the full context, first order, and rescales each signal's full-context
gradient by a registered scaling rule: ``||g_pruned|| / ||g_full||`` (``"norm"``, Eq. 6), the loss ratio
``MSE(pruned) / MSE(full)`` (``"loss"``, Appendix B.2) or 1 (``"none"``). Optionally the first
``pruned_steps`` steps are taken as in training instead: on the pruned context, unscaled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..metrics import mse_to_psnr
from ..typing import AdaptSpec, Params
from .algorithm import select
from .backends import Backend, make_backend
from .config import ECoPConfig, configure_backend, resolve_adapted
from .evaluator import ContextEvaluator
from .learner import ContextPruningMetaLearner
from .numerics import per_signal
from .rates import InnerRates
from .rules import GradNCPSelection, make_scaling, make_selection
from .validation import check_int, check_model, check_positive, check_signal

__all__ = ["FitResult", "FitStep", "GradScaledAdapter"]


@dataclass
class FitResult:
    """Fitted INR(s).

    Attributes:
        params: adapted parameter name -> tensor, with a leading ``B`` iff the input was batched. Parameters
            that are not adapted (shared, frozen) and buffers are the model's own and not included; with
            ``adapt=["latent"]`` this is a compact code per signal.
        history: ``{"mse": [steps + 1, (B)], "psnr": [steps + 1, (B)], "scale": [steps, (B)]}``: full-context
            MSE and PSNR before the first step and after every step, and the factor each step's gradient was
            multiplied by.
        skipped: ``[(B)]`` number of steps skipped per signal because the update was not finite.
        batched: whether the input was a batch.
    """

    params: dict[str, torch.Tensor]
    history: dict[str, torch.Tensor]
    skipped: torch.Tensor
    batched: bool
    backend: Backend = field(repr=False)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """Evaluate the fitted INR(s): ``[M, C] -> [M, D]`` for one signal; ``[M, C]`` or ``[B, M, C] ->
        [B, M, D]`` for a batch."""
        params = self.params if self.batched else {n: p.unsqueeze(0) for n, p in self.params.items()}
        if not isinstance(coords, torch.Tensor) or coords.ndim not in (2, 3):
            raise ValueError("coords must be a tensor [M, C] (or [B, M, C] for a batched result)")
        if coords.ndim == 3 and (not self.batched or coords.shape[0] != next(iter(params.values())).shape[0]):
            raise ValueError(f"coords [B, M, C] must have the B of the fitted batch; got {tuple(coords.shape)}")
        out = self.backend(params, coords)
        return out if self.batched else out[0]


@dataclass
class FitStep:
    """One test-time step, as :meth:`GradScaledAdapter.fit_steps` yields it.

    Attributes:
        step: index of the step (``steps`` for the final state, after the last step).
        params: name -> ``[B, *shape]`` parameters before the step (detached).
        mse: ``[B]`` full-context MSE at ``params``.
        pruned_idx: ``[B, k]`` points of the pruned context the step used or scaled by (None: none, or all).
        scale: ``[B]`` factor of the step's gradient (None for the final state).
        skipped: ``[B]`` steps skipped so far per signal (non-finite updates).
    """

    step: int
    params: Params
    mse: torch.Tensor
    pruned_idx: torch.Tensor | None
    scale: torch.Tensor | None
    skipped: torch.Tensor

    @property
    def final(self) -> bool:
        """Whether this is the state after the last step (no step is taken from it)."""
        return self.scale is None


class GradScaledAdapter:
    """Fits INRs to signals from a (meta-learned) initialization with gradient-scaled full-context steps.

    Settings default to the learner's configuration (:class:`~ecop_wrap.ECoPConfig`) when ``source`` is a
    learner, else to ``ECoPConfig()``'s defaults.

    Args:
        source: a :class:`ContextPruningMetaLearner` or an ``nn.Module`` used as the initialization.
        steps: number of test-time steps (default: K).
        lr: step size; overrides learned inner rates (default: the learner's learned rates if it has them,
            else ``inner_lr``).
        gamma: pruned fraction used to compute the scale.
        scaling: a registered scaling rule: ``"norm"`` (Eq. 6), ``"loss"`` (Appendix B.2) or ``"none"``.
        selection: selection rule of the pruned set.
        backend, batching: how the model is evaluated (see :func:`~ecop_wrap.make_backend`).
        chunk_size: points per chunk of every full-context pass.
        gradncp_layer: scoring layer for ``selection="gradncp"`` (default: the learner's).
        max_consecutive_skips: raise ``FloatingPointError`` when a signal's update is not finite this many
            steps in a row.
        coord_range: expected coordinate range (default: the learner's).
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype.
        graph_free_dtype: dtype of the ranking forwards; every gradient (full-context, the scale's pruned one,
            pruned steps') keeps the model's dtype.
        graph_free_full_precision: submodules kept in the model's dtype inside those forwards (default: the
            learner's, else ``"ends"``); see ``ECoPConfig``.
        compile: ``torch.compile`` the graph-free forwards (default: the learner's setting).
        seed: seed for random selection.
        pruned_steps: take the first ``pruned_steps`` steps on the pruned context without scaling, as in
            training (cheaper per step), and the rest as above.
        adapt: which parameters to fit when ``source`` is a module (a learner's own ``adapt`` is used for a
            learner).
    """

    def __init__(
        self,
        source: ContextPruningMetaLearner | nn.Module,
        *,
        steps: int | None = None,
        lr: float | None = None,
        gamma: float | None = None,
        scaling: str = "norm",
        selection: str | None = None,
        backend: str | None = None,
        chunk_size: int | None = None,
        batching: str | None = None,
        gradncp_layer: nn.Module | None = None,
        max_consecutive_skips: int = 3,
        coord_range: tuple[float, float] | str | None = "learner",
        autocast_dtype: torch.dtype | None = None,
        graph_free_dtype: torch.dtype | None = None,
        graph_free_full_precision: str | tuple[str, ...] | None = None,
        compile: bool | None = None,
        seed: int = 0,
        pruned_steps: int = 0,
        adapt: AdaptSpec = None,
    ) -> None:
        learner = source if isinstance(source, ContextPruningMetaLearner) else None
        model = learner.model if learner is not None else source
        check_model(model)
        assert isinstance(model, nn.Module)  # for type checkers: check_model raised otherwise
        base = learner.config if learner is not None else ECoPConfig()
        overrides = {
            "gamma": gamma,
            "selection": selection,
            "backend": backend,
            "chunk_size": chunk_size,
            "batching": batching,
            "autocast_dtype": autocast_dtype,
            "graph_free_dtype": graph_free_dtype,
            "graph_free_full_precision": graph_free_full_precision,
            "compile": compile,
        }
        config = base.replace(**{k: v for k, v in overrides.items() if v is not None})
        if coord_range != "learner":
            config = config.replace(coord_range=coord_range)
        self.config = config
        self.model = model
        self.steps = check_int("steps", steps if steps is not None else config.K, 0)
        self.pruned_steps = check_int("pruned_steps", pruned_steps, 0)
        self.scaling_rule = make_scaling(scaling)
        self.scaling = scaling
        self.adapted = learner.adapted if learner is not None else resolve_adapted(model, adapt)
        if gradncp_layer is None and learner is not None and isinstance(learner.selection_rule, GradNCPSelection):
            gradncp_layer = learner.selection_rule.layer
        self.selection_rule = make_selection(config.selection, model, layer=gradncp_layer)
        self.backend = make_backend(config.backend, model, config.batching, self.adapted)
        configure_backend(self.backend, config)
        named = dict(model.named_parameters())
        if lr is not None or learner is None or not learner.rates.learned:
            self.rates = InnerRates(
                None,
                {n: named[n] for n in self.adapted},
                inner_lr=check_positive("lr", lr if lr is not None else config.inner_lr),
                max_inner_lr=config.max_inner_lr,
                steps=1,
            )
        else:
            self.rates = learner.rates.detached()
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, 1)
        self.generator = torch.Generator(device=named[self.adapted[0]].device)
        self.generator.manual_seed(seed)

    @property
    def lr(self) -> float | None:
        """The fixed step size, or None when the learner's learned rates are used."""
        return None if self.rates.learned else self.rates.inner_lr

    @property
    def gamma(self) -> float:
        return self.config.gamma

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, steps={self.steps}, lr={self.lr}, "
            f"gamma={self.gamma}, scaling={self.scaling!r}, selection={self.selection_rule.name!r})"
        )

    def fit(self, signal: tuple[torch.Tensor, torch.Tensor], *, steps: int | None = None) -> FitResult:
        """Fit one signal ``([M, C], [M, D])`` or a batch ``([B, M, C] or [M, C], [B, M, D])``.

        The model's parameters are read, never modified. Works under ``torch.no_grad()`` and
        ``torch.inference_mode()`` (inputs made there are copied out of inference mode).
        """
        batched = _is_batched(signal)
        states = list(self.fit_steps(signal, steps=steps))
        mse_hist = torch.stack([s.mse for s in states])
        scales = [s.scale for s in states if s.scale is not None]
        scale_hist = torch.stack(scales) if scales else mse_hist.new_empty((0, mse_hist.shape[1]))
        history = {"mse": mse_hist, "psnr": mse_to_psnr(mse_hist), "scale": scale_hist}
        final = states[-1]
        params, skipped = final.params, final.skipped
        if not batched:
            params = {n: p[0] for n, p in params.items()}
            history = {k: v[:, 0] for k, v in history.items()}  # type: ignore[index]
            skipped = skipped[0]
        return FitResult(params=params, history=history, skipped=skipped, batched=batched, backend=self.backend)  # type: ignore[arg-type]

    def fit_steps(self, signal: tuple[torch.Tensor, torch.Tensor], *, steps: int | None = None) -> Iterator[FitStep]:
        """Fit step by step: yields the state before every step, then the final state (``FitStep.final``).

        Args:
            signal: as for :meth:`fit`; a single signal is treated as a batch of one.
            steps: number of steps (default: the adapter's).
        """
        first = self.model.get_parameter(self.adapted[0])
        coords, values, _ = check_signal(
            signal, dtype=first.dtype, device=first.device, owner=self, coord_range=self.config.coord_range
        )
        steps = self.steps if steps is None else check_int("steps", steps, 0)
        with torch.inference_mode(False):
            coords, values = (t.clone() if t.is_inference() else t for t in (coords, values))
            ctx = ContextEvaluator(self.backend, coords, values, free_chunk=self.config.chunk_size)
            init = {n: self.model.get_parameter(n).detach() for n in self.adapted}
            params = {n: p.expand(ctx.batch, *p.shape).clone() for n, p in init.items()}
        skipped = torch.zeros(ctx.batch, dtype=torch.long, device=values.device)
        run = torch.zeros_like(skipped)
        for step in range(steps):
            with torch.inference_mode(False), torch.enable_grad():
                mse, update, pruned_idx, scale = self._direction(ctx, params, step)
                rates = self.rates.at(step)
                finite = torch.stack([torch.isfinite(g).flatten(1).all(1) for g in update.values()]).all(0)
            yield FitStep(step, params, mse, pruned_idx, scale, skipped.clone())
            with torch.inference_mode(False):
                params = {n: torch.where(per_signal(finite, p), p - rates[n] * update[n], p) for n, p in params.items()}
            skipped += (~finite).long()
            run = torch.where(finite, torch.zeros_like(run), run + 1)
            if int(run.max()) >= self.max_consecutive_skips:
                failing = (run >= self.max_consecutive_skips).nonzero().flatten().tolist()
                raise FloatingPointError(
                    f"fit step {step}: the update of signal(s) {failing} was not finite for {int(run.max())} "
                    f"consecutive steps; lr={self.lr} may be too large, or the values far outside the range the "
                    "model was meta-learned on"
                )
        with torch.inference_mode(False), torch.enable_grad():
            final_mse = ctx.full_grad(params).mse
        yield FitStep(steps, params, final_mse, None, None, skipped)

    def _direction(
        self, ctx: ContextEvaluator, params: Params, step: int
    ) -> tuple[torch.Tensor, Params, torch.Tensor | None, torch.Tensor]:
        """Full-context MSE ``[B]`` at ``params``, the step's update direction, its pruned set and its scale."""
        if step < self.pruned_steps:  # a training-style step: pruned context, no scaling
            pruned_idx = select(ctx, params, self.selection_rule, self.gamma, self.generator)
            mse = ctx.errors(params).sum(dim=1) / (ctx.num_points * ctx.channels)
            return mse, ctx.grad(params, pruned_idx), pruned_idx, torch.ones_like(mse)
        full = ctx.full_grad(params)
        pruned_idx = None
        if self.scaling_rule.needs_selection:
            pruned_idx = select(ctx, params, self.selection_rule, self.gamma, self.generator)
        if pruned_idx is None and self.scaling_rule.needs_selection:  # the pruned set is the whole context
            return full.mse, full.grads, None, torch.ones_like(full.mse)
        scale = self.scaling_rule.scale(ctx, params, full, pruned_idx).detach()
        return full.mse, {n: g * per_signal(scale, g) for n, g in full.grads.items()}, pruned_idx, scale


def _is_batched(signal: object) -> bool:
    values = signal[1] if isinstance(signal, (tuple, list)) and len(signal) == 2 else None
    return not (isinstance(values, torch.Tensor) and values.ndim == 2)
