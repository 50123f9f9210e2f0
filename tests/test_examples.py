"""The example scripts, the README quickstart, ecop_wrap.plotting and the docs' links and API page.

End-to-end runs use tiny settings (tests/example_helpers.py); optional dependencies missing -> skipped with
the reason. The reference for the selection trace is a plain per-signal autograd loop written here; the test-time
fits are checked against tests/reference.py's ``ref_fit``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from example_helpers import (
    EXAMPLES,
    PICTURES,
    TINY_LATENT,
    TINY_SIREN,
    has_modules,
    load_example,
    plain_fit_psnr,
)

from ecop_wrap import ContextPruningMetaLearner, Siren

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("image_siren", "video_siren", "audio_siren", "sphere_siren")


needs_plots = pytest.mark.skipif(
    not has_modules("matplotlib"), reason="matplotlib not installed ('ecop-wrap[examples]')"
)
needs_images = pytest.mark.skipif(not has_modules("skimage", "matplotlib"), reason="needs 'ecop-wrap[examples]'")


# ------------------------------------------------------------------------------------------------ --help
@pytest.mark.parametrize("name", SCRIPTS)
def test_help_runs_and_explains_every_flag(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = load_example(name).build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{name}: flag {action.option_strings} has no help text"
        assert action.option_strings[0] in text
    for flag in ("--outer-steps", "--gamma", "--inner-steps", "--test-steps", "--out", "--seed"):
        assert flag in text


def test_bad_flags_exit_with_a_message():
    module = load_example("image_siren")
    with pytest.raises(SystemExit, match="--outer-steps"):
        module.main(["--outer-steps", "0"])
    with pytest.raises(SystemExit, match="--gamma"):
        module.main(["--gamma", "1.5"])


def test_example_config_is_frozen_and_methods_carry_training_and_test_settings():
    import dataclasses

    module = load_example("image_siren")
    args = module.parse_args(
        [
            "--gamma",
            "0.5",
            "--inner-steps",
            "8",
            "--bootstrap-steps",
            "3",
            "--learnit-steps",
            "2",
            "--ecop-scaling",
            "loss",
            "--max-grad-norm",
            "0",
            "--boot-lr",
            "0.1",
            "--threads",
            "1",
        ]
    )
    common = sys.modules["_common"]
    config = common.setup(args)
    assert config.flags["resolution"] == 32  # the script's own flags are recorded too (summary.json "args")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gamma = 0.25
    ecop, learnit = common.compared_methods(config, (-1.0, 1.0))
    assert (ecop.name, ecop.test_scaling, ecop.checkpoint) == ("ECoP", "loss", "ecop.pt")
    assert (ecop.settings.gamma, ecop.settings.K, ecop.settings.L, ecop.settings.boot_lr) == (0.5, 8, 3, 0.1)
    assert ecop.settings.max_grad_norm is None  # --max-grad-norm 0 disables clipping
    assert (learnit.name, learnit.test_scaling, learnit.checkpoint) == ("Learnit", "none", "learnit.pt")
    assert (learnit.settings.gamma, learnit.settings.K, learnit.settings.L, learnit.settings.lam) == (1.0, 2, 0, 0.0)


# ------------------------------------------------------------------------------------------- end to end
def _check_outputs(out: Path, summary: dict, test_steps: int = 3) -> None:
    from PIL import Image

    for picture in PICTURES:
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and min(image.size) > 100, picture
    written = json.loads((out / "summary.json").read_text())
    assert written["test_psnr"] == summary["test_psnr"]
    for method in ("ECoP", "Learnit"):
        curve = written["test_psnr"][method]["mean_per_step"]
        assert len(curve) == test_steps + 1 and all(np.isfinite(curve))


def _learner(path: Path, model: torch.nn.Module, **config) -> ContextPruningMetaLearner:
    learner = ContextPruningMetaLearner(model, **config)
    learner.load(path)
    return learner


@needs_images
def test_image_example_end_to_end(tmp_path):
    from ecop_wrap.data import skimage_crops

    out = tmp_path / "image"
    summary = load_example("image_siren").main([*TINY_SIREN, "--resolution", "16", "--out", str(out), "--threads", "1"])
    _check_outputs(out, summary)
    assert summary["train_signals"] == 6 and summary["test_signals"] == 2
    common = {"inner_lr": 1e-2, "outer_lr": 3e-4, "max_grad_norm": 1.0}
    learnit = _learner(out / "learnit.pt", Siren(2, 3, 16, 2), gamma=1.0, K=2, L=0, lam=0.0, **common)
    ecop = _learner(out / "ecop.pt", Siren(2, 3, 16, 2), gamma=0.25, K=4, L=2, boot_lr=5e-2, **common)
    assert learnit.step_count == 2 and ecop.step_count == 2
    # The script's held-out crops and an independent unscaled full-context fit from the saved Learnit init.
    test = skimage_crops("test", 16, n=2, seed=1)
    reference = plain_fit_psnr(learnit.model, test.coords, test.stacked(), steps=3, lr=1e-2)
    np.testing.assert_allclose(summary["test_psnr"]["Learnit"]["mean_per_step"], reference.mean(1), atol=2e-3)
    # ECoP's test fit is gradient-scaled, but it starts from the saved ECoP init: step 0 must agree.
    ecop_start = plain_fit_psnr(ecop.model, test.coords, test.stacked(), steps=0, lr=1e-2)
    assert summary["test_psnr"]["ECoP"]["mean_per_step"][0] == pytest.approx(float(ecop_start.mean()), abs=2e-3)


@needs_images
def test_video_example_end_to_end_with_camera_pans(tmp_path):
    out = tmp_path / "video"
    args = [*TINY_SIREN, "--source", "pans", "--frames", "3", "--resolution", "8", "--out", str(out), "--threads", "1"]
    summary = load_example("video_siren").main(args)
    _check_outputs(out, summary)
    assert summary["grid"] == [3, 8, 8]


@pytest.mark.skipif(not has_modules("soundfile", "matplotlib"), reason="needs 'ecop-wrap[audio,examples]'")
def test_audio_example_end_to_end_with_a_folder(tmp_path):
    import soundfile

    folder = tmp_path / "wavs"
    folder.mkdir()
    rate = 4000
    time = np.arange(rate // 2) / rate
    for index, pitch in enumerate((180.0, 220.0, 260.0, 310.0, 370.0)):
        wave = 0.4 * np.sin(2 * np.pi * pitch * time) * np.exp(-3 * time)
        soundfile.write(folder / f"tone_{index}.wav", wave, rate)
    out = tmp_path / "audio"
    args = [
        *TINY_SIREN,
        "--audio",
        str(folder),
        "--sample-rate",
        "2000",
        "--seconds",
        "0.1",
        "--crops-per-file",
        "2",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    summary = load_example("audio_siren").main(args)
    _check_outputs(out, summary)
    # every 5th file (tone_0) is held out: the training clips come from the other four, two crops each
    assert summary["grid"] == [200] and summary["test_signals"] == 1 and summary["train_signals"] == 6
    assert all(name.startswith("tone_0.wav@") for name in summary["notes"]["test_clips"])


def test_audio_example_without_speech_explains_where_to_get_it(monkeypatch):
    module = load_example("audio_siren")
    monkeypatch.setattr(module.shutil, "which", lambda program: None)
    with pytest.raises(SystemExit, match="espeak-ng") as exit_info:
        module.main(["--outer-steps", "1"])
    assert "--audio" in str(exit_info.value) and "docs/data.md" in str(exit_info.value)


@pytest.mark.skipif(not has_modules("iris_sample_data", "matplotlib"), reason="needs 'ecop-wrap[sphere,examples]'")
def test_sphere_example_end_to_end(tmp_path):
    out = tmp_path / "sphere"
    summary = load_example("sphere_siren").main([*TINY_SIREN, "--stride", "12", "--out", str(out), "--threads", "1"])
    _check_outputs(out, summary)
    assert summary["grid"] == [13, 16] and summary["args"]["w0"] == 50.0


# ------------------------------------------------------------------------------- latents as classifier data
def test_latent_classification_help_explains_every_flag(capsys, monkeypatch):
    name = "latent_classification"
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in load_example(name).build_parser()._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help.strip(), f"flag {action.option_strings} has no help text"
            assert action.option_strings[0] in text
    module = load_example(name)
    with pytest.raises(SystemExit, match="--test-families"):
        module.main(["--test-families", "Comic Sans"])
    with pytest.raises(SystemExit, match="--classes"):
        module.main(["--classes", "AA"])


def _psnr_db(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (data range 1) over the last two dims, written here rather than taken from the library."""
    return -10 * torch.log10((prediction - target).pow(2).mean(dim=(-2, -1)))


