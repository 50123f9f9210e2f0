"""examples/lightning_image.py: training steps, exact resume from a Lightning checkpoint, held-out validation.

Skipped without the ``lightning`` extra (and scikit-image for the crops). Tiny settings: 8x8 crops, SIREN of
width 16. The resumed run must match the uninterrupted one bit for bit, and the held-out PSNR that validation
logs must match a plain float64 per-signal fit (tests/reference.py).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from example_helpers import TINY_LIGHTNING
from reference import ref_fit

lightning = pytest.importorskip("lightning")
pytest.importorskip("skimage")

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "lightning_image.py"
QUIET = {"enable_progress_bar": False, "logger": False, "enable_model_summary": False, "num_sanity_val_steps": 0}

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
]


@pytest.fixture(scope="module")
def example() -> Any:
    spec = importlib.util.spec_from_file_location("example_lightning_image", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(autouse=True)
def _quiet_lightning_logs():
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


class _StateAtTrainStart(lightning.Callback):
    """Copies the learner's state when training starts, i.e. after Lightning restored the checkpoint."""

    state: dict[str, Any] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.state = copy.deepcopy(pl_module.learner.state_dict())


def _assert_identical(actual: Any, expected: Any, where: str = "state") -> None:
    """Bit-for-bit equality of nested dicts, lists and tensors (dtype and shape included)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_identical(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def test_help_runs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning_image.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--max-steps", "--resolution", "--batch-size", "--ckpt-path", "--output", "--accelerator"):
        assert flag in text


def test_batches_keep_the_shared_grid_convention(example):
    args = example.build_parser().parse_args(TINY_LIGHTNING)
    module = example.module_from_args(args)
    module.trainer = example.make_trainer(args, **QUIET)  # setup() reads its device; nothing is run
    module.setup("fit")
    coords, values = next(iter(module.train_dataloader()))
    assert coords.shape == (64, 2) and values.shape == (2, 64, 3)  # no batch dimension added to the grid
    batches = example.StepBatches(module.train_set, 2, seed=0)
    later = example.StepBatches(module.train_set, 2, seed=0, start=5)
    stream = iter(batches)
    for _ in range(5):
        next(stream)
    _assert_identical(next(iter(later)), next(stream))  # batch 5 is the same whichever step the stream starts at


def test_resume_from_a_lightning_checkpoint_is_bit_identical(example, tmp_path):
    # Random selection, so the pruning RNG changes every step and resuming must restore it too.
    args = example.build_parser().parse_args(
        [
            *TINY_LIGHTNING,
            "--selection",
            "random",
            "--max-steps",
            "4",
            "--ckpt-every",
            "2",
            "--val-every",
            "2",
            "--output",
            str(tmp_path),
        ]
    )
    straight = example.module_from_args(args)
    trainer = example.make_trainer(args, **QUIET)
    trainer.fit(straight)
    assert straight.learner.step_count == 4 and trainer.global_step == 4  # Lightning counted every outer step
    assert math.isfinite(trainer.callback_metrics["val/psnr"])  # validation ran in between

    checkpoint = tmp_path / "checkpoints" / "step=2.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2 and saved["ecop_learner"]["step"] == 2
    assert saved["optimizer_states"][0]["state"] == {}  # the Adam state lives only in the learner's entry
    assert saved["ecop_learner"]["optimizer"]["state"]  # ... where it is
    final = straight.learner.state_dict()
    assert not torch.equal(saved["ecop_learner"]["generator"], final["generator"])  # the RNG did move

    resumed = example.module_from_args(args)
    at_start = _StateAtTrainStart()
    trainer = example.make_trainer(args, callbacks=[at_start], **QUIET)
    trainer.fit(resumed, ckpt_path=checkpoint)
    _assert_identical(at_start.state, saved["ecop_learner"], "restored")  # model, Adam, step, RNG, config
    _assert_identical(resumed.learner.state_dict(), final, "after 2 + 2 steps")  # same batches, same updates
    assert trainer.global_step == 4


def test_validation_fits_held_out_crops_like_a_float64_reference(example, tmp_path):
    args = example.build_parser().parse_args([*TINY_LIGHTNING, "--output", str(tmp_path)])
    module = example.module_from_args(args)
    trainer = example.make_trainer(args, **QUIET)
    logged = trainer.validate(module, verbose=False)[0]

    coords, values = module.test_set.coords.double(), module.test_set.stacked().double()
    model = copy.deepcopy(module.inr).double()
    final, initial = [], []
    for signal in values:
        _, mse = ref_fit(
            model, coords, signal, steps=args.test_steps, lr=args.inner_lr, gamma=args.gamma, scaling="norm"
        )
        initial.append(-10 * torch.log10(mse[0]))
        final.append(-10 * torch.log10(mse[-1]))
    assert logged["val/psnr_init"] == pytest.approx(float(torch.stack(initial).mean()), abs=1e-3)
    assert logged["val/psnr"] == pytest.approx(float(torch.stack(final).mean()), abs=1e-3)
    assert logged["val/psnr"] > logged["val/psnr_init"]  # the fit improved the held-out crops


def test_command_line_run_writes_checkpoints_and_logs(example, tmp_path, capsys):
    module = example.main(
        [*TINY_LIGHTNING, "--max-steps", "2", "--ckpt-every", "1", "--val-every", "2", "--output", str(tmp_path)]
    )
    assert module.learner.step_count == 2
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"step=1.ckpt", "step=2.ckpt", "last.ckpt"}
    assert list((tmp_path / "logs").rglob("metrics.csv"))
    assert "held-out PSNR" in capsys.readouterr().out
