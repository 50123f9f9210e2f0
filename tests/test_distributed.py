"""Meta-gradient averaging over torch.distributed: two CPU ranks with gloo on loopback.

One spawn of two processes runs every scenario (starting processes costs far more than the training); each
rank saves what it saw and the tests compare it with single-process runs over the concatenated batch, done
here in the parent. Every comparison is float64 and independent of the library's distributed code path: the
single-process runs never touch torch.distributed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from helpers import SqrtSiren, init_gloo, load_rank_results, spawn_ranks
from reference import TinySiren

from ecop_wrap import ContextPruningMetaLearner
from ecop_wrap.distributed import broadcast_parameters, parameters_in_sync, world_size
from ecop_wrap.models import NeRV

WORLD = 2
TIMEOUT_S = 240  # for the whole spawn; a hung collective fails the test instead of hanging the suite
CFG = {"gamma": 0.25, "K": 2, "L": 1, "lam": 1.0, "coord_range": None}
POINTS = 25


# ------------------------------------------------------------------------------------------- shared setup


def make_model(cls: type = TinySiren) -> torch.nn.Module:
    torch.manual_seed(1)
    if cls is NeRV:  # frames of 2 x 4 x 4: a context point is a frame
        return NeRV((2, 4, 4), blocks=1, channels=(4, 3), hidden_features=8, num_frequencies=3).double()
    return cls(2, 2, width=8).double()


def global_batches(
    steps: int, total: int, shared: bool, seed: int = 0, nerv: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches of ``total`` signals (coords ``[M, 2]`` or ``[total, M, 2]``).

    ``nerv``: clips of 8 frames instead, times ``[8, 1]`` and frames ``[total, 8, 32]``.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        if nerv:
            times = torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]
            out.append((times, torch.rand(total, 8, 32, generator=gen, dtype=torch.float64)))
            continue
        coords = torch.rand(POINTS, 2, generator=gen, dtype=torch.float64) * 2 - 1
        if not shared:
            coords = (coords + 0.1 * torch.randn(total, POINTS, 2, generator=gen, dtype=torch.float64)).clamp(-1, 1)
        out.append((coords, torch.rand(total, POINTS, 2, generator=gen, dtype=torch.float64)))
    return out


def shard(batch: tuple[torch.Tensor, torch.Tensor], sizes: tuple[int, ...], rank: int):
    """Rank ``rank``'s signals of a global batch split into consecutive pieces of ``sizes``."""
    coords, values = batch
    start = sum(sizes[:rank])
    part = slice(start, start + sizes[rank])
    return (coords if coords.ndim == 2 else coords[part]), values[part]


def make_learner(model: torch.nn.Module, optimizer: str, **kw: Any) -> ContextPruningMetaLearner:
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-2) if optimizer == "adam" else torch.optim.SGD(params, lr=1e-3)
    return ContextPruningMetaLearner(model, optimizer=opt, **{**CFG, **kw})


def train(batches, optimizer: str, model_cls: type = TinySiren, **kw: Any) -> dict[str, Any]:
    """meta_step over ``batches``; returns the final parameters, optimizer state and per-step stats."""
    model = make_model(model_cls)
    learner = make_learner(model, optimizer, **kw)
    stats = [learner.meta_step(b) for b in batches]
    state = learner.optimizer.state_dict()["state"]
    moments = [state[i]["exp_avg_sq"].clone() for i in sorted(state)] if optimizer == "adam" else []
    rates = [r.detach().clone() for r in learner.inner_lrs.values()]
    return {"params": [p.detach().clone() for p in model.parameters()] + rates, "stats": stats, "moments": moments}


# Scenarios: name -> (per-rank shard sizes, shared coords, optimizer, steps, extra learner args)
SCENARIOS = {
    "world_unequal": ((1, 3), False, "adam", 3, {"max_grad_norm": 0.05}),
    "subgroup_shared": ((2, 2), True, "sgd", 2, {}),
    "solo": ((2, 2), False, "sgd", 2, {}),
    # learned rates are meta-parameters too: averaged across ranks with theta_0's meta-gradient
    "learned_rates": ((1, 3), False, "adam", 3, {"learn_inner_lr": "per_tensor", "adapt": ["out.*"]}),
    # a convolutional decoder whose context points are frames (ECoP prunes frames), with the bootstrap
    "nerv": ((1, 3), True, "adam", 2, {"model_cls": NeRV, "gamma": 0.5, "inner_lr": 0.1}),
}


