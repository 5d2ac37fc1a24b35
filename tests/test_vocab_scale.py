"""Large vocabularies: two-stage matching (shortlist, exhaustive equality), the summary index (build,
status, stale, drop, killed build, verify) and lazy prototype loading, on small synthetic vocabularies
written through the real stores (SQLite catalog, LanceDB, the tiny random-weight extractor)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch

import protodb
from protodb.features.windows import WindowSpec
from protodb.segment import batched
from protodb.segment.options import SegmentOptions
from protodb.segment.shortlist import ExactSearch, patch_queries, round_robin
from protodb.storage.vectors import PrototypeRows
from tests.conftest import child_env, clean_env, cli
from tests.serve_helpers import scene

SPEC = WindowSpec(short_side=64, sizes=(64,), stride=32, whole=True)
DISTRACTORS = 150


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _rows(fg: np.ndarray, bg: np.ndarray) -> PrototypeRows:
    kinds = ["class"] + ["instance"] * 2 + ["part"] * (len(fg) - 3)
    kinds += ["bg_class"] + ["bg_part"] * (len(bg) - 1)
    return PrototypeRows(vectors=np.concatenate([fg, bg]), kinds=kinds,
                         regions=[None if k.endswith("class") else (0, 0, 1, 1) for k in kinds])


def build_db(home, distractors: int = DISTRACTORS, seed: int = 0):
    """'red box' and 'blue stripes' from the tiny extractor's features of the scene halves, plus
    ``distractors`` classes of random unit vectors; vocabulary 'big' holds them all."""
    db = protodb.open(home)
    reg = db.registry("tiny")
    spec = reg.extractor_spec("tiny-vit")
    ext = reg.load_extractor(spec, "cpu", torch.float32)
    record = reg.extractor_record(spec, ext)
    img, _ = scene(3)
    items = []
    rng = np.random.default_rng(seed)
    for name, half in (("red box", img[:, :64]), ("blue stripes", img[:, 64:])):
        t = torch.from_numpy(np.array(PIL.Image.fromarray(half).resize((64, 64)))).permute(2, 0, 1).float() / 255
        f = ext(t[None]).reshape(-1, record.dim).detach().numpy()
        picks = f[rng.choice(len(f), 7, replace=False)]
        items.append((name, _rows(_unit(np.concatenate([f.mean(0, keepdims=True), picks])),
                                  _unit(rng.normal(size=(3, record.dim))))))
    for i in range(distractors):  # a centre, and prototypes around it (as a real class's parts are)
        centre = rng.normal(size=(1, record.dim))
        items.append((f"distractor {i}", _rows(_unit(centre + 0.4 * rng.normal(size=(8, record.dim))),
                                               _unit(rng.normal(size=(3, record.dim))))))
    db.sets.commit_many(record, items, config_hash="synthetic", params={"synthetic": True})
    db.vocabs.create("big", [n for n, _ in items])
    return db


@pytest.fixture(scope="module")
def bigdb(tmp_path_factory):
    clean_env()
    home = tmp_path_factory.mktemp("vocab-scale") / "db"
    build_db(home).close()
    return home


def _image(seed: int = 11) -> PIL.Image.Image:
    return PIL.Image.fromarray(scene(seed)[0])


def _opts(**kw) -> SegmentOptions:
    return SegmentOptions(vocab="big", windows=SPEC, background=False, **kw)


def test_shortlist_helpers_find_the_known_winner():
    """Hand-built summary: query i is closest to class 3i; the round robin takes first choices first."""
    rng = np.random.default_rng(0)
    vecs = _unit(rng.normal(size=(40, 16)))
    owner = np.arange(40) // 2  # 20 classes, two rows each
    search = ExactSearch(vecs, owner, 20, {"stage1": "exact"})
    queries = torch.from_numpy(vecs[[0, 13, 27]] + 0.01)
    ranked = search.ranked(torch.nn.functional.normalize(queries, dim=1), 5)
    assert [r[0] for r in ranked] == [0, 6, 13]
    assert round_robin([[1, 2, 3], [4, 1, 5]], 3) == [1, 2, 4]
    assert round_robin([[1, 2, 3], [4, 1, 5]], 3, allowed={2, 3, 5}) == [2, 3, 5]
    pts = torch.tensor([[1.0, 0], [0.99, 0.1], [0, 1.0], [0.98, 0.12]])
    q = patch_queries(pts, 2)
    assert {tuple(np.round(v, 2)) for v in q.numpy()} >= {(0.0, 1.0)}  # the odd one out gets its own query


def test_two_stage_equals_exhaustive_when_winners_are_shortlisted(bigdb):
    db = protodb.open(bigdb, create=False)
    img = _image()
    ex = db.segmenter(_opts(exhaustive=True))
    two = db.segmenter(_opts(shortlist=24))
    assert ex.stage1 is None and two.stage1 is not None and two.vocab.lazy
    assert not two.vocab._cache  # nothing read at start-up in the two-stage path
    a, b = ex.segment(img), two.segment(img)
    winners = {int(v) for v in np.unique(a.labels)}
    t = to_tensor_feats(two, img)
    shortlist = two.shortlist(t, None)
    assert len(shortlist) == 24 and winners <= set(shortlist)
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.scores, b.scores, atol=1e-5)
    m = b.settings["matching"]
    assert m["mode"] == "two-stage" and m["shortlist"] == 24 and m["stage1"] == "exact" and m["index_state"] == "none"
    assert a.settings["matching"] == {"mode": "exhaustive"}
    assert set(b.kept) == {two.vocab.names[i] for i in shortlist}
    assert len(two.vocab._cache) <= 24  # only the shortlisted classes' prototypes were read


def to_tensor_feats(seg, img):
    from protodb.images import to_tensor

    return [f for sc in SPEC.at_scales() for f in batched.batched_features(seg.extractors["tiny-vit"],
                                                                         [to_tensor(img)], sc)[0]]


def test_size_picks_the_path_and_options_are_checked(bigdb):
    db = protodb.open(bigdb, create=False)
    from protodb.errors import InvalidInput

    assert db.segmenter(_opts()).stage1 is None  # 152 classes: below the two-stage size
    assert db.segmenter(_opts(shortlist=152)).stage1 is None  # a shortlist of all classes is exhaustive
    with pytest.raises(InvalidInput, match="not both"):
        db.segmenter(_opts(shortlist=5, exhaustive=True))
    with pytest.raises(InvalidInput, match="shortlist"):
        db.segmenter(_opts(shortlist=0))


def test_index_build_status_stale_verify_drop(tmp_path):
    clean_env()
    home = tmp_path / "db"
    db = build_db(home, distractors=40)
    st = db.indexes.build("big")
    assert [s.state for s in st] == ["fresh"] and st[0].kind == "flat" and st[0].classes == 42
    assert st[0].rows == 42 * 3  # class + 2 instance prototypes per class
    seg = db.segmenter(_opts(shortlist=8))
    assert seg.stage1.describe()["stage1"] == "flat" and seg.stage1.describe()["index_state"] == "fresh"
    labels_fresh = seg.segment(_image()).labels
    exact = db.segmenter(_opts(shortlist=8))
    # a new set of one class makes the index stale: status and verify say so, segment still works (exact)
    rng = np.random.default_rng(5)
    (record,) = [db.sets.extractor_row(s.extractor_id) for s in db.sets.resolve("distractor 3")]
    db.sets.commit("distractor 3", record, _rows(_unit(rng.normal(size=(8, 32))), _unit(rng.normal(size=(3, 32)))),
                   config_hash="other")
    (s,) = db.indexes.status("big")
    assert s.state == "stale" and s.changed == 2
    report = db.verify()
    assert report.ok and [i.state for i in report.indexes] == ["stale"]
    seg2 = db.segmenter(_opts(shortlist=8))
    assert seg2.stage1.describe()["index_state"] == "stale" and seg2.stage1.describe()["stage1"] == "exact"
    seg2.segment(_image())
    assert [s.state for s in db.indexes.build("big")] == ["fresh"]
    assert exact.segment(_image()).labels.shape == labels_fresh.shape
    # a table removed behind the catalog's back is damage for verify
    (rec,) = db.indexes.records("big")
    db.indexes.tables.drop(rec["table"])
    report = db.verify()
    assert not report.ok and any(d.what == "index" for d in report.damage)
    db.indexes.drop("big")
    assert [s.state for s in db.indexes.status("big")] == ["none"]
    assert db.indexes.tables.names() == []
    db.close()


def test_index_cli_and_a_killed_build_leaves_the_previous_index(tmp_path):
    clean_env()
    home = tmp_path / "db"
    build_db(home, distractors=40).close()
    out = json.loads(cli("index", "build", "big", "--db", home, "--json").stdout)
    assert out[0]["state"] == "fresh"
    before = json.loads(cli("index", "status", "big", "--db", home, "--json").stdout)[0]
    # a build killed while writing its table: the recorded index stays the same and usable
    code = ("import os, protodb\n"
            "from protodb.storage import vectors\n"
            "orig = vectors.SummaryTables.write\n"
            "def write(self, *a, **k):\n"
            "    orig(self, *a, **k)\n"
            "    os.kill(os.getpid(), 9)\n"
            "vectors.SummaryTables.write = write\n"
            f"protodb.open({str(home)!r}).indexes.build('big')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL
    after = json.loads(cli("index", "status", "big", "--db", home, "--json").stdout)[0]
    assert after == before and after["state"] == "fresh"
    db = protodb.open(home)
    assert len(db.indexes.tables.names()) == 2  # the killed build's orphan is still there
    seg = db.segmenter(_opts(shortlist=8))
    assert seg.stage1.describe()["index_table"] == before["table"]
    seg.segment(_image())
    db.close()
    r = cli("index", "drop", "big", "--db", home)
    assert "dropped" in r.stderr
    assert protodb.open(home).indexes.tables.names() == []  # orphans go too
    r = cli("index", "drop", "big", "--db", home, ok=False)
    assert r.exit_code != 0 and "no index" in r.stderr
    r = cli("index", "build", "nope", "--db", home, ok=False)
    assert r.exit_code != 0 and "nope" in r.stderr


def test_segment_cli_records_the_shortlist(bigdb, tmp_path):
    p = tmp_path / "img.png"
    _image().save(p)
    out = tmp_path / "out"
    r = cli("segment", p, "--vocab", "big", "--no-background", "--shortlist", "16", "--out", out, "--db", bigdb,
            "--json")
    settings = json.loads(r.stdout)["settings"]
    assert settings["matching"]["mode"] == "two-stage" and settings["matching"]["shortlist"] == 16
    written = json.loads((out / "img.json").read_text())
    assert written["settings"]["matching"]["shortlist"] == 16
    r = cli("segment", p, "--vocab", "big", "--exhaustive", "--shortlist", "4", "--db", bigdb, ok=False)
    assert r.exit_code != 0 and "not both" in r.stderr
    assert os.environ.get("PROTODB_HOME") is None
    time.sleep(0)


def test_ivf_pq_index_searched_through_lancedb(bigdb):
    """An IVF-PQ index over the summary: stage 1 goes through LanceDB's ANN search and still shortlists
    the two real classes of the scene; the settings carry the index's parameters."""
    db = protodb.open(bigdb)
    try:
        (st,) = db.indexes.build("big", kind="ivf_pq")
        assert (st.kind, st.state, st.rows) == ("ivf_pq", "fresh", 152 * 3)
        assert st.params["num_partitions"] == int(np.sqrt(152 * 3)) and st.params["num_sub_vectors"] == 4
        seg = db.segmenter(_opts(shortlist=16))
        m = seg.stage1.describe()
        assert (m["stage1"], m["index_state"], m["index_params"]["nprobes"]) == ("ivf_pq", "fresh", 32)
        res = seg.segment(_image())
        assert {"red box", "blue stripes"} <= set(res.kept) and len(res.kept) == 16
        assert res.settings["matching"]["index_table"] == st.table
    finally:
        db.indexes.drop("big")
        db.close()
