"""benchmarks/reproduce end to end at tiny scale, and its Reptile and pruned-context test fitting against
independent float64 per-signal references."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from reference import TinySiren, ref_fit

from ecop_wrap import make_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from baselines import Reptile  # noqa: E402 - benchmarks/ is put on sys.path just above
from reproduce import METHODS  # noqa: E402


def _problem(batch: int = 2, side: int = 5):
    torch.manual_seed(0)
    model = TinySiren(2, 1).double()
    coords = make_grid((side, side), dtype=torch.float64)
    values = torch.rand(batch, side * side, 1, dtype=torch.float64)
    return model, coords, values


def test_reptile_step_matches_reference():
    model, coords, values = _problem()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapted = [ref_fit(model, coords, values[b], steps=3, lr=1e-2, gamma=1.0, scaling="none")[0] for b in range(2)]
    eps = 0.5
    reptile = Reptile(model, 3, inner_lr=1e-2, optimizer=torch.optim.SGD(model.parameters(), lr=eps))
    reptile.meta_step((coords, values))
    for name, p in model.named_parameters():
        mean_k = sum(a[name] for a in adapted) / 2
        torch.testing.assert_close(p.detach(), init[name] + eps * (mean_k - init[name]), rtol=1e-9, atol=1e-12)


def test_reproduce_end_to_end(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "r.json"
    command = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "reproduce"),
        "--images",
        "builtin",
        "--resolution",
        "16",
        "--outer-steps",
        "2",
        "--seed",
        "0",
        "--eval-size",
        "3",
        "--train-size",
        "8",
        "--batch",
        "2",
        "--width",
        "16",
        "--depth",
        "2",
        "--ecop-steps",
        "4",
        "--boot-steps",
        "2",
        "--test-steps",
        "3",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    image_methods = [m for m in METHODS if not m.startswith("nerv_")]  # NeRV decodes video only
    assert set(results) == set(image_methods) | {"_meta", "_paired_gaps"}
    assert results["_paired_gaps"]["ecop - learnit"]["signals"] == 3
    for method in image_methods:
        record = results[method]
        for key in ("psnr", "ssim", "seconds_per_step", "peak_memory_bytes"):
            assert isinstance(record[key], (int, float)) and math.isfinite(record[key]), (method, key)
        assert len(record["psnr_curve"]) == 4
        assert record["psnr_curve"][-1] == pytest.approx(record["psnr"], abs=1e-3)
        assert len(record["psnr_per_signal"]) == 3
        assert len(record["scale_curve"]) == 3
        scaled = record["test"]["scaling"] != "none"
        if scaled:
            assert all(0 < v < float("inf") for v in record["scale_curve"]) and record["scale_curve"] != [1, 1, 1]
        else:
            assert record["scale_curve"] == [1, 1, 1], method
    assert results["random_init"]["peak_memory_bytes"] == 0
    # deterministic memory accounting: second-order methods hold more than first-order ones
    assert 0 < results["reptile"]["peak_memory_bytes"] < results["learnit"]["peak_memory_bytes"]
    assert results["fomaml"]["peak_memory_bytes"] < results["learnit"]["peak_memory_bytes"]
    assert results["ecop_test_unscaled"]["trained_as"] == "ecop"
    assert results["_meta"]["lpips"].startswith(("computed", "absent"))
    assert "method" in done.stdout and "ecop" in done.stdout


def test_reproduce_video_rows_nerv_on_frames_and_siren_on_pixels(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "v.json"
    # fmt: off
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "reproduce"), "--video", "pans", "--resolution", "8",
        "--frames", "4", "--outer-steps", "2", "--eval-size", "3", "--eval-split", "both", "--train-size", "6",
        "--batch", "2", "--width", "16", "--depth", "2", "--gamma", "0.5", "--ecop-steps", "4", "--boot-steps", "2",
        "--test-steps", "2", "--nerv-channels", "4", "--nerv-width", "8", "--methods", "nerv_ecop,nerv_learnit,learnit",
        "--inner-lr-for", "nerv_ecop=0.5", "--inner-lr-for", "nerv_learnit=0.5", "--boot-lr-for", "nerv_ecop=0.25",
        "--json", str(out),
    ]
    # fmt: on
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["nerv_ecop"]["model"]["class"] == "NeRV" and results["learnit"]["model"]["class"] == "Siren"
    assert results["nerv_ecop"]["train"]["inner_lr"] == 0.5 and results["nerv_ecop"]["train"]["boot_lr"] == 0.25
    assert results["learnit"]["train"]["inner_lr"] == 1e-2
    for method in ("nerv_ecop", "nerv_learnit", "learnit"):
        record = results[method]
        assert len(record["psnr_per_signal"]) == 3 and len(record["val"]["psnr_per_signal"]) == 3
        assert math.isfinite(record["psnr"]) and record["fit_seconds_per_signal"] > 0
    assert results["_paired_gaps"]["nerv_ecop - nerv_learnit"]["signals"] == 3
    assert results["_meta"]["modality"] == "video"


def test_frame_view_keeps_every_clip_and_its_mean_squared_error():
    pytest.importorskip("skimage")
    from reproduce import RunConfig, build_model, frame_view, load_splits

    config = RunConfig.from_args(["--video", "pans", "--resolution", "8", "--frames", "3", "--train-size", "4"])
    config = dataclasses.replace(config, eval_size=2)
    pixels = load_splits(config)
    model = build_model(config, pixels, "nerv")
    frames = frame_view(pixels, model)
    assert frames.coords.shape == (3, 1) and frames.test.shape == (2, 3, 3 * 8 * 8)
    clips = model.values_to_frames(frames.test)  # [N, T, H, W, C]
    torch.testing.assert_close(clips.reshape(2, -1, 3), pixels.test, rtol=0, atol=0)
    other = torch.rand_like(pixels.test)
    other_frames = model.frames_to_values(other.reshape(2, 3, 8, 8, 3))
    mse_pixels = (other - pixels.test).pow(2).mean(dim=(1, 2))
    mse_frames = (other_frames - frames.test).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(mse_frames, mse_pixels)
    with pytest.raises(SystemExit):
        RunConfig.from_args(["--methods", "nerv_ecop"])  # NeRV without --video


def test_merge_results_combines_disjoint_methods_and_refuses_duplicates(tmp_path):
    from reproduce import merge_results

    record = {"psnr": 30.0, "psnr_std": 1.0, "ssim": 0.9, "seconds_per_step": 1.0, "peak_memory_bytes": 10}
    first = {"ecop": record, "_meta": {"command": "a", "data": "d"}}
    second = {"learnit": dict(record, psnr=28.0), "_meta": {"command": "b", "data": "d"}}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, content in zip(paths, (first, second), strict=True):
        path.write_text(json.dumps(content))
    merged = merge_results(paths)
    assert list(merged) == ["learnit", "ecop", "_meta"]  # METHODS order
    assert merged["learnit"]["psnr"] == 28.0
    assert [m["command"] for m in merged["_meta"]["merged_from"]] == ["a", "b"]
    with pytest.raises(ValueError, match="more than one"):
        merge_results([paths[0], paths[0]])


def test_paired_gaps_are_per_signal_differences_with_their_standard_error():
    from reproduce import paired_gaps

    results = {
        "ecop": {"psnr_per_signal": [30.0, 32.0, 31.0], "val": {"psnr_per_signal": [1.0, 1.0]}},
        "learnit": {"psnr_per_signal": [29.0, 29.0, 32.0], "val": {"psnr_per_signal": [2.0, 0.0]}},
    }
    gaps = paired_gaps(results)
    assert list(gaps) == ["ecop - learnit"]  # pairs with a missing method are left out
    diff = torch.tensor([1.0, 3.0, -1.0], dtype=torch.float64)
    assert gaps["ecop - learnit"]["mean_db"] == 1.0
    assert gaps["ecop - learnit"]["stderr_db"] == round(float(diff.std() / 3**0.5), 3)
    assert gaps["ecop - learnit"]["wins"] == 2
    assert paired_gaps(results, "val")["ecop - learnit"] == {"mean_db": 0.0, "stderr_db": 1.0, "wins": 1, "signals": 2}


def test_compare_files_pairs_methods_of_two_result_files(tmp_path):
    from reproduce import compare_files, paired_gap

    a = {"ecop": {"psnr_per_signal": [3.0, 5.0], "val": {"psnr_per_signal": [1.0]}}}
    b = {"learnit": {"psnr_per_signal": [1.0, 2.0], "val": {"psnr_per_signal": [2.0]}}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    lines = []
    gaps = compare_files(f"{tmp_path / 'a.json'}:ecop", f"{tmp_path / 'b.json'}:learnit", lines.append)
    assert gaps["held_out"]["mean_db"] == 2.5 and gaps["held_out"]["wins"] == 2
    assert gaps["val"]["mean_db"] == -1.0 and gaps["val"]["wins"] == 0
    assert "+2.50 dB" in lines[0]
    with pytest.raises(ValueError, match="no method 'fomaml'"):
        compare_files(f"{tmp_path / 'a.json'}:fomaml", f"{tmp_path / 'b.json'}:learnit")
    (tmp_path / "old.json").write_text(json.dumps({"ecop": {"psnr": 30.0}}))
    with pytest.raises(ValueError, match="no per-signal PSNR"):
        compare_files(f"{tmp_path / 'old.json'}:ecop", f"{tmp_path / 'b.json'}:learnit")
    with pytest.raises(ValueError, match="same signals"):
        paired_gap([1.0, 2.0], [1.0])


# ------------------------------------------------------------------------------------- config and methods
def test_run_config_is_parsed_once_frozen_and_adds_the_model_an_evaluation_row_tests():
    import dataclasses

    from reproduce import RunConfig

    config = RunConfig.from_args(
        ["--methods", "ecop_test_pruned,learnit", "--outer-lr-for", "ecop=1e-3", "--sphere", "iris", "--w0", "40"]
    )
    assert config.methods == ("learnit", "ecop", "ecop_test_pruned")  # ecop added, table order
    assert config.images is None and config.sphere == "iris"
    assert config.outer_lr_of("ecop") == 1e-3 and config.outer_lr_of("learnit") == 3e-4
    assert config.w0_for("sphere") == 40.0
    assert config.argv[:2] == ("--methods", "ecop_test_pruned,learnit")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gamma = 0.5  # type: ignore[misc]
    assert RunConfig.from_args([]).w0_for("sphere") == 50.0 and RunConfig.from_args([]).w0_for("image") == 30.0
    with pytest.raises(SystemExit):
        RunConfig.from_args(["--outer-steps", "0"])
    with pytest.raises(SystemExit):
        RunConfig.from_args(["--methods", "maml"])


def test_method_table_rows_resolve_training_and_test_settings():
    from reproduce import METHOD_TABLE, FitSetting, RunConfig

    config = RunConfig.from_args(
        [
            "--gamma",
            "0.5",
            "--ecop-steps",
            "8",
            "--boot-steps",
            "3",
            "--lam",
            "10",
            "--boot-lr",
            "0.1",
            "--inner-lr",
            "0.02",
            "--learnit-tuned-inner-lr",
            "0.05",
            "--outer-lr-for",
            "reptile=1e-3",
            "--inner-lr-for",
            "hashgrid_ecop=0.7",
            "--boot-lr-for",
            "hashgrid_ecop=0.9",
            "--lam-for",
            "ecop_latent=0.5",
            "--lam-for",
            "learnit_latent=0.5",
        ]
    )
    boot = {"L": 3, "lam": 10.0, "boot_lr": 0.1}

    def hyper(name: str) -> dict:
        return METHOD_TABLE[name].training(config).hyper

    assert hyper("fomaml") == {"gamma": 1.0, "K": 8, "L": 0, "lam": 0.0, "first_order": True}
    assert hyper("learnit") == hyper("learnit_tuned_lr") == {"gamma": 1.0, "K": 4, "L": 0, "lam": 0.0}  # gamma * K
    assert hyper("random_pruning") == {"gamma": 0.5, "K": 8, "selection": "random", **boot}
    assert hyper("ecop") == {"gamma": 0.5, "K": 8, **boot}
    assert hyper("ecop_no_bootstrap") == {"gamma": 0.5, "K": 8, "L": 0, "lam": 0.0}
    reptile = METHOD_TABLE["reptile"].training(config)
    assert reptile.reptile and reptile.hyper == {"K": 8} and reptile.outer_lr == 1e-3
    assert METHOD_TABLE["learnit_tuned_lr"].training(config).inner_lr == 0.05
    assert METHOD_TABLE["learnit"].training(config).inner_lr == 0.02
    # per-method overrides: inner and bootstrap step sizes, and lambda (only where the bootstrap runs)
    hashgrid = METHOD_TABLE["hashgrid_ecop"].training(config)
    assert hashgrid.inner_lr == 0.7 and hashgrid.hyper == {"gamma": 0.5, "K": 8, **boot, "boot_lr": 0.9}
    assert hyper("ecop_latent")["lam"] == 0.5 and hyper("learnit_latent")["lam"] == 0.0
    assert hyper("ecop")["lam"] == 10.0

    def test(name: str) -> FitSetting:
        return METHOD_TABLE[name].fit_setting(config)

    assert test("ecop") == test("ecop_no_bootstrap") == FitSetting(0.02, "norm", "full", 0.5, "error")
    assert test("random_pruning") == FitSetting(0.02, "norm", "full", 0.5, "random")
    assert test("ecop_test_pruned") == FitSetting(0.02, "none", "pruned", 0.5, "error")
    assert test("ecop_test_unscaled_tuned") == test("learnit_tuned_lr") == FitSetting(0.05)
    assert test("random_init") == test("reptile") == test("ecop_test_unscaled") == FitSetting(0.02)
    for method in METHOD_TABLE.values():
        if method.train is None:
            assert method.trained_as is None or METHOD_TABLE[method.trained_as].train is not None
            with pytest.raises(ValueError, match="not trained"):
                method.training(config)


def test_learned_rates_are_declared_by_the_row_and_reach_training_and_test_time():
    from reproduce import METHOD_TABLE, RunConfig

    config = RunConfig.from_args([])
    learned = {name: m.learn_inner_lr for name, m in METHOD_TABLE.items() if m.learned_rates}
    assert learned == {
        "ecop_lr_tensor": "per_tensor",
        "ecop_lr_element": "per_element",
        "learnit_lr_tensor": "per_tensor",
        "learnit_lr_element": "per_element",
        "ecop_latent": "per_element",
        "learnit_latent": "per_element",
        "ecop_lr_tensor_test_calibrated": "per_tensor",  # tests ecop_lr_tensor's model, at its learned rates
        "ecop_latent_test_calibrated": "per_element",
    }
    for name, method in METHOD_TABLE.items():
        if method.train is not None:
            assert method.training(config).hyper.get("learn_inner_lr") == learned.get(name), name
        else:  # an evaluation-only row declares the rates of the model it tests
            assert method.learn_inner_lr == METHOD_TABLE.get(method.trained_as or "", method).learn_inner_lr, name
        assert (method.fit_setting(config).lr is None) == (name in learned), name


def test_every_row_names_a_registered_model_and_only_nerv_sees_frames():
    from reproduce import METHOD_TABLE, MODELS

    assert {m.model for m in METHOD_TABLE.values()} <= set(MODELS)
    assert [kind for kind, model in MODELS.items() if model.frames] == ["nerv"]


# ------------------------------------------------------------------------------------- command line
def test_parser_has_one_flag_per_config_field_with_its_declared_default_and_help():
    from reproduce import RunConfig, make_parser

    fields = [f for f in dataclasses.fields(RunConfig) if f.name != "argv"]
    actions = {a.dest: a for a in make_parser()._actions if a.dest != "help"}
    assert list(actions) == [f.name for f in fields]  # declaration order, nothing hand-added
    for spec in fields:
        action = actions[spec.name]
        assert action.option_strings == ["--" + spec.name.replace("_", "-")]
        assert action.help == spec.metadata["help"]
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        assert action.default == default, spec.name
    parsed, declared = RunConfig.from_args([]), RunConfig()
    resolved = {"methods"}  # the default method set depends on the data
    for spec in fields:
        if spec.name not in resolved:
            assert getattr(parsed, spec.name) == getattr(declared, spec.name), spec.name
    assert "nerv_ecop" not in parsed.methods and "hashgrid_ecop" in parsed.methods


def test_declared_lower_bounds_are_enforced_for_every_bounded_flag():
    from reproduce import RunConfig

    bounded = [f for f in dataclasses.fields(RunConfig) if f.metadata.get("at_least") is not None]
    assert {f.name for f in bounded} >= {"outer_steps", "batch", "workers", "eval_size"}
    for spec in bounded:
        flag = "--" + spec.name.replace("_", "-")
        RunConfig.from_args([flag, str(spec.metadata["at_least"])])
        with pytest.raises(SystemExit):
            RunConfig.from_args([flag, str(spec.metadata["at_least"] - 1)])


@pytest.mark.parametrize("how", ["directory", "module"])
def test_package_runs_as_a_directory_and_as_a_module(how, tmp_path):
    record = {"psnr_per_signal": [3.0, 5.0]}
    for name, method in (("a", "ecop"), ("b", "learnit")):
        (tmp_path / f"{name}.json").write_text(json.dumps({method: record}))
    pairs = [f"{tmp_path / 'a.json'}:ecop", f"{tmp_path / 'b.json'}:learnit"]
    if how == "directory":
        command, cwd = [sys.executable, os.path.join("benchmarks", "reproduce")], ROOT
    else:
        command, cwd = [sys.executable, "-m", "reproduce"], os.path.join(ROOT, "benchmarks")
    done = subprocess.run([*command, "--paired", *pairs], check=False, capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "+0.00 dB" in done.stdout and "0/2 signals better" in done.stdout


def test_partition_puts_evaluation_rows_with_the_model_they_test():
    from reproduce import METHODS, partition

    for workers in (1, 2, 3, 8):
        groups = partition(METHODS, workers)
        assert sorted(m for g in groups for m in g) == sorted(METHODS)
        ecop_group = next(g for g in groups if "ecop" in g)
        assert {"ecop_test_unscaled", "ecop_test_pruned", "ecop_test_unscaled_tuned"} <= set(ecop_group)


# ------------------------------------------------------------------------- objectives (issue 22)
_TINY_IMAGES = [
    "--resolution", "8", "--outer-steps", "2", "--eval-size", "2", "--train-size", "4", "--batch", "2",
    "--width", "8", "--depth", "1", "--ecop-steps", "2", "--boot-steps", "1", "--test-steps", "2", "--no-plot",
]  # fmt: skip


@pytest.mark.parametrize("timed", [False, True])
def test_runs_repeat_their_numbers_unless_auto_batching_is_timed(tmp_path, monkeypatch, timed):
    """Untimed (the default), batching='auto' takes the first correct mode whatever the load; the JSON says which
    mode each learner ran and whether auto was timed."""
    from reproduce import main

    monkeypatch.setenv("ECOP_WRAP_BATCHING_BENCHMARK", "1")
    out = tmp_path / "run.json"
    main([*_TINY_IMAGES, "--methods", "ecop", *(["--timed-batching"] if timed else []), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["_meta"]["batching_auto_timed"] is timed
    assert os.environ["ECOP_WRAP_BATCHING_BENCHMARK"] == ("1" if timed else "0")
    assert saved["ecop"]["train"]["batching"] in ("bmm", "vmap", "loop")
    if not timed:
        assert saved["ecop"]["train"]["batching"] == "bmm"  # a SIREN's first correct mode


def test_loss_flags_reach_every_learner_and_the_test_time_adapter():
    from reproduce import METHOD_TABLE, RunConfig
    from reproduce.evaluation import _adapter
    from reproduce.training import make_trainer

    config = RunConfig.from_args(["--loss", "huber", "--huber-delta", "0.25"])
    assert config.objective == {"loss": "huber", "huber_delta": 0.25}
    for name in ("ecop", "learnit", "fomaml", "random_pruning"):
        trainer = make_trainer(METHOD_TABLE[name].training(config), TinySiren(2, 1), config)
        assert (trainer.config.loss, trainer.config.huber_delta) == ("huber", 0.25), name
    reptile = make_trainer(METHOD_TABLE["reptile"].training(config), TinySiren(2, 1), config)
    assert (reptile.loss_fn.name, reptile.loss_fn.huber_delta) == ("huber", 0.25)
    setting = METHOD_TABLE["random_init"].fit_setting(config)
    adapter = _adapter(TinySiren(2, 1), 2, setting, config.objective)
    assert (adapter.config.loss, adapter.config.huber_delta) == ("huber", 0.25)
    default = RunConfig.from_args([])
    assert default.objective == {"loss": "mse", "huber_delta": 1.0}
    assert make_trainer(METHOD_TABLE["ecop"].training(default), TinySiren(2, 1), default).config.loss == "mse"
    for bad in (["--loss", "nope"], ["--huber-delta", "0"]):
        with pytest.raises(SystemExit):
            RunConfig.from_args(bad)


def test_a_loss_other_than_mse_reports_psnr_and_the_mean_test_loss(tmp_path, capsys):
    pytest.importorskip("skimage")
    from reproduce import main

    out = tmp_path / "l1.json"
    results = main([*_TINY_IMAGES, "--methods", "random_init,reptile,ecop", "--loss", "l1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["_meta"]["loss"] == "l1"
    for name in ("random_init", "reptile", "ecop"):
        record = saved[name]
        assert math.isfinite(record["psnr"]) and len(record["psnr_per_signal"]) == 2
        assert record["test_loss"] > 0 and len(record["test_loss_per_signal"]) == 2
        assert len(record["test_loss_curve"]) == 3 and len(record["psnr_curve"]) == 3
    assert "train_loss_curve" in results["ecop"]["train"] and "train_psnr_curve" not in results["ecop"]["train"]
    assert "test loss" in capsys.readouterr().out


# ------------------------------------------------------------------------ masked images (issue 22)
def _with_hidden_values(splits, value: float):
    """``splits`` with every hidden pixel of every split set to ``value`` (the observed ones untouched)."""
    from ecop_wrap.data import SignalDataset

    def fill(values, observed):
        return torch.where(observed[..., None], values, torch.full_like(values, value))

    train = SignalDataset(fill(splits.train.stacked(), splits.observed["train"]), splits.grid)
    val, test = fill(splits.val, splits.observed["val"]), fill(splits.test, splits.observed["test"])
    return dataclasses.replace(splits, train=train, val=val, test=test)


def test_masked_images_never_use_a_hidden_pixel_in_training_or_test_time_fits():
    pytest.importorskip("skimage")
    from reproduce import METHOD_TABLE, RunConfig, build_model, evaluate, load_splits
    from reproduce.training import train_method

    config = RunConfig.from_args([*_TINY_IMAGES, "--mask-fraction", "0.3", "--mask-block", "2"])
    splits = load_splits(config)
    observed = splits.observed
    assert set(observed) == {"train", "val", "test"} and observed["train"].shape == (4, 64)
    assert (~observed["test"]).any() and observed["test"].any(dim=1).all()
    assert torch.equal(observed["test"], load_splits(config).observed["test"])  # fixed by the seeds
    device = torch.device("cpu")
    for name in ("ecop", "learnit", "reptile"):
        thetas, scores = [], []
        for data in (splits, _with_hidden_values(splits, 7.0), _with_hidden_values(splits, -3.0)):
            model = build_model(config, data)
            _, trainer = train_method(METHOD_TABLE[name], model, data, config, device, lambda _: None)
            thetas.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            setting = METHOD_TABLE[name].fit_setting(config)
            tested = model if isinstance(trainer, Reptile) else trainer
            scores.append(evaluate(tested, data, data.test, 2, setting, observed=data.observed["test"]))
        for other in thetas[1:]:
            for key, value in thetas[0].items():
                torch.testing.assert_close(other[key], value, rtol=0, atol=0, msg=f"{name}: {key}")
        # the fits see the observed pixels only: their scores there are identical, the hidden ones differ
        assert scores[0]["psnr_observed_per_signal"] == scores[1]["psnr_observed_per_signal"], name
        assert scores[0]["psnr_per_signal"] != scores[1]["psnr_per_signal"], name


def test_masked_images_report_hidden_and_observed_psnr_per_signal_and_pair(tmp_path, capsys):
    pytest.importorskip("skimage")
    from reproduce import RunConfig, compare_files, main

    out = tmp_path / "masked.json"
    flags = ["--mask-fraction", "0.25", "--mask-block", "2", "--eval-split", "both"]
    main([*_TINY_IMAGES, "--methods", "random_init,learnit,ecop", *flags, "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["_meta"]["mask_fraction"] == 0.25 and saved["_meta"]["mask_block"] == 2
    for name in ("random_init", "learnit", "ecop"):
        record = saved[name]
        assert len(record["psnr_per_signal"]) == 2 and len(record["psnr_observed_per_signal"]) == 2
        assert record["psnr"] == pytest.approx(sum(record["psnr_per_signal"]) / 2, abs=1e-3)
        assert record["psnr_observed"] == pytest.approx(sum(record["psnr_observed_per_signal"]) / 2, abs=1e-3)
        assert math.isfinite(record["psnr_all_pixels"]) and len(record["psnr_curve"]) == 3
        assert len(record["val"]["psnr_observed_per_signal"]) == 2
    gaps = compare_files(f"{out}:ecop", f"{out}:learnit")
    assert set(gaps) == {"held_out", "val"}
    assert "on hidden pixels" in capsys.readouterr().out
    for bad in (["--mask-fraction", "1.0"], ["--sphere", "iris", "--mask-fraction", "0.2"]):
        with pytest.raises(SystemExit):
            RunConfig.from_args(bad)
    with pytest.raises(SystemExit):
        RunConfig.from_args(["--resolution", "8", "--mask-fraction", "0.2", "--mask-block", "8"])
    assert RunConfig.from_args([]).mask_fraction == 0.0


# -------------------------------------------------------------------------- glyph SDFs (issue 22)
def test_sdf_rows_use_the_examples_families_and_clamped_l1_registered_from_the_flag():
    from example_helpers import load_example
    from reproduce import METHOD_TABLE, RunConfig
    from reproduce.sdf import TEST_FAMILIES, TRAIN_FAMILIES, VAL_FAMILIES
    from reproduce.training import make_trainer

    import ecop_wrap

    example = load_example("sdf_glyphs")
    assert (TRAIN_FAMILIES, VAL_FAMILIES, TEST_FAMILIES) == (
        example.TRAIN_FAMILIES,
        example.VAL_FAMILIES,
        example.TEST_FAMILIES,
    )
    config = RunConfig.from_args(["--sdf", "glyphs", "--loss", "clamped_l1", "--sdf-clamp", "0.05"])
    assert config.images is None and config.sdf == "glyphs" and config.w0_for("sdf") == 10.0
    pred, target = torch.randn(3, 7, 1), torch.randn(3, 7, 1)
    torch.testing.assert_close(ecop_wrap.LOSSES["clamped_l1"](pred, target), example.clamped_l1(0.05)(pred, target))
    trainer = make_trainer(METHOD_TABLE["ecop"].training(config), TinySiren(2, 1), config)
    assert trainer.config.loss == "clamped_l1"
    with pytest.raises(SystemExit):
        RunConfig.from_args(["--sdf", "glyphs", "--mask-fraction", "0.2"])
    with pytest.raises(SystemExit):
        RunConfig.from_args(["--sdf", "glyphs", "--sdf-clamp", "0"])


def test_sdf_glyphs_report_band_error_and_iou_per_signal(tmp_path):
    pytest.importorskip("matplotlib")
    from reproduce import main

    out = tmp_path / "sdf.json"
    tiny = [*_TINY_IMAGES, "--train-size", "6", "--eval-size", "3", "--eval-split", "both"]
    main(["--sdf", "glyphs", "--loss", "clamped_l1", *tiny, "--methods", "random_init,ecop", "--json", str(out)])
    saved = json.loads(out.read_text())
    meta = saved["_meta"]
    assert meta["modality"] == "sdf" and meta["loss"] == "clamped_l1" and meta["sdf_clamp"] == 0.1
    assert "DejaVu Sans Mono" in meta["data"] and meta["train_signals"] == 6
    for name in ("random_init", "ecop"):
        record = saved[name]
        assert len(record["band_error_per_signal"]) == 3 and len(record["iou_per_signal"]) == 3
        assert record["band_error"] >= 0 and 0 <= record["iou"] <= 1 and record["test_loss"] >= 0
        assert "band_error" in record["val"] and "iou" in record["val"]
        assert len(record["band_psnr_per_signal"]) == 3 and len(record["val"]["band_psnr_per_signal"]) == 3


def test_sdf_band_psnr_scores_only_the_points_near_the_outline():
    from reproduce.sdf import sdf_scores

    truth = torch.tensor([[[0.05], [-0.02], [0.5], [-0.9]], [[0.01], [0.3], [0.4], [0.6]]])
    error = torch.tensor([[[0.1], [0.2], [5.0], [-7.0]], [[0.02], [1.0], [1.0], [1.0]]])
    scores = sdf_scores(truth + error, truth, band=0.1, data_range=2.0)
    # signal 0: band points 0 and 1, MSE (0.01 + 0.04) / 2; signal 1: point 0 only, MSE 4e-4
    expected = [10 * math.log10(4.0 / 0.025), 10 * math.log10(4.0 / 4e-4)]
    assert scores["band_psnr_per_signal"] == pytest.approx(expected, abs=1e-3)
    assert scores["band_psnr"] == pytest.approx(sum(expected) / 2, abs=1e-4)
    assert scores["band_error_per_signal"] == pytest.approx([0.15, 0.02], abs=1e-6)


# ------------------------------------------------------------------- images at their own aspect ratios (issue 22)
_TINY_ASPECT = [*_TINY_IMAGES, "--eval-size", "4", "--test-steps", "3", "--aspect-crops", "2"]


def test_aspect_crops_run_writes_per_signal_psnr_of_ragged_held_out_signals(tmp_path):
    pytest.importorskip("skimage")
    from reproduce import compare_files, main

    out = tmp_path / "aspect.json"
    main([*_TINY_ASPECT, "--methods", "random_init,learnit,ecop", "--eval-split", "both", "--json", str(out)])
    saved = json.loads(out.read_text())
    meta = saved["_meta"]
    assert meta["aspect_crops"] == 2.0 and meta["eval_signals"] == 4
    assert meta["points_per_signal"]["test"]["min"] < meta["points_per_signal"]["test"]["max"] <= 64
    for name in ("random_init", "learnit", "ecop"):
        record = saved[name]
        assert len(record["psnr_per_signal"]) == 4 and len(record["val"]["psnr_per_signal"]) == 4
        assert all(math.isfinite(p) for p in record["psnr_per_signal"])
        assert record["psnr"] == pytest.approx(sum(record["psnr_per_signal"]) / 4, abs=1e-3)
        assert record["ssim"] is None and "ssim_note" in record
    assert saved["ecop"]["psnr_per_signal"] != saved["learnit"]["psnr_per_signal"]
    assert set(compare_files(f"{out}:ecop", f"{out}:learnit")) == {"held_out", "val"}


def test_aspect_crops_pad_training_batches_and_score_each_held_out_signal_as_if_fitted_alone():
    pytest.importorskip("skimage")
    from reproduce import METHOD_TABLE, RunConfig, build_model, evaluate, load_splits
    from reproduce.training import train_method, training_batches

    from ecop_wrap.data import skimage_aspect_crops

    config = RunConfig.from_args(_TINY_ASPECT)
    splits = load_splits(config)
    crops = skimage_aspect_crops("test", 8, 4, seed=config.eval_seed, max_aspect=2.0)
    coords, weights = splits.ragged["test"]
    sizes = [int(torch.tensor(s).prod()) for s in crops.shapes]
    assert len(set(sizes)) > 1 and weights.sum(dim=1).tolist() == sizes and splits.test.shape == (4, max(sizes), 3)
    for i, size in enumerate(sizes):  # the held-out signals are the library's crops, padded
        assert torch.equal(splits.test[i, :size], crops.values[i]) and torch.equal(coords[i, :size], crops.coords[i])
    batch = next(training_batches(splits, config))
    assert len(batch) == 3 and batch[0].shape[:2] == batch[2].shape and batch[0].dim() == 3  # per-signal coords
    for name in ("ecop", "learnit", "ecop_test_pruned"):
        method = METHOD_TABLE[name]
        model = build_model(config, splits)
        _, trainer = train_method(
            METHOD_TABLE[method.trained_as or name], model, splits, config, torch.device("cpu"), print
        )
        setting = method.fit_setting(config)
        together = evaluate(trainer, splits, splits.test, 3, setting, ragged=(coords, weights))["psnr_per_signal"]
        alone = [
            evaluate(
                trainer,
                splits,
                splits.test[i : i + 1, :n],
                3,
                setting,
                ragged=(coords[i : i + 1, :n], weights[i : i + 1, :n]),
            )["psnr_per_signal"][0]
            for i, n in enumerate(sizes)
        ]
        assert together == pytest.approx(alone, abs=1e-3), name


def test_aspect_crops_flag_errors():
    from reproduce import RunConfig

    assert RunConfig.from_args([]).aspect_crops is None
    assert RunConfig.from_args(["--aspect-crops", "1.5"]).aspect_crops == 1.5
    for bad in (
        ["--aspect-crops", "0.5"],
        ["--aspect-crops", "nan"],
        ["--aspect-crops", "2", "--sphere", "iris"],
        ["--aspect-crops", "2", "--images", "some/folder"],
        ["--aspect-crops", "2", "--mask-fraction", "0.25"],
    ):
        with pytest.raises(SystemExit):
            RunConfig.from_args(bad)


# --------------------------------------------------------------- issue 24: lam_mode and calibrated test rules
def test_lam_mode_reaches_the_bootstrap_methods_only():
    from reproduce import METHOD_TABLE, RunConfig
    from reproduce.training import make_trainer

    relative = RunConfig.from_args(["--lam-mode", "relative"])
    assert (
        make_trainer(METHOD_TABLE["ecop"].training(relative), TinySiren(2, 1), relative).config.lam_mode == "relative"
    )
    assert "lam_mode" not in METHOD_TABLE["learnit"].training(relative).hyper
    assert "lam_mode" not in METHOD_TABLE["ecop"].training(RunConfig.from_args([])).hyper  # stored as before


def test_a_calibrated_method_tests_the_source_model_under_the_rule_picked_on_training_signals(tmp_path):
    pytest.importorskip("skimage")
    from reproduce import main

    from ecop_wrap import TEST_RULES

    out = tmp_path / "calibrated.json"
    main(
        [
            *_TINY_IMAGES,
            "--methods",
            "ecop,ecop_test_unscaled,ecop_test_pruned,ecop_test_calibrated",
            "--json",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    picked = saved["ecop_test_calibrated"]["calibration"]
    assert picked["rule"] in TEST_RULES and picked["split"] == "train" and picked["signals"] == 4
    assert set(picked["scores"]) == set(TEST_RULES)
    assert picked["scores"][picked["rule"]] == min(picked["scores"].values())
    # the chosen rule's test fit is the one its own row makes from the same trained model
    same = {"norm": "ecop", "none": "ecop_test_unscaled", "pruned": "ecop_test_pruned"}.get(picked["rule"])
    if same is not None:
        assert saved["ecop_test_calibrated"]["psnr_per_signal"] == saved[same]["psnr_per_signal"]
    assert saved["ecop_test_calibrated"]["trained_as"] == "ecop"


def test_selection_flag_reaches_the_ecop_methods_only():
    from reproduce import METHOD_TABLE, RunConfig

    soft = RunConfig.from_args(["--selection", "soft"])
    for name in ("ecop", "ecop_lr_tensor", "ecop_latent", "hashgrid_ecop", "nerv_ecop"):
        assert METHOD_TABLE[name].training(soft).hyper["selection"] == "soft", name
    assert "selection" not in METHOD_TABLE["ecop"].training(RunConfig.from_args([])).hyper
    assert METHOD_TABLE["random_pruning"].training(soft).hyper["selection"] == "random"
    assert "selection" not in METHOD_TABLE["learnit"].training(soft).hyper


def test_training_records_the_bootstrap_rise_of_methods_that_bootstrap(tmp_path, capsys):
    pytest.importorskip("skimage")
    from reproduce import main

    results = main([*_TINY_IMAGES, "--methods", "ecop,learnit", "--boot-steps", "2", "--boot-lr", "100"])
    rises = results["ecop"]["train"]["boot_rise_curve"]
    assert rises and all(0.0 <= r <= 1.0 for r in rises) and max(rises) > 0.0  # a step of 100 overshoots
    assert "boot_rise_curve" not in results["learnit"]["train"]  # no bootstrap, nothing measured
    out = capsys.readouterr().out
    assert "boot_rise" in out
    floor = results["_meta"]["floor_psnr_per_signal"]  # recorded and printed with every run's table
    assert len(floor["test"]) == len(results["ecop"]["psnr_per_signal"])
    assert f"{sum(floor['test']) / len(floor['test']):.2f} dB on test" in out


def test_test_images_replace_the_test_split_only(tmp_path):
    """--test-images: the held-out test signals are windows of the folder's photos, the same number from each;
    training and validation signals are those of the run without it."""
    pytest.importorskip("skimage")
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image
    from reproduce import RunConfig, load_splits

    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (40, 30, 3)), ("b.jpg", (24, 50, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / name)
    plain = load_splits(RunConfig.from_args([*_TINY_IMAGES, "--eval-size", "5"]))
    unseen = load_splits(RunConfig.from_args([*_TINY_IMAGES, "--eval-size", "5", "--test-images", str(tmp_path)]))
    assert torch.equal(unseen.train.stacked(), plain.train.stacked()) and torch.equal(unseen.val, plain.val)
    assert unseen.test.shape == plain.test.shape and not torch.equal(unseen.test, plain.test)
    assert "3 windows of each of 2 photos (a.png, b.jpg)" in unseen.description
    again = load_splits(RunConfig.from_args([*_TINY_IMAGES, "--eval-size", "5", "--test-images", str(tmp_path)]))
    assert torch.equal(again.test, unseen.test)  # fixed by --eval-seed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--audio", "synth"], "--test-images replaces the test split of images: use it with --images"),
        (["--mask-fraction", "0.2"], "--test-images does not combine with --aspect-crops or --mask-fraction"),
    ],
)
def test_test_images_refuses_other_data(tmp_path, capsys, flags, message):
    from reproduce import RunConfig

    with pytest.raises(SystemExit):
        RunConfig.from_args(["--test-images", str(tmp_path), *flags])
    assert message in capsys.readouterr().err


def test_floor_psnr_is_the_psnr_of_each_signals_own_mean():
    pytest.importorskip("skimage")
    from reproduce import RunConfig, load_splits
    from reproduce.evaluation import floor_psnr

    splits = load_splits(RunConfig.from_args(_TINY_IMAGES))
    halves = torch.tensor([0.0, 1.0]).repeat(32)  # mean 0.5, every point 0.5 away: MSE 0.25, PSNR 10 log10(4)
    wide = torch.stack([halves, 0.5 + 0.1 * halves, halves], dim=-1)  # channel 2: MSE 0.0025
    values = torch.stack([torch.stack([halves] * 3, dim=-1), wide])  # [2 signals, 64 points, 3 channels]
    floor = floor_psnr(dataclasses.replace(splits, val=values, test=values[:1]))
    assert floor is not None and floor["test"] == pytest.approx([10 * math.log10(4.0)], abs=1e-4)
    assert floor["val"][1] == pytest.approx(10 * math.log10(1 / ((0.25 + 0.0025 + 0.25) / 3)), abs=1e-4)
    assert floor_psnr(dataclasses.replace(splits, modality="sdf")) is None
    assert floor_psnr(dataclasses.replace(splits, observed={"test": torch.ones(2, 64, dtype=torch.bool)})) is None
