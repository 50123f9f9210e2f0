"""Selection and test-time scaling rules: small objects registered by name, so users can bring their own.

A **selection rule** scores every context point of every signal without a graph; the pruned context of a
step is the top ``num_selected(M, gamma)`` points by score (paper Eq. 2-3). A **scaling rule** gives the
factor ``[B]`` that test-time fitting multiplies each signal's full-context gradient by (paper Eq. 6).

Register a rule with :func:`register_selection` / :func:`register_scaling`; then pass its name as
``selection=`` / ``scaling=`` anywhere the built-in names are accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..typing import Params
from .numerics import ALL_POINTS, global_norm, squared_errors
from .validation import register_in

if TYPE_CHECKING:
    from .evaluator import ContextEvaluator, FullGrad

__all__ = [
    "SCALING_RULES",
    "SELECTION_RULES",
    "ErrorSelection",
    "GradNCPSelection",
    "LossRatioScaling",
    "MixedSelection",
    "NoScaling",
    "NormScaling",
    "RandomSelection",
    "ScalingRule",
    "SelectionRule",
    "SoftSelection",
    "make_scaling",
    "make_selection",
    "register_scaling",
    "register_selection",
]


@runtime_checkable
class SelectionRule(Protocol):
    """Scores context points; higher scores are kept first.

    A rule whose scores draw from the ``generator`` should set a class attribute ``uses_generator = True``:
    a multi-rank checkpoint can then only resume with the same number of ranks (each rank's random stream).
    """

    name: str
    """The name it is registered under (recorded in the configuration and in checkpoints)."""

    def scores(self, ctx: ContextEvaluator, params: Params, generator: torch.Generator) -> torch.Tensor:
        """Scores ``[B, M]`` of every point at ``params`` (name -> ``[B, *shape]``), computed without a graph.

        ``ctx.errors(params)`` gives the squared errors ``[B, M]`` and ``ctx.map_points(fn, params)`` any other
        per-point quantity of the predictions; ``generator`` is the learner's seeded random source.
        """
        ...


@runtime_checkable
class ScalingRule(Protocol):
    """The test-time factor by which each signal's full-context gradient is multiplied."""

    name: str
    needs_selection: bool
    """Whether :meth:`scale` needs the pruned context (if not, no selection is run and ``pruned_idx`` is None)."""

    def scale(
        self, ctx: ContextEvaluator, params: Params, full: FullGrad, pruned_idx: torch.Tensor | None
    ) -> torch.Tensor:
        """Scale ``[B]`` given the full-context MSE, gradient and errors ``full`` and the pruned set ``[B, k]``."""
        ...


SELECTION_RULES: dict[str, Callable[..., SelectionRule]] = {}
SCALING_RULES: dict[str, Callable[[], ScalingRule]] = {}


def register_selection(name: str, factory: Callable[..., SelectionRule], *, overwrite: bool = False) -> None:
    """Make ``selection=name`` available: ``factory(model, **options)`` returns the rule.

    Args:
        name: the name users pass as ``selection=``.
        factory: called with the model (and ``layer=`` for rules that take a layer) to build the rule.
        overwrite: replace an existing rule of that name (else that is a ``ValueError``).
    """
    register_in(SELECTION_RULES, "selection rule", name, factory, overwrite)


def register_scaling(name: str, factory: Callable[[], ScalingRule], *, overwrite: bool = False) -> None:
    """Make ``scaling=name`` available: ``factory()`` returns the rule (see :func:`register_selection`)."""
    register_in(SCALING_RULES, "scaling rule", name, factory, overwrite)


def check_rule_name(kind: str, name: Any, registry: dict[str, Any]) -> str:
    """``name`` must be a registered rule name of this kind."""
    if not isinstance(name, str) or name not in registry:
        raise ValueError(
            f"{kind} must be one of {tuple(registry)} (or a name registered with register_{kind}), got {name!r}"
        )
    return name


def make_selection(name: str, model: nn.Module, *, layer: nn.Module | None = None) -> SelectionRule:
    """The selection rule registered as ``name`` for ``model`` (``layer`` only for rules that take one)."""
    factory = SELECTION_RULES[check_rule_name("selection", name, SELECTION_RULES)]
    return factory(model, layer=layer) if layer is not None else factory(model)


def make_scaling(name: str) -> ScalingRule:
    """The scaling rule registered as ``name``."""
    return SCALING_RULES[check_rule_name("scaling", name, SCALING_RULES)]()


# ---------------------------------------------------------------------------------------------- selection
class ErrorSelection:
    """The paper's rule: keep the points with the largest error ``||f(x) - y||`` (squared, same order); with
    another loss, the largest per-point loss; with weights, the largest ``w_j l_j``."""

    name = "error"

    def __init__(self, model: nn.Module | None = None, layer: nn.Module | None = None) -> None:
        del model, layer  # every point's error needs neither

    def scores(self, ctx: ContextEvaluator, params: Params, generator: torch.Generator) -> torch.Tensor:
        errors = ctx.errors(params)
        return errors if ctx.weights is None else errors * ctx.weights


class RandomSelection:
    """A uniformly random subset of the same size (the paper's ablation)."""

    name = "random"
    uses_generator = True

    def __init__(self, model: nn.Module | None = None, layer: nn.Module | None = None) -> None:
        del model, layer  # every point's error needs neither

    def scores(self, ctx: ContextEvaluator, params: Params, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(ctx.values.shape[:2], generator=generator, device=ctx.values.device)


class SoftSelection:
    """Soft mining: a random subset drawn without replacement with probabilities proportional to
    ``error ** (1 / temperature)`` (with weights, ``w_j l_j``), by the Gumbel-top-k trick: the top ``k`` of
    ``log(error) / temperature + Gumbel noise``. Hard points are kept most often, but every point with a
    non-zero error can be drawn (soft mining, EVOS and NINT also keep a part of the context that error ranking
    would never pick). ``temperature -> 0`` is the paper's rule, large temperatures uniform sampling.

    Register other temperatures with ``register_selection("soft2", lambda model, layer=None:
    SoftSelection(model, temperature=2.0))``.
    """

    name = "soft"
    uses_generator = True

    def __init__(self, model: nn.Module | None = None, layer: nn.Module | None = None, temperature: float = 1.0):
        del model, layer
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def scores(self, ctx: ContextEvaluator, params: Params, generator: torch.Generator) -> torch.Tensor:
        errors = ErrorSelection().scores(ctx, params, generator)  # the paper's (weighted) per-point errors
        tiny = torch.finfo(errors.dtype).tiny
        uniform = torch.rand(errors.shape, generator=generator, device=errors.device, dtype=errors.dtype)
        gumbel = -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))
        return errors.clamp_min(tiny).log() / self.temperature + gumbel


