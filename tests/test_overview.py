"""ls / info / vocab list read the catalog in plain SQL: the same answers as the ORM rows, on SQLite
and PostgreSQL, and on SQLite without importing SQLAlchemy, LanceDB or torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import select

import protodb
from protodb.catalog.schema import PrototypeSetRow, SetImageRow, TagRow
from tests.conftest import child_env, fake_extractor, random_rows


def _fill(db) -> None:
    a, b = fake_extractor(name="a"), fake_extractor(name="b")
    db.sets.commit("boat", a, random_rows(seed=1), config_hash="c1")
    db.sets.commit("boat", a, random_rows(seed=2, n_parts=5), config_hash="c2")
    db.sets.commit("boat", b, random_rows(seed=3), config_hash="c1")
    db.sets.commit("cat", a, random_rows(seed=4, n_images=3), config_hash="c1")
    db.sets.tag("voc:paper", ["boat@1", "cat"])
    db.vocabs.create("pets", ["cat", "boat"], description="two")


def _expected_ls(db) -> dict:
    """From the ORM rows: (class, version) -> extractors, counts, images, bytes, tags, ready time."""
    out = {}
    with db.session() as s:
        for row in s.scalars(select(PrototypeSetRow).where(PrototypeSetRow.status == "ready")):
            images = len(s.scalars(select(SetImageRow).where(SetImageRow.set_id == row.id)).all())
            tags = set(s.scalars(select(TagRow.name).where(TagRow.set_id == row.id)).all())
            e = out.setdefault((row.cls.name, row.version), {"extractors": set(), "images": 0, "bytes": 0,
                                                              "tags": set(), "counts": row.counts})
            e["extractors"].add(row.extractor.name)
            e["images"] = max(e["images"], images)
            e["bytes"] += row.nbytes
            e["tags"] |= tags
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_ls_info_vocabs_match_the_orm_rows(backend, home, request):
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    db = protodb.open(home, catalog_url=url)
    _fill(db)
    expected = _expected_ls(db)
    listing = db.overview.ls()
    got = {(c.name, v.version): {"extractors": set(v.extractors), "images": v.images, "bytes": v.bytes,
                                 "tags": set(v.tags), "counts": v.counts}
           for c in listing for v in c.versions}
    assert got == expected and [c.name for c in listing] == ["boat", "cat"]
    assert got[("boat", 1)]["extractors"] == {"a", "b"} and got[("boat", 1)]["tags"] == {"voc:paper"}
    assert [c.name for c in db.overview.ls(["Cat"])] == ["cat"]
    info = db.info()
    assert (info.classes, info.prototype_sets, info.pending_sets, info.extractors) == (2, 4, 0, 2)
    vocabs = {v.name: v for v in db.overview.vocabularies()}
    assert (vocabs["pets"].classes, vocabs["pets"].builtin, vocabs["pets"].description) == (2, False, "two")
    assert vocabs["voc"].builtin and vocabs["voc"].classes == 20
    db.close()


def test_metadata_commands_import_no_sqlalchemy(home):
    db = protodb.open(home)
    _fill(db)
    want = {"ls": db.overview.ls(), "info": db.info(), "vocab": db.overview.vocabularies()}
    db.close()
    code = (
        "import json, sys\n"
        "from protodb_cli.main import app\n"
        "for args in (['ls'], ['info'], ['vocab', 'list']):\n"
        "    try:\n"
        f"        app(args + ['--db', {str(home)!r}, '--json'])\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "    print('\\x1e')\n"
        "print(json.dumps(sorted(m for m in ('sqlalchemy', 'alembic', 'lancedb', 'torch', 'pyarrow') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    docs = [json.loads(d) for d in out.stdout.split("\x1e\n")]  # one JSON document per command, then the modules
    ls_doc, info_doc, vocab_doc, imported = docs
    assert imported == []
    assert ls_doc == [c.to_dict() for c in want["ls"]]
    assert info_doc == want["info"].to_dict()
    assert vocab_doc == [v.to_dict() for v in want["vocab"]]


def test_damaged_counts_are_named_by_ls(db):
    s1 = db.sets.commit("boat", fake_extractor(), random_rows(), config_hash="c")
    with db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE prototype_sets SET counts = 'not json' WHERE id = ?", (s1.id,))
    with pytest.raises(protodb.DamagedData, match=r"boat@1 .* counts are not readable; run: protodb verify"):
        db.overview.ls()
