"""Test-time fitting from a meta-learned initialization with gradient scaling (paper §2.4, Eq. 6).

At test time every step uses the full context, first order, and rescales each signal's full-context
gradient so its norm matches what training saw on the pruned context:
``g = g_full * ||g_pruned|| / (||g_full|| + 1e-16)`` (``scaling="norm"``), or by the cheaper loss ratio
``MSE(pruned) / MSE(full)`` (``scaling="loss"``, Appendix B.2), or not at all (``scaling="none"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ._validation import (
    check_autocast_dtype,
    check_fraction,
    check_int,
    check_model,
    check_positive,
    check_signal,
)
from .backends import Backend, Params, make_backend
from .bootstrap import full_context_grad
from .inner_loop import expand_params, pruned_loss
from .learner import ContextPruningMetaLearner
from .metrics import mse_to_psnr
from .selection import Selector, num_selected, topk_indices

__all__ = ["SCALINGS", "FitResult", "GradScaledAdapter"]

SCALINGS = ("norm", "loss", "none")


@dataclass
class FitResult:
    """Fitted INR(s).

    Attributes:
        params: parameter name -> tensor; with a leading ``B`` dimension iff the input was batched. Frozen
            parameters and buffers are not included (they are the model's own).
        history: ``{"mse": [steps + 1, (B)], "psnr": [steps + 1, (B)], "scale": [steps, (B)]}``: full-context
            MSE and PSNR before the first step and after every step, and the factor each step's full-context
            gradient was multiplied by (``||g_pruned|| / ||g_full||`` for ``scaling="norm"``; 1 for ``"none"``).
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


class GradScaledAdapter:
    """Fits INRs to signals from a (meta-learned) initialization with gradient-scaled full-context steps.

    Args:
        source: a :class:`ContextPruningMetaLearner` (its model, gamma, K, inner_lr, selection and backend
            are the defaults) or an ``nn.Module`` used as the initialization.
        steps: number of test-time steps (default: the learner's K, else 16).
        lr: step size (default: the learner's inner_lr, else 1e-2).
        gamma: pruned fraction used to compute the scale (default: the learner's gamma, else 0.25).
        scaling: ``"norm"`` (Eq. 6), ``"loss"`` (loss ratio, Appendix B.2) or ``"none"``.
        selection: ranking rule for the pruned set (default: the learner's, else ``"error"``).
        backend: ``"torch.func"`` or ``"higher"`` (default: the learner's, else ``"torch.func"``).
        chunk_size: points per chunk of every full-context pass (default: the learner's).
        max_consecutive_skips: raise ``FloatingPointError`` when a signal's update is not finite this many
            steps in a row.
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype (default: the learner's,
            else ``None``, i.e. the model's own dtype); predictions and the history come back in the data's dtype.
        seed: seed for random selection.
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
        batching: str = "auto",
        gradncp_layer: nn.Module | None = None,
        max_consecutive_skips: int = 3,
        coord_range: tuple[float, float] | None = (-1.0, 1.0),
        autocast_dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> None:
        learner = source if isinstance(source, ContextPruningMetaLearner) else None
        model = learner.model if learner is not None else source
        check_model(model)
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        self.model = model
        self.steps = check_int("steps", steps if steps is not None else (learner.K if learner else 16), 0)
        self.lr = check_positive("lr", lr if lr is not None else (learner.inner_lr if learner else 1e-2))
        self.gamma = check_fraction("gamma", gamma if gamma is not None else (learner.gamma if learner else 0.25))
        self.scaling = scaling
        selection = selection or (learner.selection if learner else "error")
        if gradncp_layer is None and learner is not None and learner.selector.layer is not None:
            gradncp_layer = learner.selector.layer
        self.selector = Selector(selection, self.gamma, model=model, layer=gradncp_layer)
        backend_name = backend or (learner.backend_name if learner else "torch.func")
        self.backend = make_backend(backend_name, model, batching)
        if autocast_dtype is None and learner is not None:
            autocast_dtype = learner.backend.autocast_dtype
        self.backend.autocast_dtype = check_autocast_dtype(autocast_dtype)
        self.chunk_size = chunk_size if chunk_size is not None else (learner.chunk_size if learner else None)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, 1)
        self.coord_range = coord_range
        first = next(p for p in model.parameters() if p.requires_grad)
        self.generator = torch.Generator(device=first.device)
        self.generator.manual_seed(seed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, steps={self.steps}, lr={self.lr}, "
            f"gamma={self.gamma}, scaling={self.scaling!r}, selection={self.selector.kind!r})"
        )

    def fit(self, signal: tuple[torch.Tensor, torch.Tensor], *, steps: int | None = None) -> FitResult:
        """Fit one signal ``([M, C], [M, D])`` or a batch ``([B, M, C] or [M, C], [B, M, D])``.

        The model's parameters are read, never modified. Works under ``torch.no_grad()`` and
        ``torch.inference_mode()`` (inputs made there are copied out of inference mode).
        """
        first = next(p for p in self.model.parameters() if p.requires_grad)
        coords, values, batched = check_signal(
            signal, dtype=first.dtype, device=first.device, owner=self, coord_range=self.coord_range
        )
        steps = self.steps if steps is None else check_int("steps", steps, 0)
        with torch.inference_mode(False), torch.enable_grad():
            coords, values = (t.clone() if t.is_inference() else t for t in (coords, values))
            return self._fit(coords, values, batched, steps)

    def _fit(self, coords: torch.Tensor, values: torch.Tensor, batched: bool, steps: int) -> FitResult:
        """:meth:`fit` on validated ``coords [M, C] or [B, M, C]`` and ``values [B, M, D]`` with grad enabled."""
        init = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        params = {n: p.clone() for n, p in expand_params(init, values.shape[0]).items()}
        mses: list[torch.Tensor] = []
        scales: list[torch.Tensor] = []
        skipped = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
        run = torch.zeros_like(skipped)
        for step in range(steps):
            mse, update, scale = self._scaled_step(params, coords, values)
            mses.append(mse)
            scales.append(scale)
            finite = torch.stack([torch.isfinite(g).flatten(1).all(1) for g in update.values()]).all(0)
            params = {
                n: torch.where(finite.view(-1, *[1] * (p.ndim - 1)), p - self.lr * update[n], p)
                for n, p in params.items()
            }
            skipped += (~finite).long()
            run = torch.where(finite, torch.zeros_like(run), run + 1)
            if int(run.max()) >= self.max_consecutive_skips:
                raise FloatingPointError(
                    f"fit step {step}: the update of signal(s) {(run >= self.max_consecutive_skips).nonzero().flatten().tolist()} "
                    f"was not finite for {int(run.max())} consecutive steps; lr={self.lr} may be too large, or the "
                    "values far outside the range the model was meta-learned on"
                )
        mses.append(full_context_grad(self.backend, params, coords, values, self.chunk_size)[0])
        mse_hist = torch.stack(mses)
        scale_hist = torch.stack(scales) if scales else mse_hist.new_empty((0, values.shape[0]))
        history = {"mse": mse_hist, "psnr": mse_to_psnr(mse_hist), "scale": scale_hist}  # type: ignore[dict-item]
        if not batched:
            params = {n: p[0] for n, p in params.items()}
            history = {k: v[:, 0] for k, v in history.items()}
            skipped = skipped[0]
        return FitResult(params=params, history=history, skipped=skipped, batched=batched, backend=self.backend)

    def _scaled_step(
        self, params: Params, coords: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, Params, torch.Tensor]:
        """Full-context MSE ``[B]`` at ``params``, the scaled update direction (name -> ``[B, *shape]``) and the
        scale ``[B]``."""
        mse, grads, errors = full_context_grad(
            self.backend, params, coords, values, self.chunk_size, return_errors=True
        )
        if self.scaling == "none" or self.selector.keeps_all(values.shape[1]):
            return mse, grads, torch.ones_like(mse)
        scale = self._scale(params, coords, values, mse, grads, errors).detach()
        return mse, {n: g * scale.view(-1, *[1] * (g.ndim - 1)) for n, g in grads.items()}, scale

    def _scale(
        self, params: Params, coords: torch.Tensor, values: torch.Tensor, mse: torch.Tensor,
        grads: Params, errors: torch.Tensor,
    ) -> torch.Tensor:
        k = num_selected(values.shape[1], self.gamma)
        if self.selector.kind == "error":
            scores = errors  # the full pass already measured every point's error
        else:
            scores = self.selector.scores(self.backend, params, coords, values, self.generator, self.chunk_size)
        pruned_idx = topk_indices(scores, k)
        if self.scaling == "loss":
            pruned_mse = torch.gather(errors, 1, pruned_idx).mean(dim=1) / values.shape[-1]
            return pruned_mse / (mse + 1e-16)
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        loss = pruned_loss(self.backend, leaves, coords, values, pruned_idx)
        pruned_grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
        return _global_norm(list(pruned_grads)) / (_global_norm(list(grads.values())) + 1e-16)


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-signal L2 norm over all parameters: list of ``[B, ...]`` -> ``[B]``."""
    return torch.linalg.vector_norm(torch.cat([t.flatten(1) for t in tensors], dim=1), dim=1)


