"""Sharing an initialization: save_pretrained / from_pretrained round trips, the fixed model table, refusals of
tampered or mismatched directories (nothing imported, nothing changed), no pickles, the Hub conventions."""

from __future__ import annotations

import builtins
import importlib
import json
import pickle
import struct
import sys
import types
from pathlib import Path

import pytest
import safetensors
import torch
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, make_grid
from ecop_wrap.models import FourierFeatureMLP, HashGridINR, ModulatedSiren, NeRV, Siren

GRID = make_grid((6, 6))
FILES = ("config.json", "model.safetensors", "README.md")


def _values(n: int = 3, channels: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, GRID.shape[0], channels, generator=torch.Generator().manual_seed(seed))


def _trained(learn_inner_lr: str | None = "per_element", steps: int = 2) -> ContextPruningMetaLearner:
    """A latent-only learner after a few outer steps (so theta_0 and the rates are not their initial values)."""
    model = ModulatedSiren(2, 1, 8, 2, latent_dim=3)
    learner = ContextPruningMetaLearner(
        model, gamma=0.5, K=2, L=1, lam=0.1, adapt=["latent"], learn_inner_lr=learn_inner_lr, outer_lr=1e-2, seed=0
    )
    for step in range(steps):
        learner.meta_step((GRID, _values(seed=step)))
    return learner


def _perturbed(model: nn.Module) -> nn.Module:
    """theta_0 moved away from the constructor's initialization, so a rebuilt model must take the saved tensors."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _edit_config(directory: Path, change) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


# -------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("learn_inner_lr", [None, "per_tensor", "per_element"])
def test_round_trip_is_bit_identical_and_fits_the_same(tmp_path, learn_inner_lr):
    learner = _trained(learn_inner_lr)
    learner.save_pretrained(tmp_path / "init")
    loaded = ContextPruningMetaLearner.from_pretrained(tmp_path / "init")
    assert type(loaded.model) is ModulatedSiren and loaded.model is not learner.model
    assert loaded.config == learner.config and loaded.adapted == learner.adapted == ["latent"]
    own, back = learner.model.state_dict(), loaded.model.state_dict()
    assert list(own) == list(back) and all(torch.equal(own[k], back[k]) for k in own)
    assert set(loaded.inner_lrs) == set(learner.inner_lrs)
    assert all(torch.equal(loaded.inner_lrs[n], r) for n, r in learner.inner_lrs.items())
    if learn_inner_lr is not None:  # the rates moved during meta-training: the saved ones were loaded
        assert not torch.equal(learner.inner_lrs["latent"], torch.full_like(learner.inner_lrs["latent"], 1e-2))
    signals = (GRID, _values(4, seed=9))
    fits = [GradScaledAdapter(source, steps=3).fit(signals) for source in (learner, loaded)]
    assert torch.equal(fits[0].params["latent"], fits[1].params["latent"])
    assert torch.equal(fits[0].history["psnr"], fits[1].history["psnr"])


def test_loaded_learner_meta_trains_further_with_given_settings(tmp_path):
    _trained().save_pretrained(tmp_path)
    loaded = ContextPruningMetaLearner.from_pretrained(tmp_path, outer_lr=1e-3, rates_lr=1e-4, seed=3)
    assert loaded.optimizer.param_groups[0]["lr"] == 1e-3 and loaded.optimizer.param_groups[1]["lr"] == 1e-4
    before = loaded.model.modulation.weight.detach().clone()
    stats = loaded.meta_step((GRID, _values()))
    assert stats["skipped"] == 0.0 and not torch.equal(before, loaded.model.modulation.weight)


FAMILIES = {
    "Siren": lambda: Siren(2, 2, 8, 2, w0=20.0, first_w0=60.0, output_offset=0.25),
    "FourierFeatureMLP": lambda: FourierFeatureMLP(2, 2, 4, 3.0, 8, 1, generator=torch.Generator().manual_seed(5)),
    "ModulatedSiren": lambda: ModulatedSiren(2, 2, 8, 1, latent_dim=5, w0=15.0),
    "HashGridINR": lambda: HashGridINR(
        2, 2, levels=3, log2_table_size=5, max_resolution=16, hidden_layers=1, bounds=(-2.0, 2.0)
    ),
    "NeRV": lambda: NeRV((1, 4, 4), blocks=1, channels=[3, 2], hidden_features=8, num_frequencies=3),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_library_model_is_rebuilt_from_the_fixed_table(tmp_path, family):
    model = _perturbed(FAMILIES[family]())
    ContextPruningMetaLearner(model, K=1, L=0, lam=0.0).save_pretrained(tmp_path)
    entry = json.loads((tmp_path / "config.json").read_text())["model"]
    assert entry["class"] == family and entry["init_kwargs"] == model.init_kwargs
    rng = torch.get_rng_state()
    loaded = ContextPruningMetaLearner.from_pretrained(tmp_path, seed=0).model  # a seed: no draw for the learner
    assert torch.equal(torch.get_rng_state(), rng)  # nor for rebuilding the model
    assert type(loaded) is type(model) and loaded.init_kwargs == model.init_kwargs
    own, back = model.state_dict(), loaded.state_dict()
    assert list(own) == list(back) and all(torch.equal(own[k], back[k]) for k in own)
    coords = torch.rand(5, 1) * 2 - 1 if family == "NeRV" else GRID
    with torch.no_grad():
        assert torch.equal(model(coords), loaded(coords))


def test_a_float64_initialization_is_rebuilt_in_float64(tmp_path):
    model = _perturbed(Siren(2, 1, 8, 1).double())
    ContextPruningMetaLearner(model, K=1, L=0, lam=0.0, learn_inner_lr="per_tensor").save_pretrained(tmp_path)
    loaded = ContextPruningMetaLearner.from_pretrained(tmp_path)
    assert all(p.dtype == torch.float64 for p in loaded.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.model.parameters(), strict=True))
    assert loaded.inner_lrs["output.weight"].dtype == torch.float64


class _UserINR(nn.Module):
    """A model the library does not know: it must be passed as model=."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.net(coords)


