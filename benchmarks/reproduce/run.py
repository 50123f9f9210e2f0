"""One run: train and test every requested method on the same data; the JSON-ready results."""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ecop_wrap import ContextPruningMetaLearner
from ecop_wrap.quality import lpips_status

from .config import BATCHING_BENCHMARK_ENV, RunConfig
from .evaluation import calibrated_setting, evaluate, floor_psnr, held_out_count
from .methods import METHOD_TABLE, Method
from .models import MODELS, build_model, describe_model
from .sdf import register_losses
from .splits import Splits, frame_view, load_splits, on_device
from .training import train_method


class _Run:
    """One run's data and the trained models that its evaluation-only methods test again."""

    def __init__(self, config: RunConfig, splits: Splits, device: torch.device, log: Callable[[str], None]) -> None:
        self.config, self.splits, self.device, self.log = config, splits, device, log
        # a trained method's learner (its test-time fit uses its adapted parameters and learned rates, if any)
        # and the layout of the data it was trained on (a NeRV's context point is a frame: frame_view)
        self.trained_models: dict[str, nn.Module | ContextPruningMetaLearner] = {}
        self.trained_data: dict[str, Splits] = {}

    def score(self, model: nn.Module | ContextPruningMetaLearner, method: Method, data: Splits) -> dict[str, Any]:
        """Test-time fits of the held-out signals (and, with ``--eval-split both``, of the validation ones)."""
        config = self.config
        setting = method.fit_setting(config)
        calibration = None
        if setting.scaling == "calibrated":
            setting, calibration = calibrated_setting(model, data, setting, config)
        split = "val" if config.eval_split == "val" else "test"
        out = self._evaluate(model, data, split, setting)
        if calibration is not None:
            out["calibration"] = calibration
        if config.eval_split == "both":
            on_val = self._evaluate(model, data, "val", setting)
            kept = ("psnr", "psnr_std", "psnr_per_signal", "ssim", "psnr_observed", "psnr_observed_per_signal")
            extra = ("test_loss", "test_loss_per_signal", "band_error", "iou", "band_psnr", "band_psnr_per_signal")
            out["val"] = {k: on_val[k] for k in (*kept, *extra) if k in on_val}
        return out

    def _evaluate(self, model: nn.Module | ContextPruningMetaLearner, data: Splits, split: str, setting: Any) -> Any:
        """Fit and score the ``split`` ("val" or "test") signals of ``data``."""
        values = data.val if split == "val" else data.test
        observed, ragged = data.observed.get(split), data.ragged.get(split)
        objective = self.config.objective
        return evaluate(
            model, data, values, self.config.test_steps, setting, objective=objective, observed=observed, ragged=ragged
        )

    def trained(self, method: Method) -> dict[str, Any]:
        """Meta-train ``method``'s model, then test it."""
        model = build_model(self.config, self.splits, method.model).to(self.device)
        data = on_device(frame_view(self.splits, model), self.device) if MODELS[method.model].frames else self.splits
        training, trainer = train_method(method, model, data, self.config, self.device, self.log)
        self.trained_models[method.name] = trainer if isinstance(trainer, ContextPruningMetaLearner) else model
        self.trained_data[method.name] = data
        training["model"] = describe_model(model)
        return {**self.score(self.trained_models[method.name], method, data), **training}

    def initialisation(self, method: Method) -> dict[str, Any]:
        """Test the untrained SIREN."""
        model = build_model(self.config, self.splits).to(self.device)
        no_training = {"trained_as": None, "seconds_per_step": 0.0, "cpu_seconds_per_step": 0.0}
        return {**self.score(model, method, self.splits), **no_training, "peak_memory_bytes": 0}

    def retested(self, method: Method, results: dict[str, Any]) -> dict[str, Any]:
        """Test another method's trained model another way; its training record is repeated."""
        source = method.trained_as
        assert source is not None
        scored = self.score(self.trained_models[source], method, self.trained_data[source])
        return {**results[source], **scored, "trained_as": source}


