"""Opt-in speed modes (``graph_free_dtype``, ``compile``) and the profiler ranges around each phase."""

from __future__ import annotations

import copy
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import meta_grads
from reference import TinySiren

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, ModulatedSiren, Siren, make_grid

NEEDS_CXX = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="inductor needs a C++ compiler"
)
PHASES = (
    "ecop.ranking",
    "ecop.pruned_forward",
    "ecop.inner_gradient",
    "ecop.bootstrap",
    "ecop.outer_loss",
    "ecop.outer_backward",
    "ecop.all_reduce",
    "ecop.optimizer",
)


def _batch(side: int = 8, batch: int = 2, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(0)
    return make_grid((side, side), dtype=dtype), torch.rand(batch, side * side, 3, generator=gen, dtype=dtype)


def _record_forward_dtypes(backend) -> list[tuple[bool, torch.dtype]]:
    """Wrap ``backend.forward_capture``: the list gets (grad enabled, output dtype) of every forward from now on."""
    seen = []
    original = backend.forward_capture

    def spy(params, coords, capture):
        out = original(params, coords, capture)
        seen.append((torch.is_grad_enabled(), out[0].dtype))
        return out

    backend.forward_capture = spy
    return seen


def test_profiler_sees_every_phase():
    learner = ContextPruningMetaLearner(Siren(2, 3, 16, 2), K=2, L=1, coord_range=None)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        learner.meta_step(_batch())
    names = {event.name for event in prof.events()}
    assert set(PHASES) <= names, set(PHASES) - names


def test_bf16_graph_free_passes_keep_graph_steps_in_the_model_dtype():
    """Without graph-free passes (gamma = 1, no bootstrap) the option changes nothing, bit for bit."""
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2)
    batch = _batch()
    plain = meta_grads(ContextPruningMetaLearner(model, gamma=1.0, K=2, L=0, lam=0.0, coord_range=None), batch)
    bf16 = meta_grads(
        ContextPruningMetaLearner(
            model, gamma=1.0, K=2, L=0, lam=0.0, graph_free_dtype=torch.bfloat16, coord_range=None
        ),
        batch,
    )
    assert torch.equal(plain[0], bf16[0]) and all(torch.equal(a, b) for a, b in zip(plain[1], bf16[1], strict=True))


def test_bf16_ranking_and_bootstrap_run_in_bf16_and_stay_close():
    torch.manual_seed(0)
    model = Siren(2, 3, 32, 2)
    batch = _batch(side=12)
    learner = ContextPruningMetaLearner(
        model, K=2, L=2, graph_free_dtype=torch.bfloat16, graph_free_full_precision=(), coord_range=None
    )
    seen = _record_forward_dtypes(learner.backend)
    loss, _ = meta_grads(learner, batch)
    assert (False, torch.bfloat16) in seen  # ranking passes
    assert (True, torch.float32) in seen  # pruned steps with a graph
    assert (True, torch.bfloat16) in seen  # bootstrap passes (graph-free w.r.t. theta_0, local backward)
    want_loss, _ = meta_grads(ContextPruningMetaLearner(model, K=2, L=2, coord_range=None), batch)
    torch.testing.assert_close(loss, want_loss, rtol=0.05, atol=0)
    fit = GradScaledAdapter(learner, steps=2).fit(batch)
    want_fit = GradScaledAdapter(model, steps=2, gamma=0.25, coord_range=None).fit(batch)
    torch.testing.assert_close(fit.history["psnr"], want_fit.history["psnr"], rtol=0.02, atol=0)


@pytest.mark.parametrize("pruned_steps", [0, 1])
def test_bf16_adapter_ranks_in_bf16_and_takes_every_gradient_in_the_model_dtype(pruned_steps):
    """At test time a gradient's norm is the step size (norm scale) or the step itself: only ranking is bf16.

    A full-context step ranks with the errors of its own full pass, so without pruned steps no pass is bf16.
    """
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2)
    batch = _batch(side=12)
    adapter = GradScaledAdapter(
        model,
        steps=2,
        gamma=0.25,
        graph_free_dtype=torch.bfloat16,
        graph_free_full_precision=(),
        pruned_steps=pruned_steps,
        coord_range=None,
    )
    seen = _record_forward_dtypes(adapter.backend)
    fit = adapter.fit(batch)
    assert {dtype for grad, dtype in seen if grad} == {torch.float32}  # full, pruned and scale gradients
    assert ((False, torch.bfloat16) in seen) == bool(pruned_steps)  # ranking of the pruned step
    if not pruned_steps:
        plain = GradScaledAdapter(model, steps=2, gamma=0.25, coord_range=None).fit(batch)
        assert torch.equal(fit.history["mse"], plain.history["mse"])
        assert torch.equal(fit.history["scale"], plain.history["scale"])


