"""Catalog connections: engines with the right SQLite pragmas, and schema-revision checks.

Opening a catalog never leaves it half-created: the first open of an empty database runs the
migrations under a lock (a file lock for SQLite, an advisory lock for PostgreSQL), so concurrent
first opens do not race. A catalog at another revision than this code's head is refused with one
line that names the fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from protodb.catalog import migrate
from protodb.catalog.locks import migration_lock
from protodb.errors import InvalidInput, NotFound, SchemaMismatch

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


SUPPORTED = ("sqlite", "postgresql")


def _parse(url: str):
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InvalidInput(f"catalog URL {url!r} is not a database URL; use sqlite:///PATH or "
                           "postgresql://USER@HOST/DB") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise InvalidInput(f"catalog URL {parsed.render_as_string(hide_password=True)!r}: protodb catalogs are "
                           "SQLite (sqlite:///PATH) or PostgreSQL (postgresql://USER@HOST/DB)")
    return parsed


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout on every connection.

    With ``create`` a SQLite file's folder is made; without, a missing file is NotFound, and a file
    (or folder) this process cannot write is opened read-only and immutable: ``ls``, ``info``,
    ``verify``, ``inspect`` and ``segment`` work on a read-only database, nothing is written on open.
    """
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        read_only = False
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            db_file = Path(parsed.database)
            if create:
                try:
                    db_file.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise InvalidInput(f"cannot create the catalog folder {db_file.parent}: "
                                       f"{err.strerror or err}") from None
            elif not db_file.is_file():
                raise NotFound(f"no protodb database at {db_file}; create one with: protodb init --catalog {url}")
            elif not _writable(db_file):
                read_only = True
                log.info("catalog %s is not writable: opened read-only", db_file)
                url = f"sqlite:///file:{db_file.resolve()}?mode=ro&immutable=1&uri=true"
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            if not read_only:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        return engine
    if parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ModuleNotFoundError, NoSuchModuleError) as err:
        raise InvalidInput(f"no database driver for {parsed.drivername} ({getattr(err, 'name', None) or err}); "
                           "for PostgreSQL run: pip install 'protodb[postgres]'") from None


def current_revision(engine: Engine) -> str | None:
    """The catalog's alembic revision, or None for an empty database."""
    insp = inspect(engine)
    if not insp.has_table("alembic_version"):
        return None
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if rows else None


def is_empty(engine: Engine) -> bool:
    return not inspect(engine).get_table_names()


def ensure_schema(engine: Engine, *, create: bool = True) -> str:
    """Create an empty catalog at head, or check an existing one is at head. Returns the revision."""
    head = migrate.head_revision()
    rev = current_revision(engine)
    if rev == head:
        return rev
    if rev is None and create:
        with migration_lock(engine):
            rev = current_revision(engine)  # someone else may have created it meanwhile
            if rev is None:
                if not is_empty(engine):
                    raise SchemaMismatch(
                        f"{safe_url(engine)} holds tables but no protodb schema revision; "
                        "point --db/--catalog at an empty or protodb database"
                    )
                log.info("creating the catalog schema at revision %s", head)
                migrate.upgrade(engine, "head")
                rev = current_revision(engine)
        if rev == head:
            return rev
    if rev is None:
        raise SchemaMismatch(f"no protodb catalog at {safe_url(engine)}; run: protodb init")
    if rev not in migrate.known_revisions():
        raise SchemaMismatch(
            f"catalog revision {rev} is newer than this protodb knows (head {head}); "
            "upgrade protodb: pip install -U protodb"
        )
    raise SchemaMismatch(
        f"catalog is at schema revision {rev}, this protodb needs {head}; run: protodb db upgrade"
    )


def safe_url(engine_or_url) -> str:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.render_as_string(hide_password=True)

