"""Checkpoints: bit-identical resume, atomic writes, and all-or-nothing loads that say what is wrong."""

from __future__ import annotations

import copy
import os
import zipfile
from pathlib import Path

import pytest
import torch
from reference import TinySiren

import ecop_wrap._src.checkpoint as learner_module
from ecop_wrap import ContextPruningMetaLearner, make_grid

CFG = {"gamma": 0.25, "K": 2, "L": 1, "lam": 1.0, "coord_range": None}


def _model(seed: int = 0, width: int = 10, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TinySiren(2, 3, width=width).to(dtype)


def _learner(model: torch.nn.Module, *, seed: int = 0, **kw) -> ContextPruningMetaLearner:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = {**CFG, "selection": "random", **kw}
    return ContextPruningMetaLearner(model, optimizer=opt, seed=seed, **cfg)


def _batches(n: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(123)
    grid = make_grid((6, 6), dtype=dtype)
    return [(grid, torch.rand(3, 36, 3, generator=gen, dtype=dtype)) for _ in range(n)]


def _snapshot(learner: ContextPruningMetaLearner) -> dict:
    """Deep copy of everything a checkpoint carries, for exact comparisons."""
    opt = learner.optimizer.state_dict()
    return {
        "params": [p.detach().clone() for p in learner.model.parameters()],
        "buffers": [b.clone() for b in learner.model.buffers()],
        "optim": {
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for i, s in opt["state"].items()
        },
        "lr": [g["lr"] for g in opt["param_groups"]],
        "rng": learner.generator.get_state(),
        "step": learner.step_count,
    }


def _assert_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert torch.equal(a["rng"], b["rng"])
    assert a["lr"] == b["lr"]
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a["buffers"], b["buffers"], strict=True))
    assert a["optim"].keys() == b["optim"].keys()
    for i in a["optim"]:
        for key, value in a["optim"][i].items():
            other = b["optim"][i][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


def _trained(tmp_path, steps: int = 3) -> tuple[ContextPruningMetaLearner, str]:
    learner = _learner(_model())
    for batch in _batches(steps):
        learner.meta_step(batch)
    path = str(tmp_path / "ckpt.pt")
    learner.save(path)
    return learner, path


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("selection", ["random", "error"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resume_is_bit_identical(tmp_path, selection, dtype):
    n, m = 3, 3
    batches = _batches(n + m, dtype)
    straight = _learner(_model(dtype=dtype), selection=selection)
    straight_stats = [straight.meta_step(b) for b in batches]

    first = _learner(_model(dtype=dtype), selection=selection)
    for b in batches[:n]:
        first.meta_step(b)
    first.save(tmp_path / "ckpt.pt")
    # a fresh process would build a differently initialised model and a learner with another seed
    resumed = _learner(_model(seed=7, dtype=dtype), seed=99, selection=selection)
    resumed.load(tmp_path / "ckpt.pt")
    resumed_stats = [resumed.meta_step(b) for b in batches[n:]]

    _assert_identical(_snapshot(resumed), _snapshot(straight))
    assert resumed_stats == straight_stats[n:]


def test_resume_without_rng_or_optimizer_state_diverges(tmp_path):
    """Control for the test above: with only the weights restored, random selection and Adam differ."""
    batches = _batches(5)
    straight = _learner(_model())
    for b in batches:
        straight.meta_step(b)
    first = _learner(_model())
    for b in batches[:3]:
        first.meta_step(b)
    partial = _learner(_model(seed=7), seed=99)
    partial.model.load_state_dict(first.model.state_dict())
    partial.step_count = first.step_count
    for b in batches[3:]:
        partial.meta_step(b)
    assert not all(
        torch.equal(a, b) for a, b in zip(partial.model.parameters(), straight.model.parameters(), strict=True)
    )


def test_state_dict_carries_everything(tmp_path):
    learner, _ = _trained(tmp_path)
    state = learner.state_dict()
    assert state["step"] == 3
    assert state["config"]["selection"] == "random" and state["config"]["gamma"] == 0.25
    assert set(state["model"]) == set(learner.model.state_dict())
    assert len(state["optimizer"]["state"]) == len(list(learner.model.parameters()))
    assert torch.equal(state["generator"], learner.generator.get_state())
    other = _learner(_model(seed=3), seed=5)
    other.load_state_dict(learner.state_dict())
    _assert_identical(_snapshot(other), _snapshot(learner))


def test_load_accepts_memory_options_that_do_not_change_the_result(tmp_path):
    _, path = _trained(tmp_path)
    other = _learner(_model(seed=3), chunk_size=7, checkpoint=True)
    other.load(path)
    assert other.step_count == 3


# ------------------------------------------------------------------------------------- from_checkpoint
def test_from_checkpoint_rebuilds_the_learner_and_resumes_bit_identically(tmp_path):
    batches = _batches(6)
    straight = _learner(_model(), learn_inner_lr="per_tensor")
    straight_stats = [straight.meta_step(b) for b in batches]
    first = _learner(_model(), learn_inner_lr="per_tensor")
    for b in batches[:3]:
        first.meta_step(b)
    first.save(tmp_path / "ckpt.pt")

    # no configuration, optimizer or seed given: all of it comes from the file (Adam's lr 1e-2 included)
    resumed = ContextPruningMetaLearner.from_checkpoint(_model(seed=7), tmp_path / "ckpt.pt", seed=99)
    assert resumed.config == first.config
    assert resumed.adapted == first.adapted
    assert resumed.step_count == 3
    resumed_stats = [resumed.meta_step(b) for b in batches[3:]]
    _assert_identical(_snapshot(resumed), _snapshot(straight))
    assert all(torch.equal(resumed.inner_lrs[n], straight.inner_lrs[n]) for n in straight.inner_lrs)
    assert resumed_stats == straight_stats[3:]


def test_from_checkpoint_restores_the_adapted_subset(tmp_path):
    saved = _learner(_model(), adapt=["out.*"])
    saved.meta_step(_batches(1)[0])
    saved.save(tmp_path / "ckpt.pt")
    loaded = ContextPruningMetaLearner.from_checkpoint(_model(seed=4), tmp_path / "ckpt.pt")
    assert loaded.adapted == ["out.weight", "out.bias"]
    _assert_identical(_snapshot(loaded), _snapshot(saved))


def test_from_checkpoint_accepts_memory_changes_and_refuses_algorithm_changes(tmp_path):
    saved, path = _trained(tmp_path)
    loaded = ContextPruningMetaLearner.from_checkpoint(_model(seed=5), path, config_changes={"chunk_size": 7})
    assert loaded.config.chunk_size == 7
    batch = _batches(1)[0]
    chunked, plain = loaded.meta_step(batch), saved.meta_step(batch)  # chunks sum in another order
    assert chunked == pytest.approx(plain, rel=1e-5)

    model = _model(seed=5)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="K: checkpoint 2 vs learner 3"):
        ContextPruningMetaLearner.from_checkpoint(model, path, config_changes={"K": 3})
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_from_checkpoint_refuses_missing_and_corrupted_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        ContextPruningMetaLearner.from_checkpoint(_model(), tmp_path / "absent.pt")
    _, path = _trained(tmp_path)
    data = bytearray(Path(path).read_bytes())
    Path(path).write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError, match="truncated or corrupted"):
        ContextPruningMetaLearner.from_checkpoint(_model(), path)
    learner_module.write_checkpoint({"format": "x", "config": "not a dict"}, path)  # a valid digest
    with pytest.raises(ValueError, match="no configuration dict"):
        ContextPruningMetaLearner.from_checkpoint(_model(), path)


# ------------------------------------------------------------------------------------------ atomic save
def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    learner, path = _trained(tmp_path)
    before = Path(path).read_bytes()
    learner.meta_step(_batches(1)[0])

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(learner_module.torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        learner.save(path)
    monkeypatch.undo()
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # the temporary file was removed
    fresh = _learner(_model(seed=3))
    fresh.load(path)
    assert fresh.step_count == 3


def test_crash_during_first_save_leaves_no_file(tmp_path, monkeypatch):
    learner = _learner(_model())
    monkeypatch.setattr(learner_module.torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        learner.save(tmp_path / "new.pt")
    assert os.listdir(tmp_path) == []


def test_save_overwrites_atomically_and_fsyncs(tmp_path, monkeypatch):
    learner, path = _trained(tmp_path)
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(learner_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(learner_module.os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b))[1])
    learner.save(path)
    assert len(replaced) == 1 and replaced[0][1] == path and replaced[0][0] != path
    assert len(synced) >= 1  # the file (and the directory where supported) before/after the rename


def test_save_gives_the_mode_of_a_plain_open_not_mkstemps_0600(tmp_path):
    learner = _learner(_model())
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.pt"
        learner.save(fresh)
        assert fresh.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.pt"
        kept.write_bytes(b"")
        kept.chmod(0o640)
        learner.save(kept)  # overwriting keeps the existing file's permissions
        assert kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


# -------------------------------------------------------------------------------------- damaged files
def _fresh_with_state() -> tuple[ContextPruningMetaLearner, dict]:
    learner = _learner(_model(seed=11), seed=4)
    learner.meta_step(_batches(1)[0])  # non-trivial optimizer state to protect
    return learner, _snapshot(learner)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_refused_and_changes_nothing(tmp_path, keep):
    _, path = _trained(tmp_path)
    data = Path(path).read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: int(keep * len(data))])
    learner, before = _fresh_with_state()
    with pytest.raises(ValueError, match="truncated or corrupted"):
        learner.load(bad)
    _assert_identical(_snapshot(learner), before)


