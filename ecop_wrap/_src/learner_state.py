"""A learner's state: what :meth:`~ecop_wrap.ContextPruningMetaLearner.save` writes and ``load`` restores, all
or nothing (beside :mod:`ecop_wrap._src.checkpoint`, which owns the file format and its checks)."""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import torch
from torch import nn

from ..distributed import gather_rank_states, group_rank, rank_generator_state, status_guard
from .checkpoint import CHECKPOINT_FORMAT, check_state, read_checkpoint, write_checkpoint
from .config import ECoPConfig
from .rates import InnerRates
from .rules import SelectionRule
from .validation import user_stacklevel

__all__ = ["LearnerState"]


class LearnerState:
    """Checkpoint state of a :class:`~ecop_wrap.ContextPruningMetaLearner` (its base class)."""

    # what the learner holds, and its state is made of
    config: ECoPConfig
    model: nn.Module
    adapted: list[str]
    rates: InnerRates
    optimizer: torch.optim.Optimizer
    selection_rule: SelectionRule
    generator: torch.Generator
    process_group: Any
    step_count: int
    _consecutive_skips: int
    _meta_params: list[torch.Tensor]

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

    def _apply_state(self, state: dict[str, Any]) -> None:
        self._apply_weights(state)
        self._set_generator_state(self._rank_generator_state(state))
        self.step_count = int(state["step"])
        self._consecutive_skips = int(state.get("consecutive_skips", 0))

    def _apply_weights(self, state: dict[str, Any]) -> None:
        """The model, the learned rates and the optimizer (its learning rates included) of a state; not the step
        counter or the pruning RNG (a roll-back keeps those going)."""
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for name, rate in state.get("inner_lrs", {}).items():
                self.rates.tensors[name].copy_(rate)
        self.optimizer.load_state_dict(state["optimizer"])

    def _rank_generator_state(self, state: dict[str, Any]) -> torch.Tensor:
        """This rank's pruning RNG state in ``state`` (its own one in a multi-rank checkpoint)."""
        uses_rng = bool(getattr(self.selection_rule, "uses_generator", False))
        return rank_generator_state(state, self.process_group, uses_rng=uses_rng)

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
