"""Data-parallel ECoP meta-learning with torch.distributed, launched by torchrun, restartable.

Every rank builds the same global batch for each step (a function of the step index and the seed), keeps
its own shard of it, and calls ``learner.meta_step``, which averages the meta-gradient over the ranks
(weighted by shard size) before the optimizer step, so all ranks hold identical parameters after every
step. Every ``--checkpoint-every`` steps all ranks call ``learner.save`` (rank 0 writes
``DIR/step-XXXXXXXX.pt`` atomically, with every rank's pruning RNG state) and rank 0 keeps the newest
``--keep`` files. On start every rank loads the newest checkpoint in ``--checkpoint-dir``, so a run that
torchrun restarts after a crash continues exactly where the last checkpoint left it.

CPU, two processes (gloo), restarted up to twice if a process dies (the environment variable gives each
restart a fresh rendezvous store; see docs/distributed.md)::

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes=1 --nproc-per-node=2 --max-restarts=2 \\
        --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:29500 --local-addr=127.0.0.1 \\
        examples/train_distributed.py --steps 20 --checkpoint-dir ckpts --checkpoint-every 5

One node with 8 GPUs (NCCL, one GPU per process)::

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes=1 --nproc-per-node=8 --max-restarts=3 \\
        --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:29500 --local-addr=127.0.0.1 \\
        examples/train_distributed.py --steps 20000 --batch-size 64 --data skimage --resolution 64 \\
        --checkpoint-dir ckpts --checkpoint-every 500

Several nodes: the same command on each node with ``--nnodes=N --rdzv-endpoint=HOST:PORT --rdzv-id=RUN``
(see docs/distributed.md). Without torchrun it runs as one process.

For tests only: ``ECOP_TEST_KILL_AT=RANK:STEP`` makes that rank SIGKILL itself just before step STEP
(1-based), on torchrun's first attempt only (``TORCHELASTIC_RESTART_COUNT`` 0 or unset).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren, make_grid
from ecop_wrap.distributed import broadcast_parameters, parameters_in_sync


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="total outer steps (a resumed run stops here too)")
    parser.add_argument("--batch-size", type=int, default=8, help="GLOBAL batch: signals per step over all ranks")
    parser.add_argument("--data", choices=["synthetic", "skimage"], default="synthetic")
    parser.add_argument("--resolution", type=int, default=16, help="images are resolution x resolution")
    parser.add_argument("--num-signals", type=int, default=256, help="size of the training set")
    parser.add_argument("--gamma", type=float, default=0.25)
    parser.add_argument("--K", type=int, default=4)
    parser.add_argument("--L", type=int, default=2)
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--inner-lr", type=float, default=1e-2)
    parser.add_argument("--outer-lr", type=float, default=1e-4)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--selection", choices=["error", "random", "gradncp"], default="error")
    parser.add_argument("--seed", type=int, default=0, help="theta_0, data and batch order; rank r prunes with seed+r")
    parser.add_argument(
        "--checkpoint-dir", default=None, help="directory of the checkpoints; the run resumes from the newest one in it"
    )
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--keep", type=int, default=2, help="checkpoints kept in --checkpoint-dir (newest)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out fit at the end")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------- process
def setup() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); returns rank, world, device."""
    if "RANK" not in os.environ:  # plain `python examples/train_distributed.py`
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group(backend)
    warn_if_restarts_share_the_store(dist.get_rank())
    return dist.get_rank(), dist.get_world_size(), device


def warn_if_restarts_share_the_store(rank: int) -> None:
    """torchrun's c10d rendezvous shares one store with the workers across restarts (torch 2.13 at least), so a
    restarted group can read its peers' addresses from the previous attempt and fail or hang while connecting.
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on the torchrun command gives every attempt a fresh store."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if rank == 0 and shared and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        print(
            "warning: torchrun --max-restarts with a shared rendezvous store: restarts may fail to reconnect; "
            "run torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (see docs/distributed.md)",
            flush=True,
        )


def log(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)


# ------------------------------------------------------------------------------------------------- data
def synthetic_images(n: int, resolution: int, seed: int) -> torch.Tensor:
    """``[n, R*R, 3]`` smooth random colour images in [0, 1]: sums of 4 random plane waves per image."""
    gen = torch.Generator().manual_seed(seed)
    grid = make_grid((resolution, resolution))  # [M, 2] in [-1, 1]
    freqs = torch.randn(n, 4, 2, generator=gen) * 3.0
    phases = torch.rand(n, 4, 1, generator=gen) * 2 * math.pi
    colours = torch.rand(n, 4, 3, generator=gen)
    waves = torch.sin(torch.einsum("nkc,mc->nkm", freqs, grid) + phases)  # [n, 4, M]
    images = torch.einsum("nkm,nkd->nmd", waves, colours) / 4.0
    lo, hi = images.amin(dim=1, keepdim=True), images.amax(dim=1, keepdim=True)
    return (images - lo) / (hi - lo + 1e-8)


def load_signals(args: argparse.Namespace, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coords [M, 2], values [N, M, 3])``, identical on every rank (built from the seed)."""
    n = args.num_signals if split == "train" else 4
    if args.data == "synthetic":
        seed = args.seed if split == "train" else args.seed + 10_000
        return make_grid((args.resolution, args.resolution)), synthetic_images(n, args.resolution, seed)
    try:
        from ecop_wrap.data import skimage_crops

        dataset = skimage_crops(split, args.resolution, n, seed=args.seed)
    except ImportError as exc:
        raise SystemExit(
            f"--data skimage needs scikit-image and Pillow: pip install 'ecop-wrap[images]' ({exc}); "
            "or use --data synthetic"
        ) from exc
    return dataset.coords, dataset.stacked()


