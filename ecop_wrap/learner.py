"""The outer loop: :class:`ContextPruningMetaLearner` (paper Algorithm 1, l.17).

One :meth:`~ContextPruningMetaLearner.meta_step` adapts theta_0 to each signal of the batch with pruned inner
steps, builds the bootstrapped target, evaluates the meta-loss and takes one optimizer step on theta_0.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from ._validation import (
    check_autocast_dtype,
    check_fraction,
    check_int,
    check_model,
    check_positive,
    check_signal_batch,
)
from .backends import BACKENDS, make_backend
from .distributed import gather_rank_states, group_rank, rank_generator_state, status_guard, weighted_all_reduce
from .metrics import mse_to_psnr
from .outer_loss import InnerConfig, MetaLossOutput, meta_objective
from .selection import SELECTIONS, Selector

__all__ = ["CHECKPOINT_FORMAT", "ContextPruningMetaLearner"]

CHECKPOINT_FORMAT = "ecop-wrap/1"
# Configuration that changes what is learned; a checkpoint must agree on these to be resumed.
_ALGORITHM_KEYS = ("gamma", "K", "L", "lam", "inner_lr", "boot_lr", "selection", "first_order", "max_grad_norm")


class ContextPruningMetaLearner:
    """Meta-learns an INR initialization with Error-based Context Pruning (ECoP).

    Args:
        model: the INR, any ``nn.Module`` mapping ``[..., C]`` coordinates to ``[..., D]`` values. Its
            trainable parameters are theta_0 and are updated in place by :meth:`meta_step`; parameters with
            ``requires_grad=False`` and buffers stay fixed.
        gamma: fraction of the context kept at each inner step (paper gamma), in (0, 1]. ``1.0`` is plain
            full-context MAML (Learnit).
        K: number of inner steps (>= 1).
        L: bootstrap steps on the full context after the inner loop (>= 0; 0 disables the bootstrap).
        lam: weight lambda of the bootstrap distance in the meta-loss (0 disables the bootstrap).
        inner_lr: inner step size alpha.
        boot_lr: step size of the bootstrap steps (None: ``inner_lr``).
        optimizer: outer optimizer over the model's parameters (None: ``Adam(lr=outer_lr)``).
        outer_lr: outer learning rate beta when ``optimizer`` is None.
        backend: ``"torch.func"`` or ``"higher"`` (see :mod:`ecop_wrap.backends`).
        selection: ``"error"`` (paper), ``"random"`` or ``"gradncp"`` (authors' released code).
        first_order: drop second-order terms of the inner steps (FOMAML when ``gamma=1``).
        max_grad_norm: clip the meta-gradient's global norm to this value (None: no clipping).
        chunk_size: points per chunk for every full-context pass that needs no graph back to theta_0
            (ranking, bootstrap, and then also the outer loss, whose gradient w.r.t. theta_K is accumulated
            chunk by chunk and pushed through the inner-loop graph in one backward). None: the graph-free
            passes run in pieces of the pruned-set size and the outer loss keeps one full-context graph.
        checkpoint: recompute each inner step's graph in the backward pass instead of keeping all K.
        batching: how the torch.func backend batches signals: ``"auto"``, ``"bmm"``, ``"vmap"``, ``"loop"``.
        gradncp_layer: scoring layer for ``selection="gradncp"`` (default: the model's last ``nn.Linear``).
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``).
        process_group: ``torch.distributed`` group whose ranks share the batch (default: the world, if
            initialised); meta-gradients and statistics are averaged over it.
        max_consecutive_skips: after this many consecutive steps with a non-finite loss or gradient,
            :meth:`meta_step` raises ``FloatingPointError``.
        coord_range: expected coordinate range; coordinates outside it warn once (None: no check).
        seed: seed of the generator used by random selection (None: drawn from torch's global RNG).
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
        process_group: Any = None,
        max_consecutive_skips: int = 10,
        coord_range: tuple[float, float] | None = (-1.0, 1.0),
        seed: int | None = None,
    ) -> None:
        check_model(model)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.gamma = check_fraction("gamma", gamma)
        self.K = check_int("K", K, 1)
        self.L = check_int("L", L, 0)
        self.lam = check_positive("lam", lam, allow_zero=True)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.boot_lr = self.inner_lr if boot_lr is None else check_positive("boot_lr", boot_lr)
        self.first_order = bool(first_order)
        self.max_grad_norm = None if max_grad_norm is None else check_positive("max_grad_norm", max_grad_norm)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, 1)
        self.checkpoint = bool(checkpoint)
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, 1)
        check_autocast_dtype(autocast_dtype)
        self.model = model
        self.backend_name = backend
        self.selection = selection
        self.backend = make_backend(backend, model, batching)
        self.backend.autocast_dtype = autocast_dtype
        self.selector = Selector(selection, self.gamma, model=model, layer=gradncp_layer)
        self.coord_range = coord_range
        self.process_group = process_group
        self._params = [p for p in model.parameters() if p.requires_grad]
        if optimizer is None:
            optimizer = torch.optim.Adam(self._params, lr=check_positive("outer_lr", outer_lr))
        elif not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        first = self._params[0]
        self.generator = torch.Generator(device=first.device)
        self.generator.manual_seed(int(torch.randint(0, 2**62, ())) if seed is None else int(seed))
        self.step_count = 0
        self._consecutive_skips = 0

    # ----------------------------------------------------------------------------------------- config
    @property
    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as stored in checkpoints."""
        return {
            "gamma": self.gamma, "K": self.K, "L": self.L, "lam": self.lam, "inner_lr": self.inner_lr,
            "boot_lr": self.boot_lr, "selection": self.selection, "first_order": self.first_order,
            "max_grad_norm": self.max_grad_norm, "backend": self.backend_name, "chunk_size": self.chunk_size,
            "checkpoint": self.checkpoint,
        }

    @property
    def inner_config(self) -> InnerConfig:
        """The per-signal settings (K, L, lambda, learning rates, memory modes) passed to :func:`meta_objective`."""
        return InnerConfig(
            K=self.K, L=self.L, lam=self.lam, inner_lr=self.inner_lr, boot_lr=self.boot_lr,
            first_order=self.first_order, chunk_size=self.chunk_size, checkpoint=self.checkpoint,
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({type(self.model).__name__}, {args})"

    def init_params(self) -> dict[str, torch.Tensor]:
        """theta_0: trainable parameter name -> the model's own tensor."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _check_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        first = self._params[0]
        return check_signal_batch(batch, dtype=first.dtype, device=first.device, owner=self, coord_range=self.coord_range)

    # ------------------------------------------------------------------------------------- objective
    def meta_objective(self, batch: tuple[torch.Tensor, torch.Tensor]) -> MetaLossOutput:
        """The meta-loss and per-signal diagnostics for a batch, without stepping.

        Args:
            batch: ``(coords, values)``; coords ``[M, C]`` (one grid shared by the batch) or ``[B, M, C]``,
                values ``[B, M, D]``.
        """
        coords, values = self._check_batch(batch)
        with torch.enable_grad():
            return meta_objective(
                self.backend, self.init_params(), coords, values, self.inner_config, self.selector, self.generator
            )

    def meta_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Scalar meta-loss, differentiable w.r.t. the model's parameters; call ``.backward()`` yourself.

        For custom optimizers, AMP scalers or gradient accumulation. Under ``torch.distributed`` call
        :meth:`all_reduce_grads` after the backward.
        """
        return self.meta_objective(batch).loss

    def all_reduce_grads(self, num_signals: int = 1) -> None:
        """Average the ``.grad`` of the model's parameters over the process group (weighted by signals)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        reduced, _ = weighted_all_reduce(grads, float(num_signals), self.process_group)
        for p, g in zip(self._params, reduced):
            p.grad = g

    # ------------------------------------------------------------------------------------------ step
    def meta_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
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
        with status_guard(self.step_count + 1, self.process_group, device=self._params[0].device):
            out = self.meta_objective(batch)
            grads = list(torch.autograd.grad(out.loss, self._params, allow_unused=True, materialize_grads=True))
        local_stats = torch.stack([out.loss.detach(), out.mse.mean(), out.boot_distance.mean()]).to(grads[0].dtype)
        reduced, _ = weighted_all_reduce(grads + [local_stats], float(out.mse.shape[0]), self.process_group)
        grads, stats = reduced[:-1], reduced[-1]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.step_count += 1
        finite = bool(torch.isfinite(grad_norm) & torch.isfinite(stats).all())
        if finite:
            self._apply(grads, grad_norm)
            self._consecutive_skips = 0
        else:
            self._skip()
        loss, mse, distance = (float(v) for v in stats)
        return {
            "loss": loss, "mse": mse, "psnr": float(mse_to_psnr(mse)), "boot_distance": distance,
            "grad_norm": float(grad_norm), "skipped": 0.0 if finite else 1.0, "step": float(self.step_count),
        }

    def _apply(self, grads: list[torch.Tensor], grad_norm: torch.Tensor) -> None:
        if self.max_grad_norm is not None:
            scale = (self.max_grad_norm / (grad_norm + 1e-6)).clamp(max=1.0)
            grads = [g * scale for g in grads]
        for p, g in zip(self._params, grads):
            p.grad = g
        self.optimizer.step()

    def _skip(self) -> None:
        self._consecutive_skips += 1
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise FloatingPointError(
                f"meta_step {self.step_count}: the meta-loss or meta-gradient was not finite for "
                f"{self._consecutive_skips} consecutive steps (model and optimizer left unchanged). Likely causes: "
                f"an inner_lr ({self.inner_lr}) or outer learning rate too large for this model, or values far "
                "outside the data range the model was initialised for (e.g. not scaled to [0, 1])."
            )

    # ----------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, configuration, step counter and the pruning RNG state.

        Like ``nn.Module.state_dict`` the tensors are references to the live ones; :meth:`save` writes them.
        """
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "consecutive_skips": self._consecutive_skips,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, all or nothing.

        Raises:
            ValueError: the state does not fit this learner (format, algorithm configuration, parameter names or
                shapes, optimizer parameter groups, RNG state), saying which; nothing is changed. Any failure
                while applying a state that passed the checks also restores the learner as it was.
        """
        self._check_state(state)
        snapshot = self._snapshot()
        try:
            self._apply_state(state)
        except Exception as exc:
            self._apply_state(snapshot)
            raise ValueError(f"could not load the checkpoint state (learner left unchanged): {exc}") from exc

    def _apply_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._set_generator_state(self._rank_generator_state(state))
        self.step_count = int(state["step"])
        self._consecutive_skips = int(state.get("consecutive_skips", 0))

    def _rank_generator_state(self, state: dict[str, Any]) -> torch.Tensor:
        """This rank's pruning RNG state in ``state`` (its own one in a multi-rank checkpoint)."""
        return rank_generator_state(state, self.process_group, uses_rng=self.selection == "random")

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
            stacklevel=4,
        )

    def _snapshot(self) -> dict[str, Any]:
        """A deep copy of :meth:`state_dict` (clones, not references) to roll back to."""
        state = self.state_dict()
        state["model"] = {k: v.detach().clone() for k, v in state["model"].items()}
        state["optimizer"] = copy.deepcopy(state["optimizer"])
        return state

    def _check_state(self, state: Any) -> None:
        required = ("format", "config", "model", "optimizer", "step", "generator")
        if not isinstance(state, dict) or any(k not in state for k in required):
            raise ValueError(f"not an ecop-wrap checkpoint: expected a dict with keys {required}")
        if state["format"] != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state['format']!r} is not {CHECKPOINT_FORMAT!r}")
        self._check_config(state["config"])
        self._check_model_state(state["model"])
        self._check_optimizer_state(state["optimizer"])
        generator = state["generator"]
        if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8 or generator.ndim != 1:
            raise ValueError(f"checkpoint RNG state must be a 1-D torch.uint8 tensor, got {generator!r:.80}")
        self._rank_generator_state(state)  # a multi-rank checkpoint must fit this process group

    def _check_config(self, config: Any) -> None:
        if not isinstance(config, dict):
            raise ValueError(f"checkpoint config must be a dict, got {type(config).__name__}")  # noqa: TRY004 - a damaged checkpoint
        mismatched = [
            f"{k}: checkpoint {config.get(k)!r} vs learner {self.config[k]!r}"
            for k in _ALGORITHM_KEYS
            if config.get(k) != self.config[k]
        ]
        if mismatched:
            raise ValueError("checkpoint configuration does not match this learner: " + "; ".join(mismatched))

    def _check_model_state(self, model_state: Any) -> None:
        if not isinstance(model_state, dict):
            raise ValueError(f"checkpoint model state must be a dict, got {type(model_state).__name__}")  # noqa: TRY004
        own = self.model.state_dict()
        missing = sorted(set(own) - set(model_state))
        unexpected = sorted(set(model_state) - set(own))
        if missing or unexpected:
            raise ValueError(f"checkpoint parameters do not match the model: missing {missing}, unexpected {unexpected}")
        wrong = [
            f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in model_state.items()
            if not isinstance(v, torch.Tensor) or v.shape != own[k].shape
        ]
        if wrong:
            raise ValueError("checkpoint parameter shapes do not match the model (checkpoint vs model): " + "; ".join(wrong))

    def _check_optimizer_state(self, optimizer_state: Any) -> None:
        if not isinstance(optimizer_state, dict) or "param_groups" not in optimizer_state or "state" not in optimizer_state:
            raise ValueError("checkpoint optimizer state must be an optimizer state_dict with 'state' and 'param_groups'")
        saved = [len(g.get("params", ())) for g in optimizer_state["param_groups"]]
        own = [len(g["params"]) for g in self.optimizer.param_groups]
        if saved != own:
            raise ValueError(
                f"checkpoint optimizer has parameter groups of sizes {saved} but this learner's "
                f"{type(self.optimizer).__name__} has {own}"
            )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` atomically: a temporary file, fsync, then rename over ``path``.

        A crash at any point leaves either the previous file or the complete new one. The file holds a SHA-256
        digest of its content, which :meth:`load` checks.

        Under ``torch.distributed`` (a process group of several ranks) call it on **every** rank: it is a
        collective that adds a ``"distributed_state"`` entry with every rank's pruning RNG state, rank 0 of the
        group writes the file, and every rank returns once the file is in place (or raises
        :class:`~ecop_wrap.distributed.RankFailedError` if rank 0 could not write it). Called on one rank
        only, it raises ``RankFailedError`` on every rank at the next collective.
        """
        path = os.fspath(path)
        state = self.state_dict()
        device = self._params[0].device
        group = self.process_group
        distributed_state = gather_rank_states(self.generator.get_state(), self.step_count, group, device=device)
        if distributed_state is not None:
            state["distributed_state"] = distributed_state
        with status_guard(self.step_count, group, tag="save-written", device=device):
            if group_rank(group) == 0:
                _write_checkpoint(path, state)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint written by :meth:`save`, all or nothing.

        Reads with ``torch.load(weights_only=True)`` (no arbitrary code runs), checks the SHA-256 digest, then
        :meth:`load_state_dict`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is truncated or corrupted, or it does not fit this learner (see
                :meth:`load_state_dict`); the learner is left unchanged.
        """
        path = os.fspath(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"could not read checkpoint {path!r}: truncated or corrupted ({exc})") from exc
        if not isinstance(state, dict) or "digest" not in state:
            raise ValueError(f"{path!r} is not a checkpoint written by ContextPruningMetaLearner.save (no digest)")
        digest = state.pop("digest")
        if digest != _state_digest(state):
            raise ValueError(f"checkpoint {path!r} is corrupted: its content does not match its SHA-256 digest")
        self.load_state_dict(state)


def _write_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` with its digest to a temporary file in ``path``'s directory, fsync, rename over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    state = {**state, "digest": _state_digest(state)}
    fd, tmp = tempfile.mkstemp(prefix=".ecop-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # POSIX
                os.fchmod(handle.fileno(), _file_mode(path))
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _file_mode(path: str) -> int:
    """The mode a plain ``open(path, "wb")`` would give: the existing file's, else 0o666 less the umask.

    ``mkstemp`` creates 0o600 files; without this a checkpoint would not be readable by the user's group.
    """
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _state_digest(state: Any) -> str:
    """SHA-256 over a checkpoint's content: every tensor's dtype, shape and bytes, and every other value's repr."""
    digest = hashlib.sha256()
    _update_digest(digest, state)
    return digest.hexdigest()


def _update_digest(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{data.dtype}{tuple(value.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            digest.update(repr(key).encode())
            _update_digest(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)}".encode())
        for item in value:
            _update_digest(digest, item)
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())
