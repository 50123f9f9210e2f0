"""What a :func:`~diagnose.measure.diagnose` record says: its summary, text tables and curves."""

from __future__ import annotations

import math
from typing import Any


def _windows(values: list[float], size: int) -> list[float]:
    """Means of consecutive windows of ``size`` (the last one may be shorter)."""
    return [sum(values[i : i + size]) / len(values[i : i + size]) for i in range(0, len(values), size)]


def _longest_run(flags: list[bool]) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def summarize(record: dict[str, Any], max_grad_norm: float | None, every: int) -> dict[str, Any]:
    """Did it learn, where does it end, is the clip saturated: a few numbers from a :func:`diagnose` record."""
    psnr, grad_norm = record["steps"]["psnr"], record["steps"]["grad_norm"]
    schedule = record["schedule"]
    out: dict[str, Any] = {"outer_steps": len(psnr)}
    if psnr:
        windows = _windows([p if math.isfinite(p) else math.nan for p in psnr], max(1, every))
        out["train_psnr_windows"] = [round(w, 3) for w in windows]
        out["train_psnr_first_window"], out["train_psnr_last_window"] = windows[0], windows[-1]
        out["train_psnr_best_window"] = max((w for w in windows if math.isfinite(w)), default=math.nan)
        out["train_psnr_fell_from_best"] = out["train_psnr_best_window"] - windows[-1]
    out["probe_psnrK"] = [p["probe"]["psnrK"] for p in schedule]
    out["probe_psnrK_gain"] = schedule[-1]["probe"]["psnrK"] - schedule[0]["probe"]["psnrK"]
    out["ratio_first_step"] = [p["probe"]["ratio"][0] for p in schedule]
    out["ratio_last_step"] = [p["probe"]["ratio"][-1] for p in schedule]
    if "val" in schedule[-1]:
        out["val_psnr"] = {r: [p["val"][r]["psnr"] for p in schedule] for r in schedule[-1]["val"] if r != "init"}
    if "bootstrap" in schedule[-1]:
        out["boot_share"] = [p["bootstrap"]["share"] for p in schedule]
    out["grad_norm_median"] = sorted(grad_norm)[len(grad_norm) // 2] if grad_norm else math.nan
    if max_grad_norm is not None and grad_norm:
        above = [g > max_grad_norm for g in grad_norm]
        out["clip"] = max_grad_norm
        out["clipped_fraction"] = sum(above) / len(above)
        out["clipped_longest_run"] = _longest_run(above)
    out["diverged"] = record["diverged"]
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.2e}"


def point_line(point: dict[str, Any], step: int) -> str:
    val = point.get("val", {})
    rules = " ".join(f"{r} {_fmt(v['psnr'])}" for r, v in val.items() if r != "init")
    boot = point.get("bootstrap", {})
    return (
        f"step {step}: probe theta_K {_fmt(point['probe']['psnrK'])} dB, ratio {_fmt(point['probe']['ratio'][0])}"
        f"->{_fmt(point['probe']['ratio'][-1])}; val {rules}; boot share {_fmt(boot.get('share'), 3)}"
    )


