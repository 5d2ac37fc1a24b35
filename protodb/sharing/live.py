"""One live database for a team: the catalog on PostgreSQL, vectors and artifacts on object storage.

Chosen by configuration only::

    protodb init --catalog postgresql://team@db/protos --vectors s3://bucket/vectors --artifacts s3://bucket/artifacts

``init`` records the two URLs in the catalog's settings, so every process that opens the catalog
finds the same stores. Credentials and a custom endpoint come from the standard AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``;
``AWS_ALLOW_HTTP=true`` for a plain-http endpoint), which both s3fs (artifacts) and LanceDB
(vectors) read.

Writers never lose each other's sets: artifacts are content-addressed (idempotent puts), set rows
are ``pending`` until one transaction marks them ``ready`` (versions retried on conflicts), and
commits to a LanceDB table are serialised here, because a table on object storage wants a single
committer at a time: ``vector_lock`` holds a PostgreSQL transaction-level advisory lock keyed by
the table name (a file lock beside a SQLite catalog) around each vector commit.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Engine

from protodb.catalog.engine import file_lock


def lock_key(table: str) -> int:
    """A stable signed 64-bit advisory-lock key for a vector table name."""
    digest = hashlib.sha256(f"protodb-vectors:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def vector_lock(engine: Engine, table: str) -> Iterator[None]:
    """Hold an exclusive, cross-process lock on vector table ``table`` for the ``with`` body.

    PostgreSQL: ``pg_advisory_xact_lock`` on a connection of its own, released when that
    transaction ends (also if the process dies). SQLite: ``flock`` on ``CATALOG.vectors-TABLE.lock``.
    Other catalogs: no lock.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(table)})
            yield
        return
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    if not db or db == ":memory:":
        yield
        return
    with file_lock(Path(db).with_name(f"{Path(db).name}.vectors-{table}.lock")):
        yield
