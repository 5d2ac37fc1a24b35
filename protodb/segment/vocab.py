"""A vocabulary ready to match: every class's ready sets for the chosen extractors, read once,
filtered (levels, stuff filter) into one match table per extractor on the matching device.

Classes without usable prototypes stop the run with one line naming them all (not only the first)
and the commands that build them; with ``skip_missing`` the run goes on with the others and says
which were left out.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from protodb.entities import FOREGROUND_KINDS, PrototypeSet
from protodb.errors import InvalidInput, NotFound
from protodb.names import Ref, parse_class_list, quoted
from protodb.segment.match import ClassPrototypes, MatchTable, build_match_table
from protodb.services.sets import SetService
from protodb.services.vocabs import VocabService

log = logging.getLogger(__name__)


#: Classes whose prototypes a lazily loaded vocabulary keeps in memory (least recently used dropped first).
LAZY_CACHE_CLASSES = 2048


@dataclass
class LoadedVocabulary:
    """What a run segments with: names, refs, stuff flags, each class's set per extractor and its
    prototypes: all read at load (``lazy=False``, the exhaustive path: one match table per extractor
    built once), or read per class when a table first needs it (``lazy=True``, the two-stage path: only
    the shortlisted classes' prototypes are fetched, the last :data:`LAZY_CACHE_CLASSES` kept)."""

    name: str
    version: int
    refs: list[str]
    names: list[str]
    stuff: list[bool]
    background: bool
    extractors: list[str]
    sets: dict[str, list[PrototypeSet]]  # extractor -> set per class (vocabulary order)
    kinds: list[str]  # prototype kinds read (levels and their background kinds)
    stuff_threshold: float = 0.85
    skipped: list[str] = field(default_factory=list)
    lazy: bool = False
    device: Any = "cpu"
    dtype: Any = torch.float32
    reader: Any = None  # SetService (reads a set's rows)
    tables: dict[str, MatchTable] = field(default_factory=dict)  # the full tables (eager only)
    _cache: "OrderedDict[tuple[str, int], tuple[ClassPrototypes, Any]]" = field(default_factory=OrderedDict)

    def load_all(self) -> None:
        """Read every class's prototypes and build the full tables (the exhaustive path)."""
        for e in self.extractors:
            self.reader.prefetch(self.sets[e])
            classes = [self.class_prototypes(e, i) for i in range(len(self.names))]
            self.tables[e] = build_match_table(classes, background=self.background,
                                               stuff_filter_threshold=self.stuff_threshold,
                                               device=self.device, dtype=self.dtype)

    def class_prototypes(self, extractor: str, index: int) -> ClassPrototypes:
        """Class ``index``'s prototypes for ``extractor`` (read from the store on first use)."""
        return self._entry(extractor, index)[0]

    def _entry(self, extractor: str, index: int) -> tuple[ClassPrototypes, Any]:
        key = (extractor, index)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        pset = self.sets[extractor][index]
        rows = self.reader.prototypes(pset, kinds=self.kinds)
        is_bg = np.array([k.startswith("bg_") for k in rows.kinds], bool)
        vec = torch.from_numpy(rows.vectors)
        ids = list(rows.ids)
        protos = ClassPrototypes(name=pset.class_name, stuff=pset.kind == "stuff", fg=vec[~is_bg], bg=vec[is_bg],
                                 fg_ids=[i for i, b in zip(ids, is_bg) if not b],
                                 bg_ids=[i for i, b in zip(ids, is_bg) if b])
        self._cache[key] = (protos, rows)
        if self.lazy:
            while len(self._cache) > LAZY_CACHE_CLASSES * len(self.extractors):
                self._cache.popitem(last=False)
        return protos, rows

    def loaded_rows(self, extractor: str) -> list[tuple[PrototypeSet, Any]]:
        """(set, PrototypeRows) of the classes whose prototypes are in memory for ``extractor``."""
        return [(self.sets[e][i], entry[1]) for (e, i), entry in list(self._cache.items()) if e == extractor]

    def table_for(self, extractor: str, keep: list[int] | None) -> MatchTable:
        """The full table, or one for the classes ``keep`` (indices) when the pre-filter or the
        shortlist chose some."""
        if (keep is None or len(keep) == len(self.names)) and extractor in self.tables:
            return self.tables[extractor]
        cols = range(len(self.names)) if keep is None else keep
        missing = [self.sets[extractor][i] for i in cols if (extractor, i) not in self._cache]
        if len(missing) > 1:  # one scan of the vector table for all of them, not one per class
            self.reader.prefetch(missing)
        return build_match_table([self.class_prototypes(extractor, i) for i in cols], background=self.background,
                                 stuff_filter_threshold=self.stuff_threshold, device=self.device, dtype=self.dtype)

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "version": self.version, "classes": self.names, "background": self.background,
               "extractors": self.extractors, "sets": {e: [s.ref for s in sets] for e, sets in self.sets.items()}}
        if self.skipped:
            out["skipped"] = self.skipped
        return out

    @property
    def set_ids(self) -> set[str]:
        return {s.id for sets in self.sets.values() for s in sets}