def _siren_by_hand(model: Siren, params, coords: torch.Tensor, full_precision: tuple[int, ...]) -> torch.Tensor:
    """Per-signal SIREN forward written out: the linear layers numbered in ``full_precision`` (0 = first,
    -1 = output) in float32, every other product with bf16 inputs and output, as autocast computes it."""
    depth = len(model.layers)

    def linear(i: int, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if i in full_precision or i - depth - 1 in full_precision:
            return F.linear(h.float(), weight, bias)
        return F.linear(h.bfloat16(), weight.bfloat16(), bias.bfloat16())

    outs = []
    for b in range(coords.shape[0]):
        h = coords[b]
        for i, layer in enumerate(model.layers):
            z = linear(i, h, params[f"layers.{i}.linear.weight"][b], params[f"layers.{i}.linear.bias"][b])
            h = torch.sin(layer.w0 * z)
        outs.append(linear(depth, h, params["output.weight"][b], params["output.bias"][b]) + model.output_offset)
    return torch.stack(outs).float()


def _perturbed_params(model, batch: int):
    gen = torch.Generator().manual_seed(1)
    return {
        n: p.detach().expand(batch, *p.shape) + 0.01 * torch.randn(batch, *p.shape, generator=gen)
        for n, p in model.named_parameters()
    }


@pytest.mark.parametrize(("backend", "batching"), [("torch.func", "bmm"), ("torch.func", "loop"), ("higher", "auto")])
@pytest.mark.parametrize(
    ("spec", "full_precision"),
    [("ends", (0, -1)), ((), ()), (("layers.1.linear",), (1,)), (("layers.0", "output"), (0, -1))],
    ids=["ends", "nothing", "a-hidden-layer", "by-name"],
)
def test_full_precision_modules_run_in_float32_inside_bf16_passes(backend, batching, spec, full_precision):
    """A bf16 graph-free pass equals a hand-written forward with exactly the chosen layers in float32."""
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2)
    learner = ContextPruningMetaLearner(
        model,
        backend=backend,
        batching=batching,
        graph_free_dtype=torch.bfloat16,
        graph_free_full_precision=spec,
        coord_range=None,
    )
    params = _perturbed_params(model, 2)
    coords = torch.rand(2, 20, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    got = learner.backend.graph_free(params, coords, low_precision=True)[0]
    assert torch.equal(got, _siren_by_hand(model, params, coords, full_precision))
    assert not any("forward" in m.__dict__ for m in model.modules())  # the wrappers are gone after the pass
    plain = learner.backend.graph_free(params, coords)[0]  # not a low-precision pass: float32 throughout
    assert torch.equal(plain, learner.backend(params, coords))


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
def test_ends_are_the_layer_on_the_coordinates_and_the_last_layer_called(backend):
    """ModulatedSiren registers (and calls) its latent's modulation map before the sine layers: registration
    or call order alone would keep that map in float32 instead of the first sine layer's Linear."""
    model = ModulatedSiren(2, 3, 16, 2, latent_dim=4)
    learner = ContextPruningMetaLearner(
        model, backend=backend, graph_free_dtype=torch.bfloat16, adapt=["latent"], coord_range=None
    )
    params = {"latent": torch.randn(2, 4, generator=torch.Generator().manual_seed(0))}
    learner.backend.graph_free(params, torch.rand(2, 10, 2), low_precision=True)
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(m)] for m in learner.backend.precision.modules] == ["layers.0.linear", "output"]


