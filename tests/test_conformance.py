"""Every model family through the same checks, against the independent float64 references.

One row of ``FAMILIES`` per model family (the bundled INRs, ModulatedSiren adapting its latent and all its
weights, the reference's own TinySiren, and a custom module with a buffer and a non-Linear parameter); every
test below runs every row, as optax runs every optimizer through one table. The checks:

- meta-gradients equal ``tests/reference.py``'s per-signal ones, on both backends, shared and per-signal
  coordinates, for ECoP (pruned, bootstrap), Learnit (full context) and pruning without the bootstrap;
- every memory and batching mode (chunks, checkpointing, bmm/vmap/loop where they apply, first order, a
  bootstrap rate of its own) equals the reference too, and the two backends agree with each other;
- random selection equals ``tests/reference_subsets.py`` for the one subset sequence it drew;
- ``batching="auto"`` settles on the family's mode lazily and agrees with the loop;
- test-time fitting equals ``ref_fit``;
- a float32 meta-step updates every parameter and keeps every buffer, and fitting lowers every error.

Model-specific tests (encodings, shapes, argument checks, initialisation) stay in each model's test file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from helpers import TINY_HASHGRID, TINY_NERV, ScaledSine, assert_all_close, meta_grads, state_snapshot
from reference import TinySiren, ref_fit, ref_meta_grads
from reference_subsets import all_subset_sequences, ref_meta_loss_given_subsets
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, FourierFeatureMLP, GradScaledAdapter, ModulatedSiren, Siren, make_grid
from ecop_wrap.models import HashGridINR, NeRV

BACKENDS = ["torch.func", "higher"]
# float64 throughout: the library and the reference differ only by the order of their floating-point sums
LOSS_RTOL = 1e-9
GRAD_TOL = {"rtol": 1e-8, "atol": 1e-12}
FIT_TOL = {"mse": {"rtol": 1e-9, "atol": 1e-14}, "params": {"rtol": 1e-9, "atol": 1e-12}}


def _modulated_siren() -> ModulatedSiren:
    model = ModulatedSiren(2, 3, 12, 2, latent_dim=4)
    with torch.no_grad():  # a non-zero starting code, so every term of the gradient is exercised
        model.latent.normal_(0, 0.1)
    return model


def _grid_modulated_siren() -> ModulatedSiren:
    model = ModulatedSiren(2, 3, 12, 2, latent_dim=4, latent_grid=(3, 4))  # spatial functa: a code per grid node
    with torch.no_grad():
        model.latent.normal_(0, 0.1)
    return model


@dataclass(frozen=True)
class Family:
    """One model family and the problem sizes its checks run at.

    Attributes:
        name: the row's test id.
        make: builds the model (float32; the tests seed the RNG and convert).
        points: context points of one signal: a square grid of 2-D coordinates (RGB values), or, with
            ``frames``, frame times ``[T, 1]`` with frames of 2 x 4 x 4 as values ``[B, T, 32]``.
        inner_lr: the meta-learning inner step size.
        gamma: ECoP's kept fraction.
        chunk_sizes: a chunk size for chunking alone, and one for chunking with checkpointing.
        auto: the batching mode ``"auto"`` settles on.
        fit_lr: the test-time fitting step size.
        adapt: the learner's ``adapt=`` (None: every parameter).
        frames: a point is a frame (NeRV).
    """

    name: str
    make: Callable[[], nn.Module]
    points: int
    inner_lr: float
    gamma: float
    chunk_sizes: tuple[int, int]
    auto: str
    fit_lr: float
    adapt: list[str] | None = None
    frames: bool = False

    def model(self, dtype: torch.dtype = torch.float64) -> nn.Module:
        torch.manual_seed(0)
        return self.make().to(dtype)

    def signals(
        self, *, shared: bool = True, batch: int = 2, points: int | None = None, dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates (``[M, C]``, or jittered ``[B, M, C]`` inside [-1, 1]) and random values in [0, 1]."""
        points = points or self.points
        gen = torch.Generator().manual_seed(1)
        if self.frames:
            coords, channels = make_grid((points,), dtype=dtype), 32
        else:
            side = math.isqrt(points)
            assert side * side == points, f"{self.name}: {points} points are not a square grid"
            coords, channels = make_grid((side, side), dtype=dtype), 3
        if not shared:
            jitter = 0.05 * torch.randn(batch, *coords.shape, generator=gen, dtype=dtype)
            coords = (coords + jitter).clamp(-1.0, 1.0)
        return coords, torch.rand(batch, points, channels, generator=gen, dtype=dtype)

    def learner(self, model: nn.Module, **config: object) -> ContextPruningMetaLearner:
        kw = {"inner_lr": self.inner_lr, "outer_lr": 1e-4, "adapt": self.adapt, **config}
        return ContextPruningMetaLearner(model, **kw)  # type: ignore[arg-type]

    def adapted(self, model: nn.Module) -> list[str]:
        return self.adapt if self.adapt is not None else [n for n, _ in model.named_parameters()]

    @property
    def batchings(self) -> tuple[str, ...]:
        """The explicit batching modes of torch.func that apply (bmm only to stacks of nn.Linear)."""
        return ("bmm", "vmap", "loop") if self.auto == "bmm" else ("vmap", "loop")


