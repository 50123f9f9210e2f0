"""The measurements: :func:`diagnose` (the training loop and its schedule) and what it records at each point."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, mse_to_psnr
from ecop_wrap.extend import bootstrap, global_norm, inner_loop, param_distance, select, sgd_update

from .report import point_line, summarize

Batch = tuple[torch.Tensor, ...]
"""``(coords [M, C] or [B, M, C], values [B, M, D])``."""

TEST_RULES = ("norm", "none", "loss", "pruned")
"""The test rules: the registered scaling rules, and ``"pruned"`` (test steps on the pruned context)."""

STEP_KEYS = ("psnr", "fit_loss", "loss", "boot_distance", "grad_norm", "skipped")


# ------------------------------------------------------------------------------------------- the diagnostic
def diagnose(
    learner: ContextPruningMetaLearner,
    train_batches: Iterable[Batch],
    val_signals: Batch | None,
    *,
    steps: int = 300,
    every: int = 50,
    test_steps: int | None = None,
    rules: Sequence[str] = TEST_RULES,
    probe: Batch | None = None,
    bootstrap_share: bool = True,
    val_batch: int = 50,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Meta-train ``learner`` for ``steps`` outer steps (in place) and record what decides whether ECoP learns.

    Args:
        learner: the meta-learner to train and watch.
        train_batches: training batches, one per outer step (an infinite iterator is fine).
        val_signals: ``(coords [M, C], values [N, M, D])`` held-out signals for the test rules (None: none).
        steps: outer steps.
        every: the diagnostics' period in outer steps (they also run at step 0 and at ``steps``).
        test_steps: test-time steps N (default: the learner's K).
        rules: the test rules to score (see :data:`TEST_RULES`).
        probe: the training batch whose inner loop is traced (default: the first of ``train_batches``, which is
            still used for training).
        bootstrap_share: measure the bootstrap's share of the meta-gradient (one extra meta-gradient each time).
        val_batch: validation signals fitted at once.
        log: called with one line per diagnostic point (None: silent).

    Returns:
        ``{"steps": {key: [steps]}, "schedule": [one dict per point], "summary": {...}, "diverged": ..., ...}``.
    """
    batches = iter(train_batches)
    if probe is None:
        probe = next(batches)
        batches = itertools.chain([probe], batches)
    bad_rules = [r for r in rules if r not in TEST_RULES]
    if bad_rules:
        raise ValueError(f"unknown test rules {bad_rules}; choose from {TEST_RULES}")
    N = learner.config.K if test_steps is None else int(test_steps)
    adapters = {rule: _adapter(learner, rule, N) for rule in rules} if val_signals is not None else {}
    record: dict[str, Any] = {"steps": {k: [] for k in STEP_KEYS}, "schedule": [], "diverged": None}
    started = time.process_time()
    for done in range(steps + 1):
        if done % every == 0 or done == steps:
            _record_point(record, done, learner, probe, val_signals, adapters, bootstrap_share, val_batch, log)
        if done == steps:
            break
        try:
            stats = learner.meta_step(next(batches))
        except FloatingPointError as err:  # the learner refuses after repeated non-finite steps
            record["diverged"] = {"step": done + 1, "error": str(err).split(";")[0]}
            if record["schedule"][-1]["step"] != done:  # one last point at the weights it kept
                _record_point(record, done, learner, probe, val_signals, adapters, bootstrap_share, val_batch, log)
            break
        for key in STEP_KEYS:
            record["steps"][key].append(float(stats.get(key, math.nan)))
    record["test_steps"] = N
    record["cpu_seconds"] = time.process_time() - started
    record["summary"] = summarize(record, learner.config.max_grad_norm, every)
    return record


def _record_point(
    record: dict[str, Any],
    step: int,
    learner: ContextPruningMetaLearner,
    probe: Batch,
    val_signals: Batch | None,
    adapters: dict[str, GradScaledAdapter],
    with_bootstrap_share: bool,
    val_batch: int,
    log: Callable[[str], None] | None,
) -> None:
    point = diagnostic_point(learner, probe, val_signals, adapters, with_bootstrap_share, val_batch)
    record["schedule"].append({"step": step, **point})
    if log is not None:
        log(point_line(point, step))


