"""Teaching by example: corrections as data, teach / add-class --with-corrections, compare, bundles.

On the scene database of tests/serve_helpers.py (two tiny-preset exemplar classes), real SQLite, LanceDB
and artifact store; the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from sqlalchemy import func, select

import protodb
from protodb.catalog.schema import CorrectionRow, SupportImageRow
from protodb.errors import InvalidInput, NotFound
from tests.conftest import cli
from tests.serve_helpers import db_copy, scene, scene_db  # noqa: F401 - fixtures


def _box_mask(h: int = 96, w: int = 128) -> np.ndarray:
    """The corrected pixels: a rectangle inside the red half of a scene."""
    m = np.zeros((h, w), np.uint8)
    m[20:70, 10:50] = 255
    return m


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    img, lab = scene(21)
    out = {"image": tmp_path / "photo.png", "mask": tmp_path / "mask.png", "labels": tmp_path / "labels",
           "small": tmp_path / "small.png", "empty": tmp_path / "empty.png", "text": tmp_path / "notes.png"}
    PIL.Image.fromarray(img).save(out["image"])
    PIL.Image.fromarray(_box_mask()).save(out["mask"])
    out["labels"].mkdir()
    PIL.Image.fromarray(lab).save(out["labels"] / "photo.png")
    PIL.Image.fromarray(_box_mask(48, 64)).save(out["small"])
    PIL.Image.fromarray(np.zeros((96, 128), np.uint8)).save(out["empty"])
    out["text"].write_text("not an image")
    return out


def _state(home: Path) -> tuple[int, int, set[str]]:
    """(correction rows, support image rows, artifact files) of a database."""
    with protodb.open(home) as db, db.session() as s:
        rows = s.scalar(select(func.count()).select_from(CorrectionRow))
        images = s.scalar(select(func.count()).select_from(SupportImageRow))
    return rows, images, {p.name for p in (home / "artifacts").rglob("*") if p.is_file()}


def test_a_correction_is_stored_with_its_provenance(db_copy, files):
    with protodb.open(db_copy) as db:
        current = db.sets.resolve("red box")[0]
        (rec,) = db.corrections.add(files["image"], mask=files["mask"], class_name="red box", author="  ana  b ",
                                    set_id=current.id, settings={"vocab": "scene"})
        assert rec.class_name == "red box" and rec.author == "ana b" and rec.set_id == current.id
        assert rec.pixels == int((_box_mask() > 0).sum()) and (rec.width, rec.height) == (128, 96)
        import hashlib
        assert rec.source_sha256 == hashlib.sha256(files["image"].read_bytes()).hexdigest()
        assert rec.origin == "photo.png" and rec.settings == {"vocab": "scene"}
        image, mask = db.corrections.load(rec)
        assert np.array_equal(mask, _box_mask() > 0)
        assert np.array_equal(np.asarray(image), np.asarray(PIL.Image.open(files["image"]).convert("RGB")))
        assert [r.id for r in db.corrections.ls("red box")] == [rec.id] and db.corrections.ls("blue stripes") == ()
        assert {rec.image_sha256, rec.mask_sha256} <= db.integrity.referenced_artifacts()  # verify checks them
        assert db.verify().ok
        # adding a correction never touches a version
        assert db.sets.resolve("red box")[0].id == current.id and db.sets.resolve("red box")[0].version == 1
    listed = json.loads(cli("corrections", "ls", "--db", db_copy, "--json").stdout)
    assert [(c["id"], c["class"], c["pixels"], c["author"]) for c in listed] == \
        [(rec.id, "red box", rec.pixels, "ana b")]
    shown = json.loads(cli("inspect", "red box", "--db", db_copy, "--json").stdout)
    assert [c["id"] for c in shown["provenance"]["corrections"]["all"]] == [rec.id]
    assert shown["provenance"]["corrections"]["used"] == []


def test_a_label_map_corrects_several_classes_at_once(db_copy, files):
    lab = np.asarray(PIL.Image.open(files["labels"] / "photo.png"))
    with protodb.open(db_copy) as db:
        recs = db.corrections.add(files["image"], label_map=files["labels"] / "photo.png",
                                  values={0: "red box", 1: "blue stripes"})
        assert {r.class_name: r.pixels for r in recs} == {"red box": int((lab == 0).sum()),
                                                          "blue stripes": int((lab == 1).sum())}
        assert len({r.group_id for r in recs}) == 1 and {r.label_value for r in recs} == {0, 1}


@pytest.mark.parametrize("kind, kwargs, error, message", [
    ("unknown class", {"class_name": "kite"}, NotFound, "no class 'kite'"),
    ("size mismatch", {"mask": "small"}, InvalidInput, "64x48 but the image is 128x96"),
    ("empty mask", {"mask": "empty"}, InvalidInput, "marks no pixel"),
    ("mask not an image", {"mask": "text"}, InvalidInput, "not a readable mask image"),
    ("image not an image", {"image": "text"}, InvalidInput, "notes.png"),
    ("missing mask file", {"mask": "missing"}, InvalidInput, "does not exist"),
])
def test_bad_corrections_leave_the_database_as_it_was(db_copy, files, kind, kwargs, error, message):
    before = _state(db_copy)
    args = {"class_name": "red box", "mask": "mask", "image": "image", **kwargs}
    path = {k: files.get(args[k], files["image"].parent / "nothing.png") for k in ("mask", "image")}
    with protodb.open(db_copy) as db, pytest.raises(error) as err:
        db.teach(args["class_name"], path["image"], mask=path["mask"])
    assert message in str(err.value) and "\n" not in str(err.value)
    res = cli("teach", args["class_name"], path["image"], "--mask", path["mask"], "--db", db_copy, ok=False)
    assert res.exit_code != 0 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _state(db_copy) == before


def test_teach_builds_a_new_version_from_the_support_plus_the_corrections(db_copy, files):
    out = json.loads(cli("teach", "red box", files["image"], "--mask", files["mask"], "--author", "ana",
                         "--db", db_copy, "--json").stdout)
    (corr,) = out["corrections"]
    assert out["previous"] == "red box@1" and out["built"]["sets"][0]["version"] == 2
    with protodb.open(db_copy) as db:
        v1, v2 = db.sets.resolve("red box@1")[0], db.sets.resolve("red box@2")[0]
        assert db.sets.resolve("red box")[0].id == v2.id  # the newest serves; the old one stays addressable
        assert len(v2.images) == len(v1.images) + 1 and v2.images[:len(v1.images)] == v1.images
        with db.session() as s:
            new = s.get(SupportImageRow, v2.images[-1])
            assert new.source == "correction" and new.artifact_sha256 == corr["image_sha256"]
        # the exemplars carried over keep the masks they were given (the same digests as in v1)
        assert [e["mask"] for e in v2.config["exemplars"][:-1]] == [e["mask"] for e in v1.config["exemplars"]]
        assert v2.config["exemplars"][-1]["source"] == "correction"
        assert v2.config["exemplars"][-1]["corrections"] == [corr["id"]]
        rows = db.sets.prototypes(v2)
        from_correction = [k for k, i in zip(rows.kinds, rows.image_ids) if i == new.id]
        assert "instance" in from_correction and "bg_instance" in from_correction
        # v1 is unchanged: same vectors as before
        assert db.sets.prototypes(v1).checksum() == v1.vectors_sha256
        # segment --explain says where each winning prototype came from (a correction is named as such)
        from protodb.segment.options import SegmentOptions
        res = db.segmenter(SegmentOptions(classes="red box@2,blue stripes", explain=True, background=False)).segment(
            PIL.Image.open(files["image"]).convert("RGB"))
        assert res.winners
        for w in res.winners.values():
            assert (w.get("support_source") in ("exemplar", "correction")) == bool(w.get("support_image"))
    shown = json.loads(cli("inspect", "red box", "--db", db_copy, "--json").stdout)
    assert shown["provenance"]["corrections"]["used"] == [corr["id"]]
    # the same pixels again: no new version (exactly once)
    again = json.loads(cli("teach", "red box", files["image"], "--mask", files["mask"], "--db", db_copy,
                           "--json").stdout)
    assert again["built"]["sets"][0]["version"] == 2 and again["built"]["sets"][0]["reused"]


def test_add_class_with_corrections(db_copy, files, tmp_path):
    ex = tmp_path / "ex"
    ex.mkdir()
    PIL.Image.fromarray(scene(30)[0]).save(ex / "a.png")
    res = cli("add-class", "red box", "--images", "0", "--exemplars", ex, "--with-corrections", "--preset", "tiny",
              "-k", "4", "--db", db_copy, ok=False)
    assert res.exit_code != 0 and "has no corrections" in res.stderr
    cli("teach", "red box", files["image"], "--mask", files["mask"], "--store-only", "--db", db_copy, "-q")
    out = json.loads(cli("add-class", "red box", "--images", "0", "--exemplars", ex, "--with-corrections",
                         "--preset", "tiny", "-k", "4", "--db", db_copy, "--json").stdout)
    assert out["exemplar_images"] == 2 and out["sets"][0]["version"] == 2
    sources = [e.get("source", "exemplar") for e in out["sets"][0]["config"]["exemplars"]]
    assert sources == ["exemplar", "correction"]
    # teach without an image: a rebuild from the newest version's support plus the stored corrections
    # (v2's photo and -k 4 carried over, the same correction): the same config, so v2 is found, not rebuilt
    again = json.loads(cli("teach", "red box", "--db", db_copy, "--json").stdout)
    assert again["sets"][0]["version"] == 2 and again["sets"][0]["reused"]


def test_compare_before_and_after(db_copy, files):
    cli("teach", "red box", files["image"], "--mask", files["mask"], "--db", db_copy, "-q")
    rep = json.loads(cli("compare", "red box@1", "red box@2", "--with", "blue stripes", "--db", db_copy,
                         "--json").stdout)
    c = rep["classes"]["red box"]
    assert rep["on"] == "corrections" and rep["images"] == 1 and c["pixels"] == int((_box_mask() > 0).sum())
    assert 0 <= c["a"] <= 1 and 0 <= c["b"] <= 1 and c["change"] == pytest.approx(c["b"] - c["a"], abs=2e-4)
    assert 0 <= c["hit_a"] <= 1 and rep["settings"]["others"] == ["blue stripes"]
    lab = json.loads(cli("compare", "red box@1", "red box@2", "--images", files["image"].parent, "--labels",
                         files["labels"], "--value", "0=red box", "--value", "1=blue stripes", "--with", "blue stripes",
                         "--db", db_copy, "--json").stdout)
    assert lab["on"] == "labels" and set(lab["classes"]) == {"red box", "blue stripes"}
    assert lab["classes"]["red box"]["pixels"] == 96 * 64
    bad = cli("compare", "red box@1", "blue stripes@1", "--db", db_copy, ok=False)
    assert bad.exit_code != 0 and "different classes" in bad.stderr


def test_corrections_travel_in_bundles(db_copy, files, tmp_path):
    out = json.loads(cli("teach", "red box", files["image"], "--mask", files["mask"], "--author", "ana",
                         "--db", db_copy, "--json").stdout)
    bundle = tmp_path / "b.tar"
    cli("export", "--classes", "red box", "-o", bundle, "--db", db_copy, "-q")
    other = tmp_path / "other"
    res = json.loads(cli("import", bundle, "--db", other, "--json").stdout)
    assert res["added"]["corrections"] == 1
    with protodb.open(other) as db:
        (rec,) = db.corrections.ls("red box")
        assert rec.to_dict() == out["corrections"][0]
        assert np.array_equal(db.corrections.load(rec)[1], _box_mask() > 0)
    again = json.loads(cli("import", bundle, "--db", other, "--json").stdout)
    assert again["added"]["corrections"] == 0
