"""Constructor arguments kept by the library's models, so a saved initialization can rebuild its architecture."""

from __future__ import annotations

import copy
import json
from typing import Any

__all__ = ["RecordsInitKwargs"]


class RecordsInitKwargs:
    """Mixin of the library's INRs: :attr:`init_kwargs` holds the constructor arguments as plain JSON values.

    ``type(model)(**model.init_kwargs)`` builds the same architecture (its parameters freshly initialised);
    :meth:`~ecop_wrap.ContextPruningMetaLearner.save_pretrained` writes them to ``config.json``.
    """

    _init_kwargs: dict[str, Any]

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """The constructor arguments (a copy): ints, floats, strings and lists, as ``json`` writes them."""
        return copy.deepcopy(self._init_kwargs)

    def _record_init_kwargs(self, **kwargs: Any) -> None:
        """Keep ``kwargs`` (already converted to plain values by the model); refuse anything JSON cannot write."""
        try:
            json.dumps(kwargs)
        except (TypeError, ValueError) as exc:  # a programming error in a model, not a user error
            raise TypeError(f"{type(self).__name__}: constructor arguments are not JSON-serialisable: {exc}") from exc
        self._init_kwargs = kwargs
