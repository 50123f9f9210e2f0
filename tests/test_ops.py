"""Deterministic op counts: how many top-level aten ops a meta-step dispatches (issue 25 item 1), and that the
op reductions behind them compute exactly what the per-parameter code computed.

Counted as ``benchmarks/speed --ops`` counts: the ``aten::*`` events of ``torch.profiler`` (CPU activity) that
no other ``aten::*`` event encloses, each attributed to its innermost ``ecop.*`` range. The counts are a function
of the model's structure and the settings only (not of the data or the sizes), so the bounds are exact numbers
measured with torch 2.13 CPU; another torch version may dispatch a few ops more or fewer per layer.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ecop_wrap import ContextPruningMetaLearner, SavedTensorMeter, Siren, make_grid
from ecop_wrap._src.backends import make_backend
from ecop_wrap._src.backends.torch_func import _view
from ecop_wrap._src.evaluator import ContextEvaluator
from ecop_wrap._src.numerics import gather_points, point_chunks, sgd_update
from ecop_wrap._src.rates import InnerRates

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from speed.ops import top_level_ops  # benchmarks/ is put on sys.path just above: the counting the --ops table uses
from speed.phases import OUTSIDE, enclosing_range


def _count(fn) -> tuple[int, Counter, Counter]:
    """Top-level aten ops of ``fn()``: total, per innermost ``ecop.*`` range, per (range, op name)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = top_level_ops(prof)
    ranges = [enclosing_range(e) or OUTSIDE for e in ops]
    return len(ops), Counter(ranges), Counter(zip(ranges, (e.name for e in ops), strict=True))


