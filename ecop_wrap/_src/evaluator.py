"""The model evaluated on one batch's context: every forward and gradient pass, and the memory tricks behind them.

Every pass evaluates the batch's per-point loss (:mod:`.losses`, MSE by default), weighted by the batch's
weights if it has them (a signal's loss is ``sum_j w_j l_j / sum_j w_j``).

The algorithm (:mod:`ecop_wrap._src.algorithm`) asks only four things of a :class:`ContextEvaluator`:
``errors(params)`` (graph-free ranking), ``sgd_step(params, pruned_idx, rates)`` (an inner step on a pruned
context, with a graph), ``full_grad(params)`` (graph-free full-context gradient, for the bootstrap and
test-time fitting) and ``full_mse(params)`` (the outer loss at theta_K). How much memory these hold is
decided here:

* graph-free passes run in chunks of ``free_chunk`` points (by default, while meta-learning, the whole
  context: the bootstrap runs before the outer loss, whose full-context graph is the larger of the two, so one
  piece keeps the step's peak within about 1%; ``bootstrap_chunk="pruned"`` bounds each piece by one pruned
  step's graph);
* ``chunk_size`` also bounds the outer loss: the full-context MSE is replaced by a surrogate whose value is
  the MSE and whose gradient w.r.t. theta_K is the MSE's, accumulated chunk by chunk with no graph, so the
  backward pushes it through the inner-loop graph without ever holding a full-context graph. The algorithm
  passes the same graph-free pass at theta_K to the bootstrap's first step (``full_mse(params, at_params=...)``);
* ``checkpoint`` recomputes each inner step's graph in the backward pass instead of keeping all K;
* while every signal still has the shared initialization (the first ranking), a shared grid needs one forward.

Passes over the same parameter dict share what the backend derives from the parameters alone (the bmm
backend's transposed weights and unsqueezed biases): the ranking at theta_k and the pruned step after it, and
every piece of a chunked graph-free pass. This saves ops, not memory, and changes no number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ..typing import Params
from .backends import Backend
from .losses import PointLoss, make_loss
from .numerics import (
    ALL_POINTS,
    AllPoints,
    Points,
    coords_chunk,
    gather_points,
    point_chunks,
    sgd_update,
)
from .weighted import weighted_graph_loss

__all__ = ["ContextEvaluator", "FullGrad", "Rates"]

Rates = dict[str, "float | torch.Tensor"]
"""Step size per adapted parameter name: a float, a scalar tensor or a tensor of the parameter's shape."""

Piece = tuple[torch.Tensor, torch.Tensor]
"""``(coords, values)`` of some of the context's points."""

PointFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class FullGrad:
    """A graph-free full-context pass (all detached).

    Attributes:
        loss: ``[B]`` per-signal full-context loss (the MSE over points and channels by default).
        grads: name -> ``[B, *shape]`` gradient of each signal's loss.
        errors: ``[B, M]`` per-point losses times D (unweighted; for MSE the squared errors).
        shared_grads: name -> ``[B, *shape]`` gradient w.r.t. each shared (not adapted) trainable parameter,
            per signal (only when asked for).
        low_precision: whether the forward ran in the backend's ``graph_free_dtype``.
    """

    loss: torch.Tensor
    grads: Params
    errors: torch.Tensor
    shared_grads: Params
    low_precision: bool = False

    @property
    def mse(self) -> torch.Tensor:
        """:attr:`loss` (the name from when the objective was always the MSE)."""
        return self.loss