def test_corrupted_bytes_never_load_a_wrong_state(tmp_path):
    """Flip one byte at 64 places: each load either fails cleanly or yields exactly the saved state."""
    saved, path = _trained(tmp_path)
    want = _snapshot(saved)
    data = Path(path).read_bytes()
    learner, before = _fresh_with_state()
    reset = copy.deepcopy(learner.state_dict())
    refused = 0
    for offset in range(0, len(data), max(1, len(data) // 64)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x5A
        bad = tmp_path / "bad.pt"
        bad.write_bytes(bytes(damaged))
        try:
            learner.load(bad)
        except ValueError as exc:
            # refused or not depends on where the flipped byte lands, so pytest.raises cannot be used
            assert "corrupted" in str(exc) or "checkpoint" in str(exc)  # noqa: PT017
            _assert_identical(_snapshot(learner), before)
            refused += 1
        else:  # the byte was in zip padding or metadata that does not reach the state
            _assert_identical(_snapshot(learner), want)
            learner.load_state_dict(copy.deepcopy(reset))
    assert refused > 32  # most bytes matter; in particular every tensor payload byte is covered by the digest


def test_flipped_tensor_byte_is_caught_by_the_digest(tmp_path):
    """torch.load alone accepts a flipped bit inside a tensor's storage; the digest must not."""
    _, path = _trained(tmp_path)
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(Path(path).read_bytes())
    header = info.header_offset  # local file header: 30 bytes, then the name and an extra field
    name_len = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(data[header + 28 : header + 30], "little")
    data[header + 30 + name_len + extra_len + info.file_size // 2] ^= 0x01
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    assert isinstance(torch.load(bad, weights_only=True), dict)  # plain torch.load does not notice
    learner, before = _fresh_with_state()
    with pytest.raises(ValueError, match="SHA-256"):
        learner.load(bad)
    _assert_identical(_snapshot(learner), before)


def test_load_runs_no_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"format": "ecop-wrap/1", "payload": Evil()}, path)
    learner, before = _fresh_with_state()
    with pytest.raises(ValueError, match="could not read checkpoint"):
        learner.load(path)
    assert not marker.exists()
    _assert_identical(_snapshot(learner), before)


def test_missing_file_raises_file_not_found(tmp_path):
    learner, _ = _fresh_with_state()
    with pytest.raises(FileNotFoundError):
        learner.load(tmp_path / "nope.pt")


def test_plain_torch_save_without_digest_is_refused_by_load(tmp_path):
    saved, _ = _trained(tmp_path)
    path = tmp_path / "plain.pt"
    torch.save(saved.state_dict(), path)
    learner, before = _fresh_with_state()
    with pytest.raises(ValueError, match="no digest"):
        learner.load(path)
    _assert_identical(_snapshot(learner), before)
    learner.load_state_dict(torch.load(path, weights_only=True))  # the documented in-memory route works
    _assert_identical(_snapshot(learner), _snapshot(saved))


# ------------------------------------------------------------------------------------------- mismatches
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"gamma": 0.5}, "gamma: checkpoint 0.25 vs learner 0.5"),
        ({"K": 3}, "K: checkpoint 2 vs learner 3"),
        ({"selection": "error"}, "selection: checkpoint 'random' vs learner 'error'"),
        ({"lam": 2.0}, "lam"),
        ({"inner_lr": 0.05}, "inner_lr"),
    ],
)
def test_configuration_mismatch_is_refused_naming_the_key(tmp_path, change, needle):
    _, path = _trained(tmp_path)
    learner = _learner(_model(seed=11), **change)
    before = _snapshot(learner)
    with pytest.raises(ValueError, match="configuration does not match") as info:
        learner.load(path)
    assert needle in str(info.value)
    _assert_identical(_snapshot(learner), before)