class MixedSelection:
    """Error ranking with an unbiased part (as EVOS and NINT keep one): every point is scored by its error's rank
    in its signal, ``rank / M`` in ``(0, 1]``, except that, independently with probability ``uniform_share``, a
    point is scored by a uniform draw from ``[0, 1)`` instead. The draws follow the ranks' distribution, so in
    expectation a ``uniform_share`` of the kept points are drawn uniformly (whatever their error) and the rest are
    the points of largest error among the others. ``uniform_share=0`` is the paper's rule, ``1`` uniform
    sampling. Points of weight 0 (a ragged batch's padding) come last.

    Register other shares with ``register_selection("mixed25", lambda model, layer=None:
    MixedSelection(model, uniform_share=0.25))``.
    """

    name = "mixed"
    uses_generator = True

    def __init__(self, model: nn.Module | None = None, layer: nn.Module | None = None, uniform_share: float = 0.5):
        del model, layer
        if not 0.0 <= uniform_share <= 1.0:
            raise ValueError(f"uniform_share must be in [0, 1], got {uniform_share!r}")
        self.uniform_share = float(uniform_share)

    def scores(self, ctx: ContextEvaluator, params: Params, generator: torch.Generator) -> torch.Tensor:
        errors = ErrorSelection().scores(ctx, params, generator)  # [B, M], weighted
        num_points = errors.shape[1]
        steps = torch.arange(1, num_points + 1, device=errors.device, dtype=errors.dtype) / num_points
        ranks = torch.empty_like(errors).scatter_(1, errors.argsort(dim=1), steps.expand_as(errors))
        draws = torch.rand(errors.shape, generator=generator, device=errors.device, dtype=errors.dtype)
        uniform = torch.rand(errors.shape, generator=generator, device=errors.device) < self.uniform_share
        if ctx.weights is None:
            return torch.where(uniform, draws, ranks)
        padding = ctx.weights <= 0  # ranked lowest (weighted error 0): draw over the real points' ranks only
        low = padding.sum(dim=1, keepdim=True).to(errors.dtype) / num_points
        scores = torch.where(uniform, low + draws * (1.0 - low), ranks)
        return scores.masked_fill(padding, -1.0)  # padding last


