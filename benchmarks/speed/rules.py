"""A user-written selection rule: the pruned context sampled in proportion to the error.

The one copy of this example: ``--fit-sampled`` registers it, ``tests/test_rules.py`` registers and checks it,
and docs/architecture.md ("Extending") shows it from here.
"""

from __future__ import annotations

import torch

from ecop_wrap.extend import ContextEvaluator


class ErrorSampling:
    """Soft-mining style: sample the pruned set without replacement with probability proportional to
    ``error ** alpha`` (Gumbel top-k), instead of taking the top-k deterministically.

    The top-k of ``alpha * log(error) + Gumbel noise`` is a sample of k points without replacement with
    probabilities proportional to ``error ** alpha`` (an error-driven point sampler in the spirit of EVOS / INT).
    """

    name = "error_sampling"

    def __init__(self, model: torch.nn.Module, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def scores(
        self, ctx: ContextEvaluator, params: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        errors = ctx.errors(params)  # [B, M], graph-free
        uniform = torch.rand(errors.shape, generator=generator, dtype=errors.dtype, device=errors.device)
        gumbel = -(-uniform.clamp_min(1e-12).log()).log()
        return self.alpha * errors.clamp_min(1e-30).log() + gumbel
