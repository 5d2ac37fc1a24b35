"""Pictures for people: contact-sheet geometry and crops of support images around a patch box.

Used by ``protodb inspect`` (contact sheets) and ``protodb segment --explain`` (the winning crop).
"""

from __future__ import annotations

import PIL.Image
import PIL.ImageDraw

# contact-sheet geometry (pixels)
CELL = 96          # each crop is resized to CELL x CELL
CAPTION = 16       # similarity text under each crop
LABEL_W = 120      # left column naming the prototype
GAP = 4
CONTEXT = 2        # crop = the patch plus this many patches on each side


def sheet_size(rows: int, top: int) -> tuple[int, int]:
    """(width, height) of a contact sheet with ``rows`` prototypes and ``top`` crops per row."""
    return LABEL_W + top * (CELL + GAP) + GAP, rows * (CELL + CAPTION + GAP) + GAP


def crop_with_context(image: PIL.Image.Image, box: list[int]) -> PIL.Image.Image:
    """CELL x CELL crop of ``image`` around ``box`` = [x0, y0, x1, y1] pixels (with CONTEXT boxes of
    margin), the box outlined in red."""
    x0, y0, x1, y1 = box
    pw, ph = x1 - x0, y1 - y0
    cx0, cy0 = max(0, x0 - CONTEXT * pw), max(0, y0 - CONTEXT * ph)
    cx1, cy1 = min(image.width, x1 + CONTEXT * pw), min(image.height, y1 + CONTEXT * ph)
    crop = image.crop((cx0, cy0, cx1, cy1)).resize((CELL, CELL), PIL.Image.BILINEAR)
    sx, sy = CELL / max(1, cx1 - cx0), CELL / max(1, cy1 - cy0)
    draw = PIL.ImageDraw.Draw(crop)
    draw.rectangle([(x0 - cx0) * sx, (y0 - cy0) * sy, (x1 - cx0) * sx - 1, (y1 - cy0) * sy - 1],
                   outline=(255, 40, 40), width=2)
    return crop


def patch_box(y: int, x: int, grid: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """Patch (y, x) of an (h, w) grid -> [x0, y0, x1, y1] pixels of a (W, H) image."""
    h, w = grid
    W, H = size
    return [int(round(x * W / w)), int(round(y * H / h)), int(round((x + 1) * W / w)), int(round((y + 1) * H / h))]


def region_box(region: list[int], grid: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """Patch-grid region [y0, x0, y1, x1] (end-exclusive) -> [x0, y0, x1, y1] pixels of a (W, H) image."""
    gh, gw = grid
    W, H = size
    y0, x0, y1, x1 = region
    return [int(x0 * W / gw), int(y0 * H / gh), int(round(x1 * W / gw)), int(round(y1 * H / gh))]