FAMILIES = [
    Family("tiny-siren", lambda: TinySiren(2, 3), 36, 1e-2, 0.25, (7, 10), "bmm", 1e-2),
    Family("siren", lambda: Siren(2, 3, 16, 2), 36, 1e-2, 0.25, (7, 10), "bmm", 1e-2),
    Family(
        "fourier",
        lambda: FourierFeatureMLP(2, 3, num_frequencies=8, scale=2.0, hidden_features=16, hidden_layers=2),
        36,
        1e-2,
        0.25,
        (7, 10),
        "bmm",
        1e-2,
    ),
    Family("modulated-latent", _modulated_siren, 36, 1e-2, 0.25, (7, 10), "vmap", 1e-2, adapt=["latent"]),
    Family("modulated-all", _modulated_siren, 36, 1e-2, 0.25, (7, 10), "vmap", 1e-2),
    Family("modulated-grid", _grid_modulated_siren, 36, 1e-2, 0.25, (7, 10), "vmap", 1e-2, adapt=["latent"]),
    Family("hashgrid", lambda: HashGridINR(2, 3, **TINY_HASHGRID), 25, 1e-2, 0.25, (7, 5), "vmap", 0.5),
    # the paper's NeRV inner learning rate; 6 frames of 2 x 4 x 4
    Family("nerv", lambda: NeRV((2, 4, 4), **TINY_NERV), 6, 0.1, 0.5, (2, 4), "vmap", 0.1, frames=True),
    Family("custom", ScaledSine, 36, 1e-2, 0.25, (7, 10), "vmap", 1e-2),
]
FAMILY_IDS = [f.name for f in FAMILIES]
SHARED = pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-signal"])


def _settings(family: Family) -> dict[str, dict[str, float]]:
    return {
        "ecop": {"gamma": family.gamma, "K": 3, "L": 2, "lam": 10.0},  # error selection, bootstrap L > 0, lam > 0
        "learnit": {"gamma": 1.0, "K": 2, "L": 0, "lam": 0.0},
        "pruned-no-boot": {"gamma": 0.34, "K": 2, "L": 0, "lam": 0.0},
    }


def _modes(family: Family) -> dict[str, dict[str, object]]:
    """Every memory and batching mode, by test id; each must change no number beyond rounding."""
    alone, with_checkpoint = family.chunk_sizes
    modes: dict[str, dict[str, object]] = {
        f"chunk_size={alone}": {"chunk_size": alone},
        "checkpoint": {"checkpoint": True},
        f"chunk_size={with_checkpoint},checkpoint": {"chunk_size": with_checkpoint, "checkpoint": True},
    }
    modes |= {f"batching={b}": {"batching": b} for b in family.batchings}
    modes |= {
        "boot_lr": {"boot_lr": 5e-2},
        "first_order": {"first_order": True},
        "boot_lr,first_order": {"boot_lr": 5e-2, "first_order": True},
        "higher,checkpoint,chunk_size=1": {"backend": "higher", "checkpoint": True, "chunk_size": 1},
    }
    return modes


