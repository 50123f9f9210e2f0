"""Reporting: the results table, the paired PSNR gaps between methods (in a run or across files), the plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of the results."""
    lines = [f"{'method':<26}{'PSNR dB':>9}{'± std':>7}{'SSIM':>8}{'s/step':>8}{'cpu s/step':>11}{'memory MiB':>12}"]
    for method, r in results.items():
        if method.startswith("_"):
            continue
        ssim_text = "-" if r.get("ssim") is None else f"{r['ssim']:.3f}"
        lines.append(
            f"{method:<26}{r['psnr']:>9.2f}{r['psnr_std']:>7.2f}{ssim_text:>8}{r['seconds_per_step']:>8.3f}"
            f"{r['cpu_seconds_per_step']:>11.3f}"
            f"{r['peak_memory_bytes'] / 2**20:>12.2f}"
        )
    return "\n".join(lines)


# ECoP against each baseline; the same held-out signals are scored for every method, so the gaps are paired.
PAIRED = (
    ("ecop", "learnit"),
    ("ecop", "learnit_tuned_lr"),
    ("ecop", "random_pruning"),
    ("ecop", "ecop_no_bootstrap"),
    ("learnit", "reptile"),
    ("reptile", "fomaml"),
    ("fomaml", "random_init"),
    ("ecop_lr_element", "ecop"),
    ("ecop_lr_tensor", "ecop"),
    ("learnit_lr_element", "learnit"),
    ("learnit_lr_tensor", "learnit"),
    ("ecop_lr_element", "learnit_lr_element"),
    ("ecop_lr_tensor", "learnit_lr_tensor"),
    ("ecop_latent", "learnit_latent"),
    ("nerv_ecop", "nerv_learnit"),
    ("nerv_ecop", "ecop"),
    ("hashgrid_ecop", "hashgrid_learnit"),
    ("ecop", "hashgrid_ecop"),
)


def paired_gaps(results: dict[str, Any], split: str | None = None) -> dict[str, dict[str, float]]:
    """Mean per-signal PSNR difference ``a - b`` with its standard error, for every pair in :data:`PAIRED`.

    ``split="val"`` uses the validation scores of an ``--eval-split both`` run.
    """
    gaps = {}
    for a, b in PAIRED:
        ra, rb = results.get(a), results.get(b)
        if split is not None:
            ra, rb = (ra or {}).get(split), (rb or {}).get(split)
        if not ra or not rb or "psnr_per_signal" not in ra or "psnr_per_signal" not in rb:
            continue
        gaps[f"{a} - {b}"] = paired_gap(ra["psnr_per_signal"], rb["psnr_per_signal"])
    return gaps


def paired_gap(psnr_a: list[float], psnr_b: list[float]) -> dict[str, float]:
    """Mean of ``psnr_a - psnr_b`` over the same signals, its standard error, and how many signals ``a`` wins."""
    if len(psnr_a) != len(psnr_b):
        raise ValueError(f"paired scores need the same signals; got {len(psnr_a)} and {len(psnr_b)}")
    diff = torch.tensor(psnr_a, dtype=torch.float64) - torch.tensor(psnr_b, dtype=torch.float64)
    se = float(diff.std() / diff.numel() ** 0.5) if diff.numel() > 1 else float("nan")
    return {
        "mean_db": round(float(diff.mean()), 3),
        "stderr_db": round(se, 3),
        "wins": int((diff > 0).sum()),
        "signals": int(diff.numel()),
    }


def format_gaps(gaps: dict[str, dict[str, float]], title: str) -> str:
    lines = [title] + [
        f"  {pair:<32}{g['mean_db']:>+8.2f} dB  ± {g['stderr_db']:.2f} (se)  {g['wins']}/{g['signals']} signals better"
        for pair, g in gaps.items()
    ]
    return "\n".join(lines)


def save_plot(results: dict[str, Any], path: Path) -> None:
    """PNG: mean test PSNR against test step for every method (needs matplotlib; skipped without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    methods = [m for m in results if not m.startswith("_")]
    colors = plt.get_cmap("tab20")
    for i, method in enumerate(methods):
        r = results[method]
        ax.plot(
            range(len(r["psnr_curve"])),
            r["psnr_curve"],
            label=f"{method} ({r['psnr']:.1f})",
            color=colors(i % 20),
            linestyle="--" if method.startswith("ecop_test") else "-",
        )
    ax.set_xlabel("test-time step")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(results["_meta"]["data"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def compare_files(first: str, second: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Paired gap ``first - second`` for two ``RESULT.json:METHOD`` specs, on the held-out and validation signals."""
    records = []
    for spec in (first, second):
        path, _, method = spec.rpartition(":")
        results = json.loads(Path(path).read_text())
        if method not in results:
            raise ValueError(f"{path} has no method {method!r}; it has {[m for m in results if not m.startswith('_')]}")
        if "psnr_per_signal" not in results[method]:
            raise ValueError(f"{path}: {method!r} has no per-signal PSNR (written before reproduce.py stored it)")
        records.append(results[method])
    gaps = {"held_out": paired_gap(records[0]["psnr_per_signal"], records[1]["psnr_per_signal"])}
    if "val" in records[0] and "val" in records[1]:
        gaps["val"] = paired_gap(records[0]["val"]["psnr_per_signal"], records[1]["val"]["psnr_per_signal"])
    log(format_gaps({f"{first} - {second} ({split})": g for split, g in gaps.items()}, "paired PSNR gap:"))
    return gaps
