"""Faults on one rank of two gloo ranks on loopback: every rank raises promptly, names the failing rank, and
ranks that go on stay paired step for step; multi-rank checkpoints resume every rank exactly.

One spawn of two processes runs every scenario in order (starting processes costs far more than the work);
each rank records what it saw and the tests below check it. The last scenario lets rank 1's exception escape
so that its process really exits, as a user's script without a try/except would.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from helpers import init_gloo, load_rank_results, spawn_ranks
from reference import TinySiren

from ecop_wrap import ContextPruningMetaLearner
from ecop_wrap.distributed import (
    STATUS_BYTES,
    RankFailedError,
    exchange_status,
    parameters_in_sync,
    rank_generator_state,
)

WORLD = 2
TIMEOUT_S = 240  # for the whole spawn; a hung collective fails the test instead of hanging the suite
GROUP_TIMEOUT_S = 60  # a rank left waiting in a collective would wait this long, beyond the 30 s bound below
PROMPT_S = 30
CFG = {"gamma": 0.25, "K": 2, "L": 1, "lam": 1.0, "coord_range": None}
POINTS = 25
STEPS = 6
BAD_BATCH = (2, 1)  # (step, rank): rank 1's batch at step 2 has values of 24 points for 25 coordinates
MODEL_ERROR = (4, 0)  # (step, rank): rank 0's model raises inside the forward pass at step 4


class FlakySiren(TinySiren):
    """TinySiren whose forward raises while ``fail`` is set (an exception inside the model)."""

    fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("boom inside the model")
        return super().forward(x)


def make_model() -> FlakySiren:
    torch.manual_seed(1)
    return FlakySiren(2, 2, width=8).double()


def make_learner(model: torch.nn.Module, **kw: Any) -> ContextPruningMetaLearner:
    return ContextPruningMetaLearner(model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), **CFG, **kw)


def global_batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches of 2 signals on one shared grid of ``POINTS`` points (float64)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        coords = torch.rand(POINTS, 2, generator=gen, dtype=torch.float64) * 2 - 1
        out.append((coords, torch.rand(WORLD, POINTS, 2, generator=gen, dtype=torch.float64)))
    return out


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------------------------------------ workers
def _go_on_after_errors(rank: int) -> dict[str, Any]:
    """Both ranks catch every error and call meta_step again, STEPS times (a user's try/except)."""
    model = make_model()
    learner = make_learner(model)
    record: dict[str, Any] = {"errors": {}, "params": [], "steps": [], "in_sync": [], "adam_steps": []}
    for step, (coords, values) in enumerate(global_batches(STEPS), start=1):
        mine = values[rank : rank + 1]
        if (step, rank) == BAD_BATCH:
            mine = mine[:, :-1]
        model.fail = (step, rank) == MODEL_ERROR
        started = time.monotonic()
        try:
            learner.meta_step((coords, mine))
        except (ValueError, RuntimeError) as exc:  # the bad batch's, the model's, or RankFailedError
            record["errors"][step] = (
                type(exc).__name__,
                str(exc),
                time.monotonic() - started,
                getattr(exc, "failures", None),
            )
        model.fail = False
        record["params"].append(params_of(model))
        record["steps"].append(learner.step_count)
        record["in_sync"].append(parameters_in_sync(model))
        state = learner.optimizer.state_dict()["state"]
        record["adam_steps"].append(float(state[0]["step"]) if state else 0.0)
    return record


def _out_of_step(rank: int) -> dict[str, Any]:
    """Rank 1 resumed from a later step than rank 0: the first meta_step must raise on both."""
    learner = make_learner(make_model())
    if rank == 1:
        learner.step_count = 5
    coords, values = global_batches(1)[0]
    try:
        learner.meta_step((coords, values[rank : rank + 1]))
    except RankFailedError as exc:
        return {"error": str(exc), "failures": exc.failures, "params_unchanged": _unchanged(learner)}
    return {"error": "", "failures": None, "params_unchanged": _unchanged(learner)}


def _save_on_one_rank(rank: int, out_dir: str) -> dict[str, Any]:
    """The old pattern `if rank == 0: learner.save(...)`: both ranks must raise at once, nothing written."""
    learner = make_learner(make_model())
    coords, values = global_batches(1)[0]
    try:
        if rank == 0:
            learner.save(os.path.join(out_dir, "one-rank.pt"))
        learner.meta_step((coords, values[rank : rank + 1]))
    except RankFailedError as exc:
        return {"error": str(exc)}
    return {"error": ""}


def _save_fails_on_rank_0(rank: int, out_dir: str) -> dict[str, Any]:
    """Rank 0 cannot write the file (its directory does not exist): rank 1 must be told, not wait."""
    learner = make_learner(make_model())
    try:
        learner.save(os.path.join(out_dir, "missing-directory", "ckpt.pt"))
    except (OSError, RuntimeError) as exc:
        return {"type": type(exc).__name__, "error": str(exc)}
    return {"type": "", "error": ""}


def _distributed_checkpoint(rank: int, out_dir: str) -> dict[str, Any]:
    """Random selection, a different seed per rank: save after 2 steps, go on 2; a fresh learner that loads
    the file and takes the same 2 steps must match bit for bit, per-rank RNG included."""
    batches = global_batches(4, seed=3)
    learner = make_learner(make_model(), selection="random", seed=10 + rank)
    path = os.path.join(out_dir, "random.pt")
    for coords, values in batches[:2]:
        learner.meta_step((coords, values[rank : rank + 1]))
    learner.save(path)  # collective: every rank calls it, rank 0 writes
    saved_generator = learner.generator.get_state().clone()
    for coords, values in batches[2:]:
        learner.meta_step((coords, values[rank : rank + 1]))
    torch.manual_seed(50 + rank)
    resumed = make_learner(FlakySiren(2, 2, width=8).double(), selection="random", seed=99)
    resumed.load(path)
    restored_generator = resumed.generator.get_state().clone()
    for coords, values in batches[2:]:
        resumed.meta_step((coords, values[rank : rank + 1]))
    deterministic = make_learner(make_model())
    deterministic.meta_step((batches[0][0], batches[0][1][rank : rank + 1]))
    deterministic.save(os.path.join(out_dir, "error.pt"))
    return {
        "straight": params_of(learner.model),
        "resumed": params_of(resumed.model),
        "straight_generator": learner.generator.get_state(),
        "resumed_generator": resumed.generator.get_state(),
        "saved_generator": saved_generator,
        "restored_generator": restored_generator,
        "straight_step": learner.step_count,
        "resumed_step": resumed.step_count,
    }


def _rank_1_exits(rank: int) -> dict[str, Any]:
    """Rank 1's malformed batch escapes its worker (the process exits); rank 0 records what it raised."""
    learner = make_learner(make_model())
    coords, values = global_batches(1)[0]
    mine = values[rank : rank + 1]
    if rank == 1:
        mine = mine[:, :-1]
    started = time.monotonic()
    try:
        learner.meta_step((coords, mine))
    except RankFailedError as exc:
        return {"type": type(exc).__name__, "error": str(exc), "seconds": time.monotonic() - started}
    return {"type": "", "error": "", "seconds": time.monotonic() - started}


def _unchanged(learner: ContextPruningMetaLearner) -> bool:
    return all(torch.equal(a, b) for a, b in zip(learner.model.parameters(), make_model().parameters(), strict=True))


def _run_rank(rank: int, port: int, out_dir: str) -> None:
    init_gloo(rank, port, WORLD, timeout_s=GROUP_TIMEOUT_S)
    results = {
        "go_on": _go_on_after_errors(rank),
        "out_of_step": _out_of_step(rank),
        "save_on_one_rank": _save_on_one_rank(rank, out_dir),
        "save_fails": _save_fails_on_rank_0(rank, out_dir),
        "checkpoint": _distributed_checkpoint(rank, out_dir),
    }
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    if rank == 1:
        _rank_1_exits(rank)  # raises ValueError: the worker dies with it
    else:
        torch.save(_rank_1_exits(rank), os.path.join(out_dir, "exit0.pt"))
        # leave without the interpreter's teardown: with a dead peer, gloo's destructors abort rank 0 after its
        # work is done in about one run in five ("terminate called without an active exception"; also with
        # destroy_process_group first). Everything this test checks is recorded above.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, Any]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out_dir = str(tmp_path_factory.mktemp("faults"))
    spawned = spawn_ranks(_run_rank, out_dir, world=WORLD, timeout_s=TIMEOUT_S)
    errors = spawned.errors
    # rank 1 must die of the ValueError of its malformed batch, at the very end, and of nothing else
    expected_exit = set(errors) == {1} and "ValueError: coords has M=25 points but values has M=24" in errors[1]
    if spawned.hung or not expected_exit or spawned.exit_codes[0] != 0:
        pytest.fail(spawned.report())
    return {
        "ranks": load_rank_results(out_dir, WORLD),
        "exit0": torch.load(os.path.join(out_dir, "exit0.pt"), weights_only=False),
        "rank1_traceback": errors[1],
        "out_dir": out_dir,
    }


# -------------------------------------------------------------------------------------------------- tests
def test_rank_that_exits_is_named_on_the_other_rank_promptly(ranks):
    got = ranks["exit0"]
    assert got["type"] == "RankFailedError"
    assert "rank 1" in got["error"] and "ValueError: coords has M=25 points but values has M=24" in got["error"]
    assert got["seconds"] < PROMPT_S  # a bound well below the group timeout, not a speed measurement
    assert "ValueError" in ranks["rank1_traceback"]


def test_every_rank_raises_at_the_failed_step_naming_the_failing_rank(ranks):
    r0, r1 = (r["go_on"] for r in ranks["ranks"])
    assert set(r0["errors"]) == set(r1["errors"]) == {BAD_BATCH[0], MODEL_ERROR[0]}
    # step 2: rank 1's own error on rank 1, RankFailedError naming rank 1 and the reason on rank 0
    kind, message, seconds, failures = r1["errors"][2]
    assert kind == "ValueError" and "values has M=24" in message
    kind, message, seconds, failures = r0["errors"][2]
    assert kind == "RankFailedError" and seconds < PROMPT_S
    assert "rank 1" in message and "meta_step at step 2" in message and "values has M=24" in message
    assert set(failures) == {1} and failures[1].startswith("ValueError:")
    # step 4: the other direction, an exception inside rank 0's model
    assert r0["errors"][4][0] == "RuntimeError" and "boom inside the model" in r0["errors"][4][1]
    kind, message, _, failures = r1["errors"][4]
    assert kind == "RankFailedError" and set(failures) == {0} and "RuntimeError: boom inside the model" in message


def test_no_rank_updates_at_a_failed_step_and_counters_stay_equal(ranks):
    for r in ranks["ranks"]:
        go_on = r["go_on"]
        for failed in (BAD_BATCH[0], MODEL_ERROR[0]):
            before, after = go_on["params"][failed - 2], go_on["params"][failed - 1]
            assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
            assert go_on["adam_steps"][failed - 1] == go_on["adam_steps"][failed - 2]
        assert go_on["steps"] == [1, 1, 2, 2, 3, 4]
    assert ranks["ranks"][0]["go_on"]["steps"] == ranks["ranks"][1]["go_on"]["steps"]


def test_steps_after_a_failure_stay_paired(ranks):
    """Both ranks bit-identical after every step, and equal to one process on the global batches of the
    steps that succeeded (if a step-3 all-reduce had paired with a step-2 one, they would differ)."""
    r0, r1 = (r["go_on"] for r in ranks["ranks"])
    assert all(r0["in_sync"]) and all(r1["in_sync"])
    for a, b in zip(r0["params"][-1], r1["params"][-1], strict=True):
        assert torch.equal(a, b)
    model = make_model()
    learner = make_learner(model)
    for step, batch in enumerate(global_batches(STEPS), start=1):
        if step not in (BAD_BATCH[0], MODEL_ERROR[0]):
            learner.meta_step(batch)
        for got, want in zip(r0["params"][step - 1], model.parameters(), strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-12)


def test_ranks_out_of_step_raise_instead_of_pairing(ranks):
    for r in ranks["ranks"]:
        got = r["out_of_step"]
        assert "out of step" in got["error"] and "rank 0 is in meta_step at step 1" in got["error"]
        assert "rank 1 in meta_step at step 6" in got["error"] and set(got["failures"]) == {1}
        assert got["params_unchanged"]


def test_save_on_one_rank_only_raises_on_both(ranks):
    for r in ranks["ranks"]:
        message = r["save_on_one_rank"]["error"]
        assert "out of step" in message and "in save at step 0" in message and "in meta_step at step 1" in message
    assert not Path(ranks["out_dir"], "one-rank.pt").exists()


def test_failed_write_on_rank_0_is_reported_to_the_others(ranks):
    r0, r1 = (r["save_fails"] for r in ranks["ranks"])
    assert r0["type"] == "FileNotFoundError"
    assert r1["type"] == "RankFailedError" and "rank 0" in r1["error"] and "FileNotFoundError" in r1["error"]


def test_multi_rank_checkpoint_resumes_every_rank_exactly(ranks):
    r0, r1 = (r["checkpoint"] for r in ranks["ranks"])
    for got in (r0, r1):
        assert got["resumed_step"] == got["straight_step"] == 4
        assert all(torch.equal(a, b) for a, b in zip(got["resumed"], got["straight"], strict=True))
        assert torch.equal(got["restored_generator"], got["saved_generator"])
        assert torch.equal(got["resumed_generator"], got["straight_generator"])
    # the ranks' streams really differ, so restoring rank 0's on both would not have matched
    assert not torch.equal(r0["saved_generator"], r1["saved_generator"])
    state = torch.load(Path(ranks["out_dir"], "random.pt"), weights_only=True)
    assert state["distributed_state"]["world_size"] == 2
    assert torch.equal(state["distributed_state"]["generator_states"][1], r1["saved_generator"])
    assert torch.equal(state["generator"], r0["saved_generator"])


def test_multi_rank_checkpoint_in_another_world_size(ranks):
    """One process loading a 2-rank checkpoint: refused for random selection (its per-rank streams cannot
    continue), loaded for error selection (which draws no random numbers)."""
    random_path = Path(ranks["out_dir"], "random.pt")
    learner = make_learner(make_model(), selection="random", seed=5)
    before = params_of(learner.model)
    with pytest.raises(ValueError, match=r"saved by 2 ranks.*this process group has 1"):
        learner.load(random_path)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.model.parameters(), strict=True))
    assert learner.step_count == 0
    learner = make_learner(make_model())
    learner.load(Path(ranks["out_dir"], "error.pt"))
    assert learner.step_count == 1
    # the documented way round for random selection: drop the per-rank entry, continue rank 0's stream
    state = torch.load(random_path, weights_only=True)
    state.pop("digest")
    state.pop("distributed_state")
    learner = make_learner(make_model(), selection="random", seed=5)
    learner.load_state_dict(state)
    assert learner.step_count == 2 and torch.equal(learner.generator.get_state(), state["generator"])


# ------------------------------------------------------------------------------------- single process
def test_status_exchange_is_a_no_op_alone():
    exchange_status(False, "ignored", 3)  # nothing to tell: the caller raises its own error
    assert STATUS_BYTES == 512


@pytest.mark.parametrize(
    "entry",
    [
        "not a dict",
        {"world_size": 2, "generator_states": [torch.zeros(3, dtype=torch.uint8)]},
        {"world_size": 1, "generator_states": [torch.zeros(3)]},
    ],
)
def test_malformed_distributed_state_is_refused(entry):
    state = {"generator": torch.zeros(3, dtype=torch.uint8), "distributed_state": entry}
    with pytest.raises(ValueError, match=r"distributed_state|rank 0"):
        rank_generator_state(state)
