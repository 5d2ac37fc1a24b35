"""Imports kept off the start-up path of the metadata commands, all listed here.

``protodb ls``, ``info``, ``vocab list`` and ``--help`` start in a fraction of a second because they import
none of the heavy libraries below (torch alone takes over a second). Everywhere else imports are plain and
at the top of each file. Two kinds of import wait until first use, and only these:

* a heavy third-party library (:data:`HEAVY`), either bound at the top of a module with
  ``name = lazy_import("package.module")`` (imported when one of its attributes is first used) or imported
  inside the function that needs it;
* a protodb module that carries such a library, imported inside a function of the module that needs it,
  as listed in :data:`DEFERRED` (the facade defers its services and workflows, the stores their SQLAlchemy
  catalog modules, the command line the web server).

``tests/test_imports.py`` reads every module and fails on a deferred import that is not listed here.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

#: Third-party libraries imported on first use, with what importing them costs.
HEAVY: dict[str, str] = {
    "torch": "1-2 s (and torchvision, CUDA libraries)",
    "transformers": "1-3 s", "diffusers": "1-3 s", "timm": "0.5-1 s", "huggingface_hub": "0.2 s",
    "safetensors": "with torch", "onnx": "0.3 s", "onnxruntime": "0.3 s",
    "lancedb": "1.5-2 s", "pyarrow": "0.3 s", "fsspec": "0.1 s (more with its s3 backend)",
    "sqlalchemy": "0.2-0.4 s (and the ORM schema)", "alembic": "0.3 s",
    "numpy": "0.1 s at every command's start-up otherwise",
    "ray": "2-3 s, an optional extra (protodb[ray])", "fastapi": "0.5 s, an optional extra (protodb[serve])",
    "uvicorn": "an optional extra (protodb[serve])",
}

#: protodb modules imported inside functions: importing module -> {imported module: the heavy library it
#: carries}. Nothing else imports a protodb module anywhere but at the top of a file.
DEFERRED: dict[str, dict[str, str]] = {
    "protodb.api": {
        "protodb.services.container": "sqlalchemy",
        "protodb.models.registry": "torch",
        "protodb.pipeline.build": "torch",
        "protodb.pipeline.vocab_build": "torch",
        "protodb.segment.segmenter": "torch",
        "protodb.segment.index": "numpy",
        "protodb.segment.run": "torch",
        "protodb.segment.inputs": "fsspec",
        "protodb.segment.datasets": "numpy",
        "protodb.segment.evaluate": "torch",
        "protodb.segment.compare": "torch",
        "protodb.inspection": "torch",
        "protodb.distributed.build": "ray",
        "protodb.distributed.segment": "ray",
    },
    "protodb.services.container": {"protodb.services.sharing": "pyarrow", "protodb.services.corrections": "numpy"},
    "protodb.stores": {"protodb.catalog.engine": "sqlalchemy", "protodb.catalog.locks": "sqlalchemy",
                       "protodb.catalog.schema": "sqlalchemy"},
    "protodb_cli.serve": {"protodb.serve.server": "fastapi"},
    "protodb.speed": {"protodb.device": "torch"},
    "protodb.pipeline.config": {"protodb.pipeline.masks": "torch"},
}


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
    """``name`` (a module of a :data:`HEAVY` library) as a module imported on first attribute access (the real
    module if already imported)."""
    if name.split(".")[0] not in HEAVY:
        raise ValueError(f"lazy_import is for the heavy libraries of protodb.lazy.HEAVY, not {name!r}: "
                         "import it at the top of the file")
    return sys.modules.get(name) or _LazyModule(name)
