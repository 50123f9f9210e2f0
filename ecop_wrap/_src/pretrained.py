"""A shareable meta-learned initialization: a directory with ``config.json``, ``model.safetensors`` and a
``README.md`` model card, as the Hugging Face hub mixins lay it out (see ``docs/sharing.md``).

Nothing in the directory is a pickle: the configuration is JSON, the tensors are safetensors. The library's own
models are rebuilt from a fixed table of their classes (:data:`MODEL_CLASSES`); a class name in ``config.json``
is looked up in that table and never imported, and any other model must be passed by the caller.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from torch import nn

from ..models import FourierFeatureMLP, HashGridINR, ModulatedSiren, NeRV, Siren
from ..models._init_kwargs import RecordsInitKwargs
from .config import ECoPConfig
from .hub import resolve_directory

if TYPE_CHECKING:
    from .learner import ContextPruningMetaLearner

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "MODEL_CLASSES",
    "PRETRAINED_FORMAT",
    "RATE_PREFIX",
    "WEIGHTS_NAME",
    "from_pretrained",
    "save_pretrained",
]

PRETRAINED_FORMAT = "ecop-wrap-pretrained/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: key prefix of the learned inner rates in ``model.safetensors`` (the model's state dict keys have none).
RATE_PREFIX = "inner_lr."
#: the only classes ``from_pretrained`` builds from a name in ``config.json``.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (Siren, FourierFeatureMLP, ModulatedSiren, HashGridINR, NeRV)
}

_REQUIRED_KEYS = ("format", "library_version", "ecop_config", "adapted", "learn_inner_lr", "model", "weights_sha256")
_OPTIONAL_KEYS = ("library_name", "meta_steps")
_MODEL_KEYS = ("class", "init_kwargs", "python_class")


# ------------------------------------------------------------------------------------------------- saving
def save_pretrained(
    learner: ContextPruningMetaLearner,
    directory: str | os.PathLike[str],
    *,
    training_data: str | None = None,
    training_steps: int | None = None,
    results: str | Mapping[str, Any] | None = None,
    description: str | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``directory`` (created if needed).

    Each file is written atomically; other files in the directory are left alone. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = safetensors.torch.save(_tensors_of(learner), metadata={"format": "pt", "ecop_wrap": PRETRAINED_FORMAT})
    config = _config_of(learner, hashlib.sha256(weights).hexdigest())
    _write_atomic(directory / WEIGHTS_NAME, weights)
    _write_atomic(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    steps = learner.step_count if training_steps is None else int(training_steps)
    card = _model_card(config, training_data=training_data, steps=steps, results=results, description=description)
    _write_atomic(directory / CARD_NAME, card.encode())
    return directory


def _tensors_of(learner: ContextPruningMetaLearner) -> dict[str, torch.Tensor]:
    """theta_0 (the model's state dict) and the learned rates under :data:`RATE_PREFIX`, as CPU copies."""
    state = learner.model.state_dict()
    clash = [k for k in state if k.startswith(RATE_PREFIX)]
    if clash:
        raise ValueError(f"model state dict keys {clash} start with {RATE_PREFIX!r}, the prefix of the learned rates")
    # clone: safetensors refuses tensors that share memory (tied weights, views)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    tensors.update(
        {RATE_PREFIX + n: r.detach().to("cpu", copy=True).contiguous() for n, r in learner.inner_lrs.items()}
    )
    return tensors


def _config_of(learner: ContextPruningMetaLearner, weights_sha256: str) -> dict[str, Any]:
    import ecop_wrap  # the package, for its version (imported lazily: this module is part of it)

    return {
        "format": PRETRAINED_FORMAT,
        "library_name": "ecop-wrap",
        "library_version": ecop_wrap.__version__,
        "ecop_config": learner.config.to_dict(),
        "adapted": list(learner.adapted),
        "learn_inner_lr": learner.config.learn_inner_lr,
        "meta_steps": learner.step_count,
        "model": _model_entry(learner.model),
        "weights_sha256": weights_sha256,
    }


