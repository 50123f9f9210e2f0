"""An independent, plain, per-signal float64 reference of ECoP written from the paper's rules.

It deliberately shares no code with ecop_wrap: one signal at a time, a full forward with a graph at every
inner step (the pruned loss is that forward indexed at the top-k points, which has the same value and
gradient as a separate forward on the subset), and torch.autograd.grad throughout.

Per-point losses and weights (issue 22) are keyword arguments of the same functions (``loss=``, ``weights=``,
``huber_delta=``, ``loss_fn=``); left at their defaults, every function computes exactly what it did before. With
any of them set, a signal's loss is ``sum_j w_j l_j / sum_j w_j`` (weights 1 where none are given), the
per-point loss ``l_j`` is written out here (``ref_point_loss``), and the pruned set is the top
``max(1, int(gamma * M_pos))`` of the ``M_pos`` points of positive weight ranked by ``w_j l_j`` (points of weight 0
are masked out of the ranking, not dropped from the forward).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.func import functional_call


class TinySiren(nn.Module):
    def __init__(self, c: int, d: int, width: int = 12, depth: int = 2, w0: float = 30.0) -> None:
        super().__init__()
        dims = [c] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(width, d)
        self.w0 = w0
        with torch.no_grad():
            for i, lin in enumerate(self.hidden):
                bound = 1 / lin.in_features if i == 0 else math.sqrt(6 / lin.in_features) / w0
                lin.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.hidden:
            x = torch.sin(self.w0 * lin(x))
        return self.out(x) + 0.5


def make_problem(batch: int = 2, side: int = 6, d: int = 3, shared: bool = True):
    """A float64 TinySiren and a batch ``(coords [M, C] or [B, M, C], values [B, M, D])`` on a side x side grid."""
    model = TinySiren(2, d).double()
    axis = torch.linspace(-1.0, 1.0, side, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    if shared:
        coords = grid
    else:
        coords = grid.unsqueeze(0).repeat(batch, 1, 1) + 0.05 * torch.randn(batch, side * side, 2, dtype=torch.float64)
    values = torch.rand(batch, side * side, d, dtype=torch.float64)
    return model, coords, values


def ref_topk(errors: torch.Tensor, gamma: float) -> torch.Tensor:
    k = max(1, int(gamma * errors.shape[0]))
    return torch.argsort(errors, descending=True)[:k]


def ref_point_loss(pred, y, loss="mse", huber_delta=1.0, loss_fn=None):
    """Per-point loss ``[M]`` of ``pred, y [M, D]``: a built-in averaged over channels, else ``loss_fn(pred, y)``."""
    e = pred - y
    if loss == "mse":
        return (e**2).mean(-1)
    if loss == "l1":
        return e.abs().mean(-1)
    if loss == "huber":
        quadratic = 0.5 * e**2
        linear = huber_delta * (e.abs() - 0.5 * huber_delta)
        return torch.where(e.abs() <= huber_delta, quadratic, linear).mean(-1)
    if loss_fn is None:
        raise ValueError(f"ref_point_loss: give loss_fn for the loss {loss!r}")
    return loss_fn(pred, y)


def ref_weighted(losses, w):
    """A signal's loss ``sum_j w_j l_j / sum_j w_j``."""
    return (w * losses).sum() / w.sum()


def ref_weighted_topk(losses, w, gamma):
    """The pruned set: the top ``max(1, int(gamma * M_pos))`` positive-weight points by ``w_j l_j``."""
    positive = w > 0
    k = max(1, int(gamma * int(positive.sum())))
    scores = torch.where(positive, w * losses, torch.full_like(losses, -math.inf)).detach()
    return torch.argsort(scores, descending=True)[:k]


class _Objective:
    """The loss settings of one call (``loss``, ``huber_delta``, ``loss_fn``) and whether any was given."""

    def __init__(self, loss, huber_delta, loss_fn, weights):
        self.custom = loss is not None or weights is not None
        self.loss = "mse" if loss is None else loss
        self.huber_delta = huber_delta
        self.loss_fn = loss_fn

    def point(self, pred, y):
        return ref_point_loss(pred, y, self.loss, self.huber_delta, self.loss_fn)


def _signal_weights(weights, b, y):
    return torch.ones(y.shape[0], dtype=y.dtype) if weights is None else weights[b]


def ref_rate(lr, rates, mode, name, k):
    """Step size of parameter ``name`` at inner step ``k``: fixed ``lr`` or a learned rate."""
    if rates is None:
        return lr
    if mode == "per_tensor":
        return rates[name][min(k, rates[name].shape[0] - 1)]
    return rates[name]