def diagnostic_point(
    learner: ContextPruningMetaLearner,
    probe: Batch,
    val_signals: Batch | None,
    adapters: dict[str, GradScaledAdapter],
    with_bootstrap_share: bool,
    val_batch: int,
) -> dict[str, Any]:
    """Everything recorded at one point of the schedule, at the learner's current theta_0 (see the module)."""
    point: dict[str, Any] = {"probe": inner_trace(learner, probe), "rates": rates_summary(learner)}
    if val_signals is not None:
        point["val"] = validation(adapters, val_signals, val_batch)
    if with_bootstrap_share:
        point["bootstrap"] = bootstrap_share(learner, probe)
    return point


def _generator(learner: ContextPruningMetaLearner) -> torch.Generator:
    """A fixed generator for the diagnostics' selections (the learner's own is left alone)."""
    device = next(learner.model.parameters()).device
    return torch.Generator(device=device).manual_seed(0)


def _adapter(learner: ContextPruningMetaLearner, rule: str, N: int) -> GradScaledAdapter:
    """The test-time fit of a rule; it reads the learner's current weights and rates at every fit."""
    if rule == "pruned":
        return GradScaledAdapter(learner, steps=N, scaling="none", pruned_steps=N)
    return GradScaledAdapter(learner, steps=N, scaling=rule)


def _psnr(loss: torch.Tensor, learner: ContextPruningMetaLearner) -> torch.Tensor:
    """PSNR from an MSE with the learner's data range (NaN for another loss)."""
    if learner.config.loss != "mse":
        return torch.full_like(loss, math.nan)
    return mse_to_psnr(loss, learner.config.data_range)


def inner_trace(learner: ContextPruningMetaLearner, batch: Batch) -> dict[str, Any]:
    """The training inner loop on ``batch``, replayed without a graph, step by step.

    Returns:
        ``loss0``/``lossK`` and ``psnr0``/``psnrK`` (batch means at theta_0 and theta_K, full context), and per
        inner step (lists of K batch means) ``pruned_norm``, ``full_norm`` and ``ratio`` = ``||g_pruned|| /
        ||g_full||`` per signal, then averaged.
    """
    cfg, generator = learner.config, _generator(learner)
    rates = learner.rates.detached()
    ctx = learner.evaluator(batch)
    params = {n: p.detach() for n, p in ctx.expand(learner.init_params()).items()}
    losses: list[torch.Tensor] = []
    trace: dict[str, list[float]] = {"pruned_norm": [], "full_norm": [], "ratio": []}
    for k in range(cfg.K):
        full = ctx.full_grad(params)  # the ranking below reuses its errors
        pruned_idx = select(ctx, params, learner.selection_rule, cfg.gamma, generator)
        grads = ctx.grad(params, pruned_idx)
        pruned_norm, full_norm = global_norm(list(grads.values())), global_norm(list(full.grads.values()))
        trace["pruned_norm"].append(float(pruned_norm.mean()))
        trace["full_norm"].append(float(full_norm.mean()))
        trace["ratio"].append(float((pruned_norm / (full_norm + 1e-16)).mean()))
        losses.append(full.loss)
        params = sgd_update(params, grads, rates.at(k))
    losses.append(ctx.full_grad(params).loss)
    first, last = losses[0], losses[-1]
    return {
        "loss0": float(first.mean()),
        "lossK": float(last.mean()),
        "psnr0": float(_psnr(first, learner).mean()),
        "psnrK": float(_psnr(last, learner).mean()),
        **trace,
    }


def validation(adapters: dict[str, GradScaledAdapter], val_signals: Batch, val_batch: int) -> dict[str, Any]:
    """Each rule's fit of the validation signals: ``{rule: {"psnr", "curve", "scale"}}`` (means over signals;
    ``curve``: after 0..N steps; ``psnr``: after N; the full-context loss instead when it is not the MSE)."""
    coords, values = val_signals[0], val_signals[1]
    out: dict[str, Any] = {}
    for rule, adapter in adapters.items():
        curves, scales = [], []
        try:
            for start in range(0, values.shape[0], val_batch):
                part = slice(start, start + val_batch)
                fitted = adapter.fit((coords[part] if coords.ndim == 3 else coords, values[part]))
                curves.append(fitted.history.get("psnr", fitted.history["loss"]))
                scales.append(fitted.history["scale"])
        except FloatingPointError:
            out[rule] = {"psnr": math.nan, "curve": [], "scale": [], "failed": True}
            continue
        curve, scale = torch.cat(curves, dim=1), torch.cat(scales, dim=1)
        out[rule] = {
            "psnr": float(curve[-1].mean()),
            "curve": [round(float(v), 4) for v in curve.mean(dim=1)],
            "scale": [round(float(v), 4) for v in scale.mean(dim=1)] if rule in ("norm", "loss") else [],
        }
    if out:
        out["init"] = next(iter(out.values()))["curve"][:1] or [math.nan]
    return out


