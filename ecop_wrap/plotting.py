"""Pictures of meta-learned INRs: reconstructions next to originals, the pruned context at chosen adaptation
steps (the paper's Figure 1) and PSNR against adaptation step.

Every ``plot_*`` function draws one figure with matplotlib's object-oriented API (no pyplot state, no
backend switch), writes it to ``path`` as a PNG and returns the path. matplotlib is imported only when a plot
is drawn; without it they raise ``ImportError`` naming ``pip install 'ecop-wrap[examples]'``.
:func:`trace_selection` needs only torch.

Inputs are grid-shaped arrays, numpy or torch (any device, detached here): images ``[N, H, W, D]``, video
frames as rows of the same, lat/lon maps ``[N, n_lat, n_lon, 1]``, waveforms ``[N, L]``.
:meth:`ecop_wrap.data.SignalDataset.to_arrays` turns ``[N, M, D]`` values into these shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._src.adapter import GradScaledAdapter
from ._src.learner import ContextPruningMetaLearner

__all__ = [
    "SelectionTrace",
    "default_trace_steps",
    "plot_psnr_curves",
    "plot_reconstructions",
    "plot_selection",
    "plot_waveforms",
    "trace_selection",
]

_METHOD_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _figure_class() -> Any:
    """matplotlib's ``Figure`` (imported lazily), or an ImportError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "ecop_wrap.plotting needs matplotlib; install it with: pip install 'ecop-wrap[examples]'"
        ) from err
    return Figure


