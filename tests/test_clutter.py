"""Few-shot exemplars in clutter (issue 20): thin or tiny exemplar masks never give a set without foreground
prototypes; the matching options for clutter (a background margin, kNN voting) do what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from sqlalchemy import select

from protodb.catalog.schema import MaskRow
from protodb.pipeline.config import AddClassRequest
from protodb.pipeline.support_masks import grid_coverage, masks_for, to_grid


# ------------------------------------------------------------------------------- item 3: thin exemplars
def test_a_single_pixel_keeps_the_patch_that_holds_it():
    mask = np.zeros((28, 42), bool)
    mask[17, 30] = True  # one pixel of 28 x 42 on a 2 x 3 grid of 14-pixel bins: cell (1, 2)
    grid, coverage = grid_coverage(mask, (2, 3), 0.5, keep_some=True)
    assert grid.sum() == 1 and grid[1, 2] and coverage == pytest.approx(1 / 196, abs=1e-4)
    assert not to_grid(mask, (2, 3), 0.5).any()  # without keep_some the threshold drops it
    full, none = grid_coverage(np.ones((28, 42), bool), (2, 3), 0.5, keep_some=True)
    assert full.all() and none is None  # no fallback when the threshold keeps patches


def test_a_thin_line_keeps_its_best_covered_patches_and_says_so():
    mask = np.zeros((28, 56), bool)
    mask[:, 20] = True  # a 1-pixel pole: 1/14 of the column of cells (.., 1)
    feats = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    m = masks_for(feats, (2, 4), image=None, attention=None, given=mask, given_background=~mask, min_fraction=0.5,
                  exemplar_background=True)
    assert m.fg.tolist() == [[False, True, False, False]] * 2
    assert m.params["thin_fallback"] == {"coverage": pytest.approx(1 / 14, abs=1e-4), "patches": 2}
    assert not (m.bg & m.fg).any() and m.bg[:, [0, 2, 3]].all()  # cells with a class pixel are not background
    wide = np.zeros((28, 56), bool)
    wide[:, 14:28] = True
    assert "thin_fallback" not in masks_for(feats, (2, 4), image=None, attention=None, given=wide,
                                            given_background=~wide, min_fraction=0.5, exemplar_background=True).params


def _thin_exemplars(root: Path) -> tuple[Path, Path]:
    """Two photos each with a 1-pixel-wide pole (label 7) and a 2 x 2 pixel dot (label 9) on background 0."""
    ex, mk = root / "ex", root / "mk"
    ex.mkdir(parents=True), mk.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = (rng.random((96, 128, 3)) * 80).astype(np.uint8)
        lab = np.zeros((96, 128), np.uint8)
        lab[10:90, 60 + 3 * i] = 7
        lab[40 + i:42 + i, 20:22] = 9
        img[lab == 7], img[lab == 9] = (230, 230, 230), (30, 30, 240)
        PIL.Image.fromarray(img).save(ex / f"p{i}.png")
        PIL.Image.fromarray(lab).save(mk / f"p{i}.png")
    return ex, mk


def test_thin_and_tiny_exemplars_build_foreground_from_every_photo(db, tmp_path):
    ex, mk = _thin_exemplars(tmp_path)
    builder = db.builder(preset="tiny")
    for name, value in (("pole", 7), ("dot", 9)):
        res = builder.add_class(AddClassRequest(name, images=0, exemplars=ex, masks=mk, mask_value=value, k=4))
        (built,) = res.sets
        counts = built.set.counts
        # one instance prototype per photo: both photos gave foreground patches, none was dropped
        assert counts["class"] == 1 and counts["instance"] == 2 and counts["part"] >= 1, (name, counts)
    with db.session() as s:
        params = [m.params for m in s.scalars(select(MaskRow).where(MaskRow.role == "foreground"))]
    assert len(params) == 4 and all("thin_fallback" in p and p["thin_fallback"]["patches"] >= 1 for p in params)
    assert all(0 < p["thin_fallback"]["coverage"] < 0.5 for p in params)