@pytest.mark.skipif(not has_modules("matplotlib", "PIL"), reason="needs 'ecop-wrap[examples]'")
def test_latent_classification_end_to_end_and_resume(tmp_path):
    from PIL import Image

    from ecop_wrap import ModulatedSiren
    from ecop_wrap.data import LatentDataset, glyph_images

    out = tmp_path / "latents"
    module = load_example("latent_classification")
    summary = module.main([*TINY_LATENT, "--out", str(out)])
    for picture in ("reconstructions.png", "latents_pca.png", "meta_training.png"):
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and min(image.size) > 100, picture
    assert json.loads((out / "summary.json").read_text())["accuracy"] == summary["accuracy"]
    assert summary["train_images"] == 9 and summary["test_images"] == 6
    assert summary["outer_steps"] == {"ECoP": 2, "Learnit": 2}
    assert set(summary["accuracy"]) == {"ECoP", "Learnit", "pixels"}
    assert summary["accuracy"]["pixels"]["features"] == 144 and summary["accuracy"]["ECoP"]["features"] == 8
    for result in summary["accuracy"].values():  # fractions of the 6 held-out images
        assert all(a * 6 == pytest.approx(round(a * 6), abs=1e-3) for a in result["test_accuracy_per_seed"])
        assert all(0.0 <= a <= 1.0 for a in result["test_accuracy_per_seed"])
    # Independent check of the saved artefacts: rebuild the held-out glyphs, load the ECoP checkpoint into a fresh
    # model, and evaluate it with plain calls at the zero latent (step 0) and at the saved codes (last step).
    test, labels = glyph_images(2, resolution=12, seed=1, families=["DejaVu Sans Mono", "STIX General"], classes="ABC")
    saved = LatentDataset(out / "codes" / "ecop" / "test")  # written by GradScaledAdapter.encode
    assert torch.equal(saved.labels, labels) and saved.codes["latent"].shape == (6, 8)
    learner = ContextPruningMetaLearner(
        ModulatedSiren(2, 1, 16, 2, latent_dim=8),
        gamma=0.25,
        K=3,
        L=2,
        lam=0.1,
        adapt=["latent"],
        learn_inner_lr="per_element",
        inner_lr=0.03,
        rates_lr=3e-5,
        max_grad_norm=1.0,
    )
    learner.load(out / "ecop.pt")
    model, values = learner.model, test.stacked()
    with torch.no_grad():
        start = _psnr_db(model(test.coords).expand_as(values), values)
        params = {**dict(model.named_parameters()), "latent": saved.codes["latent"]}
        end = _psnr_db(torch.func.functional_call(model, params, (test.coords,)), values)
    curve = summary["test_psnr"]["ECoP"]["mean_per_step"]
    assert curve[0] == pytest.approx(float(start.mean()), abs=2e-3)
    assert curve[-1] == pytest.approx(float(end.mean()), abs=2e-3)
    shared = ContextPruningMetaLearner.from_pretrained(out / "ecop-init").model.state_dict()
    assert all(torch.equal(shared[k], v) for k, v in model.state_dict().items())
    # --resume continues from the checkpoints instead of starting again
    resumed = module.main(
        [*TINY_LATENT, "--out", str(out), "--resume", "--outer-steps", "3", "--classifier-seeds", "1"]
    )
    assert resumed["outer_steps"] == {"ECoP": 3, "Learnit": 3}


