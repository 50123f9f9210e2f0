"""What the tests of the example scripts share: tiny command lines (seconds per run), loading a script as a
module, the pictures every script writes, and the plain float64 fit their test curves are checked against.

Imported as ``from example_helpers import ...`` (conftest.py puts tests/ on the path).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from reference import ref_fit

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PICTURES = ("reconstructions.png", "selection.png", "psnr_per_step.png", "meta_training.png")


def as_argv(**flags: object) -> list[str]:
    """``--flag-name value`` for every keyword (underscores become dashes); ``True`` gives the bare switch."""
    argv: list[str] = []
    for name, value in flags.items():
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


#: Meta-training and testing of the ECoP-vs-Learnit examples, shrunk: K, L and test steps too.
TINY_RUN = {
    "outer_steps": 2,
    "batch_size": 2,
    "train_signals": 6,
    "test_signals": 2,
    "show": 2,
    "inner_steps": 4,
    "bootstrap_steps": 2,
    "learnit_steps": 2,
    "test_steps": 3,
    "no_progress": True,
    "seed": 0,
}
#: The four ``*_siren.py`` examples.
TINY_SIREN = as_argv(**TINY_RUN, hidden_features=16, hidden_layers=2)
#: ``video_nerv.py``: a NeRV with 4 channels on 4 frames of 8x8.
TINY_NERV = as_argv(
    **TINY_RUN,
    hidden_features=8,
    hidden_layers=1,
    channels=4,
    num_frequencies=4,
    frames=4,
    resolution=8,
    threads=1,
)
#: ``lightning_image.py``: 8x8 crops, SIREN of width 16.
TINY_LIGHTNING = as_argv(
    resolution=8,
    train_signals=8,
    test_signals=2,
    batch_size=2,
    hidden_features=16,
    hidden_layers=2,
    inner_steps=2,
    bootstrap_steps=1,
    test_steps=2,
    no_progress=True,
)
#: ``latent_classification.py``: 12x12 glyphs of three characters.
TINY_LATENT = as_argv(
    resolution=12,
    train_per_class=3,
    test_per_class=2,
    classes="ABC",
    hidden_features=16,
    hidden_layers=2,
    latent_dim=8,
    outer_steps=2,
    batch_size=3,
    inner_steps=3,
    bootstrap_steps=2,
    learnit_steps=2,
    fit_steps=3,
    fit_batch=4,
    classifier_hidden=16,
    classifier_epochs=3,
    classifier_seeds=2,
    show=3,
    no_progress=True,
    threads=1,
)


def has_modules(*names: str) -> bool:
    """Whether every module is installed (optional dependencies of the examples)."""
    return all(importlib.util.find_spec(name) is not None for name in names)


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (its folder goes on sys.path for ``_common``)."""
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plain_fit_psnr(model: torch.nn.Module, coords: torch.Tensor, values: torch.Tensor, steps: int, lr: float):
    """Per-signal full-context SGD in float64 from ``model``'s parameters (``tests/reference.py``'s ``ref_fit``,
    unscaled); the PSNR before and after every step, ``[steps + 1, N]`` for values ``[N, M, D]``."""
    model = copy.deepcopy(model).double()
    curves = []
    for signal in values.double():
        _, mse = ref_fit(model, coords.double(), signal, steps=steps, lr=lr, gamma=1.0, scaling="none")
        curves.append(-10 * torch.log10(mse))
    return torch.stack(curves, dim=1)
