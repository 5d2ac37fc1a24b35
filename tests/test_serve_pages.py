"""The pages as people expect them, in a real headless Chromium (the system's /usr/bin/chromium) against
a real HTTP server on 127.0.0.1: a segment that waits shows its place in line, elapsed time and a
cancel; labels are drawn over the photo (opacity, a legend that hides classes, the background left
clear); confidence is shown; errors replace the previous result; a set's masks are drawn over its
support images with zoom; the API reference renders its code and parameters.

The server runs in this process (uvicorn on its own thread, stopped at the end) so that the warm
segmenter can be held at a gate: a segment then takes exactly as long as the test needs.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
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

import protodb  # noqa: E402
from protodb.pipeline.config import AddClassRequest  # noqa: E402
from tests.serve_helpers import chromium_or_skip, scene, scene_db  # noqa: E402,F401
from tests.test_serve_browser import VIEWPORT, chromium_page, poll  # noqa: E402

pytestmark = pytest.mark.slow
SHOTS = os.environ.get("PROTODB_SCREENSHOTS")  # read at import: the fixtures clear PROTODB_* variables


class GatedServer:
    """``create_app`` served by uvicorn on a free loopback port, in a thread; the ``scene`` segmenter
    waits for ``gate`` (open unless a test closes it)."""

    def __init__(self, home: Path):
        import uvicorn

        from protodb.serve.app import create_app
        from protodb.serve.server import bind

        self.app = create_app(home, vocabs=["scene"], workers=1, queue_size=4)
        pool = self.app.state.serve.pool
        served = pool.get(pool.key(vocab="scene"))
        real = served.segmenter.segment
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

        def gated(image):
            self.entered.set()
            self.gate.wait(60)
            return real(image)

        served.segmenter.segment = gated
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.05)
        assert self.server.started, "the in-process server did not start"

    def stop(self) -> None:
        self.gate.set()
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


@pytest.fixture(scope="module")
def gated(scene_db, tmp_path_factory):
    chromium_or_skip()
    root = tmp_path_factory.mktemp("pages")
    home = root / "db"
    shutil.copytree(scene_db, home, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    ex, masks = root / "ex", root / "masks"
    ex.mkdir()
    masks.mkdir()
    img, lab = scene(30)
    PIL.Image.fromarray(img).save(ex / "g.png")
    PIL.Image.fromarray(lab).save(masks / "g.png")
    with protodb.open(home, create=False) as db:  # a class of ONE support image ("1 image", not "1 images")
        db.builder(preset="tiny").add_class(AddClassRequest("green", images=0, exemplars=ex, masks=masks,
                                                            mask_value=1, bg_value=None, k=2))
    server = GatedServer(home)
    yield server
    server.stop()


@pytest.fixture
def page(gated, tmp_path):
    with chromium_page(tmp_path / "profile", ignore=("404",)) as pg:
        yield pg


def shoot(page, tmp_path: Path, name: str) -> Path:
    """A screenshot under the test's temporary folder (never the work tree); PROTODB_SCREENSHOTS=DIR keeps them."""
    folder = Path(SHOTS or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert PIL.Image.open(path).size[0] == VIEWPORT["width"]
    return path


def pixel(page, selector: str, x: int, y: int) -> list[int]:
    return page.eval_on_selector(selector, f"c => Array.from(c.getContext('2d').getImageData({x}, {y}, 1, 1).data)")


def test_segment_page_progress_cancel_overlay_legend_and_confidence(gated, page, tmp_path):
    base = gated.url
    img, _ = scene(10)
    upload = tmp_path / "scene.png"
    photo = np.asarray(PIL.Image.fromarray(img).resize((256, 192), PIL.Image.NEAREST))
    PIL.Image.fromarray(photo).save(upload)
    page.goto(base + "/segment")
    page.wait_for_selector("#vocab[data-ready='true']")
    page.set_input_files("#file", str(upload))

    # ---------------------------------------------------------- queued behind another job: place, elapsed, cancel
    gated.gate.clear()
    gated.entered.clear()
    blocker = httpx.post(base + "/api/jobs/segment?vocab=scene", content=upload.read_bytes()).json()
    assert gated.entered.wait(30)
    page.click("#run")
    page.wait_for_selector("#progress[data-state='queued']")
    first = page.inner_text("#progress-text")
    assert first.startswith("Queued: next in line (1 worker busy of 1)"), first
    time.sleep(1.2)
    later = page.inner_text("#progress-text")
    assert later != first and float(later.rsplit("·", 1)[1].strip().split()[0]) >= 1.0, later  # elapsed ticks
    shoot(page, tmp_path, "segment-queued")
    page.click("#cancel")
    page.wait_for_selector("#segment-form[data-cancelled='1']", state="attached")
    assert page.inner_text("#seg-status").startswith("Cancelled scene.png") and page.is_hidden("#progress")
    assert page.is_hidden("#result")  # nothing was shown before: nothing to keep
    gated.gate.set()
    poll(lambda: httpx.get(base + blocker["url"]).json()["state"] == "done", "the other job finishes")

    # ---------------------------------------------------------- a result: drawn over the photo
    page.click("#run")
    page.wait_for_selector("#segment-form[data-done='1']", state="attached", timeout=60_000)
    api = httpx.post(base + "/api/segment?vocab=scene&outputs=maps,runner_up", content=upload.read_bytes(), timeout=60).json()
    labels = np.frombuffer(base64.b64decode(api["maps"]["labels"]), np.uint8).reshape(192, 256)
    legend = {v: k for k, v in api["legend"].items()}
    assert page.get_attribute("#overlay", "data-width") == "256" and page.get_attribute("#overlay", "data-opacity") == "55"
    bg_y, bg_x = map(int, np.argwhere(labels == int(legend["background"]))[0])
    red = int(legend["red box"])
    cls_y, cls_x = map(int, np.argwhere(labels == red)[len(np.argwhere(labels == red)) // 2])
    assert pixel(page, "#overlay", bg_x, bg_y)[:3] == photo[bg_y, bg_x].tolist()  # background: clear, the photo
    colour = np.array(api["colours"][str(red)])
    drawn = np.array(pixel(page, "#overlay", cls_x, cls_y)[:3])
    want = 0.45 * photo[cls_y, cls_x] + 0.55 * colour
    assert np.abs(drawn - want).max() <= 2, (drawn, want)
    page.locator("#opacity").fill("100")
    assert np.abs(np.array(pixel(page, "#overlay", cls_x, cls_y)[:3]) - colour).max() <= 1
    # the legend hides and shows a class
    button = page.locator("#legend li[data-label='red box'] button")
    assert button.get_attribute("aria-pressed") == "true"
    button.click()
    assert button.get_attribute("aria-pressed") == "false" and page.get_attribute("#overlay", "data-hidden") == f"0,{red}"
    assert pixel(page, "#overlay", cls_x, cls_y)[:3] == photo[cls_y, cls_x].tolist()
    page.locator("#legend li[data-label='background'] button").click()  # the background can be shaded on request
    assert np.array(pixel(page, "#overlay", bg_x, bg_y)[:3]).max() <= 1  # opacity 100: black
    page.locator("#legend li[data-label='background'] button").click()
    button.click()
    page.locator("#opacity").fill("55")
    assert np.abs(np.array(pixel(page, "#overlay", cls_x, cls_y)[:3]) - want).max() <= 2
    # confidence: this database's classes are each other's background, so with a background column the
    # result is a toss-up, and the page says so
    assert page.is_visible("#fit-warning") and page.get_attribute("#fit-warning", "data-verdict") == "doubtful"
    assert "may not describe the photo" in page.inner_text("#fit-warning")
    assert page.locator("#fit-warning li[data-code='near_ties']").count() == 1
    assert page.get_attribute("#legend li[data-label='red box']", "data-uncertain") == "true"
    assert "separation" in page.inner_text("#legend li[data-label='red box']")
    assert "(doubtful: see the warning)" in page.inner_text("#seg-status")
    bbox = page.locator("#overlay").bounding_box()
    page.mouse.move(bbox["x"] + (cls_x + 0.5) * bbox["width"] / 256, bbox["y"] + (cls_y + 0.5) * bbox["height"] / 192)
    probe = page.eval_on_selector("#probe", "p => ({...p.dataset})")
    assert probe["class"] == "red box" and probe["runner"].split(" ")[0] in ("background", "blue")
    assert 0 <= float(probe["separation"].split()[0]) <= 1
    page.click("#how-to-read summary")
    assert "not a probability" in page.inner_text("#how-to-read")
    shoot(page, tmp_path, "segment-result")
    # without the background column the halves are told apart: no warning
    page.click("#options summary")
    page.select_option("#background", "false")
    page.click("#run")
    page.wait_for_selector("#segment-form[data-done='2']", state="attached", timeout=60_000)
    assert page.is_hidden("#fit-warning") and page.get_attribute("#fit-warning", "data-verdict") == "clear"
    assert page.locator("#legend li[data-uncertain='true']").count() == 0

    # ---------------------------------------------------------- a running job cancelled: the previous result stays
    page.select_option("#background", "")  # the vocabulary's: the gated warm segmenter
    gated.gate.clear()
    gated.entered.clear()
    page.click("#run")
    assert gated.entered.wait(30)
    page.wait_for_selector("#progress[data-state='running']")
    assert page.inner_text("#progress-text").startswith("Segmenting: ")
    assert "stale" in page.get_attribute("#result", "class")  # the old result dimmed meanwhile
    page.click("#cancel")
    page.wait_for_selector("#progress[data-state='cancelling']")
    assert "finishes the image in hand" in page.inner_text("#progress-text")
    gated.gate.set()
    page.wait_for_selector("#segment-form[data-cancelled='2']", state="attached", timeout=30_000)
    assert "the result shown is the previous one" in page.inner_text("#seg-status")
    assert page.is_visible("#result") and "stale" not in (page.get_attribute("#result", "class") or "")

    # ---------------------------------------------------------- an error replaces the previous result
    page.fill("#classes", "kite, red box, zebra")
    page.click("#run")
    page.wait_for_selector("#segment-form[data-failed='1']", state="attached", timeout=30_000)
    message = page.inner_text("#seg-status")
    assert "'kite'" in message and "'zebra'" in message and "protodb add-class zebra" in message
    assert page.is_hidden("#result") and page.locator("#legend li").count() == 0
    shoot(page, tmp_path, "segment-error")
    assert not page.problems, page.problems


def test_set_page_masks_over_images_zoom_wording_and_unknown_sets(gated, page, tmp_path):
    base = gated.url
    page.goto(base + "/sets/nothing@9")
    page.wait_for_selector("#set-status[data-failed='true']")
    assert "no class 'nothing'" in page.inner_text("#set-status")
    assert page.is_hidden("#set-body") and page.inner_text("#set-title") == "No such prototype set"
    assert not page.is_visible("#prov") and not page.is_visible("#parts-h")  # its error alone
    shoot(page, tmp_path, "set-unknown")

    page.goto(base + "/sets/green")
    page.wait_for_selector("#parts[data-ready='true']", timeout=60_000)
    page.wait_for_selector("#support-images[data-ready='true']", timeout=30_000)
    assert page.inner_text("#set-status") == "green@1: 1 support image"
    prov = dict(zip(page.eval_on_selector_all("#prov dt", "ds => ds.map(d => d.textContent)"),
                    page.eval_on_selector_all("#prov dd", "ds => ds.map(d => d.textContent)")))
    assert prov["support images"] == "1 image (1 exemplar)"
    table = page.locator("#prov table.kv[data-method='given']")  # mask settings as a table, not JSON
    assert table.count() == 1 and "{" not in prov["masks"]
    rows = dict(zip(table.locator("th").all_inner_texts(), table.locator("td").all_inner_texts()))
    assert rows["min fraction"] == "0.5" and rows["background"] == "rest of the image"
    assert "made on the patch grid of tiny-vit (8-pixel patches)" in prov["masks"]
    note = page.inner_text("#images-status")
    assert note.startswith("1 support image; masks made on the patch grid of tiny-vit (8-pixel patches)")
    mask_id = httpx.get(base + "/api/sets/green/images").json()["mask_extractor_id"]
    assert mask_id[:12] not in page.inner_text("#main")  # named, not a hash
    assert page.inner_text("#parts-status") == "2 part prototypes, 6 nearest patches each"

    # the masks over the support image: green foreground, red background, translucent; layers and opacity
    images = httpx.get(base + "/api/sets/green/images").json()["images"]
    (im,) = images
    fg = np.asarray(PIL.Image.open(io.BytesIO(httpx.get(base + f"/api/artifacts/{im['masks']['foreground']}").content)))
    raw = np.asarray(PIL.Image.open(io.BytesIO(httpx.get(base + f"/api/artifacts/{im['sha256']}").content)).convert("RGB"))
    fy, fx = map(int, np.argwhere(fg > 127)[len(np.argwhere(fg > 127)) // 2])
    by, bx = map(int, np.argwhere(fg <= 127)[len(np.argwhere(fg <= 127)) // 2])
    canvas = "#support-images canvas"
    assert page.get_attribute(canvas, "data-layers") == "background,foreground"
    want = 0.55 * raw[fy, fx] + 0.45 * np.array([46, 204, 64])
    assert np.abs(np.array(pixel(page, canvas, fx, fy)[:3]) - want).max() <= 2
    page.locator("#mask-opacity").fill("100")
    assert pixel(page, canvas, fx, fy)[:3] == [46, 204, 64] and pixel(page, canvas, bx, by)[:3] == [230, 40, 40]
    page.uncheck("#layer-bg")
    assert pixel(page, canvas, bx, by)[:3] == raw[by, bx].tolist() and page.get_attribute(canvas, "data-layers") == "foreground"
    page.check("#layer-bg")
    page.locator("#mask-opacity").fill("45")
    page.locator("#mask-zoom").fill("2")
    assert page.eval_on_selector(canvas, "c => c.getBoundingClientRect().width") == pytest.approx(640, abs=1)
    shoot(page, tmp_path, "set-masks")

    # zoom on the support images of the prototypes: the patch boxes grow, the nearest stays in view
    small = page.eval_on_selector("#supports .hl[data-rank='0']", "b => b.getBoundingClientRect().width")
    page.locator("#zoom").fill("4")
    assert page.inner_text("#zoom-value") == "4×"
    assert page.eval_on_selector("#supports img", "i => i.getBoundingClientRect().width") == pytest.approx(1280, abs=1)
    page.locator("#parts .part").nth(1).hover()
    big = page.eval_on_selector("#supports .hl[data-rank='0']", "b => b.getBoundingClientRect().width")
    assert big == pytest.approx(4 * small, rel=0.05)
    inside = """() => { const v = document.querySelector('#supports-view').getBoundingClientRect();
        const b = document.querySelector("#supports .hl[data-rank='0']").getBoundingClientRect();
        return b.left >= v.left && b.right <= v.right && b.top >= v.top && b.bottom <= v.bottom; }"""
    assert page.evaluate(inside)
    page.locator("#parts-h").scroll_into_view_if_needed()
    shoot(page, tmp_path, "set-zoom")
    # the gallery says 1 image too
    page.goto(base + "/")
    page.wait_for_selector("#gallery[data-ready='true']")
    assert "· 1 image ·" in page.inner_text(".card[data-class='green']")
    assert not page.problems, page.problems


def test_docs_page_redirect_code_and_parameter_tables(gated, page, tmp_path):
    page.goto(gated.url + "/docs")
    page.wait_for_selector("#endpoints[data-ready='true']")
    assert page.url == gated.url + "/api/docs"
    text = page.inner_text("#endpoints")
    assert "``" not in text  # RST double backticks are rendered, not shown
    seg = page.locator("section[data-path='/api/segment'][data-method='post']")
    assert seg.locator(".doc code", has_text="present").count() >= 1
    names = seg.locator("tr[data-param] td:first-child").all_inner_texts()
    assert names[:4] == ["vocab", "classes", "extractor", "levels"] and "outputs" in names
    assert seg.locator("tr[data-field='image']").count() == 1 and "file, repeatable" in seg.inner_text()
    jobs = page.locator("section[data-path='/api/jobs/{job_id}'][data-method='delete']")
    assert jobs.count() == 1
    seg.scroll_into_view_if_needed()
    shoot(page, tmp_path, "docs")
    assert not page.problems, page.problems