def _numpy(array: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a tensor or array-like."""
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float64).numpy()
    out = np.asarray(array, dtype=np.float64)
    if out.size == 0:
        raise ValueError(f"{name} is empty")
    return out


def _save(fig: Any, path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


# ------------------------------------------------------------------------------------------ selection trace
@dataclass
class SelectionTrace:
    """What the inner loop did on one signal at chosen adaptation steps.

    Attributes:
        steps: the recorded adaptation steps ``k`` (0-based, ``k < K``), length ``S``.
        masks: ``[S, M]`` bool, True where the point is in the pruned context ``C_high^k`` used by step ``k``
            (all True for a full-context learner, gamma = 1).
        errors: ``[S, M]`` the paper's score ``R_k = ||f_theta_k(x) - y||_2`` of every point.
        predictions: ``[S, M, D]`` ``f_theta_k`` on the full context (the reconstruction before step ``k``).
    """

    steps: list[int]
    masks: torch.Tensor
    errors: torch.Tensor
    predictions: torch.Tensor

    def as_grid(self, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(masks [S, *shape], errors [S, *shape], predictions [S, *shape, D])`` for ``prod(shape) == M``."""
        shape = tuple(int(s) for s in shape)
        num_points = self.masks.shape[1]
        if int(np.prod(shape)) != num_points:
            raise ValueError(f"shape {shape} has {int(np.prod(shape))} points but the trace has M={num_points}")
        count = len(self.steps)
        return (
            self.masks.reshape(count, *shape),
            self.errors.reshape(count, *shape),
            self.predictions.reshape(count, *shape, self.predictions.shape[-1]),
        )


def default_trace_steps(K: int) -> list[int]:
    """The steps of the paper's Figure 1: ``k = 0, K // 2, K - 1`` (without repeats)."""
    return sorted({0, K // 2, K - 1})


def trace_selection(
    learner: ContextPruningMetaLearner,
    signal: tuple[torch.Tensor, torch.Tensor],
    steps: Sequence[int] | None = None,
    *,
    seed: int = 0,
) -> SelectionTrace:
    """Run the learner's pruned inner loop from theta_0 on one signal and record it (paper Figure 1).

    The steps are the learner's own (its selection rule and step sizes, first order), taken with
    :meth:`GradScaledAdapter.fit_steps` with ``pruned_steps`` covering them all. The model is not modified.

    Args:
        learner: the meta-learner whose initialization and pruning rule are traced.
        signal: ``(coords [M, C], values [M, D])``.
        steps: adaptation steps to record, each in ``[0, K)`` (default :func:`default_trace_steps`).
        seed: seed of the generator for ``selection="random"``.

    Returns:
        A :class:`SelectionTrace` over the sorted, de-duplicated ``steps``.
    """
    if not isinstance(learner, ContextPruningMetaLearner):
        raise TypeError(f"learner must be a ContextPruningMetaLearner, got {type(learner).__name__}")
    coords, values = _check_one_signal(signal, learner)
    K = learner.config.K
    wanted = default_trace_steps(K) if steps is None else sorted({int(k) for k in steps})
    if not wanted or wanted[0] < 0 or wanted[-1] >= K:
        raise ValueError(f"steps must be a non-empty set of adaptation steps in [0, K={K}), got {steps!r}")
    adapter = GradScaledAdapter(
        learner, steps=wanted[-1] + 1, pruned_steps=wanted[-1] + 1, scaling="none", coord_range=None, seed=seed
    )
    masks, errors, predictions = [], [], []
    for state in adapter.fit_steps((coords, values)):
        if state.step not in wanted:
            continue
        with torch.no_grad():
            pred = adapter.backend(state.params, coords)[0]
        predictions.append(pred)
        errors.append((pred - values).pow(2).sum(-1).sqrt())
        mask = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
        mask[state.pruned_idx[0] if state.pruned_idx is not None else slice(None)] = True
        masks.append(mask)
    return SelectionTrace(
        steps=wanted,
        masks=torch.stack(masks).cpu(),
        errors=torch.stack(errors).cpu(),
        predictions=torch.stack(predictions).cpu(),
    )


def _check_one_signal(
    signal: tuple[torch.Tensor, torch.Tensor], learner: ContextPruningMetaLearner
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(signal, (tuple, list)) or len(signal) != 2:
        raise TypeError("signal must be a pair (coords [M, C], values [M, D])")
    coords, values = signal
    if not isinstance(coords, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError("signal must be a pair of tensors (coords [M, C], values [M, D])")
    if coords.ndim != 2 or values.ndim != 2 or coords.shape[0] != values.shape[0]:
        raise ValueError(
            f"signal must be (coords [M, C], values [M, D]) with the same M, got {tuple(coords.shape)} and "
            f"{tuple(values.shape)}"
        )
    first = next(iter(learner.init_params().values()))
    return coords.to(first.device, first.dtype), values.to(first.device, first.dtype)


# ------------------------------------------------------------------------------------------------- curves
def plot_psnr_curves(
    curves: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    xlabel: str = "adaptation step k",
    ylabel: str = "PSNR (dB)",
    x: Sequence[float] | None = None,
) -> str:
    """One line per method: the mean over signals, with a band of +-1 standard deviation.

    Args:
        curves: method name -> ``[S]`` or ``[S, B]`` values (e.g. ``FitResult.history["psnr"]``, ``S`` steps + 1
            rows and ``B`` signals).
        path: PNG file to write.
        title, xlabel, ylabel: labels.
        x: ``[S]`` x positions (default ``0 .. S-1``).

    Returns:
        ``path`` as a string. The final mean of every curve is printed next to its end.
    """
    if not curves:
        raise ValueError("curves must name at least one method")
    fig = _figure_class()(figsize=(6.4, 4.2))
    ax = fig.subplots()
    ends: list[tuple[float, float, str]] = []
    for colour, (name, values) in zip(_cycle(len(curves)), curves.items(), strict=True):
        data = _numpy(values, f"curves[{name!r}]")
        data = data[:, None] if data.ndim == 1 else data
        if data.ndim != 2:
            raise ValueError(f"curves[{name!r}] must be [S] or [S, B], got shape {data.shape}")
        steps = np.arange(len(data)) if x is None else np.asarray(x, dtype=np.float64)
        if len(steps) != len(data):
            raise ValueError(f"x has {len(steps)} positions but curves[{name!r}] has {len(data)} rows")
        mean, std = data.mean(axis=1), data.std(axis=1)
        ax.plot(steps, mean, color=colour, lw=2, label=name)
        if data.shape[1] > 1:
            ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
        ends.append((float(mean[-1]), float(steps[-1]), colour))
    _label_ends(ax, ends)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _label_ends(ax: Any, ends: list[tuple[float, float, str]]) -> None:
    """Write each curve's final value right of its end, nudging labels apart that would overlap."""
    low, high = ax.get_ylim()
    left, right = ax.get_xlim()
    gap = (high - low) / 22
    placed: list[float] = []
    for value, x, colour in sorted(ends):
        y = value if not placed or value - placed[-1] >= gap else placed[-1] + gap
        placed.append(y)
        ax.text(x + 0.015 * (right - left), y, f"{value:.1f}", color=colour, va="center", ha="left", fontsize=9)
    ax.set_xlim(left, right + 0.07 * (right - left))


def _cycle(count: int) -> list[str]:
    return [_METHOD_COLOURS[i % len(_METHOD_COLOURS)] for i in range(count)]


# ------------------------------------------------------------------------------------------------ grids
def _show(
    ax: Any,
    image: np.ndarray,
    *,
    cmap: str | None,
    vmin: float | None,
    vmax: float | None,
    extent: Sequence[float] | None,
    origin: str,
) -> Any:
    """``image [H, W, D]``: RGB when D = 3 (clipped to [0, 1]), else the first channel with ``cmap``."""
    if image.shape[-1] == 3:
        return ax.imshow(np.clip(image, 0.0, 1.0), extent=extent, origin=origin, interpolation="nearest")
    return ax.imshow(
        image[..., 0], cmap=cmap or "gray", vmin=vmin, vmax=vmax, extent=extent, origin=origin, interpolation="nearest"
    )


def _panel_size(shape: tuple[int, int], extent: Sequence[float] | None, base: float) -> tuple[float, float]:
    """Width and height in inches of one image panel: ``base`` high for square data, wider (up to 2x) if wide."""
    height, width = float(shape[0]), float(shape[1])
    if extent is not None:
        width, height = abs(extent[1] - extent[0]), abs(extent[3] - extent[2])
    aspect = min(2.0, max(0.5, width / height))
    return base * max(1.0, aspect), base * max(1.0, aspect) / aspect


def _bare(ax: Any, keep_ticks: bool) -> None:
    if not keep_ticks:
        ax.set_xticks([])
        ax.set_yticks([])


def _as_grids(originals: Any, reconstructions: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    truth = _numpy(originals, "originals")
    if truth.ndim == 3:
        truth = truth[..., None]
    if truth.ndim != 4:
        raise ValueError(f"originals must be [N, H, W, D] (or [N, H, W]), got shape {truth.shape}")
    recons = {}
    for name, value in reconstructions.items():
        array = _numpy(value, f"reconstructions[{name!r}]").reshape(truth.shape)
        recons[name] = array
    return truth, recons


def plot_reconstructions(
    originals: Any,
    reconstructions: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    psnr: Mapping[str, Any] | None = None,
    row_labels: Sequence[str] | None = None,
    show_errors: bool = True,
    title: str | None = None,
    cmap: str | None = None,
    value_range: tuple[float, float] | None = None,
    extent: Sequence[float] | None = None,
    origin: str = "upper",
    colorbar_label: str | None = None,
    error_scale: float | None = None,
    error_label: str = "error",
) -> str:
    """Originals next to every method's reconstruction, one signal per row, then each method's error map.

    Args:
        originals: ``[N, H, W, D]`` (or ``[N, H, W]``) ground truth; RGB in ``[0, 1]`` when ``D = 3``, otherwise
            the first channel is drawn with ``cmap`` (e.g. temperature maps).
        reconstructions: method name -> array of the same shape.
        path: PNG file to write.
        psnr: method name -> ``[N]`` PSNR per signal, shown in the panel titles.
        row_labels: ``[N]`` text at the left of every row (e.g. ``"t = 3"`` for video frames).
        show_errors: add one column per method with ``||reconstruction - original||_2`` per pixel (one colour
            scale per row, shared by the methods).
        title: figure title.
        cmap: colour map for one-channel data (default gray); ``value_range`` fixes its limits.
        extent, origin: passed to ``imshow`` (e.g. longitudes/latitudes of a map; ``origin="lower"`` when the
            first row is the southernmost); with ``extent`` the axes keep their ticks.
        colorbar_label: with one-channel data, a colour bar with this label is added to each row.
        error_scale: multiply error maps by this before drawing (e.g. to show them in physical units).
        error_label: label of the error maps' colour bar.

    Returns:
        ``path`` as a string.
    """
    truth, recons = _as_grids(originals, reconstructions)
    count = truth.shape[0]
    names = list(recons)
    columns = 1 + len(names) * (2 if show_errors else 1)
    height, width = truth.shape[1:3]
    panel_width, panel_height = _panel_size((height, width), extent, 2.0)
    fig = _figure_class()(
        figsize=(panel_width * columns + 1.0, (panel_height + 0.35) * count + (0.5 if title else 0.2)),
        layout="constrained",
    )
    axes = np.asarray(fig.subplots(count, columns, squeeze=False))
    low, high = value_range if value_range is not None else (float(truth.min()), float(truth.max()))
    opts: dict[str, Any] = {"cmap": cmap, "vmin": low, "vmax": high, "extent": extent, "origin": origin}
    for row in range(count):
        image = _show(axes[row, 0], truth[row], **opts)
        axes[row, 0].set_title("original" if row == 0 else "", fontsize=9)
        if row_labels is not None:
            axes[row, 0].set_ylabel(str(row_labels[row]), fontsize=9)
        for col, name in enumerate(names, start=1):
            _show(axes[row, col], recons[name][row], **opts)
            score = "" if psnr is None else f"{float(_numpy(psnr[name], 'psnr')[row]):.1f} dB"
            axes[row, col].set_title(f"{name} {score}".strip(), fontsize=9)
        if truth.shape[-1] != 3 and colorbar_label:
            fig.colorbar(image, ax=axes[row, : 1 + len(names)].tolist(), shrink=0.8, label=colorbar_label)
        if show_errors:
            _error_columns(
                fig,
                axes[row],
                truth[row],
                {n: recons[n][row] for n in names},
                names,
                row,
                extent,
                origin,
                error_scale,
                error_label,
            )
        for ax in axes[row]:
            _bare(ax, extent is not None)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _error_columns(
    fig: Any,
    axes: np.ndarray,
    truth: np.ndarray,
    recons: dict[str, np.ndarray],
    names: list[str],
    row: int,
    extent: Sequence[float] | None,
    origin: str,
    error_scale: float | None,
    label: str,
) -> None:
    scale = 1.0 if error_scale is None else float(error_scale)
    errors = {name: np.sqrt(((recons[name] - truth) ** 2).sum(-1)) * scale for name in names}
    top = max(float(e.max()) for e in errors.values()) or 1.0
    image = None
    for offset, name in enumerate(names):
        ax = axes[1 + len(names) + offset]
        image = ax.imshow(
            errors[name], cmap="magma", vmin=0.0, vmax=top, extent=extent, origin=origin, interpolation="nearest"
        )
        if row == 0:
            ax.set_title(f"error, {name}", fontsize=9)
    fig.colorbar(image, ax=axes[1 + len(names) :].tolist(), shrink=0.8, label=label)


# ----------------------------------------------------------------------------------------------- selection
def plot_selection(
    original: Any,
    steps: Sequence[int],
    masks: Any,
    errors: Any,
    predictions: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    extent: Sequence[float] | None = None,
    origin: str = "upper",
    cmap: str | None = None,
    sample_rate: float | None = None,
) -> str:
    """The paper's Figure 1: at each recorded step, the pruned context, the error map and the reconstruction.

    Two layouts, chosen by the shape of ``original``:

    * a 2-D grid ``[H, W, D]`` (image, one video frame, lat/lon map): columns are the steps ``k`` plus the
      original; rows are the signal with the selected points in red, the error ``R_k`` (each step on its own
      colour scale, given in the panel title) and the reconstruction ``f_theta_k``;
    * a 1-D signal ``[L, D]`` (audio): one row per step, the waveform with selected samples in red and the
      reconstruction on the left, the error on the right.

    Args:
        original: ``[H, W, D]`` or ``[L, D]`` ground truth.
        steps: ``S`` adaptation steps (labels).
        masks: ``[S, H, W]`` / ``[S, L]`` bool, selected points (see :meth:`SelectionTrace.as_grid`).
        errors: ``[S, H, W]`` / ``[S, L]`` per-point error ``R_k``.
        predictions: ``[S, H, W, D]`` / ``[S, L, D]`` reconstruction before step ``k``.
        path: PNG file to write.
        title: figure title.
        extent, origin, cmap: as in :func:`plot_reconstructions` (2-D only).
        sample_rate: for 1-D signals, label the time axis in seconds.

    Returns:
        ``path`` as a string.
    """
    truth = _numpy(original, "original")
    chosen = _numpy(masks, "masks") > 0.5
    err = _numpy(errors, "errors")
    pred = _numpy(predictions, "predictions")
    count = len(steps)
    if chosen.shape[0] != count or err.shape != chosen.shape or pred.shape[0] != count:
        raise ValueError(
            f"masks {chosen.shape}, errors {err.shape} and predictions {pred.shape} must all start with "
            f"S={count} (one entry per step)"
        )
    if truth.ndim == 3:
        if chosen.shape[1:] != truth.shape[:2] or pred.shape[1:] != truth.shape:
            raise ValueError(f"masks/errors must be [S, H, W] and predictions [S, H, W, D] for original {truth.shape}")
        return _selection_2d(truth, list(steps), chosen, err, pred, path, title, extent, origin, cmap)
    if truth.ndim == 2:
        if chosen.shape[1:] != truth.shape[:1] or pred.shape[1:] != truth.shape:
            raise ValueError(f"masks/errors must be [S, L] and predictions [S, L, D] for original {truth.shape}")
        return _selection_1d(truth, list(steps), chosen, err, pred, path, title, sample_rate)
    raise ValueError(f"original must be [H, W, D] or [L, D], got shape {truth.shape}")


def _pixel_centres(
    shape: tuple[int, int], extent: Sequence[float] | None, origin: str
) -> tuple[np.ndarray, np.ndarray]:
    """x and y data coordinates of every pixel centre of an ``imshow`` of ``shape`` (rows, columns)."""
    height, width = shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    if extent is None:
        return cols.astype(float), rows.astype(float)
    left, right, bottom, top = (float(v) for v in extent)
    first, last = (top, bottom) if origin == "upper" else (bottom, top)
    x = left + (cols + 0.5) * (right - left) / width
    y = first + (rows + 0.5) * (last - first) / height
    return x, y


def _selection_2d(
    truth: np.ndarray,
    steps: list[int],
    masks: np.ndarray,
    errors: np.ndarray,
    preds: np.ndarray,
    path: str | os.PathLike[str],
    title: str | None,
    extent: Sequence[float] | None,
    origin: str,
    cmap: str | None,
) -> str:
    count = len(steps)
    height, width = truth.shape[:2]
    panel_width, panel_height = _panel_size((height, width), extent, 2.1)
    fig = _figure_class()(
        figsize=(panel_width * (count + 1) + 0.6, 3 * (panel_height + 0.35) + (0.4 if title else 0.0)),
        layout="constrained",
    )
    axes = np.asarray(fig.subplots(3, count + 1, squeeze=False))
    low, high = float(truth.min()), float(truth.max())
    opts: dict[str, Any] = {"extent": extent, "origin": origin}
    xs, ys = _pixel_centres((height, width), extent, origin)
    dot = (0.55 * 72.0 * panel_width / width) ** 2  # marker area in points^2: about half a pixel wide
    for col, k in enumerate(steps):
        _show(axes[0, col], truth, cmap=cmap, vmin=low, vmax=high, **opts)
        axes[0, col].scatter(
            xs[masks[col]], ys[masks[col]], s=dot, c="red", marker="o", edgecolors="white", linewidths=0.4
        )
        axes[0, col].set_title(f"k = {k}: {int(masks[col].sum())} of {masks[col].size} points", fontsize=9)
        top = float(errors[col].max()) or 1.0  # own scale per step: later errors are far smaller
        axes[1, col].imshow(errors[col], cmap="magma", vmin=0.0, vmax=top, interpolation="nearest", **opts)
        axes[1, col].set_title(f"R_{k}: 0 (black) to {top:.3g} (white)", fontsize=9)
        mse = float(((preds[col] - truth) ** 2).mean())
        psnr_text = f"{10 * np.log10(1.0 / mse):.1f} dB" if mse > 0 else "exact"
        _show(axes[2, col], preds[col], cmap=cmap, vmin=low, vmax=high, **opts)
        axes[2, col].set_title(f"f(theta_{k}): {psnr_text}", fontsize=9)
    axes[0, 0].set_ylabel("pruned context (red)", fontsize=9)
    axes[1, 0].set_ylabel("error R_k = ||f(x) - y||", fontsize=9)
    axes[2, 0].set_ylabel("reconstruction", fontsize=9)
    _show(axes[2, count], truth, cmap=cmap, vmin=low, vmax=high, **opts)
    axes[2, count].set_title("original", fontsize=9)
    for ax in (axes[0, count], axes[1, count]):
        ax.axis("off")
    for ax in axes.flat:
        _bare(ax, extent is not None)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _selection_1d(
    truth: np.ndarray,
    steps: list[int],
    masks: np.ndarray,
    errors: np.ndarray,
    preds: np.ndarray,
    path: str | os.PathLike[str],
    title: str | None,
    sample_rate: float | None,
) -> str:
    count = len(steps)
    length = truth.shape[0]
    time = np.arange(length) / sample_rate if sample_rate else np.arange(length)
    fig = _figure_class()(figsize=(12, 2.2 * count + (0.4 if title else 0.0)), layout="constrained")
    axes = np.asarray(fig.subplots(count, 2, squeeze=False, width_ratios=(3, 2)))
    top = float(errors.max()) or 1.0
    for row, k in enumerate(steps):
        left, right = axes[row]
        left.plot(time, truth[:, 0], color="0.6", lw=0.8, label="signal")
        left.plot(time, preds[row][:, 0], color="#1f77b4", lw=0.8, label=f"f(theta_{k})")
        left.scatter(time[masks[row]], truth[masks[row], 0], s=3, color="#d62728", label="pruned context", zorder=3)
        left.set_ylabel(f"k = {k}", fontsize=9)
        right.plot(time, errors[row], color="0.3", lw=0.6)
        right.scatter(time[masks[row]], errors[row][masks[row]], s=3, color="#d62728", zorder=3)
        right.set_ylim(0.0, top * 1.05)
        right.set_ylabel("R_k", fontsize=9)
        if row == 0:
            left.legend(loc="upper right", fontsize=8, markerscale=3)
            left.set_title("signal, selected samples (red) and reconstruction", fontsize=9)
            right.set_title("error ||f(x) - y|| per sample", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)" if sample_rate else "sample")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- waveforms
def plot_waveforms(
    originals: Any,
    reconstructions: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    sample_rate: float | None = None,
    psnr: Mapping[str, Any] | None = None,
    zoom: tuple[int, int] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Waveforms against every method's reconstruction, one signal per row, with a zoomed window on the right.

    Args:
        originals: ``[N, L]`` or ``[N, L, 1]`` ground truth.
        reconstructions: method name -> array of the same shape.
        path: PNG file to write.
        sample_rate: label the time axis in seconds.
        psnr: method name -> ``[N]`` PSNR per signal, shown in the legend.
        zoom: ``(start, length)`` in samples of the zoomed window, the same for every row (default: per row, the
            ``L // 8`` samples of the original with the most energy).
        row_labels: ``[N]`` text at the left of every row (default ``"signal i"``).
        title: figure title.

    Returns:
        ``path`` as a string.
    """
    truth = _numpy(originals, "originals")
    truth = truth[..., 0] if truth.ndim == 3 else truth
    if truth.ndim != 2:
        raise ValueError(f"originals must be [N, L] or [N, L, 1], got shape {truth.shape}")
    recons = {n: _numpy(v, f"reconstructions[{n!r}]").reshape(truth.shape) for n, v in reconstructions.items()}
    count, length = truth.shape
    time = np.arange(length) / sample_rate if sample_rate else np.arange(length)
    fig = _figure_class()(figsize=(12, 2.2 * count + (0.4 if title else 0.0)), layout="constrained")
    axes = np.asarray(fig.subplots(count, 2, squeeze=False, width_ratios=(3, 2)))
    for row in range(count):
        start, stop = _zoom_window(truth[row], zoom)
        for ax, window in ((axes[row, 0], slice(None)), (axes[row, 1], slice(start, stop))):
            ax.plot(time[window], truth[row, window], color="0.2", lw=1.2, label="original")
            for colour, name in zip(_cycle(len(recons)), recons, strict=True):
                score = "" if psnr is None else f" {float(_numpy(psnr[name], 'psnr')[row]):.1f} dB"
                ax.plot(time[window], recons[name][row, window], color=colour, lw=0.9, alpha=0.85, label=name + score)
        axes[row, 0].axvspan(time[start], time[stop - 1], color="0.85", zorder=0)
        axes[row, 0].legend(loc="upper right", fontsize=8)
        axes[row, 0].set_ylabel(f"signal {row}" if row_labels is None else str(row_labels[row]), fontsize=8)
    axes[0, 0].set_title("whole clip (shaded: the zoomed window)", fontsize=9)
    axes[0, 1].set_title("zoom", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)" if sample_rate else "sample")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _zoom_window(waveform: np.ndarray, zoom: tuple[int, int] | None) -> tuple[int, int]:
    """``(start, stop)``: ``zoom`` clipped to the signal, or the ``L // 8`` samples with the most energy."""
    length = len(waveform)
    if zoom is not None:
        start = min(max(0, int(zoom[0])), length - 1)
        return start, min(length, start + max(2, int(zoom[1])))
    span = max(2, length // 8)
    energy = np.convolve(waveform**2, np.ones(span), mode="valid")
    start = int(np.argmax(energy))
    return start, start + span
