"""INR architectures users would otherwise rewrite: each maps ``[..., C]`` coordinates to ``[..., D]`` values."""

from ._mlp import FourierFeatureMLP, SineLayer, Siren

__all__ = ["FourierFeatureMLP", "SineLayer", "Siren"]
