"""Test-time step variants that were tried as cheaper replacements for Eq. 6's full-context scaled step.

Usage::

    python benchmarks/fit_variants.py INIT.pt [--n 32] [--split test|val] [--steps 16] [--variants ...]
    python benchmarks/fit_variants.py INIT.pt --split val --variants reference --lr-multipliers 1.5,2,3

INIT.pt: an initialization written by ``ContextPruningMetaLearner.save`` for the ``benchmarks/speed --fit`` SIREN
(3x128, w0 30), e.g. ``benchmarks/speed --fit --fit-train-steps 1000 --fit-save-checkpoint INIT.pt``. The script
fits ``--n`` builtin crops (``skimage_crops(split, resolution=32, n, seed=1)``) as one batch and prints the mean
PSNR after every step of each variant (time is not measured: ``benchmarks/speed --fit`` does that for the schedules
the library offers). Variants (k = a quarter of the points, as in training):

* ``reference``: the adapter's step, full-context gradient times ``||g_topk|| / ||g_full||``;
* ``pruned``: the training step, the top-k points' gradient, unscaled;
* ``loss``: Appendix B.2's scale ``MSE(top-k) / MSE(full)`` on the full-context gradient;
* ``reuse4`` / ``reuse_once``: the reference with the scale computed every 4th step / at step 0 only;
* ``uniform`` / ``uniform4``: the full-context gradient estimated from k uniformly drawn points, scaled by
  ``||g_topk|| / ||estimate||`` every step / every 4th step;
* ``is1`` / ``is05`` / ``is05s4`` / ``is05r2s4``: the full-context gradient estimated from k points drawn with
  replacement with probability proportional to error^1 / error^0.5, reweighted by ``1 / (M p)`` to be
  unbiased, scaled like ``uniform``; ``s4``: scale every 4th step, ``r2``: errors re-ranked every 2nd step.

``--lr-multipliers`` also runs the reference with the step size multiplied (a larger test-time step).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from ecop_wrap import SCALING_RULES, ContextPruningMetaLearner, Siren
from ecop_wrap.data import skimage_crops
from ecop_wrap.extend import (
    ContextEvaluator,
    gather_points,
    global_norm,
    num_selected,
    per_signal,
    squared_errors,
    topk_indices,
)
from ecop_wrap.metrics import mse_to_psnr

Params = dict[str, torch.Tensor]
Step = Callable[[Params, int, dict[str, Any]], Params]


class Variants:
    """Every variant's direction at ``params`` (step size applied by the caller)."""

    def __init__(self, learner: ContextPruningMetaLearner, ctx: ContextEvaluator, seed: int = 0) -> None:
        self.learner, self.ctx = learner, ctx
        self.k = num_selected(ctx.num_points, learner.config.gamma)
        self.generator = torch.Generator().manual_seed(seed)
        self.norm_rule, self.loss_rule = SCALING_RULES["norm"](), SCALING_RULES["loss"]()  # the adapter's rules

    def _norm_ratio(self, top: Params, other: Params) -> torch.Tensor:
        """The norm rule's ratio with a subset estimate in place of the full-context gradient."""
        return global_norm(list(top.values())) / (global_norm(list(other.values())) + 1e-16)

    def _scaled(self, grads: Params, scale: torch.Tensor) -> Params:
        return {n: g * per_signal(scale, g) for n, g in grads.items()}

    def reference(self, params: Params, step: int, state: dict[str, Any], every: int = 1) -> Params:
        full = self.ctx.full_grad(params)
        if step % every == 0:
            state["scale"] = self.norm_rule.scale(self.ctx, params, full, topk_indices(full.errors, self.k))
        return self._scaled(full.grads, state["scale"])

    def pruned(self, params: Params, step: int, state: dict[str, Any]) -> Params:
        return self.ctx.grad(params, topk_indices(self.ctx.errors(params), self.k))

    def loss(self, params: Params, step: int, state: dict[str, Any]) -> Params:
        full = self.ctx.full_grad(params)
        scale = self.loss_rule.scale(self.ctx, params, full, topk_indices(full.errors, self.k))
        return self._scaled(full.grads, scale)

    def _weighted_grad(self, params: Params, idx: torch.Tensor, weights: torch.Tensor) -> Params:
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        coords, values = gather_points(self.ctx.coords, idx), gather_points(self.ctx.values, idx)
        with torch.enable_grad():
            errors = squared_errors(self.learner.backend.graph_free(leaves, coords)[0], values)
            loss = (errors * weights).mean(1).sum() / self.ctx.channels
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return dict(zip(leaves, grads, strict=True))

    def sampled(
        self, params: Params, step: int, state: dict[str, Any], power: float | None, scale_every: int, rank_every: int
    ) -> Params:
        """``power`` None: uniform points; else probability proportional to error ** power."""
        batch, points = self.ctx.batch, self.ctx.num_points
        if step % rank_every == 0:
            state["errors"] = self.ctx.errors(params)
        errors = state["errors"]
        if power is None:
            idx = torch.stack([torch.randperm(points, generator=self.generator)[: self.k] for _ in range(batch)])
            estimate = self.ctx.grad(params, idx)
        else:
            prob = errors.clamp_min(1e-12) ** power
            prob = prob / prob.sum(1, keepdim=True)
            idx = torch.multinomial(prob, self.k, replacement=True, generator=self.generator)
            estimate = self._weighted_grad(params, idx, 1.0 / (points * torch.gather(prob, 1, idx)))
        if step % scale_every == 0:
            state["scale"] = self._norm_ratio(self.ctx.grad(params, topk_indices(errors, self.k)), estimate)
        return self._scaled(estimate, state["scale"])

    def table(self) -> dict[str, Step]:
        return {
            "reference": self.reference,
            "pruned": self.pruned,
            "loss": self.loss,
            "reuse4": lambda p, t, s: self.reference(p, t, s, every=4),
            "reuse_once": lambda p, t, s: self.reference(p, t, s, every=10**9),
            "uniform": lambda p, t, s: self.sampled(p, t, s, None, 1, 1),
            "uniform4": lambda p, t, s: self.sampled(p, t, s, None, 4, 1),
            "is1": lambda p, t, s: self.sampled(p, t, s, 1.0, 1, 1),
            "is05": lambda p, t, s: self.sampled(p, t, s, 0.5, 1, 1),
            "is05s4": lambda p, t, s: self.sampled(p, t, s, 0.5, 4, 1),
            "is05r2s4": lambda p, t, s: self.sampled(p, t, s, 0.5, 4, 2),
        }


