"""INR architectures users would otherwise rewrite: each maps ``[..., C]`` coordinates to ``[..., D]`` values."""

from ._mlp import FourierFeatureMLP, SineLayer, Siren
from .modulated import ModulatedSiren

__all__ = ["FourierFeatureMLP", "ModulatedSiren", "SineLayer", "Siren"]