# -------------------------------------------------------------------------------------------- README
def _readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def test_readme_quickstart_is_short():
    assert len(_readme_python_block().strip().splitlines()) <= 15


@pytest.mark.skipif(
    not has_modules("skimage"), reason="the quickstart uses scikit-image photographs ('ecop-wrap[images]')"
)
def test_readme_quickstart_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_python_block(), "README.md", "exec"), namespace)
    fit = namespace["fit"]
    assert fit.history["psnr"].shape[0] == 17 and torch.isfinite(fit.history["psnr"]).all()
    assert (tmp_path / "ecop.pt").is_file()
    assert capsys.readouterr().out.strip()


# ------------------------------------------------------------------------------------------- plotting
def _reference_trace(model: torch.nn.Module, coords, values, gamma: float, K: int, lr: float):
    """Plain float64 loop: at each step keep the int(gamma*M) points of largest error, SGD on their MSE."""
    params = {n: p.detach().double().clone().requires_grad_(True) for n, p in model.named_parameters()}
    model = model.double()
    keep = max(1, int(gamma * values.shape[0]))
    masks, errors = [], []
    for _ in range(K):
        pred = torch.func.functional_call(model, params, (coords,))
        error = (pred - values).pow(2).sum(-1).sqrt()
        chosen = torch.argsort(error, descending=True)[:keep]
        mask = torch.zeros(values.shape[0], dtype=torch.bool)
        mask[chosen] = True
        masks.append(mask)
        errors.append(error.detach())
        loss = (pred[chosen] - values[chosen]).pow(2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {
            n: (p - lr * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads, strict=True)
        }
    return torch.stack(masks), torch.stack(errors)


def test_trace_selection_matches_a_plain_pruned_loop():
    from ecop_wrap import trace_selection

    torch.manual_seed(1)
    model = Siren(2, 3, 24, 2).double()
    learner = ContextPruningMetaLearner(model, gamma=0.25, K=6, L=0, lam=0.0, inner_lr=5e-2)
    coords = torch.rand(48, 2, dtype=torch.float64) * 2 - 1
    values = torch.rand(48, 3, dtype=torch.float64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trace = trace_selection(learner, (coords, values))
    assert trace.steps == [0, 3, 5]
    ref_masks, ref_errors = _reference_trace(model, coords, values, 0.25, 6, 5e-2)
    assert torch.equal(trace.masks, ref_masks[[0, 3, 5]])
    torch.testing.assert_close(trace.errors, ref_errors[[0, 3, 5]], atol=1e-10, rtol=1e-8)
    assert trace.masks.sum(1).tolist() == [12, 12, 12]
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), "trace_selection must not modify the model"
    with torch.no_grad():
        torch.testing.assert_close(trace.predictions[0], model(coords))


def test_trace_selection_full_context_and_bad_steps():
    from ecop_wrap import trace_selection

    learner = ContextPruningMetaLearner(Siren(2, 1, 8, 1), gamma=1.0, K=3, L=0, lam=0.0)
    coords, values = torch.rand(10, 2) * 2 - 1, torch.rand(10, 1)
    assert trace_selection(learner, (coords, values), steps=[2]).masks.all()
    with pytest.raises(ValueError, match="steps"):
        trace_selection(learner, (coords, values), steps=[3])
    with pytest.raises(ValueError, match="coords"):
        trace_selection(learner, (coords, values[:5]))
    with pytest.raises(TypeError, match="ContextPruningMetaLearner"):
        trace_selection(learner.model, (coords, values))


@needs_plots
def test_plots_write_pngs_and_reject_mismatched_shapes(tmp_path):
    """Drawing paths are exercised by the end-to-end runs; here the inputs they do not cover, and bad shapes."""
    from PIL import Image

    from ecop_wrap import plotting

    rng = np.random.default_rng(0)
    path = plotting.plot_psnr_curves({"a": rng.random((5, 3)), "b": torch.rand(5)}, tmp_path / "p.png", x=range(5))
    with Image.open(path) as image:
        assert image.format == "PNG"
    images = rng.random((2, 6, 5, 3))
    with pytest.raises(ValueError, match="masks"):
        plotting.plot_selection(
            images[0], [0, 1], np.ones((1, 6, 5)), np.ones((1, 6, 5)), images[:1], tmp_path / "x.png"
        )
    with pytest.raises(ValueError, match="original"):
        plotting.plot_selection(images, [0], np.ones((1, 6)), np.ones((1, 6)), images[:1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="curves"):
        plotting.plot_psnr_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="x has"):
        plotting.plot_psnr_curves({"a": [1.0, 2.0]}, tmp_path / "x.png", x=[0, 1, 2])
    with pytest.raises(ValueError, match="originals"):
        plotting.plot_reconstructions(images[0, 0], {}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plotting_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from ecop_wrap import plotting

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'ecop-wrap\[examples\]'"):
        plotting.plot_psnr_curves({"a": [1.0, 2.0]}, tmp_path / "p.png")


# ----------------------------------------------------------------------------------------------- docs
def _docs_conf():
    """docs/conf.py as a module (it holds the list of public modules and where each name is documented)."""
    pytest.importorskip("sphinx", reason="the docs need 'ecop-wrap[docs]'")
    pytest.importorskip("myst_parser", reason="the docs need 'ecop-wrap[docs]'")
    spec = importlib.util.spec_from_file_location("docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)  # type: ignore[union-attr]
    return conf


def test_api_page_documents_every_public_module():
    conf = _docs_conf()
    listed = re.findall(r"^\.\. public-module:: (\S+)$", (ROOT / "docs" / "api.rst").read_text(), flags=re.M)
    assert listed == list(conf.PUBLIC_MODULES)


def test_each_public_name_is_documented_in_the_module_that_owns_it():
    import ecop_wrap
    import ecop_wrap.data

    conf = _docs_conf()
    for module_name in conf.PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            home = conf.home_module(name, getattr(module, name))
            assert getattr(importlib.import_module(home), name) is getattr(module, name)
    assert conf.home_module("Siren", ecop_wrap.Siren) == "ecop_wrap.models"
    assert conf.home_module("psnr", ecop_wrap.psnr) == "ecop_wrap.metrics"
    assert conf.home_module("ContextPruningMetaLearner", ecop_wrap.ContextPruningMetaLearner) == "ecop_wrap"
    assert conf.home_module("SKIMAGE_TRAIN", ecop_wrap.data.SKIMAGE_TRAIN) == "ecop_wrap.data"


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-")


def _api_object(conf, dotted: str) -> object:
    """The object a ``#ecop_wrap...`` link names, checking it is documented under that name."""
    module_name = max((m for m in conf.PUBLIC_MODULES if dotted == m or dotted.startswith(m + ".")), key=len)
    obj: object = importlib.import_module(module_name)
    rest = dotted[len(module_name) + 1 :].split(".") if dotted != module_name else []
    if rest:
        assert rest[0] in obj.__all__, f"{rest[0]} is not in {module_name}.__all__"
        assert conf.home_module(rest[0], getattr(obj, rest[0])) == module_name, f"{dotted} is documented elsewhere"
    for part in rest:
        obj = getattr(obj, part)
    return obj


def test_docs_links_resolve():
    conf = _docs_conf()
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        headings = {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            if path:
                assert (page.parent / path).exists(), f"{page.name} links to missing {target}"
            elif anchor.startswith("ecop_wrap"):
                assert _api_object(conf, anchor) is not None
            else:
                assert anchor in headings, f"{page.name} links to #{anchor}, which is not one of its headings"