class ContextEvaluator:
    """The model on one batch's context ``(coords, values)``, with the memory modes built in.

    Args:
        backend: evaluates the model with per-signal parameters.
        coords: ``[M, C]`` shared or ``[B, M, C]`` coordinates. values: ``[B, M, D]``.
        weights: ``[B, M]`` non-negative point weights (None: every point weighs 1); a point of weight 0 is never
            selected and never counted.
        loss: the per-point loss (default: MSE).
        free_chunk: points per piece of every graph-free pass (None: all at once).
        rank_chunk: points per piece of the graph-free forwards that need no gradient at all (ranking; None:
            all at once; default: ``free_chunk``).
        chunk_size: when set, :meth:`full_mse` is the chunked surrogate (see the module docstring).
        checkpoint: recompute inner steps' graphs during the backward pass.
        shared: the trainable parameters that are not adapted per signal (name -> the model's tensor); the
            chunked surrogate needs their gradient too.
    """

    def __init__(
        self,
        backend: Backend,
        coords: torch.Tensor,
        values: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        loss: PointLoss | None = None,
        free_chunk: int | None = None,
        rank_chunk: int | str | None = "free_chunk",
        chunk_size: int | None = None,
        checkpoint: bool = False,
        shared: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.backend = backend
        self.coords = coords
        if weights is not None and not bool((weights > 0).all()):
            # a point of weight 0 is never counted: its placeholder value (finite, possibly huge) is never read
            values = torch.where((weights > 0).unsqueeze(-1), values, torch.zeros_like(values))
        self.values = values
        self.weights = weights
        self.loss_fn = loss if loss is not None else make_loss("mse")
        # per signal: sum_j w_j * D, the normaliser of a weighted full-context loss
        self._norm = None if weights is None else weights.sum(dim=1) * values.shape[2]
        self.free_chunk = free_chunk
        self.rank_chunk: int | None = free_chunk if isinstance(rank_chunk, str) else rank_chunk
        self.chunk_size = chunk_size
        self.checkpoint = checkpoint
        self.shared = shared or {}
        self._identical: Params | None = None
        self._single: Params = {}
        self._errors_memo: tuple[Params, torch.Tensor] | None = None
        self._views: tuple[Params, dict[object, object]] | None = None
        self._pieces_memo: dict[int | None, tuple[torch.Tensor, torch.Tensor, list[Piece]]] = {}
        """chunk size -> (coords, values, their pieces)"""

    @property
    def batch(self) -> int:
        return self.values.shape[0]

    @property
    def num_points(self) -> int:
        return self.values.shape[1]

    @property
    def channels(self) -> int:
        return self.values.shape[2]

    @property
    def chunked(self) -> bool:
        """Whether the outer loss is the chunked surrogate (``chunk_size`` set)."""
        return self.chunk_size is not None

    def expand(self, init: dict[str, torch.Tensor]) -> Params:
        """theta_0 as per-signal parameters ``[B, *shape]`` (views attached to ``init``'s graph).

        Until a step replaces them, every signal has the same parameters, so graph-free passes on a shared
        grid evaluate the model once.
        """
        # expand_params's ops, keeping the [1, *shape] step: the first ranking's parameters
        self._single = {n: p.unsqueeze(0) for n, p in init.items()}
        self._identical = {n: p.expand(self.batch, *p.shape[1:]) for n, p in self._single.items()}
        return self._identical

    def _reusing(self, params: Params) -> contextlib.AbstractContextManager[None]:
        """Passes over ``params`` inside this block share what the backend derives from them alone (the bmm
        backend's transposed weights; :meth:`Backend.reusing`), with the passes over the same dict before and
        after: the ranking at theta_k with the pruned step at theta_k, every piece of a chunked pass. The
        evaluator keeps it for the latest parameter dict only (as the error memo keeps its parameters)."""
        if self._views is None or self._views[0] is not params:
            self._views = (params, {})
        return self.backend.reusing(*self._views)

    # ------------------------------------------------------------------------------------ graph-free
    @torch.no_grad()
    def map_points(self, fn: PointFn, params: Params, capture: nn.Module | None = None) -> torch.Tensor:
        """``fn(pred [B, m, D], values [B, m, D], captured input of `capture` [B, m, F] or None) -> [B, m]``
        over the whole context in chunks, without a graph: ``[B, M]``."""
        with record_function("ecop.ranking"):
            return self._map_points(fn, params, capture)

    def _map_points(self, fn: PointFn, params: Params, capture: nn.Module | None) -> torch.Tensor:
        identical = params is self._identical and self.coords.ndim == 2
        if identical:
            params = self._single  # the first signal's parameters, [1, *shape] (no slicing)
        out = []
        with self._reusing(params):
            for coords, values in self._pieces(self.rank_chunk):
                pred, hidden = self.backend.graph_free(params, coords, capture, low_precision=True)
                if identical:
                    pred = pred.expand(self.batch, *pred.shape[1:])
                    hidden = hidden.expand(self.batch, *hidden.shape[1:]) if hidden is not None else None
                out.append(fn(pred, values, hidden))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def _pieces(self, chunk_size: int | None) -> list[Piece]:
        """``(coords, values)`` of the context in pieces of ``chunk_size`` points (one piece: the tensors).

        The slices are made once per evaluator and chunk size (every bootstrap pass reads the same pieces).
        """
        memo = self._pieces_memo.get(chunk_size)
        if memo is not None and memo[0] is self.coords and memo[1] is self.values:
            return memo[2]
        chunks = point_chunks(self.num_points, chunk_size)
        if len(chunks) == 1:
            pieces = [(self.coords, self.values)]
        else:
            pieces = [(coords_chunk(self.coords, chunk), self.values[:, chunk]) for chunk in chunks]
        self._pieces_memo[chunk_size] = (self.coords, self.values, pieces)
        return pieces

    def errors(self, params: Params) -> torch.Tensor:
        """Per-point losses times D, ``[B, M]``, unweighted, without a graph (for MSE the squared errors
        ``||f(x) - y||^2``)."""
        if self._errors_memo is None or self._errors_memo[0] is not params:
            self._errors_memo = (
                params,
                self.map_points(lambda pred, values, _: self.loss_fn.summed(pred, values), params),
            )
        return self._errors_memo[1]

    def full_loss(self, errors: torch.Tensor) -> torch.Tensor:
        """``[B]`` full-context loss from the per-point :meth:`errors` ``[B, M]``."""
        if self._norm is None:
            return errors.sum(dim=1) / (self.num_points * self.channels)
        assert self.weights is not None
        return (errors * self.weights).sum(dim=1) / self._norm

    @torch.no_grad()
    def mean_floor(self) -> torch.Tensor:
        """``[B]`` full-context MSE of the trivial fit: each signal's own (weighted) mean value, per channel,
        predicted at every point. A fit no better than this has learned nothing about the signal's shape."""
        if self.weights is None:  # the per-channel variance, averaged over channels
            return torch.var(self.values, dim=1, correction=0).mean(dim=-1)
        weights = self.weights.unsqueeze(-1)
        mean = (self.values * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)
        return self.full_loss((self.values - mean).square().sum(dim=-1))

    def selected_loss(self, errors: torch.Tensor, pruned_idx: Points) -> torch.Tensor:
        """``[B]`` loss of the pruned context from the per-point losses ``errors`` of its points ``[B, k]``."""
        if self.weights is None:
            return errors.mean(dim=1) / self.channels
        weights = self.selected_weights(pruned_idx)
        return (errors * weights).sum(dim=1) / (weights.sum(dim=1) * self.channels)

    def selected_weights(self, pruned_idx: Points) -> torch.Tensor:
        """``[B, k]`` weights of the points ``pruned_idx`` (the batch must have weights)."""
        assert self.weights is not None
        if isinstance(pruned_idx, AllPoints):
            return self.weights
        return torch.gather(self.weights, 1, pruned_idx)

    def full_grad(self, params: Params, *, with_shared: bool = False, low_precision: bool = False) -> FullGrad:
        """Per-signal full-context MSE and its gradient, chunked, leaving no graph (params are detached).

        Args:
            params: name -> ``[B, *shape]``.
            with_shared: also the per-signal gradient w.r.t. the shared trainable parameters.
            low_precision: the forward may run in the backend's ``graph_free_dtype`` (bootstrap passes).
        """
        low_precision = low_precision and self.backend.graph_free_dtype is not None
        with _grad_leaves(params) as leaves:
            return self._full_grad(params, leaves, with_shared=with_shared, low_precision=low_precision)

    def _full_grad(self, params: Params, leaves: Params, *, with_shared: bool, low_precision: bool) -> FullGrad:
        if with_shared:  # per-signal copies, so that each signal's gradient w.r.t. them comes out separately
            for n, p in self.shared.items():
                leaves[n] = p.detach().expand(self.batch, *p.shape).clone().requires_grad_(True)
        inputs = list(leaves.values())
        sums: list[torch.Tensor] = []
        scale = self.num_points * self.channels
        chunk_errors = []
        with torch.enable_grad(), self._reusing(leaves):
            for chunk, (coords, values) in zip(
                point_chunks(self.num_points, self.free_chunk), self._pieces(self.free_chunk), strict=True
            ):
                pred = self.backend.graph_free(leaves, coords, low_precision=low_precision)[0]
                errors = self.loss_fn.summed(pred, values)
                total = errors.sum() / scale if self.weights is None else self._weighted_sum(errors, chunk)
                chunk_grads = list(torch.autograd.grad(total, inputs, allow_unused=True, materialize_grads=True))
                if sums:
                    torch._foreach_add_(sums, chunk_grads)
                else:
                    sums = _laid_out_like(chunk_grads, inputs)
                chunk_errors.append(errors.detach())
        grads = dict(zip(leaves, sums, strict=True))
        errors = chunk_errors[0] if len(chunk_errors) == 1 else torch.cat(chunk_errors, dim=1)
        result = FullGrad(
            loss=self.full_loss(errors),
            grads={n: g for n, g in grads.items() if n in params},
            errors=errors,
            shared_grads={n: g for n, g in grads.items() if n not in params},
            low_precision=low_precision,
        )
        self._errors_memo = (params, errors)  # a ranking at these parameters reuses this pass
        return result

    def _weighted_sum(self, errors: torch.Tensor, chunk: slice) -> torch.Tensor:
        """The chunk's share of the batch's summed full-context loss (weights normalised per signal)."""
        assert self.weights is not None and self._norm is not None
        return (errors * self.weights[:, chunk] / self._norm.unsqueeze(1)).sum()

    # --------------------------------------------------------------------------------------- with graph
    def loss(self, params: Params, pruned_idx: Points, *, graph_free: bool = False) -> torch.Tensor:
        """Sum over signals of each signal's MSE on its pruned context ``[B, k]`` (or ``ALL_POINTS``).

        Summing per-signal means makes the gradient w.r.t. the batched ``params`` the per-signal gradients.
        ``graph_free``: the caller's graph will not reach theta_0, so the backend's compiled path may be used.
        It stays in the model's dtype even with ``graph_free_dtype`` set: at test time this gradient's norm is a
        step size (the norm scale) or the step itself, and once residuals fall below bf16's resolution the
        rounding of the predictions inflates it (bf16 here cost 11 dB at test time; docs/benchmarks.md).
        """
        return _batch_total(*self.signal_losses(params, pruned_idx, graph_free=graph_free))

    def signal_losses(
        self, params: Params, pruned_idx: Points, *, graph_free: bool = False
    ) -> tuple[torch.Tensor, int | None]:
        """``[B]`` each signal's loss on its pruned context, and the channel count it is still to be divided by
        (None: already divided, with weights). :meth:`loss` divides once, after summing over signals."""
        if self.weights is not None:
            with self._reusing(params):
                return weighted_graph_loss(self, params, pruned_idx, graph_free=graph_free), None
        coords, values = gather_points(self.coords, pruned_idx), gather_points(self.values, pruned_idx)
        with self._reusing(params):
            pred = self.backend.graph_free(params, coords)[0] if graph_free else self.backend(params, coords)
        return self.loss_fn.summed(pred, values).mean(dim=1), self.channels

    def grad(self, params: Params, pruned_idx: Points) -> Params:
        """Graph-free per-signal gradient of the pruned-context MSE at ``params``."""
        with _grad_leaves(params) as leaves, torch.enable_grad():
            grads = torch.autograd.grad(
                self.loss(leaves, pruned_idx, graph_free=True),
                list(leaves.values()),
                allow_unused=True,
                materialize_grads=True,
            )
        return dict(zip(leaves, grads, strict=True))

    def sgd_step(
        self,
        params: Params,
        pruned_idx: Points,
        rates: Rates,
        *,
        create_graph: bool = True,
        step_losses: list[torch.Tensor] | None = None,
    ) -> Params:
        """``theta - rate * grad MSE(theta; pruned)`` for every adapted parameter (paper Eq. 4).

        With ``create_graph`` the step is differentiable (second-order MAML); without it the gradient is a
        constant (first order). With ``checkpoint`` the step's graph is recomputed in the backward pass.
        ``step_losses``: a list that receives the ``[B]`` per-signal loss the step differentiates, with its graph.
        """
        if not (self.checkpoint and create_graph):
            return _sgd_step(self, params, pruned_idx, rates, create_graph, step_losses)
        names = list(params)

        def step(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            losses: list[torch.Tensor] | None = [] if step_losses is not None else None
            stepped = _sgd_step(self, dict(zip(names, flat, strict=True)), pruned_idx, rates, True, losses)
            return (*stepped.values(), *(losses or []))

        out = activation_checkpoint(step, *params.values(), use_reentrant=False)
        if step_losses is not None:
            step_losses.append(out[-1])
            out = out[:-1]
        return dict(zip(names, out, strict=True))

    def full_mse(self, params: Params, *, at_params: FullGrad | None = None) -> torch.Tensor:
        """``[B]`` full-context MSE at ``params`` (theta_K), differentiable back to theta_0.

        Without ``chunk_size`` it is a forward with a graph over the whole context. With it, a surrogate
        ``mse + <theta_K, g> - stopgrad(<theta_K, g>)`` per signal (g: the MSE's gradient, from one chunked
        graph-free pass, including the shared parameters'): same value, same gradient, no full-context graph.
        ``at_params``: that pass, if the caller already made it at ``params`` (``full_grad(params,
        with_shared=True)``); one made in low precision is not used (the outer loss keeps the model's dtype).
        """
        with record_function("ecop.outer_loss"):
            return self._full_mse(params, at_params)

    def _full_mse(self, params: Params, at_params: FullGrad | None) -> torch.Tensor:
        if self.chunk_size is None and self.weights is not None:
            with self._reusing(params):
                return weighted_graph_loss(self, params, ALL_POINTS, graph_free=False)
        if self.chunk_size is None:
            with self._reusing(params):
                pred = self.backend(params, self.coords)
            return self.loss_fn.summed(pred, self.values).mean(dim=1) / self.channels
        reusable = at_params is not None and not at_params.low_precision
        full = at_params if reusable else self.full_grad(params, with_shared=True)
        assert full is not None
        inner = sum(
            ((p * full.grads[n]).flatten(1).sum(1) for n, p in params.items()),
            start=full.loss.new_zeros(self.batch),
        )
        for n, p in self.shared.items():
            inner = inner + (p.unsqueeze(0) * full.shared_grads[n]).flatten(1).sum(1)
        return full.loss + inner - inner.detach()


@contextlib.contextmanager
def _grad_leaves(params: Params) -> Iterator[Params]:
    """``params`` as a new dict of tensors that require grad and carry no history (``p.detach()
    .requires_grad_()``), for one graph-free gradient pass. A tensor that already is a leaf without grad (what
    the bootstrap's and test-time fitting's ``no_grad`` updates make) is flagged in place for the block and
    unflagged after, which spares a ``detach`` op per parameter and pass. The dict is new, so views the backend
    derived from ``params`` (no grad) are never reused for the leaves."""
    flagged = [p for p in params.values() if p.is_leaf and not p.requires_grad]
    ids = {id(p) for p in flagged}
    try:
        for p in flagged:
            p.requires_grad_(True)
        yield {n: p if id(p) in ids else p.detach().requires_grad_(True) for n, p in params.items()}
    finally:
        for p in flagged:
            p.requires_grad_(False)


def _laid_out_like(grads: list[torch.Tensor], leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """The first piece's gradients, each laid out like its parameter (the layout decides later products'
    rounding): one that is not is added onto zeros of the parameter's layout, all such in one op."""
    wrong = [i for i, (g, leaf) in enumerate(zip(grads, leaves, strict=True)) if g.stride() != leaf.stride()]
    if not wrong:
        return grads
    zeros = [torch.zeros_like(leaves[i]) for i in wrong]
    torch._foreach_add_(zeros, [grads[i] for i in wrong])
    out = list(grads)
    for i, z in zip(wrong, zeros, strict=True):
        out[i] = z
    return out


def _batch_total(losses: torch.Tensor, channels: int | None) -> torch.Tensor:
    """The sum over signals of ``[B]`` losses from :meth:`ContextEvaluator.signal_losses`, divided by ``channels``
    once (after the sum, as the loss has always been computed: the same rounding)."""
    return losses.sum() if channels is None else losses.sum() / channels


def _sgd_step(
    ctx: ContextEvaluator,
    params: Params,
    pruned_idx: Points,
    rates: Rates,
    create_graph: bool,
    step_losses: list[torch.Tensor] | None = None,
) -> Params:
    with record_function("ecop.pruned_forward"):
        losses, channels = ctx.signal_losses(params, pruned_idx)
        loss = _batch_total(losses, channels)
    if step_losses is not None:
        step_losses.append(losses if channels is None else losses / channels)
    with record_function("ecop.inner_gradient"):
        grads = torch.autograd.grad(
            loss,
            list(params.values()),
            create_graph=create_graph,
            retain_graph=True if step_losses is not None else None,  # first order: the step loss's graph is kept
            allow_unused=True,
            materialize_grads=True,
        )
    return sgd_update(params, dict(zip(params, grads, strict=True)), rates)
