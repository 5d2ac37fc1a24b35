"""Vocabularies: named, ordered lists of class references (``boat``, or pinned ``boat@3``).

The catalog's vocabularies come first; the built-in ones (``protodb/data/vocabularies``) are shown
from their data files until a command changes them, which copies them into the catalog whole.
"""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from protodb.catalog import queries
from protodb.catalog.schema import ClassRow, VocabularyMemberRow, VocabularyRow
from protodb.entities import Vocabulary, VocabularySummary
from protodb.errors import InvalidInput, NotFound
from protodb.names import Ref, check_tag_name, normalize_class_name
from protodb.services.labels import label_record
from protodb.services.overview import OverviewService
from protodb.services.sets import SetService
from protodb.stores import Stores
from protodb.thing_stuff import classify_with_lexicon
from protodb.vocabularies import builtin_vocabularies


class VocabService:
    def __init__(self, stores: Stores, sets: SetService):
        self.stores = stores
        self.sets = sets

    def _member(self, s: Session, ref: str) -> tuple[ClassRow, str | None]:
        parsed = Ref.parse(ref)
        cls = queries.get_class(s, parsed.name)
        if cls is None:
            cls = self.sets.ensure_class(s, parsed.name, label=label_record(classify_with_lexicon(parsed.name)))
        return cls, (str(parsed) if parsed.pinned else None)

    def create(self, name: str, classes: Sequence[str], *, description: str | None = None,
               replace: bool = False, background: bool = True) -> Vocabulary:
        """A named vocabulary of classes (refs may pin versions: ``boat@3``). ``background``: whether
        segmenting with it scores a background class (built-in datasets without one: False)."""
        vname = check_tag_name(name)
        if not classes:
            raise InvalidInput("a vocabulary needs at least one class")
        for ref in classes:
            Ref.parse(ref)  # every name is checked before anything is written
        with self.stores.sessions.session() as s:
            row = s.scalar(select(VocabularyRow).where(VocabularyRow.name == vname))
            if row is not None and not replace:
                raise InvalidInput(f"vocabulary {vname!r} exists; use: protodb vocab add {vname} CLASS")
            if row is None:
                row = VocabularyRow(name=vname, description=description, background=background)
                s.add(row)
                s.flush()
            else:
                row.members.clear()
                row.version += 1
                row.background = background
                s.flush()
            seen = set()
            for pos, ref in enumerate(classes):
                cls, pin = self._member(s, ref)
                if cls.id in seen:
                    continue
                seen.add(cls.id)
                row.members.append(VocabularyMemberRow(class_id=cls.id, position=pos, ref=pin))
        return self.show(vname)

    def add(self, name: str, classes: Sequence[str], *, create: bool = False) -> Vocabulary:
        """Add classes to a vocabulary (or re-pin them). ``create``: a missing vocabulary is created
        (a built-in one is first copied into the catalog whole)."""
        for ref in classes:
            Ref.parse(ref)
        with self.stores.sessions.reader() as s:
            exists = s.scalar(select(VocabularyRow.id).where(VocabularyRow.name == name)) is not None
        if not exists:
            if not create:
                raise NotFound(f"no vocabulary {name!r}; create it: protodb vocab create {name} CLASS...")
            base = builtin_vocabularies().get(name)
            if base is None:
                return self.create(name, classes)
            have = list(base["classes"])
            extra = [c for c in classes if Ref.parse(c).name not in have]
            return self.create(name, have + extra, description=base.get("description"),
                               background=bool(base.get("background", True)))
        with self.stores.sessions.session() as s:
            row = s.scalar(select(VocabularyRow).where(VocabularyRow.name == name))
            have = {m.class_id: m for m in row.members}
            pos = max((m.position for m in row.members), default=-1) + 1
            changed = False
            for ref in classes:
                cls, pin = self._member(s, ref)
                if cls.id in have:
                    if have[cls.id].ref != pin:
                        have[cls.id].ref, changed = pin, True
                    continue
                row.members.append(VocabularyMemberRow(class_id=cls.id, position=pos, ref=pin))
                have[cls.id] = row.members[-1]
                pos, changed = pos + 1, True
            if changed:
                row.version += 1
        return self.show(name)

    def remove(self, name: str, classes: Sequence[str]) -> Vocabulary:
        names = {normalize_class_name(c) for c in classes}
        with self.stores.sessions.session() as s:
            row = s.scalar(select(VocabularyRow).where(VocabularyRow.name == name))
            if row is None:
                raise NotFound(f"no vocabulary {name!r}; see: protodb vocab list")
            keep = [m for m in row.members if m.cls.name not in names]
            if len(keep) != len(row.members):
                row.members[:] = keep
                row.version += 1
        return self.show(name)

    def show(self, name: str) -> Vocabulary:
        """A vocabulary's classes: the catalog's, else the built-in data file's."""
        with self.stores.sessions.reader() as s:
            row = s.scalar(select(VocabularyRow).where(VocabularyRow.name == name))
            if row is not None:
                return Vocabulary(row.name, row.description, row.version, False, row.background,
                                  tuple(m.ref or m.cls.name for m in row.members),
                                  tuple(m.cls.kind for m in row.members))
        builtins = builtin_vocabularies()
        if name in builtins:
            b = builtins[name]
            return Vocabulary(name, b.get("description"), 0, True, b.get("background"), tuple(b["classes"]), None)
        raise NotFound(f"no vocabulary {name!r}; built-in: {', '.join(sorted(builtins))}; "
                       f"or create one: protodb vocab create {name} CLASS...")

    def list(self) -> list[VocabularySummary]:
        """:meth:`protodb.services.overview.OverviewService.vocabularies`."""
        return OverviewService(self.stores).vocabularies()