def test_parameter_name_mismatch_is_refused_naming_them(tmp_path):
    _, path = _trained(tmp_path)

    class Renamed(TinySiren):
        def __init__(self) -> None:
            super().__init__(2, 3, width=10)
            self.head = self.out
            del self.out

        def forward(self, x):
            for lin in self.hidden:
                x = torch.sin(self.w0 * lin(x))
            return self.head(x)

    learner = _learner(Renamed())
    before = _snapshot(learner)
    with pytest.raises(ValueError, match="do not match the model") as info:
        learner.load(path)
    message = str(info.value)
    assert "head.weight" in message and "out.weight" in message
    _assert_identical(_snapshot(learner), before)


def test_parameter_shape_mismatch_is_refused_naming_them(tmp_path):
    _, path = _trained(tmp_path)
    learner = _learner(_model(width=12))
    before = _snapshot(learner)
    with pytest.raises(ValueError, match="shapes do not match") as info:
        learner.load(path)
    assert "hidden.0.weight: (10, 2) vs (12, 2)" in str(info.value)
    _assert_identical(_snapshot(learner), before)


def test_optimizer_group_mismatch_is_refused(tmp_path):
    _, path = _trained(tmp_path)
    model = _model(seed=11)
    params = list(model.parameters())
    opt = torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=1e-2)
    learner = ContextPruningMetaLearner(model, optimizer=opt, seed=0, selection="random", **CFG)
    learner.meta_step(_batches(1)[0])
    before = _snapshot(learner)
    with pytest.raises(ValueError, match="parameter groups of sizes"):
        learner.load(path)
    _assert_identical(_snapshot(learner), before)


