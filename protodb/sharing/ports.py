"""What the sharing code needs from the services, and nothing more.

:mod:`protodb.sharing` is the row-level implementation behind :class:`protodb.services.sharing.SharingService`
(bundles, merges, remotes move catalog rows, vectors and artifacts in bulk). It resolves names through the
set and vocabulary services, which it receives as these narrow interfaces rather than importing them, so
the two packages never import each other.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from protodb.entities import ClassVersions, IndexStatus, PrototypeSet, Vocabulary, VocabularySummary


class SetLookup(Protocol):
    """Ready prototype sets by name (:class:`protodb.services.sets.SetService` is one)."""

    def resolve(self, ref: str, extractor: str | None = None) -> list[PrototypeSet]: ...

    def get(self, set_id: str) -> PrototypeSet: ...

    def prototypes(self, pset: PrototypeSet, kinds: Sequence[str] | None = None, *, check: bool = True): ...

    def ls(self, names: Sequence[str] | None = None) -> list[ClassVersions]: ...


class VocabLookup(Protocol):
    """Vocabularies by name (:class:`protodb.services.vocabs.VocabService` is one)."""

    def show(self, name: str) -> Vocabulary: ...

    def list(self) -> list[VocabularySummary]: ...


class IndexLookup(Protocol):
    """Summary indexes of vocabularies (:class:`protodb.segment.index.VocabIndexes` is one): what a bundle
    records of a vocabulary's fresh indexes, and their rebuild after an import."""

    def portable(self, vocab: str) -> list[dict[str, Any]]: ...

    def rebuild_carried(self, vocab: str, extractor: str, kind: str,
                        params: dict[str, Any]) -> tuple[IndexStatus, bool]: ...
