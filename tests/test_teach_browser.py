"""Teach by example on the segment page, in a real headless Chromium (/usr/bin/chromium) against a real
``protodb serve --allow-writes`` process: paint a stroke with the brush, add it as a correction (the
catalog holds exactly the painted pixels), rebuild as a job, and see both versions side by side. A
read-only server shows no write controls."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("fastapi", reason="protodb serve needs the serve extra: pip install 'protodb[serve]'")

import protodb  # noqa: E402
from tests.serve_helpers import TOKEN, ServerProcess, chromium_or_skip, scene, scene_db  # noqa: E402,F401
from tests.test_serve_browser import chromium_page, poll  # noqa: E402


@pytest.fixture
def browser(tmp_path):
    with chromium_page(tmp_path / "profile", ignore=("401",)) as pg:
        yield pg


def _segment(page, base: str, upload) -> None:
    page.goto(base + "/segment")
    page.wait_for_selector("#vocab[data-ready='true']")
    page.select_option("#vocab", "scene")
    page.click("#options summary")
    page.select_option("#background", "false")
    page.set_input_files("#file", str(upload))
    page.click("#run")
    page.wait_for_selector("#legend[data-ready='true']", timeout=60_000)


@pytest.mark.slow
def test_paint_a_correction_rebuild_and_compare_in_chromium(scene_db, browser, tmp_path):
    chromium_or_skip()
    home = tmp_path / "db"
    shutil.copytree(scene_db, home, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    upload = tmp_path / "scene.png"
    PIL.Image.fromarray(scene(11)[0]).save(upload)  # 128x96: the label maps have the photo's size
    page = browser
    with_writes = ServerProcess(home, "--vocab", "scene", "--workers", "1", "--allow-writes",
                                env={"PROTODB_SERVE_TOKEN": TOKEN})
    try:
        _segment(page, with_writes.url, upload)
        page.wait_for_selector("#teach:not([hidden])")
        assert page.eval_on_selector_all("#teach-classes option", "os => os.map(o => o.value)") == \
            ["red box", "blue stripes"]
        page.fill("#teach-class", "blue stripes")
        page.check("input[name='tool'][value='brush']")
        page.fill("#brush-size", "6")
        box = page.locator("#overlay").bounding_box()
        at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
        page.mouse.move(*at(0.6, 0.3))
        page.mouse.down()
        for i in range(1, 11):
            page.mouse.move(*at(0.6 + 0.02 * i, 0.3 + 0.03 * i))
        page.mouse.up()
        painted = page.eval_on_selector("#mask", """c => { const d = c.getContext('2d').getImageData(0, 0,
            c.width, c.height).data; const out = []; for (let i = 3; i < d.length; i += 4) out.push(d[i] ? 1 : 0);
            return out; }""")
        painted = np.array(painted, bool).reshape(96, 128)
        ys, xs = np.nonzero(painted)
        # the stroke runs from (0.6, 0.3) to (0.8, 0.6) of the photo, 6 pixels wide
        assert 0.6 * 128 - 4 <= xs.min() and xs.max() <= 0.8 * 128 + 4 and 0.3 * 96 - 4 <= ys.min()
        assert ys.max() <= 0.6 * 96 + 4 and painted.sum() > 100
        assert page.get_attribute("#overlay", "data-painted") == str(int(painted.sum()))

        page.fill("#teach-token", "wrong")  # a wrong token: one line on the page, nothing stored
        page.click("#add-correction")
        page.wait_for_selector("#teach[data-failed='1']")
        assert "wrong token" in page.inner_text("#teach-status")
        with protodb.open(home) as db:
            assert db.corrections.ls() == ()

        page.fill("#teach-token", TOKEN)
        page.fill("#teach-author", "chromium")
        page.click("#add-correction")
        page.wait_for_selector("#teach[data-corrections='1']")
        cid = page.get_attribute("#teach", "data-last-correction")
        with protodb.open(home) as db:
            (rec,) = db.corrections.ls("blue stripes")
            assert rec.id == cid and rec.author == "chromium" and rec.pixels == painted.sum()
            assert np.array_equal(db.corrections.load(rec)[1], painted)  # exactly the painted pixels
            assert rec.set_id == db.sets.resolve("blue stripes@1")[0].id and rec.settings["vocabulary"] == "scene"
            assert np.array_equal(np.asarray(db.corrections.load(rec)[0]), np.asarray(PIL.Image.open(upload)))

        page.click("#rebuild")
        page.wait_for_selector("#teach[data-rebuilt='blue stripes@2']", timeout=120_000)
        poll(lambda: page.get_attribute("#after-fig", "data-iou") is not None, "the after view is drawn")
        assert page.get_attribute("#before-fig", "data-ref") == "blue stripes@1"
        assert page.get_attribute("#after-fig", "data-ref") == "blue stripes@2"
        for fig in ("#before-fig", "#after-fig"):
            assert 0.0 <= float(page.get_attribute(fig, "data-iou")) <= 1.0
        assert "IoU" in page.inner_text("#after-caption")
        if os.environ.get("PROTODB_SCREENSHOT"):
            page.screenshot(path=str(Path(os.environ["PROTODB_SCREENSHOT"])), full_page=True)
        with protodb.open(home) as db:
            assert db.sets.resolve("blue stripes")[0].version == 2
            assert db.sets.resolve("blue stripes@2")[0].config["exemplars"][-1]["corrections"] == [cid]
        assert not page.problems, page.problems
    finally:
        with_writes.stop()

    read_only = ServerProcess(home, "--vocab", "scene", "--workers", "1")
    try:
        _segment(page, read_only.url, upload)
        assert page.get_attribute("#teach", "data-writes") == "false"
        assert page.locator("#teach").is_hidden() and page.locator("#add-correction").is_hidden()
    finally:
        read_only.stop()