def ref_inner(
    model,
    params,
    x,
    y,
    gamma,
    K,
    lr,
    first_order=False,
    rates=None,
    mode=None,
    objective=None,
    w=None,
    step_losses=None,
):
    """K inner SGD steps on the pruned context (``objective``/``w``: the weighted per-point loss, else MSE).

    ``step_losses``: a list that receives the pruned-context loss of steps 2 .. K (at theta_1 .. theta_{K-1}).
    """
    for k in range(K):
        pred = functional_call(model, params, (x,))
        if objective is not None and objective.custom:
            losses = objective.point(pred, y)
            idx = ref_weighted_topk(losses, w, gamma)
            loss = ref_weighted(losses[idx], w[idx])
        else:
            err = ((pred - y) ** 2).sum(-1)
            idx = ref_topk(err.detach(), gamma)
            loss = ((pred[idx] - y[idx]) ** 2).mean()
        keep = step_losses is not None and k > 0
        if keep:
            step_losses.append(loss)
        grads = torch.autograd.grad(
            loss, list(params.values()), create_graph=not first_order, retain_graph=keep or None
        )
        params = {n: p - ref_rate(lr, rates, mode, n, k) * g for (n, p), g in zip(params.items(), grads, strict=True)}
    return params


def ref_meta_loss(
    model,
    coords,
    values,
    *,
    gamma,
    K,
    L,
    lam,
    lr,
    boot_lr=None,
    first_order=False,
    adapted=None,
    rates=None,
    mode=None,
    loss=None,
    weights=None,
    huber_delta=1.0,
    loss_fn=None,
    lam_mode="absolute",
    boot_target="last",
    step_loss=0.0,
):
    """Mean over signals of MSE(theta_K; full) + lam * ||theta_K - stopgrad(theta_boot)||.

    ``step_loss``: plus ``step_loss`` times the mean pruned-context loss at theta_1 .. theta_{K-1} (MAML++'s
    multi-step loss; nothing when K = 1).

    ``lam_mode="relative"``: lam times the (constant) norm of the full-context loss gradient at theta_K.
    ``boot_target="best"``: theta_boot is the point of lowest full-context loss among theta_K and the L
    bootstrap steps' results (the earliest on ties), not the last.

    ``adapted``: names of the parameters adapted per signal (None: every trainable one); the others are the
    model's own in every forward. ``rates``/``mode``: learned step sizes (see ``ref_rate``). ``loss``
    (``"mse"``, ``"l1"``, ``"huber"`` with ``huber_delta``, or any name with ``loss_fn(pred, y) -> [M]``) and
    ``weights [B, M]``: the objective of the inner steps, the bootstrap and the outer loss (the weighted
    signal loss in place of the MSE).
    """
    boot_lr = lr if boot_lr is None else boot_lr
    objective = _Objective(loss, huber_delta, loss_fn, weights)
    theta0 = {n: p for n, p in model.named_parameters() if p.requires_grad and (adapted is None or n in adapted)}
    total = 0.0
    for b in range(values.shape[0]):
        x = coords if coords.ndim == 2 else coords[b]
        y = values[b]
        w = _signal_weights(weights, b, y)

        def full_loss(params, x=x, y=y, w=w):
            pred = functional_call(model, params, (x,))
            if objective.custom:
                return ref_weighted(objective.point(pred, y), w)
            return ((pred - y) ** 2).mean()

        step_losses = []
        theta_k = ref_inner(
            model, dict(theta0), x, y, gamma, K, lr, first_order, rates, mode, objective, w, step_losses
        )
        loss = full_loss(theta_k)
        if step_loss and step_losses:
            loss = loss + step_loss * sum(step_losses) / len(step_losses)
        if L > 0 and lam != 0:
            boot = {n: p.detach().requires_grad_(True) for n, p in theta_k.items()}
            weight = lam
            path = []  # (loss, point) along the bootstrap
            for step in range(L):
                boot_loss = full_loss(boot)
                path.append((float(boot_loss.detach()), boot))
                grads = torch.autograd.grad(boot_loss, list(boot.values()))
                if step == 0 and lam_mode == "relative":
                    weight = lam * torch.sqrt(sum((g**2).sum() for g in grads))
                boot = {
                    n: (p - boot_lr * g).detach().requires_grad_(True)
                    for (n, p), g in zip(boot.items(), grads, strict=True)
                }
            if boot_target == "best":
                path.append((float(full_loss(boot).detach()), boot))
                boot = min(path, key=lambda entry: entry[0])[1]  # min keeps the first of equal losses
            sq = sum(((theta_k[n] - boot[n].detach()) ** 2).sum() for n in theta_k)
            if float(sq.detach()) > 0:  # at theta_boot = theta_K the distance and its (sub)gradient are 0
                loss = loss + weight * torch.sqrt(sq)
        total = total + loss
    return total / values.shape[0]


