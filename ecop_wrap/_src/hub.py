"""The Hugging Face Hub side of sharing: a repo id resolved to a downloaded directory, and ``push_to_hub``.

``huggingface_hub`` is the optional dependency of the ``hub`` extra; it is imported only when one of these is
used, so that everything else works offline and without it.
"""

from __future__ import annotations

import importlib
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .learner import ContextPruningMetaLearner

__all__ = ["push_to_hub", "resolve_directory"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_FILES = ["config.json", "model.safetensors", "README.md"]


def resolve_directory(
    source: str | os.PathLike[str],
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
) -> Path:
    """A local directory as it is; a string ``owner/name`` that is not one, downloaded from the Hugging Face Hub."""
    path = Path(source)
    if path.is_dir():
        return path
    if not isinstance(source, str) or not _REPO_ID.match(source) or path.exists():
        raise FileNotFoundError(f"{os.fspath(source)!r} is not a directory written by save_pretrained")
    try:
        hub = _import_hub()
    except ImportError as exc:
        raise FileNotFoundError(
            f"{source!r} is not a local directory; to load it as a Hugging Face Hub repo id, install the hub extra: "
            "pip install 'ecop-wrap[hub]'"
        ) from exc
    local = hub.snapshot_download(
        repo_id=source,
        allow_patterns=_HUB_FILES,
        revision=revision,
        token=token,
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        local_files_only=local_files_only,
    )
    return Path(local)


def _import_hub() -> Any:
    """``huggingface_hub``, the optional dependency of the ``hub`` extra (imported only when it is used)."""
    return importlib.import_module("huggingface_hub")


def push_to_hub(
    learner: ContextPruningMetaLearner,
    repo_id: str,
    *,
    commit_message: str = "Upload an ECoP initialization with ecop-wrap",
    private: bool | None = None,
    token: str | None = None,
    branch: str | None = None,
    create_pr: bool | None = None,
    **card: Any,
) -> str:
    """Save into a temporary directory and upload it as one commit (needs ``pip install 'ecop-wrap[hub]'``)."""
    try:
        hub = _import_hub()
    except ImportError as exc:
        raise ImportError("push_to_hub needs huggingface_hub: pip install 'ecop-wrap[hub]'") from exc
    api = hub.HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        from .pretrained import save_pretrained

        save_pretrained(learner, tmp, **card)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=tmp,
            commit_message=commit_message,
            revision=branch,
            create_pr=create_pr,
        )
    return str(commit)