def format_table(report: dict[str, Any]) -> str:
    """One row per diagnostic point, then the summary."""
    schedule = report["schedule"]
    rules = [r for r in schedule[0].get("val", {}) if r != "init"]
    head = ["step", "train dB", "thetaK dB", "val theta0", *[f"val {r}" for r in rules]]
    head += ["ratio k=0", "ratio k=K-1", "rate mean", "mu", "boot share", "|g| mean"]
    rows, psnr, grad_norm = [head], report["steps"]["psnr"], report["steps"]["grad_norm"]
    previous = 0
    for point in schedule:
        step = point["step"]
        window = psnr[previous:step] or psnr[:1]
        grads = grad_norm[previous:step] or grad_norm[:1]
        val, boot, rates = point.get("val", {}), point.get("bootstrap", {}), point["rates"]
        rows.append(
            [
                str(step),
                _fmt(sum(window) / len(window) if window else None),
                _fmt(point["probe"]["psnrK"]),
                _fmt(val["init"][0] if val else None),
                *[_fmt(val[r]["psnr"]) for r in rules],
                _fmt(point["probe"]["ratio"][0]),
                _fmt(point["probe"]["ratio"][-1]),
                _fmt(rates.get("mean", rates.get("inner_lr")), 4),
                _fmt(boot.get("distance"), 4),
                _fmt(boot.get("share"), 3),
                _fmt(sum(grads) / len(grads) if grads else None),
            ]
        )
        previous = step
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    summary = report["summary"]
    lines.append(
        "train dB: mean PSNR at theta_K of the meta-steps since the previous row; thetaK dB: the fixed probe batch; "
        "ratio: ||g_pruned||/||g_full|| at the first and last inner step of the probe"
    )
    if "clip" in summary:
        lines.append(
            f"meta-gradient above the clip {summary['clip']:g} on {100 * summary['clipped_fraction']:.0f}% of steps "
            f"(longest run {summary['clipped_longest_run']}); median norm {_fmt(summary['grad_norm_median'])}"
        )
    if summary.get("diverged"):
        lines.append(f"DIVERGED: {summary['diverged']}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> bool:
    """Curves of a report as a PNG (False when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    schedule, steps = report["schedule"], [p["step"] for p in report["schedule"]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    ax.plot(range(1, len(report["steps"]["psnr"]) + 1), report["steps"]["psnr"], lw=0.5, alpha=0.5, label="train")
    ax.plot(steps, [p["probe"]["psnrK"] for p in schedule], "k.-", label="probe theta_K")
    for rule in (r for r in schedule[0].get("val", {}) if r != "init"):
        ax.plot(steps, [p["val"][rule]["psnr"] for p in schedule], ".-", label=f"val {rule}")
    ax.set(xlabel="outer step", ylabel="PSNR (dB)", title="training and validation")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for point in (schedule[0], schedule[len(schedule) // 2], schedule[-1]):
        ax.plot(point["probe"]["ratio"], ".-", label=f"outer step {point['step']}")
    ax.set(xlabel="inner step", ylabel="||g_pruned|| / ||g_full||", title="gradient ratio on the probe")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    ax.semilogy(range(1, len(report["steps"]["grad_norm"]) + 1), report["steps"]["grad_norm"], lw=0.5)
    if report["summary"].get("clip") is not None:
        ax.axhline(report["summary"]["clip"], color="r", lw=1, label="clip")
        ax.legend(fontsize=7)
    ax.set(xlabel="outer step", ylabel="meta-gradient norm", title="meta-gradient against the clip")
    ax = axes[1, 1]
    if "bootstrap" in schedule[0]:
        ax.plot(steps, [p["bootstrap"]["share"] for p in schedule], "k.-", label="bootstrap share of the gradient")
        ax.plot(steps, [p["bootstrap"]["cosine"] for p in schedule], ".-", label="cos(g_fit, g_boot)")
    if schedule[0]["rates"]["mode"] is not None:
        ax.plot(steps, [p["rates"]["mean"] / schedule[0]["rates"]["mean"] for p in schedule], ".-", label="rate mean")
    ax.set(xlabel="outer step", title="bootstrap and learned rates (rate: relative to step 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def sweep_table(runs: list[dict[str, Any]]) -> str:
    """One row per combination: probe PSNR at theta_K and the first rule's validation PSNR at every point."""
    steps = [p["step"] for p in runs[0]["schedule"]]
    rule = next((r for r in runs[0]["schedule"][0].get("val", {}) if r != "init"), None)
    head = ["settings", *[f"thetaK@{s}" for s in steps], *([f"val {rule}@{s}" for s in steps] if rule else [])]
    rows = [head]
    for run in runs:
        summary = run["summary"]
        cells = [describe(run["sweep"])] + [_fmt(p["probe"]["psnrK"]) for p in run["schedule"]]
        cells += [_fmt(p["val"][rule]["psnr"]) for p in run["schedule"]] if rule else []
        rows.append(cells + (["DIVERGED"] if summary.get("diverged") else []))
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(head) + 1) if any(i < len(r) for r in rows)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=False)) for r in rows)