def run(ctx: ContextEvaluator, init: Params, direction: Step, lr: float, steps: int) -> list[float]:
    """Mean PSNR before the first and after every step."""
    params = {n: p.expand(ctx.batch, *p.shape).clone() for n, p in init.items()}

    def psnr() -> float:
        mse = ctx.errors(params).sum(1) / (ctx.num_points * ctx.channels)
        return float(mse_to_psnr(mse).mean())

    curve, state = [psnr()], {}
    for step in range(steps):
        update = direction(params, step, state)
        params = {n: p - lr * update[n] for n, p in params.items()}
        curve.append(psnr())
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("init")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--variants", default="reference,pruned,loss,reuse4,reuse_once,uniform,uniform4,is1,is05,is05s4")
    ap.add_argument("--lr-multipliers", default="", help="comma-separated; the reference with lr times each")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Siren(2, 3, 128, 3, w0=30.0)
    learner = ContextPruningMetaLearner.from_checkpoint(model, args.init, seed=0)
    crops = skimage_crops(args.split, resolution=32, n=args.n, seed=1)
    ctx = ContextEvaluator(learner.backend, crops.coords, torch.as_tensor(crops.values))
    init = {n: model.get_parameter(n).detach() for n in learner.adapted}
    lr = learner.config.inner_lr
    table = Variants(learner, ctx).table()
    print(f"mean PSNR (dB) after steps 1..{args.steps}, {args.n} {args.split} crops 32x32, inner lr {lr}")
    for name in filter(None, args.variants.split(",")):
        print(f"{name:16s}", " ".join(f"{x:5.2f}" for x in run(ctx, init, table[name], lr, args.steps)[1:]))
    for multiplier in (float(m) for m in filter(None, args.lr_multipliers.split(","))):
        curve = run(ctx, init, table["reference"], lr * multiplier, args.steps)
        print(f"{'reference x' + str(multiplier):16s}", " ".join(f"{x:5.2f}" for x in curve[1:]))


if __name__ == "__main__":
    main()
