"""Summary indexes travel with bundles: an exported vocabulary's manifest records its fresh indexes (kind and
parameters), an import or pull rebuilds them in the receiving database after the sets land, a bundle
without them imports as before, and a rebuild that fails leaves the import standing with one line saying
what to run. Real SQLite + LanceDB databases of synthetic sets (the tiny extractor's features)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import protodb
from protodb.errors import InvalidInput
from protodb.storage.vectors import SummaryTables
from tests.conftest import clean_env, cli
from tests.test_vocab_scale import _image, _opts, _rows, _unit, build_db


def _manifest(bundle: Path) -> dict:
    with tarfile.open(bundle) as tf:
        return json.load(tf.extractfile("manifest.json"))


def _rewrite_manifest(bundle: Path, out: Path, change) -> None:
    """A copy of ``bundle`` whose manifest went through ``change`` (the other members as they were: the
    manifest is the root of the bundle's hashes, nothing names its own)."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "manifest.json":
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


def _index_tables(home: Path) -> list[str]:
    db = protodb.open(home)
    try:
        return db.indexes.tables.names()
    finally:
        db.close()


@pytest.fixture(scope="module")
def flat_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """Database 'a' (vocabulary big: 42 classes) with a fresh flat index, exported through the command line."""
    clean_env()
    root = tmp_path_factory.mktemp("index-sharing")
    a = build_db(root / "a", distractors=40)
    a.indexes.build("big")
    a.close()
    cli("export", "--vocab", "big", "-o", root / "big.tar", "--db", root / "a")
    return root / "a", root / "big.tar"


def test_export_records_the_fresh_index_and_import_rebuilds_it(flat_bundle, tmp_path):
    a_home, bundle = flat_bundle
    (entry,) = _manifest(bundle)["contents"]["vocabularies"]
    assert entry["indexes"] == [{"extractor": "tiny-vit", "kind": "flat", "params": {}, "classes": 42, "rows": 126}]

    b_home = tmp_path / "b"
    r = cli("import", bundle, "--db", b_home)
    assert "index of big (tiny-vit, flat): rebuilt here" in r.stderr
    (st,) = json.loads(cli("index", "status", "big", "--db", b_home, "--json").stdout)
    assert (st["state"], st["kind"], st["classes"], st["rows"], st["params"]) == ("fresh", "flat", 42, 126, {})
    # two-stage segment reads the rebuilt index and labels exactly as the exporting database does
    a, b = protodb.open(a_home), protodb.open(b_home)
    b.registry("tiny").extractor_spec("tiny-vit")  # the tiny extractor's weights file in this home
    try:
        sa, sb = a.segmenter(_opts(shortlist=8)), b.segmenter(_opts(shortlist=8))
        ma, mb = sa.stage1.describe(), sb.stage1.describe()
        assert (mb["stage1"], mb["index_state"]) == ("flat", "fresh") and mb["index_table"] == st["table"]
        ra, rb = sa.segment(_image()), sb.segment(_image())
        assert np.array_equal(ra.labels, rb.labels) and ra.kept == rb.kept
        assert ma["stage1"] == "flat"
        # the summary the receiving database built holds the same vectors as the exporter's
        (rec_a,), (rec_b,) = a.indexes.records("big"), b.indexes.records("big")
        assert rec_a["coverage"] == rec_b["coverage"]
        oa, va = a.indexes.tables.read(rec_a["table"])
        ob, vb = b.indexes.tables.read(rec_b["table"])
        assert np.array_equal(oa, ob) and np.array_equal(va, vb)
    finally:
        a.close()
        b.close()

    # the same bundle again: nothing added, the index here is fresh and kept (not rebuilt)
    again = json.loads(cli("import", bundle, "--db", b_home, "--json").stdout)
    assert again["added"]["sets"] == [] and [i["state"] for i in again["indexes"]] == ["fresh"]
    assert again["indexes"][0]["table"] == st["table"]
    assert _index_tables(b_home) == [st["table"]]


def test_dry_run_says_what_would_be_rebuilt_and_builds_nothing(flat_bundle, tmp_path):
    _a, bundle = flat_bundle
    res = json.loads(cli("import", bundle, "--dry-run", "--db", tmp_path / "c", "--json").stdout)
    assert res["indexes"] == [{"vocabulary": "big", "extractor": "tiny-vit", "kind": "flat", "params": {},
                               "state": "would rebuild"}]
    assert _index_tables(tmp_path / "c") == []


def test_ivf_pq_index_is_rebuilt_with_its_parameters(tmp_path):
    clean_env()
    a = build_db(tmp_path / "a", distractors=100)
    (built,) = a.indexes.build("big", kind="ivf_pq")
    a.close()
    cli("export", "--vocab", "big", "-o", tmp_path / "big.tar", "--db", tmp_path / "a")
    (carried,) = _manifest(tmp_path / "big.tar")["contents"]["vocabularies"][0]["indexes"]
    assert carried["kind"] == "ivf_pq" and carried["params"] == built.params
    res = json.loads(cli("import", tmp_path / "big.tar", "--db", tmp_path / "b", "--json").stdout)
    assert [(i["state"], i["kind"], i["params"]) for i in res["indexes"]] == [("rebuilt", "ivf_pq", built.params)]
    b = protodb.open(tmp_path / "b")
    b.registry("tiny").extractor_spec("tiny-vit")
    try:
        (st,) = b.indexes.status("big")
        assert (st.state, st.kind, st.params, st.rows) == ("fresh", "ivf_pq", built.params, 306)
        seg = b.segmenter(_opts(shortlist=16))
        m = seg.stage1.describe()
        assert (m["stage1"], m["index_state"], m["index_params"]) == ("ivf_pq", "fresh", built.params)
        assert {"red box", "blue stripes"} <= set(seg.segment(_image()).kept)
        # parameters that cannot make an index here are refused before anything is written
        bad = {**built.params, "num_sub_vectors": 5}
        with pytest.raises(InvalidInput, match="num_sub_vectors 5 does not divide the 32-d vectors"):
            b.indexes.build("big", kind="ivf_pq", params=bad)
        with pytest.raises(InvalidInput, match="for --kind ivf_pq"):
            b.indexes.build("big", kind="flat", params={})
        with pytest.raises(InvalidInput, match="positive integers"):
            b.indexes.build("big", kind="ivf_pq", params={"nprobes": 2})
        assert [(s.state, s.table) for s in b.indexes.status("big")] == [("fresh", st.table)]
        assert b.indexes.tables.names() == [st.table]
    finally:
        b.close()


def test_a_stale_index_or_none_does_not_travel_and_old_bundles_import_as_before(tmp_path):
    clean_env()
    a = build_db(tmp_path / "a", distractors=10)
    cli("export", "--vocab", "big", "-o", tmp_path / "none.tar", "--db", tmp_path / "a")
    a.indexes.build("big")
    rng = np.random.default_rng(3)
    (record,) = [a.sets.extractor_row(s.extractor_id) for s in a.sets.resolve("distractor 2")]
    a.sets.commit("distractor 2", record, _rows(_unit(rng.normal(size=(8, 32))), _unit(rng.normal(size=(3, 32)))),
                  config_hash="other")
    assert [s.state for s in a.indexes.status("big")] == ["stale"]
    a.close()
    cli("export", "--vocab", "big", "-o", tmp_path / "stale.tar", "--db", tmp_path / "a")
    for name in ("none.tar", "stale.tar"):
        (entry,) = _manifest(tmp_path / name)["contents"]["vocabularies"]
        assert set(entry) == {"name", "builtin", "members"}  # the manifest is what it was before indexes travelled
        home = tmp_path / f"into-{name}"
        res = json.loads(cli("import", tmp_path / name, "--db", home, "--json").stdout)
        assert res["indexes"] == [] and len(res["added"]["sets"]) == 12
        assert [s.state for s in protodb.open(home).indexes.status("big")] == ["none"]


def test_a_failed_rebuild_leaves_the_import_standing_with_one_line(flat_bundle, tmp_path):
    """A carried IVF-PQ index that cannot be built here (126 summary vectors: too few for IVF-PQ): the sets
    and the vocabulary are imported; the index is not, and one line says so."""
    _a, bundle = flat_bundle

    def bad_params(m):
        m["contents"]["vocabularies"][0]["indexes"] = [{"extractor": "tiny-vit", "kind": "ivf_pq", "params": {
            "num_partitions": 4, "num_sub_vectors": 5, "nprobes": 8, "refine_factor": 2}}]

    _rewrite_manifest(bundle, tmp_path / "bad.tar", bad_params)
    home = tmp_path / "b"
    r = cli("import", tmp_path / "bad.tar", "--db", home)
    lines = [ln for ln in r.stderr.splitlines() if "index" in ln]
    assert lines == ["  warning: the index of big (tiny-vit, ivf_pq) was not rebuilt here (an IVF-PQ index needs "
                     "at least 256 summary vectors; big has 126: use --kind flat); the import stands: rebuild it "
                     "with: protodb index build big"]
    b = protodb.open(home)
    try:
        assert len(b.vocabs.show("big").classes) == 42 and len(b.sets.resolve("red box")) == 1
        assert [s.state for s in b.indexes.status("big")] == ["none"] and b.indexes.tables.names() == []
    finally:
        b.close()
    # the line's advice works
    (st,) = json.loads(cli("index", "build", "big", "--db", home, "--json").stdout)
    assert st["state"] == "fresh"

    # an unknown kind (a newer protodb's?) fails the same way, reported in the JSON report
    def unknown_kind(m):
        m["contents"]["vocabularies"][0]["indexes"] = [{"extractor": "tiny-vit", "kind": "hnsw", "params": {}}]

    _rewrite_manifest(bundle, tmp_path / "hnsw.tar", unknown_kind)
    res = json.loads(cli("import", tmp_path / "hnsw.tar", "--db", tmp_path / "c", "--json").stdout)
    (ix,) = res["indexes"]
    assert ix["state"] == "failed" and "hnsw" in ix["error"] and len(res["added"]["sets"]) == 42


def test_a_malformed_index_entry_refuses_the_bundle_whole(flat_bundle, tmp_path):
    _a, bundle = flat_bundle
    cases = {
        "not a list": lambda m: m["contents"]["vocabularies"][0].update(indexes={"tiny-vit": "flat"}),
        "params not ints": lambda m: m["contents"]["vocabularies"][0].update(
            indexes=[{"extractor": "tiny-vit", "kind": "ivf_pq", "params": {"nprobes": "all"}}]),
        "two for one extractor": lambda m: m["contents"]["vocabularies"][0].update(
            indexes=[{"extractor": "tiny-vit", "kind": "flat", "params": {}}] * 2),
    }
    for i, (case, change) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.tar"
        _rewrite_manifest(bundle, path, change)
        home = tmp_path / f"b{i}"
        r = cli("import", path, "--db", home, ok=False)
        assert r.exit_code == 1 and "bundle refused, nothing imported" in r.stderr, case
        assert len(r.stderr.strip().splitlines()) == 1, case
        db = protodb.open(home)
        try:
            assert db.sets.ls() == [] and db.indexes.records() == [] and db.indexes.tables.names() == [], case
        finally:
            db.close()


def test_push_and_pull_carry_the_index(flat_bundle, tmp_path):
    a_home, _bundle = flat_bundle
    remote = tmp_path / "remote"
    cli("remote", "add", "nas", remote, "--db", a_home)
    cli("push", "nas", "--vocab", "big", "--db", a_home)
    b_home = tmp_path / "b"
    cli("remote", "add", "nas", remote, "--db", b_home)
    res = json.loads(cli("pull", "nas", "--vocab", "big", "--db", b_home, "--json").stdout)
    (imp,) = res["imports"]
    assert [(i["vocabulary"], i["state"]) for i in imp["indexes"]] == [("big", "rebuilt")]
    r = cli("index", "status", "big", "--db", b_home)
    assert "\tfresh\tflat\t42\t126\t" in r.stderr
    assert all(n.startswith(SummaryTables.PREFIX) for n in _index_tables(b_home))