def vocabulary_refs(vocabs: VocabService, vocab: str | None, classes: str | None) -> tuple[str, int, list[str], bool]:
    """(name, version, refs, background default) of ``--vocab`` or ``--classes``."""
    if vocab:
        v = vocabs.show(vocab)
        return v.name, int(v.version), list(v.classes), v.background if v.background is not None else True
    refs = parse_class_list(classes)
    for ref in refs:
        Ref.parse(ref)
    return "ad-hoc", 0, refs, True


_UNKNOWN = "no class "


def _missing_message(problems: list[tuple[str, str]], vocab: str | None) -> str:
    """One line for every class that cannot be used: ``problems`` is [(class name, its message)]. Several
    classes unknown to the database are named together, with the command that builds each."""
    unknown = [n for n, m in problems if m.startswith(_UNKNOWN) and "in this database" in m]
    others = [m for n, m in problems if n not in unknown]
    parts = list(others)
    if len(unknown) == 1:
        parts.insert(0, next(m for n, m in problems if n == unknown[0]))
    elif unknown:
        parts.insert(0, f"no classes {', '.join(repr(n) for n in unknown)} in this database; run: "
                        + "; ".join(f"protodb add-class {quoted(n)}" for n in unknown))
    text = "; ".join(parts)
    if len(problems) > 1:
        text = f"{len(problems)} classes cannot be used: {text}"
    hint = f"; or build the whole vocabulary: protodb add-vocab {vocab}" if vocab and "add-class" in text else ""
    return f"{text}{hint} (or segment with the others: --skip-missing)"


def _known(found: dict[str, list[PrototypeSet]], problems: dict[str, str], refs: list[str], vocab: str | None,
           skip_missing: bool) -> tuple[list[str], list[str]]:
    """(refs the catalog knows, names left out): every unknown class or version is named in one error
    unless ``skip_missing``."""
    keep = [ref for ref in refs if ref in found]
    bad = [(Ref.parse(ref).name, problems[ref].splitlines()[0]) for ref in refs if ref not in found]
    if bad and not skip_missing:
        raise NotFound(_missing_message(bad, vocab))
    for _name, message in bad:
        log.warning("left out of the vocabulary: %s", message)
    if not keep:
        raise NotFound("no class of the vocabulary has usable prototypes; build them with protodb add-class")
    return keep, [n for n, _ in bad]


def _default_extractors(found: dict[str, list[PrototypeSet]], refs: list[str]) -> list[str]:
    """Extractors every class has a ready set for (all of them: an ensemble); first ref decides order."""
    common: list[str] | None = None
    for ref in refs:
        have = [s.extractor for s in found[ref]]
        common = have if common is None else [e for e in common if e in have]
    if not common:
        raise NotFound("the classes share no extractor; rebuild them with a common --extractor NAME")
    return common


def _no_set_message(sets: SetService, ref: str, extractor: str) -> str:
    """What :meth:`SetService.resolve` says when ``ref`` has no ready set for ``extractor``."""
    try:
        sets.resolve(ref, extractor)
    except NotFound as err:
        return str(err)
    return f"class {Ref.parse(ref).name!r} has no prototypes for extractor {extractor}"