# ------------------------------------------------------------------------------------------------ workers
def _run_rank(rank: int, port: int, out_dir: str) -> None:
    init_gloo(rank, port, WORLD, timeout_s=60)
    pair = dist.new_group([0, 1])
    singles = [dist.new_group([0]), dist.new_group([1])]  # every rank creates every group, same order
    groups = {
        "world_unequal": None,
        "subgroup_shared": pair,
        "solo": singles[rank],
        "learned_rates": None,
        "nerv": None,
    }
    results: dict[str, Any] = {}
    for name, (sizes, shared, optimizer, steps, kw) in SCENARIOS.items():
        nerv = kw.get("model_cls") is NeRV
        batches = [shard(b, sizes, rank) for b in global_batches(steps, sum(sizes), shared, nerv=nerv)]
        results[name] = train(batches, optimizer, process_group=groups[name], **kw)
    results["meta_loss"] = _manual_backward(rank)
    results["skip"] = _skip_on_one_rank(rank)
    results["broadcast"] = _broadcast(rank)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _manual_backward(rank: int) -> list[torch.Tensor]:
    """meta_loss().backward() + all_reduce_grads(num_signals) + optimizer.step(), 2 steps, shards (1, 2)."""
    model = make_model()
    learner = make_learner(model, "sgd")
    for batch in global_batches(2, 3, shared=False, seed=5):
        coords, values = shard(batch, (1, 2), rank)
        learner.optimizer.zero_grad()
        learner.meta_loss((coords, values)).backward()
        learner.all_reduce_grads(num_signals=values.shape[0])
        learner.optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _skip_on_one_rank(rank: int) -> dict[str, Any]:
    """Rank 1's coordinates make the model NaN: both ranks must skip, then both must raise."""
    model = make_model(SqrtSiren)
    learner = make_learner(model, "adam", max_consecutive_skips=2)
    coords, values = shard(global_batches(1, 2, shared=False, seed=7)[0], (1, 1), 0)
    if rank == 1:
        coords = coords - 1.0  # x_0 < -1.5 for some points
    first = learner.meta_step((coords, values))
    params = [p.detach().clone() for p in model.parameters()]
    try:
        learner.meta_step((coords, values))
        error = ""
    except FloatingPointError as exc:
        error = str(exc)
    return {"first": first, "params": params, "error": error, "adam_state": len(learner.optimizer.state)}


def _broadcast(rank: int) -> dict[str, Any]:
    """Models built with different seeds: out of sync, then rank 0's values everywhere."""
    torch.manual_seed(100 + rank)
    model = TinySiren(2, 2, width=8).double()
    before = parameters_in_sync(model)
    broadcast_parameters(model)
    return {
        "before": before,
        "after": parameters_in_sync(model),
        "params": [p.detach().clone() for p in model.parameters()],
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out_dir = str(tmp_path_factory.mktemp("dist"))
    spawned = spawn_ranks(_run_rank, out_dir, world=WORLD, timeout_s=TIMEOUT_S)
    if spawned.hung or spawned.errors or any(code != 0 for code in spawned.exit_codes):
        pytest.fail(spawned.report())
    return load_rank_results(out_dir, WORLD)


# -------------------------------------------------------------------------------------------------- tests
def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor], tol: float = 1e-6) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def _single_process(name: str) -> dict[str, Any]:
    sizes, shared, optimizer, steps, kw = SCENARIOS[name]
    nerv = kw.get("model_cls") is NeRV
    return train(global_batches(steps, sum(sizes), shared, nerv=nerv), optimizer, **kw)


@pytest.mark.parametrize("name", ["world_unequal", "subgroup_shared", "learned_rates", "nerv"])
def test_ranks_match_single_process_over_global_batch(ranks, name):
    want = _single_process(name)
    for rank in ranks:
        _assert_same(rank[name]["params"], want["params"])
        _assert_same(rank[name]["moments"], want["moments"])
    # identical on both ranks, not just close: they applied the same reduced gradient
    for a, b in zip(ranks[0][name]["params"], ranks[1][name]["params"], strict=True):
        assert torch.equal(a, b)
    # the parameters really moved, so the comparison is not vacuous
    initial = list(make_model(SCENARIOS[name][4].get("model_cls", TinySiren)).parameters())
    # (the learned rates follow the parameters in want["params"])
    assert max(float((p - q.detach()).abs().max()) for p, q in zip(want["params"], initial, strict=False)) > 1e-4
    if name == "learned_rates":  # and the rates were learned, not left at inner_lr
        assert all(bool((r != 1e-2).any()) for r in want["params"][-2:])