def _assert_matches_reference(family, model, batch, ref_kw, **config):
    """The library's meta-loss and meta-gradients under ``config`` equal the reference's under ``ref_kw``."""
    coords, values = batch
    learner = family.learner(model, **config)
    adapted = family.adapted(model)
    assert learner.adapted == adapted
    split = not learner.config.boot_trains_shared  # the shared parameters' gradient is the fit term's alone
    ref_loss, ref_grads = ref_meta_grads(
        model, coords, values, lr=family.inner_lr, adapted=adapted, shared_from_fit=split, **ref_kw
    )
    loss, grads = meta_grads(learner, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=LOSS_RTOL, atol=0)
    assert_all_close(grads, ref_grads, **GRAD_TOL)
    return learner, grads


# ---------------------------------------------------------------------------------------- meta-gradients
@pytest.mark.parametrize("setting", ["ecop", "learnit", "pruned-no-boot"])
@SHARED
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_meta_gradients_match_reference(family, backend, shared, setting):
    model = family.model()
    config = _settings(family)[setting]
    _, grads = _assert_matches_reference(
        family, model, family.signals(shared=shared), config, backend=backend, **config
    )
    zero = [n for (n, _), g in zip(model.named_parameters(), grads, strict=True) if not bool(g.abs().sum() > 0)]
    assert not zero, f"parameters without a meta-gradient: {zero}"  # the adapted and the shared ones alike


MODE_CASES = [(f, mode_id, mode) for f in FAMILIES for mode_id, mode in _modes(f).items()]


@SHARED
@pytest.mark.parametrize(("family", "mode_id", "mode"), MODE_CASES, ids=[f"{f.name}-{m}" for f, m, _ in MODE_CASES])
def test_every_memory_and_batching_mode_matches_reference(family, mode_id, mode, shared):
    model = family.model()
    config = _settings(family)["ecop"]
    ref_kw = dict(config, boot_lr=mode.get("boot_lr"), first_order=mode.get("first_order", False))
    _assert_matches_reference(family, model, family.signals(shared=shared), ref_kw, **config, **mode)


STEP_LOSS_MODES = {
    "default": {},
    "checkpoint": {"checkpoint": True},
    "chunk,checkpoint": {"chunk_size": 10, "checkpoint": True},
    "first_order": {"first_order": True},
    "higher,checkpoint": {"backend": "higher", "checkpoint": True},
}