class GradNCPSelection:
    """The authors' released code: rank by the norm of the per-point gradient w.r.t. the output layer.

    The squared norm is ``||e||^2 (||h||^2 + 1)`` with ``e`` the point's error and ``h`` the input of
    ``layer``: the gradient of ``||e||^2 / 2`` w.r.t. that layer's weight is ``e h^T`` and w.r.t. its bias
    ``e``. A frozen weight drops the ``||h||^2`` term, a missing or frozen bias the ``1``. This is the
    gradient only when the layer's output is the model's prediction (up to parameter-free additive terms
    such as SIREN's output offset). When the layer is not adapted per signal (``adapt=``), the score is used
    all the same, as a proxy for which points are hard.

    Args:
        model: the INR.
        layer: the scoring ``nn.Linear`` (default: the model's last ``nn.Linear``).
    """

    name = "gradncp"

    def __init__(self, model: nn.Module, layer: nn.Module | None = None) -> None:
        self.layer = _check_gradncp_layer(model, layer if layer is not None else _last_linear(model))
        self._weight_term = 1.0 if self.layer.weight.requires_grad else 0.0
        bias = self.layer.bias
        self._bias_term = 1.0 if bias is not None and bias.requires_grad else 0.0

    def scores(self, ctx: ContextEvaluator, params: Params, generator: torch.Generator) -> torch.Tensor:
        loss = ctx.loss_fn

        def point_scores(pred: torch.Tensor, values: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
            assert hidden is not None
            # ||dl/df||^2: for MSE (2e) the closed form ||e||^2, the same order
            grad_sq = squared_errors(pred, values) if loss.is_mse else loss.pred_grad(pred, values).pow(2).sum(-1)
            return grad_sq * (self._weight_term * hidden.pow(2).sum(-1) + self._bias_term)

        scores = ctx.map_points(point_scores, params, capture=self.layer)
        return scores if ctx.weights is None else scores * ctx.weights.pow(2)


def _check_gradncp_layer(model: nn.Module, layer: nn.Module) -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"gradncp_layer must be an nn.Linear (the model's output layer), got {type(layer).__name__}")
    if not any(m is layer for m in model.modules()):
        raise ValueError("gradncp_layer must be a submodule of the model (e.g. model.output), got a foreign layer")
    if not any(p.requires_grad for p in layer.parameters()):
        raise ValueError("gradncp_layer has no trainable parameters; GradNCP scores need its gradient")
    return layer


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "selection='gradncp' ranks points by the gradient w.r.t. the model's last nn.Linear, but the model "
            "has none; pass gradncp_layer=<an nn.Linear of the model> or use selection='error'"
        )
    return linears[-1]


# ------------------------------------------------------------------------------------------------ scaling
class NormScaling:
    """Eq. 6: ``||g_pruned|| / ||g_full||``, so each step is as large as the pruned steps of training."""

    name = "norm"
    needs_selection = True

    def scale(
        self, ctx: ContextEvaluator, params: Params, full: FullGrad, pruned_idx: torch.Tensor | None
    ) -> torch.Tensor:
        pruned_grads = ctx.grad(params, ALL_POINTS if pruned_idx is None else pruned_idx)
        return global_norm(list(pruned_grads.values())) / (global_norm(list(full.grads.values())) + 1e-16)


class LossRatioScaling:
    """Appendix B.2's cheaper ratio ``loss(pruned) / loss(full)`` (no extra backward pass)."""

    name = "loss"
    needs_selection = True

    def scale(
        self, ctx: ContextEvaluator, params: Params, full: FullGrad, pruned_idx: torch.Tensor | None
    ) -> torch.Tensor:
        assert pruned_idx is not None
        pruned_loss = ctx.selected_loss(torch.gather(full.errors, 1, pruned_idx), pruned_idx)
        return pruned_loss / (full.loss + 1e-16)


class NoScaling:
    """Plain full-context SGD (the right choice for a model meta-learned without pruning)."""

    name = "none"
    needs_selection = False

    def scale(
        self, ctx: ContextEvaluator, params: Params, full: FullGrad, pruned_idx: torch.Tensor | None
    ) -> torch.Tensor:
        return torch.ones_like(full.loss)


register_selection("error", ErrorSelection)
register_selection("random", RandomSelection)
register_selection("soft", SoftSelection)
register_selection("mixed", MixedSelection)
register_selection("gradncp", GradNCPSelection)
register_scaling("norm", NormScaling)
register_scaling("loss", LossRatioScaling)
register_scaling("none", NoScaling)