def ref_meta_grads(model, coords, values, *, shared_from_fit=False, **kw):
    """Loss and its gradient w.r.t. every trainable parameter of the model, then every learned rate.

    ``shared_from_fit``: the gradient of the parameters that are not adapted (shared) is the fit term's alone
    (the loss at ``lam = 0``), as the learner's ``boot_trains_shared=False``; the others' the whole loss's.
    """
    loss = ref_meta_loss(model, coords, values, **kw)
    params = [p for p in model.parameters() if p.requires_grad] + list((kw.get("rates") or {}).values())
    grads = torch.autograd.grad(loss, params)
    adapted = kw.get("adapted")
    if not shared_from_fit or adapted is None:
        return loss.detach(), grads
    fit_grads = torch.autograd.grad(ref_meta_loss(model, coords, values, **{**kw, "lam": 0.0}), params)
    shared = [n not in adapted for n, p in model.named_parameters() if p.requires_grad]
    shared += [False] * (len(params) - len(shared))  # the rates
    return loss.detach(), tuple(f if s else g for s, g, f in zip(shared, grads, fit_grads, strict=True))


def ref_fit(
    model,
    x,
    y,
    *,
    steps,
    lr,
    gamma,
    scaling,
    return_scales=False,
    adapted=None,
    rates=None,
    mode=None,
    loss=None,
    weights=None,
    huber_delta=1.0,
    loss_fn=None,
):
    """Per-signal test-time fitting with Eq. 6 scaling; returns (params, mse history[, scale of every step]).

    ``loss``/``weights [M]``/``huber_delta``/``loss_fn`` (see ``ref_meta_loss``): every step and the history use
    the weighted signal loss, and the scalings compare the pruned set's (weighted) loss or gradient with the
    full context's; the history is then that loss's.
    """
    objective = _Objective(loss, huber_delta, loss_fn, weights)
    w = torch.ones(y.shape[0], dtype=y.dtype) if weights is None else weights
    params = {
        n: p.detach().clone().requires_grad_(True)
        for n, p in model.named_parameters()
        if p.requires_grad and (adapted is None or n in adapted)
    }
    history, scales = [], []
    for _ in range(steps + 1):
        pred = functional_call(model, params, (x,))
        if objective.custom:
            losses = objective.point(pred, y)
            full = ref_weighted(losses, w)
        else:
            err = ((pred - y) ** 2).sum(-1)
            full = err.mean() / y.shape[-1]
        history.append(full.detach())
        if len(history) == steps + 1:
            break
        g_full = torch.autograd.grad(full, list(params.values()), retain_graph=True)
        if objective.custom:
            idx = ref_weighted_topk(losses, w, gamma)
            pruned = ref_weighted(losses[idx], w[idx])
        else:
            idx = ref_topk(err.detach(), gamma)
            pruned = err[idx].mean() / y.shape[-1]
        if scaling == "norm":
            g_pruned = torch.autograd.grad(pruned, list(params.values()))
            norm = lambda gs: torch.sqrt(sum((g**2).sum() for g in gs))  # noqa: E731
            scale = norm(g_pruned) / (norm(g_full) + 1e-16)
        elif scaling == "loss":
            scale = pruned.detach() / (full.detach() + 1e-16)
        else:
            scale = torch.tensor(1.0, dtype=full.dtype)
        scales.append(torch.as_tensor(scale).detach())
        params = {
            n: (p - ref_rate(lr, rates, mode, n, len(scales) - 1) * scale * g).detach().requires_grad_(True)
            for (n, p), g in zip(params.items(), g_full, strict=True)
        }
    out = {n: p.detach() for n, p in params.items()}, torch.stack(history)
    return (*out, torch.stack(scales) if scales else torch.zeros(0, dtype=full.dtype)) if return_scales else out


def ref_pruned_fit(model, x, y, steps, lr, gamma):
    """Plain SGD on the error-based pruned context (no scaling); returns (final prediction, MSE history)."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    history = []
    for _ in range(steps):
        err = ((functional_call(model, params, (x,)) - y) ** 2).sum(-1)
        history.append(err.mean().detach() / y.shape[-1])
        idx = ref_topk(err.detach(), gamma)
        grads = torch.autograd.grad(err[idx].mean() / y.shape[-1], list(params.values()))
        stepped = [p - lr * g for p, g in zip(params.values(), grads, strict=True)]
        params = {n: p.detach().requires_grad_(True) for n, p in zip(params, stepped, strict=True)}
    final = functional_call(model, params, (x,))
    history.append(((final - y) ** 2).mean().detach())
    return final.detach(), torch.stack(history)