def _model_entry(model: nn.Module) -> dict[str, Any]:
    """The class name and constructor arguments of a library model; only the class path of any other one."""
    cls = type(model)
    entry: dict[str, Any] = {"class": None, "python_class": f"{cls.__module__}.{cls.__qualname__}"}
    if MODEL_CLASSES.get(cls.__name__) is cls and isinstance(model, RecordsInitKwargs):
        kwargs = model.init_kwargs
        if _shapes(_build(cls, kwargs, device="meta")) == _shapes(model):
            entry.update({"class": cls.__name__, "init_kwargs": kwargs})
        # else: changed after construction (a layer replaced); from_pretrained then needs model=
    return entry


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _model_card(
    config: dict[str, Any],
    *,
    training_data: str | None,
    steps: int,
    results: str | Mapping[str, Any] | None,
    description: str | None,
) -> str:
    """A model card: YAML metadata for the Hub, then what was learned, on what, and how to use it."""
    ecop = config["ecop_config"]
    model = config["model"]["class"] or config["model"]["python_class"]
    lines = [
        "---",
        "library_name: ecop-wrap",
        "tags:",
        "- ecop-wrap",
        "- implicit-neural-representation",
        "- meta-learning",
        "---",
        "",
        f"# Meta-learned initialization of a {model}",
        "",
        description or "An INR initialization meta-learned with Error-based Context Pruning (ECoP, ecop-wrap).",
        "",
        "## Training data",
        "",
        training_data or "Not described by the author.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| outer (meta) steps | {steps} |",
        f"| adapted per signal | {', '.join(config['adapted'])} |",
        f"| learned inner rates | {config['learn_inner_lr'] or 'no (fixed inner_lr)'} |",
        *(f"| {key} | {ecop[key]} |" for key in ("gamma", "K", "L", "lam", "inner_lr", "selection")),
        f"| ecop-wrap | {config['library_version']} |",
        "",
        "## Results",
        "",
        *_results_lines(results),
        "",
        "## Usage",
        "",
        "```python",
        "from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter",
        "",
        'learner = ContextPruningMetaLearner.from_pretrained("path/or/owner-name")'
        + ("" if config["model"]["class"] else "  # model=<your module>"),
        "fit = GradScaledAdapter(learner).fit((coords, values))  # coords [M, C], values [M, D]",
        "```",
        "",
    ]
    return "\n".join(lines)


def _results_lines(results: str | Mapping[str, Any] | None) -> list[str]:
    if results is None:
        return ["Not reported by the author."]
    if isinstance(results, str):
        return [results]
    return ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in results.items())]


# ------------------------------------------------------------------------------------------------ loading
def from_pretrained(
    cls: type[ContextPruningMetaLearner],
    source: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    device: str | torch.device | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    **learner_kwargs: Any,
) -> ContextPruningMetaLearner:
    """A learner of class ``cls`` at the initialization saved in ``source`` (see the learner's method)."""
    directory = resolve_directory(source, revision, token, cache_dir, local_files_only)
    saved = _read_config(directory / CONFIG_NAME)
    config = _ecop_config(saved["ecop_config"], saved["learn_inner_lr"])
    weights = (directory / WEIGHTS_NAME).read_bytes()
    if hashlib.sha256(weights).hexdigest() != saved["weights_sha256"]:
        raise ValueError(f"{directory / WEIGHTS_NAME} does not match the SHA-256 digest recorded in config.json")
    tensors = safetensors.torch.load(weights)
    if model is None:
        model = _rebuild(saved["model"]).to(device=device, dtype=_saved_dtype(tensors))
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    else:
        _check_user_model(saved["model"], model)
    adapted = _check_tensors(tensors, model, saved["adapted"], config)
    wanted = set(adapted)
    learner = cls.from_config(model, config, adapt=lambda name, _: name in wanted, **learner_kwargs)
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(RATE_PREFIX)})
    with torch.no_grad():
        for name, rate in learner.inner_lrs.items():
            rate.copy_(tensors[RATE_PREFIX + name])
    return learner


