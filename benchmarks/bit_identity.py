"""Bit-identity run: a few meta-steps and fits in many configurations, every number written to a file, and a
comparison of two such files (the check that a refactor changed no number).

    python benchmarks/bit_identity.py record OUT.pt      # on the code before, then after, the change
    python benchmarks/bit_identity.py compare BEFORE.pt AFTER.pt

Configurations: every memory mode, both backends, every batching mode, every selection rule, learned rates,
``adapt=``, per-signal coordinates, float64 and a latent-only ModulatedSiren; 3 meta-steps each, then 6 fits
(norm/loss/none scaling, with and without pruned steps). Runs in about 10 s on one CPU thread. ``batching="auto"``
is not timed here (``ECOP_WRAP_BATCHING_BENCHMARK=0``): timed, it picks the mode that was fastest on this run,
and two modes differ in the last float32 bits (the latent-only configuration did, between runs of one commit).
``compare`` also accepts dicts that gained keys (new statistics), and exits 1 if any recorded value differs in any bit.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, ModulatedSiren, Siren, make_grid

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "chunk": {"chunk_size": 20},
    "checkpoint": {"checkpoint": True},
    "chunk_ckpt": {"chunk_size": 13, "checkpoint": True},
    "per_tensor": {"learn_inner_lr": "per_tensor"},
    "per_element": {"learn_inner_lr": "per_element", "rates_lr": 1e-3},
    "gradncp": {"selection": "gradncp"},
    "random": {"selection": "random", "seed": 3},
    "higher": {"backend": "higher"},
    "bmm": {"batching": "bmm"},
    "vmap": {"batching": "vmap"},
    "loop": {"batching": "loop"},
    "first_order": {"first_order": True},
    "nolam": {"lam": 0.0},
    "noboot": {"L": 0},
    "clip": {"max_grad_norm": 0.01},
    "gamma1": {"gamma": 1.0, "K": 3},
    "adapt_out": {"adapt": ["net.*"]},
    "perdsig": {"per_signal": True},
    "boot_lr": {"boot_lr": 0.05},
}


def problem(
    seed: int = 0, side: int = 8, batch: int = 3, per_signal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coords = make_grid((side, side))
    if per_signal:
        coords = coords.unsqueeze(0).expand(batch, -1, -1).clone() * 0.9
    values = torch.rand(batch, side * side, 3, generator=g)
    return coords, values


def record() -> dict[str, Any]:
    """Every statistic, parameter and fit history of the configurations above (one CPU thread)."""
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for name, settings in CONFIGS.items():
        _record_siren(out, name, dict(settings))
    torch.manual_seed(0)
    model = ModulatedSiren(2, 3, 16, 2, latent_dim=8)
    learner = ContextPruningMetaLearner(
        model, adapt=["latent"], learn_inner_lr="per_element", outer_lr=1e-3, K=4, L=2, inner_lr=0.5, max_inner_lr=5.0
    )
    for step in range(3):
        out[f"latent/stats{step}"] = learner.meta_step(problem(step))
    out["latent/params"] = {k: v.clone() for k, v in model.state_dict().items()}
    fit = GradScaledAdapter(learner, steps=4).fit(problem(11))
    out["latent/fit"] = (fit.params, fit.history)
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2).double()
    learner = ContextPruningMetaLearner(model, outer_lr=1e-3, K=4, L=2)
    coords, values = problem(0)
    for step in range(2):
        out[f"f64/stats{step}"] = learner.meta_step((coords.double(), values.double()))
    out["f64/params"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


def _record_siren(out: dict[str, Any], name: str, settings: dict[str, Any]) -> None:
    per_signal = settings.pop("per_signal", False)
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 2)
    if name == "adapt_out":
        settings["adapt"] = [n for n, _ in model.named_parameters()][-2:]
    settings = {"gamma": 0.25, "K": 4, "L": 2, **settings}
    learner = ContextPruningMetaLearner(model, outer_lr=1e-3, **settings)
    for step in range(3):
        out[f"{name}/stats{step}"] = learner.meta_step(problem(step, per_signal=per_signal))
    out[f"{name}/params"] = {k: v.clone() for k, v in model.state_dict().items()}
    out[f"{name}/rates"] = {k: v.detach().clone() for k, v in learner.inner_lrs.items()}
    for scaling in ("norm", "loss", "none"):
        for pruned in (0, 2):
            adapter = GradScaledAdapter(learner, steps=4, scaling=scaling, pruned_steps=pruned)
            fit = adapter.fit(problem(10, per_signal=per_signal))
            out[f"{name}/fit_{scaling}_{pruned}"] = (fit.params, fit.history)
    if name == "default":
        adapter = GradScaledAdapter(learner, steps=3, lr=0.02, chunk_size=7)
        fit = adapter.fit((make_grid((8, 8)), torch.rand(64, 3, generator=torch.Generator().manual_seed(5))))
        out["default/fit_single_chunk"] = (fit.params, fit.history)


def same(x: Any, y: Any) -> bool:
    """Bit-for-bit equality (a dict in ``y`` may have more keys than in ``x``: new statistics)."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and set(x) <= set(y) and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(same(p, q) for p, q in zip(x, y, strict=True))
    if isinstance(x, float):
        return x == y or (x != x and y != y)
    return bool(x == y)


def compare(before: str, after: str) -> int:
    """Print which recorded entries differ; 1 if any does."""
    a, b = torch.load(before, weights_only=False), torch.load(after, weights_only=False)
    bad = [k for k in a if k not in b or not same(a[k], b[k])]
    print(f"{len(a)} entries, {len(bad)} differ: {bad[:20]}")
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ["ECOP_WRAP_BATCHING_BENCHMARK"] = "0"  # the first correct mode, as before auto timed the modes
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        result = record()
        torch.save(result, sys.argv[2])
        print("wrote", len(result), "entries")
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