def _usable(sets: SetService, found: dict[str, list[PrototypeSet]], refs: list[str], extractors: list[str],
            vocab: str | None, skip_missing: bool) -> tuple[list[str], list[str]]:
    """Refs whose every extractor set exists and has foreground prototypes; the others, or an error."""
    keep, skipped, problems = [], [], []
    for ref in refs:
        problem = None
        by_ext = {s.extractor: s for s in found[ref]}
        for e in extractors:
            pset = by_ext.get(e)
            if pset is None:
                problem = _no_set_message(sets, ref, e)
                break
            if not any(pset.counts.get(k, 0) for k in FOREGROUND_KINDS):
                problem = (f"class {pset.class_name!r} ({pset.ref}, {e}) has no foreground prototypes; rebuild it: "
                           f"protodb add-class {quoted(pset.class_name)} --new-version")
                break
        if problem is None:
            keep.append(ref)
        elif skip_missing:
            log.warning("left out of the vocabulary: %s", problem)
            skipped.append(Ref.parse(ref).name)
        else:
            problems.append((Ref.parse(ref).name, problem))
    if problems:
        raise NotFound(_missing_message(problems, vocab))
    if not keep:
        raise NotFound("no class of the vocabulary has usable prototypes; build them with protodb add-class")
    return keep, skipped


@dataclass(frozen=True)
class ResolvedVocabulary:
    """A vocabulary's usable classes and their sets, before any prototype is read."""

    name: str
    version: int
    refs: list[str]
    background: bool
    extractors: list[str]
    sets: dict[str, list[PrototypeSet]]  # extractor -> set per usable class (vocabulary order)
    skipped: list[str]


def resolve_vocabulary(sets: SetService, vocabs: VocabService, *, vocab: str | None, classes: str | None,
                       extractors: list[str], background: bool | None = None,
                       skip_missing: bool = False) -> ResolvedVocabulary:
    """Look every class up in the catalog (bulk queries) and pick each one's set per extractor."""
    name, version, refs, default_bg = vocabulary_refs(vocabs, vocab, classes)
    if not refs:
        raise InvalidInput("the vocabulary has no classes")
    bg = default_bg if background is None else background
    found, problems = sets.resolve_many(refs)
    refs, unknown = _known(found, problems, refs, vocab, skip_missing)
    exts = list(dict.fromkeys(extractors)) or _default_extractors(found, refs)
    refs, skipped = _usable(sets, found, refs, exts, vocab, skip_missing)
    chosen = {e: [next(s for s in found[ref] if s.extractor == e) for ref in refs] for e in exts}
    return ResolvedVocabulary(name, version, refs, bg, exts, chosen, unknown + skipped)


def load_vocabulary(sets: SetService, vocabs: VocabService, *, vocab: str | None, classes: str | None,
                    extractors: list[str], levels: tuple[str, ...], background: bool | None,
                    stuff_threshold: float, skip_missing: bool, device, dtype, lazy: bool = False,
                    resolved: ResolvedVocabulary | None = None) -> LoadedVocabulary:
    """Look every class up in the catalog; unless ``lazy``, read its prototypes (checksummed) and build
    the tables."""
    r = resolved or resolve_vocabulary(sets, vocabs, vocab=vocab, classes=classes, extractors=extractors,
                                       background=background, skip_missing=skip_missing)
    kinds = list(levels) + [f"bg_{k}" for k in levels]
    first = r.sets[r.extractors[0]]
    loaded = LoadedVocabulary(r.name, r.version, r.refs, [s.class_name for s in first],
                              [s.kind == "stuff" for s in first], r.background, r.extractors, r.sets, kinds,
                              stuff_threshold, list(r.skipped), lazy=lazy, device=device, dtype=dtype, reader=sets)
    if not lazy:
        loaded.load_all()
    log.info("vocabulary %s: %d classes, extractors %s%s", r.name, len(first), ", ".join(r.extractors),
             " (prototypes read per shortlist)" if lazy else "")
    return loaded