def _read_config(path: Path) -> dict[str, Any]:
    """``config.json`` as a dict with exactly the known keys, else a ValueError naming what is wrong."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: not a directory written by save_pretrained") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(saved, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(saved).__name__}")  # noqa: TRY004 - a bad file
    _check_keys(f"{path}", saved, _REQUIRED_KEYS, _OPTIONAL_KEYS)
    if saved["format"] != PRETRAINED_FORMAT:
        raise ValueError(f"{path}: format {saved['format']!r} is not {PRETRAINED_FORMAT!r}")
    if not isinstance(saved["model"], dict):
        raise ValueError(f"{path}: 'model' must be an object, got {type(saved['model']).__name__}")  # noqa: TRY004
    _check_keys(f"{path}: 'model'", saved["model"], ("class",), _MODEL_KEYS[1:])
    adapted = saved["adapted"]
    if not isinstance(adapted, list) or not adapted or not all(isinstance(n, str) for n in adapted):
        raise ValueError(f"{path}: 'adapted' must be a non-empty list of parameter names, got {adapted!r}")
    return saved


def _check_keys(where: str, data: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in data]
    unknown = sorted(k for k in data if k not in required + optional)
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}")


def _ecop_config(data: Any, learn_inner_lr: Any) -> ECoPConfig:
    if not isinstance(data, dict):
        raise ValueError(f"config.json: 'ecop_config' must be an object, got {type(data).__name__}")  # noqa: TRY004
    known = {f.name for f in dataclasses.fields(ECoPConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config.json: 'ecop_config' has unknown keys {unknown}")
    try:
        config = ECoPConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"config.json: invalid 'ecop_config': {exc}") from exc
    if config.learn_inner_lr != learn_inner_lr:
        raise ValueError(
            f"config.json: 'learn_inner_lr' is {learn_inner_lr!r} but 'ecop_config' has {config.learn_inner_lr!r}"
        )
    return config


def _rebuild(entry: dict[str, Any]) -> nn.Module:
    """The library model named in ``entry``, from :data:`MODEL_CLASSES` only."""
    name = entry["class"]
    if name is None:
        raise ValueError(
            f"the saved model is not one of the library's ({entry.get('python_class', 'a custom class')}): "
            "pass model=<a module of that architecture> to from_pretrained"
        )
    cls = MODEL_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(
            f"config.json names model class {name!r}, which is not one of the library's models "
            f"{sorted(MODEL_CLASSES)}; classes are never imported from a name in the file: pass model= to load "
            "into your own module"
        )
    return _build(cls, entry.get("init_kwargs"), device="cpu")


def _saved_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The floating dtype of the saved model tensors (a float64 initialization is rebuilt in float64)."""
    dtypes = {v.dtype for k, v in tensors.items() if v.is_floating_point() and not k.startswith(RATE_PREFIX)}
    return dtypes.pop() if len(dtypes) == 1 else None


def _build(cls: type[nn.Module], kwargs: Any, *, device: str) -> nn.Module:
    """``cls(**kwargs)`` after checking the argument names, without touching torch's global RNG."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"config.json: init_kwargs of {cls.__name__} must be an object, got {kwargs!r:.80}")  # noqa: TRY004
    accepted = [p for p in inspect.signature(cls).parameters if p != "generator"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"config.json: {cls.__name__} takes no arguments {unknown}; it takes {accepted}")
    with torch.random.fork_rng(devices=[]), torch.device(device):
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config.json: {cls.__name__}(**init_kwargs) failed: {exc}") from exc


def _check_user_model(entry: dict[str, Any], model: nn.Module) -> None:
    """A library model passed as ``model=`` must have the saved constructor arguments (a clearer error than shapes)."""
    name, kwargs = entry["class"], entry.get("init_kwargs")
    if not isinstance(name, str) or MODEL_CLASSES.get(name) is not type(model) or not isinstance(kwargs, dict):
        return
    assert isinstance(model, RecordsInitKwargs)  # every class of the table records its arguments
    own = model.init_kwargs
    changed = [f"{k}: saved {kwargs.get(k)!r} vs model {v!r}" for k, v in sorted(own.items()) if kwargs.get(k) != v]
    if changed:
        raise ValueError(f"model= is a {name} built with other arguments than the saved one: " + "; ".join(changed))


def _check_tensors(
    tensors: dict[str, torch.Tensor], model: nn.Module, adapted: list[str], config: ECoPConfig
) -> list[str]:
    """Raise a ValueError naming every mismatch between the saved tensors and ``model``; returns ``adapted``."""
    own = _shapes(model)
    saved = {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith(RATE_PREFIX)}
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise ValueError(f"{WEIGHTS_NAME} does not fit the model: missing {missing}, unexpected {unexpected}")
    wrong = [f"{k}: saved {saved[k]} vs model {own[k]}" for k in own if saved[k] != own[k]]
    if wrong:
        raise ValueError(f"{WEIGHTS_NAME} shapes do not match the model: " + "; ".join(wrong))
    named = dict(model.named_parameters())
    bad = [n for n in adapted if n not in named or not named[n].requires_grad]
    if bad or adapted != [n for n in named if n in set(adapted)]:
        raise ValueError(f"config.json adapts {adapted}, which are not trainable parameters of the model in its order")
    rates = {k[len(RATE_PREFIX) :]: tuple(v.shape) for k, v in tensors.items() if k.startswith(RATE_PREFIX)}
    expected: dict[str, tuple[int, ...]] = {}
    if config.learn_inner_lr is not None:
        expected = {n: (config.K,) if config.learn_inner_lr == "per_tensor" else own[n] for n in adapted}
    if rates != expected:
        raise ValueError(f"{WEIGHTS_NAME} holds learned rates {rates} but the configuration needs {expected}")
    return adapted
