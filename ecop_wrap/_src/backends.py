"""Backends: how a model is evaluated with per-signal ("fast") parameters.

Everything else in the library (selection, inner loop, bootstrap, outer step, test-time fitting) works on a
dict ``params`` of trainable parameter name -> tensor with a leading batch dimension ``B`` and calls
``backend(params, coords)``. A backend only decides how those B parameter sets meet the model:

* ``"torch.func"`` evaluates the user's module statelessly with :func:`torch.func.functional_call`, in one of
  three batching modes: ``"bmm"`` (one batched matmul per ``nn.Linear``, for stacks of Linear layers and
  parameter-free operations), ``"vmap"`` (:func:`torch.func.vmap`, any module whose forward vmap supports)
  or ``"loop"`` (one call per signal, works for anything). ``"auto"`` picks the first of these that runs and
  matches the loop on a probe.
* ``"higher"`` evaluates a :func:`higher.monkeypatch` copy of the module, one signal at a time.

Gradients always come from :func:`torch.autograd.grad`, so both backends are differentiable to any order
and both work under non-reentrant activation checkpointing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from ..typing import Params
from .validation import user_stacklevel

__all__ = [
    "BACKENDS",
    "BATCHING_MODES",
    "Backend",
    "HigherBackend",
    "TorchFuncBackend",
    "make_backend",
    "resolve_full_precision",
]


BACKENDS = ("torch.func", "higher")
BATCHING_MODES = ("auto", "bmm", "vmap", "loop")
RECOMPILE_LIMIT = 64
"""Cached graphs allowed for the compiled forward (raised from torch's default of 8 for these calls only).

Every backend in a process shares the one compiled function's cache (torch keys it on the code object), and
each model, batch size, pruned-set size, grad mode and autocast dtype adds a graph: a learner with its
adapters needs about 6, so torch's default would run a second learner with another model eagerly, silently.
"""


class Backend:
    """Evaluates ``model`` with batched parameters.

    Args:
        model: the INR; its trainable parameters are the ones adapted per signal.
    """

    name: str = "base"

    def __init__(self, model: nn.Module, adapted: list[str] | None = None) -> None:
        self.model = model
        self.param_names = (
            adapted if adapted is not None else [n for n, p in model.named_parameters() if p.requires_grad]
        )
        self.autocast_dtype: torch.dtype | None = None
        self.graph_free_dtype: torch.dtype | None = None
        self.compile = False
        self._full_precision: dict[nn.Module, Callable[..., object]] | None = {}
        self._in_low_precision_pass = False
        self._compiled: Callable[[Params, torch.Tensor], torch.Tensor] | None = None
        self._compile_failed = False
        self._warned_recompile_limit = False

    def __call__(self, params: Params, coords: torch.Tensor) -> torch.Tensor:
        """Evaluate every signal's INR on its coordinates.

        Args:
            params: name -> ``[B, *param_shape]`` per-signal parameters (a subset of the model's parameters
                is fine: the others are the model's own, shared by every signal).
            coords: ``[B, M, C]`` per-signal or ``[M, C]`` shared coordinates.

        Returns:
            ``[B, M, D]`` predictions; under ``autocast_dtype`` computed in that dtype, returned in ``coords``'s.
        """
        return self.capture(params, coords, None)[0]

    def capture(
        self, params: Params, coords: torch.Tensor, layer: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`__call__`, also returning the ``[B, M, F]`` input of submodule ``layer`` (if not None)."""
        if self.autocast_dtype is None:
            return self.forward_capture(params, coords, layer)
        with torch.autocast(coords.device.type, dtype=self.autocast_dtype):
            out, cap = self.forward_capture(params, coords, layer)
        return out.to(coords.dtype), (cap.to(coords.dtype) if cap is not None else None)

    def graph_free(
        self, params: Params, coords: torch.Tensor, layer: nn.Module | None = None, *, low_precision: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`capture` for a pass whose graph never reaches theta_0 (ranking, bootstrap, test-time steps).

        With ``compile`` the forward runs through :func:`torch.compile` (falling back to eager, with one
        warning, where compilation fails); with ``low_precision`` and ``graph_free_dtype`` set it runs under
        ``torch.autocast`` in that dtype. Results come back in ``coords``'s dtype.
        """
        dtype = self.graph_free_dtype if low_precision else None
        if dtype is None:
            return self._maybe_compiled(params, coords, layer)
        with torch.autocast(coords.device.type, dtype=dtype), self._full_precision_modules(params, coords):
            out, cap = self._maybe_compiled(params, coords, layer)
        return out.to(coords.dtype), (cap.to(coords.dtype) if cap is not None else None)

    def set_full_precision(self, spec: str | tuple[str, ...]) -> None:
        """Which submodules run with autocast off (bf16/fp16 inputs cast to float32) in low-precision passes.

        Args:
            spec: ``"ends"`` (found on the first low-precision pass, see :meth:`_find_ends`) or submodule
                names (checked now; see :func:`resolve_full_precision`).
        """
        if isinstance(spec, str):  # "ends" (ECoPConfig checked it)
            self._full_precision = None
        else:
            self._full_precision = self._wrappers(resolve_full_precision(self.model, spec))

    @staticmethod
    def _wrappers(modules: list[nn.Module]) -> dict[nn.Module, Callable[..., object]]:
        # One wrapper per module, kept on the module and shared by every backend of it (a learner and its
        # adapters): torch.compile's guards check the wrapper's identity, so a fresh one per pass would
        # recompile every call, and one per backend would compile the same pass once per backend. Stored
        # on the module, a deep copy of the module gets a copy of the wrapper holding the copied module.
        for module in modules:
            if not isinstance(module.__dict__.get(_WRAPPER_ATTR), _AutocastOff):
                module.__dict__[_WRAPPER_ATTR] = _AutocastOff(module)
        return {m: m.__dict__[_WRAPPER_ATTR] for m in modules}

    @torch.no_grad()
    def _find_ends(self, params: Params, coords: torch.Tensor) -> list[nn.Module]:
        """The model's input and output layers, seen in one probe forward of the first signal (once).

        Input layer: the first ``nn.Linear``/convolution applied to the coordinates themselves (same storage),
        else the first one called; output layer: the last one called. Call order, unlike registration order,
        finds a SIREN's first layer behind a latent's modulation map.
        """
        calls: list[tuple[nn.Module, bool]] = []
        probe_params = {n: p[:1].detach() for n, p in params.items()}
        probe_coords = coords if coords.ndim == 2 else coords[:1]  # every point: some models need them all

        def record(module: nn.Module, inputs: tuple[object, ...]) -> None:
            first = inputs[0] if inputs else None
            on_coords = isinstance(first, torch.Tensor) and first.data_ptr() == probe_coords.data_ptr()
            calls.append((module, on_coords))

        layers = [m for m in self.model.modules() if isinstance(m, _LAYER_TYPES)]
        handles = [m.register_forward_pre_hook(record) for m in layers]
        try:
            with torch.autocast(coords.device.type, enabled=False):
                _loop_forward(self.model, probe_params, probe_coords, None)
        finally:
            for handle in handles:
                handle.remove()
        if not calls:
            return []
        first = next((m for m, on_coords in calls if on_coords), calls[0][0])
        return list({id(m): m for m in (first, calls[-1][0])}.values())

    @contextlib.contextmanager
    def _full_precision_modules(self, params: Params, coords: torch.Tensor) -> Iterator[None]:
        """Within: the full-precision modules' ``forward`` is their wrapper (restored on exit)."""
        if self._full_precision is None:
            self._full_precision = self._wrappers(self._find_ends(params, coords))
        saved = {m: m.__dict__.get("forward") for m in self._full_precision}
        self._in_low_precision_pass = True
        try:
            for module, wrapper in self._full_precision.items():
                module.forward = wrapper
            yield
        finally:
            self._in_low_precision_pass = False
            for module, previous in saved.items():
                if previous is None:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = previous

    def _maybe_compiled(
        self, params: Params, coords: torch.Tensor, layer: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.compile or layer is not None or self._compile_failed:
            return self.capture(params, coords, layer)
        if self._compiled is None:
            self.capture(params, coords, None)  # settles batching="auto" eagerly, outside the compiled code
            self._compiled = torch.compile(lambda p, x: self.capture(p, x, None)[0], dynamic=False)
        limits, limit_hit = _recompile_limits()
        try:
            with limits:
                return self._compiled(params, coords), None
        except limit_hit:  # the graphs compiled so far stay in use; this new shape or mode runs eagerly
            if not self._warned_recompile_limit:
                self._warned_recompile_limit = True
                warnings.warn(
                    "compile=True: torch.compile's cache of the graph-free forward is full (one graph per model, "
                    "shape, grad mode and dtype in this process; at least "
                    f"{RECOMPILE_LIMIT}); passes that need a new graph run eagerly. Set "
                    "torch._dynamo.config.recompile_limit higher, or call torch._dynamo.reset() between "
                    "unrelated runs",
                    RuntimeWarning,
                    stacklevel=user_stacklevel(),
                )
            return self.capture(params, coords, layer)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: warn once, run eagerly from now on
            self._compile_failed = True
            warnings.warn(
                f"compile=True: torch.compile failed for this model ({type(exc).__name__}: {str(exc)[:200]}); "
                "the graph-free passes run eagerly instead",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            return self.capture(params, coords, layer)

    def forward_capture(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`forward`, also returning the ``[B, M, F]`` input of submodule ``capture``."""
        return _loop_forward(self.model, params, coords, capture)


_WRAPPER_ATTR = "_ecop_wrap_full_precision_forward"


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


_LAYER_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


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


def _signal_coords(coords: torch.Tensor, b: int) -> torch.Tensor:
    return coords if coords.ndim == 2 else coords[b]


def _capture_hook(module: nn.Module | None, store: list[torch.Tensor]) -> RemovableHandle | None:
    if module is None:
        return None
    return module.register_forward_hook(lambda _m, inputs, _out: store.append(inputs[0]))


def _call_with_capture(
    call: Callable[[], torch.Tensor], capture: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    store: list[torch.Tensor] = []
    handle = _capture_hook(capture, store)
    try:
        out = call()
    finally:
        if handle is not None:
            handle.remove()
    if capture is not None and not store:
        raise RuntimeError(f"the capture module {capture!r} was not called by the model's forward")
    return out, (store[-1] if store else None)


def _loop_forward(
    model: nn.Module, params: Params, coords: torch.Tensor, capture: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    batch = next(iter(params.values())).shape[0]
    outs, caps = [], []
    for b in range(batch):
        signal_params = {n: p[b] for n, p in params.items()}
        signal_coords = _signal_coords(coords, b)
        out, cap = _call_with_capture(partial(functional_call, model, signal_params, (signal_coords,)), capture)
        outs.append(out)
        caps.append(cap)
    return torch.stack(outs), (torch.stack(caps) if capture is not None else None)  # type: ignore[arg-type]


class _BatchedLinear(TorchFunctionMode):
    """Turns ``F.linear`` with a batched ``[B, out, in]`` weight or ``[B, out]`` bias into a batched matmul."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.ndim == 3 or (bias is not None and bias.ndim == 2):
                return _batched_linear(x, weight, bias)
        return func(*args, **kwargs)


def _batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if weight.ndim == 3 and x.ndim == 3 and bias is not None and bias.ndim == 2:
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
    out = torch.matmul(x, weight.transpose(-1, -2))
    if bias is not None:
        out = out + (bias.unsqueeze(-2) if bias.ndim == 2 else bias)
    return out


class TorchFuncBackend(Backend):
    """Stateless evaluation with :func:`torch.func.functional_call`, batched by ``bmm``, ``vmap`` or a loop.

    Args:
        model: the INR.
        batching: ``"auto"`` (default), ``"bmm"``, ``"vmap"`` or ``"loop"``. ``"bmm"`` needs every trainable
            parameter to belong to an ``nn.Linear``.
    """

    name = "torch.func"

    def __init__(self, model: nn.Module, batching: str = "auto", adapted: list[str] | None = None) -> None:
        super().__init__(model, adapted)
        if batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {BATCHING_MODES}, got {batching!r}")
        if batching == "bmm" and not self._linear_only():
            raise ValueError("batching='bmm' needs every trainable parameter to belong to an nn.Linear")
        self.batching = batching

    def _linear_only(self) -> bool:
        owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in self.param_names}
        modules = dict(self.model.named_modules())
        return all(isinstance(modules.get(o), nn.Linear) for o in owners)

    def forward_capture(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.batching == "auto":
            self.batching = self._choose(params, coords)
        if self.batching == "bmm":
            with _BatchedLinear():
                return _call_with_capture(lambda: functional_call(self.model, params, (coords,)), capture)
        if self.batching == "vmap":
            return self._vmap_forward(params, coords, capture)
        return _loop_forward(self.model, params, coords, capture)

    def _vmap_forward(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        def one(signal_params: Params, signal_coords: torch.Tensor):  # type: ignore[no-untyped-def]
            out, cap = _call_with_capture(lambda: functional_call(self.model, signal_params, (signal_coords,)), capture)
            return (out, cap) if cap is not None else (out,)

        results = vmap(one, in_dims=(0, 0 if coords.ndim == 3 else None))(params, coords)
        return results[0], (results[1] if capture is not None else None)

    @torch.no_grad()
    def _choose(self, params: Params, coords: torch.Tensor) -> str:
        """First batching mode that runs and reproduces the per-signal loop on a few probe points."""
        with torch.autocast(coords.device.type, enabled=False):
            return self._probe(params, coords)

    def _probe(self, params: Params, coords: torch.Tensor) -> str:
        probe_params = {n: p[:2].detach() for n, p in params.items()}
        probe_coords = coords[..., :8, :] if coords.ndim == 2 else coords[:2, :8]
        reference = _loop_forward(self.model, probe_params, probe_coords, None)[0]
        candidates = (["bmm"] if self._linear_only() else []) + ["vmap"]
        for mode in candidates:
            self.batching = mode
            try:
                out = self.forward_capture(probe_params, probe_coords, None)[0]
            except Exception:  # noqa: BLE001 - any failure means "this mode does not fit this model"
                continue
            if out.shape == reference.shape and torch.allclose(out, reference, rtol=1e-4, atol=1e-5):
                return mode
        return "loop"


class HigherBackend(Backend):
    """Evaluation through a :func:`higher.monkeypatch` functional copy of the model, one signal at a time.

    ``higher``'s patched modules do not run forward hooks or patched ``forward`` methods, so a forward that
    must capture a layer's input (GradNCP ranking) or keep modules in full precision (a low-precision
    graph-free pass) goes through ``functional_call`` instead; neither needs a graph back to theta_0.
    """

    name = "higher"

    def __init__(self, model: nn.Module, adapted: list[str] | None = None) -> None:
        super().__init__(model, adapted)
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

    def forward_capture(
        self, params: Params, coords: torch.Tensor, capture: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if capture is not None or (self._in_low_precision_pass and bool(self._full_precision)):
            # higher's patched copy runs the original classes' forward, not the full-precision wrappers
            return _loop_forward(self.model, params, coords, capture)
        own = dict(self.model.named_parameters())
        batch = next(iter(params.values())).shape[0]
        outs = []
        for b in range(batch):
            flat = [params[n][b] if n in params else own[n] for n in self._all_names]
            outs.append(self._fmodel(_signal_coords(coords, b), params=flat))
        return torch.stack(outs), None


class _NeverRaisedError(Exception):
    """Stands for torch's recompile-limit exception on versions without one."""


def _recompile_limits() -> tuple[contextlib.AbstractContextManager[object], type[Exception]]:
    """A context raising the compiled forward's cache to :data:`RECOMPILE_LIMIT` graphs (never lowering the
    user's setting) and turning a full cache into an exception instead of torch's silent eager fallback; and
    that exception's type."""
    import torch._dynamo  # loaded by torch.compile anyway; kept off `import ecop_wrap`

    config, exc_module = torch._dynamo.config, torch._dynamo.exc
    limit_hit = getattr(exc_module, "FailOnRecompileLimitHit", None)
    if limit_hit is None or not hasattr(config, "recompile_limit"):  # older torch: its defaults
        return contextlib.nullcontext(), _NeverRaisedError
    limit = max(RECOMPILE_LIMIT, int(config.recompile_limit))
    return config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True), limit_hit


def make_backend(name: str, model: nn.Module, batching: str = "auto", adapted: list[str] | None = None) -> Backend:
    """Build the backend called ``name`` (one of :data:`BACKENDS`) for ``model``.

    Args:
        name: ``"torch.func"`` or ``"higher"``.
        model: the INR.
        batching: the torch.func batching mode (``"auto"``, ``"bmm"``, ``"vmap"``, ``"loop"``).
        adapted: names of the parameters that will be passed per signal (default: every trainable one).
    """
    if name == "torch.func":
        return TorchFuncBackend(model, batching, adapted)
    if name == "higher":
        if batching not in ("auto", "loop"):
            raise ValueError(f"the higher backend runs one signal at a time; batching={batching!r} is not supported")
        return HigherBackend(model, adapted)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
