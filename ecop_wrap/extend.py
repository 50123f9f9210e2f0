"""The extension namespace: the building blocks behind the learner and the adapter, for writing your own
selection or scaling rule, backend, baseline or benchmark.

Everything here is documented and kept stable like the top-level API, but most users never need it: the
top-level :mod:`ecop_wrap` is the whole API of meta-learning and fitting. Nothing outside the package imports
``ecop_wrap._src``; whatever a rule, a baseline or a benchmark needs is exported here.
"""

from ._src.backends import BACKENDS, BATCHING_MODES, Backend, make_backend
from ._src.evaluator import ContextEvaluator, FullGrad
from ._src.numerics import (
    ALL_POINTS,
    gather_points,
    global_norm,
    num_selected,
    per_signal,
    point_chunks,
    squared_errors,
    topk_indices,
)
from ._src.rules import make_scaling, make_selection

__all__ = [
    "ALL_POINTS",
    "BACKENDS",
    "BATCHING_MODES",
    "Backend",
    "ContextEvaluator",
    "FullGrad",
    "gather_points",
    "global_norm",
    "make_backend",
    "make_scaling",
    "make_selection",
    "num_selected",
    "per_signal",
    "point_chunks",
    "squared_errors",
    "topk_indices",
]