def test_a_user_model_loads_through_model_argument(tmp_path):
    learner = ContextPruningMetaLearner(_perturbed(_UserINR()), K=2, L=0, lam=0.0, adapt=["net.2.*"])
    learner.save_pretrained(tmp_path)
    entry = json.loads((tmp_path / "config.json").read_text())["model"]
    assert entry["class"] is None and entry["python_class"].endswith("_UserINR")
    with pytest.raises(ValueError, match="pass model="):
        ContextPruningMetaLearner.from_pretrained(tmp_path)
    target = _UserINR()
    loaded = ContextPruningMetaLearner.from_pretrained(tmp_path, model=target)
    assert loaded.model is target and loaded.adapted == ["net.2.weight", "net.2.bias"]
    assert all(torch.equal(a, b) for a, b in zip(learner.model.parameters(), target.parameters(), strict=True))


def test_a_library_model_changed_after_construction_is_saved_as_a_user_model(tmp_path):
    model = Siren(2, 1, 8, 1)
    model.output = nn.Linear(8, 2)  # no longer what its init_kwargs build
    ContextPruningMetaLearner(model, K=1, L=0, lam=0.0).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["class"] is None
    with pytest.raises(ValueError, match="pass model="):
        ContextPruningMetaLearner.from_pretrained(tmp_path)
    rebuilt = Siren(2, 1, 8, 1)
    rebuilt.output = nn.Linear(8, 2)
    loaded = ContextPruningMetaLearner.from_pretrained(tmp_path, model=rebuilt)
    assert torch.equal(loaded.model.output.weight, model.output.weight)


# --------------------------------------------------------------------------------------------- refusals
def _hidden(config):
    config["model"]["init_kwargs"]["hidden_features"] = 16


