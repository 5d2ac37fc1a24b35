"""Vocabularies: named, ordered lists of class references (``boat``, or pinned ``boat@3``).

The catalog's vocabularies come first; the built-in ones (``protodb/data/vocabularies``) are shown
from their data files until a command changes them, which copies them into the catalog whole.
"""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from protodb.catalog.schema import ClassRow, VocabularyMemberRow, VocabularyRow
from protodb.entities import LabelRun, Vocabulary, VocabularySummary
from protodb.errors import InvalidInput, NotFound
from protodb.names import Ref, check_tag_name, normalize_class_name
from protodb.services.labels import LabelService, ensure_classes
from protodb.services.overview import OverviewService
from protodb.services.sets import SetService
from protodb.stores import Stores
from protodb.thing_stuff import DEFAULT_BATCH_SIZE, LLMClient
from protodb.vocabularies import builtin_vocabularies


class VocabService:
    def __init__(self, stores: Stores, sets: SetService):
        self.stores = stores
        self.sets = sets

    def _members(self, s: Session, refs: Sequence[str]) -> list[tuple[str, str | None]]:
        """(class id, pin) for each ref, creating the classes not in the catalog yet (labelled by the
        lexicon). Bulk statements, one query per 500 names: 20,000 names take seconds, not minutes."""
        parsed = [Ref.parse(ref) for ref in refs]
        ids = ensure_classes(s, [p.name for p in parsed])
        return [(ids[p.name], str(p) if p.pinned else None) for p in parsed]

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
                s.execute(delete(VocabularyMemberRow).where(VocabularyMemberRow.vocabulary_id == row.id))
                row.version += 1
                row.background = background
                s.flush()
            seen, members = set(), []
            for pos, (class_id, pin) in enumerate(self._members(s, classes)):
                if class_id not in seen:
                    seen.add(class_id)
                    members.append({"vocabulary_id": row.id, "class_id": class_id, "position": pos, "ref": pin})
            s.execute(insert(VocabularyMemberRow), members)
            s.expire(row, ["members"])
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
            members = self._members(s, classes)
            with s.no_autoflush:
                for class_id, pin in members:
                    if class_id in have:
                        if have[class_id].ref != pin:
                            have[class_id].ref, changed = pin, True
                        continue
                    row.members.append(VocabularyMemberRow(class_id=class_id, position=pos, ref=pin))
                    have[class_id] = row.members[-1]
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
                members = s.execute(
                    select(VocabularyMemberRow.ref, ClassRow.name, ClassRow.kind)
                    .join(ClassRow, ClassRow.id == VocabularyMemberRow.class_id)
                    .where(VocabularyMemberRow.vocabulary_id == row.id)
                    .order_by(VocabularyMemberRow.position)).all()  # one query, not one per class
                return Vocabulary(row.name, row.description, row.version, False, row.background,
                                  tuple(ref or cname for ref, cname, _ in members),
                                  tuple(kind for _, _, kind in members))
        builtins = builtin_vocabularies()
        if name in builtins:
            b = builtins[name]
            return Vocabulary(name, b.get("description"), 0, True, b.get("background"), tuple(b["classes"]), None)
        raise NotFound(f"no vocabulary {name!r}; built-in: {', '.join(sorted(builtins))}; "
                       f"or create one: protodb vocab create {name} CLASS...")

    def label(self, name: str, *, client: LLMClient | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
              lexicon_only: bool = False, on_progress=None, lexicon: str | None = None) -> LabelRun:
        """Thing/stuff labels for every class of vocabulary ``name`` that has none decided yet:
        :meth:`protodb.services.labels.LabelService.label_classes` (lexicon first, then the LLM in
        batches). Classes of a built-in vocabulary that the catalog lacks are created (the vocabulary
        itself is not copied), so a later ``add-vocab`` finds their labels."""
        vocab = self.show(name)
        names = [Ref.parse(ref).name for ref in vocab.classes]
        return LabelService(self.stores).label_classes(names, vocabulary=vocab.name, client=client,
                                                       batch_size=batch_size, lexicon_only=lexicon_only,
                                                       on_progress=on_progress, lexicon=lexicon)

    def list(self) -> list[VocabularySummary]:
        """:meth:`protodb.services.overview.OverviewService.vocabularies`."""
        return OverviewService(self.stores).vocabularies()
