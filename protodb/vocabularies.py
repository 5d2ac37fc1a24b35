"""Built-in vocabularies: the class lists of the benchmarks OVDiff is evaluated on, and the large
name lists (ADE-847, PASCAL Context-459, LVIS, Objects365, OpenImages) users reach for.

Each is a JSON file in ``protodb/data/vocabularies/`` with the keys

- ``name`` (str), ``description`` (str), ``source`` (str: dataset paper / defining file / class-order
  reference);
- ``classes`` (list[str]): class names, unique, in dataset order, each already a class name
  (:func:`protodb.names.normalize_class_name` leaves it unchanged);
- ``background`` (bool): whether the dataset labels a background class besides ``classes``;
- ``label_offset`` (int): dataset label value (or category id) of ``classes[i]`` is ``i + label_offset``
  (1 where file value 0 is the background or "other": voc, context, coco-object, ade20k; LVIS and
  Objects365 category ids start at 1; 0 otherwise); ``protodb.segment.datasets`` reads it from here;
- ``ignore_index`` (int or null): label value not scored (void / unlabelled); null for detection
  datasets, which have no label maps;
- ``renames`` (optional, dict[str, str]): our name -> the dataset's original name.

The large lists add (all optional):

- ``dataset_names`` (list[str], parallel to ``classes``): each class as the dataset writes it;
  ``classes`` is :func:`display_names` of it (the test suite re-derives it);
- ``fixes`` (dict[str, str]): dataset name -> our name, where the mechanical rule of
  :func:`display_names` is overridden (typos, names shared with the other vocabularies);
- ``synonyms`` (bool): dataset names are comma-separated synonym lists (ADE20K-Full);
- ``dataset_ids`` (list, parallel to ``classes``): the dataset's own id of each class where it is
  not ``i + label_offset`` (ADE20K-Full object ids, OpenImages MIDs);
- ``thing_stuff`` (dict): the thing/stuff split the dataset itself defines: ``source`` (str),
  ``stuff`` (list of class names), ``things`` (``"rest"``: every other class is a thing; absent: the
  dataset says nothing about the others);
- ``license`` (str): the terms of the dataset the names come from; ``names_from`` (str): the
  repository file this copy of the list was taken from.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Iterable, Mapping

from protodb.errors import InvalidInput
from protodb.names import dataset_display_name, normalize_class_name

_REQUIRED = ("name", "description", "classes", "background", "label_offset", "ignore_index", "source")


def _folder():
    return resources.files("protodb").joinpath("data", "vocabularies")


def display_names(dataset_names: Iterable[str], *, fixes: Mapping[str, str] | None = None,
                  synonyms: bool = False) -> list[str]:
    """protodb class names for a dataset's class names, in order, unique.

    For each dataset name: its entry in ``fixes`` when there is one; otherwise its candidates (with
    ``synonyms`` the comma-separated synonyms in order, else the whole name), each through
    :func:`protodb.names.dataset_display_name`, and the first one no earlier class has taken; when
    every candidate is taken, the first with `` (2)``, `` (3)``, ... (dataset order decides).
    A fix that collides with an earlier class raises ValueError (the data file is wrong).
    """
    fixes = dict(fixes or {})
    out: list[str] = []
    taken: set[str] = set()
    for raw in dataset_names:
        if raw in fixes:
            name = normalize_class_name(fixes[raw])
            if name in taken:
                raise ValueError(f"fix {raw!r} -> {name!r} collides with an earlier class")
        else:
            parts = [p for p in raw.split(",") if p.strip()] if synonyms else [raw]
            candidates = [dataset_display_name(p) for p in parts]
            name = next((c for c in candidates if c not in taken), None)
            n = 2
            while name is None:
                name = f"{candidates[0]} ({n})" if f"{candidates[0]} ({n})" not in taken else None
                n += 1
        taken.add(name)
        out.append(name)
    return out


def _check(doc: dict, filename: str) -> None:
    missing = [key for key in _REQUIRED if key not in doc]
    classes = doc.get("classes")
    if missing or not isinstance(classes, list) or len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"built-in vocabulary {filename} is broken (missing {missing} or bad classes)")
    for key in ("dataset_names", "dataset_ids"):
        if key in doc and len(doc[key]) != len(classes):
            raise ValueError(f"built-in vocabulary {filename}: {key} has {len(doc[key])} entries, "
                             f"classes {len(classes)}")
    kinds = doc.get("thing_stuff")
    if kinds is not None:
        unknown = sorted(set(kinds.get("stuff", ())) - set(classes))
        if unknown or kinds.get("things", "rest") != "rest" or not kinds.get("source"):
            raise ValueError(f"built-in vocabulary {filename}: thing_stuff is broken ({unknown[:3]})")


@lru_cache(maxsize=1)
def _load_all() -> dict[str, dict]:
    vocabularies: dict[str, dict] = {}
    for entry in sorted(_folder().iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        doc = json.loads(entry.read_text(encoding="utf-8"))
        _check(doc, entry.name)
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


def dataset_kind(doc: Mapping, name: str) -> str | None:
    """"thing" or "stuff" for class ``name`` as vocabulary ``doc``'s dataset defines it; None when
    the dataset says nothing about it (no ``thing_stuff``, or a class it leaves open)."""
    kinds = doc.get("thing_stuff")
    if not kinds or name not in doc["classes"]:
        return None
    if name in kinds.get("stuff", ()):
        return "stuff"
    return "thing" if kinds.get("things") == "rest" else None


@lru_cache(maxsize=1)
def _dataset_kinds() -> dict[str, tuple[str, tuple[str, ...]]]:
    votes: dict[str, dict[str, list[str]]] = {}
    for vname, doc in _load_all().items():
        for cls in doc["classes"]:
            kind = dataset_kind(doc, cls)
            if kind is not None:
                votes.setdefault(cls, {}).setdefault(kind, []).append(vname)
    return {cls: (kind, tuple(names)) for cls, by in votes.items() if len(by) == 1
            for kind, names in by.items()}


def dataset_kinds() -> dict[str, tuple[str, tuple[str, ...]]]:
    """class name -> (kind, built-in vocabularies whose dataset defines it so), over every built-in
    vocabulary with a ``thing_stuff`` split; a name two datasets label differently is left out."""
    return dict(_dataset_kinds())


__all__ = ["builtin_vocabularies", "builtin_names", "load_builtin", "display_names", "dataset_kind",
           "dataset_kinds"]
