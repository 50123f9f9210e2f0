"""The extension namespace: the building blocks behind the learner and the adapter, for writing your own
selection or scaling rule, backend, baseline, variant of the algorithm or benchmark.

Everything here is documented and kept stable like the top-level API, but most users never need it: the
top-level :mod:`ecop_wrap` is the whole API of meta-learning and fitting. Nothing outside the package imports
``ecop_wrap._src``; whatever a rule, a baseline or a benchmark needs is exported here.

* evaluation: :class:`Backend` and :func:`make_backend` (with a :class:`Precision` policy), and
  :class:`ContextEvaluator`, the model on one batch's context with the memory modes built in;
* the algorithm's steps (:func:`select`, :func:`inner_loop`, :func:`bootstrap`, :func:`param_distance`) and the
  one parameter update :func:`sgd_update`;
* the built-in rules, to subclass or wrap, and the numerics every part shares.
"""

from ._src.algorithm import bootstrap, inner_loop, param_distance, select
from ._src.backends import BACKENDS, BATCHING_MODES, Backend, Precision, make_backend
from ._src.builder import resolve_adapted
from ._src.config import ALGORITHM_KEYS, TEST_TIME_KEYS
from ._src.evaluator import ContextEvaluator, FullGrad
from ._src.losses import PointLoss, make_loss
from ._src.numerics import (
    ALL_POINTS,
    AllPoints,
    Points,
    gather_points,
    global_norm,
    num_selected,
    per_signal,
    point_chunks,
    sgd_update,
    squared_errors,
    topk_indices,
    weighted_topk,
)
from ._src.rates import InnerRates
from ._src.rules import (
    ErrorSelection,
    GradNCPSelection,
    LossRatioScaling,
    MixedSelection,
    NormScaling,
    NoScaling,
    RandomSelection,
    SoftSelection,
    make_scaling,
    make_selection,
)

__all__ = [
    "ALGORITHM_KEYS",
    "ALL_POINTS",
    "BACKENDS",
    "BATCHING_MODES",
    "TEST_TIME_KEYS",
    "AllPoints",
    "Backend",
    "ContextEvaluator",
    "ErrorSelection",
    "FullGrad",
    "GradNCPSelection",
    "InnerRates",
    "LossRatioScaling",
    "MixedSelection",
    "NoScaling",
    "NormScaling",
    "PointLoss",
    "Points",
    "Precision",
    "RandomSelection",
    "SoftSelection",
    "bootstrap",
    "gather_points",
    "global_norm",
    "inner_loop",
    "make_backend",
    "make_loss",
    "make_scaling",
    "make_selection",
    "num_selected",
    "param_distance",
    "per_signal",
    "point_chunks",
    "resolve_adapted",
    "select",
    "sgd_update",
    "squared_errors",
    "topk_indices",
    "weighted_topk",
]
