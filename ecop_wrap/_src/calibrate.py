"""Pick the test-time rule on training signals, at the end of meta-training.

The paper fits at test time on the full context with each step's gradient rescaled by
``||g_pruned|| / ||g_full||`` (Eq. 6). That ratio is about 2 for most models, so for a model whose inner lr
already sits near its stability limit (a hash grid) the doubled steps overshoot, and for others (a latent
modulation, the sphere fields) steps on the pruned context, as in training, fit better (docs/results.md, "Where
ECoP loses, and why"). :func:`calibrate_adapter` fits a set of signals the learner was meta-trained on (never
the test signals) under each candidate rule and returns the adapter of the best one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .adapter import GradScaledAdapter
from .learner import ContextPruningMetaLearner

__all__ = ["TEST_RULES", "Calibration", "calibrate_adapter"]

TEST_RULES: dict[str, dict[str, Any]] = {
    "norm": {"scaling": "norm"},
    "none": {"scaling": "none"},
    "loss": {"scaling": "loss"},
    "pruned": {"scaling": "none", "pruned_steps": -1},  # -1: every step (resolved against ``steps``)
}
"""The candidate test-time rules: GradScaledAdapter settings. ``"norm"``: Eq. 6 (the paper's); ``"none"``:
unscaled full-context steps; ``"loss"``: the loss ratio (Appendix B.2); ``"pruned"``: every step on the pruned
context, unscaled, as in training."""


@dataclass
class Calibration:
    """The outcome of :func:`calibrate_adapter`.

    Attributes:
        adapter: the adapter of the chosen rule.
        rule: its name in :data:`TEST_RULES`.
        scores: rule -> mean over the calibration signals of ``log(final loss)`` (lower is better; with the MSE
            it is ``-ln(10) / 10`` times the mean PSNR, up to a constant); ``inf`` where a fit was not finite.
    """

    adapter: GradScaledAdapter
    rule: str
    scores: dict[str, float]


def calibrate_adapter(
    learner: ContextPruningMetaLearner,
    signals: tuple[torch.Tensor, ...] | Iterable[tuple[torch.Tensor, ...]],
    *,
    rules: Sequence[str] = tuple(TEST_RULES),
    steps: int | None = None,
    **settings: Any,
) -> Calibration:
    """Fit ``signals`` under each test-time rule and keep the one with the lowest mean log final loss.

    Use signals the learner was meta-trained on (or a validation split), not the ones you will report on. Ties
    keep the earlier rule of ``rules`` (by default the paper's Eq. 6 first).

    Args:
        learner: the meta-trained learner (its learned rates, ``adapt`` and configuration are used).
        signals: a batch ``(coords, values[, weights])`` as :meth:`GradScaledAdapter.fit` takes it, or an
            iterable of such batches.
        rules: names of :data:`TEST_RULES` to compare.
        steps: test-time steps (default: the learner's ``K``).
        **settings: other :class:`GradScaledAdapter` arguments shared by every candidate (``lr``, ``gamma``,
            ``chunk_size``, ...).

    Returns:
        the chosen adapter, its rule and every rule's score.
    """
    if not isinstance(learner, ContextPruningMetaLearner):
        raise TypeError(f"learner must be a ContextPruningMetaLearner, got {type(learner).__name__}")
    unknown = [r for r in rules if r not in TEST_RULES]
    if unknown or not rules:
        raise ValueError(f"rules must be a non-empty subset of {tuple(TEST_RULES)}, got {list(rules)}")
    clashing = sorted({"scaling", "pruned_steps"} & set(settings))
    if clashing:
        raise TypeError(f"calibrate_adapter chooses {clashing} itself; pass rules= to restrict the choice")
    batches = [signals] if isinstance(signals, tuple) else list(signals)
    if not batches:
        raise ValueError("signals must hold at least one batch (coords, values[, weights])")
    steps = learner.config.K if steps is None else steps
    adapters = {rule: _adapter(learner, rule, steps, settings) for rule in rules}
    scores = {rule: _score(adapter, batches) for rule, adapter in adapters.items()}
    best = min(rules, key=lambda r: scores[r])  # min keeps the first of equal scores
    return Calibration(adapter=adapters[best], rule=best, scores=scores)


def _adapter(learner: ContextPruningMetaLearner, rule: str, steps: int, settings: dict[str, Any]) -> GradScaledAdapter:
    chosen = dict(TEST_RULES[rule])
    if chosen.get("pruned_steps") == -1:
        chosen["pruned_steps"] = steps
    return GradScaledAdapter(learner, steps=steps, **chosen, **settings)


def _score(adapter: GradScaledAdapter, batches: list[tuple[torch.Tensor, ...]]) -> float:
    """Mean over every signal of log(final loss); inf if a fit fails or is not finite."""
    logs = []
    for batch in batches:
        try:
            final = adapter.fit(batch).history["loss"][-1]
        except FloatingPointError:
            return math.inf
        logs.append(final.reshape(-1).double().clamp_min(torch.finfo(torch.float64).tiny).log())
    mean = float(torch.cat(logs).mean())
    return mean if math.isfinite(mean) else math.inf