def _batch(side: int = 8, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    return make_grid((side, side)), torch.rand(batch, side * side, 3, generator=generator)


def _step_counts(**config):
    """Counts of the second meta-step (the first settles lazy choices) of a tiny SIREN, torch.func bmm."""
    torch.manual_seed(0)
    learner = ContextPruningMetaLearner(Siren(2, 3, 8, 2), backend="torch.func", batching="bmm", seed=0, **config)
    batch = _batch()
    learner.meta_step(batch)
    return _count(lambda: learner.meta_step(batch))


# ----------------------------------------------------------------------------------------- meta-step counts
def test_ecop_and_learnit_op_counts_of_a_tiny_meta_step():
    """Siren(2, 3, 8, 2): three nn.Linear layers (6 adapted tensors), 8x8 grid (M = 64), B = 2; ECoP gamma .25
    (k = 16), K = 4, L = 2; Learnit gamma 1, K = 1.

    Measured (torch 2.13 CPU), before the op reductions -> then -> now: ECoP with the bootstrap in pruned-size
    pieces (4 per pass, the default until the bootstrap went to one piece) 1566 -> 1433 -> 1417 (bootstrap
    566 -> 468 -> 456, pruned forwards 96 -> 70, ranking 79 -> 73, outside any range 125 -> 122 -> 118); ECoP
    with the bootstrap in one piece (``bootstrap_chunk="whole"``, now the default) 1176 -> 1117 -> 1101
    (bootstrap 140); Learnit 361 -> 358. Where the first 133 went:

    * bootstrap, per pass: the update is 2 foreach ops instead of 12 (10 x 2 passes = 20); each piece adds its
      gradients with one ``_foreach_add_`` instead of 6 ``add_`` and the first piece lays out its weight
      gradients with 3 ``zeros_like`` and one ``_foreach_add_`` instead of 3 + 3 (5 x 3 + 2 = 17 per pass, 34);
      pieces 2-4 reuse the first piece's transposed weights and unsqueezed biases (6 x 3 = 18 per pass, 36);
      the 8 slices of the pieces are made once per meta-step, not per pass (8);
    * pruned forwards: 2 indexing ops gather a step's coordinates and values instead of 4 (2 x 4 = 8); the step
      after a ranking at the same parameters reuses the ranking's 6 views (6 x 3 steps after the first = 18);
    * ranking: the first ranking (every signal at theta_0, one forward) takes the [1, *shape] parameters that
      expanding them made instead of slicing 6 (6);
    * outside: the bootstrap distance flattens the 3 weights only, not the 3 biases (3).

    Since then the ``floor_mse`` statistic (a variance, its mean over channels and its place in the reduced stats)
    adds 4 ops outside any range to both methods: ECoP 1100 -> 1104 (with the bootstrap in pieces 1416 -> 1420),
    Learnit 358 -> 362.
    """
    ecop_total, ecop_ranges, ecop_ops = _step_counts(gamma=0.25, K=4, L=2, lam=1.0)
    pieces_total, pieces_ranges, _ = _step_counts(gamma=0.25, K=4, L=2, lam=1.0, bootstrap_chunk="pruned")
    learnit_total, _, _ = _step_counts(gamma=1.0, K=1, L=0, lam=0.0)
    assert ecop_total <= 1104, ecop_ranges
    assert ecop_ranges["ecop.bootstrap"] <= 140, ecop_ranges
    assert ecop_ranges["ecop.pruned_forward"] <= 70, ecop_ranges
    assert ecop_ranges["ecop.ranking"] <= 73, ecop_ranges
    assert pieces_total <= 1420, pieces_ranges
    # four pieces per pass cost more ops than one, and nothing outside the bootstrap differs
    assert pieces_ranges["ecop.bootstrap"] > 3 * ecop_ranges["ecop.bootstrap"], pieces_ranges
    assert pieces_total - pieces_ranges["ecop.bootstrap"] == ecop_total - ecop_ranges["ecop.bootstrap"]
    assert learnit_total <= 362
    # the bootstrap's updates: one multiply and one subtraction per pass, no per-parameter ops
    assert ecop_ops["ecop.bootstrap", "aten::_foreach_mul"] == 2
    assert ecop_ops["ecop.bootstrap", "aten::_foreach_sub"] == 2
    assert ecop_ops["ecop.bootstrap", "aten::add_"] == 0
    # views: only the pruned step at theta_0 (ranked on the [1, *shape] parameters) makes its own
    assert ecop_ops["ecop.pruned_forward", "aten::transpose"] == 3
    assert ecop_ops["ecop.pruned_forward", "aten::unsqueeze"] == 3
    assert ecop_ops["ecop.pruned_forward", "aten::gather"] == 0


# ------------------------------------------------------------------------------------------- sgd_update
def _loop_update(params, grads, rates):
    """The per-parameter update sgd_update replaced (the reference)."""
    if isinstance(rates, dict):
        return {n: p - rates[n] * grads[n] for n, p in params.items()}
    return {n: p - rates * grads[n] for n, p in params.items()}


def _params_and_grads(requires_grad: bool = False):
    generator = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(3, 5, 4, generator=generator),
        "b": torch.randn(3, 5, generator=generator),
        "v": torch.randn(3, 4, 5, generator=generator).transpose(1, 2),  # not contiguous
    }
    grads = {
        "w": torch.randn(3, 4, 5, generator=generator).transpose(1, 2),  # laid out unlike its parameter
        "b": torch.randn(3, 5, generator=generator),
        "v": torch.randn(3, 5, 4, generator=generator),
    }
    if requires_grad:
        params = {n: p.requires_grad_(True) for n, p in params.items()}
    return params, grads


RATES = {
    "one float": 0.37,
    "float per name": {"w": 0.37, "b": 0.11, "v": 1.5},
    "same float per name": dict.fromkeys(("w", "b", "v"), 0.37),
    "scalar tensors": {"w": torch.tensor(0.37), "b": torch.tensor(0.11), "v": torch.tensor(1.5)},
    "per element": {"w": torch.full((5, 4), 0.37), "b": torch.linspace(0.1, 0.9, 5), "v": torch.rand(5, 4)},
    "mixed": {"w": 0.37, "b": torch.tensor(0.11), "v": 1.5},
}


