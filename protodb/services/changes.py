"""Has the catalog changed? One cheap stamp for long-running readers (``protodb serve``).

A stamp is a few aggregates read in one transaction: ready sets (count, newest ``ready_at``), classes,
label decisions, vocabularies (count, summed versions, members) and tags (count, newest). Every write
that can change what a reader resolves moves at least one of them: a set becoming ready, a new
version, a relabel (adds a label row), a vocabulary edit (bumps its version), a tag added, moved or
removed. Equal stamps mean "nothing to re-resolve"; a changed stamp only says "look again" (the
reader then re-resolves what it serves and compares set ids exactly). Pending sets never count.
"""

from __future__ import annotations

from sqlalchemy import func, select

from protodb.catalog.schema import (
    SET_READY,
    ClassRow,
    LabelRow,
    PrototypeSetRow,
    TagRow,
    VocabularyMemberRow,
    VocabularyRow,
)
from protodb.stores import Stores


class ChangeService:
    """Catalog change stamps (read-only)."""

    def __init__(self, stores: Stores):
        self.stores = stores

    def stamp(self) -> tuple:
        """A value that differs whenever ready sets, labels, vocabularies or tags changed."""
        with self.stores.sessions.reader() as s:
            sets = s.execute(select(func.count(), func.max(PrototypeSetRow.ready_at))
                             .where(PrototypeSetRow.status == SET_READY)).one()
            classes = s.scalar(select(func.count()).select_from(ClassRow))
            labels = s.execute(select(func.count(), func.max(LabelRow.created_at))).one()
            vocabs = s.execute(select(func.count(), func.sum(VocabularyRow.version))).one()
            members = s.scalar(select(func.count()).select_from(VocabularyMemberRow))
            tags = s.execute(select(func.count(), func.max(TagRow.created_at))).one()
        return (tuple(map(str, sets)), classes, tuple(map(str, labels)), tuple(map(str, vocabs)), members,
                tuple(map(str, tags)))
