"""Bundles the outside red-team run got accepted (or half-imported): every one is now refused whole,
with one line, before anything is written (issue 13, items 5, 6 and 16)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import protodb
from protodb.errors import InvalidInput
from protodb.sharing.bundle.vectors import vectors_from_arrow, vectors_to_arrow
from protodb.storage.vectors import PrototypeRows
from tests.conftest import fake_extractor, random_rows
from tests.test_sharing import _bundle, _fake_db, _members, _snapshot, _write, hostile_env  # noqa: F401

SETS, CLASSES, IMAGES, MASKS = ("catalog/prototype_sets.json", "catalog/classes.json",
                                "catalog/support_images.json", "catalog/masks.json")


def _edit_json(members: dict[str, bytes], name: str, edit) -> dict[str, bytes]:
    rows = json.loads(members[name])
    edit(rows)
    return {**members, name: json.dumps(rows).encode()}


def _edit_vectors(members: dict[str, bytes], edit, tmp_path) -> dict[str, bytes]:
    """Rewrite the first set's Arrow file after ``edit(rows)`` changed its PrototypeRows."""
    vec = next(n for n in members if n.startswith("vectors/"))
    set_id = vec.split("/")[1].removesuffix(".arrow")
    path = tmp_path / "v.arrow"
    path.write_bytes(members[vec])
    sets = json.loads(members[SETS])
    (row,) = [r for r in sets if r["id"] == set_id]
    rows = vectors_from_arrow(path, set_id, 8, sum(row["counts"].values()))
    edit(rows)
    return {**members, vec: vectors_to_arrow(rows, set_id)}


def _region(rows: PrototypeRows, members, region) -> None:
    """Point the first prototype at the set's own support image (2x2 px: a 448x448 grid at patch 1)."""
    set_id = json.loads(members[SETS])[0]["id"]
    (link,) = [r for r in json.loads(members["catalog/prototype_set_images.json"]) if r["set_id"] == set_id]
    rows.image_ids[0], rows.regions[0] = link["image_id"], region


def _first(key, value):
    def edit(rows):
        rows[0][key] = value
    return edit


def _mask_row(members):
    image = json.loads(members[IMAGES])[0]
    return {"id": "ab" * 16, "image_id": image["id"], "role": "evil", "artifact_sha256": image["artifact_sha256"],
            "method": "given", "params": {}, "extractor_id": None, "created_at": image["created_at"],
            "protodb_version": "0.1.0"}


