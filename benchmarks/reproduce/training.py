"""Meta-training one method: its meta-learner, the outer steps, and the training part of its results."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from baselines import Reptile
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, ECoPConfig, SavedTensorMeter
from ecop_wrap.data import SignalDataset

from .config import RunConfig
from .methods import Method, Training
from .splits import Splits

Batch = tuple[torch.Tensor, ...]
"""``(coords [M, C], values [B, M, D])``, with ``weights [B, M]`` for masked data (0: a hidden point)."""


def make_trainer(training: Training, model: nn.Module, config: RunConfig) -> ContextPruningMetaLearner | Reptile:
    """The meta-learner of a trained method (the library's learner for all but Reptile)."""
    if training.reptile:
        return Reptile(
            model, training.hyper["K"], inner_lr=training.inner_lr, outer_lr=training.outer_lr, **config.objective
        )
    graph_free = None if config.graph_free_dtype == "float32" else getattr(torch, config.graph_free_dtype)
    settings = ECoPConfig(
        inner_lr=training.inner_lr,
        max_grad_norm=config.max_grad_norm,
        coord_range=None,
        graph_free_dtype=graph_free,
        graph_free_full_precision=_full_precision_spec(config.graph_free_full_precision),
        **config.objective,
        **training.hyper,
    )
    adapt = list(training.adapt) if training.adapt is not None else None
    return ContextPruningMetaLearner.from_config(
        model, settings, outer_lr=training.outer_lr, seed=config.seed, adapt=adapt
    )


def _full_precision_spec(flag: str) -> str | tuple[str, ...]:
    """``--graph-free-full-precision``: ``ends``, ``none`` or comma-separated submodule names."""
    if flag == "none":
        return ()
    return "ends" if flag == "ends" else tuple(flag.split(","))


def held_bytes(trainer: ContextPruningMetaLearner | Reptile, batch: Batch) -> int:
    """Bytes autograd holds for one outer step (deterministic CPU memory measure)."""
    if isinstance(trainer, Reptile):
        return trainer.held_bytes(batch)
    with SavedTensorMeter() as meter:
        loss = trainer.meta_loss(batch)
        held = meter.live_bytes()
    del loss
    return int(held)


def train(
    trainer: ContextPruningMetaLearner | Reptile,
    batches: Iterator[Batch],
    steps: int,
    log: Callable[[str], None],
    name: str,
) -> dict[str, Any]:
    """Run ``steps`` outer steps; returns timing, the training PSNR curve (with a loss other than the MSE, the
    training loss curve) and (on CUDA) peak memory."""
    cuda = next(trainer.model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    curve, started, cpu_started = [], time.perf_counter(), time.process_time()
    rises: list[float] = []
    diverged, measure = None, "psnr"
    for step in range(1, steps + 1):
        try:
            stats = trainer.meta_step(next(batches))
        except FloatingPointError as err:
            # the learner refuses after repeated non-finite steps; weights stay at the last finite update
            diverged = {"step": step, "error": str(err).split(";")[0]}
            log(f"  {name}: DIVERGED at step {step}: {diverged['error']}; testing the last finite weights")
            break
        measure = "psnr" if "psnr" in stats else "fit_loss"  # only the MSE has a PSNR
        curve.append(stats[measure] if math.isfinite(stats[measure]) else float("nan"))
        if "boot_rise" in stats:  # reported where measured: the bootstrap on, with L >= 2
            rises.append(stats["boot_rise"])
        if step % max(1, steps // 10) == 0 or step == steps:
            recent = sum(curve[-50:]) / len(curve[-50:])
            shown = f"PSNR(theta_K, last 50) {recent:.2f} dB" if measure == "psnr" else f"loss(theta_K) {recent:.4g}"
            if rises:
                shown += f", boot_rise {sum(rises[-50:]) / len(rises[-50:]):.2f}"
            log(f"  {name}: step {step}/{steps}  train {shown}")
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    done = max(len(curve), 1)
    out: dict[str, Any] = {
        "seconds_per_step": seconds / done,
        "cpu_seconds_per_step": cpu / done,
        "train_psnr_curve" if measure == "psnr" else "train_loss_curve": _thin(curve),
        "diverged": diverged,
    }
    if rises:  # the share of signals whose bootstrap path ended above twice their loss at theta_K (ECoPConfig docs)
        out["boot_rise_curve"] = _thin(rises)
    if cuda:
        out["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _thin(curve: list[float], points: int = 50) -> list[float]:
    """Mean of ``points`` equal windows of a curve (keeps the JSON small)."""
    if len(curve) <= points:
        return [round(c, 3) for c in curve]
    size = len(curve) / points
    return [
        round(sum(curve[int(i * size) : int((i + 1) * size)]) / len(curve[int(i * size) : int((i + 1) * size)]), 3)
        for i in range(points)
    ]


def train_method(
    method: Method,
    model: nn.Module,
    splits: Splits,
    config: RunConfig,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], ContextPruningMetaLearner | Reptile]:
    """Meta-train ``model`` (in place) as ``method``; returns the training part of its results and the trainer."""
    training = method.training(config)
    trainer = make_trainer(training, model, config)
    batches = _device_batches(training_batches(splits, config, infinite=True), device)
    first = next(_device_batches(training_batches(splits, config), device))
    memory = held_bytes(trainer, first) if device.type == "cpu" else None
    log(
        f"{method.name}: training {config.outer_steps} outer steps (outer lr {training.outer_lr:g}, "
        f"inner lr {training.inner_lr:g}, {training.hyper})"
    )
    stats = train(trainer, batches, config.outer_steps, log, method.name)
    record: dict[str, Any] = {
        "seconds_per_step": stats["seconds_per_step"],
        "cpu_seconds_per_step": stats["cpu_seconds_per_step"],
        "peak_memory_bytes": stats.get("cuda_peak_bytes", memory),
        "diverged": stats["diverged"],
        "train": {
            **training.hyper,
            "outer_lr": training.outer_lr,
            "inner_lr": training.inner_lr,
            **{k: v for k, v in stats.items() if k.startswith(("train_", "boot_rise"))},
        },
    }
    backend = getattr(trainer, "backend", None)
    if backend is not None:  # the batching mode the learner ran (auto's choice)
        record["train"]["batching"] = str(backend.batching)
    rates = getattr(trainer, "inner_lrs", {})
    if rates:  # where the meta-learned step sizes ended up
        every = torch.cat([r.detach().flatten() for r in rates.values()])
        record["learned_inner_lr"] = {"mean": float(every.mean()), "min": float(every.min()), "max": float(every.max())}
    return record, trainer


def training_batches(splits: Splits, config: RunConfig, *, infinite: bool = False) -> Iterator[Batch]:
    """The training batches in ``--seed``'s order; with ``--mask-fraction`` ``(coords, values, weights)``, the
    weights the observed mask (0 on a hidden pixel: its value is never used)."""
    observed = splits.observed.get("train")
    if observed is None:
        yield from splits.train.batches(config.batch, seed=config.seed, infinite=infinite)
        return
    # the mask rides along as a last channel, so the batches are drawn in the unmasked run's order
    values = splits.train.stacked()
    both = SignalDataset(torch.cat([values, observed[..., None].to(values.dtype)], dim=-1), splits.grid)
    for _, batch in both.batches(config.batch, seed=config.seed, infinite=infinite):
        yield splits.train.coords, batch[..., :-1], batch[..., -1]


def _device_batches(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    for batch in batches:
        yield tuple(t.to(device) for t in batch)
