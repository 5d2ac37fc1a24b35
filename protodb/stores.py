"""The stores of one database, typed and opened once: catalog sessions, vectors, artifacts, locks.

A database is a catalog (SQL), a vector store (LanceDB) and an artifact store (files), found from one
home folder by default::

    HOME/catalog.sqlite   the SQL catalog (or PROTODB_CATALOG_URL, e.g. postgresql://...)
    HOME/vectors/         LanceDB tables, one per extractor
    HOME/artifacts/       content-addressed images, masks, attention maps
    HOME/cache/           features and fetched objects (safe to delete)
    HOME/models/          locally built models (tiny preset, converted weights)
    HOME/staging/         temporary space of imports (cleaned when the database is opened)

A shared database records its vector and artifact URLs in the catalog's settings (``protodb init
--vectors s3://... --artifacts s3://...``) so that every user of the catalog finds the same stores.
Services (``protodb.services``) and workflows receive a :class:`Stores`, never the facade.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from protodb.catalog import plain
from protodb.catalog.migrate import head_revision
from protodb.errors import InvalidInput, NotFound
from protodb.fileio import remove_stale_temps
from protodb.lazy import lazy_import
from protodb.storage.artifacts import ArtifactStore
from protodb.storage.vectors import VectorStore

# SQLAlchemy (and the ORM schema) load when a session or engine is first needed: the metadata commands
# read through protodb.catalog.plain and never import them.
sa_exc = lazy_import("sqlalchemy.exc")
sa_orm = lazy_import("sqlalchemy.orm")

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session


log = logging.getLogger(__name__)
T = TypeVar("T")


def _catalog():
    """(engine, locks, schema) modules of :mod:`protodb.catalog`, imported when first needed."""
    from protodb.catalog import engine, locks, schema  # deferred: SQLAlchemy

    return engine, locks, schema


def default_home() -> Path:
    env = os.environ.get("PROTODB_HOME")
    return Path(env).expanduser() if env else Path.home() / ".protodb"


class Sessions:
    """Catalog transactions. ``session()``: one transaction (commit on success, rollback on error);
    ``transact(fn)``: the one retry helper, for writes that can lose a race on a unique row."""

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self._maker = sa_orm.sessionmaker(engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator["Session"]:
        with self._maker() as session:
            try:
                yield session
                session.commit()
            except sa_exc.OperationalError as err:
                session.rollback()
                if "readonly" in str(err).replace("-", "").lower() or "read-only" in str(err).lower():
                    raise InvalidInput(f"the catalog {self.engine.url.render_as_string(hide_password=True)} is "
                                       "read-only; this command writes: run it where the database is writable") from None
                raise
            except BaseException:
                session.rollback()
                raise

    @contextlib.contextmanager
    def reader(self) -> Iterator["Session"]:
        """A session for reading only (never commits)."""
        with self._maker() as session:
            yield session

    def transact(self, fn: Callable[["Session"], T], attempts: int = 5, what: str = "write") -> T:
        """Run ``fn(session)`` in one transaction, again (up to ``attempts`` times) when a concurrent
        writer inserted the same unique row first: the next attempt finds that row."""
        for attempt in range(1, attempts + 1):
            try:
                with self.session() as s:
                    return fn(s)
            except sa_exc.IntegrityError as err:
                if attempt == attempts:
                    raise
                log.info("%s lost a race (%s); retrying (%d/%d)", what, type(err.orig).__name__, attempt, attempts)
        raise AssertionError("unreachable")


class Settings:
    """Database-wide key/value settings in the catalog (store URLs, remotes, user extractors); reads in
    plain SQL, writes in a catalog transaction."""

    def __init__(self, stores: "Stores"):
        self._stores = stores

    def get(self, key: str, default: str | None = None) -> str | None:
        rows = self._stores.plain.rows("SELECT value FROM settings WHERE key = ?", [key])
        return rows[0][0] if rows else default

    def set(self, key: str, value: str) -> None:
        with self._stores.sessions.session() as s:
            s.merge(_catalog()[2].SettingRow(key=key, value=value))

    def delete(self, key: str) -> None:
        with self._stores.sessions.session() as s:
            row = s.get(_catalog()[2].SettingRow, key)
            if row is not None:
                s.delete(row)

    def with_prefix(self, prefix: str) -> dict[str, str]:
        rows = self._stores.plain.rows("SELECT key, value FROM settings ORDER BY key")
        return {k[len(prefix):]: v for k, v in rows if k.startswith(prefix)}


class Stores:
    """Catalog sessions, settings, vectors, artifacts, locks and the local folders of one database.

    Open with :meth:`open`. Vectors and artifacts connect on first use (metadata commands never load
    LanceDB).
    """

    def __init__(self, home: Path, catalog_url: str, engine: "Engine | None", schema_revision: str | None,
                 sqlite_file: Path | None = None):
        self.home = home
        self.catalog_url = catalog_url
        self.schema_revision = schema_revision
        self._engine = engine
        self._sqlite_file = sqlite_file  # the home's catalog, read without SQLAlchemy
        self._sessions = None
        self._plain = None
        self.settings = Settings(self)
        self._vectors = None
        self._artifacts = None

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, catalog_url: str | None = None,
             create: bool = True, check_schema: bool = True) -> "Stores":
        """Open the database at ``path`` (default ``$PROTODB_HOME`` or ``~/.protodb``).

        create: make the home folder and an empty catalog at the newest schema when there is none;
        without it a missing database is NotFound (read-only commands never create one).
        check_schema: refuse a catalog at another revision (only ``protodb db ...`` turns it off).
        Opening the home's own SQLite catalog read-only at head imports no SQLAlchemy: its revision is
        read in plain SQL and the engine is made on first use.
        """
        home = (Path(path).expanduser() if path else default_home()).resolve()
        if home.exists() and not home.is_dir():
            raise InvalidInput(f"--db {home} is a file; give a folder for the database")
        url = catalog_url or os.environ.get("PROTODB_CATALOG_URL") or None
        if url is None:
            db_file = home / "catalog.sqlite"
            if not create and not db_file.is_file():
                raise NotFound(f"no protodb database at {home}; create one with: protodb init --db {home}")
            if not create and check_schema and cls._at_head(db_file):
                return cls(home, f"sqlite:///{db_file.resolve()}", None, head_revision(), sqlite_file=db_file)
        engines = _catalog()[0]
        if url is None:
            url = engines.sqlite_url(home / "catalog.sqlite")
        if create:
            try:
                home.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise InvalidInput(f"cannot create the database folder {home}: {err.strerror or err}") from None
        engine = engines.make_engine(url, create=create)
        try:
            revision = engines.ensure_schema(engine, create=create) if check_schema else None
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DBAPIError) as err:
            engine.dispose()
            first = str(getattr(err, "orig", err)).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InvalidInput(f"cannot open the catalog at {engines.safe_url(engine)}: {first}") from None
        stores = cls(home, url, engine, revision)
        if create:
            stores.clean_staging()
        return stores

    @staticmethod
    def _at_head(db_file: Path) -> bool:
        """Whether the SQLite catalog ``db_file`` reads back at this protodb's head revision (anything
        else, including a file that is not a database, takes the full path and its one-line errors)."""
        try:
            return plain.revision(plain.PlainReader.sqlite(db_file)) == head_revision()
        except sqlite3.Error:
            return False

    # ------------------------------------------------------------------ catalog
    @property
    def engine(self) -> "Engine":
        """The SQLAlchemy engine (made on first use when the database was opened without one)."""
        if self._engine is None:
            engines = _catalog()[0]
            self._engine = engines.make_engine(engines.sqlite_url(self._sqlite_file), create=False)
        return self._engine

    @property
    def sessions(self) -> Sessions:
        if self._sessions is None:
            self._sessions = Sessions(self.engine)
        return self._sessions

    @property
    def plain(self) -> plain.PlainReader:
        """Plain-SQL reads of the catalog (:mod:`protodb.catalog.plain`)."""
        if self._plain is None:
            self._plain = (plain.PlainReader.sqlite(self._sqlite_file) if self._sqlite_file is not None
                           else plain.PlainReader.from_engine(self.engine))
        return self._plain

    # ------------------------------------------------------------------ stores
    @property
    def vectors_uri(self) -> str:
        return self.settings.get("vectors_uri") or str(self.home / "vectors")

    @property
    def artifacts_uri(self) -> str:
        return self.settings.get("artifacts_uri") or str(self.home / "artifacts")

    @property
    def vectors(self) -> VectorStore:
        """The :class:`protodb.storage.vectors.VectorStore` (LanceDB) of this database."""
        if self._vectors is None:
            self._vectors = VectorStore(self.vectors_uri)
        return self._vectors

    @property
    def artifacts(self) -> ArtifactStore:
        """The :class:`protodb.storage.artifacts.ArtifactStore` of this database."""
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self.artifacts_uri)
        return self._artifacts

    def vector_lock(self, table: str):
        """Context manager serialising commits to vector table ``table`` across processes."""
        return _catalog()[1].vector_lock(self.engine, table)

    # ------------------------------------------------------------------ local folders
    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def staging_dir(self) -> Path:
        """Where imports unpack bundles: inside the home, so a killed import leaves nothing elsewhere."""
        return self.home / "staging"

    def clean_staging(self) -> None:
        """Remove what killed imports and writers left behind (their processes are gone)."""
        for folder in (self.staging_dir, self.home):
            n = remove_stale_temps(folder)
            if n:
                log.info("removed %d leftovers of killed runs in %s", n, folder)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def describe(self) -> dict[str, Any]:
        url = self.catalog_url if self._sqlite_file is not None else _catalog()[0].safe_url(self.engine)
        return {"home": str(self.home), "catalog_url": url,
                "vectors_uri": self.vectors_uri, "artifacts_uri": self.artifacts_uri}
