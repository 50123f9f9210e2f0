"""benchmarks/speed's measurement modes (--phases, --ops, --compare, --fit, --scale, --ranking) at tiny sizes: the
tables have their rows, the JSON its fields, and the phase and op accounting adds up. No timing is asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ecop_wrap import ContextPruningMetaLearner, Siren, make_grid
from ecop_wrap.extend import num_selected

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "speed")  # a package, run through its __main__.py
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from speed import cli, fit, ops, phases  # noqa: E402 - benchmarks/ is put on sys.path just above

TINY = ["--side", "8", "--width", "16", "--layers", "2", "--batch", "2", "--K", "2", "--L", "1", "--repeats", "1"]
TINY_FIT = [
    "--fit-resolution",
    "8",
    "--fit-n",
    "3",
    "--fit-train-steps",
    "1",
    "--fit-train-crops",
    "4",
    "--fit-width",
    "16",
    "--fit-layers",
    "2",
    "--fit-ref-steps",
    "3",
    "--fit-pruned",
    "1,3",
    "--fit-max-steps",
    "5",
    "--fit-sampled",
]


def _run(args: list[str], tmp_path) -> tuple[str, dict]:
    out = tmp_path / "speed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args, "--threads", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_phases_compare_and_fit_print_their_rows(tmp_path):
    pytest.importorskip("skimage")
    stdout, result = _run(
        ["--phases", "--compare", "--compare-configs", "default,bf16", "--fit", *TINY, *TINY_FIT], tmp_path
    )

    # --phases: every library range, the remainder and the step; top-level shares and the remainder add to 1
    for row in (*phases.PHASES, phases.OUTSIDE, "step total (profiled)", "ECoP / Learnit profiled step"):
        assert row in stdout, row
    table = result["phases"]["table"]
    for name in ("ECoP", "Learnit"):
        top = [k for k in table[name] if k.startswith("ecop.") and " in " not in k]
        assert math.isclose(sum(table[name][k]["share"] for k in top) + table[name][phases.OUTSIDE]["share"], 1.0)
    assert table["Learnit"]["ecop.ranking"]["median_ms"] == 0.0  # gamma = 1: nothing to rank
    assert table["Learnit"]["ecop.bootstrap"]["median_ms"] == 0.0  # L = 0
    assert table["ECoP"]["ecop.ranking"]["median_ms"] > 0.0 and table["ECoP"]["ecop.bootstrap"]["median_ms"] > 0.0

    # --compare: Learnit and the chosen modes, ratios to Learnit, the bf16 ranking check over K + 1 states
    rows = result["compare"]["rows"]
    assert list(rows) == ["Learnit", "ECoP default", "ECoP bf16"]
    assert rows["Learnit"]["ratio_to_learnit"] == 1.0
    assert all(len(r["times_s"]) == 1 and not r["fell_back_to_eager"] for r in rows.values())
    for name in rows:
        assert any(line.startswith(name) for line in stdout.splitlines()), name
    check = result["compare"]["ranking_disagreement"]
    assert len(check["per_step"]) == 3 and check["k"] == num_selected(64, 0.25)
    assert all(0.0 <= f <= 1.0 for f in check["per_step"])
    assert "bf16 vs float32 ranking" in stdout

    # --fit: the reference sets the bar and takes its own full time; every schedule has a PSNR per state
    fitted = result["fit"]
    schedules = fitted["schedules"]
    assert list(schedules) == ["reference", "pruned 1", "pruned 3", "sampled"]
    ref = schedules["reference"]
    assert len(ref["psnr"]) == 4 and len(ref["step_median_s"]) == 3 and len(ref["cumulative_s"]) == 4
    assert fitted["summary"]["bar_psnr"] == ref["psnr"][-1] and ref["steps_to_bar"] <= 3
    assert ref["fraction_of_reference_time"] <= 1.0
    for name in ("pruned 1", "pruned 3", "sampled"):
        assert len(schedules[name]["psnr"]) == 6
        assert schedules[name]["cumulative_s"] == sorted(schedules[name]["cumulative_s"])
    assert math.isclose(schedules["pruned 1"]["psnr"][0], ref["psnr"][0], rel_tol=1e-5)  # the same initialization
    assert schedules["sampled"]["pruned_steps"] == 5
    assert "meta-trained here: 1 ECoP steps" in fitted["initialization"]
    for line in ("PSNR (dB) after each step", "bar: the reference's PSNR after 3 steps", "time to bar s"):
        assert line in stdout, line


def test_ops_counts_every_configuration_for_both_methods(tmp_path):
    stdout, result = _run(["--ops", *TINY], tmp_path)
    rows = result["ops"]["rows"]
    assert list(rows) == list(ops.DEFAULT_OPS_CONFIGS)
    for config, row in rows.items():
        for method in ("ECoP", "Learnit"):
            counts = row[method]
            assert counts["total"] > 0 and counts["totals"] == [counts["total"]]
            assert sum(counts["per_range"].values()) == sum(counts["per_op"].values()) == counts["total"]
            assert all(name.startswith("aten::") for name in counts["per_op"])
        assert row["ECoP"]["per_range"]["ecop.ranking"] > 0 and "ecop.ranking" not in row["Learnit"]["per_range"]
        assert math.isclose(row["ratio"], row["ECoP"]["total"] / row["Learnit"]["total"])
        assert any(line.startswith(config) for line in stdout.splitlines()), config
    assert rows["torch.func loop"]["ECoP"]["batching"] == "loop"
    assert "ECoP / Learnit" in stdout


@pytest.mark.parametrize("method", ["ecop", "learnit"])
def test_scale_reports_each_steps_cpu_split_faults_and_peak_rss(tmp_path, method):
    argv = ["--scale", *TINY, "--repeats", "2", "--scale-method", method, "--scale-settings", "chunk_size=16"]
    stdout, result = _run(argv, tmp_path)
    scale = result["scale"]
    assert scale["method"] == method and scale["settings"] == {"chunk_size": "16"} and len(scale["steps"]) == 2
    assert scale["hyper"]["gamma"] == (0.25 if method == "ecop" else 1.0)
    for step in scale["steps"]:
        assert step["wall_s"] > 0 and step["user_s"] >= 0 and step["sys_s"] >= 0 and step["minor_faults"] >= 0
        assert step["peak_rss_gib"] > 0
    walls = [step["wall_s"] for step in scale["steps"]]
    assert scale["median_wall_s"] == pytest.approx(sum(walls) / 2)  # the median of two steps
    assert f"--scale: {method} meta-step at side 8 (M = 64)" in stdout


def test_top_level_ops_leave_out_the_ops_an_op_calls():
    x, w = torch.rand(4, 3), torch.rand(2, 3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.nn.functional.linear(x, w).relu()
    assert [e.name for e in ops.top_level_ops(prof)] == ["aten::linear", "aten::relu"]
    assert any(e.name == "aten::mm" for e in prof.events())  # inside aten::linear, so not counted


def test_op_counts_repeat_from_step_to_step():
    torch.manual_seed(0)
    learner = ContextPruningMetaLearner(Siren(2, 3, 16, 2), K=2, L=1, coord_range=None)
    batch = (make_grid((8, 8)), torch.rand(2, 64, 3))
    learner.meta_step(batch)
    first, second = ops.count_ops(learner, batch), ops.count_ops(learner, batch)
    assert first == second and first["total"] > 0


def test_phase_times_split_nested_ranges():
    """Under checkpoint=True the recomputed inner steps run inside other ranges: reported apart, counted once."""
    torch.manual_seed(0)
    learner = ContextPruningMetaLearner(Siren(2, 3, 16, 2), K=2, L=1, checkpoint=True, coord_range=None)
    batch = (make_grid((8, 8)), torch.rand(2, 64, 3))
    learner.meta_step(batch)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof, torch.profiler.record_function(phases.STEP_RANGE):
        learner.meta_step(batch)
    rows = phases.phase_times(prof)
    assert any(k.startswith("ecop.pruned_forward in ecop.outer_backward") for k in rows), sorted(rows)
    totals = {e.key: e.cpu_time_total / 1e3 for e in prof.key_averages() if e.key.startswith("ecop.")}
    for name, total in totals.items():  # each call is on exactly one row
        parts = rows[name] + sum(ms for k, ms in rows.items() if k.startswith(name + " in "))
        assert math.isclose(parts, total, rel_tol=1e-9, abs_tol=1e-6), name
    top = sum(ms for k, ms in rows.items() if k.startswith("ecop.") and " in " not in k)
    assert math.isclose(top + rows[phases.OUTSIDE], rows["step"], rel_tol=1e-9)


def test_thread_list_is_passed_on_without_the_parent_options():
    argv = ["--compare", "--threads", "1,2", "--json=out.json", "--side", "8"]
    assert cli.strip_option(cli.strip_option(argv, "--threads"), "--json") == ["--compare", "--side", "8"]


@pytest.mark.slow
def test_compare_with_compile(tmp_path):
    """torch.compile takes a minute or more to warm up on a loaded CPU, hence slow."""
    stdout, result = _run(["--compare", "--compare-configs", "compile,bf16+compile", *TINY], tmp_path)
    rows = result["compare"]["rows"]
    assert list(rows) == ["Learnit", "ECoP compile", "ECoP bf16+compile"]
    assert all(r["warmup_s"] > 0 for r in rows.values())
    assert "ECoP bf16+compile" in stdout


def test_fit_plain_and_compile_schedules():
    """Built only (compiling is the slow part): same steps, pruned steps and selection, compile on."""
    argv = ["--fit", "--fit-pruned", "2", "--fit-max-steps", "4", "--fit-sampled", "--fit-plain", "--fit-compile"]
    args = cli.parser().parse_args(argv)
    learner = ContextPruningMetaLearner(Siren(2, 3, 16, 2), K=2, L=1, coord_range=None)
    schedules = fit.fit_schedules(args, learner)
    names = ["reference", "plain", "pruned 2", "sampled"]
    assert schedules["plain"].scaling == "none" and schedules["reference"].scaling == "norm"
    assert schedules["plain"].steps == schedules["reference"].steps == args.fit_ref_steps
    assert list(schedules) == [*names, *(f"{n} +compile" for n in names)]
    for name in names:
        eager, compiled = schedules[name], schedules[f"{name} +compile"]
        assert not eager.config.compile and compiled.config.compile
        assert (compiled.steps, compiled.pruned_steps) == (eager.steps, eager.pruned_steps)
        assert (compiled.selection_rule.name, compiled.scaling) == (eager.selection_rule.name, eager.scaling)


def test_fit_loads_its_initialization_from_a_checkpoint(tmp_path):
    """``--fit --checkpoint``: the saved learner comes back whole (ContextPruningMetaLearner.from_checkpoint)."""
    args = cli.parser().parse_args(["--fit", *TINY_FIT, "--checkpoint", str(tmp_path / "init.pt")])
    torch.manual_seed(3)
    saved = ContextPruningMetaLearner(Siren(2, 3, args.fit_width, args.fit_layers, w0=args.fit_w0), K=2, L=1)
    saved.meta_step((make_grid((8, 8)), torch.rand(2, 64, 3)))
    saved.save(args.checkpoint)
    learner, what = fit.fit_learner(args, torch.device("cpu"))
    assert what == f"loaded from {args.checkpoint} (meta-step 1)"
    assert learner.config == saved.config and learner.step_count == 1
    for a, b in zip(learner.model.parameters(), saved.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_time_to_bar_allows_only_rounding_below_the_bar():
    cumulative, psnrs = [0.0, 1.0, 2.0, 3.0], [10.0, 20.0, 29.995, 31.0]
    assert fit.time_to_bar(cumulative, psnrs, 30.0, 2.5)["steps_to_bar"] == 2  # 0.005 dB short: reached
    assert fit.time_to_bar(cumulative, [10.0, 20.0, 29.98, 31.0], 30.0, 2.5)["steps_to_bar"] == 3


def test_phases_settings_parse_python_literals_and_refuse_a_missing_value():
    assert phases.parse_settings("checkpoint=True, chunk_size=16384,batching=loop") == {
        "checkpoint": True,
        "chunk_size": 16384,
        "batching": "loop",
    }
    assert phases.parse_settings("") == {}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        phases.parse_settings("checkpoint")


def test_sgd_stability_ratios_start_at_one_fall_for_a_small_step_and_rise_for_a_large_one(tmp_path):
    import sgd_stability

    data = ["--images", "builtin", "--resolution", "8", "--width", "16", "--depth", "1", "--eval-size", "2"]
    out = sgd_stability.main(
        ["--lrs", "1e-4,1e3", "--steps", "2", "--signals", "2", "--json", str(tmp_path / "s.json"), "--", *data]
    )
    small, large = out["lrs"]["0.0001"], out["lrs"]["1000"]
    assert small["median"][0] == large["median"][0] == 1.0
    assert small["max"][1] < 1.0 < large["median"][1]
    assert json.loads((tmp_path / "s.json").read_text())["lrs"].keys() == {"0.0001", "1000"}


def test_ranking_times_pieces_against_the_whole_context_and_checks_they_agree(tmp_path):
    pytest.importorskip("skimage")
    argv = ["--ranking", "--side", "40", "--width", "16", "--layers", "2", "--batch", "2", "--repeats", "2"]
    stdout, result = _run(argv, tmp_path)  # 1,600 points: two pieces of CPU_RANK_CHUNK (1,024)
    rows = result["ranking"]["rows"]
    assert set(rows) == {"loop, auto", "loop, whole", "bmm, auto", "bmm, whole"}
    assert all(row["equal_to_whole_loop"] for row in rows.values())
    assert rows["loop, auto"]["rank_chunk"] == 1024 and rows["bmm, whole"]["rank_chunk"] is None
    assert all(len(row["times_s"]) == 2 for row in rows.values())
    assert "loop: pieces take" in stdout and "bmm: pieces take" in stdout


def test_loop_unbind_ab_finds_the_old_and_new_loop_bit_identical():
    """benchmarks/loop_unbind_ab.py keeps the select-per-signal loop it replaced; both give the same float64
    meta-gradients, bit for bit (the check its report prints)."""
    import loop_unbind_ab

    assert loop_unbind_ab.float64_identical()
    assert loop_unbind_ab.torch_func.loop_forward is loop_unbind_ab.NEW_LOOP  # the library's loop is restored
