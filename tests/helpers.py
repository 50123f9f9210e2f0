"""Helpers shared by the test files: library meta-gradients, closeness checks, saved-tensor bytes, model
snapshots, the tiny test models, and the two-rank gloo spawner of the distributed tests.

Imported as ``from helpers import ...`` (conftest.py puts tests/ on the path, as for ``reference``). Unlike
tests/reference.py this module uses the library: it is the library's side of the comparisons.
"""

from __future__ import annotations

import datetime
import itertools
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from reference import TinySiren
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, SavedTensorMeter

Batch = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------- gradients
def meta_grads(learner: ContextPruningMetaLearner, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The learner's meta-loss and its gradient w.r.t. every trainable parameter, then every learned rate.

    The order is ``tests/reference.py``'s ``ref_meta_grads``: the model's trainable parameters in
    ``model.parameters()`` order, then ``learner.inner_lrs`` in its order.
    """
    loss = learner.meta_loss(batch)
    params = [p for p in learner.model.parameters() if p.requires_grad] + list(learner.inner_lrs.values())
    return loss.detach(), torch.autograd.grad(loss, params)


def assert_all_close(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], *, rtol: float, atol: float) -> None:
    """``torch.testing.assert_close`` on each pair of two equally long sequences of tensors."""
    assert len(got) == len(want), f"{len(got)} tensors against {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m, i=i: f"tensor {i}: {m}")


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (persistent or not), by name."""
    return {n: t.detach().clone() for n, t in itertools.chain(model.named_parameters(), model.named_buffers())}


# ------------------------------------------------------------------------------------------- memory
def held_bytes(model: torch.nn.Module, batch: Batch, **config: object) -> int:
    """Bytes the meta-loss's graph holds just before backward (``SavedTensorMeter.live_bytes``)."""
    learner = ContextPruningMetaLearner(model, coord_range=None, **config)  # type: ignore[arg-type]
    with SavedTensorMeter() as meter:
        loss = learner.meta_loss(batch)
        held = meter.live_bytes()
    assert torch.isfinite(loss)
    del loss
    return held


# ------------------------------------------------------------------------------------------- models
# HashGridINR(2, D, **TINY_HASHGRID): resolutions 2, 4, 8; 9 and 25 vertices fit the 32-entry table (dense
# levels), 81 do not (a hashed level).
TINY_HASHGRID = {
    "levels": 3,
    "features_per_level": 2,
    "log2_table_size": 5,
    "base_resolution": 2,
    "max_resolution": 8,
    "hidden_features": 8,
    "hidden_layers": 1,
    "init_scale": 0.1,
}
# NeRV((2, 4, 4), **TINY_NERV): 700 parameters, frames of 2 x 4 x 4.
TINY_NERV = {"blocks": 1, "channels": (4, 3), "hidden_features": 8, "hidden_layers": 1, "num_frequencies": 3}


class ScaledSine(nn.Module):
    """A custom INR: sine features, a learnable per-channel output scale (not an nn.Linear) and a buffer."""

    def __init__(self, in_features: int = 2, out_features: int = 3, width: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.out = nn.Linear(width, out_features)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, out_features))
        self.register_buffer("shift", torch.full((out_features,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.sin(10.0 * self.inp(x))) * self.scale + self.shift


class SqrtSiren(TinySiren):
    """TinySiren scaled by ``sqrt(x_0 + 1.5)``: finite on ``[-1, 1]^2``, NaN where ``x_0 < -1.5``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.sqrt(x[..., :1] + 1.5)


# -------------------------------------------------------------------------------------- distributed
def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def init_gloo(rank: int, port: int, world: int, timeout_s: float) -> None:
    """Join a gloo process group of ``world`` ranks on loopback (one thread per rank)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


@dataclass
class SpawnedRanks:
    """How the spawned ranks ended.

    Attributes:
        hung: ranks still alive at the deadline (then killed).
        exit_codes: every rank's exit code (None: it never exited).
        errors: the traceback of every rank that raised, by rank.
    """

    hung: list[int]
    exit_codes: list[int | None]
    errors: dict[int, str] = field(default_factory=dict)

    def report(self) -> str:
        """The failure message of the distributed tests: hung ranks, exit codes, then the tracebacks."""
        return f"distributed workers failed (hung ranks {self.hung}, exit codes {self.exit_codes}):\n" + "\n".join(
            self.errors[r] for r in sorted(self.errors)
        )


def _run_recording_errors(run_rank: Callable[[int, int, str], None], rank: int, port: int, out_dir: str) -> None:
    try:
        run_rank(rank, port, out_dir)
    except BaseException:
        Path(out_dir, f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def spawn_ranks(
    run_rank: Callable[[int, int, str], None], out_dir: str, *, world: int, timeout_s: float
) -> SpawnedRanks:
    """Run ``run_rank(rank, port, out_dir)`` in ``world`` spawned processes and wait for them all.

    ``run_rank`` must be a module-level function (spawned processes import it by name). A rank that raises
    leaves its traceback in ``out_dir/rank{r}.err`` and exits non-zero; ranks still running after
    ``timeout_s`` (for the whole spawn) are killed, so a hung collective fails a test instead of hanging it.
    """
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=_run_recording_errors, args=(run_rank, r, port, out_dir), daemon=True) for r in range(world)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.join(max(1.0, deadline - time.monotonic()))
    hung = [r for r, proc in enumerate(procs) if proc.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join(5)
    errors = {
        r: Path(out_dir, f"rank{r}.err").read_text() for r in range(world) if Path(out_dir, f"rank{r}.err").exists()
    }
    return SpawnedRanks(hung, [proc.exitcode for proc in procs], errors)


def load_rank_results(out_dir: str, world: int) -> list[dict]:
    """What every rank saved to ``out_dir/rank{r}.pt``, in rank order."""
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def record_selections(learner: ContextPruningMetaLearner) -> list:
    """Record the pruned set of every inner step the learner takes from now on (wraps its evaluators'
    ``sgd_step``); returns the list the sets are appended to."""
    seen: list = []
    make_evaluator = learner.evaluator

    def evaluator(*args, **kwargs):
        ctx = make_evaluator(*args, **kwargs)
        step = ctx.sgd_step

        def recording(params, pruned_idx, *rest, **step_kwargs):
            seen.append(pruned_idx)
            return step(params, pruned_idx, *rest, **step_kwargs)

        ctx.sgd_step = recording  # type: ignore[method-assign]
        return ctx

    learner.evaluator = evaluator  # type: ignore[method-assign]
    return seen
