"""Make ``docs/serve-segment.png``, the README's picture of ``protodb serve``'s segment page.

Builds three exemplar classes from scikit-image's bundled photos with the real ONNX DINOv2 ViT-S/14
(``focus-vits14``, as ``protodb demo --quick`` does), serves them, uploads a collage of the mirrored
photos (pixels the exemplars never had) on the segment page in headless Chromium, points at a pixel
labelled cat and saves the page at 1366x768.

    python docs/make_serve_screenshot.py [--out docs/serve-segment.png]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def cat_pixel(url: str, image: Path) -> tuple[int, int, int, int]:
    """A pixel the server labels cat, nearest the middle of all cat pixels: (x, y, width, height)."""
    import base64

    import httpx
    import numpy as np

    res = httpx.post(url + "/api/segment?vocab=photos&outputs=maps", content=image.read_bytes(), timeout=600).json()
    m = res["maps"]
    labels = np.frombuffer(base64.b64decode(m["labels"]), np.uint8).reshape(m["height"], m["width"])
    value = int(next(k for k, v in res["legend"].items() if v == "cat"))
    ys, xs = np.nonzero(labels == value)
    i = int(np.argmin((ys - np.median(ys)) ** 2 + (xs - np.median(xs)) ** 2))
    return int(xs[i]), int(ys[i]), m["width"], m["height"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve-segment.png")
    args = ap.parse_args()

    import PIL.Image
    from playwright.sync_api import sync_playwright

    import protodb
    from protodb.demo import EXEMPLARS, QUICK, mosaic, skimage_photo
    from protodb.pipeline.config import AddClassRequest
    from tests.serve_helpers import ServerProcess, clear_env

    clear_env()
    tmp = Path(tempfile.mkdtemp(prefix="serve-shot-"))
    try:
        home = tmp / "db"
        with protodb.open(home) as db:
            for name in QUICK:
                folder = tmp / "ex" / name.replace(" ", "_")
                folder.mkdir(parents=True)
                PIL.Image.open(skimage_photo(EXEMPLARS[name])).convert("RGB").save(folder / "photo.png")
                db.add_class(AddClassRequest(name=name, images=0, exemplars=folder, extractors=("focus-vits14",), k=8))
            db.vocabs.create("photos", list(QUICK), description="three classes from scikit-image photos")
        collage = tmp / "collage.png"
        mosaic(list(QUICK), size=224).save(collage)
        server = ServerProcess(home, "--vocab", "photos", log=tmp / "serve.log")
        try:
            with sync_playwright() as p:
                ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path="/usr/bin/chromium",
                                                           headless=True, args=ARGS,
                                                           viewport={"width": 1366, "height": 768})
                page = ctx.new_page()
                page.goto(server.url + "/segment")
                page.wait_for_selector("#vocab[data-ready='true']")
                page.set_input_files("#file", str(collage))
                page.click("#run")
                page.wait_for_selector("#legend[data-ready='true']", timeout=600_000)
                x, y, w, h = cat_pixel(server.url, collage)
                box = page.locator("#overlay").bounding_box()
                page.mouse.move(box["x"] + box["width"] * (x + 0.5) / w, box["y"] + box["height"] * (y + 0.5) / h)
                page.wait_for_function("document.querySelector('#crop').dataset.class !== ''")
                page.wait_for_timeout(500)
                shot = tmp / "shot.png"
                page.screenshot(path=str(shot))
                ctx.close()
        finally:
            server.stop()
        # a palette PNG: the same picture at a fraction of the bytes in the repository
        PIL.Image.open(shot).convert("RGB").quantize(colors=128, method=PIL.Image.Quantize.MEDIANCUT).save(
            args.out, optimize=True)
        print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
