"""Deferred imports for heavy modules (in the spirit of PEP 690 and SciPy's ``lazy_loader``).

``torch`` and ``lancedb`` each cost well over a second to import; metadata commands (``protodb ls``,
``info``, ``vocab list``) need neither. A module declares a heavy dependency at its top with
``name = lazy_import("package.module")``: the name is bound at once, the module is imported when
one of its attributes is first used. Imports stay at the top of each file and point down.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class _LazyModule(ModuleType):
    """Stands for module ``name`` until first use, then forwards to the imported module."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())


def lazy_import(name: str) -> ModuleType:
    """``name`` as a module imported on first attribute access (the real module if already imported)."""
    return sys.modules.get(name) or _LazyModule(name)


def is_loaded(name: str) -> bool:
    """Whether ``name`` has really been imported in this process."""
    return name in sys.modules
