"""The compiled extension ``graphopt._C``, loaded in one place.

Modules below the facade load the C++ core through ``load()`` instead of writing
``from graphopt import _C`` themselves. Why: ``_C`` is a shared library, so the import analysis
behind the layer contract (import-linter / grimp, ``[tool.importlinter]`` in pyproject.toml)
cannot see it as a module and records ``from graphopt import _C`` as an import of the package
facade ``graphopt/__init__.py``, which only cli, demo and bench may import; the facade imports
every layer, so each such line would read as an upward import of everything. The extension sits
below every layer (it imports no Python module of graphopt), so it is loaded by its full module
name here, which is what the import really is.

The import is lazy: nothing needs the extension to import, and an unbuilt extension fails where
it is used, with Python's ImportError naming ``graphopt._C``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def load() -> ModuleType:
    """``graphopt._C``; raises ImportError when the extension is not built (``make venv``)."""
    return importlib.import_module("graphopt._C")


def load_or_none() -> ModuleType | None:
    """``graphopt._C``, or None when it is not built (callers that have a fallback)."""
    try:
        return load()
    except ImportError:
        return None
