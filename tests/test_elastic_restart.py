"""A rank killed with SIGKILL mid-run: torchrun restarts the group, which resumes from the newest checkpoint and
ends with parameters, optimizer state and per-rank pruning RNG bit-identical to an uninterrupted run.

Two torchrun launches of ``examples/train_distributed.py`` (2 CPU ranks, gloo, rendezvous on 127.0.0.1) run
side by side: one uninterrupted, one whose rank 1 kills itself before step 5 on the first attempt
(``ECOP_TEST_KILL_AT``). Random selection with a different seed per rank makes the per-rank RNG matter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_distributed.py"
TIMEOUT_S = 300  # per launch; a hang fails the test instead of the suite
STEPS, EVERY, KILL = 8, 3, "1:5"  # checkpoints at 3, 6, 8; rank 1 dies before step 5, so attempt 1 resumes at 3
ARGS = [
    "--width",
    "16",
    "--depth",
    "2",
    "--resolution",
    "8",
    "--num-signals",
    "32",
    "--batch-size",
    "4",
    "--K",
    "2",
    "--L",
    "1",
    "--selection",
    "random",
    "--steps",
    str(STEPS),
    "--checkpoint-every",
    str(EVERY),
    "--no-eval",
    "--log-every",
    "1",
]


def _launch(checkpoint_dir: Path, kill_at: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "ECOP_TEST_KILL_AT"}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),  # the workers import this checkout
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",  # a fresh rendezvous store per restart (see docs/distributed.md)
        OMP_NUM_THREADS="1",
    )
    if kill_at:
        env["ECOP_TEST_KILL_AT"] = kill_at
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--max-restarts=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--local-addr=127.0.0.1",
        "--monitor-interval=0.2",
        str(EXAMPLE),
        *ARGS,
        "--checkpoint-dir",
        str(checkpoint_dir),
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _wait(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the workers it started
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S} s:\n{out[-5000:]}")
    assert proc.returncode == 0, out[-5000:]
    return out


def test_killed_rank_is_restarted_and_the_run_ends_bit_identical(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight, killed = _launch(straight_dir, None), _launch(killed_dir, KILL)
    killed_out, straight_out = _wait(killed), _wait(straight)

    assert "killing myself before step 5" in killed_out
    assert "attempt 1: resumed from" in killed_out and "step-00000003.pt at step 3" in killed_out
    assert "attempt" not in straight_out
    for out in (killed_out, straight_out):
        assert "parameters identical on all 2 ranks: True" in out

    final = f"step-{STEPS:08d}.pt"
    assert sorted(p.name for p in killed_dir.glob("step-*.pt")) == ["step-00000006.pt", final]  # --keep 2
    a = torch.load(killed_dir / final, weights_only=True)
    b = torch.load(straight_dir / final, weights_only=True)
    assert a["step"] == b["step"] == STEPS and a["digest"] == b["digest"]  # the digest covers everything below
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    for i, state in b["optimizer"]["state"].items():
        assert all(torch.equal(a["optimizer"]["state"][i][k], v) for k, v in state.items())
    generators = a["distributed_state"]["generator_states"]
    assert len(generators) == 2 and not torch.equal(generators[0], generators[1])
    assert all(torch.equal(g, h) for g, h in zip(generators, b["distributed_state"]["generator_states"], strict=True))
