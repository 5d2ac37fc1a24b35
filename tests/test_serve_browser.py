"""The web page in a real headless Chromium (the system's /usr/bin/chromium, never a downloaded one)
against a real ``protodb serve`` process: gallery, a set's parts, segmenting an uploaded image."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

if os.environ.get("CI"):  # CI installs the serve extra (make setup): missing, these tests fail, never skip
    import fastapi  # noqa: F401
    import httpx  # noqa: F401
pytest.importorskip("fastapi", reason="protodb serve needs the serve extra: pip install 'protodb[serve]'")
httpx = pytest.importorskip("httpx")

from tests.serve_helpers import ServerProcess, chromium_or_skip, png, scene, scene_db  # noqa: E402,F401

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1366, "height": 768}


@pytest.fixture(scope="module")
def served(scene_db, tmp_path_factory):
    chromium_or_skip()
    home = tmp_path_factory.mktemp("browser") / "db"
    shutil.copytree(scene_db, home, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    proc = ServerProcess(home, "--vocab", "scene", "--workers", "1")
    yield proc
    proc.stop()


@contextlib.contextmanager
def chromium_page(profile: Path, ignore: tuple[str, ...] = ()):
    """A page of headless Chromium (a persistent profile in ``profile``) whose console errors (but those
    naming one of ``ignore``, e.g. an expected "404") and page errors are collected in ``page.problems``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_or_skip(), args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT)
        try:
            pg = context.new_page()
            problems: list[str] = []
            pg.on("console", lambda m: problems.append(m.text)
                  if m.type == "error" and not any(i in m.text for i in ignore) else None)
            pg.on("pageerror", lambda e: problems.append(str(e)))
            pg.problems = problems
            yield pg
        finally:
            context.close()


@pytest.fixture
def page(served, tmp_path):
    with chromium_page(tmp_path / "profile") as pg:
        yield pg


