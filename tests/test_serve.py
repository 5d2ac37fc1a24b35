"""protodb serve: the API through FastAPI's TestClient and through a real uvicorn process on 127.0.0.1,
live reload of new ready sets, back-pressure, bad inputs and write protection."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

if os.environ.get("CI"):  # CI installs the serve extra (make setup): missing, these tests fail, never skip
    import fastapi  # noqa: F401
    import httpx  # noqa: F401
pytest.importorskip("fastapi", reason="protodb serve needs the serve extra: pip install 'protodb[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

import warnings  # noqa: E402

import httpx  # noqa: E402

with warnings.catch_warnings():  # starlette 1.x prefers httpx2 for its test client; httpx 0.28 still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

import protodb  # noqa: E402
import protodb.serve  # noqa: E402
import protodb_cli  # noqa: E402
from protodb.errors import InvalidInput  # noqa: E402
from protodb.images import load_image  # noqa: E402
from protodb.pipeline.config import AddClassRequest  # noqa: E402
from protodb.segment.options import SegmentOptions  # noqa: E402
from protodb.serve.app import create_app  # noqa: E402
from protodb.serve.server import bind  # noqa: E402
from tests.conftest import cli  # noqa: E402
from tests.serve_helpers import (  # noqa: E402,F401 - fixtures
    TOKEN,
    ServerProcess,
    build_scene_db,
    db_copy,
    png,
    scene,
    scene_db,
    scene_image,
)

BASE = "http://127.0.0.1"


def client(home, **kw) -> TestClient:
    return TestClient(create_app(home, **{"vocabs": ["scene"], **kw}), base_url=BASE)


@pytest.fixture(scope="module")
def api(scene_db):
    """A read-only app over the shared database (writes off)."""
    with client(scene_db, workers=2, queue_size=8) as c:
        yield c


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(b64))))


def one_line_error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    return body["error"]


# ---------------------------------------------------------------------------------------- reading
def test_health_index_and_pages(api):
    h = api.get("/api/health").json()
    assert h["ok"] and h["writes"] is False and h["vocabularies"] == ["scene"] and h["schema_revision"] == "0003"
    assert h["max_upload"] == 20 * 1024 * 1024 and h["queue"]["workers"] == 2
    assert any(e.startswith("POST /api/segment") for e in api.get("/api").json()["endpoints"])
    for path, marker in (("/", 'id="gallery"'), ("/segment", 'id="segment-form"'), ("/sets/x", 'id="parts"'),
                         ("/api/docs", 'id="endpoints"')):
        r = api.get(path)
        assert r.status_code == 200 and marker in r.text and r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "http" not in r.text.split("<body", 1)[1].replace("http-equiv", "")  # no CDN, nothing external
    assert api.get("/static/segment.js").status_code == 200
    spec = api.get("/api/openapi.json").json()
    assert {"/api/segment", "/api/sets/{key}/{sheet}", "/api/artifacts/{digest}"} <= set(spec["paths"])
    docs = api.get("/api/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text and "cdn" not in docs.text.lower()


def test_classes_thumbnails_and_immutable_artifacts(api, scene_db):
    classes = {c["name"]: c for c in api.get("/api/classes").json()["classes"]}
    assert set(classes) == {"red box", "blue stripes"}
    v = classes["red box"]["versions"][0]
    assert v["version"] == 1 and v["extractors"] == ["tiny-vit"] and v["counts"]["part"] == 4
    assert v["sets_detail"][0]["preset"] == "tiny" and v["sets_detail"][0]["ref"] == "red box@1"
    r = api.get(f"/api/artifacts/{v['thumbnail']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
    assert hashlib.sha256(r.content).hexdigest() == v["thumbnail"]
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["etag"] == f'"{v["thumbnail"]}"' and r.headers["x-content-type-options"] == "nosniff"
    again = api.get(f"/api/artifacts/{v['thumbnail']}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    detail = api.get("/api/classes/red%20box").json()
    assert detail["kind"] == "thing" and detail["label"]["history"] and detail["versions"][0]["version"] == 1


def test_head_answers_like_get_without_the_body(api):
    thumb = api.get("/api/classes").json()["classes"][0]["versions"][0]["thumbnail"]
    for path in ("/", "/segment", "/sets/red%20box", "/api/docs", "/api/health", "/static/app.css",
                 f"/api/artifacts/{thumb}", "/favicon.ico"):
        got, head = api.get(path), api.head(path)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b"" and int(head.headers["content-length"]) == len(got.content) > 0, path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers["x-content-type-options"] == "nosniff"
    head = api.head(f"/api/artifacts/{thumb}")
    assert head.headers["etag"] == f'"{thumb}"' and "immutable" in head.headers["cache-control"]
    assert api.head(f"/api/artifacts/{thumb}", headers={"If-None-Match": f'"{thumb}"'}).status_code == 304
    missing = api.head("/api/artifacts/" + "0" * 64)
    assert missing.status_code == 404 and missing.content == b""  # the status of GET, still no body
    assert api.head("/api/classes/x/label").status_code == api.get("/api/classes/x/label").status_code == 404


def test_fastapi_doc_paths_redirect_and_segment_parameters_are_documented(api):
    for path, target in (("/docs", "/api/docs"), ("/redoc", "/api/docs"), ("/openapi.json", "/api/openapi.json")):
        r = api.get(path, follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == target, path
    assert api.get("/docs").status_code == 200 and 'id="endpoints"' in api.get("/docs").text
    spec = api.get("/api/openapi.json").json()
    for path in ("/api/segment", "/api/jobs/segment"):
        op = spec["paths"][path]["post"]
        params = {p["name"]: p for p in op["parameters"]}
        assert {"vocab", "classes", "extractor", "levels", "background", "pamr", "skip_missing", "outputs",
                "explain", "name"} == set(params)
        assert all(p["in"] == "query" and p["description"] for p in params.values())
        assert params["pamr"]["schema"]["type"] == "boolean" and "runner_up" in params["outputs"]["description"]
        form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["required"] == ["image"] and form["properties"]["image"]["items"]["format"] == "binary"
        assert "application/octet-stream" in op["requestBody"]["content"]
    assert {"/api/jobs/{job_id}", "/api/jobs/{job_id}/result"} <= set(spec["paths"])
    assert "delete" in spec["paths"]["/api/jobs/{job_id}"]


def test_set_provenance_by_id_and_ref_and_part_traces(api, scene_db):
    with protodb.open(scene_db, create=False) as db:
        (pset,) = db.sets.resolve("red box")
        parts = db.sets.prototypes(pset, kinds=["part"])
    by_id = api.get(f"/api/sets/{pset.id}").json()
    by_ref = api.get("/api/sets/red%20box@1").json()
    assert by_id["set"]["id"] == by_ref["set"]["id"] == pset.id and by_id["ref"] == "red box@1"
    prov = by_id["provenance"]
    assert prov["config_hash"] == pset.config_hash and prov["counts"]["part"] == 4 and len(prov["images"]) == 3
    trace = api.get(f"/api/sets/{pset.id}/parts?top=3").json()
    assert trace["set"] == pset.id and trace["top"] == 3 and len(trace["prototypes"]) == 4 and trace["sheet"] == "parts"
    assert [p["id"] for p in trace["prototypes"]] == list(parts.ids)
    sizes = {i["id"]: i["size"] for i in trace["images"]}
    for p in trace["prototypes"]:
        assert p["kind"] == "part" and len(p["nearest"]) == 3
        sims = [n["similarity"] for n in p["nearest"]]
        assert sims == sorted(sims, reverse=True)
        for n in p["nearest"]:
            W, H = sizes[n["image"]]
            x0, y0, x1, y1 = n["box"]
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
    assert api.get(f"/api/sets/{pset.id}/parts?top=3").json() == trace  # cached, same answer
    blue = api.get("/api/sets/blue%20stripes").json()["set"]  # red box's exemplars give no background (value 0)
    bg = api.get(f"/api/sets/{blue['id']}/background?top=2").json()
    assert len(bg["prototypes"]) == sum(blue["counts"][k] for k in ("bg_class", "bg_instance", "bg_part")) > 0
    assert {p["kind"] for p in bg["prototypes"]} <= {"bg_class", "bg_instance", "bg_part"}
    inst = api.get(f"/api/sets/{pset.id}/instances").json()
    assert [p["kind"] for p in inst["prototypes"]] == ["instance"] * pset.counts["instance"]
    assert api.get(f"/api/sets/{pset.id}/nothing").status_code == 422
    listing = api.get(f"/api/sets/{pset.id}/images").json()
    assert listing["mask_extractor"] == {"id": listing["mask_extractor_id"], "name": "tiny-vit", "patch_size": 8}
    assert by_id["mask_extractor"]["name"] == "tiny-vit"
    images = listing["images"]
    assert [i["id"] for i in images] == list(pset.images)
    for im in images:  # support images, masks and attention maps come from the artifact store
        assert set(im["masks"]) == {"foreground", "background"}
        for digest in (im["sha256"], *im["masks"].values()):
            r = api.get(f"/api/artifacts/{digest}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert hashlib.sha256(r.content).hexdigest() == digest


# ---------------------------------------------------------------------------------------- segmenting
def test_segment_matches_the_in_process_segmenter(api, scene_db, scene_image):
    r = api.post("/api/segment", files={"image": ("s10.png", scene_image, "image/png")},
                 data={"vocab": "scene", "outputs": "labels,overlay,maps,explain"})
    assert r.status_code == 200, r.text
    res = r.json()
    with protodb.open(scene_db, create=False) as db:
        image = load_image(scene_image)
        expected = db.segmenter(SegmentOptions(vocab="scene", explain=True)).segment(image)
        arts = db.stores.artifacts
        labels = decode_png(res["labels_png"]).astype(np.int64)
        C = 2  # two classes + background: PNG 0 = background, class i = i + 1
        want = np.where(expected.labels == C, 0, expected.labels + 1)
        assert res["legend"] == {"0": "background", "1": "red box", "2": "blue stripes"}
        assert labels.shape == (96, 128) and np.array_equal(labels, want)
        assert res["present"] == expected.present and res["size"] == [128, 96]
        maps = res["maps"]
        flat = np.frombuffer(base64.b64decode(maps["labels"]), np.uint8).reshape(96, 128)
        assert np.array_equal(flat, labels)
        scores = np.frombuffer(base64.b64decode(maps["scores"]), "<i2").reshape(96, 128) / maps["scores_scale"]
        assert np.allclose(scores, expected.scores, atol=1e-4)
        assert decode_png(res["overlay_png"]).shape == (96, 128, 3)
        for name, w in res["explain"].items():
            assert name in res["present"] and w["class"] == name
            if w.get("support_sha256"):
                assert arts.exists(w["support_sha256"]) and len(w["box"]) == 4
        assert any(w.get("support_sha256") for w in res["explain"].values())
    assert res["vocabulary"]["sets"] == {"tiny-vit": ["red box@1", "blue stripes@1"]} and res["generation"] == 1
    # the overlay leaves the background as the photo; classes are blended with their colour
    over, photo = decode_png(res["overlay_png"]), np.asarray(load_image(scene_image))
    bg = labels == 0
    assert bg.any() and np.array_equal(over[bg], photo[bg]) and not np.array_equal(over[~bg], photo[~bg])
    # without the background class (each class's background here is the other class), the halves are
    # told apart, as the CLI's tests expect of this database
    r = api.post("/api/segment", files={"image": ("s10.png", scene_image, "image/png")},
                 data={"vocab": "scene", "background": "false"})
    assert r.status_code == 200, r.text
    halves = decode_png(r.json()["labels_png"]).astype(np.int64)  # no background: class i = label i
    assert (halves[:, :64] == 0).mean() > 0.8 and (halves[:, 64:] == 1).mean() > 0.8


def test_confidence_and_runner_up_maps(api, scene_image):
    """This database's classes are each other's background: with a background column the three
    columns are near ties (the result says so); without it, the halves are told apart clearly."""
    r = api.post("/api/segment?vocab=scene&outputs=runner_up", content=scene_image)
    res = r.json()
    conf = res["confidence"]
    assert conf["columns"] == 3 and conf["verdict"] == "doubtful" and conf["near_tie"] > 0.5
    assert [w["code"] for w in conf["warnings"]][:1] == ["near_ties"]
    assert set(conf["classes"]) == set(res["present"]) and conf["rule"] == {"near_tie": 0.1, "mostly": 0.5}
    m = res["maps"]
    labels = np.frombuffer(base64.b64decode(m["labels"]), np.uint8)
    scores = np.frombuffer(base64.b64decode(m["scores"]), "<i2")
    ru = np.frombuffer(base64.b64decode(m["runner_up_labels"]), np.uint8)
    ru_scores = np.frombuffer(base64.b64decode(m["runner_up_scores"]), "<i2")
    assert ru.shape == labels.shape and (ru != labels).all() and (ru_scores <= scores).all()
    assert set(np.unique(ru).tolist()) <= {int(k) for k in res["legend"]}
    # the per-class numbers are those of the maps
    s1, s2 = scores / m["scores_scale"], ru_scores / m["scores_scale"]
    for value, name in res["legend"].items():
        mine = labels == int(value)
        if mine.any():
            assert conf["classes"][name]["margin"] == pytest.approx((s1[mine] - s2[mine]).mean(), abs=2e-3)
            assert res["legend"][str(np.bincount(ru[mine]).argmax())] == conf["classes"][name]["runner_up"]
    clear = api.post("/api/segment?vocab=scene&background=false", content=scene_image).json()["confidence"]
    assert clear["verdict"] == "clear" and clear["warnings"] == [] and clear["separation"] > 0.5
    assert {c["uncertain"] for c in clear["classes"].values()} == {False}
    one = api.post("/api/segment?classes=red%20box&background=false", content=scene_image).json()["confidence"]
    assert [w["code"] for w in one["warnings"]] == ["one_column"] and one["columns"] == 1


def test_raw_body_default_vocabulary_and_outputs(api, scene_image):
    r = api.post("/api/segment?outputs=none", content=scene_image, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and "labels_png" not in r.json() and r.json()["vocabulary"]["name"] == "scene"
    r = api.post("/api/segment?name=a.png", content=scene_image)
    assert r.status_code == 200 and r.json()["input"] == "a.png" and "labels_png" in r.json()
    alias = api.post("/segment?name=a.png", content=scene_image, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert alias.status_code == 200 and alias.json()["present"] == r.json()["present"]  # as curl --data-binary sends it
    assert "outputs takes" in one_line_error(api.post("/api/segment?outputs=svg", content=scene_image), 400)


def test_class_lists_options_and_several_images(api, scene_db, scene_image):
    r = api.post("/api/segment", data={"classes": "blue stripes, red box", "levels": "class,part",
                                       "background": "false", "outputs": "labels"},
                 files=[("image", ("a.png", scene_image, "image/png")), ("image", ("b.png", b"junk", "image/png")),
                        ("image", ("c.png", png(scene(11)[0]), "image/png"))])
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["failed"] == 1 and [x["input"] for x in res["results"]] == ["a.png", "b.png", "c.png"]
    a, b, c = res["results"]
    assert b["error"].startswith("b.png: ") and "not an image" in b["error"]
    assert a["vocabulary"]["classes"] == ["blue stripes", "red box"] and a["legend"] == {"0": "blue stripes", "1": "red box"}
    assert a["settings"]["levels"] == ["class", "part"] and a["settings"]["background"] is False
    with protodb.open(scene_db, create=False) as db:
        seg = db.segmenter(SegmentOptions(classes="blue stripes,red box", levels=("class", "part"), background=False))
        expected = seg.segment(load_image(scene_image)).labels
    assert np.array_equal(decode_png(a["labels_png"]), expected)  # without background: class i is value i
    # one warm segmenter per (vocabulary or class list, extractors, options), reused
    warm = api.get("/api/vocabularies").json()["warm"]
    assert "classes:blue stripes,red box" in [w["label"] for w in warm]
    again = api.post("/api/segment?classes=blue%20stripes,red%20box&levels=class,part&background=false",
                     content=scene_image).json()
    assert again["generation"] == a["generation"]
    pamr = api.post("/api/segment?vocab=scene&pamr=true", content=scene_image).json()
    assert pamr["settings"]["pamr"] is True
    many = [("image", (f"{i}.png", b"x", "image/png")) for i in range(17)]
    assert one_line_error(api.post("/api/segment", files=many), 400)  # over the 16 images of one request


def test_vocab_only_serves_the_named_vocabularies_alone(scene_db, scene_image):
    with client(scene_db, vocab_only=True) as c:
        assert c.post("/api/segment", content=scene_image).status_code == 200
        assert "not served here" in one_line_error(c.post("/api/segment?classes=red%20box", content=scene_image), 404)
        assert "server's options only" in one_line_error(
            c.post("/api/segment?vocab=scene&levels=class", content=scene_image), 400)
        assert "not served here" in one_line_error(c.post("/api/segment?vocab=voc", content=scene_image), 404)


def _bomb() -> bytes:
    """A valid 1-bit PNG of 20000 x 20000 pixels (400 MP) in a few kB: refused from its header."""
    buf = io.BytesIO()
    PIL.Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


def _blank_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("1", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", ["text", "truncated", "bomb", "ten-k", "empty", "no-file-field"])
def test_bad_uploads_are_one_line_400s(api, scene_image, case):
    data = {"text": lambda: b"this is not an image at all", "truncated": lambda: scene_image[: len(scene_image) // 2],
            "bomb": _bomb, "ten-k": lambda: _blank_png(10000, 10000), "empty": lambda: b"",
            "no-file-field": lambda: None}[case]()
    if data is None:
        r = api.post("/api/segment", data={"vocab": "scene"}, files={"other": ("x.png", scene_image)})
        assert "'image'" in one_line_error(r, 400)
        return
    r = api.post("/api/segment", files={"image": (f"{case}.png", data, "image/png")}, data={"vocab": "scene"})
    message = one_line_error(r, 400)
    assert message.startswith(f"{case}.png: ")
    assert {"text": "not an image", "truncated": "truncated", "bomb": "image is 400 MP, over the 80 MP limit",
            "ten-k": "image is 10000x10000 = 100 MP, over the 80 MP limit", "empty": "empty"}[case] in message
    # one limit, protodb's own (the README's 80 MP): Pillow's 89,478,485 / 178,956,970 pixels never show
    assert "89478485" not in message and "178956970" not in message and "DOS" not in message
    assert str(api.get("/api/health").json()["max_pixels"]) == "80000000"


def test_the_pixel_limit_is_the_servers_setting(scene_db, scene_image):
    with client(scene_db, max_pixels=100 * 100) as c:
        msg = one_line_error(c.post("/api/segment?name=s.png", content=scene_image), 400)
        assert msg == "s.png: image is 128x96 = 12,288 pixels, over the 10,000 pixels limit for one image; downscale it first"
        assert c.post("/api/segment?name=s.png", content=png(scene(3)[0][:50, :50])).status_code == 200


def test_upload_limit_is_checked_before_and_while_reading(scene_db, scene_image):
    with client(scene_db, max_upload=64 * 1024) as c:
        big = b"\0" * (100 * 1024)
        msg = one_line_error(c.post("/api/segment", content=big), 413)  # Content-Length says so: nothing read
        assert "limit" in msg and "--max-upload-mb" in msg
        chunks = (b"\0" * 8192 for _ in range(20))  # no Content-Length: stopped while reading
        one_line_error(c.post("/api/segment", content=chunks), 413)
        one_line_error(c.post("/api/segment", files={"image": ("big.png", big)}), 413)
        assert c.post("/api/segment", content=scene_image).status_code == 200  # under the limit: fine


def test_unknown_names_path_escapes_and_foreign_origins(api, scene_image):
    assert "no vocabulary 'nope'" in one_line_error(api.post("/api/segment?vocab=nope", content=scene_image), 404)
    assert "protodb add-class" in one_line_error(api.post("/api/segment?vocab=voc", content=scene_image), 404)
    assert "protodb add-class zebra" in one_line_error(
        api.post("/api/segment?classes=red box,zebra", content=scene_image), 404)
    both = one_line_error(api.post("/api/segment?classes=kite,red box,zebra", content=scene_image), 404)
    assert both.startswith("2 classes cannot be used: no classes 'kite', 'zebra' in this database")
    assert "protodb add-class kite" in both and "protodb add-class zebra" in both
    assert "--levels" in one_line_error(api.post("/api/segment?levels=parts", content=scene_image), 400)
    assert "either vocab" in one_line_error(api.post("/api/segment?vocab=scene&classes=a", content=scene_image), 400)
    assert "true or false" in one_line_error(api.post("/api/segment?pamr=maybe", content=scene_image), 400)
    assert "protodb add-class zebra" in one_line_error(api.get("/api/classes/zebra"), 404)
    one_line_error(api.get("/api/sets/zebra@3"), 404)
    one_line_error(api.get("/api/sets/" + "0" * 32), 404)
    one_line_error(api.get("/api/sets/" + "0" * 32 + "/parts"), 404)
    one_line_error(api.get("/api/artifacts/" + "0" * 64), 404)
    assert "sha256" in one_line_error(api.get("/api/artifacts/" + "A" * 64), 400)
    one_line_error(api.get("/api/artifacts/abc"), 400)
    for path in ("/api/artifacts/..%2f..%2fetc%2fpasswd", "/api/artifacts/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                 "/api/artifacts/....%2f%2f....%2f%2fetc%2fpasswd", "/static/..%2f..%2f..%2fetc%2fpasswd",
                 "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/api/nothing"):
        r = api.get(path)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert b"root:" not in r.content
    assert "not served here" in one_line_error(api.get("/api/health", headers={"Host": "evil.example"}), 400)
    # another site's page posting here (DNS rebinding aside, a form post needs no CORS preflight)
    assert "cross-site" in one_line_error(
        api.post("/api/segment", content=scene_image, headers={"Origin": "http://evil.example"}), 403)
    assert api.post("/api/segment", content=scene_image, headers={"Origin": BASE + ":8620"}).status_code == 200
    assert "access-control-allow-origin" not in api.get("/api/health", headers={"Origin": "http://x.example"}).headers


# ---------------------------------------------------------------------------------------- writes
def test_config_refuses_writes_without_a_good_token(scene_db):
    with pytest.raises(InvalidInput, match="PROTODB_SERVE_TOKEN"):
        create_app(scene_db, vocabs=["scene"], allow_writes=True)
    with pytest.raises(InvalidInput, match="at least 16"):
        create_app(scene_db, vocabs=["scene"], allow_writes=True, token="short")
    with pytest.raises(protodb.NotFound, match="no vocabulary 'nope'"):
        create_app(scene_db, vocabs=["nope"])


def test_writes_need_allow_writes_and_the_token(api, db_copy):
    assert "--allow-writes" in one_line_error(api.post("/api/classes/red%20box/label", json={"kind": "stuff"}), 403)
    with client(db_copy, allow_writes=True, token=TOKEN, reload_interval=0.2) as c:
        assert c.get("/api/health").json()["writes"] is True
        url = "/api/classes/red%20box/label"
        r = c.post(url, json={"kind": "stuff"})
        assert "Bearer" in one_line_error(r, 401) and r.headers["www-authenticate"] == "Bearer"
        one_line_error(c.post(url, json={"kind": "stuff"}, headers={"Authorization": "Bearer wrong-token"}), 401)
        one_line_error(c.post(url, json={"kind": "stuff"}, headers={"Authorization": f"Basic {TOKEN}"}), 401)
        one_line_error(c.post(url, content=b"not json", headers={"Authorization": f"Bearer {TOKEN}"}), 400)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert "got 'gas'" not in one_line_error(c.post(url, json={"kind": "gas"}, headers=auth), 400)
        assert one_line_error(c.post(url, json={"kind": "gas"}, headers=auth), 400) == \
            '"kind" is "thing" or "stuff"; got "gas"'
        assert one_line_error(c.post(url, json=[1, 2], headers=auth), 400) == \
            'send a JSON object {"kind": "thing"} or {"kind": "stuff"}; got an array: [1, 2]'
        assert 'the object has no "kind" (it has \'type\')' in one_line_error(
            c.post(url, json={"type": "stuff"}, headers=auth), 400)
        assert "got null" in one_line_error(c.post(url, content=b"null", headers=auth), 400)
        one_line_error(c.post("/api/classes/zebra/label", json={"kind": "stuff"},
                              headers={"Authorization": f"Bearer {TOKEN}"}), 404)
        ok = c.post(url, json={"kind": "stuff"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["kind"] == "stuff"
        assert [h["source"] for h in ok.json()["history"]][-1] == "manual"
        # the relabel reaches the warm segmenter without a restart (stuff classes are matched differently)
        scene_v = _wait_for(c, lambda v: v["stuff"]["red box"] is True)
        assert scene_v["generation"] == 2
    with protodb.open(db_copy, create=False) as db:
        assert db.labels.current("red box") == "stuff"


def _wait_for(c, predicate, timeout: float = 20.0, name: str = "scene") -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for v in c.get("/api/vocabularies").json()["vocabularies"]:
            if v["name"] == name and v.get("loaded") and predicate(v):
                return v
        time.sleep(0.1)
    raise AssertionError(f"vocabulary {name} never matched: {c.get('/api/vocabularies').json()}")


# ---------------------------------------------------------------------------------------- live reload
def test_every_catalog_vocabulary_is_served_and_new_ones_appear(db_copy, scene_image):
    with client(db_copy, vocabs=None, reload_interval=0.2) as c:
        listed = c.get("/api/vocabularies").json()["vocabularies"]
        assert [v["name"] for v in listed] == ["scene"] and listed[0]["loaded"] is False  # warmed on first use
        assert c.post("/api/segment", content=scene_image).status_code == 200
        with protodb.open(db_copy, create=False) as db:
            db.vocabs.create("reds", ["red box"], background=True)
        end = time.monotonic() + 20
        while "reds" not in c.get("/api/health").json()["vocabularies"] and time.monotonic() < end:
            time.sleep(0.1)
        r = c.post("/api/segment?vocab=reds", content=scene_image)
        assert r.status_code == 200 and r.json()["vocabulary"]["classes"] == ["red box"]
        assert "say which vocabulary" in one_line_error(c.post("/api/segment", content=scene_image), 400)


# ---------------------------------------------------------------------------------------- back-pressure
def test_full_queue_answers_503_with_retry_after(scene_db, scene_image):
    with client(scene_db, workers=1, queue_size=0) as c:
        pool = c.app.state.serve.pool
        served = pool.get(pool.key(vocab="scene"))
        gate, entered = threading.Event(), threading.Event()
        real = served.segmenter.segment

        def slow(image):
            entered.set()
            gate.wait(30)
            return real(image)

        served.segmenter.segment = slow
        first: list = []
        t = threading.Thread(target=lambda: first.append(c.post("/api/segment", content=scene_image)))
        t.start()
        try:
            assert entered.wait(30)
            r = c.post("/api/segment", content=scene_image)
            assert "busy" in one_line_error(r, 503) and int(r.headers["retry-after"]) >= 1
            assert c.get("/api/health").status_code == 200  # catalog reads are not queued behind segmenting
        finally:
            gate.set()
            t.join(30)
        assert first[0].status_code == 200
        q = c.get("/api/health").json()["queue"]
        assert q["refused"] == 1 and q["done"] == 1 and q["in_flight"] == 0


# ---------------------------------------------------------------------------------------- jobs
class Gate:
    """Holds the warm segmenter of ``scene`` until opened (a segment that takes as long as a test wants)."""

    def __init__(self, c):
        pool = c.app.state.serve.pool
        self.served = pool.get(pool.key(vocab="scene"))
        self.real = self.served.segmenter.segment
        self.open, self.entered = threading.Event(), threading.Event()
        self.served.segmenter.segment = self.slow

    def slow(self, image):
        self.entered.set()
        self.open.wait(30)
        return self.real(image)

    def restore(self):
        self.open.set()
        self.served.segmenter.segment = self.real


def _until(c, url, states, timeout=30.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = c.get(url).json()
        if job.get("state") in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{url} never reached {states}: {c.get(url).json()}")


def test_a_job_gives_the_result_of_the_synchronous_endpoint(api, scene_image):
    sync = api.post("/api/segment?vocab=scene&outputs=labels,runner_up", content=scene_image).json()
    r = api.post("/api/jobs/segment?vocab=scene&outputs=labels,runner_up", content=scene_image)
    assert r.status_code == 202 and r.headers["location"] == r.json()["url"]
    job = r.json()
    assert job["kind"] == "segment" and job["label"] == "segment 1 image with scene" and job["state"] in ("queued", "running")
    assert api.get(job["url"] + "/result").status_code in (200, 409)
    done = _until(api, job["url"], {"done"})
    assert done["result_url"] == job["url"] + "/result" and done["elapsed"] >= done["running_seconds"] > 0
    assert done["position"] is None and done["typical_seconds"] > 0
    res = api.get(done["result_url"]).json()
    assert res["labels_png"] == sync["labels_png"] and res["present"] == sync["present"]
    assert res["maps"]["runner_up_labels"] == sync["maps"]["runner_up_labels"]
    forgot = api.delete(job["url"]).json()
    assert forgot["removed"] is True and forgot["state"] == "done"
    assert "no job" in one_line_error(api.get(job["url"]), 404)
    # bad fields are answered at once, as by the synchronous endpoint; a class unknown to the catalog
    # fails the job with the status that endpoint would give
    assert "outputs takes" in one_line_error(api.post("/api/jobs/segment?outputs=svg", content=scene_image), 400)
    assert "no vocabulary 'nope'" in one_line_error(api.post("/api/jobs/segment?vocab=nope", content=scene_image), 404)
    job = api.post("/api/jobs/segment?classes=kite,red%20box", content=scene_image).json()
    failed = _until(api, job["url"], {"failed"})
    assert failed["status"] == 404 and "protodb add-class kite" in failed["error"]
    assert one_line_error(api.get(job["url"] + "/result"), 404) == failed["error"]
    assert "no job" in one_line_error(api.get("/api/jobs/nope"), 404)
    assert "no job" in one_line_error(api.delete("/api/jobs/nope"), 404)


def test_jobs_show_their_place_in_line_and_cancel(scene_db, scene_image):
    with client(scene_db, workers=1, queue_size=4) as c:
        gate = Gate(c)
        try:
            first = c.post("/api/jobs/segment", content=scene_image).json()
            assert gate.entered.wait(30)
            running = _until(c, first["url"], {"running"})
            assert running["position"] is None and running["queue"] == {"workers": 1, "running": 1, "waiting": 0}
            second = c.post("/api/jobs/segment", content=scene_image).json()
            third = c.post("/api/jobs/segment", content=scene_image).json()
            assert (second["state"], second["position"], second["ahead"]) == ("queued", 1, 0)
            assert (third["position"], third["ahead"]) == (2, 1) and third["queue"]["waiting"] == 2
            time.sleep(0.3)
            later = c.get(third["url"]).json()
            assert later["elapsed"] >= 0.3 and later["queued_seconds"] == later["elapsed"] and later["running_seconds"] is None
            # a queued job cancelled: out of the line at once, never runs; the one behind moves up
            gone = c.delete(second["url"]).json()
            assert gone["state"] == "cancelled" and gone["removed"] is False
            assert c.get(third["url"]).json()["position"] == 1
            assert "cancelled" in one_line_error(c.get(second["url"] + "/result"), 410)
            # a running job cannot be stopped mid-image: cancelling, then cancelled and its result dropped
            assert c.delete(first["url"]).json()["state"] == "cancelling"
            assert "cancelling" in one_line_error(c.get(first["url"] + "/result"), 409)
            gate.open.set()
            assert _until(c, first["url"], {"cancelled", "done"})["state"] == "cancelled"
            assert _until(c, third["url"], {"done"})["state"] == "done"
            q = c.get("/api/health").json()["queue"]
            assert q["cancelled"] == 1 and q["in_flight"] == 0 and q["waiting"] == 0
            jobs = c.get("/api/health").json()["jobs"]
            assert jobs["states"] == {"cancelled": 2, "done": 1} and jobs["max_jobs"] == 16
        finally:
            gate.restore()


def test_jobs_are_bounded_and_expire(scene_db, scene_image):
    with client(scene_db, workers=1, queue_size=1, max_jobs=2, job_ttl=0.5) as c:
        gate = Gate(c)
        try:
            a = c.post("/api/jobs/segment", content=scene_image).json()
            assert gate.entered.wait(30)
            b = c.post("/api/jobs/segment", content=scene_image).json()
            r = c.post("/api/jobs/segment", content=scene_image)  # the job table is full of unfinished jobs
            assert "--max-jobs" in one_line_error(r, 503) and int(r.headers["retry-after"]) >= 1
            r = c.post("/api/segment", content=scene_image)  # and the queue too (1 worker + 1 place)
            assert "busy" in one_line_error(r, 503)
            gate.open.set()
            _until(c, a["url"], {"done"})
            _until(c, b["url"], {"done"})
            # finished jobs make room: the oldest is forgotten for a new one
            d = c.post("/api/jobs/segment", content=scene_image)
            assert d.status_code == 202
            assert "no job" in one_line_error(c.get(a["url"]), 404) and c.get(b["url"]).status_code == 200
            _until(c, d.json()["url"], {"done"})
            time.sleep(0.7)  # past the ttl: finished jobs are forgotten
            assert "kept 0.5 s" in one_line_error(c.get(d.json()["url"]), 404)
            assert c.get("/api/health").json()["jobs"]["held"] == 0
        finally:
            gate.restore()


# ---------------------------------------------------------------------------------------- the command
def test_serve_without_the_extra_says_how_to_install(monkeypatch, scene_db):
    monkeypatch.setattr(protodb.serve, "missing_dependencies", lambda: ["fastapi"])
    r = cli("serve", "--db", scene_db, ok=False)
    assert r.exit_code == 1 and r.stderr.strip() == "error: protodb serve needs the serve extra: pip install 'protodb[serve]'"


def test_nothing_outside_serve_imports_fastapi():
    code = ("import sys, protodb, protodb.api, protodb_cli.main, protodb.segment.run, protodb.inspection; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'multipart') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    root = Path(protodb.__file__).parent
    for path in [*root.rglob("*.py"), *Path(protodb_cli.__file__).parent.rglob("*.py")]:
        if root / "serve" in path.parents:
            continue
        text = path.read_text()
        assert not any(f"import {m}" in text or f"from {m}" in text for m in ("fastapi", "uvicorn", "starlette")), path


def test_serve_refuses_bad_settings_in_one_line(scene_db, monkeypatch):
    monkeypatch.delenv("PROTODB_SERVE_TOKEN", raising=False)
    r = cli("serve", "--db", scene_db, "--allow-writes", ok=False)
    assert r.exit_code == 1 and "PROTODB_SERVE_TOKEN" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("serve", "--db", scene_db, "--vocab", "nope", "--port", "0", ok=False)
    assert r.exit_code == 1 and "no vocabulary 'nope'" in r.stderr
    r = cli("serve", "--db", scene_db.parent / "missing", ok=False)
    assert r.exit_code == 1 and "protodb init" in r.stderr


def test_the_listening_socket_turns_nagle_off():
    """asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it every small response
    waited ~40 ms for the client's delayed ACK."""
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with pytest.raises(InvalidInput, match="cannot listen"):
            bind("127.0.0.1", sock.getsockname()[1]).close()
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server(scene_db, tmp_path_factory):
    """``protodb serve`` over a copy of the database, in its own process; stopped however the tests end."""
    home = tmp_path_factory.mktemp("served") / "db"
    shutil.copytree(scene_db, home, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    proc = ServerProcess(home, "--vocab", "scene", "--workers", "2", "--queue", "64", "--reload-interval", "0.3",
                         "--access-log")
    proc.home = home
    yield proc
    proc.stop()


@pytest.mark.slow
def test_real_server_concurrent_clients(server, scene_image):
    url = server.url + "/api/segment?vocab=scene"

    def one(_):
        with httpx.Client(timeout=60) as h:
            r = h.post(url, files={"image": ("s.png", scene_image, "image/png")})
            return r.status_code, r.json().get("labels_png")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    assert all(code == 200 for code, _ in results), results[:2]
    first = decode_png(results[0][1])
    for _, b64 in results[1:]:
        assert np.array_equal(decode_png(b64), first)  # concurrent requests never mix up results
    with protodb.open(server.home, create=False) as db:
        expected = db.segmenter(SegmentOptions(vocab="scene")).segment(load_image(scene_image)).labels
    want = np.where(expected == 2, 0, expected + 1)
    assert (first == want).mean() > 0.99  # another process: same labels up to float noise
    q = httpx.get(server.url + "/api/health").json()["queue"]
    assert q["done"] >= 24 and q["refused"] == 0 and q["workers"] == 2


@pytest.mark.slow
def test_real_server_refuses_escapes_and_oversized_bodies_on_the_wire(server):
    for target in ("/api/artifacts/..%2f..%2fetc%2fpasswd", "/api/artifacts/../../../../etc/passwd",
                   "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                   "/sets/..%2f..%2fetc%2fpasswd/parts"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # raw: no client-side cleanup
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        status = int(raw.split(b" ", 2)[1])
        assert b"root:" not in raw and (status in (400, 404) or target.startswith("/sets/")), (target, raw[:200])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # declared too big: refused unread
        s.sendall(b"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 999999999\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 413") and b'"error"' in raw


@pytest.mark.slow
def test_new_sets_are_served_without_a_restart(server, scene_image, tmp_path):
    before = httpx.post(server.url + "/api/segment?vocab=scene", content=scene_image, timeout=60).json()
    assert before["vocabulary"]["sets"]["tiny-vit"] == ["red box@1", "blue stripes@1"]
    ex, masks = tmp_path / "ex", tmp_path / "masks"
    ex.mkdir()
    masks.mkdir()
    for s in range(2):  # another writer (this test process) builds while the server runs
        img, lab = scene(20 + s)
        img[lab == 1] = (img[lab == 1] // 2 + np.array([0, 120, 0], np.uint8))  # green on the right
        PIL.Image.fromarray(img).save(ex / f"g{s}.png")
        PIL.Image.fromarray(lab).save(masks / f"g{s}.png")
    with protodb.open(server.home, create=False) as db:
        builder = db.builder(preset="tiny")
        builder.add_class(AddClassRequest("red box", images=0, exemplars=ex, masks=masks, mask_value=0, k=3,
                                          new_version=True))
        builder.add_class(AddClassRequest("green", images=0, exemplars=ex, masks=masks, mask_value=1, k=3))
        db.vocabs.add("scene", ["green"])
    with httpx.Client(base_url=server.url, timeout=60) as h:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            (v,) = h.get("/api/vocabularies").json()["vocabularies"]
            if v["sets"]["tiny-vit"] == ["red box@2", "blue stripes@1", "green@1"]:
                break
            time.sleep(0.2)
        assert v["sets"]["tiny-vit"] == ["red box@2", "blue stripes@1", "green@1"], v
        after = h.post("/api/segment?vocab=scene", content=scene_image).json()
        assert after["vocabulary"]["classes"] == ["red box", "blue stripes", "green"]
        assert after["generation"] > before["generation"] and "3" in after["legend"]
        names = {c["name"] for c in h.get("/api/classes").json()["classes"]}
        assert names == {"red box", "blue stripes", "green"}


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    return raw


@pytest.mark.slow
def test_real_server_access_log_and_head_on_the_wire(server, scene_image):
    """--access-log: one line per request on stderr while the server runs (read from its log file as
    requests go); HEAD through uvicorn: the headers of GET, no body on the wire."""
    thumb = httpx.get(server.url + "/api/classes").json()["classes"][0]["versions"][0]["thumbnail"]
    get = _raw(server.port, f"GET /api/artifacts/{thumb} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    head = _raw(server.port, f"HEAD /api/artifacts/{thumb} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    get_headers, get_body = get.split(b"\r\n\r\n", 1)
    head_headers, head_body = head.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and head_body == b""
    length = [h for h in head_headers.split(b"\r\n") if h.lower().startswith(b"content-length:")]
    assert length and int(length[0].split(b":")[1]) == len(get_body) > 0
    page = _raw(server.port, b"HEAD /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200") and page.endswith(b"\r\n\r\n")
    marker = f"/api/health?probe={time.time_ns()}"
    before = server.log()
    assert httpx.get(server.url + marker).status_code == 200
    assert httpx.post(server.url + "/api/segment?vocab=scene&outputs=none", content=scene_image, timeout=60).status_code == 200
    assert httpx.get(server.url + "/api/nothing").status_code == 404
    end = time.monotonic() + 10
    while time.monotonic() < end and "/api/nothing" not in server.log():
        time.sleep(0.05)  # the server is still running: its lines are on stderr as requests are answered
    lines = [line for line in server.log().splitlines() if line not in before.splitlines()]
    text = "\n".join(lines)
    assert f'"GET {marker} HTTP/1.1" 200' in text, server.log()
    assert '"POST /api/segment?vocab=scene&outputs=none HTTP/1.1" 200' in text
    assert '"GET /api/nothing HTTP/1.1" 404' in text
    assert f'"HEAD /api/artifacts/{thumb} HTTP/1.1" 200 0 B' in server.log()
    import re
    line = next(line for line in lines if marker in line)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d 127\.0\.0\.1:\d+ \"GET .+\" 200 \d+ B \d+\.\d ms$", line), line
    assert server.proc.poll() is None  # read while it runs


@pytest.mark.slow
def test_sigterm_stops_the_server(server):
    rc = server.stop()
    assert rc == 0, server.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


@pytest.mark.slow
def test_a_postgresql_catalog_is_served_and_reloaded(pg_url, tmp_path, scene_image):
    home = build_scene_db(tmp_path, catalog_url=pg_url)
    with client(home, catalog_url=pg_url, reload_interval=0.2) as c:
        first = c.post("/api/segment", content=scene_image)
        assert first.status_code == 200 and first.json()["vocabulary"]["sets"]["tiny-vit"] == ["red box@1", "blue stripes@1"]
        with protodb.open(home, catalog_url=pg_url, create=False) as db:  # another writer of the shared catalog
            db.builder(preset="tiny").add_class(AddClassRequest(
                "red box", images=0, exemplars=tmp_path / "exemplars", masks=tmp_path / "masks", mask_value=0, k=3,
                new_version=True))
        v = _wait_for(c, lambda v: v["sets"]["tiny-vit"][0] == "red box@2")
        assert v["generation"] == 2
        assert c.post("/api/segment", content=scene_image).json()["vocabulary"]["sets"]["tiny-vit"][0] == "red box@2"
