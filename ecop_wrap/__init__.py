"""ecop-wrap: memory-efficient meta-learning of implicit neural representations with Error-based Context
Pruning (ECoP), for any ``nn.Module`` INR, and gradient-scaled test-time fitting.

The public API is what this module exports (every model family included); the building blocks behind it, for
your own rules, backends and baselines, are in the extension namespace :mod:`ecop_wrap.extend`. Everything
under ``ecop_wrap._src`` is private.
"""

from ._src.adapter import FitResult, FitStep, GradScaledAdapter
from ._src.algorithm import MetaLossOutput
from ._src.calibrate import TEST_RULES, Calibration, calibrate_adapter
from ._src.config import ECoPConfig
from ._src.learner import ContextPruningMetaLearner
from ._src.losses import LOSSES, clamped_l1, register_loss
from ._src.rules import (
    SCALING_RULES,
    SELECTION_RULES,
    ScalingRule,
    SelectionRule,
    make_selection,
    register_scaling,
    register_selection,
)
from ._src.tracing import SelectionTrace, default_trace_steps, trace_selection
from .memory import SavedTensorMeter
from .metrics import mse, mse_to_psnr, psnr
from .models import FourierFeatureMLP, HashGridINR, ModulatedSiren, NeRV, Siren
from .signals import array_to_signal, image_to_signal, make_grid, signal_to_array, signal_to_image

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "SCALING_RULES",
    "SELECTION_RULES",
    "TEST_RULES",
    "Calibration",
    "ContextPruningMetaLearner",
    "ECoPConfig",
    "FitResult",
    "FitStep",
    "FourierFeatureMLP",
    "GradScaledAdapter",
    "HashGridINR",
    "MetaLossOutput",
    "ModulatedSiren",
    "NeRV",
    "SavedTensorMeter",
    "ScalingRule",
    "SelectionRule",
    "SelectionTrace",
    "Siren",
    "array_to_signal",
    "calibrate_adapter",
    "clamped_l1",
    "default_trace_steps",
    "image_to_signal",
    "make_grid",
    "make_selection",
    "mse",
    "mse_to_psnr",
    "psnr",
    "register_loss",
    "register_scaling",
    "register_selection",
    "signal_to_array",
    "signal_to_image",
    "trace_selection",
]
