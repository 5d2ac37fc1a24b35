"""Teaching by example over HTTP (FastAPI's TestClient on the scene database): corrections and a rebuild
job through the write API; every refusal is one line and leaves the database as it was."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="protodb serve needs the serve extra: pip install 'protodb[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

import protodb  # noqa: E402
from tests.test_serve import client, one_line_error  # noqa: E402
from tests.serve_helpers import TOKEN, db_copy, png, scene, scene_db  # noqa: E402,F401 - fixtures
from tests.test_teach import _state  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _mask(h=96, w=128) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[30:60, 70:110] = 255  # a patch of the blue half
    return m


def _files(image: bytes, mask: bytes) -> dict:
    return {"image": ("photo.png", image, "image/png"), "mask": ("mask.png", mask, "image/png")}


def test_read_only_servers_refuse_corrections_and_list_them(scene_db):
    with client(scene_db) as c:
        assert c.get("/api/corrections").json() == {"corrections": []}
        r = c.post("/api/corrections", files=_files(png(scene(3)[0]), png(_mask())), data={"class": "red box"},
                   headers=AUTH)
        assert "--allow-writes" in one_line_error(r, 403)
        one_line_error(c.post("/api/classes/red%20box/rebuild", headers=AUTH), 403)
        one_line_error(c.get("/api/corrections?class=kite"), 404)


def test_corrections_and_a_rebuild_through_the_api(db_copy):
    image = png(scene(4)[0])
    before = _state(db_copy)
    with client(db_copy, allow_writes=True, token=TOKEN) as c:
        url = "/api/corrections"
        good = {"class": "blue stripes", "author": "ana", "set": "blue stripes@1"}
        r = c.post(url, files=_files(image, png(_mask())), data=good)
        assert "Bearer" in one_line_error(r, 401)
        one_line_error(c.post(url, files=_files(image, png(_mask())), data=good,
                              headers={"Authorization": "Bearer nope"}), 401)
        assert "64x48 but the image is 128x96" in one_line_error(
            c.post(url, files=_files(image, png(_mask(48, 64))), data=good, headers=AUTH), 400)
        assert "marks no pixel" in one_line_error(
            c.post(url, files=_files(image, png(np.zeros((96, 128), np.uint8))), data=good, headers=AUTH), 400)
        assert "not a readable mask" in one_line_error(
            c.post(url, files=_files(image, b"not a png"), data=good, headers=AUTH), 400)
        assert "no class 'kite'" in one_line_error(
            c.post(url, files=_files(image, png(_mask())), data={**good, "class": "kite"}, headers=AUTH), 404)
        one_line_error(c.post(url, content=b"raw", headers=AUTH), 400)
        one_line_error(c.post(url, files={"image": ("p.png", image, "image/png")}, data=good, headers=AUTH), 400)
        assert "has no corrections" in one_line_error(c.post("/api/classes/blue%20stripes/rebuild", headers=AUTH),
                                                      400)
        assert _state(db_copy) == before  # nothing refused wrote anything

        ok = c.post(url, files=_files(image, png(_mask())), data={**good, "settings": '{"vocab": "scene"}'},
                    headers=AUTH)
        assert ok.status_code == 201, ok.text
        (rec,) = ok.json()["corrections"]
        assert rec["class"] == "blue stripes" and rec["pixels"] == int((_mask() > 0).sum())
        assert rec["author"] == "ana" and rec["settings"] == {"vocab": "scene"}
        with protodb.open(db_copy) as db:
            assert rec["set_id"] == db.sets.resolve("blue stripes@1")[0].id
            stored = db.corrections.ls("blue stripes")
            assert [r.id for r in stored] == [rec["id"]]
            assert np.array_equal(db.corrections.load(stored[0])[1], _mask() > 0)
        assert [x["id"] for x in c.get("/api/corrections?class=blue%20stripes").json()["corrections"]] == [rec["id"]]

        job = c.post("/api/classes/blue%20stripes/rebuild", headers=AUTH)
        assert job.status_code == 202 and job.headers["location"] == job.json()["url"]
        end = time.monotonic() + 120
        while (state := c.get(job.json()["url"]).json())["state"] not in ("done", "failed", "cancelled"):
            assert time.monotonic() < end, state
            time.sleep(0.2)
        assert state["state"] == "done", state
        assert state["progress"]["note"].startswith("prototypes")
        result = c.get(state["result_url"]).json()
        assert result["previous"] == "blue stripes@1" and result["ref"] == "blue stripes@2"
        with protodb.open(db_copy) as db:
            new = db.sets.resolve("blue stripes@2")[0]
            rows = db.sets.prototypes(new)
            assert new.config["exemplars"][-1]["corrections"] == [rec["id"]]
            corrected = new.images[-1]
            # the corrected region's features are in the new version: its own instance prototype
            assert "instance" in [k for k, i in zip(rows.kinds, rows.image_ids) if i == corrected]
            assert db.sets.resolve("blue stripes@1")[0].images == new.images[:-1]
        # before and after: both versions still segment through the same API
        for ref in ("blue stripes@1", "blue stripes@2"):
            seg = c.post(f"/api/segment?classes=red%20box,{ref.replace(' ', '%20')}&outputs=maps", content=image)
            assert seg.status_code == 200 and "blue stripes" in seg.json()["vocabulary"]["classes"]
