"""Catalog schema, migrations, revision checks and concurrency, on real SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import inspect, text

import protodb
from tests.conftest import fake_extractor, random_rows
from protodb.catalog import engine as engines
from protodb.catalog import migrate
from protodb.catalog.schema import Base
from protodb.errors import SchemaMismatch


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_open_creates_full_schema_with_sqlite_pragmas(db):
    assert _tables(db.engine) == set(Base.metadata.tables)
    assert db.schema_revision == migrate.head_revision() == "0003"
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == engines.SQLITE_BUSY_TIMEOUT_MS


def test_constraint_names_follow_convention(db):
    insp = inspect(db.engine)
    assert insp.get_pk_constraint("classes")["name"] == "pk_classes"
    fks = {fk["name"] for fk in insp.get_foreign_keys("prototype_sets")}
    assert "fk_prototype_sets_class_id_classes" in fks
    uqs = {uq["name"] for uq in insp.get_unique_constraints("prototype_sets")}
    assert "uq_prototype_sets_class_id_extractor_id_version" in uqs


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_downgrade_round_trip_and_check(backend, home, request):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    pdb = protodb.open(home, catalog_url=url)
    assert pdb.schema.check().in_sync is True
    pdb.schema.downgrade("base")
    assert _tables(pdb.engine) == set()
    assert pdb.schema.current().revision is None
    pdb.schema.upgrade()
    assert _tables(pdb.engine) == set(Base.metadata.tables)
    assert pdb.schema.check().to_dict() == {**pdb.schema.current().to_dict(), "in_sync": True, "differences": None}
    pdb.close()


def test_check_reports_a_schema_that_differs_from_the_orm(db):
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE tags ADD COLUMN surprise INTEGER"))
    result = db.schema.check()
    assert result.in_sync is False
    assert "surprise" in result.differences


def test_older_revision_is_refused_with_the_upgrade_command(db, home, monkeypatch):
    # Pretend this code knows a newer head than the catalog was created at.
    monkeypatch.setattr(migrate, "head_revision", lambda: "0004")
    monkeypatch.setattr(migrate, "known_revisions", lambda: {"0001", "0002", "0003", "0004"})
    with pytest.raises(SchemaMismatch) as err:
        protodb.open(home)
    assert "protodb db upgrade" in str(err.value) and "\n" not in str(err.value)


def test_newer_revision_is_refused(db, home):
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaMismatch, match="newer than this protodb knows"):
        protodb.open(home)


def test_foreign_tables_are_not_taken_over(home):
    home.mkdir(parents=True)
    eng = engines.make_engine(engines.sqlite_url(home / "catalog.sqlite"))
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE someone_elses (x INTEGER)"))
    with pytest.raises(SchemaMismatch, match="no protodb schema"):
        protodb.open(home)


def _open_and_report(path, queue):
    try:
        pdb = protodb.open(path)
        queue.put(pdb.schema_revision)
    except Exception as err:  # noqa: BLE001
        queue.put(f"error: {err!r}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_first_opens_do_not_race(backend, home, request, monkeypatch):
    if backend == "postgresql":
        monkeypatch.setenv("PROTODB_CATALOG_URL", request.getfixturevalue("pg_url"))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open_and_report, args=(str(home), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = [queue.get(timeout=5) for _ in procs]
    assert results == ["0003"] * 4
    pdb = protodb.open(home)
    assert pdb.schema.check().in_sync


def test_postgres_catalog_via_env(pg_url, home, monkeypatch):
    monkeypatch.setenv("PROTODB_CATALOG_URL", pg_url)
    pdb = protodb.open(home)
    info = pdb.info()
    assert info.catalog_url.startswith("postgresql+psycopg://")
    assert info.schema_revision == "0003" and info.classes == 0
    assert _tables(pdb.engine) == set(Base.metadata.tables)
    assert not (home / "catalog.sqlite").exists()


def test_revisions_list_matches_the_migration_scripts():
    """opening a catalog reads REVISIONS (no Alembic import); it must name the scripts' chain."""
    script = migrate.script_directory()
    chain = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert tuple(chain) == migrate.REVISIONS and script.get_current_head() == migrate.head_revision()


def test_a_0001_catalog_upgrades_to_head_keeping_its_sets(home):
    pdb = protodb.open(home)
    pdb.sets.commit("boat", fake_extractor(), random_rows(), config_hash="a")
    pdb.schema.downgrade("0001")
    assert pdb.schema.current().revision == "0001"
    pdb.close()
    with pytest.raises(SchemaMismatch, match="protodb db upgrade"):
        protodb.open(home)
    pdb = protodb.api.ProtoDB(home, check_schema=False)
    assert pdb.schema.upgrade().revision == migrate.head_revision()
    pdb.close()
    again = protodb.open(home)
    (boat,) = again.sets.resolve("boat")
    assert boat.version == 1 and boat.config is None and boat.vectors_sha256 is None
    assert again.verify().ok  # an old set without a checksum is still verified by count and kinds
