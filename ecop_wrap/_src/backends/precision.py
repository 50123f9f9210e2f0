"""The precision policy of a backend's passes: autocast, and the modules kept in full precision inside them.

``autocast_dtype`` lowers every forward; ``graph_free_dtype`` lowers only the passes whose graph never reaches
theta_0 (ranking, bootstrap). Inside those, the modules named by ``graph_free_full_precision`` (by default the
model's input and output layers, found by a probe forward) run with autocast off: SIREN loses most of bf16's
precision there (``ECoPConfig.graph_free_full_precision`` has the measurements).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ...typing import Params
from .forward import loop_forward

__all__ = ["Precision", "resolve_full_precision"]

_WRAPPER_ATTR = "_ecop_wrap_full_precision_forward"
_LAYER_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


class Precision:
    """Which dtype each kind of pass runs in, and which modules stay in full precision in low-precision passes.

    Args:
        model: the INR.
        autocast_dtype: every forward under ``torch.autocast`` in this dtype (None: the model's dtype).
        graph_free_dtype: the graph-free passes that ask for it (``low_precision=True``) in this dtype.
        full_precision: ``"ends"`` (the input and output layers, found on the first low-precision pass) or
            submodule names (checked now).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        autocast_dtype: torch.dtype | None = None,
        graph_free_dtype: torch.dtype | None = None,
        full_precision: str | tuple[str, ...] = "ends",
    ) -> None:
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.graph_free_dtype = graph_free_dtype
        self.modules: dict[nn.Module, Callable[..., object]] | None = (
            None if isinstance(full_precision, str) else _wrappers(resolve_full_precision(model, full_precision))
        )
        """Full-precision module -> its wrapper; None until ``"ends"`` are found."""
        self.in_low_precision_pass = False

    @contextlib.contextmanager
    def low_precision_pass(self, params: Params, coords: torch.Tensor, dtype: torch.dtype) -> Iterator[None]:
        """Within: autocast in ``dtype``, and the full-precision modules' ``forward`` is their wrapper."""
        if self.modules is None:
            self.modules = _wrappers(_find_ends(self.model, params, coords))
        saved = {m: m.__dict__.get("forward") for m in self.modules}
        self.in_low_precision_pass = True
        try:
            with torch.autocast(coords.device.type, dtype=dtype):
                for module, wrapper in self.modules.items():
                    module.forward = wrapper
                yield
        finally:
            self.in_low_precision_pass = False
            for module, previous in saved.items():
                if previous is None:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = previous


def _wrappers(modules: list[nn.Module]) -> dict[nn.Module, Callable[..., object]]:
    # One wrapper per module, kept on the module and shared by every backend of it (a learner and its
    # adapters): torch.compile's guards check the wrapper's identity, so a fresh one per pass would recompile
    # every call, and one per backend would compile the same pass once per backend. Stored on the module, a
    # deep copy of the module gets a copy of the wrapper holding the copied module.
    for module in modules:
        if not isinstance(module.__dict__.get(_WRAPPER_ATTR), _AutocastOff):
            module.__dict__[_WRAPPER_ATTR] = _AutocastOff(module)
    return {m: m.__dict__[_WRAPPER_ATTR] for m in modules}


@torch.no_grad()
def _find_ends(model: nn.Module, params: Params, coords: torch.Tensor) -> list[nn.Module]:
    """The model's input and output layers, seen in one probe forward of the first signal.

    Input layer: the first ``nn.Linear``/convolution applied to the coordinates themselves (same storage), else
    the first one called; output layer: the last one called. Call order, unlike registration order, finds a
    SIREN's first layer behind a latent's modulation map.
    """
    calls: list[tuple[nn.Module, bool]] = []
    probe_params = {n: p[:1].detach() for n, p in params.items()}
    probe_coords = coords if coords.ndim == 2 else coords[:1]  # every point: some models need them all

    def record(module: nn.Module, inputs: tuple[object, ...]) -> None:
        first = inputs[0] if inputs else None
        on_coords = isinstance(first, torch.Tensor) and first.data_ptr() == probe_coords.data_ptr()
        calls.append((module, on_coords))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, _LAYER_TYPES)]
    try:
        with torch.autocast(coords.device.type, enabled=False):
            loop_forward(model, probe_params, probe_coords, None)
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        return []
    first = next((m for m, on_coords in calls if on_coords), calls[0][0])
    return list({id(m): m for m in (first, calls[-1][0])}.values())


class _AutocastOff:
    """Stands in for ``module.forward`` during a low-precision pass: the module's own forward with autocast off
    and bf16/fp16 tensor arguments cast to float32.

    An object holding the module rather than a closure over its bound ``forward``, so that a deep copy of a
    learner (or of the model) wraps the copied modules, not the originals.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.own_forward = module.__dict__.get("forward")  # an instance-level forward the user set, if any

    def __call__(self, *args: object, **kwargs: object) -> object:
        forward = self.own_forward if self.own_forward is not None else type(self.module).forward
        call_args = args if self.own_forward is not None else (self.module, *args)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        with torch.autocast(tensors[0].device.type if tensors else "cpu", enabled=False):
            return forward(*(_to_float32(a) for a in call_args), **{k: _to_float32(v) for k, v in kwargs.items()})


def _to_float32(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    return value


def resolve_full_precision(model: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The submodules of ``model`` called ``names`` (see ``ECoPConfig.graph_free_full_precision``).

    Raises:
        ValueError: a name is not a submodule of ``model``.
    """
    named = dict(model.named_modules())
    missing = [name for name in names if name not in named]
    if missing:
        listed = ", ".join(repr(n) for n in list(named)[:12]) + (", ..." if len(named) > 12 else "")
        raise ValueError(
            f"graph_free_full_precision names {missing}, which are not submodules of the model; expected "
            f'"ends" or names from model.named_modules(): {listed}'
        )
    return [named[name] for name in names]
