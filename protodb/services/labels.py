"""Thing/stuff labels of classes: the current label and the full history of decisions.

How a new class is labelled (manual override, an LLM, the built-in lexicon) is decided by
:mod:`protodb.thing_stuff`; this service records and reads the decisions.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from protodb.catalog import queries
from protodb.catalog.schema import LabelRow
from protodb.entities import LabelEntry, LabelHistory
from protodb.errors import InvalidInput, NotFound
from protodb.names import normalize_class_name, quoted
from protodb.stores import Stores
from protodb.thing_stuff import KINDS, Label


def label_record(label: Label) -> dict:
    """A :class:`protodb.thing_stuff.Label` as the columns of a label row."""
    return {"kind": label.kind, "source": label.source, "model": label.model, "prompt": label.prompt,
            "raw_answer": label.raw_answer}


class LabelService:
    def __init__(self, stores: Stores):
        self.stores = stores

    def current(self, name: str) -> str | None:
        """The class's thing/stuff label, or None for a class this database does not know."""
        with self.stores.sessions.reader() as s:
            cls = queries.get_class(s, normalize_class_name(name))
            return cls.kind if cls is not None else None

    def record(self, s: Session, class_id: str, label: Label) -> None:
        """Add one decision to a class's history (inside the caller's transaction)."""
        s.add(LabelRow(class_id=class_id, **label_record(label)))

    def set(self, name: str, kind: str) -> LabelHistory:
        """Change a class's thing/stuff label by hand; the history keeps every earlier label."""
        if kind not in KINDS:
            raise InvalidInput(f"kind must be thing or stuff, got {kind!r}")
        with self.stores.sessions.session() as s:
            cls = queries.get_class(s, normalize_class_name(name))
            if cls is None:
                raise NotFound(f"no class {name!r}; run: protodb add-class {quoted(name)}")
            cls.kind = kind
            self.record(s, cls.id, Label(kind=kind, source="manual"))
        return self.history(name)

    def history(self, name: str) -> LabelHistory:
        with self.stores.sessions.reader() as s:
            cls = queries.get_class(s, normalize_class_name(name))
            if cls is None:
                raise NotFound(f"no class {name!r}; run: protodb add-class {quoted(name)}")
            rows = s.scalars(select(LabelRow).where(LabelRow.class_id == cls.id).order_by(LabelRow.created_at)).all()
            return LabelHistory(cls.name, cls.kind, tuple(
                LabelEntry(h.kind, h.source, h.model, h.prompt, h.raw_answer, h.created_at.isoformat())
                for h in rows))