@pytest.mark.parametrize("setting", ["ecop", "learnit"])
@pytest.mark.parametrize("mode_id", list(STEP_LOSS_MODES))
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_multi_step_loss_matches_reference(family, mode_id, setting):
    """step_loss: the pruned-context losses at theta_1 .. theta_{K-1} join each signal's fit term (MAML++)."""
    model = family.model()
    mode = STEP_LOSS_MODES[mode_id]
    config = {**_settings(family)[setting], "step_loss": 0.5}
    ref_kw = dict(config, first_order=mode.get("first_order", False))
    batch = family.signals(shared=False)
    _assert_matches_reference(family, model, batch, ref_kw, **config, **mode)
    without, _ = ref_meta_grads(
        model, *batch, lr=family.inner_lr, adapted=family.adapted(model), **config | {"step_loss": 0.0}
    )
    with_steps, _ = ref_meta_grads(model, *batch, lr=family.inner_lr, adapted=family.adapted(model), **config)
    assert float(with_steps) > float(without)  # the term is there (its losses are positive)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_both_backends_agree(family):
    model = family.model()
    batch = family.signals(shared=False, batch=3)
    config = _settings(family)["ecop"]
    torch_func = meta_grads(family.learner(model, backend="torch.func", **config), batch)
    higher = meta_grads(family.learner(model, backend="higher", **config), batch)
    torch.testing.assert_close(torch_func[0], higher[0], rtol=1e-12, atol=0)
    assert_all_close(torch_func[1], higher[1], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("selection", ["random", "soft", "mixed"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_random_selection_matches_the_reference_for_the_subsets_it_drew(family, backend, selection):
    """4 points, 2 kept per step, K = 2: the library's draw must be one of the 36 possible subset sequences."""
    model = family.model()
    coords, values = family.signals(batch=1, points=4)
    config = {"gamma": 0.5, "K": 2, "L": 2, "lam": 10.0}
    # the paper's gradient (the reference differentiates one loss), for the families with shared parameters too
    learner = family.learner(model, backend=backend, selection=selection, seed=3, boot_trains_shared=True, **config)
    loss, grads = meta_grads(learner, (coords, values))
    ref_kw = {"L": 2, "lam": 10.0, "lr": family.inner_lr, "adapted": family.adapted(model)}
    matches = []
    with torch.no_grad():
        for subsets in all_subset_sequences(num_points=4, keep=2, steps=2):
            with torch.enable_grad():
                candidate = ref_meta_loss_given_subsets(model, coords, values, [subsets], **ref_kw)
            if torch.isclose(candidate, loss, rtol=1e-12, atol=0):
                matches.append(subsets)
    assert matches, "the library's random-selection loss matches no subset sequence"
    trainable = [p for p in model.parameters() if p.requires_grad]
    ref_grads = [
        torch.autograd.grad(ref_meta_loss_given_subsets(model, coords, values, [m], **ref_kw), trainable)
        for m in matches
    ]
    # several sequences match only where they are indistinguishable: a grid latent whose nodes sit on the four
    # points gives each point its own code, so steps on {1, 2} then {2, 3} equal {2, 3} then {1, 2}
    for other in ref_grads[1:]:
        assert_all_close(other, ref_grads[0], **GRAD_TOL)
    assert len(matches) == 1 or family.name == "modulated-grid", f"{len(matches)} subset sequences match"
    assert_all_close(grads, ref_grads[0], **GRAD_TOL)


# ------------------------------------------------------------------------------------------------ batching
@SHARED
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_auto_batching_settles_lazily_and_agrees_with_the_loop(family, shared):
    model = family.model()
    batch = family.signals(shared=shared)
    config = _settings(family)["ecop"]
    learner = family.learner(model, **config)
    assert learner.backend.batching == "auto"  # chosen on the first forward, not at construction
    auto = meta_grads(learner, batch)
    assert learner.backend.batching == family.auto
    loop = meta_grads(family.learner(model, batching="loop", **config), batch)
    torch.testing.assert_close(auto[0], loop[0], rtol=1e-12, atol=0)
    assert_all_close(auto[1], loop[1], rtol=1e-10, atol=1e-12)
    if "bmm" not in family.batchings:
        with pytest.raises(ValueError, match=r"bmm.*nn\.Linear"):
            family.learner(model, batching="bmm")


# --------------------------------------------------------------------------------------------- fitting
@SHARED
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_gradient_scaled_fit_matches_reference(family, shared):
    model = family.model()
    coords, values = family.signals(shared=shared)
    adapted = family.adapted(model)
    kw = {"steps": 3, "lr": family.fit_lr, "gamma": family.gamma}
    fit = GradScaledAdapter(model, scaling="norm", adapt=family.adapt, **kw).fit((coords, values))
    assert set(fit.params) == set(adapted)
    for b in range(values.shape[0]):
        x = coords if shared else coords[b]
        ref_params, ref_mse = ref_fit(model, x, values[b], scaling="norm", adapted=adapted, **kw)
        torch.testing.assert_close(fit.history["mse"][:, b], ref_mse, **FIT_TOL["mse"])
        for name, param in ref_params.items():
            torch.testing.assert_close(fit.params[name][b], param, **FIT_TOL["params"])
    assert bool((fit.history["mse"][-1] < fit.history["mse"][0]).all()), "fitting reduces every signal's error"
    assert fit(coords).shape == values.shape


# -------------------------------------------------------------------------------------- float32, any module
@SHARED
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_float32_meta_steps_and_fit(family, backend, shared):
    """Two float32 meta-steps update every parameter and no buffer; fitting then lowers every signal's error."""
    model = family.model(torch.float32)
    batch = family.signals(shared=shared, dtype=torch.float32)
    before = state_snapshot(model)
    learner = family.learner(model, gamma=0.25, K=3, L=2, lam=10.0, outer_lr=1e-3, backend=backend)
    stats = [learner.meta_step(batch) for _ in range(2)]
    assert all(s["skipped"] == 0.0 and math.isfinite(s["loss"]) for s in stats)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters left untrained: {unchanged}"
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), f"buffer {name} must stay fixed"
    if backend == "torch.func":
        assert learner.backend.batching == family.auto
    result = GradScaledAdapter(learner, steps=4).fit(batch)
    mse = result.history["mse"]
    assert mse.shape == (5, 2) and bool(torch.isfinite(mse).all())
    assert bool((mse[-1] < mse[0]).all()), "fitting reduces every signal's error"
    assert result(batch[0]).shape == batch[1].shape
    assert set(result.params) == set(family.adapted(model))