def rates_summary(learner: ContextPruningMetaLearner) -> dict[str, Any]:
    """The learned inner rates: overall min/mean/max, the mean per tensor, and per step for ``"per_tensor"``."""
    rates = {n: r.detach() for n, r in learner.inner_lrs.items()}
    if not rates:
        return {"mode": None, "inner_lr": learner.config.inner_lr}
    flat = torch.cat([r.flatten() for r in rates.values()])
    out: dict[str, Any] = {
        "mode": learner.config.learn_inner_lr,
        "min": float(flat.min()),
        "mean": float(flat.mean()),
        "max": float(flat.max()),
        "per_tensor": {n: float(r.mean()) for n, r in rates.items()},
    }
    if learner.config.learn_inner_lr == "per_tensor":
        out["per_step"] = [float(v) for v in torch.stack(list(rates.values())).mean(dim=0)]
    return out


def _meta_params(learner: ContextPruningMetaLearner) -> tuple[list[torch.Tensor], int]:
    """The tensors the meta-gradient is taken w.r.t. (theta_0's trainable tensors, then the learned rates),
    and how many of them are weights."""
    weights = [p for p in learner.model.parameters() if p.requires_grad]
    return weights + list(learner.inner_lrs.values()), len(weights)


def _flat(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads]) if grads else torch.zeros(0)


def bootstrap_share(learner: ContextPruningMetaLearner, batch: Batch) -> dict[str, Any]:
    """The meta-objective on ``batch`` rebuilt from its parts, and each part's meta-gradient.

    Returns:
        ``distance`` (mean mu), ``lam``, ``fit_loss`` and ``boot_term`` (means of the loss and of ``lam * mu``),
        ``meta_loss`` (their sum: the learner's ``meta_loss(batch)``), the norms of the two meta-gradients and
        of their sum (``fit_grad_norm``, ``boot_grad_norm``, ``grad_norm``; ``*_weights`` / ``*_rates``: over
        theta_0's tensors or the learned rates only), their ``cosine`` and ``share`` = ``<g_boot, g> / ||g||^2``
        (the bootstrap's part of the meta-gradient along it; the fit loss has ``1 - share``).
    """
    cfg = learner.config
    ctx = learner.evaluator(batch)
    meta, n_weights = _meta_params(learner)
    with torch.enable_grad():
        adapted = inner_loop(
            ctx,
            ctx.expand(learner.init_params()),
            steps=cfg.K,
            rates=learner.rates,
            rule=learner.selection_rule,
            gamma=cfg.gamma,
            generator=_generator(learner),
            create_graph=not cfg.first_order,
        )
        fit = ctx.full_mse(adapted).mean()
        kw = {"allow_unused": True, "materialize_grads": True}
        g_fit = list(torch.autograd.grad(fit, meta, retain_graph=cfg.uses_bootstrap, **kw))
        if cfg.uses_bootstrap:
            distance = param_distance(adapted, bootstrap(ctx, adapted, steps=cfg.L, lr=cfg.boot_lr)).mean()
            g_boot = list(torch.autograd.grad(cfg.lam * distance, meta, **kw))
        else:
            distance, g_boot = fit.new_zeros(()), [torch.zeros_like(g) for g in g_fit]
    distance, fit = distance.detach(), fit.detach()
    out: dict[str, Any] = {
        "distance": float(distance),
        "lam": cfg.lam,
        "fit_loss": float(fit),
        "boot_term": float(cfg.lam * distance),
        "meta_loss": float(fit + cfg.lam * distance),
    }
    for part, select_part in (("", slice(None)), ("_weights", slice(0, n_weights)), ("_rates", slice(n_weights, None))):
        fit_flat, boot_flat = _flat(g_fit[select_part]), _flat(g_boot[select_part])
        if part and fit_flat.numel() == 0:
            continue
        total = fit_flat + boot_flat
        out[f"fit_grad_norm{part}"] = float(fit_flat.norm())
        out[f"boot_grad_norm{part}"] = float(boot_flat.norm())
        out[f"grad_norm{part}"] = float(total.norm())
        if not part:
            denominator = float(fit_flat.norm() * boot_flat.norm())
            out["cosine"] = float(fit_flat @ boot_flat) / denominator if denominator > 0 else 0.0
            out["share"] = float(boot_flat @ total) / max(float(total @ total), 1e-30)
    return out
