"""A vocabulary ready to match: every class's ready sets for the chosen extractors, read once,
filtered (levels, stuff filter) into one match table per extractor on the matching device.

Classes without usable prototypes stop the run with one line naming them all (not only the first)
and the commands that build them; with ``skip_missing`` the run goes on with the others and says
which were left out.
"""

from __future__ import annotations

import logging
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


@dataclass
class LoadedVocabulary:
    """What a run segments with: names, refs, stuff flags and one match table per extractor."""

    name: str
    version: int
    refs: list[str]
    names: list[str]
    stuff: list[bool]
    background: bool
    extractors: list[str]
    classes: dict[str, list[ClassPrototypes]]  # extractor -> per-class prototypes (vocabulary order)
    tables: dict[str, MatchTable]
    sets: dict[str, list[PrototypeSet]]  # extractor -> set per class
    rows: dict[str, list[Any]]  # extractor -> PrototypeRows per class (for explanations)
    stuff_threshold: float = 0.85
    skipped: list[str] = field(default_factory=list)

    def table_for(self, extractor: str, keep: list[int] | None) -> MatchTable:
        """The full table, or one for the classes ``keep`` (indices) when the pre-filter dropped some."""
        if keep is None or len(keep) == len(self.names):
            return self.tables[extractor]
        full = self.tables[extractor]
        return build_match_table([self.classes[extractor][i] for i in keep], background=self.background,
                                 stuff_filter_threshold=self.stuff_threshold, device=full.vectors.device,
                                 dtype=full.vectors.dtype)

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


def _known(sets: SetService, refs: list[str], vocab: str | None, skip_missing: bool) -> tuple[list[str], list[str]]:
    """(refs the catalog knows, names left out): every unknown class or version is named in one error
    unless ``skip_missing``."""
    keep, problems = [], []
    for ref in refs:
        try:
            sets.resolve(ref)
        except NotFound as err:
            problems.append((Ref.parse(ref).name, str(err).splitlines()[0]))
            continue
        keep.append(ref)
    if problems and not skip_missing:
        raise NotFound(_missing_message(problems, vocab))
    for _name, message in problems:
        log.warning("left out of the vocabulary: %s", message)
    if not keep:
        raise NotFound("no class of the vocabulary has usable prototypes; build them with protodb add-class")
    return keep, [n for n, _ in problems]


def _default_extractors(sets: SetService, refs: list[str]) -> list[str]:
    """Extractors every class has a ready set for (all of them: an ensemble); first ref decides order."""
    common: list[str] | None = None
    for ref in refs:
        have = [s.extractor for s in sets.resolve(ref)]
        common = have if common is None else [e for e in common if e in have]
    if not common:
        raise NotFound("the classes share no extractor; rebuild them with a common --extractor NAME")
    return common


def _usable(sets: SetService, refs: list[str], extractors: list[str], vocab: str | None,
            skip_missing: bool) -> tuple[list[str], list[str]]:
    """Refs whose every extractor set exists and has foreground prototypes; the others, or an error."""
    keep, skipped, problems = [], [], []
    for ref in refs:
        problem = None
        for e in extractors:
            try:
                (pset,) = sets.resolve(ref, e)
            except NotFound as err:
                problem = str(err)
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


def load_vocabulary(sets: SetService, vocabs: VocabService, *, vocab: str | None, classes: str | None,
                    extractors: list[str], levels: tuple[str, ...], background: bool | None,
                    stuff_threshold: float, skip_missing: bool, device, dtype) -> LoadedVocabulary:
    """Look every class up in the catalog, read its prototypes (checksummed) and build the tables."""
    name, version, refs, default_bg = vocabulary_refs(vocabs, vocab, classes)
    if not refs:
        raise InvalidInput("the vocabulary has no classes")
    bg = default_bg if background is None else background
    refs, unknown = _known(sets, refs, vocab, skip_missing)
    exts = list(dict.fromkeys(extractors)) or _default_extractors(sets, refs)
    refs, skipped = _usable(sets, refs, exts, vocab, skip_missing)
    skipped = unknown + skipped
    kinds = list(levels) + [f"bg_{k}" for k in levels]
    per_class: dict[str, list[ClassPrototypes]] = {}
    chosen: dict[str, list[PrototypeSet]] = {}
    rows_by: dict[str, list[Any]] = {}
    for e in exts:
        per_class[e], chosen[e], rows_by[e] = [], [], []
        for ref in refs:
            (pset,) = sets.resolve(ref, e)
            rows = sets.prototypes(pset, kinds=kinds)
            is_bg = np.array([k.startswith("bg_") for k in rows.kinds], bool)
            vec = torch.from_numpy(rows.vectors)
            ids = list(rows.ids)
            per_class[e].append(ClassPrototypes(
                name=pset.class_name, stuff=pset.kind == "stuff", fg=vec[~is_bg], bg=vec[is_bg],
                fg_ids=[i for i, b in zip(ids, is_bg) if not b], bg_ids=[i for i, b in zip(ids, is_bg) if b]))
            chosen[e].append(pset)
            rows_by[e].append(rows)
    first = per_class[exts[0]]
    tables = {e: build_match_table(per_class[e], background=bg, stuff_filter_threshold=stuff_threshold,
                                   device=device, dtype=dtype) for e in exts}
    log.info("vocabulary %s: %d classes, extractors %s", name, len(first), ", ".join(exts))
    return LoadedVocabulary(name, version, refs, [c.name for c in first], [c.stuff for c in first], bg, exts,
                            per_class, tables, chosen, rows_by, stuff_threshold, skipped)
