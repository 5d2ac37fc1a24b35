"""Built-in vocabularies: the class lists of the benchmarks OVDiff is evaluated on.

Each is a JSON file in ``protodb/data/vocabularies/`` with the keys

- ``name`` (str), ``description`` (str), ``source`` (str: dataset paper / class-order reference);
- ``classes`` (list[str]): class names, unique, in dataset order;
- ``background`` (bool): whether the dataset labels a background class besides ``classes``;
- ``label_offset`` (int): dataset label value of ``classes[i]`` is ``i + label_offset``
  (1 where file value 0 is the background or "other": voc, context, coco-object, ade20k; 0 otherwise);
  ``protodb.segment.datasets`` reads it from here;
- ``ignore_index`` (int): label value not scored (void / unlabelled);
- ``renames`` (optional, dict[str, str]): our name -> the dataset's original name.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources

from protodb.errors import InvalidInput

_REQUIRED = ("name", "description", "classes", "background", "label_offset", "ignore_index", "source")


def _folder():
    return resources.files("protodb").joinpath("data", "vocabularies")


@lru_cache(maxsize=1)
def _load_all() -> dict[str, dict]:
    vocabularies: dict[str, dict] = {}
    for entry in sorted(_folder().iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        doc = json.loads(entry.read_text(encoding="utf-8"))
        missing = [key for key in _REQUIRED if key not in doc]
        classes = doc.get("classes")
        if missing or not isinstance(classes, list) or len(set(classes)) != len(classes) or not classes:
            raise ValueError(f"built-in vocabulary {entry.name} is broken (missing {missing} or bad classes)")
        vocabularies[doc["name"]] = doc
    return vocabularies


def builtin_vocabularies() -> dict[str, dict]:
    """All built-in vocabularies, name -> document (a fresh copy each call)."""
    return copy.deepcopy(_load_all())


def builtin_names() -> list[str]:
    """Names of the built-in vocabularies, sorted."""
    return sorted(_load_all())


def load_builtin(name: str) -> dict:
    """One built-in vocabulary document (a fresh copy); InvalidInput listing the names if unknown."""
    key = str(name).strip().lower()
    vocabularies = _load_all()
    if key not in vocabularies:
        raise InvalidInput(
            f"no built-in vocabulary {name!r}; available: {', '.join(sorted(vocabularies))}"
        )
    return copy.deepcopy(vocabularies[key])


__all__ = ["builtin_vocabularies", "builtin_names", "load_builtin"]
