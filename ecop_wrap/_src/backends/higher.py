"""The ``"higher"`` backend: a :func:`higher.monkeypatch` functional copy of the model, one signal at a time."""

from __future__ import annotations

import torch
from torch import nn

from ...typing import Params
from .base import Backend
from .forward import loop_forward, per_signal
from .precision import Precision

__all__ = ["HigherBackend"]


class HigherBackend(Backend):
    """Evaluation through a :func:`higher.monkeypatch` functional copy of the model, one signal at a time.

    Every pass that carries a graph back to theta_0 goes through higher's patched copy. Two graph-free passes
    cannot: higher's patched modules run neither forward hooks nor replaced ``forward`` methods, so a forward
    that captures a layer's input (GradNCP ranking) or keeps modules in full precision (a low-precision pass
    with full-precision modules) runs through :func:`torch.func.functional_call` instead, one signal at a
    time. :attr:`via_functional_call` counts those passes, so that it is visible, not silent.
    """

    name = "higher"

    def __init__(
        self,
        model: nn.Module,
        adapted: list[str] | None = None,
        *,
        precision: Precision | None = None,
        compile: bool | str = False,
    ) -> None:
        super().__init__(model, adapted, precision=precision, compile=compile)
        containers = [
            name or "<root>"
            for name, module in model.named_modules()
            if isinstance(module, (nn.ParameterList, nn.ParameterDict))
        ]
        if containers:  # higher's patched copy never swaps these for the per-signal parameters: wrong numbers
            raise ValueError(
                f"backend='higher' cannot adapt parameters held in nn.ParameterList/nn.ParameterDict "
                f"(model.{', model.'.join(containers)}); use backend='torch.func', or register them as "
                "plain nn.Parameter attributes"
            )
        import higher  # runtime dependency, imported here to keep `import ecop_wrap` light

        # Gradients flow through the per-signal parameters passed at each call, not through higher's own
        # bookkeeping; with track_higher_grads=True it would append every call's parameters to a history list
        # and keep them (30 MiB per meta-step for SIREN 5x256, B=2) for the learner's lifetime.
        self._fmodel = higher.monkeypatch(model, copy_initial_weights=False, track_higher_grads=False)
        self._all_names = [n for n, _ in model.named_parameters()]
        self.via_functional_call = 0
        """Graph-free passes that ran through ``functional_call`` instead of higher (see the class docstring)."""

    def forward_capture(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if capture is not None or (self.precision.in_low_precision_pass and bool(self.precision.modules)):
            self.via_functional_call += 1
            return loop_forward(self.model, params, coords, capture)
        own = dict(self.model.named_parameters())
        outs = []
        for one_params, one_coords in per_signal(params, coords):
            flat = [one_params[n] if n in one_params else own[n] for n in self._all_names]
            outs.append(self._fmodel(one_coords, params=flat))
        return torch.stack(outs), None
