"""benchmarks/diagnose.py at tiny scale: every key is recorded and finite, the diagnostics leave training as it
would be without them, and each measurement agrees with the library's own number for the same quantity."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, ModulatedSiren, Siren, make_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from diagnose import bootstrap_share, diagnose, format_table, inner_trace, main  # noqa: E402

SETTINGS = dict(gamma=0.5, K=3, L=2, lam=10.0, max_grad_norm=1.0, batching_benchmark=False)


def _data(signals: int = 7, side: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return make_grid((side, side)), torch.rand(signals, side * side, 3, generator=generator)


def _batches(coords: torch.Tensor, values: torch.Tensor, batch: int = 2):
    step = 0
    while True:
        start = (step * batch) % (values.shape[0] - batch + 1)
        yield coords, values[start : start + batch]
        step += 1


def _siren_learner(**settings) -> ContextPruningMetaLearner:
    torch.manual_seed(0)
    return ContextPruningMetaLearner(Siren(2, 3, 16, 1), outer_lr=1e-3, seed=0, **(SETTINGS | settings))


def _numbers(tree, path=""):
    """Every number in a nested report, with where it is."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _numbers(value, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, float(tree)


def test_report_has_every_key_and_finite_values():
    coords, values = _data()
    learner = _siren_learner()
    report = diagnose(learner, _batches(coords, values[:5]), (coords, values[5:]), steps=4, every=2)
    assert [p["step"] for p in report["schedule"]] == [0, 2, 4]
    assert all(len(v) == 4 for v in report["steps"].values())
    for point in report["schedule"]:
        assert set(point) == {"step", "probe", "rates", "val", "bootstrap"}
        assert set(point["val"]) == {"norm", "none", "loss", "pruned", "init"}
        assert all(len(point["val"][r]["curve"]) == learner.config.K + 1 for r in ("norm", "none", "loss", "pruned"))
        assert len(point["val"]["norm"]["scale"]) == learner.config.K
        assert all(len(point["probe"][k]) == learner.config.K for k in ("ratio", "pruned_norm", "full_norm"))
        assert {"distance", "share", "cosine", "fit_grad_norm", "boot_grad_norm", "grad_norm"} <= set(
            point["bootstrap"]
        )
    summary = report["summary"]
    assert summary["clip"] == 1.0 and 0.0 <= summary["clipped_fraction"] <= 1.0
    assert summary["diverged"] is None
    bad = [(where, v) for where, v in _numbers(report) if not math.isfinite(v)]
    assert not bad
    table = format_table(report)
    assert "val norm" in table and len(table.splitlines()) >= 5


def test_diagnostics_leave_training_unchanged():
    """Random selection draws from the learner's generator: a diagnostic that drew from it would change training."""
    coords, values = _data()
    watched, plain = _siren_learner(selection="random"), _siren_learner(selection="random")
    report = diagnose(watched, _batches(coords, values), (coords, values[:2]), steps=3, every=1)
    batches = _batches(coords, values)
    psnr = [plain.meta_step(next(batches))["psnr"] for _ in range(3)]
    assert report["steps"]["psnr"] == psnr
    for a, b in zip(watched.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bootstrap_parts_add_up_to_the_learners_meta_gradient():
    coords, values = _data()
    learner = _siren_learner(max_grad_norm=None)
    batch = (coords, values[:2])
    parts = bootstrap_share(learner, batch)
    expected_loss = float(learner.meta_loss(batch).detach())
    stats = learner.meta_step(batch)  # its grad_norm is taken before the update
    assert parts["meta_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert parts["fit_loss"] + parts["boot_term"] == pytest.approx(parts["meta_loss"], rel=1e-6)
    assert parts["grad_norm"] == pytest.approx(stats["grad_norm"], rel=1e-4)
    assert parts["boot_grad_norm"] > 0 and -1.0 <= parts["cosine"] <= 1.0


def test_bootstrap_share_is_zero_without_the_bootstrap():
    coords, values = _data()
    parts = bootstrap_share(_siren_learner(lam=0.0), (coords, values[:2]))
    assert parts["share"] == 0.0 and parts["boot_grad_norm"] == 0.0 and parts["distance"] == 0.0


def test_first_gradient_ratio_is_the_norm_rules_first_scale():
    """At theta_0 both take Eq. 6's ||g_pruned|| / ||g_full|| on the same error-ranked subset."""
    coords, values = _data()
    learner = _siren_learner()
    batch = (coords, values[:3])
    trace = inner_trace(learner, batch)
    scale = GradScaledAdapter(learner, scaling="norm", steps=1).fit(batch).history["scale"][0]
    assert trace["ratio"][0] == pytest.approx(float(scale.mean()), rel=1e-5)
    assert trace["psnrK"] > trace["psnr0"]  # K inner steps from theta_0 fit the signals better


def test_latent_learner_reports_its_learned_rates():
    coords, values = _data()
    torch.manual_seed(0)
    model = ModulatedSiren(2, 3, 16, 1, latent_dim=4)
    learner = ContextPruningMetaLearner(
        model, adapt=["latent"], learn_inner_lr="per_element", outer_lr=1e-2, seed=0, **SETTINGS
    )
    report = diagnose(learner, _batches(coords, values), (coords, values[:2]), steps=2, every=2, rules=["pruned"])
    first, last = (report["schedule"][i]["rates"] for i in (0, -1))
    assert first["mode"] == "per_element" and set(first["per_tensor"]) == {"latent"}
    assert first["mean"] == pytest.approx(learner.config.inner_lr)
    assert last["mean"] != first["mean"]  # the rates are meta-learned
    assert "fit_grad_norm_rates" in report["schedule"][0]["bootstrap"]


def test_cli_sweep_on_builtin_crops(tmp_path):
    out = main(
        [
            "--model", "siren", "--resolution", "8", "--train-size", "8", "--val-size", "2", "--width", "8",
            "--depth", "1", "--steps", "2", "--every", "2", "--K", "2", "--rules", "norm,pruned",
            "--sweep", "outer_lr=1e-3,1e-4", "--json", str(tmp_path / "sweep.json"),
        ]
    )  # fmt: skip
    assert [run["sweep"] for run in out["runs"]] == [{"outer_lr": 1e-3}, {"outer_lr": 1e-4}]
    assert [run["outer_lr"] for run in out["runs"]] == [1e-3, 1e-4]
    assert (tmp_path / "sweep.json").stat().st_size > 0
    assert out["meta"]["model"]["class"] == "Siren"