def test_a_deep_copied_learner_keeps_its_own_modules_in_float32():
    """The wrappers hold their module: a copy's bf16 pass must use the copy's layers, not the original's."""
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2)
    learner = ContextPruningMetaLearner(model, graph_free_dtype=torch.bfloat16, coord_range=None)
    coords = torch.rand(1, 20, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    shared = {"layers.1.linear.weight": model.layers[1].linear.weight.detach().unsqueeze(0)}
    learner.backend.graph_free(shared, coords, low_precision=True)  # finds the ends
    copied = copy.deepcopy(learner)
    with torch.no_grad():
        for param in copied.model.parameters():
            param.mul_(0.5)
    params = {n: p.detach().unsqueeze(0) for n, p in copied.model.named_parameters()}
    got = copied.backend.graph_free(params, coords, low_precision=True)[0]  # the original's ends: other numbers
    assert torch.equal(got, _siren_by_hand(copied.model, params, coords, (0, -1)))


def test_full_precision_wrappers_are_removed_when_a_pass_fails():
    model = Siren(2, 3, 16, 2)
    own_forward = model.output.forward
    model.output.forward = own_forward  # a user's own instance-level patch must survive the pass
    learner = ContextPruningMetaLearner(model, graph_free_dtype=torch.bfloat16, coord_range=None)
    with pytest.raises(RuntimeError):
        learner.backend.graph_free(_perturbed_params(model, 2), torch.zeros(2, 5, 7), low_precision=True)
    assert model.output.__dict__["forward"] is own_forward
    assert "forward" not in model.layers[0].linear.__dict__


def test_compiled_full_precision_pass_matches_eager_and_keeps_its_graphs(dynamo_without_inductor):
    """Each module keeps one wrapper, so repeated compiled bf16 passes reuse their graph (no recompiles)."""
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2)
    eager = ContextPruningMetaLearner(model, graph_free_dtype=torch.bfloat16, coord_range=None)
    compiled = ContextPruningMetaLearner(model, graph_free_dtype=torch.bfloat16, compile=True, coord_range=None)
    params = _perturbed_params(model, 2)
    coords = torch.rand(2, 20, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(3):
            got = compiled.backend.graph_free(params, coords, low_precision=True)[0]
    assert torch.equal(got, eager.backend.graph_free(params, coords, low_precision=True)[0])
    assert torch.equal(got, _siren_by_hand(model, params, coords, (0, -1)))
    adapter = GradScaledAdapter(compiled)  # another backend of the same model reuses the graph
    assert torch.equal(adapter.backend.graph_free(params, coords, low_precision=True)[0], got)
    assert dynamo_without_inductor["stats"]["unique_graphs"] == 1


def test_compiled_passes_of_one_model_keep_each_full_precision_choice(dynamo_without_inductor):
    """Learners of one model with and without float32 ends share the compiled function's cache: its guards
    must tell the two apart (a graph traced without the wrappers must not serve a pass that has them)."""
    model = Siren(2, 3, 16, 2)
    params = _perturbed_params(model, 2)
    coords = torch.rand(2, 20, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for spec, full_precision in [((), ()), ("ends", (0, -1)), ((), ())]:
        learner = ContextPruningMetaLearner(
            model, graph_free_dtype=torch.bfloat16, graph_free_full_precision=spec, compile=True, coord_range=None
        )
        got = learner.backend.graph_free(params, coords, low_precision=True)[0]
        assert torch.equal(got, _siren_by_hand(model, params, coords, full_precision))
    assert dynamo_without_inductor["stats"]["unique_graphs"] == 2


def test_full_precision_names_are_checked():
    model = Siren(2, 3, 16, 2)
    with pytest.raises(ValueError, match=r"graph_free_full_precision names \['net.0'\].*layers.0"):
        ContextPruningMetaLearner(model, graph_free_full_precision=("net.0",))
    with pytest.raises(TypeError, match="graph_free_full_precision must be"):
        ContextPruningMetaLearner(model, graph_free_full_precision=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="graph_free_full_precision must be"):
        ContextPruningMetaLearner(model, graph_free_full_precision="output")
    config = ContextPruningMetaLearner(model, graph_free_full_precision=["output"]).config
    assert config.graph_free_full_precision == ("output",)
    assert type(config).from_dict(config.to_dict()) == config
    adapter = GradScaledAdapter(ContextPruningMetaLearner(model, graph_free_full_precision=("output",)))
    assert adapter.config.graph_free_full_precision == ("output",)
    assert GradScaledAdapter(model, graph_free_full_precision=()).config.graph_free_full_precision == ()


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = TinySiren(2, 3).double()
    batch = _batch(dtype=torch.float64)
    eager = meta_grads(ContextPruningMetaLearner(model, K=2, L=1, coord_range=None), batch)
    learner = ContextPruningMetaLearner(model, K=2, L=1, compile=True, coord_range=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = meta_grads(learner, batch)
        meta_grads(learner, batch)
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1
    assert torch.equal(eager[0], compiled[0]) and all(
        torch.equal(a, b) for a, b in zip(eager[1], compiled[1], strict=True)
    )


def _recording_compile(monkeypatch) -> list[dict]:
    """Replace torch.compile by one that records its keyword arguments and returns the function itself."""
    calls: list[dict] = []

    def record(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", record)
    return calls


def test_cuda_graph_mode_off_cuda_warns_once_and_compiles_in_default_mode(monkeypatch):
    calls = _recording_compile(monkeypatch)
    model = TinySiren(2, 3).double()
    batch = _batch(dtype=torch.float64)
    eager = meta_grads(ContextPruningMetaLearner(model, K=2, L=1, coord_range=None), batch)
    learner = ContextPruningMetaLearner(model, K=2, L=1, compile="reduce-overhead", coord_range=None)
    assert learner.config.compile == "reduce-overhead"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = meta_grads(learner, batch)
        meta_grads(learner, batch)
    messages = [str(w.message) for w in caught if "CUDA graphs" in str(w.message)]
    assert len(messages) == 1 and "compile='reduce-overhead'" in messages[0] and "on cpu" in messages[0]
    assert calls == [{"dynamic": False}]  # torch's default mode, compiled once
    assert not learner.backend.compiler._graphs
    assert torch.equal(eager[0], compiled[0]) and all(
        torch.equal(a, b) for a, b in zip(eager[1], compiled[1], strict=True)
    )


def test_compile_takes_torch_compile_modes(monkeypatch):
    calls = _recording_compile(monkeypatch)
    model = TinySiren(2, 3)
    learner = ContextPruningMetaLearner(model, K=2, L=1, compile="max-autotune-no-cudagraphs", coord_range=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a CUDA-graph mode: no warning
        meta_grads(learner, _batch())
    assert calls == [{"dynamic": False, "mode": "max-autotune-no-cudagraphs"}]
    assert type(learner.config).from_dict(learner.config.to_dict()).compile == "max-autotune-no-cudagraphs"
    with pytest.raises(ValueError, match=r"compile must be True, False or one of torch\.compile's modes"):
        ContextPruningMetaLearner(model, compile="fast")
    with pytest.raises(TypeError, match=r"compile must be a bool or a torch\.compile mode string, got float"):
        ContextPruningMetaLearner(model, compile=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_mode_matches_eager_on_cuda():
    """On a GPU: the replayed passes give the eager meta-gradients, and an output survives the next replay."""
    torch.manual_seed(0)
    model = Siren(2, 3, 32, 2).cuda()
    coords, values = make_grid((16, 16)).cuda(), torch.rand(4, 256, 3, device="cuda")
    eager = meta_grads(ContextPruningMetaLearner(copy.deepcopy(model), K=4, L=2, seed=0), (coords, values))
    learner = ContextPruningMetaLearner(copy.deepcopy(model), K=4, L=2, seed=0, compile="reduce-overhead")
    for _ in range(3):  # the first calls record, the later ones replay
        graphs = meta_grads(learner, (coords, values))
    assert learner.backend.compiler._graphs and not learner.backend.compiler.failed
    torch.testing.assert_close(graphs[0], eager[0], rtol=1e-4, atol=1e-6)
    for a, b in zip(graphs[1], eager[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    params = {n: p.detach().unsqueeze(0).expand(4, *p.shape) for n, p in model.named_parameters()}
    first = learner.backend.graph_free(params, coords)[0]
    kept = first.clone()
    learner.backend.graph_free({n: p * 1.01 for n, p in params.items()}, coords)
    assert torch.equal(first, kept)


@pytest.fixture
def dynamo_without_inductor(monkeypatch):
    """torch.compile with dynamo's ``"eager"`` backend (its graph cache and guards, no C++ compilation: fast),
    from an empty cache; yields dynamo's counters."""
    import torch._dynamo

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend="eager", **kwargs))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def test_full_compile_cache_warns_once_and_keeps_the_numbers(monkeypatch, dynamo_without_inductor):
    """Past torch's recompile limit a pass runs eagerly after one library warning, not torch's silent fallback."""
    import torch._dynamo

    from ecop_wrap._src.backends import compiled as compiled_forward

    monkeypatch.setattr(compiled_forward, "RECOMPILE_LIMIT", 1)
    model = TinySiren(2, 3).double()
    batch = _batch(dtype=torch.float64)
    eager = meta_grads(ContextPruningMetaLearner(model, K=2, L=1, coord_range=None), batch)
    learner = ContextPruningMetaLearner(model, K=2, L=1, compile=True, coord_range=None)
    with torch._dynamo.config.patch(recompile_limit=1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = meta_grads(learner, batch)  # ranking at theta_0 ([1, k]) then [B, k], bootstrap with grad: 3 graphs
        meta_grads(learner, batch)
    messages = [str(w.message) for w in caught if "cache of the graph-free forward is full" in str(w.message)]
    assert len(messages) == 1
    assert not learner.backend.compiler.failed  # the graph it has is still used
    assert dynamo_without_inductor["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-12, atol=0)
    for a, b in zip(compiled[1], eager[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_learners_of_different_models_all_compile(dynamo_without_inductor):
    """Every backend shares one compiled function's cache; with torch's default limit of 8 graphs the third
    model below would run eagerly without a word. The library allows RECOMPILE_LIMIT graphs for its calls."""
    import torch._dynamo

    batch = _batch()
    with torch._dynamo.config.patch(recompile_limit=8), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for width in (8, 12, 16, 20):
            learner = ContextPruningMetaLearner(Siren(2, 3, width, 1), K=2, L=1, compile=True, coord_range=None)
            meta_grads(learner, batch)
            GradScaledAdapter(learner, steps=2, pruned_steps=1, compile=True).fit(batch)
    assert dynamo_without_inductor["stats"]["unique_graphs"] > 8


@NEEDS_CXX
def test_compiled_graph_free_passes_match_eager():
    """Inductor on CPU: the compiled ranking/bootstrap forwards give the same meta-gradient up to rounding."""
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 1)
    batch = _batch()
    eager = meta_grads(ContextPruningMetaLearner(model, K=1, L=1, coord_range=None), batch)
    learner = ContextPruningMetaLearner(model, K=1, L=1, compile=True, coord_range=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would hide that nothing was compiled
        compiled = meta_grads(learner, batch)
    assert learner.backend.compiler.compiled is not None and not learner.backend.compiler.failed
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=0)
    for a, b in zip(compiled[1], eager[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@NEEDS_CXX
def test_inductor_compiles_bf16_passes_with_float32_ends():
    """Inductor on CPU traces the full-precision wrappers: no fallback, and the meta-loss stays near eager's."""
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 1)
    batch = _batch()
    options = {"K": 1, "L": 1, "graph_free_dtype": torch.bfloat16, "coord_range": None}
    eager = meta_grads(ContextPruningMetaLearner(model, **options), batch)
    learner = ContextPruningMetaLearner(model, compile=True, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would hide that nothing was compiled
        compiled = meta_grads(learner, batch)
    assert learner.backend.compiler.compiled is not None and not learner.backend.compiler.failed
    torch.testing.assert_close(compiled[0], eager[0], rtol=0.02, atol=0)


@NEEDS_CXX
def test_compiled_adapter_fits_like_eager():
    """Inductor on CPU: compiled full-context and pruned test-time steps follow the eager fit up to rounding."""
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 1)
    batch = _batch()
    eager = GradScaledAdapter(model, steps=3, gamma=0.25, pruned_steps=1, coord_range=None)
    compiled = GradScaledAdapter(model, steps=3, gamma=0.25, pruned_steps=1, compile=True, coord_range=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would hide that nothing was compiled
        got = compiled.fit(batch)
    want = eager.fit(batch)
    assert compiled.backend.compiler.compiled is not None and not compiled.backend.compiler.failed
    torch.testing.assert_close(got.history["psnr"], want.history["psnr"], rtol=1e-4, atol=0)
    for name, param in got.params.items():
        torch.testing.assert_close(param, want.params[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("native", [False, True], ids=["emulated-bf16", "native-bf16"])
def test_bf16_on_a_cpu_without_native_bf16_warns_once_it_is_requested(monkeypatch, native):
    """Without AVX512-BF16/AMX the bf16 passes are emulated and slower than float32: the user is told."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    model = Siren(2, 3, 16, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ContextPruningMetaLearner(model, K=2, L=1, coord_range=None)  # float32: never a warning
        ContextPruningMetaLearner(model, K=2, L=1, coord_range=None, graph_free_dtype=torch.bfloat16)
    messages = [str(w.message) for w in caught if "native bf16" in str(w.message)]
    assert len(messages) == (0 if native else 1)
    if messages:
        assert "graph_free_dtype" in messages[0] and "slower than float32" in messages[0]


@pytest.mark.parametrize("option", ["graph_free_dtype", "autocast_dtype"])
def test_lower_precision_on_a_float64_model_warns_that_it_does_nothing(option):
    """torch.autocast lowers float32 tensors only: the option would be silently ignored."""
    model = TinySiren(2, 3).double()
    batch = _batch(dtype=torch.float64)
    with pytest.warns(UserWarning, match=f"{option} has no effect on this float64 model") as caught:
        learner = ContextPruningMetaLearner(model, K=2, L=1, coord_range=None, **{option: torch.bfloat16})
    assert caught[0].filename == __file__  # points at the user's line, not inside the library
    plain = ContextPruningMetaLearner(model, K=2, L=1, coord_range=None)
    assert torch.equal(learner.meta_loss(batch), plain.meta_loss(batch))


@pytest.mark.parametrize("batching", ["loop", "bmm"])
@pytest.mark.parametrize("pieces", ["auto", 32])
def test_ranking_in_pieces_keeps_every_pruned_set_and_the_meta_gradient(monkeypatch, batching, pieces):
    """The ranking forwards in pieces (on a CPU by default, rank_chunk="auto") give the same pruned sets, step by
    step, and the same meta-gradient as whole-context ranking (float64, to a tolerance of rounding)."""
    from ecop_wrap._src import builder

    monkeypatch.setattr(builder, "CPU_RANK_CHUNK", 40)  # the test's 144 points: 4 pieces
    coords, values = _batch(side=12, batch=3, dtype=torch.float64)
    model = TinySiren(2, 3).double()

    def run(rank_chunk: str | int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        learner = ContextPruningMetaLearner(
            copy.deepcopy(model), K=3, L=2, gamma=0.25, batching=batching, rank_chunk=rank_chunk
        )
        ctx = learner.evaluator((coords, values))
        assert ctx.rank_chunk == {"whole": None, "auto": 40, 32: 32}[rank_chunk]
        pruned: list[torch.Tensor] = []
        step = ctx.sgd_step
        monkeypatch.setattr(ctx, "sgd_step", lambda p, idx, *a, **k: (pruned.append(idx), step(p, idx, *a, **k))[1])
        monkeypatch.setattr(learner, "evaluator", lambda batch, check=True: ctx)
        loss = learner.meta_objective((coords, values)).loss
        return pruned, list(torch.autograd.grad(loss, list(learner.model.parameters())))

    whole_idx, whole_grads = run("whole")
    piece_idx, piece_grads = run(pieces)
    assert len(piece_idx) == 3 and all(torch.equal(a, b) for a, b in zip(whole_idx, piece_idx, strict=True))
    for a, b in zip(whole_grads, piece_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_rank_chunk_auto_pieces_only_a_larger_cpu_context_and_yields_to_chunk_size():
    from ecop_wrap._src.builder import CPU_RANK_CHUNK

    small = make_grid((8, 8)), torch.rand(2, 64, 3)
    assert ContextPruningMetaLearner(TinySiren(2, 3)).evaluator(small).rank_chunk is None
    side = int(CPU_RANK_CHUNK**0.5) + 2
    large = make_grid((side, side)), torch.rand(1, side * side, 3)
    assert ContextPruningMetaLearner(TinySiren(2, 3)).evaluator(large).rank_chunk == CPU_RANK_CHUNK
    assert ContextPruningMetaLearner(TinySiren(2, 3), rank_chunk="whole").evaluator(large).rank_chunk is None
    assert ContextPruningMetaLearner(TinySiren(2, 3), chunk_size=100).evaluator(large).rank_chunk == 100


@pytest.mark.parametrize("bad", ["pruned", 0, True, 2.5])
def test_rank_chunk_is_checked(bad):
    with pytest.raises(ValueError, match=r'rank_chunk must be "auto", "whole" or a number of points >= 1'):
        ContextPruningMetaLearner(TinySiren(2, 3), rank_chunk=bad)
