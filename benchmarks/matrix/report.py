"""Each cell's summary (paired gap, bar, collapse), the machine, and the table as text or markdown."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from reproduce.evaluation import FLOOR_DB
from reproduce.report import paired_gap

from .cells import Cell, Setting, lr_text

BAR_DB = -0.1
"""Issue 24's bar: no cell's paired gap (ECoP - Learnit) below this."""
COLLAPSE_DB = 3.0
"""A training PSNR curve that ends this far below its best (moving averages) counts as collapsed."""
COLLAPSE_LOSS_RATIO = 2.0
"""A training loss curve (losses other than the MSE) that ends above this multiple of its lowest."""
FIT_LOSS_DB = 1.0
"""A test-time fit whose mean PSNR ends this far below where it started (step 0) counts as diverged."""
COLLAPSE_RULE = (
    "diverged (benchmarks/reproduce stopped on non-finite steps), or the training curve it records (PSNR at "
    "theta_K on each training batch, 50 windows; no validation curve is recorded) ended more than "
    f"{COLLAPSE_DB:g} dB below its best, both as moving averages over a quarter of the curve (the per-batch PSNR "
    f"is noisy; a loss curve: above {COLLAPSE_LOSS_RATIO:g}x its lowest); or the test-time fit diverged (its "
    f"mean test PSNR after the last test step more than {FIT_LOSS_DB:g} dB below the PSNR at test step 0)"
)


def _smooth(curve: Sequence[float]) -> list[float]:
    """Moving averages over a quarter of the curve (at least 1 point), ignoring non-finite points."""
    width = max(1, len(curve) // 4)
    out = []
    for i in range(len(curve) - width + 1):
        window = [v for v in curve[i : i + width] if isinstance(v, (int, float)) and math.isfinite(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def collapse(record: dict[str, Any]) -> str | None:
    """Why a method's training counts as collapsed (:data:`COLLAPSE_RULE`), or None."""
    if record.get("diverged"):
        return f"diverged at step {record['diverged'].get('step')}"
    fit = record.get("psnr_curve") or []
    if len(fit) > 1 and fit[0] - fit[-1] > FIT_LOSS_DB:
        return f"test-time fit diverged ({fit[0]:.1f} -> {fit[-1]:.1f} dB over {len(fit) - 1} steps)"
    train = record.get("train", {})
    psnr, loss = train.get("train_psnr_curve"), train.get("train_loss_curve")
    smoothed = _smooth(psnr or loss or [])
    finite = [v for v in smoothed if math.isfinite(v)]
    if not finite:
        return "no finite training curve" if smoothed else None
    if not math.isfinite(smoothed[-1]):
        return "training curve ends non-finite"
    if psnr and max(finite) - smoothed[-1] > COLLAPSE_DB:
        return f"train PSNR ended {max(finite) - smoothed[-1]:.1f} dB below its best"
    if loss and min(finite) > 0 and smoothed[-1] / min(finite) > COLLAPSE_LOSS_RATIO:
        return f"train loss ended at {smoothed[-1] / min(finite):.1f}x its lowest"
    return None


