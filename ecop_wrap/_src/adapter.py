"""Test-time fitting from a meta-learned initialization with gradient scaling (paper §2.4, Eq. 6).

At test time every step uses the full context, first order, and rescales each signal's full-context
gradient by a registered scaling rule: ``||g_pruned|| / ||g_full||`` (``"norm"``, Eq. 6), the loss ratio
``MSE(pruned) / MSE(full)`` (``"loss"``, Appendix B.2) or 1 (``"none"``). Optionally the first
``pruned_steps`` steps are taken as in training instead: on the pruned context, unscaled.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..metrics import mse_to_psnr
from ..typing import AdaptSpec, Params
from .algorithm import select
from .backends import Backend
from .builder import build_components, free_chunk, model_defaults, rank_chunk, resolve_adapted
from .config import TEST_TIME_KEYS, ECoPConfig, config_args_doc, config_parameters, split_config_kwargs
from .evaluator import ContextEvaluator, FullGrad
from .learner import ContextPruningMetaLearner
from .numerics import ALL_POINTS, AllPoints, Points, per_signal, sgd_update
from .rates import InnerRates
from .rules import SelectionRule, make_scaling
from .validation import check_int, check_model, check_positive, check_signal

__all__ = ["FitResult", "FitStep", "GradScaledAdapter"]


@dataclass
class FitResult:
    """Fitted INR(s).

    Attributes:
        params: adapted parameter name -> tensor, with a leading ``B`` iff the input was batched. Parameters
            that are not adapted (shared, frozen) and buffers are the model's own and not included; with
            ``adapt=["latent"]`` this is a compact code per signal.
        history: ``{"loss": [steps + 1, (B)], "scale": [steps, (B)]}``: the full-context loss before the first
            step and after every step, and the factor each step's gradient was multiplied by; with ``loss="mse"``
            also ``"mse"`` (the same values) and ``"psnr"`` (with the configuration's ``data_range``).
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
        loss: ``[B]`` full-context loss at ``params`` (the MSE by default; also as :attr:`mse`).
        pruned_idx: ``[B, k]`` points of the pruned context the step used or scaled by (None: none, or all).
        scale: ``[B]`` factor of the step's gradient (None for the final state).
        skipped: ``[B]`` steps skipped so far per signal (non-finite updates).
    """

    step: int
    params: Params
    loss: torch.Tensor
    pruned_idx: torch.Tensor | None
    scale: torch.Tensor | None
    skipped: torch.Tensor

    @property
    def mse(self) -> torch.Tensor:
        """:attr:`loss` (the name from when the objective was always the MSE)."""
        return self.loss

    @property
    def final(self) -> bool:
        """Whether this is the state after the last step (no step is taken from it)."""
        return self.scale is None


class GradScaledAdapter:
    # The docstring and signature are generated from ECoPConfig's test-time fields (end of this module).

    def __init__(
        self,
        source: ContextPruningMetaLearner | nn.Module,
        *,
        steps: int | None = None,
        lr: float | None = None,
        scaling: str = "norm",
        pruned_steps: int = 0,
        seed: int = 0,
        adapt: AdaptSpec = None,
        gradncp_layer: nn.Module | None = None,
        **settings: Any,
    ) -> None:
        learner = source if isinstance(source, ContextPruningMetaLearner) else None
        model = learner.model if learner is not None else source
        check_model(model)
        assert isinstance(model, nn.Module)  # for type checkers: check_model raised otherwise
        base = learner.config if learner is not None else ECoPConfig(**model_defaults(model))
        changes = split_config_kwargs("GradScaledAdapter", settings, TEST_TIME_KEYS)
        # None keeps the learner's setting (coord_range=None turns the range check off, as everywhere)
        self.config = base.replace(**{k: v for k, v in changes.items() if v is not None or k == "coord_range"})
        self.model = model
        self.steps = check_int("steps", steps if steps is not None else self.config.K, 0)
        self.pruned_steps = check_int("pruned_steps", pruned_steps, 0)
        self.scaling_rule = make_scaling(scaling)
        self.scaling = scaling
        adapted = learner.adapted if learner is not None else resolve_adapted(model, adapt)
        parts = build_components(
            model,
            self.config,
            adapted=adapted,
            selection_rule=_reusable_rule(learner, self.config, gradncp_layer),
            gradncp_layer=gradncp_layer,
            rates=self._rates(learner, adapted, lr),
            seed=seed,
        )
        self.adapted, self.selection_rule, self.backend = parts.adapted, parts.selection_rule, parts.backend
        self.rates, self.generator, self.loss_fn = parts.rates, parts.generator, parts.loss

    def _rates(self, learner: ContextPruningMetaLearner | None, adapted: list[str], lr: float | None) -> InnerRates:
        """The learner's learned rates as constants, unless a fixed ``lr`` is given or there are none."""
        if lr is None and learner is not None and learner.rates.learned:
            return learner.rates.detached()
        named = dict(self.model.named_parameters())
        return InnerRates(
            None,
            {n: named[n] for n in adapted},
            inner_lr=check_positive("lr", lr if lr is not None else self.config.inner_lr),
            max_inner_lr=self.config.max_inner_lr,
            steps=1,
        )

    @property
    def max_consecutive_skips(self) -> int:
        """Raise when one signal's update is not finite this many steps in a row (``config``'s setting)."""
        return self.config.max_consecutive_skips

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

    def fit(self, signal: tuple[torch.Tensor, ...], *, steps: int | None = None) -> FitResult:
        """Fit one signal ``([M, C], [M, D])`` or a batch ``([B, M, C] or [M, C], [B, M, D])``, each optionally
        with weights (``[M]`` / ``[B, M]``; e.g. the padded batch of
        :func:`~ecop_wrap.data.collate_signals`): every signal is fitted and reported over its own points.

        The model's parameters are read, never modified. Works under ``torch.no_grad()`` and
        ``torch.inference_mode()`` (inputs made there are copied out of inference mode).
        """
        batched = _is_batched(signal)
        states = list(self.fit_steps(signal, steps=steps))
        loss_hist = torch.stack([s.loss for s in states])
        scales = [s.scale for s in states if s.scale is not None]
        scale_hist = torch.stack(scales) if scales else loss_hist.new_empty((0, loss_hist.shape[1]))
        history: dict[str, torch.Tensor] = {"loss": loss_hist}
        if self.loss_fn.is_mse:
            history |= {"mse": loss_hist, "psnr": mse_to_psnr(loss_hist, self.config.data_range)}  # type: ignore[dict-item]
        history["scale"] = scale_hist
        final = states[-1]
        params, skipped = final.params, final.skipped
        if not batched:
            params = {n: p[0] for n, p in params.items()}
            history = {k: v[:, 0] for k, v in history.items()}
            skipped = skipped[0]
        return FitResult(params=params, history=history, skipped=skipped, batched=batched, backend=self.backend)

    def fit_steps(self, signal: tuple[torch.Tensor, ...], *, steps: int | None = None) -> Iterator[FitStep]:
        """Fit step by step: yields the state before every step, then the final state (``FitStep.final``).

        Args:
            signal: as for :meth:`fit`; a single signal is treated as a batch of one.
            steps: number of steps (default: the adapter's).
        """
        first = self.model.get_parameter(self.adapted[0])
        coords, values, weights, _ = check_signal(
            signal, dtype=first.dtype, device=first.device, owner=self, coord_range=self.config.coord_range
        )
        steps = self.steps if steps is None else check_int("steps", steps, 0)
        with torch.inference_mode(False):
            coords, values = (t.clone() if t.is_inference() else t for t in (coords, values))
            if weights is not None and weights.is_inference():
                weights = weights.clone()
            chunk = free_chunk(self.config, values.shape[1], meta_learning=False)
            ranked = rank_chunk(self.config, values.shape[1], values.device)
            ctx = ContextEvaluator(
                self.backend, coords, values, weights, loss=self.loss_fn, free_chunk=chunk, rank_chunk=ranked
            )
            init = {n: self.model.get_parameter(n).detach() for n in self.adapted}
            params = {n: p.expand(ctx.batch, *p.shape).clone() for n, p in init.items()}
        skipped = torch.zeros(ctx.batch, dtype=torch.long, device=values.device)
        run = torch.zeros_like(skipped)
        for step in range(steps):
            with torch.inference_mode(False), torch.enable_grad():
                loss, update, pruned_idx, scale = self._direction(ctx, params, step)
                rates = self.rates.at(step)
                finite = torch.stack([torch.isfinite(g).flatten(1).all(1) for g in update.values()]).all(0)
            shown_idx = None if isinstance(pruned_idx, AllPoints) else pruned_idx
            yield FitStep(step, params, loss, shown_idx, scale, skipped.clone())
            with torch.inference_mode(False):
                stepped = sgd_update(params, update, rates)
                params = {n: torch.where(per_signal(finite, p), stepped[n], p) for n, p in params.items()}
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
            final_loss = ctx.full_grad(params).loss
        yield FitStep(steps, params, final_loss, None, None, skipped)

    def _direction(
        self, ctx: ContextEvaluator, params: Params, step: int
    ) -> tuple[torch.Tensor, Params, Points | None, torch.Tensor]:
        """Full-context loss ``[B]`` at ``params``, the step's update direction, its pruned set (None: no
        selection was made) and its scale."""
        if step < self.pruned_steps:  # a training-style step: pruned context, no scaling
            pruned_idx = select(ctx, params, self.selection_rule, self.gamma, self.generator)
            loss = ctx.full_loss(ctx.errors(params))
            return loss, ctx.grad(params, pruned_idx), pruned_idx, torch.ones_like(loss)
        full = ctx.full_grad(params)
        if not self.scaling_rule.needs_selection:
            return full.loss, *self._scaled(ctx, params, full, None)
        pruned_idx = select(ctx, params, self.selection_rule, self.gamma, self.generator)
        if isinstance(pruned_idx, AllPoints):  # the pruned set is the whole context: the full step, unscaled
            return full.loss, full.grads, ALL_POINTS, torch.ones_like(full.loss)
        return full.loss, *self._scaled(ctx, params, full, pruned_idx)

    def _scaled(
        self, ctx: ContextEvaluator, params: Params, full: FullGrad, pruned_idx: torch.Tensor | None
    ) -> tuple[Params, torch.Tensor | None, torch.Tensor]:
        scale = self.scaling_rule.scale(ctx, params, full, pruned_idx).detach()
        return {n: g * per_signal(scale, g) for n, g in full.grads.items()}, pruned_idx, scale

    def encode(
        self,
        signals: Iterable[Any],
        batch_size: int,
        directory: str | os.PathLike[str],
        **options: Any,
    ) -> torch.utils.data.Dataset[Any]:
        """Fit every signal of a dataset, ``batch_size`` at a time, and write the fitted tensors (e.g. the latents
        of ``adapt=["latent"]``) with their labels to safetensors shards in ``directory`` (``docs/sharing.md``).

        Args:
            signals: ``(coords [M, C], values [M, D])`` or ``(coords, values, label)`` items: a ``SignalDataset``
                (its ``names`` are kept), any map-style dataset or an iterable. Consecutive signals of one shape
                are fitted together, with one shared grid when their coordinates are equal.
            batch_size: signals per fit.
            directory: created if needed; one that already holds codes is refused unless ``overwrite=True``.
            options: ``labels`` (one per signal when the items have none, e.g. the labels
                :func:`~ecop_wrap.data.glyph_images` returns), ``steps`` (default: the adapter's), ``shard_size``
                (signals per shard file, 4096), ``progress`` (a tqdm bar when tqdm is installed; True) and
                ``overwrite`` (False).

        Returns:
            the codes read back as a :class:`~ecop_wrap.data.LatentDataset`, in the order of ``signals``.
        """
        from .encode import encode_signals

        return encode_signals(self, signals, batch_size, directory, **options)


def _is_batched(signal: object) -> bool:
    values = signal[1] if isinstance(signal, (tuple, list)) and len(signal) in (2, 3) else None
    return not (isinstance(values, torch.Tensor) and values.ndim == 2)


def _reusable_rule(
    learner: ContextPruningMetaLearner | None, config: ECoPConfig, gradncp_layer: nn.Module | None
) -> SelectionRule | None:
    """The learner's own selection rule (with its options, e.g. GradNCP's layer) when the adapter keeps it."""
    if learner is None or gradncp_layer is not None or config.selection != learner.config.selection:
        return None
    return learner.selection_rule


_OWN_ARGS_DOC = """\
        steps: number of test-time steps (default: K).
        lr: step size; overrides learned inner rates (default: the learner's learned rates if it has them,
            else ``inner_lr``).
        scaling: a registered scaling rule: ``"norm"`` (Eq. 6), ``"loss"`` (Appendix B.2) or ``"none"``.
        pruned_steps: take the first ``pruned_steps`` steps on the pruned context without scaling, as in
            training (cheaper per step), and the rest as above.
        seed: seed for random selection.
        adapt: which parameters to fit when ``source`` is a module (a learner's own ``adapt`` is used for a
            learner).
        gradncp_layer: scoring layer for ``selection="gradncp"`` (default: the learner's rule and layer)."""


def _signature() -> inspect.Signature:
    P = inspect.Parameter
    own = list(inspect.signature(GradScaledAdapter.__init__).parameters.values())[1:]
    settings = config_parameters(TEST_TIME_KEYS, P.KEYWORD_ONLY)
    return inspect.Signature([p for p in own if p.kind is not P.VAR_KEYWORD] + settings)


GradScaledAdapter.__signature__ = _signature()  # type: ignore[attr-defined]
GradScaledAdapter.__doc__ = f"""Fits INRs to signals from a (meta-learned) initialization with gradient-scaled steps.

    Settings default to the learner's configuration (:class:`~ecop_wrap.ECoPConfig`) when ``source`` is a
    learner, else to ``ECoPConfig()``'s defaults; the adapter's own configuration is :attr:`config`.

    Args:
        source: a :class:`ContextPruningMetaLearner` or an ``nn.Module`` used as the initialization.
{_OWN_ARGS_DOC}

    Test-time settings (fields of :class:`~ecop_wrap.ECoPConfig`; absent or None: the learner's, except
    that ``coord_range=None`` turns the range check off):

{config_args_doc(TEST_TIME_KEYS)}
    """
