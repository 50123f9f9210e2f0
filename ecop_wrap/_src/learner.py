"""The outer loop: :class:`ContextPruningMetaLearner` (paper Algorithm 1, l.17).

One :meth:`~ContextPruningMetaLearner.meta_step` evaluates the meta-objective of
:mod:`ecop_wrap._src.algorithm` on a batch, averages the meta-gradient over ranks, and takes one optimizer
step on theta_0 (and on the learned inner rates, if any).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from ..distributed import gather_rank_states, group_rank, rank_generator_state, status_guard, weighted_all_reduce
from ..metrics import mse_to_psnr
from ..typing import AdaptSpec, SignalBatch
from .algorithm import MetaLossOutput, meta_objective
from .backends import Backend, make_backend
from .checkpoint import CHECKPOINT_FORMAT, check_state, read_checkpoint, write_checkpoint
from .config import ECoPConfig, configure_backend, resolve_adapted
from .evaluator import ContextEvaluator
from .numerics import num_selected
from .rates import InnerRates
from .rules import SelectionRule, make_selection
from .validation import check_model, check_positive, check_signal_batch, user_stacklevel

__all__ = ["ContextPruningMetaLearner"]


class ContextPruningMetaLearner:
    """Meta-learns an INR initialization with Error-based Context Pruning (ECoP).

    Args:
        model: the INR, any ``nn.Module`` mapping ``[..., C]`` coordinates to ``[..., D]`` values. Its
            trainable parameters are theta_0 and are updated in place by :meth:`meta_step`; parameters with
            ``requires_grad=False`` and buffers stay fixed.
        gamma, K, L, lam: pruned fraction, inner steps, bootstrap steps, bootstrap weight (see
            :class:`~ecop_wrap.ECoPConfig`, which documents every hyper-parameter below).
        inner_lr: inner step size alpha (the initial value of learned rates).
        boot_lr: bootstrap step size (None: ``inner_lr``).
        optimizer: outer optimizer over the model's parameters (None: ``Adam(lr=outer_lr)``). With learned
            inner rates, a parameter group for them is added to it (learning rate ``rates_lr``).
        outer_lr: outer learning rate beta when ``optimizer`` is None.
        backend: ``"torch.func"`` or ``"higher"``.
        selection: a registered selection rule: ``"error"`` (paper), ``"random"``, ``"gradncp"`` (authors' code)
            or one added with :func:`~ecop_wrap.register_selection`.
        first_order: drop second-order terms of the inner steps (FOMAML when ``gamma=1``).
        max_grad_norm: clip the meta-gradient's global norm to this value (None: no clipping).
        chunk_size: points per chunk of graph-free passes and of the outer loss (see ``ECoPConfig``).
        checkpoint: recompute each inner step's graph in the backward pass instead of keeping all K.
        batching: how the torch.func backend batches signals: ``"auto"``, ``"bmm"``, ``"vmap"``, ``"loop"``.
        gradncp_layer: scoring layer for ``selection="gradncp"`` (default: the model's last ``nn.Linear``).
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``).
        graph_free_dtype: dtype of the ranking and bootstrap passes (e.g. ``torch.bfloat16``); see ``ECoPConfig``.
        graph_free_full_precision: submodules kept in the model's dtype inside those passes: ``"ends"``
            (the input and output layers) or a tuple of names; see ``ECoPConfig``.
        compile: ``torch.compile`` the graph-free passes (opt-in; falls back to eager with one warning).
        process_group: ``torch.distributed`` group whose ranks share the batch (default: the world, if
            initialised); meta-gradients and statistics are averaged over it.
        max_consecutive_skips: after this many consecutive steps with a non-finite loss or gradient,
            :meth:`meta_step` raises ``FloatingPointError``.
        coord_range: expected coordinate range; coordinates outside it warn once (None: no check).
        seed: seed of the generator used by random selection (None: drawn from torch's global RNG).
        learn_inner_lr: None (fixed ``inner_lr``), ``"per_tensor"`` (one rate per adapted tensor and inner step,
            MAML++) or ``"per_element"`` (one rate per adapted element, Meta-SGD); see :attr:`inner_lrs`.
        max_inner_lr: learned rates are kept in ``[0, max_inner_lr]``.
        rates_lr: outer learning rate of the learned rates (None: the optimizer's, ``outer_lr`` by default).
        adapt: which parameters are adapted per signal: names or glob patterns (``["output.*"]``), or a
            predicate ``(name, param) -> bool``; None: every trainable parameter. The other trainable
            parameters are meta-learned but shared by all signals.
    """

    def __init__(
        self,
        model: nn.Module,
        gamma: float = 0.25,
        K: int = 16,
        L: int = 5,
        lam: float = 100.0,
        *,
        inner_lr: float = 1e-2,
        boot_lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        outer_lr: float = 1e-5,
        backend: str = "torch.func",
        selection: str = "error",
        first_order: bool = False,
        max_grad_norm: float | None = None,
        chunk_size: int | None = None,
        checkpoint: bool = False,
        batching: str = "auto",
        gradncp_layer: nn.Module | None = None,
        autocast_dtype: torch.dtype | None = None,
        graph_free_dtype: torch.dtype | None = None,
        graph_free_full_precision: str | tuple[str, ...] = "ends",
        compile: bool = False,
        process_group: Any = None,
        max_consecutive_skips: int = 10,
        coord_range: tuple[float, float] | None = (-1.0, 1.0),
        seed: int | None = None,
        learn_inner_lr: str | None = None,
        max_inner_lr: float = 1.0,
        rates_lr: float | None = None,
        adapt: AdaptSpec = None,
    ) -> None:
        check_model(model)
        config = ECoPConfig(
            gamma=gamma,
            K=K,
            L=L,
            lam=lam,
            inner_lr=inner_lr,
            boot_lr=boot_lr,
            selection=selection,
            first_order=first_order,
            max_grad_norm=max_grad_norm,
            learn_inner_lr=learn_inner_lr,
            max_inner_lr=max_inner_lr,
            chunk_size=chunk_size,
            checkpoint=checkpoint,
            backend=backend,
            batching=batching,
            autocast_dtype=autocast_dtype,
            graph_free_dtype=graph_free_dtype,
            graph_free_full_precision=graph_free_full_precision,
            compile=compile,
            max_consecutive_skips=max_consecutive_skips,
            coord_range=coord_range,
        )
        self._setup(
            model,
            config,
            optimizer=optimizer,
            outer_lr=outer_lr,
            rates_lr=rates_lr,
            adapt=adapt,
            gradncp_layer=gradncp_layer,
            process_group=process_group,
            seed=seed,
        )

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        config: ECoPConfig,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        outer_lr: float = 1e-5,
        rates_lr: float | None = None,
        adapt: AdaptSpec = None,
        gradncp_layer: nn.Module | None = None,
        process_group: Any = None,
        seed: int | None = None,
    ) -> ContextPruningMetaLearner:
        """A learner from an :class:`~ecop_wrap.ECoPConfig` (the other arguments as in the constructor)."""
        if not isinstance(config, ECoPConfig):
            raise TypeError(f"config must be an ECoPConfig, got {type(config).__name__}")
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return cls(
            model,
            **settings,
            optimizer=optimizer,
            outer_lr=outer_lr,
            rates_lr=rates_lr,
            adapt=adapt,
            gradncp_layer=gradncp_layer,
            process_group=process_group,
            seed=seed,
        )

    @classmethod
    def from_checkpoint(
        cls,
        model: nn.Module,
        path: str | os.PathLike[str],
        *,
        config_changes: dict[str, Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        outer_lr: float = 1e-5,
        rates_lr: float | None = None,
        gradncp_layer: nn.Module | None = None,
        process_group: Any = None,
        seed: int | None = None,
    ) -> ContextPruningMetaLearner:
        """A learner rebuilt from a file written by :meth:`save`: its configuration and adapted parameters, then
        its whole state (weights, learned rates, optimizer, step counter, pruning RNG).

        Args:
            model: a module of the saved architecture; its parameters are overwritten with the saved ones.
            path: the checkpoint.
            config_changes: fields of the saved :class:`~ecop_wrap.ECoPConfig` to replace, e.g.
                ``{"chunk_size": 4096}`` on a smaller machine; a change to the algorithm itself (``gamma``,
                ``K``, ...) is refused like any configuration mismatch in :meth:`load_state_dict`.
            optimizer, outer_lr, rates_lr, gradncp_layer, process_group, seed: as in the constructor; a given
                optimizer must have the saved one's parameter groups, and the saved optimizer state (learning
                rates included) replaces its own.

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
        learner = cls.from_config(
            model,
            config,
            optimizer=optimizer,
            outer_lr=outer_lr,
            rates_lr=rates_lr,
            adapt=state.get("adapted"),  # absent before `adapt=` existed: every trainable parameter
            gradncp_layer=gradncp_layer,
            process_group=process_group,
            seed=seed,
        )
        learner.load_state_dict(state)
        return learner

    def _setup(
        self,
        model: nn.Module,
        config: ECoPConfig,
        *,
        optimizer: torch.optim.Optimizer | None,
        outer_lr: float,
        rates_lr: float | None,
        adapt: AdaptSpec,
        gradncp_layer: nn.Module | None,
        process_group: Any,
        seed: int | None,
    ) -> None:
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self.config = config
        self.model = model
        self.adapted = resolve_adapted(model, adapt)
        named = dict(model.named_parameters())
        self.selection_rule: SelectionRule = make_selection(config.selection, model, layer=gradncp_layer)
        self.backend: Backend = make_backend(config.backend, model, config.batching, self.adapted)
        configure_backend(self.backend, config)
        self.rates = InnerRates(
            config.learn_inner_lr,
            {n: named[n] for n in self.adapted},
            inner_lr=config.inner_lr,
            max_inner_lr=config.max_inner_lr,
            steps=config.K,
        )
        self.process_group = process_group
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = (
            optimizer
            if optimizer is not None
            else torch.optim.Adam(self._params, lr=check_positive("outer_lr", outer_lr))
        )
        if self.rates.learned:
            group: dict[str, Any] = {"params": list(self.rates.tensors.values())}
            if rates_lr is not None:
                group["lr"] = check_positive("rates_lr", rates_lr)
            self.optimizer.add_param_group(group)
        self._meta_params = self._params + list(self.rates.tensors.values())
        self.generator = torch.Generator(device=self._params[0].device)
        self.generator.manual_seed(int(torch.randint(0, 2**62, ())) if seed is None else int(seed))
        self.step_count = 0
        self._consecutive_skips = 0

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
            batch: ``(coords [M, C] or [B, M, C], values [B, M, D])``.
            check: validate the batch first.
        """
        coords, values = self._check_batch(batch) if check else batch
        # Graph-free passes never need more points at once than one pruned step holds in its graph, so without
        # an explicit chunk_size they run in pieces of the pruned-set size (the paper's equal-memory budget).
        free_chunk = self.config.chunk_size or num_selected(values.shape[1], self.config.gamma)
        return ContextEvaluator(
            self.backend,
            coords,
            values,
            free_chunk=free_chunk,
            chunk_size=self.config.chunk_size,
            checkpoint=self.config.checkpoint,
            shared=self.shared_params(),
        )

    def _check_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
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
        cfg = self.config
        with torch.enable_grad():
            return meta_objective(
                ctx,
                self.init_params(),
                K=cfg.K,
                L=cfg.L,
                lam=cfg.lam,
                gamma=cfg.gamma,
                boot_lr=cfg.boot_lr,  # type: ignore[arg-type]
                rates=self.rates,
                rule=self.selection_rule,
                generator=self.generator,
                first_order=cfg.first_order,
            )

    def meta_loss(self, batch: SignalBatch) -> torch.Tensor:
        """Scalar meta-loss, differentiable w.r.t. the model's parameters (and learned rates); call
        ``.backward()`` yourself.

        For custom optimizers, AMP scalers or gradient accumulation. Under ``torch.distributed`` call
        :meth:`all_reduce_grads` after the backward.
        """
        return self.meta_objective(batch).loss

    def all_reduce_grads(self, num_signals: int = 1) -> None:
        """Average the ``.grad`` of theta_0 and the learned rates over the process group (weighted by signals)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._meta_params]
        reduced, _ = weighted_all_reduce(grads, float(num_signals), self.process_group)
        for p, g in zip(self._meta_params, reduced, strict=True):
            p.grad = g

    # ------------------------------------------------------------------------------------------ step
    def meta_step(self, batch: SignalBatch) -> dict[str, float]:
        """One outer update: meta-loss, meta-gradient (averaged over ranks), optional clipping, optimizer step.

        A step whose loss or meta-gradient is not finite changes nothing and reports ``skipped=1.0``.

        Under ``torch.distributed`` the ranks first exchange a status record (see
        :func:`ecop_wrap.distributed.status_guard`): if the meta-loss or its gradient raised on any rank, that
        rank re-raises its own exception and every other rank raises
        :class:`~ecop_wrap.distributed.RankFailedError` naming it and its reason; no rank updates and no step is
        counted, so ranks that catch the error and call ``meta_step`` again stay paired step for step.

        Returns:
            ``loss`` (meta-loss), ``mse`` (full-context MSE at theta_K, batch mean), ``psnr`` (from that MSE,
            data range 1), ``boot_distance`` (mean mu), ``grad_norm`` (before clipping), ``skipped``
            (1.0 or 0.0) and ``step`` (number of meta_step calls so far).
        """
        with status_guard(self.step_count + 1, self.process_group, device=self._meta_params[0].device):
            out = self.meta_objective(batch)
            with record_function("ecop.outer_backward"):
                grads = list(
                    torch.autograd.grad(out.loss, self._meta_params, allow_unused=True, materialize_grads=True)
                )
        local_stats = torch.stack([out.loss.detach(), out.mse.mean(), out.boot_distance.mean()]).to(grads[0].dtype)
        with record_function("ecop.all_reduce"):
            reduced, _ = weighted_all_reduce([*grads, local_stats], float(out.mse.shape[0]), self.process_group)
        grads, stats = reduced[:-1], reduced[-1]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.step_count += 1
        finite = bool(torch.isfinite(grad_norm) & torch.isfinite(stats).all())
        if finite:
            with record_function("ecop.optimizer"):
                self._apply(grads, grad_norm)
            self._consecutive_skips = 0
        else:
            self._skip()
        loss, mse, distance = (float(v) for v in stats)
        return {
            "loss": loss,
            "mse": mse,
            "psnr": float(mse_to_psnr(mse)),
            "boot_distance": distance,
            "grad_norm": float(grad_norm),
            "skipped": 0.0 if finite else 1.0,
            "step": float(self.step_count),
        }

    def _apply(self, grads: list[torch.Tensor], grad_norm: torch.Tensor) -> None:
        if self.config.max_grad_norm is not None:
            scale = (self.config.max_grad_norm / (grad_norm + 1e-6)).clamp(max=1.0)
            grads = [g * scale for g in grads]
        for p, g in zip(self._meta_params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.rates.clamp_()

    def _skip(self) -> None:
        self._consecutive_skips += 1
        if self._consecutive_skips >= self.config.max_consecutive_skips:
            raise FloatingPointError(
                f"meta_step {self.step_count}: the meta-loss or meta-gradient was not finite for "
                f"{self._consecutive_skips} consecutive steps (model and optimizer left unchanged). Likely causes: "
                f"an inner_lr ({self.config.inner_lr}) or outer learning rate too large for this model, or values "
                "far outside the data range the model was initialised for (e.g. not scaled to [0, 1])."
            )

    # ----------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Model, learned rates, optimizer, configuration, step counter and the pruning RNG state.

        Like ``nn.Module.state_dict`` the tensors are references to the live ones; :meth:`save` writes them.
        """
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "adapted": list(self.adapted),
            "inner_lrs": dict(self.rates.tensors),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "consecutive_skips": self._consecutive_skips,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, all or nothing.

        Raises:
            ValueError: the state does not fit this learner (format, algorithm configuration, parameter names or
                shapes, adapted parameters, learned rates, optimizer parameter groups, RNG state), saying which;
                nothing is changed. Any failure while applying a state that passed the checks also restores the
                learner as it was.
        """
        check_state(
            state,
            config=self.config,
            model=self.model,
            optimizer=self.optimizer,
            adapted=self.adapted,
            rates=self.rates.tensors,
        )
        self._rank_generator_state(state)  # a multi-rank checkpoint must fit this process group
        snapshot = self._snapshot()
        try:
            self._apply_state(state)
        except Exception as exc:
            self._apply_state(snapshot)
            raise ValueError(f"could not load the checkpoint state (learner left unchanged): {exc}") from exc

    def _apply_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for name, rate in state.get("inner_lrs", {}).items():
                self.rates.tensors[name].copy_(rate)
        self.optimizer.load_state_dict(state["optimizer"])
        self._set_generator_state(self._rank_generator_state(state))
        self.step_count = int(state["step"])
        self._consecutive_skips = int(state.get("consecutive_skips", 0))

    def _rank_generator_state(self, state: dict[str, Any]) -> torch.Tensor:
        """This rank's pruning RNG state in ``state`` (its own one in a multi-rank checkpoint)."""
        return rank_generator_state(state, self.process_group, uses_rng=self.config.selection == "random")

    def _set_generator_state(self, generator_state: torch.Tensor) -> None:
        """Restore the pruning RNG; a state saved for another device type (CPU vs CUDA) cannot be, so warn."""
        if generator_state.shape == self.generator.get_state().shape:
            self.generator.set_state(generator_state.cpu())
            return
        warnings.warn(
            f"the checkpoint's pruning RNG state ({generator_state.numel()} bytes) was saved from a generator on "
            f"another device type than this learner's ({self.generator.device}); it is not restored, so "
            "selection='random' continues from this learner's own seed (everything else was loaded)",
            UserWarning,
            stacklevel=user_stacklevel(),
        )

    def _snapshot(self) -> dict[str, Any]:
        """A deep copy of :meth:`state_dict` (clones, not references) to roll back to."""
        state = self.state_dict()
        state["model"] = {k: v.detach().clone() for k, v in state["model"].items()}
        state["inner_lrs"] = {k: v.detach().clone() for k, v in state["inner_lrs"].items()}
        state["optimizer"] = copy.deepcopy(state["optimizer"])
        return state

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` atomically (temporary file, fsync, rename) with a SHA-256 digest.

        A crash at any point leaves either the previous file or the complete new one.

        Under ``torch.distributed`` (a process group of several ranks) call it on **every** rank: it is a
        collective that adds a ``"distributed_state"`` entry with every rank's pruning RNG state, rank 0 of the
        group writes the file, and every rank returns once the file is in place (or raises
        :class:`~ecop_wrap.distributed.RankFailedError` if rank 0 could not write it). Called on one rank
        only, it raises ``RankFailedError`` on every rank at the next collective.
        """
        state = self.state_dict()
        device, group = self._meta_params[0].device, self.process_group
        distributed_state = gather_rank_states(self.generator.get_state(), self.step_count, group, device=device)
        if distributed_state is not None:
            state["distributed_state"] = distributed_state
        with status_guard(self.step_count, group, tag="save-written", device=device):
            if group_rank(group) == 0:
                write_checkpoint(state, path)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint written by :meth:`save`, all or nothing.

        Reads with ``torch.load(weights_only=True)`` (no arbitrary code runs), checks the SHA-256 digest, then
        :meth:`load_state_dict`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is truncated or corrupted, or it does not fit this learner (see
                :meth:`load_state_dict`); the learner is left unchanged.
        """
        self.load_state_dict(read_checkpoint(path))