def _method(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """What the matrix keeps of one method's reproduce record."""
    train = record.get("train", {})
    val = record.get("val", {})
    keep = ("ssim", "band_error", "iou", "test_loss", "learned_inner_lr", "fit_seconds_per_signal", "calibration")
    return {
        "method": name,
        "psnr": record["psnr"],
        "psnr_std": record.get("psnr_std"),
        "val_psnr": val.get("psnr"),
        "outer_lr": train.get("outer_lr"),
        "inner_lr": train.get("inner_lr"),
        "lam": train.get("lam"),
        "K": train.get("K"),
        "gamma": train.get("gamma"),
        "memory_bytes": record.get("peak_memory_bytes"),
        "cpu_seconds_per_step": record.get("cpu_seconds_per_step"),
        "seconds_per_step": record.get("seconds_per_step"),
        "diverged": record.get("diverged"),
        "collapsed": collapse(record),
        **{k: record[k] for k in keep if record.get(k) is not None},
        "train_curve": train.get("train_psnr_curve") or train.get("train_loss_curve"),
        "train_curve_kind": "psnr" if train.get("train_psnr_curve") else "loss",
        "test_psnr_curve": record.get("psnr_curve"),
        "psnr_per_signal": record.get("psnr_per_signal"),
        "val_psnr_per_signal": val.get("psnr_per_signal"),
        **_band_psnr(record, val),
    }


def _band_psnr(record: dict[str, Any], val: dict[str, Any]) -> dict[str, Any]:
    """An SDF run's PSNR over the band near the outline (reproduce's ``band_psnr``), where it has one."""
    if record.get("band_psnr_per_signal") is None:
        return {}
    return {
        "band_psnr": record["band_psnr"],
        "band_psnr_per_signal": record["band_psnr_per_signal"],
        "val_band_psnr_per_signal": val.get("band_psnr_per_signal"),
    }


def score_key(record: dict[str, Any]) -> str:
    """The score a run is judged by: ``"band_psnr"`` where it has one (SDF runs: the clamped loss fits only the
    band near the outline, so the whole field's PSNR mostly scores what no loss asked for), else ``"psnr"``."""
    return "band_psnr" if record.get("band_psnr") is not None else "psnr"


def headline(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The score a cell's gap and bar use: :func:`score_key`'s where both methods agree on it, else ``"psnr"``."""
    return "band_psnr" if score_key(a) == score_key(b) == "band_psnr" else "psnr"


def summarise(
    cell: Cell,
    setting: Setting,
    results: dict[str, Any] | None,
    *,
    steps: int,
    command: str,
    error: str | None = None,
    mode: str = "documented",
    sweep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One cell's entry of the matrix: both methods, the paired gaps (test and validation), the bar, collapse."""
    ecop, learnit = cell.scored
    out: dict[str, Any] = {
        "model": cell.model.name,
        "model_title": cell.model.title,
        "data": cell.data.name,
        "data_title": cell.data.title,
        "steps": steps,
        "command": command,
        "lrs": {
            "mode": mode,
            "source": "validation sweep" if mode == "sweep" else setting.source,
            "ref": setting.ref,
            "ecop_outer_lr": setting.ecop_lr,
            "learnit_outer_lr": setting.learnit_lr,
            "inner_lr": setting.inner_lr,
            "learnit_inner_lr": setting.learnit_inner_lr,
            "ecop_lam": setting.ecop_lam,
            "boot_lr": setting.boot_lr,
            "divergence_backoff": setting.divergence_backoff,
            **({"sweep": sweep} if sweep is not None else {}),
        },
        "note": cell.note,
        "data_ref": cell.data.ref,
    }
    if results is None or ecop not in results or learnit not in results:
        return {**out, "status": "skipped", "reason": error or "no results"}
    a, b = _method(ecop, results[ecop]), _method(learnit, results[learnit])
    metric = headline(a, b)
    gap = paired_gap(a[f"{metric}_per_signal"], b[f"{metric}_per_signal"])
    both_val = a[f"val_{metric}_per_signal"] and b[f"val_{metric}_per_signal"]
    gap_val = paired_gap(a[f"val_{metric}_per_signal"], b[f"val_{metric}_per_signal"]) if both_val else None
    field_gap = paired_gap(a["psnr_per_signal"], b["psnr_per_signal"]) if metric != "psnr" else None
    memory = a["memory_bytes"] / b["memory_bytes"] if a["memory_bytes"] and b["memory_bytes"] else None
    cpu = [m["cpu_seconds_per_step"] for m in (a, b)]
    return {
        **out,
        "status": "ok",
        "data_description": results.get("_meta", {}).get("data"),
        "ecop": a,
        "learnit": b,
        "metric": metric,
        "gap": gap,
        "gap_val": gap_val,
        **({"gap_whole_field": field_gap} if field_gap is not None else {}),
        "below_bar": gap["mean_db"] < BAR_DB,
        **_floor(results.get("_meta", {}), a, b, metric),
        "memory_ratio": round(memory, 4) if memory is not None else None,
        "cpu_minutes_at_1000_steps": round(sum(cpu) * 1000 / 60, 1) if all(c is not None for c in cpu) else None,
    }


def _floor(meta: dict[str, Any], a: dict[str, Any], b: dict[str, Any], metric: str) -> dict[str, Any]:
    """Each method's paired gain over the trivial floor (reproduce's ``floor_psnr``: each held-out signal's own
    mean) on the test signals, and which methods stay within ``FLOOR_DB`` of it (they learned next to nothing,
    so their gap says nothing about the method); empty where the run has no floor."""
    floor = meta.get("floor_psnr_per_signal")
    if floor is None or metric != "psnr" or len(floor["test"]) != len(a["psnr_per_signal"]):
        return {}
    over, at_floor = floor_gains(floor["test"], {"ECoP": a["psnr_per_signal"], "Learnit": b["psnr_per_signal"]})
    floor_mean = sum(floor["test"]) / len(floor["test"])
    return {"floor": {"test_mean_db": round(floor_mean, 3), "over_floor": over}, "at_floor": at_floor}


def floor_gains(floor: list[float], scores: dict[str, list[float]]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Each method's paired gain over the floor PSNRs of the same signals, and the methods within ``FLOOR_DB``."""
    over = {who: paired_gap(psnr, floor) for who, psnr in scores.items()}
    return over, [who for who, gap in over.items() if gap["mean_db"] < FLOOR_DB]


def machine(threads: int, workers: int) -> dict[str, Any]:
    """The CPU (``lscpu``'s model name, whether its flags include avx512_bf16), torch, threads."""
    text = ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        cpuinfo = Path("/proc/cpuinfo")
        text = cpuinfo.read_text() if cpuinfo.exists() else ""
    name = re.search(r"^\s*model name\s*:\s*(.+)$", text, flags=re.IGNORECASE | re.MULTILINE)
    flags = re.search(r"^\s*flags\s*:\s*(.+)$", text, flags=re.IGNORECASE | re.MULTILINE)
    return {
        "cpu": name.group(1).strip() if name else platform.processor() or platform.machine(),
        "avx512_bf16": ("avx512_bf16" in flags.group(1).split()) if flags else None,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads_per_run": threads,
        "parallel_runs": workers,
        "cuda": torch.cuda.is_available(),
    }


def source_state(root: Path) -> dict[str, Any]:
    """The git commit and the uncommitted files of the code a run uses (the library and benchmarks/reproduce)."""
    paths = ["ecop_wrap", "benchmarks/reproduce", "benchmarks/baselines.py", "benchmarks/matrix"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths], cwd=root, capture_output=True, text=True, check=False
        )
    except OSError:
        return {"commit": None, "uncommitted": None}
    return {"commit": head.stdout.strip() or None, "uncommitted": [line[3:] for line in status.stdout.splitlines()]}


def _lr(value: float | None) -> str:
    return "-" if value is None else lr_text(value)


def _row(entry: dict[str, Any]) -> list[str]:
    lrs = entry["lrs"]
    head = [entry["model"], entry["data"], str(entry["steps"])]
    if entry["status"] != "ok":
        lr_text = f"{_lr(lrs['ecop_outer_lr'])} / {_lr(lrs['learnit_outer_lr'])}"
        return [*head, "skipped", "skipped", "-", "-", "-", lr_text, lrs["source"], "-", "-", "skipped (see below)"]
    a, b, gap, val = entry["ecop"], entry["learnit"], entry["gap"], entry["gap_val"]
    collapsed = "; ".join(f"{who}: {m['collapsed']}" for who, m in (("ECoP", a), ("Learnit", b)) if m["collapsed"])
    return [
        *head,
        *(_score(m, entry.get("metric", "psnr")) for m in (a, b)),
        f"{gap['mean_db']:+.2f} ± {gap['stderr_db']:.2f}",
        f"{gap['wins']}/{gap['signals']}",
        "-" if val is None else f"{val['mean_db']:+.2f} ± {val['stderr_db']:.2f}",
        f"{_lr(a['outer_lr'])} / {_lr(b['outer_lr'])}",
        lrs["source"],
        "-" if entry["memory_ratio"] is None else f"{entry['memory_ratio']:.2f}x",
        ("BELOW" if entry["below_bar"] else "ok") + (", at floor" if entry.get("at_floor") else ""),
        collapsed or "no",
    ]


def _score(method: dict[str, Any], metric: str) -> str:
    return f"{method[metric]:.2f}" + (" (band)" if metric == "band_psnr" else "")


HEADER = [
    "model",
    "data",
    "steps",
    "ECoP PSNR",
    "Learnit PSNR",
    "gap ± se (test)",
    "wins",
    "gap ± se (val)",
    "outer lr ECoP / Learnit",
    "lrs",
    "memory ECoP/Learnit",
    f"bar {BAR_DB:g} dB",
    "collapsed",
]


def format_table(cells: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    """The matrix as a table (``markdown``: pipes, for docs/results.md)."""
    rows = [_row(entry) for entry in cells.values()]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [HEADER, *rows])


def notes(matrix: dict[str, Any]) -> list[str]:
    """The lines under the table: settings and their references, absent and skipped cells, the CPU budget."""
    meta, cells = matrix["_meta"], matrix["cells"]
    out = [
        "gap: mean over the same held-out signals of ECoP's PSNR minus Learnit's (dB), ± its standard error; wins: "
        "signals where ECoP is better; val: the same on the validation signals; memory: bytes autograd holds per "
        f"outer step, ECoP / Learnit; bar: BELOW where the test gap is under {BAR_DB:g} dB (at floor: see below); "
        "collapsed: "
        f"{COLLAPSE_RULE}.",
        "",
        "Learning rates and settings of each cell:",
    ]
    if meta.get("lrs") == "sweep":
        out.insert(1, "The sweep picked the lrs on the validation signals, so the validation gap is not held out.")
    for key, entry in cells.items():
        lrs = entry["lrs"]
        extra = "".join(
            [
                f"; inner and bootstrap lr {lrs['inner_lr']:g}" if lrs["inner_lr"] is not None else "",
                f" (Learnit's inner lr {lrs['learnit_inner_lr']:g})" if lrs.get("learnit_inner_lr") is not None else "",
                f"; ECoP lambda {lrs['ecop_lam']:g}" if lrs["ecop_lam"] is not None else "",
                f"; ECoP bootstrap lr {lrs['boot_lr']:g}" if lrs.get("boot_lr") is not None else "",
                f"; divergence_backoff {lrs['divergence_backoff']:g} (both)"
                if lrs.get("divergence_backoff") is not None
                else "",
                f"; {entry['note']}" if entry["note"] else "",
            ]
        )
        picked = f"{lrs['source']}: {lrs['ref']}"
        if lrs["source"].startswith("inherited"):
            picked = f"{lrs['source']}, not picked on this cell's own validation split"
        if lrs["mode"] == "sweep":
            picked = f"validation sweep ({_sweep_text(lrs['sweep'])}); the other settings: {lrs['ref']}"
        out.append(f"* {key}: {picked}{extra}")
    sdf = {k: e for k, e in cells.items() if e["status"] == "ok" and "band_error" in e["ecop"]}
    if sdf:
        out += [
            "",
            "SDF cells: their PSNR and gap (marked band) are over the points near the outline (|SDF| < the band), "
            "where the clamped L1 loss fits the field; the whole field's PSNR, most of which no loss asked for "
            "(errors beyond the clamp cost nothing), is given here with the other SDF scores, ECoP / Learnit (band "
            "error: mean |error| near the outline, lower is better; IoU of the interiors, higher is better):",
        ]
        for key, e in sdf.items():
            a, b = e["ecop"], e["learnit"]
            band = f"band error {a['band_error']:.4f} / {b['band_error']:.4f}"
            field = f"whole-field PSNR {a['psnr']:.2f} / {b['psnr']:.2f}"
            if e.get("gap_whole_field"):
                g = e["gap_whole_field"]
                field += f" (gap {g['mean_db']:+.2f} ± {g['stderr_db']:.2f})"
            out.append(f"* {key}: {band}, IoU {a['iou']:.3f} / {b['iou']:.3f}, {field}")
    floored = {k: e for k, e in cells.items() if e["status"] == "ok" and e.get("at_floor")}
    if floored:
        out += [
            "",
            f"At floor: methods whose test PSNR is on average less than {FLOOR_DB:g} dB above the trivial floor, "
            "each test signal's own mean predicted everywhere (an oracle of one number per channel): they learned "
            "next to nothing about the signals, and the cell's gap says nothing about ECoP against Learnit:",
        ]
        for key, e in floored.items():
            gains = ", ".join(
                f"{who} {g['mean_db']:+.2f} ± {g['stderr_db']:.2f}" for who, g in e["floor"]["over_floor"].items()
            )
            out.append(f"* {key}: floor {e['floor']['test_mean_db']:.2f} dB; over it: {gains}")
    refs = {e["data"]: e["data_ref"] for e in cells.values()}
    out += ["", "Data and shared settings:"] + [f"* {data}: {ref}" for data, ref in refs.items()]
    if meta.get("absent"):
        out += ["", "Absent cells (the model does not apply):"]
        reasons: dict[str, list[str]] = {}
        for absent in meta["absent"]:
            reasons.setdefault(absent["reason"], []).append(absent["cell"])
        out += [f"* {', '.join(keys)}: {reason}" for reason, keys in reasons.items()]
    skipped = {k: e for k, e in cells.items() if e["status"] != "ok"}
    if skipped:
        out += ["", "Skipped cells (the run failed):"] + [f"* {k}: {e['reason']}" for k, e in skipped.items()]
    budget = [
        f"{k} {e['cpu_minutes_at_1000_steps']:.0f}"
        for k, e in cells.items()
        if e["status"] == "ok" and e["cpu_minutes_at_1000_steps"] is not None
    ]
    if budget:
        total = sum(e["cpu_minutes_at_1000_steps"] or 0 for e in cells.values() if e["status"] == "ok")
        out += [
            "",
            f"CPU minutes 1,000 outer steps would take per cell (training only, both methods, from the measured CPU "
            f"s/step): {', '.join(budget)}; {total:.0f} in all.",
        ]
    return out


def _sweep_text(sweep: dict[str, Any]) -> str:
    parts = []
    for method, scores in sweep["val_psnr"].items():
        shown = ", ".join(f"{lr}: failed" if s is None else f"{lr}: {s:.2f}" for lr, s in scores.items())
        parts.append(f"{method} val PSNR at {sweep['steps']} steps {shown}")
    return "; ".join(parts)


def _code_line(meta: dict[str, Any]) -> str:
    source = meta.get("source") or {}
    dirty = source.get("uncommitted")
    text = f"Code: commit {source.get('commit')}"
    text += f", with uncommitted changes to {', '.join(dirty)}" if dirty else " (clean)" if dirty == [] else ""
    return text + ("; the code changed during the run." if meta.get("source_changed_during_run") else ".")


QUICK_NOTE = " (--quick: a smoke test of every cell, not a measurement)"


def markdown(matrix: dict[str, Any]) -> str:
    """The whole markdown file: command, machine, table, notes."""
    meta = matrix["_meta"]
    m = meta["machine"]
    bf16 = {True: "with AVX512-BF16", False: "without AVX512-BF16", None: "AVX512-BF16 unknown"}[m["avx512_bf16"]]
    lines = [
        "# ECoP vs Learnit on every model and data (benchmarks/matrix)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {m['cpu']} ({bf16}), {m['cpus']} CPUs, torch {m['torch']}, Python {m['python']}, "
        f"{m['threads_per_run']} thread per run, {m['parallel_runs']} run(s) at a time; wall time "
        f"{meta.get('wall_seconds', 0) / 60:.1f} min. Learning rates: {meta['lrs']}; {meta['steps']} outer steps; "
        f"up to {meta['eval_size']} held-out signals per cell{QUICK_NOTE if meta['quick'] else ''}.",
        "",
        _code_line(meta),
        "",
        format_table(matrix["cells"], markdown=True),
        "",
        *notes(matrix),
    ]
    return "\n".join(lines) + "\n"