def global_indices(step: int, num_signals: int, batch_size: int, seed: int) -> torch.Tensor:
    """The global batch of ``step``: the same on every rank and after a resume (a function of the step)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randperm(num_signals, generator=gen)[:batch_size]


def my_shard(indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of the global batch (sizes differ by at most one when it does not divide evenly)."""
    return torch.tensor_split(indices, world)[rank]


# ------------------------------------------------------------------------------------------ checkpoints
CHECKPOINT_PATTERN = re.compile(r"step-(\d{8})\.pt")


def checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in ``directory``, newest first (temporary files of an interrupted save are ignored)."""
    found = [(int(m.group(1)), p) for p in directory.glob("step-*.pt") if (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def resume(learner: ContextPruningMetaLearner, directory: Path, rank: int) -> Path | None:
    """Load the newest checkpoint that loads (every rank walks the same list, so all pick the same file).

    Saves are atomic, so a damaged file should not occur; if one does, it is reported and the previous one
    is tried. If none loads (e.g. the run's configuration or number of ranks changed), stop with the reasons
    rather than silently starting from scratch.
    """
    errors = []
    for path in checkpoints(directory):
        try:
            learner.load(path)
        except ValueError as exc:
            log(rank, f"cannot resume from {path}: {exc}")
            errors.append(f"{path.name}: {exc}")
            continue
        return path
    if errors:
        raise SystemExit(f"no checkpoint in {directory} can be resumed from:\n" + "\n".join(errors))
    return None


def save_checkpoint(learner: ContextPruningMetaLearner, directory: Path, keep: int, rank: int) -> None:
    """All ranks call this (``save`` is a collective); rank 0 writes the file and prunes old ones."""
    learner.save(directory / f"step-{learner.step_count:08d}.pt")
    if rank == 0:
        for old in checkpoints(directory)[keep:]:
            old.unlink(missing_ok=True)


def kill_if_asked(rank: int, step: int) -> None:
    """Test hook: SIGKILL this process before ``step`` if ``ECOP_TEST_KILL_AT`` says so (first attempt only)."""
    spec = os.environ.get("ECOP_TEST_KILL_AT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    kill_rank, kill_step = (int(part) for part in spec.split(":"))
    if (rank, step) == (kill_rank, kill_step):
        print(f"rank {rank}: ECOP_TEST_KILL_AT={spec}, killing myself before step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    rank, world, device = setup()
    if args.batch_size < world:
        raise SystemExit(f"--batch-size {args.batch_size} must be >= the number of processes {world}")
    coords, values = load_signals(args, "train")
    coords, values = coords.to(device), values.to(device)

    torch.manual_seed(args.seed)  # same theta_0 everywhere; the broadcast below makes sure of it
    model = Siren(2, values.shape[-1], args.width, args.depth).to(device)
    broadcast_parameters(model)
    learner = ContextPruningMetaLearner(
        model,
        args.gamma,
        args.K,
        args.L,
        args.lam,
        inner_lr=args.inner_lr,
        outer_lr=args.outer_lr,
        max_grad_norm=args.max_grad_norm,
        selection=args.selection,
        seed=args.seed + rank,  # random selection: a different stream per rank
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    directory = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        path = resume(learner, directory, rank)  # every rank reads the same file (a shared filesystem)
        if path is not None:
            log(rank, f"attempt {attempt}: resumed from {path} at step {learner.step_count}")
    log(
        rank, f"{world} process(es) on {device}, global batch {args.batch_size}, {args.data} data {tuple(values.shape)}"
    )

    start = time.perf_counter()
    while learner.step_count < args.steps:
        step = learner.step_count
        kill_if_asked(rank, step + 1)
        shard = my_shard(global_indices(step, values.shape[0], args.batch_size, args.seed), rank, world)
        stats = learner.meta_step((coords, values[shard.to(device)]))
        done = learner.step_count
        if done % args.log_every == 0 or done == args.steps:
            log(
                rank,
                f"step {done:5d}  loss {stats['loss']:.5f}  psnr {stats['psnr']:6.2f} dB  "
                f"grad_norm {stats['grad_norm']:.3g}  skipped {int(stats['skipped'])}",
            )
        if directory is not None and (done % args.checkpoint_every == 0 or done == args.steps):
            save_checkpoint(learner, directory, args.keep, rank)
    elapsed = time.perf_counter() - start

    in_sync = parameters_in_sync(model)
    log(rank, f"parameters identical on all {world} ranks: {in_sync}  ({elapsed:.1f} s)")
    if rank == 0 and not args.no_eval:
        test_coords, test_values = load_signals(args, "val")
        result = GradScaledAdapter(learner).fit((test_coords.to(device), test_values.to(device)))
        print(
            f"held-out PSNR after {learner.config.K} scaled steps: {float(result.history['psnr'][-1].mean()):.2f} dB "
            f"(from {float(result.history['psnr'][0].mean()):.2f} dB)",
            flush=True,
        )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if not in_sync:
        raise SystemExit("ranks diverged")


if __name__ == "__main__":
    main()
    if dist.is_available() and "RANK" in os.environ:
        # With gloo (torch 2.13, CPU), a worker sometimes aborts with SIGABRT ("terminate called without an
        # active exception") while the interpreter shuts down, after main() returned and the process group was
        # destroyed; torchrun counts that as a failure and restarts the whole group. Everything is saved by now,
        # so leave without the interpreter's shutdown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
