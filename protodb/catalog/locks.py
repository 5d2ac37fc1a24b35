"""Cross-process locks kept beside (or inside) the catalog.

* ``migration_lock``: schema creation and upgrades (a file lock beside a SQLite catalog; a
  session-level advisory lock on PostgreSQL), so concurrent first opens do not race.
* ``vector_lock``: commits to one LanceDB table. A table on object storage wants one committer at a
  time; on PostgreSQL a transaction-level advisory lock keyed by the table name is held on a
  connection of its own (released if the process dies), beside SQLite a ``flock`` on
  ``CATALOG.vectors-TABLE.lock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from protodb.fileio import file_lock

log = logging.getLogger(__name__)

_PG_MIGRATION_KEY = 0x70726F746F  # "proto"


def _sqlite_file(engine: Engine) -> Path | None:
    if engine.dialect.name != "sqlite":
        return None
    db = engine.url.database
    return Path(db) if db and db != ":memory:" else None


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a vector table name."""
    digest = hashlib.sha256(f"protodb-vectors:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_versions(session: Session, class_id: str, extractor_id: str) -> None:
    """Serialise, until this transaction ends, the transactions that give (class, extractor) a new
    ready version (PostgreSQL: a transaction-level advisory lock). Without it, under READ COMMITTED,
    two writers of the same config could both find no ready set and then take versions 1 and 2.
    SQLite needs none: a write on a stale read snapshot fails and the transaction is retried."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                        {"k": lock_key(f"versions:{class_id}:{extractor_id}")})


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Hold an exclusive, cross-process lock for schema creation/upgrade."""
    path = _sqlite_file(engine)
    if path is not None:
        with file_lock(path.with_name(path.name + ".migrate.lock")):
            yield
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_KEY})
                conn.commit()
    else:
        yield


@contextlib.contextmanager
def vector_lock(engine: Engine, table: str) -> Iterator[None]:
    """Hold an exclusive, cross-process lock on vector table ``table`` for the ``with`` body."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(table)})
            yield
        return
    path = _sqlite_file(engine)
    if path is None:
        yield
        return
    with file_lock(path.with_name(f"{path.name}.vectors-{table}.lock")):
        yield
