"""The catalog's schema revision (current, upgrade, downgrade, check) and what the database holds."""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from protodb._version import __version__
from protodb.catalog import engine as engines
from protodb.catalog import migrate
from protodb.catalog.locks import migration_lock
from protodb.catalog.schema import SET_PENDING, SET_READY, ExtractorRow, PrototypeSetRow, SupportImageRow
from protodb.entities import DbInfo, SchemaStatus
from protodb.errors import InvalidInput
from protodb.stores import Stores

log = logging.getLogger(__name__)


class SchemaService:
    def __init__(self, stores: Stores):
        self.stores = stores

    def current(self) -> SchemaStatus:
        rev = engines.current_revision(self.stores.engine)
        head = migrate.head_revision()
        return SchemaStatus(catalog_url=engines.safe_url(self.stores.engine), revision=rev, head=head,
                            up_to_date=rev == head)

    def _migrate(self, fn, target: str) -> SchemaStatus:
        if not migrate.is_known(target):
            raise InvalidInput(f"unknown schema revision {target!r}; known: base, "
                               f"{', '.join(migrate.REVISIONS)}, head")
        with migration_lock(self.stores.engine):
            log.info("migrating %s to %s", engines.safe_url(self.stores.engine), target)
            fn(self.stores.engine, target)
        self.stores.schema_revision = engines.current_revision(self.stores.engine)
        return self.current()

    def upgrade(self, target: str = "head") -> SchemaStatus:
        return self._migrate(migrate.upgrade, target)

    def downgrade(self, target: str) -> SchemaStatus:
        return self._migrate(migrate.downgrade, target)

    def check(self) -> SchemaStatus:
        diff = migrate.check(self.stores.engine)
        cur = self.current()
        return SchemaStatus(cur.catalog_url, cur.revision, cur.head, cur.up_to_date,
                            in_sync=diff is None, differences=diff)

    def info(self) -> DbInfo:
        with self.stores.sessions.reader() as s:
            def count(model, *where) -> int:
                return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

            n_classes = int(s.scalar(select(func.count(func.distinct(PrototypeSetRow.class_id)))
                                     .where(PrototypeSetRow.status == SET_READY)) or 0)
            counts = (n_classes, count(PrototypeSetRow, PrototypeSetRow.status == SET_READY),
                      count(PrototypeSetRow, PrototypeSetRow.status == SET_PENDING), count(SupportImageRow),
                      count(ExtractorRow))
        d = self.stores.describe()
        return DbInfo(home=d["home"], catalog_url=d["catalog_url"],
                      schema_revision=engines.current_revision(self.stores.engine),
                      vectors_uri=d["vectors_uri"], artifacts_uri=d["artifacts_uri"], protodb_version=__version__,
                      classes=counts[0], prototype_sets=counts[1], pending_sets=counts[2],
                      support_images=counts[3], extractors=counts[4])


