"""Catalog reads in plain SQL over a DB-API connection, without SQLAlchemy.

The everyday metadata commands (``ls``, ``info``, ``vocab list``) and the settings lookups read a few
tables; importing SQLAlchemy and mapping the ORM costs more than the reads themselves (about 0.5 s on a
2-core machine). :class:`PlainReader` runs portable SQL (``?`` placeholders, rewritten to the driver's
paramstyle) on

- SQLite: a stdlib ``sqlite3`` connection opened read-only (``mode=ro``; ``immutable=1`` when the file
  cannot be written, as :func:`protodb.catalog.engine.make_engine` does), one per read;
- any other catalog: the SQLAlchemy engine's raw DB-API connection (PostgreSQL via psycopg), so the
  driver, pool and URL handling stay those of the ORM path.

These are the only implementations of those reads: the ORM services delegate to them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

SQLITE_TIMEOUT_S = 30.0


def _placeholders(sql: str, paramstyle: str) -> str:
    """``?`` placeholders in the driver's paramstyle (only qmark and format/pyformat are used here)."""
    if paramstyle == "qmark":
        return sql
    if paramstyle in ("format", "pyformat"):
        return sql.replace("%", "%%").replace("?", "%s")
    raise ValueError(f"unsupported DB-API paramstyle {paramstyle!r}")


def sqlite_uri(path: Path) -> str:
    """A read-only ``file:`` URI for the SQLite file ``path``; immutable when this process cannot write
    the file or its folder (then SQLite takes no locks and writes no -shm/-wal)."""
    path = Path(path).resolve()
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    return f"file:{quote(str(path))}?mode=ro" + ("" if writable else "&immutable=1")


class PlainReader:
    """Read-only SQL on a catalog. ``connect()`` returns a DB-API connection (closed after each read);
    ``paramstyle`` is its module's."""

    def __init__(self, connect: Callable[[], Any], paramstyle: str, *, own_transaction: bool = False):
        self._connect = connect
        self.paramstyle = paramstyle
        self._begin = own_transaction  # stdlib sqlite3 reads outside a transaction unless told

    @classmethod
    def sqlite(cls, path: Path) -> "PlainReader":
        uri = sqlite_uri(path)
        return cls(lambda: sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT_S), sqlite3.paramstyle,
                   own_transaction=True)

    @classmethod
    def from_engine(cls, engine) -> "PlainReader":
        return cls(engine.raw_connection, engine.dialect.paramstyle)

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Callable[[str, Sequence[Any]], list[tuple]]]:
        """``with reader.cursor() as q: q(sql, params)`` -> list of row tuples; one connection (and one
        consistent snapshot: a single read transaction) for every query in the block."""
        conn = self._connect()
        try:
            cur = conn.cursor()

            def query(sql: str, params: Sequence[Any] = ()) -> list[tuple]:
                cur.execute(_placeholders(sql, self.paramstyle), tuple(params))
                return cur.fetchall()

            if self._begin:
                cur.execute("BEGIN")  # one snapshot across the block's queries
            yield query
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.cursor() as q:
            return q(sql, params)


def revision(reader: PlainReader) -> str | None:
    """The catalog's schema (alembic) revision, or None when it has no ``alembic_version`` table."""
    try:
        rows = reader.rows("SELECT version_num FROM alembic_version")
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return None
        raise
    return rows[0][0] if rows else None
