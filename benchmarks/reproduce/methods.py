"""The method table: every method's training and test-time settings in one row (:data:`METHOD_TABLE`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import RunConfig

Hyper = dict[str, Any]
"""``ContextPruningMetaLearner`` settings of a trained method (for Reptile only ``K``)."""


@dataclass(frozen=True)
class FitSetting:
    """How a model is fitted at test time (stored as the ``test`` entry of every method's results).

    ``gamma`` and ``selection`` only matter for scaled or pruned-context fits; plain full-context fits keep
    the defaults.
    """

    lr: float | None
    """The test-time step size; None: the learner's meta-learned inner rates."""
    scaling: str = "none"
    """A registered scaling rule, or ``"calibrated"``: the rule ``calibrate_adapter`` picks on training signals."""
    context: str = "full"
    gamma: float = 0.25
    selection: str = "error"


@dataclass(frozen=True)
class Training:
    """A trained method's settings resolved against a run: what builds its meta-learner.

    Attributes:
        hyper: :class:`ContextPruningMetaLearner` settings (for Reptile only ``K``), logged and stored as given.
        inner_lr, outer_lr: the inner step size and the outer Adam lr.
        reptile: train with :class:`baselines.Reptile` instead of the library's learner.
        adapt: the parameters adapted per signal (None: all).
    """

    hyper: Hyper
    inner_lr: float
    outer_lr: float
    reptile: bool = False
    adapt: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Method:
    """One method of the comparison: how its model is trained and how it is fitted at test time.

    Attributes:
        name: the method's name in ``--methods``, ``--outer-lr-for`` and the results.
        train: the run's settings -> the training hyper-parameters (see :attr:`Training.hyper`); None for a
            method that is not trained itself.
        learn_inner_lr: meta-learn the inner step sizes (``"per_tensor"`` or ``"per_element"``; the test-time
            fit then uses them); None: fixed step sizes.
        reptile: trained with Reptile instead of the library's learner.
        trained_as: for an evaluation-only method, the method whose trained model it tests (None with
            ``train=None``: the untrained initialisation).
        tuned_lr: use ``--learnit-tuned-inner-lr`` instead of ``--inner-lr``, in training and at test time.
        test_scaling, test_context, test_selection: the test-time fit (see :class:`FitSetting`).
        cost: rough relative CPU cost per outer step (measured at 32x32, SIREN 3x128), to balance ``--workers``.
        model: a key of :data:`models.MODELS` (``"siren"``, ``"modulated"``, ``"nerv"``, ``"hashgrid"``).
        adapt: the parameters adapted per signal (None: all).
    """

    name: str
    train: Callable[[RunConfig], Hyper] | None = None
    learn_inner_lr: str | None = None
    reptile: bool = False
    trained_as: str | None = None
    tuned_lr: bool = False
    test_scaling: str = "none"
    test_context: str = "full"
    test_selection: str = "error"
    cost: float = 0.0
    model: str = "siren"
    adapt: tuple[str, ...] | None = None

    @property
    def learned_rates(self) -> bool:
        """Whether the method meta-learns its inner step sizes (then its test-time fit uses them)."""
        return self.learn_inner_lr is not None

    def inner_lr(self, config: RunConfig) -> float:
        """The inner step size of this method in a run (``--inner-lr-for`` overrides the shared flags)."""
        own = dict(config.inner_lr_for)
        if self.name in own:
            return own[self.name]
        if self.trained_as is not None and self.trained_as in own and not self.tuned_lr:
            return own[self.trained_as]
        return config.learnit_tuned_inner_lr if self.tuned_lr else config.inner_lr

    def training(self, config: RunConfig) -> Training:
        """This method's training settings in a run (trained methods only)."""
        if self.train is None:
            raise ValueError(f"{self.name} is not trained")
        hyper = self.train(config)
        if self.learn_inner_lr is not None:
            hyper = {**hyper, "learn_inner_lr": self.learn_inner_lr}
        if "boot_lr" in hyper:
            hyper = {**hyper, "boot_lr": config.boot_lr_of(self.name)}
        own_lam = dict(config.lam_for)
        if self.name in own_lam and hyper.get("L", 0) > 0:
            hyper = {**hyper, "lam": own_lam[self.name]}
        step_loss = dict(config.step_loss_for).get(self.name)
        if step_loss is not None and not self.reptile:
            hyper = {**hyper, "step_loss": step_loss}
        backoff = dict(config.divergence_backoff_for).get(self.name, config.divergence_backoff)
        if backoff is not None and not self.reptile:
            hyper = {**hyper, "divergence_backoff": backoff}
        return Training(hyper, self.inner_lr(config), config.outer_lr_of(self.name), self.reptile, self.adapt)

    def fit_setting(self, config: RunConfig) -> FitSetting:
        """This method's test-time fit in a run (every method takes ``--test-steps`` steps)."""
        lr = None if self.learned_rates else self.inner_lr(config)
        if self.test_scaling == "none" and self.test_context == "full":
            return FitSetting(lr)
        return FitSetting(lr, self.test_scaling, self.test_context, config.gamma, self.test_selection)


# ------------------------------------------------------------------------------- training settings
def _full_context(steps: int, first_order: bool = False) -> Hyper:
    """MAML on the full context: no pruning, no bootstrap."""
    return {"gamma": 1.0, "K": steps, "L": 0, "lam": 0.0, **({"first_order": True} if first_order else {})}


def _pruned(config: RunConfig, selection: str = "error", bootstrap: bool = True) -> Hyper:
    """``--ecop-steps`` steps on a ``--gamma`` fraction of the context, with or without the bootstrap."""
    chosen = {"selection": selection} if selection != "error" else {}
    boot = config.bootstrap if bootstrap else {"L": 0, "lam": 0.0}
    return {"gamma": config.gamma, "K": config.ecop_steps, **chosen, **boot}


def ecop(config: RunConfig) -> Hyper:
    """ECoP: error-based pruning (or ``--selection``) to ``--gamma`` for ``--ecop-steps`` steps, with the bootstrap."""
    return _pruned(config, selection=config.selection)


def learnit(config: RunConfig) -> Hyper:
    """Learnit: second-order MAML on the full context for ``gamma * --ecop-steps`` steps (equal memory)."""
    return _full_context(config.learnit_steps)


def fomaml(config: RunConfig) -> Hyper:
    """First-order MAML on the full context for ``--ecop-steps`` steps."""
    return _full_context(config.ecop_steps, first_order=True)


def reptile(config: RunConfig) -> Hyper:
    """Reptile's ``K``: ``--ecop-steps`` full-context SGD steps."""
    return {"K": config.ecop_steps}


def random_pruning(config: RunConfig) -> Hyper:
    """As :func:`ecop`, with random subsets instead of the largest errors."""
    return _pruned(config, "random")


def ecop_no_bootstrap(config: RunConfig) -> Hyper:
    """As :func:`ecop` with ``L = 0, lam = 0``."""
    return _pruned(config, bootstrap=False)


# Every method once, in the order they run and are reported. Equal memory: the pruned methods keep gamma * M
# points for K steps, the second-order full-context ones take gamma * K steps, first-order ones hold one step.
_METHOD_ROWS = (
    Method("random_init"),
    Method("fomaml", fomaml, cost=0.6),
    Method("reptile", reptile, reptile=True, cost=0.6),
    Method("learnit", learnit, cost=0.5),
    Method("learnit_tuned_lr", learnit, tuned_lr=True, cost=0.5),
    Method("random_pruning", random_pruning, test_scaling="norm", test_selection="random", cost=0.66),
    Method("ecop", ecop, test_scaling="norm", cost=0.8),
    Method("ecop_no_bootstrap", ecop_no_bootstrap, test_scaling="norm", cost=0.7),
    Method("ecop_test_unscaled", trained_as="ecop"),
    Method("ecop_test_pruned", trained_as="ecop", test_context="pruned"),
    Method("ecop_test_unscaled_tuned", trained_as="ecop", tuned_lr=True),
    # Beyond the paper: meta-learned inner step sizes (MAML++ per tensor and step, Meta-SGD per element) ...
    Method("ecop_lr_tensor", ecop, learn_inner_lr="per_tensor", test_scaling="norm", cost=0.8),
    Method("ecop_lr_element", ecop, learn_inner_lr="per_element", test_scaling="norm", cost=0.8),
    Method("learnit_lr_tensor", learnit, learn_inner_lr="per_tensor", cost=0.5),
    Method("learnit_lr_element", learnit, learn_inner_lr="per_element", cost=0.5),
    # ... and latent-only adaptation of a ModulatedSiren (functa-style), with per-element learned rates
    Method(
        "ecop_latent",
        ecop,
        learn_inner_lr="per_element",
        test_scaling="norm",
        cost=0.8,
        model="modulated",
        adapt=("latent",),
    ),
    Method("learnit_latent", learnit, learn_inner_lr="per_element", cost=0.5, model="modulated", adapt=("latent",)),
    # The paper's second architecture (video: a context point is a frame) and a hash-grid encoding
    Method("nerv_ecop", ecop, test_scaling="norm", cost=0.4, model="nerv"),
    Method("nerv_learnit", learnit, cost=0.3, model="nerv"),
    Method("hashgrid_ecop", ecop, test_scaling="norm", cost=0.8, model="hashgrid"),
    Method("hashgrid_learnit", learnit, cost=0.5, model="hashgrid"),
)


def _calibrated(source: Method) -> Method:
    """``source``'s trained model, fitted under the test rule :func:`ecop_wrap.calibrate_adapter` picks on
    training signals (issue 24: Eq. 6 is not the best rule for every model)."""
    return Method(
        f"{source.name}_test_calibrated",
        trained_as=source.name,
        learn_inner_lr=source.learn_inner_lr,
        test_scaling="calibrated",
        model=source.model,
        adapt=source.adapt,
    )


_CALIBRATED_OF = ("ecop", "ecop_lr_tensor", "ecop_latent", "nerv_ecop", "hashgrid_ecop")
_METHOD_ROWS += tuple(_calibrated(m) for m in _METHOD_ROWS if m.name in _CALIBRATED_OF)
METHOD_TABLE: dict[str, Method] = {m.name: m for m in _METHOD_ROWS}
METHODS = tuple(METHOD_TABLE)


# ------------------------------------------------------------------------ command-line values
def method_rate(text: str) -> tuple[str, float]:
    """``METHOD=VALUE`` (``--outer-lr-for`` and the other per-method flags) -> ``(method, value)``."""
    name, _, value = text.partition("=")
    if name not in METHODS or not value:
        raise argparse.ArgumentTypeError(f"expected METHOD=LR with METHOD in {METHODS}, got {text!r}")
    return name, float(value)


def method_list(text: str) -> list[str]:
    """``--methods``: comma-separated method names."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown methods {bad}; choose from {METHODS}")
    return names