@pytest.mark.parametrize("rates", RATES.values(), ids=RATES.keys())
def test_sgd_update_computes_what_the_per_parameter_loop_computes(rates):
    params, grads = _params_and_grads()
    got, want = sgd_update(params, grads, rates), _loop_update(params, grads, rates)
    assert list(got) == list(want)
    for n in want:
        assert torch.equal(got[n], want[n]), n
        assert got[n].stride() == want[n].stride(), n  # the layout decides later products' rounding


@pytest.mark.parametrize("rates", ["one float", "per element"])
def test_sgd_update_is_two_ops_without_a_graph_and_the_loop_with_one(rates):
    """Without a graph: one ``_foreach_mul`` and one ``_foreach_sub``. With a graph the per-parameter ops stay:
    the foreach ops' autograd formulas save their inputs, which ``p - rate * g`` does not for a float rate."""
    params, grads = _params_and_grads()
    total, _, ops = _count(lambda: sgd_update(params, grads, RATES[rates]))
    assert total == 2 and ops[OUTSIDE, "aten::_foreach_mul"] == 1 and ops[OUTSIDE, "aten::_foreach_sub"] == 1
    with torch.no_grad():  # inputs that require grad, but no graph is recorded
        leaves, _ = _params_and_grads(requires_grad=True)
        assert _count(lambda: sgd_update(leaves, grads, RATES[rates]))[0] == 2

    leaves, _ = _params_and_grads(requires_grad=True)
    with SavedTensorMeter() as meter:
        out = sgd_update(leaves, grads, RATES[rates])
        held = meter.live_bytes()
    with SavedTensorMeter() as meter:
        ref = _loop_update(leaves, grads, RATES[rates])
        held_ref = meter.live_bytes()
    assert held == held_ref
    for n in ref:
        assert torch.equal(out[n], ref[n])
        assert out[n].grad_fn is not None and out[n].grad_fn.name() == ref[n].grad_fn.name()


def test_learned_rates_clamp_is_elementwise_clamp():
    params = {"w": torch.zeros(5, 4), "b": torch.zeros(5)}
    for mode in ("per_tensor", "per_element"):
        rates = InnerRates(mode, params, inner_lr=0.5, max_inner_lr=2.0, steps=3)
        with torch.no_grad():
            for r in rates.tensors.values():
                r.copy_(torch.linspace(-3.0, 3.0, r.numel()).view_as(r))
                r.view(-1)[0] = -0.0
        want = {n: r.detach().clone().clamp_(0.0, 2.0) for n, r in rates.tensors.items()}
        rates.clamp_()
        for n, r in rates.tensors.items():
            assert torch.equal(r.detach().view(torch.int32), want[n].view(torch.int32))  # bits, signed zeros too


# ---------------------------------------------------------------------------------------- gather_points
@pytest.mark.parametrize("shared", [True, False])
def test_gather_points_by_indexing_is_gather(shared):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 10, 4, generator=generator)
    coords = torch.randn(10, 2, generator=generator) if shared else torch.randn(3, 10, 2, generator=generator)
    idx = torch.stack([torch.randperm(10, generator=generator)[:6] for _ in range(3)])
    idx[1, 2] = idx[1, 3]  # a repeated point (weighted_topk repeats a weight-0 point)
    for tensor in (values, coords):
        if tensor.ndim == 2:
            want = tensor[idx]
        else:
            want = torch.gather(tensor, 1, idx.unsqueeze(-1).expand(-1, -1, tensor.shape[-1]))
        got = gather_points(tensor, idx)
        assert torch.equal(got, want) and got.is_contiguous()
    assert _count(lambda: gather_points(values, idx))[0] == 1
    # a tensor that requires grad keeps gather and its backward
    leaf = values.clone().requires_grad_(True)
    got = gather_points(leaf, idx)
    assert got.grad_fn.name() == "GatherBackward0"


