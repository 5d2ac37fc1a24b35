"""One foreground/background mask per support image, shared by every extractor of a class.

The paper runs its segmenter once per image. Here the masks are made on the patch grid of one
designated extractor (``MaskConfig.source``), stored once (pixel PNGs), and every other extractor
takes them to its own grid with :func:`to_grid`. Three cases:

* generated images: unsupervised proposals (normalised cut, or a plugin such as CutLER) weighted by
  the class token's cross-attention (:func:`protodb.pipeline.masks.attention_fg_bg`);
* exemplars with a mask: the mask; the background is the pixels a label map marks as background
  (``bg_value``), never pixels of another labelled class; with a binary mask, the rest of the image
  (unless ``exemplar_background`` is off);
* exemplars without a mask: the proposal touching the image border least (:func:`object_segment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
from scipy import ndimage

from protodb.pipeline.masks import MAX_IOU, MIN_AREA, RULES, attention_fg_bg, ncut_segments, parse_tau, resize_area

MIN_OBJECT_AREA = 0.03  # an object segment covers at least 3% of the image
#: The built-in normalised cut's parameters (recorded with every mask and in the build config).
NCUT_PARAMS = {"n_segments": 3, "tau": 0.2, "rules": RULES, "max_iou": MAX_IOU, "min_area": MIN_AREA}


def ncut_params(tau: float | str | None = None) -> dict:
    """The normalised cut's parameters with ``--mask-tau`` (None: MaskCut's 0.2), as recorded in the build
    config (so another rule is another config hash)."""
    return {**NCUT_PARAMS, "tau": parse_tau(tau)}


def to_grid(mask: np.ndarray, grid: tuple[int, int], min_fraction: float, *, keep_some: bool = False) -> np.ndarray:
    """Pixel mask (H, W) bool -> patch-grid mask (h, w) bool: a patch is in when at least
    ``min_fraction`` of its pixels are. ``keep_some``: a non-empty mask never comes out empty — the
    patches it covers most are kept (a thin object narrower than a patch still gives features)."""
    return grid_coverage(mask, grid, min_fraction, keep_some=keep_some)[0]


def grid_coverage(mask: np.ndarray, grid: tuple[int, int], min_fraction: float, *, keep_some: bool = False
                  ) -> tuple[np.ndarray, float | None]:
    """:func:`to_grid` and, when ``keep_some`` had to step in (no patch reaches ``min_fraction``), the
    coverage of the patches kept instead (their share of class pixels, < ``min_fraction``); else None.

    A mask with any pixel always covers part of some patch (the bins tile the image), so with
    ``keep_some`` a non-empty pixel mask gives at least one patch however thin or small it is."""
    frac = resize_area(np.asarray(mask, dtype=np.float32), grid)
    out = frac >= np.float32(min_fraction) - 1e-6
    if keep_some and not out.any() and frac.max() > 0:
        top = float(frac.max())
        return frac >= np.float32(top) - 1e-6, round(top, 4)
    return out, None


def upsample(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Patch-grid mask (h, w) -> pixel mask of ``size`` = (W, H), nearest neighbour."""
    im = PIL.Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(size, PIL.Image.NEAREST)
    return np.asarray(im) > 127


def object_segment(segments: list[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """The foreground of an exemplar without a mask and without attention.

    Normalised cut splits the image but does not say which side is the object; as in MaskCut's
    corner rule, the object is the candidate (a segment, or the rest of the image) touching the
    image border least, relative to its own border length. Returns (h, w) bool (empty if none).
    """
    border = np.zeros(grid, bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    candidates = list(segments)
    if segments:
        rest = ~np.logical_or.reduce(segments)
        if rest.any():
            candidates.append(rest)
    best, best_score = np.zeros(grid, bool), None
    for c in candidates:
        if c.mean() < MIN_OBJECT_AREA:
            continue
        score = (c & border).sum() / max(1, border.sum())  # share of the frame it occupies
        if best_score is None or score < best_score:
            best, best_score = c, score
    return best


@dataclass
class GridMasks:
    """Masks of one support image on the source extractor's grid, and how they were made."""

    fg: np.ndarray  # (h, w) bool
    bg: np.ndarray  # (h, w) bool
    method: str
    params: dict[str, Any]
    fg_pixels: np.ndarray | None = None  # (H, W) bool when known exactly (given masks)
    bg_pixels: np.ndarray | None = None


def masks_for(feats, grid: tuple[int, int], *, image: PIL.Image.Image, attention: np.ndarray | None,
              given: np.ndarray | None, given_background: np.ndarray | None, min_fraction: float,
              exemplar_background: bool, plugin=None, tau: float | str = 0.2) -> GridMasks:
    """Foreground and background of one support image on ``grid`` (its features ``feats`` (h, w, D)).
    ``tau``: the normalised cut's affinity threshold (a cosine, or ``"pQ"``: a percentile of the image's
    patch cosines; :func:`protodb.pipeline.masks.parse_tau`)."""
    if given is not None:
        fg, fallback = grid_coverage(given, grid, min_fraction, keep_some=True)
        if not exemplar_background:
            bg_pix, source = np.zeros_like(given), "none (--no-exemplar-background)"
        elif given_background is not None:
            bg_pix, source = given_background, "labelled background"
        else:
            bg_pix, source = ~given, "rest of the image"
        bg = to_grid(bg_pix, grid, 1.0) & ~fg  # patches with no class pixel
        params = {"min_fraction": min_fraction, "background": source, "grid": list(grid)}
        if fallback is not None:  # smaller or thinner than any patch: its best-covered patches
            params["thin_fallback"] = {"coverage": fallback, "patches": int(fg.sum())}
        return GridMasks(fg, bg, "given", params, fg_pixels=given, bg_pixels=bg_pix)
    if attention is not None:
        proposals = plugin.segment(image, grid) if plugin is not None else None
        res = attention_fg_bg(feats, attention, segments=proposals, tau=tau)
        method, params = res.method, res.params
        if plugin is not None:
            method, params = f"{plugin.name}+attention", {**params, plugin.name: plugin.params()}
        return GridMasks(res.fg, res.bg, method, params)
    proposals = plugin.segment(image, grid) if plugin is not None else ncut_segments(feats, tau=tau)
    fg = object_segment(proposals, grid)
    if exemplar_background and fg.any():
        bg = ~ndimage.binary_dilation(fg, iterations=1)
    else:
        bg = np.zeros(grid, bool)
    name = plugin.name if plugin is not None else "ncut"
    params = {"dilate": 1, "min_area": MIN_OBJECT_AREA, "grid": list(grid),
              "background": "rest of the image" if exemplar_background else "none (--no-exemplar-background)"}
    params.update({plugin.name: plugin.params()} if plugin is not None else {**NCUT_PARAMS, "tau": parse_tau(tau)})
    return GridMasks(fg, bg, f"{name}+border", params)


def for_extractor(m: GridMasks, grid: tuple[int, int], size: tuple[int, int], min_fraction: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The shared masks on another extractor's ``grid`` (``size`` = (W, H) of the image)."""
    if m.fg.shape == tuple(grid):
        return m.fg, m.bg
    fg_pix = m.fg_pixels if m.fg_pixels is not None else upsample(m.fg, size)
    bg_pix = m.bg_pixels if m.bg_pixels is not None else upsample(m.bg, size)
    fg = to_grid(fg_pix, grid, min_fraction if m.fg_pixels is not None else 0.5, keep_some=True)
    return fg, to_grid(bg_pix, grid, 1.0) & ~fg
