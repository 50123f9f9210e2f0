"""The outer loop: :class:`ContextPruningMetaLearner` (paper Algorithm 1, l.17).

One :meth:`~ContextPruningMetaLearner.meta_step` evaluates the meta-objective of
:mod:`ecop_wrap._src.algorithm` on a batch, averages the meta-gradient over ranks, and takes one optimizer
step on theta_0 (and on the learned inner rates, if any). Construction is :func:`~.builder.build_components`;
checkpoint state is :class:`~.learner_state.LearnerState`, sharing :class:`~.sharing.Sharing`.
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from ..distributed import status_guard, weighted_all_reduce
from ..metrics import mse_to_psnr
from ..typing import AdaptSpec, SignalBatch
from .algorithm import MetaLossOutput, meta_objective
from .builder import build_components, free_chunk, model_defaults, model_outer_lr, rank_chunk, resolve_adapted
from .checkpoint import read_checkpoint
from .config import FIELDS, POSITIONAL_KEYS, ECoPConfig, config_args_doc, config_parameters, split_config_kwargs
from .evaluator import ContextEvaluator
from .learner_state import LearnerState
from .monitor import TrainingMonitor
from .sharing import Sharing
from .validation import check_model, check_positive, check_signal_batch, user_stacklevel

__all__ = ["ContextPruningMetaLearner"]

_OWN_ARGS_DOC = """\
        config: an :class:`~ecop_wrap.ECoPConfig` to start from (the keyword settings above replace its fields).
        optimizer: outer optimizer over the model's parameters (None: ``Adam(lr=outer_lr)``). With learned
            inner rates, a parameter group for them is added to it (learning rate ``rates_lr``).
        outer_lr: outer learning rate beta when ``optimizer`` is None. None: the model's recommendation
            (``ecop_defaults["outer_lr"]``; ``HashGridINR``: 1e-2), else 3e-4, the largest that trained SIREN, a
            latent-only ``ModulatedSiren`` and ``HashGridINR`` without diverging in 100 steps
            (``benchmarks/results/diagnose_defaults_*.json``); the paper's 1e-5 is for its 150,000 steps.
        rates_lr: outer learning rate of the learned rates (None: the optimizer's, ``outer_lr`` by default).
        adapt: which parameters are adapted per signal: names or glob patterns (``["output.*"]``), or a
            predicate ``(name, param) -> bool``; None: every trainable parameter. The other trainable
            parameters are meta-learned but shared by all signals.
        gradncp_layer: scoring layer for ``selection="gradncp"`` (default: the model's last ``nn.Linear``).
        process_group: ``torch.distributed`` group whose ranks share the batch (default: the world, if
            initialised); meta-gradients and statistics are averaged over it.
        seed: seed of the generator used by random selection (None: drawn from torch's global RNG)."""


class ContextPruningMetaLearner(LearnerState, Sharing):
    # The docstring and signature are generated from ECoPConfig's fields (end of this module).

    def __init__(
        self,
        model: nn.Module,
        *positional: Any,
        config: ECoPConfig | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        outer_lr: float | None = None,
        rates_lr: float | None = None,
        adapt: AdaptSpec = None,
        gradncp_layer: nn.Module | None = None,
        process_group: Any = None,
        seed: int | None = None,
        **settings: Any,
    ) -> None:
        check_model(model)
        self.config = _resolve_config(config, positional, settings, model)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self.model = model
        parts = build_components(
            model,
            self.config,
            adapted=resolve_adapted(model, adapt),
            gradncp_layer=gradncp_layer,
            seed=int(torch.randint(0, 2**62, ())) if seed is None else int(seed),
        )
        self.adapted, self.selection_rule, self.backend = parts.adapted, parts.selection_rule, parts.backend
        self.rates, self.generator, self.loss_fn = parts.rates, parts.generator, parts.loss
        self.process_group = process_group
        self._params = [p for p in model.parameters() if p.requires_grad]
        if outer_lr is None:
            outer_lr = model_outer_lr(model)
        self.optimizer = optimizer or torch.optim.Adam(self._params, lr=check_positive("outer_lr", outer_lr))
        if self.rates.learned:
            group: dict[str, Any] = {"params": list(self.rates.tensors.values())}
            if rates_lr is not None:
                group["lr"] = check_positive("rates_lr", rates_lr)
            self.optimizer.add_param_group(group)
        self._meta_params = self._params + list(self.rates.tensors.values())
        self._shared_ids = frozenset(id(p) for p in self.shared_params().values())
        self.step_count = 0
        self._consecutive_skips = 0
        self._monitor = TrainingMonitor(
            self.config.monitor_window,
            self.config.max_grad_norm,
            boot_lr=self.config.boot_lr,
            warn_on_rise=self.config.divergence_backoff is None,
        )
        self._window_state: dict[str, Any] | None = None  # state before the monitor's current window
        self._best_state: dict[str, Any] | None = None  # state before the window with the lowest mean meta-loss

    @classmethod
    def from_config(cls, model: nn.Module, config: ECoPConfig, **kwargs: Any) -> ContextPruningMetaLearner:
        """A learner from an :class:`~ecop_wrap.ECoPConfig` (the other arguments as in the constructor)."""
        if not isinstance(config, ECoPConfig):
            raise TypeError(f"config must be an ECoPConfig, got {type(config).__name__}")
        return cls(model, config=config, **kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        model: nn.Module,
        path: str | os.PathLike[str],
        *,
        config_changes: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ContextPruningMetaLearner:
        """A learner rebuilt from a file written by :meth:`save`: its configuration and adapted parameters, then
        its whole state (weights, learned rates, optimizer, step counter, pruning RNG).

        Args:
            model: a module of the saved architecture; its parameters are overwritten with the saved ones.
            path: the checkpoint.
            config_changes: fields of the saved :class:`~ecop_wrap.ECoPConfig` to replace, e.g.
                ``{"chunk_size": 4096}`` on a smaller machine; a change to the algorithm itself (``gamma``,
                ``K``, ...) is refused like any configuration mismatch in :meth:`load_state_dict`.
            kwargs: ``optimizer``, ``outer_lr``, ``rates_lr``, ``gradncp_layer``, ``process_group``, ``seed`` as
                in the constructor; a given optimizer must have the saved one's parameter groups, and the saved
                optimizer state (learning rates included) replaces its own.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a valid checkpoint, or it does not fit ``model`` (see
                :meth:`load_state_dict`).
        """
        state = read_checkpoint(path)
        saved_config = state.get("config")
        if not isinstance(saved_config, dict):
            raise ValueError(f"checkpoint {os.fspath(path)!r} has no configuration dict (key 'config')")  # noqa: TRY004 - a damaged file
        config = ECoPConfig.from_dict(saved_config)
        if config_changes:
            config = config.replace(**config_changes)
        # "adapted" is absent from checkpoints made before `adapt=` existed: every trainable parameter
        learner = cls.from_config(model, config, adapt=state.get("adapted"), **kwargs)
        learner.load_state_dict(state)
        return learner

    # ----------------------------------------------------------------------------------------- views
    @property
    def inner_lrs(self) -> dict[str, torch.Tensor]:
        """Learned inner step sizes: adapted parameter name -> leaf tensor (``[K]`` for ``"per_tensor"``, the
        parameter's shape for ``"per_element"``); empty when ``learn_inner_lr`` is None."""
        return self.rates.tensors

    def init_params(self) -> dict[str, torch.Tensor]:
        """theta_0 of the adapted parameters: name -> the model's own tensor."""
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.adapted}

    def shared_params(self) -> dict[str, torch.Tensor]:
        """Trainable parameters shared by every signal (not adapted): name -> the model's own tensor."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad and n not in self.adapted}

    def __repr__(self) -> str:
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        adapt = "all" if self.adapted == trainable else self.adapted
        return f"{type(self).__name__}({type(self.model).__name__}, {self.config!r}, adapt={adapt})"

    def evaluator(self, batch: SignalBatch, *, check: bool = True) -> ContextEvaluator:
        """The model on a batch's context with this learner's memory modes (see :class:`ContextEvaluator`).

        Args:
            batch: ``(coords [M, C] or [B, M, C], values [B, M, D])`` or ``(coords, values, weights [B, M])``.
            check: validate the batch first.
        """
        coords, values, weights = self._check_batch(batch) if check else _unpack(batch)
        return ContextEvaluator(
            self.backend,
            coords,
            values,
            weights,
            loss=self.loss_fn,
            free_chunk=free_chunk(self.config, values.shape[1], meta_learning=True),
            rank_chunk=rank_chunk(self.config, values.shape[1], values.device),
            chunk_size=self.config.chunk_size,
            checkpoint=self.config.checkpoint,
            shared=self.shared_params(),
        )

    def _check_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        first = self._params[0]
        return check_signal_batch(
            batch, dtype=first.dtype, device=first.device, owner=self, coord_range=self.config.coord_range
        )

    # ------------------------------------------------------------------------------------- objective
    def meta_objective(self, batch: SignalBatch) -> MetaLossOutput:
        """The meta-loss and per-signal diagnostics for a batch, without stepping.

        Args:
            batch: ``(coords, values)``; coords ``[M, C]`` (one grid shared by the batch) or ``[B, M, C]``,
                values ``[B, M, D]``.
        """
        ctx = self.evaluator(batch)
        with torch.enable_grad():
            out = meta_objective(
                ctx,
                self.init_params(),
                self.config,
                rates=self.rates,
                rule=self.selection_rule,
                generator=self.generator,
            )
        if self.loss_fn.is_mse:
            out.floor_loss = ctx.mean_floor()
        return out

    def meta_loss(self, batch: SignalBatch) -> torch.Tensor:
        """Scalar meta-loss, differentiable w.r.t. the model's parameters (and learned rates); call
        ``.backward()`` yourself.

        For custom optimizers, AMP scalers or gradient accumulation. Under ``torch.distributed`` call
        :meth:`all_reduce_grads` after the backward.

        With ``boot_trains_shared=False`` (the default) and shared parameters, the returned tensor has the
        meta-loss's value and graph, and its backward takes the split meta-gradient (two backward passes).
        """
        out = self.meta_objective(batch)
        if not self._splits_bootstrap():
            return out.loss
        loss: torch.Tensor = _SplitGradient.apply(  # type: ignore[no-untyped-call]
            out.loss.detach(), lambda: self._meta_gradient(out), *self._meta_params
        )
        return loss

    def all_reduce_grads(self, num_signals: int = 1) -> None:
        """Average the ``.grad`` of theta_0 and the learned rates over the process group (weighted by signals)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._meta_params]
        reduced, _ = weighted_all_reduce(grads, float(num_signals), self.process_group)
        for p, g in zip(self._meta_params, reduced, strict=True):
            p.grad = g

    # ------------------------------------------------------------------------------------------ step
    def meta_step(self, batch: SignalBatch) -> dict[str, float]:
        """One outer update: meta-loss, meta-gradient (averaged over ranks), optional clipping, optimizer step.

        A step whose loss or meta-gradient is not finite changes nothing and reports ``skipped=1.0``. With
        ``divergence_backoff``, a step that completes a monitor window whose mean meta-loss rose also rolls the
        learner back and lowers its learning rates (see :class:`~ecop_wrap.ECoPConfig`).

        Under ``torch.distributed`` the ranks first exchange a status record (see
        :func:`ecop_wrap.distributed.status_guard`): if the meta-loss or its gradient raised on any rank, that
        rank re-raises its own exception and every other rank raises
        :class:`~ecop_wrap.distributed.RankFailedError` naming it and its reason; no rank updates and no step is
        counted, so ranks that catch the error and call ``meta_step`` again stay paired step for step.

        Returns:
            ``loss`` (meta-loss), ``fit_loss`` (full-context loss at theta_K, batch mean), with
            ``loss="mse"`` also ``mse`` (the same value), ``psnr`` (from it, with ``data_range``) and
            ``floor_mse`` (the MSE of the trivial fit, each signal's own mean predicted everywhere),
            ``boot_distance`` (mean mu), ``grad_norm`` (before clipping), ``skipped`` (1.0 or 0.0),
            ``step`` (number of meta_step calls so far) and, where it is measured (the bootstrap on with ``L >= 2``),
            ``boot_rise`` (the share of signals whose bootstrap path ended above twice their loss at theta_K).
            docs/architecture.md lists every stats key.
        """
        with status_guard(self.step_count + 1, self.process_group, device=self._meta_params[0].device):
            out = self.meta_objective(batch)
            with record_function("ecop.outer_backward"):
                grads = self._meta_gradient(out)
        local = {"loss": out.loss.detach(), "fit_loss": out.fit_loss.mean(), "distance": out.boot_distance.mean()}
        if out.floor_loss is not None:  # the same on every rank (it depends on the loss only)
            local["floor"] = out.floor_loss.mean()
        if out.boot_rise is not None:  # the same on every rank (it depends on L only)
            local["rise"] = out.boot_rise.mean(dtype=out.fit_loss.dtype)
        local_stats = torch.stack(list(local.values()))
        with record_function("ecop.all_reduce"):
            signals = float(out.fit_loss.shape[0])
            reduced, _ = weighted_all_reduce([*grads, local_stats.to(grads[0].dtype)], signals, self.process_group)
        grads, stats = reduced[:-1], reduced[-1]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.step_count += 1
        finite = bool(torch.isfinite(grad_norm) & torch.isfinite(stats).all())
        if finite:
            self._keep_window_start()
            with record_function("ecop.optimizer"):
                self._apply(grads, grad_norm)
            self._consecutive_skips = 0
        else:
            self._skip()
        named = dict(zip(local, (float(v) for v in stats), strict=True))
        loss, fit_loss, distance = named["loss"], named["fit_loss"], named["distance"]
        floor, rise = named.get("floor"), named.get("rise")
        if finite:
            self._watch(float(grad_norm), loss, rise, fit_loss, floor)
        report = {"loss": loss, "fit_loss": fit_loss}
        if self.loss_fn.is_mse:
            report |= {"mse": fit_loss, "psnr": float(mse_to_psnr(fit_loss, self.config.data_range))}
        if floor is not None:
            report["floor_mse"] = floor
        report |= {
            "boot_distance": distance,
            "grad_norm": float(grad_norm),
            "skipped": 0.0 if finite else 1.0,
            "step": float(self.step_count),
        }
        return report | ({"boot_rise": rise} if rise is not None else {})

    def _splits_bootstrap(self) -> bool:
        """Whether the bootstrap term's gradient must be kept from shared parameters."""
        config = self.config
        return not config.boot_trains_shared and config.uses_bootstrap and bool(self._shared_ids)

    def _meta_gradient(self, out: MetaLossOutput) -> list[torch.Tensor]:
        """d loss / d (theta_0, rates); with ``boot_trains_shared=False`` the shared parameters' part from the fit
        term alone (two backward passes through the inner loop)."""
        params = self._meta_params
        if not self._splits_bootstrap():
            return list(torch.autograd.grad(out.loss, params, allow_unused=True, materialize_grads=True))
        assert out.fit_term is not None and out.boot_term is not None
        fit_term, boot_term = out.fit_term.mean(), out.boot_term.mean()
        fit = torch.autograd.grad(fit_term, params, retain_graph=True, allow_unused=True, materialize_grads=True)
        own = [p for p in params if id(p) not in self._shared_ids]
        own_grads = torch.autograd.grad(boot_term, own, allow_unused=True, materialize_grads=True)
        boot = {id(p): g for p, g in zip(own, own_grads, strict=True)}
        return [g + boot[id(p)] if id(p) in boot else g for p, g in zip(params, fit, strict=True)]

    def _apply(self, grads: list[torch.Tensor], grad_norm: torch.Tensor) -> None:
        if self.config.max_grad_norm is not None:
            scale = (self.config.max_grad_norm / (grad_norm + 1e-6)).clamp(max=1.0)
            grads = [g * scale for g in grads]
        for p, g in zip(self._meta_params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.rates.clamp_()

    def _keep_window_start(self) -> None:
        """With ``divergence_backoff``: copy the state a window starts from (before this step's update)."""
        if self.config.divergence_backoff is not None and self._monitor.window_starts:
            self._window_state = self._snapshot()

    def _watch(
        self, grad_norm: float, loss: float, boot_rise: float | None, fit_loss: float, floor: float | None
    ) -> None:
        """The monitor's checks; with ``divergence_backoff``, keep the state the best window started from (its
        losses were measured on it and the states after it) and roll back to it when the meta-loss rises."""
        event = self._monitor.update(self.step_count, grad_norm, loss, boot_rise, fit_loss=fit_loss, floor=floor)
        backoff = self.config.divergence_backoff
        if backoff is None:
            return
        if event == "best":
            self._best_state = self._window_state
        elif event == "rise" and self._best_state is not None:
            self._roll_back(self._best_state, backoff, loss)

    def _roll_back(self, best: dict[str, Any], backoff: float, loss: float) -> None:
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        # a copy: the optimizer takes the state's tensors as they are, and its steps would change the kept state
        # (a later rise may roll back to it again)
        self._apply_weights({**best, "optimizer": copy.deepcopy(best["optimizer"])})
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr * backoff
        self._monitor.restart_window()
        warnings.warn(
            f"meta_step {self.step_count}: the meta-loss rose (last {loss:.4g}, best window's mean "
            f"{self._monitor.best_mean:.4g}): rolled back to the state before meta_step {best['step']} and "
            f"multiplied the outer learning rates by divergence_backoff={backoff:g} (now "
            f"{', '.join(f'{lr * backoff:.3g}' for lr in lrs)}).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )

    def _skip(self) -> None:
        self._consecutive_skips += 1
        if self._consecutive_skips >= self.config.max_consecutive_skips:
            raise FloatingPointError(
                f"meta_step {self.step_count}: the meta-loss or meta-gradient was not finite for "
                f"{self._consecutive_skips} consecutive steps (model and optimizer left unchanged). Likely causes: "
                f"an inner_lr ({self.config.inner_lr}) or outer learning rate too large for this model, or values "
                "far outside the data range the model was initialised for (e.g. not scaled to [0, 1])."
            )

    # ------------------------------------------------------------------ sharing (ecop_wrap/_src/pretrained.py)


class _SplitGradient(torch.autograd.Function):
    """The meta-loss's value, whose backward gives ``meta_gradient()`` to the meta-parameters (the graph of the
    loss stays alive until then, held by the closure, as a plain loss's would)."""

    @staticmethod
    def forward(ctx: Any, loss: torch.Tensor, meta_gradient: Any, *params: torch.Tensor) -> torch.Tensor:
        ctx.meta_gradient = meta_gradient
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with torch.enable_grad():
            grads = ctx.meta_gradient()
        ctx.meta_gradient = None  # frees the graph
        return (None, None, *(grad_output * g for g in grads))


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


def _resolve_config(
    config: ECoPConfig | None, positional: tuple[Any, ...], settings: dict[str, Any], model: nn.Module
) -> ECoPConfig:
    """The learner's configuration: ``config`` (or the defaults, with the model's own recommendations) with the
    positional and keyword settings."""
    if config is not None and not isinstance(config, ECoPConfig):
        raise TypeError(f"config must be an ECoPConfig or None, got {type(config).__name__}")
    if len(positional) > len(POSITIONAL_KEYS):
        raise TypeError(
            f"ContextPruningMetaLearner takes the model and at most {len(POSITIONAL_KEYS)} positional settings "
            f"{POSITIONAL_KEYS}; got {len(positional)}; pass the others by keyword"
        )
    for name, value in zip(POSITIONAL_KEYS, positional, strict=False):
        if name in settings:
            raise TypeError(f"ContextPruningMetaLearner got multiple values for argument {name!r}")
        settings[name] = value
    changes = split_config_kwargs("ContextPruningMetaLearner", settings)
    return config.replace(**changes) if config is not None else ECoPConfig(**(model_defaults(model) | changes))


def _signature() -> inspect.Signature:
    """The constructor's signature as users should read it: every ECoPConfig field, then the learner's own."""
    P = inspect.Parameter
    params = [P("model", P.POSITIONAL_OR_KEYWORD, annotation="nn.Module")]
    params += config_parameters(POSITIONAL_KEYS, P.POSITIONAL_OR_KEYWORD)
    params += config_parameters([n for n in FIELDS if n not in POSITIONAL_KEYS], P.KEYWORD_ONLY)
    own = inspect.signature(ContextPruningMetaLearner.__init__).parameters
    params += [p for n, p in own.items() if p.kind is P.KEYWORD_ONLY]
    return inspect.Signature(params)


ContextPruningMetaLearner.__signature__ = _signature()  # type: ignore[attr-defined]
ContextPruningMetaLearner.__doc__ = f"""Meta-learns an INR initialization with Error-based Context Pruning (ECoP).

    Args:
        model: the INR, any ``nn.Module`` mapping ``[..., C]`` coordinates to ``[..., D]`` values. Its
            trainable parameters are theta_0 and are updated in place by :meth:`meta_step`; parameters with
            ``requires_grad=False`` and buffers stay fixed.
{config_args_doc(FIELDS)}
{_OWN_ARGS_DOC}

    The settings ``{", ".join(POSITIONAL_KEYS)}`` may also be given positionally after the model; every setting is a
    field of :class:`~ecop_wrap.ECoPConfig`, which :attr:`config` holds.
    """
