"""Versioned prototype sets: write order, resolution, tags, crash safety (a real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import protodb
from protodb.errors import InvalidInput, NotFound
from tests.conftest import fake_extractor, random_rows


def _write(pdb, name="boat", seed=0, config="cfg", ext=None, **kw):
    return pdb.sets.commit(name, ext or fake_extractor(), random_rows(seed=seed), config_hash=config, **kw)


def test_versions_and_references(db):
    s1 = _write(db, seed=1)
    s2 = _write(db, seed=2, config="cfg2")
    assert (s1.version, s2.version) == (1, 2)
    assert s1.status == s2.status == "ready"
    assert db.sets.resolve("boat")[0].id == s2.id
    assert db.sets.resolve("Boat@1")[0].id == s1.id
    np.testing.assert_array_equal(db.sets.prototypes(db.sets.resolve("boat@1")[0]).vectors, random_rows(seed=1).vectors)
    counts = s1.counts
    assert counts == {"class": 1, "instance": 2, "part": 3, "bg_class": 1, "bg_instance": 2, "bg_part": 3}
    assert db.info().prototype_sets == 2
    assert db.stores.vectors.version(s2.vector_table) >= s2.vector_table_version > s1.vector_table_version


def test_versions_are_per_extractor(db):
    a = _write(db, ext=fake_extractor(name="a"))
    b = _write(db, ext=fake_extractor(name="b"))
    assert a.version == b.version == 1
    assert {s.extractor for s in db.sets.resolve("boat")} == {"a", "b"}
    assert [s.extractor for s in db.sets.resolve("boat", extractor="b")] == ["b"]
    listing = db.sets.ls()
    assert listing[0].versions[0].extractors == ("a", "b")


def test_find_set_by_config(db):
    s1 = _write(db, config="same")
    assert db.sets.find("boat", fake_extractor().id, "same").id == s1.id
    assert db.sets.find("boat", fake_extractor().id, "other") is None
    assert db.sets.find("ship", fake_extractor().id, "same") is None


def test_tags_pin_one_set_per_class_and_many_classes(db):
    b1 = _write(db, "boat", seed=1)
    _write(db, "boat", seed=2, config="c2")
    c1 = _write(db, "cat", seed=3)
    db.sets.tag("voc:paper", ["boat@1", "cat"])
    assert db.sets.resolve("boat@voc:paper")[0].id == b1.id
    assert {s.id for s in db.sets.tagged("voc:paper").sets} == {b1.id, c1.id}
    db.sets.tag("voc:paper", ["boat@2"])  # re-pinning replaces boat's set, keeps cat's
    assert db.sets.resolve("boat@voc:paper")[0].version == 2
    assert len(db.sets.tagged("voc:paper").sets) == 2
    assert db.sets.untag("voc:paper").removed == 2
    with pytest.raises(NotFound):
        db.sets.tagged("voc:paper")


@pytest.mark.parametrize("ref,match", [
    ("ship", "no class 'ship'"), ("boat@7", "boat@7 does not exist"), ("boat@nope", "boat@nope"),
])
def test_unknown_references_are_one_line(db, ref, match):
    _write(db)
    with pytest.raises(NotFound, match=match) as err:
        db.sets.resolve(ref)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "bo@t"])
def test_bad_class_names_leave_the_catalog_unchanged(db, name):
    with pytest.raises(InvalidInput):
        _write(db, name)
    assert db.info().classes == 0


def test_no_prototypes_is_refused(db):
    from protodb.storage.vectors import PrototypeRows

    with pytest.raises(InvalidInput, match="no prototypes"):
        db.sets.commit("boat", fake_extractor(), PrototypeRows(np.zeros((0, 8)), []), config_hash="c")
    assert db.info().classes == 0


def test_postgres_sets(pg_url, home):
    pdb = protodb.open(home, catalog_url=pg_url)
    s1 = _write(pdb, seed=1)
    s2 = _write(pdb, seed=2, config="x")
    assert (s1.version, s2.version) == (1, 2)
    pdb.sets.tag("best", ["boat@1"])
    assert pdb.sets.resolve("boat@best")[0].id == s1.id
    assert pdb.verify().ok
    pdb.close()


CHILD = textwrap.dedent(
    """
    import sys, time, pathlib
    import protodb
    from tests.conftest import fake_extractor, random_rows
    home, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    def on_stage(stage):
        if stage == "vectors":
            marker.write_text("vectors written")
            time.sleep(600)   # the parent kills us here: vectors stored, set not yet ready
    pdb = protodb.open(home)
    pdb.sets.commit("boat", fake_extractor(), random_rows(seed=9), config_hash="cfg", on_stage=on_stage)
    """
)


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_visible_set_and_next_write_succeeds(db, home, tmp_path):
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(home), str(marker)], env=env)
    deadline = time.time() + 120
    while not marker.exists():
        assert child.poll() is None, "writer exited before reaching the vector stage"
        assert time.time() < deadline, "writer never reached the vector stage"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL

    fresh = protodb.open(home)
    info = fresh.info()
    assert info.prototype_sets == 0 and info.pending_sets == 1
    assert fresh.sets.ls() == []  # a class with no ready set is not listed
    with pytest.raises(NotFound, match="has no prototypes"):
        fresh.sets.resolve("boat")
    table = fake_extractor().id
    from protodb.storage.vectors import table_name

    orphan = fresh.stores.vectors.set_ids(table_name(table))
    assert len(orphan) == 1  # the killed writer's vectors exist but are not served

    done = _write(fresh, seed=10)
    assert done.version == 1 and done.status == "ready"
    assert fresh.info().pending_sets == 0
    assert fresh.stores.vectors.set_ids(table_name(table)) == {done.id}  # orphan vectors discarded
    assert fresh.verify().ok
