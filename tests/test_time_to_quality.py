"""benchmarks/time_to_quality.py: the time-to-target arithmetic on known curves, and a tiny run of the whole path
(baselines for their budget, ECoP stopping once past the targets). No timing is asserted."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import time_to_quality as ttq  # noqa: E402 - benchmarks/ is put on sys.path just above


def _curve(name, seconds, psnr):
    curve = ttq.Curve(name)
    for step, (t, p) in enumerate(zip(seconds, psnr, strict=True)):
        curve.add(step, t, p)
    return curve


def test_best_is_the_first_time_the_maximum_is_reached():
    curve = _curve("learnit", [0, 10, 20, 30, 40], [20.0, 30.0, 35.0, 34.0, 35.0])
    assert curve.best() == (35.0, 20.0)
    assert curve.time_to(30.0) == 10.0 and curve.time_to(35.0) == 20.0 and curve.time_to(35.1) is None


def test_pairs_give_the_ratio_to_the_baselines_own_time():
    curves = {
        "learnit": _curve("learnit", [0, 100, 200], [20.0, 30.0, 32.0]),
        "learnit_lr_tensor": _curve("learnit_lr_tensor", [0, 100, 200], [20.0, 36.0, 33.0]),
        "ecop": _curve("ecop", [0, 10, 40], [20.0, 32.5, 36.0]),
    }
    rows = {(r["method"], r["baseline"]): r for r in ttq.compare(curves)}
    assert set(rows) == {("ecop", "learnit"), ("ecop", "learnit_lr_tensor")}
    first = rows[("ecop", "learnit")]
    assert first["baseline_best_psnr"] == 32.0 and first["baseline_cpu_seconds_to_best"] == 200
    assert first["method_cpu_seconds_to_it"] == 10 and first["ratio"] == 0.05 and first["meets_bar"]
    second = rows[("ecop", "learnit_lr_tensor")]
    assert second["method_cpu_seconds_to_it"] == 40 and second["ratio"] == 0.4 and not second["meets_bar"]
    assert "| ecop | learnit | 32.00 | 200.00 | 10.00 | 0.050 |" in ttq.format_rows(list(rows.values()))


def test_a_method_that_never_reaches_the_target_has_no_ratio():
    curves = {"learnit": _curve("learnit", [0, 5], [20.0, 30.0]), "ecop": _curve("ecop", [0, 5], [20.0, 29.0])}
    (row,) = ttq.compare(curves)
    assert row["method_cpu_seconds_to_it"] is None and row["ratio"] is None and row["meets_bar"] is None


def test_quick_run_writes_every_curve_and_pair(tmp_path):
    out = tmp_path / "ttq.json"
    result = ttq.main(["--quick", "--json", str(out), "--plot", str(tmp_path / "ttq.png")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / "ttq.png").stat().st_size > 0
    assert set(result["curves"]) == {"learnit", "learnit_lr_tensor", "ecop", "ecop_lr_tensor"}
    for name in ttq.BASELINES:  # the baselines always run their whole budget
        assert result["curves"][name]["steps"] == [0, 2, 4, 6]
    for curve in result["curves"].values():
        assert curve["cpu_seconds"] == sorted(curve["cpu_seconds"]) and curve["cpu_seconds"][0] == 0.0
    assert result["outer_lr"] == {**ttq.VALIDATED_OUTER_LR}
    assert len(result["pairs"]) == 4 and result["machine"]["load_average_before"]


def test_an_ecop_method_stops_once_past_its_targets():
    args = ttq.parse_args(["--quick"])
    config = ttq.run_config(args)
    splits = ttq.load_splits(config)
    curve = ttq.train_curve(ttq.METHOD_TABLE["ecop"], config, splits, 6, 2, {"learnit": -1.0})
    assert curve.steps == [0, 2]  # the target was passed at the first evaluation after step 0


def test_the_validation_schedule_thins_out_after_dense_until():
    steps = [s for s in range(1, 1001) if ttq.is_validated(s, 1000, 25, 500)]
    assert steps[:3] == [25, 50, 75] and 500 in steps and 525 not in steps and 600 in steps
    assert len(steps) == 20 + 5 and steps[-1] == 1000
    assert [s for s in range(1, 8) if ttq.is_validated(s, 7, 2, 4)] == [2, 4, 7]