def poll(check, what: str, timeout: float = 20.0):
    """Wait for ``check()`` from the test side (the pages' CSP forbids eval, so no wait_for_function)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.mark.slow
def test_gallery_parts_and_segment_page_in_chromium(served, page, tmp_path):
    base = served.url
    # ------------------------------------------------------------------ gallery
    page.goto(base + "/")
    page.wait_for_selector("#gallery[data-ready='true']")
    cards = page.eval_on_selector_all(".card", "cs => cs.map(c => [c.dataset.class, c.dataset.kind])")
    assert sorted(cards) == [["blue stripes", "thing"], ["red box", "thing"]]
    thumb = page.locator(".card[data-class='red box'] img.thumb")
    poll(lambda: thumb.evaluate("i => i.complete && i.naturalWidth > 0"), "the gallery thumbnail has loaded")
    page.keyboard.press("Tab")  # keyboard first stop: the skip link, then real links
    assert page.evaluate("document.activeElement.className") == "skip"
    page.fill("#filter", "blue")
    assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.class)") == ["blue stripes"]
    page.fill("#filter", "")

    # ------------------------------------------------------------------ a set and its parts
    link = page.locator(".card[data-class='red box'] .version-link").first
    set_id = link.get_attribute("data-set-id")
    link.focus()
    page.keyboard.press("Enter")  # links work from the keyboard
    page.wait_for_url(f"**/sets/{set_id}")
    page.wait_for_selector("#parts[data-ready='true']")
    assert page.get_attribute("#set-title", "data-set-id") == set_id
    parts = page.locator("#parts .part")
    assert parts.count() == 4
    parts.nth(2).hover()
    assert page.get_attribute(".part[data-part-index='2']", "aria-pressed") == "true"
    boxes = page.locator("#supports .hl")
    assert boxes.count() == 6 and page.locator("#nearest figure").count() == 6
    assert page.locator("#supports .support[data-highlighted='true']").count() >= 1
    parts.nth(0).focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.partIndex") == "1"
    assert page.get_attribute(".part[data-part-index='1']", "aria-pressed") == "true"
    assert page.evaluate("document.querySelector('#prov').children.length") > 8
    page.wait_for_selector("#support-images[data-ready='true']")  # images with their masks (from the artifact store)
    assert page.locator("#support-images .support-row").count() == 3
    assert page.locator("#support-images canvas[data-layers='background,foreground']").count() == 3
    assert page.locator("#support-images a[data-what='foreground mask']").count() == 3
    page.focus("#tab-parts")
    page.keyboard.press("ArrowRight")  # the instances sheet, from the keyboard
    page.wait_for_selector("#parts[data-sheet='instances'][data-ready='true']")
    assert page.get_attribute("#tab-instances", "aria-selected") == "true"
    assert page.eval_on_selector_all("#parts .part", "bs => bs.map(b => b.dataset.kind)") == ["instance"] * 3

    # ------------------------------------------------------------------ segmenting an upload
    img, _ = scene(10)
    upload = tmp_path / "scene.png"
    PIL.Image.fromarray(img).resize((256, 192), PIL.Image.NEAREST).save(upload)
    page.goto(base + "/segment")
    page.wait_for_selector("#vocab[data-ready='true']")
    page.select_option("#vocab", "scene")
    page.click("#options summary")  # each class's background here is the other class: no background
    page.select_option("#background", "false")
    page.set_input_files("#file", str(upload))
    page.click("#run")
    page.wait_for_selector("#legend[data-ready='true']", timeout=60_000)
    shown = page.eval_on_selector_all("#legend li", "ls => ls.map(l => [l.dataset.label, Number(l.dataset.fraction)])")
    api = httpx.post(base + "/api/segment?vocab=scene&background=false&outputs=maps", content=upload.read_bytes(), timeout=60).json()
    assert {n for n, _ in shown} == set(api["present"]) and {"red box", "blue stripes"} <= {n for n, _ in shown}
    for name, frac in shown:
        assert frac == pytest.approx(api["present"][name]["fraction"])
    labels = np.frombuffer(base64.b64decode(api["maps"]["labels"]), np.uint8).reshape(192, 256)
    canvas = page.locator("#overlay")
    bbox = canvas.bounding_box()
    for fx in (0.25, 0.75):  # left half red box, right half blue stripes
        page.mouse.move(bbox["x"] + fx * bbox["width"], bbox["y"] + 0.5 * bbox["height"])
        probe = page.eval_on_selector("#probe", "p => ({...p.dataset})")
        x, y = int(probe["x"]), int(probe["y"])
        assert probe["class"] == api["legend"][str(labels[y, x])]
        assert -1 <= float(probe["score"]) <= 1
    assert probe["class"] == "blue stripes"
    page.wait_for_selector("#crop[data-class='blue stripes']")
    drawn = """() => { const c = document.querySelector('#crop');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }"""
    poll(lambda: page.evaluate(drawn), "the winning support crop is drawn")
    canvas.focus()
    page.keyboard.press("ArrowLeft")
    assert page.eval_on_selector("#probe", "p => p.dataset.x") != probe["x"]  # the probe moves from the keyboard
    shot = Path(os.environ.get("PROTODB_SCREENSHOT", tmp_path / "segment-page.png"))
    page.screenshot(path=str(shot), full_page=False)
    # a photo over 2048 pixels a side is sent scaled down by the page (per-pixel maps stay small)
    wide = tmp_path / "wide.png"
    PIL.Image.fromarray(img).resize((2400, 300), PIL.Image.NEAREST).save(wide)
    page.set_input_files("#file", str(wide))
    page.fill("#classes", "blue stripes")  # an ad-hoc class list instead of the vocabulary
    page.click("#run")
    page.wait_for_selector("#segment-form[data-done='2']", state="attached", timeout=60_000)
    assert "sent at 2048×256, scaled from 2400×300" in page.inner_text("#seg-status")
    assert page.get_attribute("#overlay", "data-width") == "2048"
    assert set(page.eval_on_selector_all("#legend li", "ls => ls.map(l => l.dataset.label)")) <= {"blue stripes", "background"}
    im = PIL.Image.open(io.BytesIO(shot.read_bytes()))
    assert im.size == (1366, 768)
    assert not page.problems, page.problems
