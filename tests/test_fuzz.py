"""Property tests over random valid problems: finite results, exact pruned-set sizes, backends that agree.

Bounded to stay fast (small shapes, ``MAX_EXAMPLES`` cases, derandomized so every run checks the same
cases). See how many ran with ``pytest tests/test_fuzz.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import record_selections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import TinySiren

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter
from ecop_wrap.extend import ALL_POINTS

MAX_EXAMPLES = 50
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def problems(draw) -> dict:
    """A random valid ECoP configuration and batch description."""
    points = draw(st.integers(1, 30))
    return {
        "B": draw(st.integers(1, 3)),
        "M": points,
        "C": draw(st.integers(1, 3)),
        "D": draw(st.integers(1, 3)),
        "depth": draw(st.integers(1, 2)),
        "shared": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
        "learner": {
            "gamma": draw(st.floats(0.01, 1.0)),
            "K": draw(st.integers(1, 3)),
            "L": draw(st.integers(0, 2)),
            "lam": draw(st.sampled_from([0.0, 0.5, 10.0])),
            "chunk_size": draw(st.one_of(st.none(), st.integers(1, points + 3))),
            "selection": draw(st.sampled_from(["error", "random", "gradncp"])),
            "first_order": draw(st.booleans()),
            "checkpoint": draw(st.booleans()),
        },
    }


def _batch(p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(p["seed"])
    shape = (p["M"], p["C"]) if p["shared"] else (p["B"], p["M"], p["C"])
    coords = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    return coords, torch.rand(p["B"], p["M"], p["D"], generator=gen, dtype=torch.float64)


def _check_selections(seen: list, p: dict) -> None:
    k = max(1, int(p["learner"]["gamma"] * p["M"]))
    assert len(seen) == p["learner"]["K"]  # one ranking per inner step
    for idx in seen:
        if k >= p["M"]:
            assert idx is ALL_POINTS  # the whole context: nothing to rank
            continue
        assert idx.shape == (p["B"], k)
        assert int(idx.min()) >= 0 and int(idx.max()) < p["M"]
        assert all(len(set(row.tolist())) == k for row in idx)  # k distinct points per signal


def _run(model: torch.nn.Module, p: dict, backend: str):
    """One clipped meta_step, then a 2-step fit from the updated model.

    The outer step is kept small (lr 1e-3, norm clipped to 1): a SIREN thrown far by an unclipped step sits
    where one fit step amplifies rounding-level differences between backends by ~1e7, which would test
    chaos rather than the library.
    """
    model = copy.deepcopy(model)
    learner = ContextPruningMetaLearner(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
        backend=backend,
        seed=p["seed"],
        max_grad_norm=1.0,
        coord_range=None,
        **p["learner"],
    )
    seen = record_selections(learner)
    batch = _batch(p)
    stats = learner.meta_step(batch)
    fit = GradScaledAdapter(learner, steps=2).fit(batch)
    return stats, seen, [q.detach() for q in model.parameters()], fit


@FUZZ
@given(p=problems())
def test_meta_step_and_fit_are_finite_exact_and_backend_independent(p):
    torch.manual_seed(p["seed"])
    model = TinySiren(p["C"], p["D"], width=6, depth=p["depth"]).double()
    results = {backend: _run(model, p, backend) for backend in ("torch.func", "higher")}
    for stats, seen, params, fit in results.values():
        assert stats["skipped"] == 0.0
        assert all(math.isfinite(v) for v in stats.values())
        _check_selections(seen, p)
        assert all(torch.isfinite(q).all() for q in params)
        assert fit.history["mse"].shape == (3, p["B"]) and torch.isfinite(fit.history["mse"]).all()
        assert int(fit.skipped.sum()) == 0
    (s1, sel1, p1, f1), (s2, sel2, p2, f2) = results["torch.func"], results["higher"]
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-6, abs=1e-12)
    for a, b in zip(sel1, sel2, strict=True):  # same pruned sets (compared as sets: topk order is unspecified)
        assert (a is ALL_POINTS) == (b is ALL_POINTS)
        if a is not ALL_POINTS:
            assert torch.equal(a.sort(dim=1).values, b.sort(dim=1).values)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(f1.history["mse"], f2.history["mse"], rtol=1e-6, atol=1e-12)
