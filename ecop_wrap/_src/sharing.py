"""Sharing a meta-learned initialization, as methods of the learner: ``save_pretrained``, ``from_pretrained`` and
``push_to_hub`` (the directory format is :mod:`ecop_wrap._src.pretrained`'s, the Hub side :mod:`.hub`'s)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from .learner import ContextPruningMetaLearner

__all__ = ["Sharing"]


class Sharing:
    """The learner's sharing methods (its base class)."""

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        training_data: str | None = None,
        training_steps: int | None = None,
        results: str | dict[str, Any] | None = None,
        description: str | None = None,
    ) -> os.PathLike[str]:
        """Write theta_0 as a shareable directory: ``config.json`` (the configuration, the adapted names, the
        model's class and constructor arguments), ``model.safetensors`` (the model's state dict and the learned
        rates) and a ``README.md`` model card; nothing is pickled (``docs/sharing.md``). Unlike :meth:`save` it
        keeps no optimizer or RNG state: it is the initialization to fit from, not a run to resume.

        Args:
            directory: created if needed; the three files are replaced atomically, other files left alone.
            training_data, training_steps, results, description: what the model card says about the data, the
                outer steps (default :attr:`step_count`) and the results (text or ``{metric: value}``).

        Returns:
            ``directory`` as a ``pathlib.Path``.
        """
        from .pretrained import save_pretrained

        return save_pretrained(
            cast("ContextPruningMetaLearner", self),
            directory,
            training_data=training_data,
            training_steps=training_steps,
            results=results,
            description=description,
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str],
        model: nn.Module | None = None,
        *,
        device: str | torch.device | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> ContextPruningMetaLearner:
        """A learner at the initialization :meth:`save_pretrained` wrote.

        Everything is checked before anything is built or changed: a tampered or mismatched directory (unknown
        keys, a model class that is not one of ``ecop_wrap.models``, wrong parameter names or shapes, a
        ``model.safetensors`` that does not match its digest) raises a ``ValueError`` naming what is wrong.

        Args:
            source: a directory, or a Hugging Face Hub repo id ``"owner/name"`` (needs
                ``pip install 'ecop-wrap[hub]'``; ``revision``, ``token``, ``cache_dir`` and
                ``local_files_only`` are passed to ``huggingface_hub.snapshot_download``).
            model: None to rebuild the library model named in ``config.json`` (by a fixed table of the library's
                classes; no name from the file is ever imported), or your own module of the saved architecture,
                whose parameters are overwritten.
            device: where a rebuilt model goes (default CPU).
            kwargs: ``optimizer``, ``outer_lr``, ``rates_lr``, ``gradncp_layer``, ``process_group``, ``seed``
                as in the constructor (to meta-train further).
        """
        from .pretrained import from_pretrained

        return from_pretrained(
            cast("type[ContextPruningMetaLearner]", cls),
            source,
            model,
            device=device,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            **kwargs,
        )

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload :meth:`save_pretrained`'s directory to the Hugging Face Hub as one commit; returns its URL.

        Needs ``pip install 'ecop-wrap[hub]'`` and network access. ``options``: ``commit_message``, ``private``,
        ``token``, ``branch``, ``create_pr`` (as in ``huggingface_hub``'s ``ModelHubMixin.push_to_hub``) and
        the model card's keyword arguments of :meth:`save_pretrained`.
        """
        from .hub import push_to_hub

        return push_to_hub(cast("ContextPruningMetaLearner", self), repo_id, **options)