def run(config: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and test every requested method; returns the JSON-ready results."""
    torch.set_num_threads(config.threads)
    register_losses(config.sdf_clamp)  # --loss clamped_l1[_one_sided] (also when run() is called without the CLI)
    device = torch.device(config.device)
    splits = load_splits(config)
    log(f"data: {splits.description}; train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}")
    current = _Run(config, on_device(splits, device), device, log)
    results: dict[str, Any] = {}
    for name in config.methods:
        method = METHOD_TABLE[name]
        if method.train is not None:
            results[name] = current.trained(method)
        elif method.trained_as is None:
            results[name] = current.initialisation(method)
        else:
            results[name] = current.retested(method, results)
        _log_result(log, name, results[name])
    for name in config.methods:
        setting = METHOD_TABLE[name].fit_setting(config)
        results[name]["test"] = {**dataclasses.asdict(setting), "steps": config.test_steps}
    results["_meta"] = _meta(config, current.splits, device)
    return results


def _log_result(log: Callable[[str], None], method: str, record: dict[str, Any]) -> None:
    ssim_text = "" if record.get("ssim") is None else f"  SSIM {record['ssim']:.3f}"
    loss_text = "" if "test_loss" not in record else f"  test loss {record['test_loss']:.4g}"
    if "iou" in record:
        loss_text += f"  band error {record['band_error']:.4f}  band PSNR {record['band_psnr']:.2f}"
        loss_text += f"  IoU {record['iou']:.3f}"
    hidden = "" if "psnr_observed" not in record else f" on hidden pixels ({record['psnr_observed']:.2f} observed)"
    log(f"  -> {method}: PSNR {record['psnr']:.2f} dB{hidden}{ssim_text}{loss_text}")


def _points(splits: Splits) -> dict[str, dict[str, float]]:
    """``--aspect-crops``: the smallest, largest and mean number of points of each split's signals."""
    sizes = {"train": torch.tensor([int(v.shape[0]) for v in splits.train.values])}
    sizes |= {split: weights.sum(dim=1).round() for split, (_, weights) in splits.ragged.items()}
    return {
        k: {"min": int(v.min()), "max": int(v.max()), "mean": round(float(v.double().mean()), 1)}
        for k, v in sizes.items()
    }


def _memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during meta-training"
    return "bytes autograd holds for one outer step (SavedTensorMeter on one meta-loss; Reptile: largest inner step)"


def _floor(splits: Splits) -> dict[str, Any]:
    floor = floor_psnr(splits)
    if floor is None:
        return {}
    predictor = "each held-out signal's own mean value (per channel) at every point"
    return {"floor_psnr_per_signal": floor, "floor_predictor": predictor}


def _meta(config: RunConfig, splits: Splits, device: torch.device) -> dict[str, Any]:
    return {
        "command": config.command,
        "data": splits.description,
        "modality": splits.modality,
        "eval_split": config.eval_split,
        "graph_free_dtype": config.graph_free_dtype,
        "graph_free_full_precision": config.graph_free_full_precision,
        "loss": config.loss,
        **({"mask_fraction": config.mask_fraction, "mask_block": config.mask_block} if splits.observed else {}),
        **({"psnr_of": "hidden pixels (psnr_observed: the observed ones)"} if splits.observed else {}),
        **({"huber_delta": config.huber_delta} if config.loss == "huber" else {}),
        **({"aspect_crops": config.aspect_crops, "points_per_signal": _points(splits)} if splits.ragged else {}),
        **({"sdf_clamp": config.sdf_clamp} if config.loss.startswith("clamped_l1") else {}),
        **({"sdf_band": config.sdf_band} if splits.modality == "sdf" else {}),
        "eval_signals": int(held_out_count(splits, config.eval_split)),
        **_floor(splits),
        "train_signals": len(splits.train),
        "psnr_data_range": splits.data_range,
        "model": f"SIREN {config.depth} hidden sine layers x {config.width}, w0 {config.w0_for(splits.modality)}"
        + (f", first layer w0 {config.first_w0}" if config.first_w0 is not None else "")
        + " (the other models: each method's 'model' entry)",
        "batch": config.batch,
        "outer_steps": config.outer_steps,
        "test_steps": config.test_steps,
        "seed": config.seed,
        "eval_seed": config.eval_seed,
        "device": str(device),
        "threads": config.threads,
        "batching_auto_timed": os.environ.get(BATCHING_BENCHMARK_ENV, "1") != "0",
        "memory_measure": _memory_kind(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs".strip(),
        "lpips": "computed" if lpips_status()[0] else f"absent: {lpips_status()[1]}",
        "note": "keys starting with '_' are not methods",
    }
