"""Sphinx configuration: the markdown pages through MyST and the API reference through autodoc.

Build (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The API page (``api.rst``) uses one directive defined here, ``public-module``: it runs ``automodule`` on the
names in the module's ``__all__`` that are documented there, and lists the names it re-exports from another
public module as links to where they are documented, so every public name appears exactly once.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer, PycodeError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.parsing import nested_parse_to_nodes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout, not an installed copy

import ecop_wrap  # noqa: E402 - needs the path above

logger = logging.getLogger(__name__)

project = "ecop-wrap"
author = "ecop-wrap authors"
copyright = "ecop-wrap authors"
release = version = ecop_wrap.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False  # annotations name torch and numpy types whose inventories are not fetched (no network)

# Google-style docstrings; "Shapes:" is the project's own section, rendered like "Notes:".
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shapes", "Notes")]
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields of the class, so dataclass fields are not described twice

# forward() of the nn.Modules is what calling them does; the class docstring says what that is.
autodoc_default_options = {"member-order": "bysource", "exclude-members": "forward"}
autodoc_inherit_docstrings = False  # not torch's docstrings of nn.Module methods
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_mock_imports: list[str] = []

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "alabaster"
html_title = f"ecop-wrap {release}"
html_static_path: list[str] = []

#: The modules the API page documents, most general first.
PUBLIC_MODULES = (
    "ecop_wrap",
    "ecop_wrap.extend",
    "ecop_wrap.models",
    "ecop_wrap.data",
    "ecop_wrap.plotting",
    "ecop_wrap.quality",
    "ecop_wrap.memory",
    "ecop_wrap.distributed",
    "ecop_wrap.signals",
    "ecop_wrap.metrics",
    "ecop_wrap.typing",
)


def home_module(name: str, value: Any) -> str:
    """The public module that documents ``value``: the most specific one listing it in ``__all__`` that also
    contains the module defining it (so ``Siren`` lives in ``ecop_wrap.models``, ``psnr`` in
    ``ecop_wrap.metrics``, and the learner, defined in a private module, at the top level)."""
    listing = [m for m in PUBLIC_MODULES if name in _public_names(m) and getattr(_module(m), name) is value]
    defined_in = getattr(value, "__module__", None)
    if isinstance(defined_in, str):
        owners = [m for m in listing if defined_in == m or defined_in.startswith(m + ".")]
        if owners:
            return max(owners, key=len)
    return max(listing, key=len)


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _public_names(module: str) -> list[str]:
    names = getattr(_module(module), "__all__", None)
    if names is None:
        raise ValueError(f"{module} has no __all__: the API page documents exactly what __all__ lists")
    return list(names)


def _data_comment(name: str, value: Any) -> list[str]:
    """The ``#:`` comment above the assignment of the constant ``name`` in whichever ecop_wrap module makes it."""
    for module in sorted(m for m in sys.modules if m == "ecop_wrap" or m.startswith("ecop_wrap.")):
        if getattr(sys.modules[module], name, None) is not value:
            continue
        try:
            comment = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", name))
        except PycodeError:
            continue
        if comment:
            return list(comment)
    return []


class PublicModule(SphinxDirective):
    """``.. public-module:: ecop_wrap.x``: autodoc of what ``ecop_wrap.x.__all__`` exports, each name once."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module = self.arguments[0]
        if module not in PUBLIC_MODULES:
            raise self.error(f"{module} is not in docs/conf.py's PUBLIC_MODULES")
        objects, constants, elsewhere = [], [], []
        for name in _public_names(module):
            value = getattr(_module(module), name)
            home = home_module(name, value)
            if home != module:
                elsewhere.append(f":py:obj:`~{home}.{name}`")
            elif inspect.isclass(value) or callable(value):
                objects.append(name)
            else:
                constants.append(name)
        lines = [f".. automodule:: {module}"]
        if objects:
            lines.append(f"   :members: {', '.join(objects)}")
        lines.append("")
        for name in constants:  # autodoc would show the docstring of the value's type (tuple, dict)
            value = getattr(_module(module), name)
            lines += [f".. py:data:: {name}", f"   :module: {module}", f"   :value: {value!r}", ""]
            lines += [f"   {line}" for line in _data_comment(name, value)] + [""]
        if elsewhere:
            lines += [f"Also exported by ``{module}``: {', '.join(elsewhere)}.", ""]
        return nested_parse_to_nodes(self.state, "\n".join(lines), source=f"<public-module {module}>")


def check_every_public_name_is_documented(app: Sphinx, env: Any) -> None:
    """Warn (an error under ``-W``) for a name in a public ``__all__`` that the API page does not describe."""
    described = env.get_domain("py").objects
    for module in PUBLIC_MODULES:
        for name in _public_names(module):
            target = f"{home_module(name, getattr(_module(module), name))}.{name}"
            if target not in described:
                logger.warning("%s.%s is in __all__ but %s is not described in the API reference", module, name, target)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("public-module", PublicModule)
    app.connect("env-check-consistency", check_every_public_name_is_documented)
    return {"parallel_read_safe": True}