# ------------------------------------------------------------------------------------ reused linear views
def test_batched_linear_views_are_reused_until_their_tensor_changes():
    weight = torch.randn(2, 5, 4, requires_grad=True)
    memo: dict = {}
    with torch.no_grad():  # made in a graph-free pass, the view still records autograd
        first = _view(memo, weight, 2)
    assert first.grad_fn is not None and torch.equal(first, weight.transpose(1, 2))
    assert _view(memo, weight, 2) is first
    assert _view(None, weight, 2) is not first
    plain = weight.detach()
    with torch.no_grad():
        plain.mul_(2.0)  # an in-place change of the same storage: a new view
    view_of_plain = _view(memo, plain, 2)
    plain.add_(1.0)
    assert _view(memo, plain, 2) is not view_of_plain
    assert torch.equal(_view(memo, plain, 2), plain.transpose(1, 2))
    bias = torch.randn(2, 5)
    assert torch.equal(_view(memo, bias, 1), bias.unsqueeze(1))


def test_backend_reuses_views_only_for_the_dict_it_was_given():
    torch.manual_seed(0)
    model = Siren(2, 3, 8, 2)
    backend = make_backend("torch.func", model, "bmm")
    params = {n: p.detach().unsqueeze(0).expand(2, *p.shape).clone() for n, p in model.named_parameters()}
    other = dict(params)
    coords = make_grid((4, 4))
    memo: dict = {}
    with backend.reusing(params, memo):
        want = backend(params, coords)
        assert len(memo) == 6  # three transposed weights, three unsqueezed biases
        total, _, _ = _count(lambda: backend(params, coords))
        total_other, _, _ = _count(lambda: backend(other, coords))
        again = backend(params, coords)
    assert torch.equal(want, again)
    assert total_other - total == 6  # the other dict's pass makes its own views
    assert backend.memo_for(params) is None  # outside the block nothing is kept


def test_pruned_step_after_a_ranking_builds_the_same_graph():
    """The pruned step at theta_k takes the views its ranking made: same loss, same second-order gradients."""
    torch.manual_seed(0)
    model = Siren(2, 3, 8, 2)
    coords, values = _batch()

    def meta_grads(rank_first: bool):
        ctx = ContextEvaluator(make_backend("torch.func", model, "bmm"), coords, values, free_chunk=16)
        params = ctx.expand(dict(model.named_parameters()))
        params = ctx.sgd_step(params, torch.arange(16).expand(2, 16), dict.fromkeys(params, 0.1))
        if rank_first:
            ctx.errors(params)
        params = ctx.sgd_step(params, torch.arange(16, 32).expand(2, 16), dict.fromkeys(params, 0.1))
        loss = ctx.full_mse(params).sum()
        return torch.autograd.grad(loss, list(model.parameters()))

    for got, want in zip(meta_grads(True), meta_grads(False), strict=True):
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------- full_grad
def _reference_full_grad(ctx: ContextEvaluator, params):
    """The per-parameter accumulation full_grad replaced."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    grads: dict = {}
    scale = ctx.num_points * ctx.channels
    with torch.enable_grad():
        for chunk in point_chunks(ctx.num_points, ctx.free_chunk):
            pred = ctx.backend(leaves, ctx.coords[chunk])
            total = ctx.loss_fn.summed(pred, ctx.values[:, chunk]).sum() / scale
            chunk_grads = torch.autograd.grad(total, list(leaves.values()))
            for n, g in zip(leaves, chunk_grads, strict=True):
                if n in grads:
                    grads[n] += g
                else:
                    grads[n] = g if g.stride() == leaves[n].stride() else torch.zeros_like(leaves[n]).add_(g)
    return grads


@pytest.mark.parametrize("free_chunk", [None, 16, 20])
def test_full_grad_in_pieces_adds_what_the_per_parameter_loop_added(free_chunk):
    torch.manual_seed(0)
    model = Siren(2, 3, 8, 2)
    coords, values = _batch()
    ctx = ContextEvaluator(make_backend("torch.func", model, "bmm"), coords, values, free_chunk=free_chunk)
    params = {n: p.detach().unsqueeze(0).expand(2, *p.shape).clone() for n, p in model.named_parameters()}
    got = ctx.full_grad(params).grads
    want = _reference_full_grad(ctx, params)
    for n in want:
        assert torch.equal(got[n], want[n]), n
        assert got[n].stride() == want[n].stride(), n
