"""Every service of one database, over its stores, each made on first use.

The facade (:class:`protodb.api.ProtoDB`) holds one; so does each Ray worker, which opens the database
from (home, catalog URL) itself and builds its segmenter or class builder from these services — the same
objects the facade would hand it.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Callable

from protodb.services.changes import ChangeService
from protodb.services.integrity import IntegrityService
from protodb.services.labels import LabelService
from protodb.services.overview import OverviewService
from protodb.services.schema import SchemaService
from protodb.services.sets import SetService
from protodb.services.support import SupportService
from protodb.services.vocabs import VocabService
from protodb.stores import Stores

if TYPE_CHECKING:
    from protodb.sharing.ports import IndexLookup
    from protodb.services.corrections import CorrectionService
    from protodb.services.sharing import SharingService


class Services:
    """``overview``, ``schema``, ``sets``, ``labels``, ``vocabs``, ``support``, ``changes``, ``integrity``,
    ``sharing``, ``corrections`` of one database's :class:`Stores`.

    indexes: makes the vocabularies' summary indexes when sharing needs them (bundles carry them, imports
    rebuild them); the facade passes its own, from the segment layer above this one."""

    def __init__(self, stores: Stores, overview: OverviewService | None = None,
                 indexes: Callable[[], IndexLookup] | None = None):
        self.stores = stores
        self.overview = overview or OverviewService(stores)
        self._indexes = indexes

    @classmethod
    def open(cls, path: str | os.PathLike | None, *, catalog_url: str | None = None, create: bool = False,
             check_schema: bool = True) -> "Services":
        return cls(Stores.open(path, catalog_url=catalog_url, create=create, check_schema=check_schema))

    @functools.cached_property
    def schema(self) -> SchemaService:
        return SchemaService(self.stores)

    @functools.cached_property
    def sets(self) -> SetService:
        return SetService(self.stores)

    @functools.cached_property
    def labels(self) -> LabelService:
        return LabelService(self.stores)

    @functools.cached_property
    def vocabs(self) -> VocabService:
        return VocabService(self.stores, self.sets)

    @functools.cached_property
    def support(self) -> SupportService:
        return SupportService(self.stores)

    @functools.cached_property
    def changes(self) -> ChangeService:
        return ChangeService(self.stores)

    @functools.cached_property
    def integrity(self) -> IntegrityService:
        return IntegrityService(self.stores)

    @functools.cached_property
    def sharing(self) -> "SharingService":
        from protodb.services.sharing import SharingService  # deferred: pyarrow (see protodb.lazy.DEFERRED)

        return SharingService(self.stores, self.sets, self.vocabs, indexes=self._indexes)

    @functools.cached_property
    def corrections(self) -> "CorrectionService":
        from protodb.services.corrections import CorrectionService  # deferred: numpy (see protodb.lazy.DEFERRED)

        return CorrectionService(self.stores)

    def close(self) -> None:
        self.stores.close()
