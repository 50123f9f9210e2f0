"""INR architectures users would otherwise rewrite: each maps ``[..., C]`` coordinates to ``[..., D]`` values."""

from ._mlp import FourierFeatureMLP, SineLayer, Siren
from .hashgrid import HashGridINR
from .modulated import ModulatedSiren
from .nerv import NeRV, NeRVBlock

__all__ = ["FourierFeatureMLP", "HashGridINR", "ModulatedSiren", "NeRV", "NeRVBlock", "SineLayer", "Siren"]