CASES = {
    "class kind evil": (lambda m, t: _edit_json(m, CLASSES, _first("kind", "evil")), "allowed: thing, stuff"),
    "version -5": (lambda m, t: _edit_json(m, SETS, _first("version", -5)), "outside 1.."),
    "version 2**40": (lambda m, t: _edit_json(m, SETS, _first("version", 2**40)), "32-bit range"),
    "class name ../../x": (lambda m, t: _edit_json(m, CLASSES, _first("name", "../../x")), "not a valid class name"),
    "mask role evil": (lambda m, t: {**m, MASKS: json.dumps([_mask_row(m)]).encode()}, "allowed: foreground, background"),
    "width 2**70": (lambda m, t: _edit_json(m, IMAGES, _first("width", 2**70)), "32-bit range"),
    "nbytes 2**63": (lambda m, t: _edit_json(m, SETS, _first("nbytes", 2**63)), "32-bit range"),
    "created_at year 1": (lambda m, t: _edit_json(m, SETS, _first("created_at", "0001-01-01T00:00:00+00:00")),
                          "outside 1970..9999"),
    "NaN weights": (lambda m, t: _edit_vectors(m, lambda r: r.weights.__setitem__(0, float("nan")), t),
                    "weights that are not finite"),
    "unknown image id": (lambda m, t: _edit_vectors(m, lambda r: r.image_ids.__setitem__(0, "cd" * 16), t),
                         "not one of the set's images"),
    "region outside the image": (lambda m, t: _edit_vectors(m, lambda r: _region(r, m, (0, 0, 449, 449)), t),
                                 "outside its image"),
    "all-zero vectors": (lambda m, t: _edit_vectors(m, lambda r: r.vectors.__setitem__(slice(None), 0.0), t),
                         "not L2-normalised"),
    "3e38 vectors": (lambda m, t: _edit_vectors(m, lambda r: r.vectors.__setitem__(slice(None), 3e38), t),
                     "not L2-normalised"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bundle_rows_are_checked_like_local_writes(hostile_env, case, tmp_path):  # noqa: F811
    make, expected = CASES[case]
    members = make(hostile_env["members"], tmp_path)
    path = _write(tmp_path / "bad.tar", _bundle(members))
    db = hostile_env["target"]
    before = _snapshot(db)
    with pytest.raises(InvalidInput) as err:
        db.sharing.import_bundle(path)
    msg = str(err.value)
    assert msg.startswith("bundle refused, nothing imported:") and expected in msg and "\n" not in msg
    assert _snapshot(db) == before  # nothing written: no artifacts, no vectors, no rows


def test_vectors_of_another_dimension_under_a_local_extractor_id(tmp_path):
    """16-d vectors under the id of an 8-d extractor here: refused before any artifact or vector is written."""
    src = protodb.open(tmp_path / "src")
    rows = PrototypeRows(vectors=np.eye(16, dtype=np.float32)[:3], kinds=["class", "part", "bg_class"])
    src.sets.commit("boat", fake_extractor(dim=16), rows, config_hash="x")  # same name -> same id, 16-d
    src.sharing.export(tmp_path / "b.tar", classes="boat")
    target = _fake_db(tmp_path / "target", ["cat"])  # holds the 8-d extractor with that id
    before = _snapshot(target)
    with pytest.raises(InvalidInput, match="is 8-d here but 16-d in the bundle"):
        target.sharing.import_bundle(tmp_path / "b.tar")
    assert _snapshot(target) == before


def test_postgres_refuses_an_out_of_range_version_before_writing(pg_url, tmp_path, hostile_env):  # noqa: F811
    db = protodb.open(tmp_path / "pg", catalog_url=pg_url)
    db.sets.commit("dog", fake_extractor(), random_rows(seed=3), config_hash="d")
    before = _snapshot(db)
    path = _write(tmp_path / "big.tar", _bundle(_edit_json(hostile_env["members"], SETS, _first("version", 2**40))))
    with pytest.raises(InvalidInput, match="32-bit range"):
        db.sharing.import_bundle(path)
    assert _snapshot(db) == before
    db.close()


def test_row_count_limit(hostile_env, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PROTODB_IMPORT_MAX_ROWS", "3")
    path = _write(tmp_path / "ok.tar", _bundle(hostile_env["members"]))
    with pytest.raises(InvalidInput, match="more than 3 catalog rows"):
        hostile_env["target"].sharing.import_bundle(path)


@pytest.mark.slow
def test_many_tag_rows_import_in_linear_time(tmp_path):
    """Tags are planned with bulk lookups and inserted in batches: 20,000 rows well under 1 ms each."""
    src = _fake_db(tmp_path / "src", ["boat"])
    (boat,) = src.sets.resolve("boat")
    src.sharing.export(tmp_path / "one.tar", classes="boat")
    members = _members(tmp_path / "one.tar")
    n = 20_000
    tags = [{"id": f"{i:032x}", "name": f"t{i}", "set_id": boat.id, "note": None,
             "created_at": "2026-01-01T00:00:00+00:00", "protodb_version": "0.1.0"} for i in range(n)]
    members["catalog/tags.json"] = json.dumps(tags).encode()
    path = _write(tmp_path / "tags.tar", _bundle(members))
    target = protodb.open(tmp_path / "target")
    t = time.perf_counter()
    res = target.sharing.import_bundle(path)
    seconds = time.perf_counter() - t
    assert len(res.added["tags"]) == n + 1  # + the import:<hash> origin tag
    print(f"{n} tag rows imported in {seconds:.2f} s ({1000 * seconds / n:.3f} ms/row)")
    assert seconds / n < 1e-3
