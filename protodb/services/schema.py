"""The catalog's schema revision: current, upgrade, downgrade, check (what it holds: ``services.overview``)."""

from __future__ import annotations

import logging

from protodb.catalog import engine as engines
from protodb.catalog import migrate
from protodb.catalog.locks import migration_lock
from protodb.entities import SchemaStatus
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
