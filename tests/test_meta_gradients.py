"""Meta-gradients of both backends against the independent float64 reference in tests/reference.py."""

from __future__ import annotations

import itertools

import pytest
import torch
from reference import make_problem, ref_meta_grads

from ecop_wrap import ContextPruningMetaLearner

GRID = list(itertools.product([0.25, 1.0], [1, 3], [0, 2], [0.0, 10.0], [False, True], [1, 3]))


def _problem(shared: bool, d: int, batch: int = 2, side: int = 6):
    return make_problem(batch, side, d, shared)


def _library_grads(model, coords, values, **kw):
    learner = ContextPruningMetaLearner(model, outer_lr=1e-3, coord_range=None, **kw)
    loss = learner.meta_loss((coords, values))
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params)


def _assert_close(got, want, rtol=1e-6):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=rtol, atol=1e-10)


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
@pytest.mark.parametrize(("gamma", "K", "L", "lam", "shared", "d"), GRID)
def test_meta_gradients_match_reference(backend, gamma, K, L, lam, shared, d):
    model, coords, values = _problem(shared, d)
    ref_loss, ref_grads = ref_meta_grads(model, coords, values, gamma=gamma, K=K, L=L, lam=lam, lr=1e-2)
    loss, grads = _library_grads(model, coords, values, gamma=gamma, K=K, L=L, lam=lam, backend=backend)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    _assert_close(grads, ref_grads)


@pytest.mark.parametrize(
    "mode",
    [
        {"chunk_size": 7},
        {"checkpoint": True},
        {"chunk_size": 10, "checkpoint": True},
        {"batching": "vmap"},
        {"batching": "loop"},
        {"boot_lr": 5e-2},
        {"first_order": True},
    ],
    ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()),
)
@pytest.mark.parametrize("shared", [False, True])
def test_every_mode_matches_reference(mode, shared):
    model, coords, values = _problem(shared, 3)
    kw = dict(gamma=0.25, K=3, L=2, lam=10.0)
    ref_kw = dict(kw, lr=1e-2, boot_lr=mode.get("boot_lr"), first_order=mode.get("first_order", False))
    ref_loss, ref_grads = ref_meta_grads(model, coords, values, **ref_kw)
    loss, grads = _library_grads(model, coords, values, **kw, **mode)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    _assert_close(grads, ref_grads)


def test_backends_agree_with_each_other():
    model, coords, values = _problem(False, 3, batch=3)
    _, a = _library_grads(model, coords, values, gamma=0.25, K=3, L=2, lam=10.0, backend="torch.func")
    _, b = _library_grads(model, coords, values, gamma=0.25, K=3, L=2, lam=10.0, backend="higher")
    _assert_close(a, b, rtol=1e-9)


def test_meta_step_applies_the_reference_gradient():
    model, coords, values = _problem(True, 1)
    before = [p.detach().clone() for p in model.parameters()]
    _, ref_grads = ref_meta_grads(model, coords, values, gamma=0.25, K=3, L=2, lam=10.0, lr=1e-2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    learner = ContextPruningMetaLearner(model, 0.25, 3, 2, 10.0, optimizer=opt, coord_range=None)
    stats = learner.meta_step((coords, values))
    for p, p0, g in zip(model.parameters(), before, ref_grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g, rtol=1e-9, atol=1e-12)
    assert {"loss", "mse", "psnr", "boot_distance"} <= set(stats)
    assert stats["skipped"] == 0.0


def test_clipping_scales_the_global_norm():
    model, coords, values = _problem(True, 1)
    before = [p.detach().clone() for p in model.parameters()]
    _, ref_grads = ref_meta_grads(model, coords, values, gamma=0.25, K=2, L=0, lam=0.0, lr=1e-2)
    norm = torch.sqrt(sum((g**2).sum() for g in ref_grads))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    learner = ContextPruningMetaLearner(model, 0.25, 2, 0, 0.0, optimizer=opt, max_grad_norm=1e-3, coord_range=None)
    stats = learner.meta_step((coords, values))
    assert stats["grad_norm"] == pytest.approx(float(norm), rel=1e-9)
    for p, p0, g in zip(model.parameters(), before, ref_grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - g * (1e-3 / (norm + 1e-6)), rtol=1e-9, atol=1e-12)