TAMPERED = {
    "unknown class": (lambda c: c["model"].update({"class": "Transformer"}), "not one of the library's models"),
    "class path": (lambda c: c["model"].update({"class": "os.system"}), "not one of the library's models"),
    "wrong shapes": (_hidden, "shapes do not match"),
    "unknown init argument": (lambda c: c["model"]["init_kwargs"].update({"depth": 3}), "takes no arguments"),
    "bad init argument": (lambda c: c["model"]["init_kwargs"].update({"hidden_layers": 0}), "failed"),
    "unknown key": (lambda c: c.update({"loader": "pickle"}), r"unknown keys \['loader'\]"),
    "missing key": (lambda c: c.pop("adapted"), r"missing keys \['adapted'\]"),
    "unknown model key": (lambda c: c["model"].update({"module": "os"}), r"unknown keys \['module'\]"),
    "unknown config key": (lambda c: c["ecop_config"].update({"beta": 1}), r"unknown keys \['beta'\]"),
    "invalid config": (lambda c: c["ecop_config"].update({"gamma": 2.0}), "invalid 'ecop_config'"),
    "rate mode": (lambda c: c.update({"learn_inner_lr": None}), "'learn_inner_lr' is None"),
    "rates of another mode": (
        lambda c: (
            c.update({"learn_inner_lr": "per_tensor"}),
            c["ecop_config"].update({"learn_inner_lr": "per_tensor"}),
        ),
        "learned rates",
    ),
    "adapted name": (lambda c: c.update({"adapted": ["code"]}), "not trainable parameters"),
    "format": (lambda c: c.update({"format": "ecop-wrap-pretrained/0"}), "format"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_config_is_refused_clearly(tmp_path, case):
    _trained(steps=0).save_pretrained(tmp_path)
    change, message = TAMPERED[case]
    _edit_config(tmp_path, change)
    with pytest.raises(ValueError, match=message):
        ContextPruningMetaLearner.from_pretrained(tmp_path)


def test_a_class_named_in_the_file_is_never_imported(tmp_path, monkeypatch):
    _trained(steps=0).save_pretrained(tmp_path)
    ContextPruningMetaLearner.from_pretrained(tmp_path)  # every module a load needs is imported now
    _edit_config(tmp_path, lambda c: c["model"].update({"class": "evil_h4_payload.Payload"}))
    requested: list[str] = []
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def recording_import(name, *args, **kwargs):
        requested.append(name)
        return real_import(name, *args, **kwargs)

    def recording_import_module(name, *args, **kwargs):
        requested.append(name)
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", recording_import)
    monkeypatch.setattr(importlib, "import_module", recording_import_module)
    modules = set(sys.modules)
    with pytest.raises(ValueError, match=r"evil_h4_payload\.Payload"):
        ContextPruningMetaLearner.from_pretrained(tmp_path)
    assert not any("evil" in name for name in requested)
    assert set(sys.modules) == modules


def test_a_mismatched_user_model_is_refused_and_left_unchanged(tmp_path):
    _trained(steps=1).save_pretrained(tmp_path)
    for model, message in (
        (ModulatedSiren(2, 1, 8, 2, latent_dim=4), "latent_dim: saved 3 vs model 4"),
        (_UserINR(), "missing"),
    ):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=message):
            ContextPruningMetaLearner.from_pretrained(tmp_path, model=model)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tampered_weights_are_refused(tmp_path):
    _trained(steps=0).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        ContextPruningMetaLearner.from_pretrained(tmp_path)


def test_extra_tensors_are_refused_even_with_a_matching_digest(tmp_path):
    import hashlib

    from safetensors.torch import load_file, save

    _trained(steps=0).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    data = save({**tensors, "payload": torch.zeros(2)})
    (tmp_path / "model.safetensors").write_bytes(data)
    _edit_config(tmp_path, lambda c: c.update({"weights_sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(ValueError, match=r"unexpected \['payload'\]"):
        ContextPruningMetaLearner.from_pretrained(tmp_path)


def test_missing_directory_and_a_repo_id_without_the_hub_extra(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ContextPruningMetaLearner.from_pretrained(tmp_path / "nowhere")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed: nothing is downloaded
    with pytest.raises(FileNotFoundError, match=r"ecop-wrap\[hub\]"):
        ContextPruningMetaLearner.from_pretrained("someone/initialization")
    with pytest.raises(ImportError, match=r"ecop-wrap\[hub\]"):
        _trained(steps=0).push_to_hub("someone/initialization")


# ------------------------------------------------------------------------------------------ file format
def test_no_file_in_the_directory_unpickles_and_the_safetensors_header_parses(tmp_path):
    learner = _trained()
    learner.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    for name in FILES:
        data = (tmp_path / name).read_bytes()
        assert data[:2] != b"PK"  # not torch's zip format
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the first bytes make pickle fail with
            pickle.loads(data)
        if name != "model.safetensors":
            with pytest.raises(pickle.UnpicklingError):
                torch.load(tmp_path / name, weights_only=False)
    # recent torch reads safetensors files itself (without unpickling); what it finds is the plain tensors
    with safetensors.safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        plain = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    try:
        read = torch.load(tmp_path / "model.safetensors", weights_only=False)
    except pickle.UnpicklingError:
        read = plain
    assert read.keys() == plain.keys() and all(torch.equal(read[k], plain[k]) for k in plain)
    data = (tmp_path / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    expected = {*learner.model.state_dict(), "inner_lr.latent"}
    assert set(header) - {"__metadata__"} == expected
    assert header["__metadata__"]["format"] == "pt"
    assert torch.equal(plain["inner_lr.latent"], learner.inner_lrs["latent"].detach())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["ecop_config"] == learner.config.to_dict() and config["learn_inner_lr"] == "per_element"
    assert config["adapted"] == ["latent"] and config["library_version"]


def test_the_model_card_says_what_the_user_reports(tmp_path):
    learner = _trained()
    learner.save_pretrained(
        tmp_path, training_data="36 glyph classes in 4 fonts", results={"test PSNR (dB)": 21.5}, description="Codes."
    )
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ecop-wrap\n")
    for text in ("36 glyph classes in 4 fonts", "| test PSNR (dB) | 21.5 |", "Codes.", "| outer (meta) steps | 2 |"):
        assert text in card
    learner.save_pretrained(tmp_path, training_steps=500)
    card = (tmp_path / "README.md").read_text()
    assert "| outer (meta) steps | 500 |" in card and "Not described by the author." in card


# ----------------------------------------------------------------------------------------------------- hub
def _fake_hub(monkeypatch, snapshot: Path | None = None) -> dict:
    """A stand-in ``huggingface_hub`` module that records the calls (no network)."""
    calls: dict = {}

    class HfApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["create_repo"] = {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}
            return types.SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, **kwargs):
            calls["upload_folder"] = kwargs
            calls["files"] = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            return "https://huggingface.co/someone/init/commit/0"

    def snapshot_download(repo_id, **kwargs):
        calls["snapshot_download"] = {"repo_id": repo_id, **kwargs}
        return str(snapshot)

    module = types.ModuleType("huggingface_hub")
    module.HfApi = HfApi
    module.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return calls


def test_push_to_hub_and_load_by_repo_id_follow_the_hub_conventions(tmp_path, monkeypatch):
    learner = _trained()
    calls = _fake_hub(monkeypatch, snapshot=tmp_path)
    url = learner.push_to_hub("someone/init", private=True, token="t", commit_message="first", training_data="x")
    assert url.startswith("https://huggingface.co/")
    assert calls["create_repo"] == {"repo_id": "someone/init", "private": True, "exist_ok": True}
    assert calls["upload_folder"]["repo_type"] == "model" and calls["upload_folder"]["commit_message"] == "first"
    assert calls["files"] == sorted(FILES) and calls["token"] == "t"
    learner.save_pretrained(tmp_path)
    loaded = ContextPruningMetaLearner.from_pretrained("someone/init", revision="v1")
    assert calls["snapshot_download"]["repo_id"] == "someone/init" and calls["snapshot_download"]["revision"] == "v1"
    assert set(calls["snapshot_download"]["allow_patterns"]) == set(FILES)
    assert torch.equal(loaded.model.modulation.weight, learner.model.modulation.weight)
