"""ecop-wrap: memory-efficient meta-learning of implicit neural representations with Error-based Context
Pruning (ECoP), for any ``nn.Module`` INR, and gradient-scaled test-time fitting."""

from .backends import BACKENDS, BATCHING_MODES, make_backend
from .fitting import SCALINGS, FitResult, GradScaledAdapter
from .learner import ContextPruningMetaLearner
from .memory import SavedTensorMeter
from .metrics import mse, mse_to_psnr, psnr
from .models import FourierFeatureMLP, Siren
from .outer_loss import MetaLossOutput
from .selection import SELECTIONS, num_selected
from .signals import array_to_signal, image_to_signal, make_grid, signal_to_array, signal_to_image

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BATCHING_MODES",
    "SCALINGS",
    "SELECTIONS",
    "ContextPruningMetaLearner",
    "FitResult",
    "FourierFeatureMLP",
    "GradScaledAdapter",
    "MetaLossOutput",
    "SavedTensorMeter",
    "Siren",
    "array_to_signal",
    "image_to_signal",
    "make_backend",
    "make_grid",
    "mse",
    "mse_to_psnr",
    "num_selected",
    "psnr",
    "signal_to_array",
    "signal_to_image",
]
