"""Meta-gradients of both backends against the independent float64 reference in tests/reference.py, over a
grid of ECoP's settings on the reference's TinySiren; the meta-step's update and gradient clipping.

Every memory and batching mode, and every model family, runs through the same checks in
tests/test_conformance.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import assert_all_close, meta_grads
from reference import make_problem, ref_meta_grads

from ecop_wrap import ContextPruningMetaLearner

GRID = list(itertools.product([0.25, 1.0], [1, 3], [0, 2], [0.0, 10.0], [False, True], [1, 3]))


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
@pytest.mark.parametrize(("gamma", "K", "L", "lam", "shared", "d"), GRID)
def test_meta_gradients_match_reference(backend, gamma, K, L, lam, shared, d):
    model, coords, values = make_problem(d=d, shared=shared)
    ref_loss, ref_grads = ref_meta_grads(model, coords, values, gamma=gamma, K=K, L=L, lam=lam, lr=1e-2)
    learner = ContextPruningMetaLearner(model, gamma=gamma, K=K, L=L, lam=lam, backend=backend, coord_range=None)
    loss, grads = meta_grads(learner, (coords, values))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    assert_all_close(grads, ref_grads, rtol=1e-6, atol=1e-10)


def test_meta_step_applies_the_reference_gradient():
    model, coords, values = make_problem(d=1, shared=True)
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
    model, coords, values = make_problem(d=1, shared=True)
    before = [p.detach().clone() for p in model.parameters()]
    _, ref_grads = ref_meta_grads(model, coords, values, gamma=0.25, K=2, L=0, lam=0.0, lr=1e-2)
    norm = torch.sqrt(sum((g**2).sum() for g in ref_grads))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    learner = ContextPruningMetaLearner(model, 0.25, 2, 0, 0.0, optimizer=opt, max_grad_norm=1e-3, coord_range=None)
    stats = learner.meta_step((coords, values))
    assert stats["grad_norm"] == pytest.approx(float(norm), rel=1e-9)
    for p, p0, g in zip(model.parameters(), before, ref_grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - g * (1e-3 / (norm + 1e-6)), rtol=1e-9, atol=1e-12)


RELATIVE_MODES = [{}, {"chunk_size": 5}, {"checkpoint": True}, {"bootstrap_chunk": "whole"}, {"first_order": True}]


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
@pytest.mark.parametrize("mode", RELATIVE_MODES, ids=["default", "chunk", "checkpoint", "boot-whole", "first-order"])
@pytest.mark.parametrize("shared", [False, True])
def test_relative_lambda_matches_reference(backend, mode, shared):
    """lam_mode="relative": lam times the constant norm of the loss gradient at theta_K, per signal."""
    model, coords, values = make_problem(d=2, shared=shared)
    kw = {"gamma": 0.25, "K": 3, "L": 2, "lam": 10.0}
    ref_loss, ref_grads = ref_meta_grads(
        model, coords, values, lr=1e-2, lam_mode="relative", first_order=mode.get("first_order", False), **kw
    )
    learner = ContextPruningMetaLearner(model, backend=backend, lam_mode="relative", coord_range=None, **kw, **mode)
    loss, grads = meta_grads(learner, (coords, values))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=0)
    assert_all_close(grads, ref_grads, rtol=1e-8, atol=1e-11)
    absolute, _ = ref_meta_grads(model, coords, values, lr=1e-2, first_order=mode.get("first_order", False), **kw)
    assert not torch.allclose(absolute, ref_loss)  # the two modes differ on this problem


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
@pytest.mark.parametrize("mode", RELATIVE_MODES, ids=["default", "chunk", "checkpoint", "boot-whole", "first-order"])
@pytest.mark.parametrize("boot_lr", [1e-2, 0.05, 5.0])  # the last point, a point inside the path, theta_K
def test_best_bootstrap_target_matches_reference(backend, mode, boot_lr):
    """boot_target="best": the point of lowest full-context loss on the bootstrap's path is the target."""
    torch.manual_seed(0)
    model, coords, values = make_problem(d=2, shared=True)
    kw = {"gamma": 0.25, "K": 3, "L": 3, "lam": 10.0, "boot_lr": boot_lr}
    first_order = mode.get("first_order", False)
    ref_loss, ref_grads = ref_meta_grads(
        model, coords, values, lr=1e-2, boot_target="best", first_order=first_order, **kw
    )
    learner = ContextPruningMetaLearner(model, backend=backend, boot_target="best", coord_range=None, **kw, **mode)
    loss, grads = meta_grads(learner, (coords, values))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=0)
    assert_all_close(grads, ref_grads, rtol=1e-8, atol=1e-11)


