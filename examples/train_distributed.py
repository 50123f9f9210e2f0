"""Data-parallel ECoP meta-learning with torch.distributed, launched by torchrun.

Every rank builds the same global batch for each step, keeps its own shard of it, and calls
``learner.meta_step``, which averages the meta-gradient over the ranks (weighted by shard size) before the
optimizer step, so all ranks hold identical parameters after every step. Rank 0 logs and writes checkpoints.

CPU, two processes (gloo)::

    torchrun --nproc_per_node=2 examples/train_distributed.py --steps 20

One node with 8 GPUs (NCCL, one GPU per process)::

    torchrun --nproc_per_node=8 examples/train_distributed.py --steps 20000 --batch-size 64 \\
        --data skimage --resolution 64 --checkpoint ckpt.pt --resume

Several nodes: the same command on each node with ``--nnodes=N --node-rank=i --rdzv-backend=c10d
--rdzv-endpoint=HOST:PORT`` (see docs/distributed.md). Without torchrun it runs as one process.
"""

from __future__ import annotations

import argparse
import math
import os
import time

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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="path of the checkpoint written by rank 0")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    parser.add_argument("--log-every", type=int, default=5)
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
    return dist.get_rank(), dist.get_world_size(), device


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
        seed=args.seed + rank,  # random selection: a different stream per rank
    )
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        learner.load(args.checkpoint)  # every rank reads the same file (shared filesystem)
        log(rank, f"resumed from {args.checkpoint} at step {learner.step_count}")
    log(
        rank, f"{world} process(es) on {device}, global batch {args.batch_size}, {args.data} data {tuple(values.shape)}"
    )

    start = time.perf_counter()
    while learner.step_count < args.steps:
        step = learner.step_count
        shard = my_shard(global_indices(step, values.shape[0], args.batch_size, args.seed), rank, world)
        stats = learner.meta_step((coords, values[shard.to(device)]))
        done = learner.step_count
        if done % args.log_every == 0 or done == args.steps:
            log(
                rank,
                f"step {done:5d}  loss {stats['loss']:.5f}  psnr {stats['psnr']:6.2f} dB  "
                f"grad_norm {stats['grad_norm']:.3g}  skipped {int(stats['skipped'])}",
            )
        if args.checkpoint and (done % args.checkpoint_every == 0 or done == args.steps) and rank == 0:
            learner.save(args.checkpoint)
    elapsed = time.perf_counter() - start

    in_sync = parameters_in_sync(model)
    log(rank, f"parameters identical on all {world} ranks: {in_sync}  ({elapsed:.1f} s)")
    if rank == 0:
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