def test_unequal_shards_are_weighted_by_signal_count(ranks):
    """An unweighted mean of the two ranks' gradients (1 and 3 signals) would differ from the global batch."""
    sizes, shared, optimizer, steps, kw = SCENARIOS["world_unequal"]
    batches = global_batches(steps, sum(sizes), shared)
    model = make_model()
    learner = make_learner(model, optimizer, **kw)
    shard_grads = []
    for r in range(WORLD):
        loss = learner.meta_loss(shard(batches[0], sizes, r))
        shard_grads.append(torch.autograd.grad(loss, list(model.parameters())))
    loss = learner.meta_loss(batches[0])
    global_grads = torch.autograd.grad(loss, list(model.parameters()))
    unweighted = [(a + b) / 2 for a, b in zip(*shard_grads, strict=True)]
    weighted = [(1 * a + 3 * b) / 4 for a, b in zip(*shard_grads, strict=True)]
    _assert_same(weighted, list(global_grads), tol=1e-9)
    assert max(float((u - g).abs().max()) for u, g in zip(unweighted, global_grads, strict=True)) > 1e-4


def test_stats_are_averaged_across_ranks(ranks):
    want = _single_process("world_unequal")["stats"]
    for rank in ranks:
        for got, exp in zip(rank["world_unequal"]["stats"], want, strict=True):
            for key in ("loss", "mse", "psnr", "boot_distance", "grad_norm", "skipped", "step"):
                assert got[key] == pytest.approx(exp[key], rel=1e-9, abs=1e-12), key
    # clipping was active, and it used the global norm (not each rank's own)
    assert all(s["grad_norm"] > 0.05 for s in want)


def test_process_group_is_respected(ranks):
    """With a singleton group per rank nothing is averaged: each rank equals a run on its own shard."""
    sizes, shared, optimizer, steps, kw = SCENARIOS["solo"]
    batches = global_batches(steps, sum(sizes), shared)
    for r, rank in enumerate(ranks):
        want = train([shard(b, sizes, r) for b in batches], optimizer, **kw)
        _assert_same(rank["solo"]["params"], want["params"])
    assert not all(
        torch.equal(a, b) for a, b in zip(ranks[0]["solo"]["params"], ranks[1]["solo"]["params"], strict=True)
    )


def test_meta_loss_with_all_reduce_grads_matches_global_step(ranks):
    model = make_model()
    learner = make_learner(model, "sgd")
    for batch in global_batches(2, 3, shared=False, seed=5):
        learner.meta_step(batch)
    for rank in ranks:
        _assert_same(rank["meta_loss"], [p.detach() for p in model.parameters()])


def test_non_finite_on_one_rank_skips_on_every_rank(ranks):
    # rank 0's own shard is fine on its own ...
    coords, values = shard(global_batches(1, 2, shared=False, seed=7)[0], (1, 1), 0)
    alone = make_learner(make_model(SqrtSiren), "adam").meta_step((coords, values))
    assert alone["skipped"] == 0.0
    # ... but rank 1's NaN reaches it through the all-reduce, so both skip and keep theta_0 and Adam untouched
    initial = [p.detach() for p in make_model(SqrtSiren).parameters()]
    for rank in ranks:
        assert rank["skip"]["first"]["skipped"] == 1.0
        assert all(torch.equal(a, b) for a, b in zip(rank["skip"]["params"], initial, strict=True))
        assert rank["skip"]["adam_state"] == 0
        assert "meta_step 2" in rank["skip"]["error"] and "2 consecutive steps" in rank["skip"]["error"]


def test_broadcast_parameters_brings_ranks_in_sync(ranks):
    torch.manual_seed(100)
    want = [p.detach() for p in TinySiren(2, 2, width=8).double().parameters()]
    for rank in ranks:
        assert rank["broadcast"]["before"] is False and rank["broadcast"]["after"] is True
        assert all(torch.equal(a, b) for a, b in zip(rank["broadcast"]["params"], want, strict=True))


def test_single_process_helpers_are_no_ops():
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    assert world_size() == 1 and parameters_in_sync(model)
    broadcast_parameters(model)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


# ------------------------------------------------------------------------------------------- the example
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_distributed.py"


def _torchrun(*args: str) -> str:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(EXAMPLE),
        "--width",
        "16",
        "--resolution",
        "8",
        "--num-signals",
        "32",
        "--batch-size",
        "5",
        "--K",
        "2",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_torchrun_example_runs_in_sync_and_resumes_exactly(tmp_path):
    """The example under torchrun: ranks stay identical, and 6 steps + resume to 10 == 10 straight steps."""
    first, straight = tmp_path / "a", tmp_path / "b"
    out = _torchrun("--steps", "6", "--checkpoint-dir", str(first), "--checkpoint-every", "3")
    assert "parameters identical on all 2 ranks: True" in out
    out = _torchrun("--steps", "10", "--checkpoint-dir", str(first))
    assert "resumed from" in out and "at step 6" in out
    _torchrun("--steps", "10", "--checkpoint-dir", str(straight))
    a = torch.load(first / "step-00000010.pt", weights_only=True)
    b = torch.load(straight / "step-00000010.pt", weights_only=True)
    assert a["step"] == b["step"] == 10
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