def test_failure_while_applying_rolls_everything_back(tmp_path):
    """A state that passes the checks but fails half-way (here: a bad step counter) changes nothing."""
    saved, _ = _trained(tmp_path)
    state = saved.state_dict()
    state["step"] = "three"
    learner, before = _fresh_with_state()
    with pytest.raises(ValueError, match="left unchanged"):
        learner.load_state_dict(state)
    _assert_identical(_snapshot(learner), before)
    assert learner.meta_step(_batches(1)[0])["skipped"] == 0.0  # and the learner still works


def test_not_a_checkpoint_is_refused(tmp_path):
    learner, before = _fresh_with_state()
    with pytest.raises(ValueError, match="not an ecop-wrap checkpoint"):
        learner.load_state_dict({"model": {}})
    with pytest.raises(ValueError, match="format"):
        learner.load_state_dict({**learner.state_dict(), "format": "other/9"})
    _assert_identical(_snapshot(learner), before)


def test_rng_state_from_another_device_type_warns_and_loads_the_rest(tmp_path):
    """A CUDA generator's state (16 bytes) cannot seed a CPU generator: the model must still load."""
    saved, _ = _trained(tmp_path)
    state = copy.deepcopy(saved.state_dict())
    state["generator"] = torch.zeros(16, dtype=torch.uint8)
    learner = _learner(_model(seed=3), seed=5)
    rng = learner.generator.get_state()
    with pytest.warns(UserWarning, match="another device type") as caught:
        learner.load_state_dict(state)
    assert caught[0].filename == __file__  # the user's line, also when reached through load or from_checkpoint
    assert torch.equal(learner.generator.get_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(learner.model.parameters(), saved.model.parameters(), strict=True))
    assert learner.step_count == saved.step_count


def test_malformed_rng_state_is_refused(tmp_path):
    saved, _ = _trained(tmp_path)
    learner, before = _fresh_with_state()
    with pytest.raises(ValueError, match="RNG state"):
        learner.load_state_dict({**saved.state_dict(), "generator": torch.zeros(4, 4)})
    _assert_identical(_snapshot(learner), before)


# ------------------------------------------------------------------------------------------ old releases
OLD_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_0.1.0.ckpt"


def _old_release_run(**config) -> ContextPruningMetaLearner:
    """The run that wrote tests/data/checkpoint_0.1.0.ckpt with ecop-wrap 0.1.0 (commit 022bf9e)."""
    torch.manual_seed(0)
    model = TinySiren(2, 3, width=10)
    learner = ContextPruningMetaLearner(
        model, gamma=0.25, K=2, L=1, lam=1.0, coord_range=None, seed=0, outer_lr=1e-3, **config
    )
    gen = torch.Generator().manual_seed(1)
    grid = make_grid((6, 6))
    for _ in range(2):
        learner.meta_step((grid, torch.rand(2, 36, 3, generator=gen)))
    return learner


def test_checkpoint_of_release_0_1_0_loads_and_matches_todays_numbers():
    # 0.1.0 ran the bootstrap's passes in pruned-size pieces; with them today's code gives the same bits
    today = _old_release_run(bootstrap_chunk="pruned")
    torch.manual_seed(0)
    fresh = ContextPruningMetaLearner(
        TinySiren(2, 3, width=10), gamma=0.25, K=2, L=1, lam=1.0, coord_range=None, seed=5, outer_lr=1e-3
    )
    fresh.load(OLD_CHECKPOINT)
    assert fresh.step_count == 2
    assert torch.equal(fresh.generator.get_state(), today.generator.get_state())
    for (name, old), new in zip(fresh.model.named_parameters(), today.model.parameters(), strict=True):
        assert torch.equal(old, new), f"{name}: the redesign changed a number"
    # today's default runs them in one piece: the same sums added in another order, so the last bits move
    for (name, old), new in zip(fresh.model.named_parameters(), _old_release_run().model.parameters(), strict=True):
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="learn_inner_lr"):
        ContextPruningMetaLearner(
            TinySiren(2, 3, width=10), gamma=0.25, K=2, L=1, lam=1.0, learn_inner_lr="per_tensor"
        ).load(OLD_CHECKPOINT)
