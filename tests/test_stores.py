"""Artifact store (content addressing, verify) and LanceDB vector store, on real files."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from protodb.storage.artifacts import ArtifactStore
from protodb.storage.vectors import PrototypeRows, VectorStore, prototype_schema
from tests.conftest import random_rows


def test_same_bytes_are_stored_once(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    d1 = store.put(b"hello")
    d2 = store.put(b"hello")
    assert d1 == d2 == hashlib.sha256(b"hello").hexdigest()
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].read_bytes() == b"hello"
    assert files[0].relative_to(tmp_path / "a").as_posix() == f"{d1[:2]}/{d1[2:]}"
    assert store.get(d1) == b"hello" and store.size(d1) == 5


def test_verify_finds_missing_and_corrupt(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    good, bad, gone = store.put(b"good"), store.put(b"bad"), store.put(b"gone")
    store.local_path(bad).write_bytes(b"tampered")
    store.local_path(gone).unlink()
    report = store.verify([good, bad, gone, good])
    assert report.checked == 3 and report.missing == [gone] and report.corrupt == [bad]
    assert not report.ok


def test_fsspec_url_store(tmp_path):
    store = ArtifactStore("memory://protodb-test-artifacts")
    digest = store.put(b"\x89PNG fake")
    assert store.exists(digest) and store.get(digest) == b"\x89PNG fake"
    assert store.local_path(digest) is None
    assert store.verify([digest]).ok


def test_rejects_non_digest_names(tmp_path):
    with pytest.raises(ValueError):
        ArtifactStore(tmp_path).path("../../etc/passwd")


def test_vector_schema_is_explicit():
    schema = prototype_schema(384)
    assert schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert schema.field("region").type == pa.list_(pa.int32(), 4)
    assert [f.name for f in schema] == ["id", "set_id", "kind", "image_id", "region", "weight", "vector"]


def test_vectors_round_trip_and_filters(tmp_path):
    store = VectorStore(str(tmp_path / "v"))
    a, b = random_rows(seed=1), random_rows(seed=2, n_parts=5)
    v1 = store.add("t", "seta", a)
    v2 = store.add("t", "setb", b)
    assert v2 > v1
    got = store.read("t", ["seta"])
    assert got.kinds == a.kinds
    np.testing.assert_array_equal(got.vectors, a.vectors)
    assert got.regions == a.regions and set(got.set_ids) == {"seta"}
    parts = store.read("t", ["seta", "setb"], kinds=["part"])
    assert len(parts) == 3 + 5 and set(parts.kinds) == {"part"}
    assert store.set_ids("t") == {"seta", "setb"}
    store.delete_sets("t", ["seta"])
    assert store.set_ids("t") == {"setb"} and len(store.read("t", ["seta"])) == 0


def test_vector_dimension_mismatch_is_refused(tmp_path):
    store = VectorStore(str(tmp_path / "v"))
    store.add("t", "s1", random_rows(dim=8))
    with pytest.raises(ValueError, match="8-d"):
        store.add("t", "s2", random_rows(dim=16))


def test_rows_validate_kinds():
    with pytest.raises(ValueError, match="unknown prototype kinds"):
        PrototypeRows(vectors=np.zeros((1, 4)), kinds=["foreground"])


def test_vector_queries_refuse_injection(tmp_path):
    store = VectorStore(str(tmp_path / "v"))
    store.add("t", "s1", random_rows())
    with pytest.raises(ValueError, match="unsafe"):
        store.read("t", ["s1' OR '1'='1"])