def test_best_bootstrap_target_picks_theta_k_last_or_a_point_between():
    """The three boot_lr of the test above reach each case (so each is checked against the reference)."""
    torch.manual_seed(0)
    model, coords, values = make_problem(d=2, shared=True)
    kw = {"gamma": 0.25, "K": 3, "L": 3, "lam": 10.0, "lr": 1e-2}
    distances = {}
    for boot_lr in (1e-2, 0.05, 5.0):
        last, _ = ref_meta_grads(model, coords, values, boot_lr=boot_lr, **kw)
        best, _ = ref_meta_grads(model, coords, values, boot_lr=boot_lr, boot_target="best", **kw)
        fit, _ = ref_meta_grads(model, coords, values, boot_lr=boot_lr, **{**kw, "lam": 0.0})
        distances[boot_lr] = (float(last - fit), float(best - fit))
    assert distances[1e-2][0] == pytest.approx(distances[1e-2][1], rel=1e-12)  # every step lowered the loss
    assert 0.0 < distances[0.05][1] < distances[0.05][0]  # a point between theta_K and the last
    assert distances[5.0][1] == 0.0 < distances[5.0][0]  # no step helped: theta_K itself, no pull


def test_relative_lambda_rejects_unknown_modes():
    model, _, _ = make_problem(d=1, shared=True)
    with pytest.raises(ValueError, match="lam_mode must be one of"):
        ContextPruningMetaLearner(model, lam_mode="squared")


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
@pytest.mark.parametrize("mode", [{}, {"chunk_size": 5}, {"checkpoint": True}], ids=["default", "chunk", "checkpoint"])
@pytest.mark.parametrize("lam_mode", ["absolute", "relative"])
def test_a_bootstrap_that_does_not_train_shared_parameters(backend, mode, lam_mode):
    """boot_trains_shared=False: shared parameters get the fit term's gradient only, the adapted ones' theta_0
    and the learned rates the whole meta-loss's."""
    model, coords, values = make_problem(d=2, shared=False)
    adapted = [n for n, _ in model.named_parameters()][-2:]
    kw = {"gamma": 0.25, "K": 3, "L": 2, "lam": 10.0}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    learner = ContextPruningMetaLearner(
        model, backend=backend, adapt=adapted, boot_trains_shared=False, lam_mode=lam_mode, optimizer=opt,
        coord_range=None, **kw, **mode,
    )  # fmt: skip
    ref = {"adapted": adapted, "lr": 1e-2, "lam_mode": lam_mode}
    _, total = ref_meta_grads(model, coords, values, **ref, **kw)
    _, fit_only = ref_meta_grads(model, coords, values, **ref, **{**kw, "lam": 0.0})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    want = [t if n in adapted else f for n, t, f in zip(names, total, fit_only, strict=True)]
    before = [p.detach().clone() for p in model.parameters()]
    learner.meta_step((coords, values))
    got = [p0 - p.detach() for p, p0 in zip(model.parameters(), before, strict=True)]  # SGD at lr 1: the gradient
    assert_all_close(got, want, rtol=1e-7, atol=1e-10)
    assert not torch.allclose(total[0], fit_only[0])  # the bootstrap does reach a shared parameter by default
