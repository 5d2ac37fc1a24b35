"""Few-shot exemplars in clutter (issue 20): thin or tiny exemplar masks never give a set without foreground
prototypes; the matching options for clutter (a background margin, kNN voting) do what they say."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import select

from protodb.catalog.schema import MaskRow
from protodb.errors import InvalidInput
from protodb.features.windows import WindowSpec
from protodb.segment.label import segment_image
from protodb.segment.match import ClassPrototypes, build_match_table, score_patches
from protodb.segment.options import SegmentOptions, SegmentSettings, check_options
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


# ------------------------------------------------------------------- clutter methods: margin and voting
def _unit(*v) -> torch.Tensor:
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


def _at(angle: float) -> torch.Tensor:
    return torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float32)


def test_knn_vote_scores_a_column_by_the_mean_of_its_best_prototypes():
    # class 0: three prototypes close to the patch; the background: one closer still and two far away
    cls = ClassPrototypes("thing", False, fg=torch.stack([_at(0.3), _at(0.35), _at(0.4)]),
                          bg=torch.stack([_at(1.5), _at(0.1), _at(1.4)]))
    table = build_match_table([cls], background=True)
    patch = _at(0.0).reshape(1, 1, 2)
    single, rows = score_patches(patch, table)
    assert single[:, 0, 0].tolist() == pytest.approx([math.cos(0.3), math.cos(0.1)], abs=1e-6)
    assert int(single[:, 0, 0].argmax()) == 1  # the single best prototype: background wins
    table.vote = 3
    voted, vrows = score_patches(patch, table)
    expect_bg = (math.cos(0.1) + math.cos(1.4) + math.cos(1.5)) / 3
    expect_fg = (math.cos(0.3) + math.cos(0.35) + math.cos(0.4)) / 3
    assert voted[:, 0, 0].tolist() == pytest.approx([expect_fg, expect_bg], abs=1e-6)
    assert int(voted[:, 0, 0].argmax()) == 0  # three agreeing prototypes beat one stray one
    assert vrows[:, 0, 0].tolist() == rows[:, 0, 0].tolist()  # the winning row is still the best one's
    table.vote = 8  # more than a column holds: the mean of all of them
    assert score_patches(patch, table)[0][1, 0, 0] == pytest.approx((math.cos(0.1) + math.cos(1.4) + math.cos(1.5)) / 3)


class ColourExtractor:
    """A stand-in extractor: each 8-pixel patch's feature is its mean RGB colour."""

    patch_size = 8
    device = torch.device("cpu")

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.avg_pool2d(crops.float(), 8), dim=1).permute(0, 2, 3, 1)


def test_background_margin_moves_pixels_from_the_background_to_the_class():
    image = torch.zeros(3, 64, 96)
    image[0, :, :48] = 1.0  # left half red, right half green
    image[1, :, 48:] = 1.0
    # the class's prototype is a little off red; the background holds exact red (a cluttered union) and green
    cls = ClassPrototypes("thing", False, fg=_unit(0.9, 0.1, 0.0)[None], bg=torch.stack([_unit(1, 0, 0), _unit(0, 1, 0)]))
    table = build_match_table([cls], background=True)
    spec = WindowSpec(short_side=None, sizes=(), whole=True)
    plain = segment_image(image, [(ColourExtractor(), table)], windows=spec)
    assert (plain.labels == 1).all()  # background everywhere
    near = float(_unit(0.9, 0.1, 0.0) @ _unit(1, 0, 0))
    shifted = segment_image(image, [(ColourExtractor(), table)], windows=spec, bg_margin=1.0 - near + 0.002)
    assert (shifted.labels[:, :40] == 0).all() and (shifted.labels[:, 56:] == 1).all()  # red -> class, green stays
    assert float(shifted.best[0, 60]) == pytest.approx(1.0 - (1.0 - near + 0.002), abs=1e-5)  # scores carry it


@pytest.mark.parametrize("field,value,msg", [("vote", 0, "--vote takes 1 to 64"), ("vote", 65, "--vote takes"),
                                             ("bg_margin", float("nan"), "--bg-margin"), ("bg_margin", 3.0, "--bg-margin")])
def test_bad_margin_or_vote_is_one_clear_error(field, value, msg):
    with pytest.raises(InvalidInput, match=msg):
        check_options(SegmentOptions(vocab="v", **{field: value}))


def test_margin_and_vote_are_recorded_in_the_settings():
    assert check_options(SegmentOptions(vocab="v", bg_margin=0.05, vote=4)) == ("class", "instance", "part")
    settings = SegmentSettings(levels=("part",), background=True, prefilter=False, clip_model=None, pamr=False,
                               device="cpu", dtype="float32", stuff_threshold=0.85, windows=WindowSpec(),
                               explain=False, bg_margin=0.05, vote=4).to_dict()
    assert (settings["bg_margin"], settings["vote"]) == (0.05, 4)


# ------------------------------------------------------------------------ MaskCut's tau: a percentile rule
def _two_clusters(h=6, w=8, shared=3.0, seed=0) -> np.ndarray:
    """(h, w, 16) unit features: left and right halves two clusters sharing a strong common direction, so
    every pair of patches has a cosine far above MaskCut's 0.2 (a complete graph at that tau)."""
    rng = np.random.default_rng(seed)
    f = rng.normal(0, 0.05, (h, w, 16))
    f[..., 0] += shared
    f[:, : w // 2, 1] += 1.0
    f[:, w // 2:, 2] += 1.0
    return f / np.linalg.norm(f, axis=-1, keepdims=True)


def test_percentile_tau_cuts_where_a_fixed_tau_sees_a_complete_graph():
    from protodb.pipeline.masks import ncut_segments, parse_tau, resolve_tau

    f = _two_clusters()
    flat = f.reshape(-1, 16)
    cos = (flat @ flat.T)[np.triu_indices(48, k=1)]
    assert cos.min() > 0.2  # the premise: every pair is an edge at tau = 0.2
    assert ncut_segments(f, tau=0.2) == []  # complete graph: nothing to cut
    assert resolve_tau(flat, "p50") == pytest.approx(float(np.median(cos)), abs=1e-6)
    first = ncut_segments(f, tau="p50")[0]
    halves = (np.arange(8) < 4)[None].repeat(6, 0)
    assert (first == halves).all() or (first == ~halves).all()  # the percentile graph splits the clusters
    assert parse_tau(None) == 0.2 and parse_tau("0.3") == 0.3 and parse_tau("P80") == "p80"
    for bad in ("p0", "p100", "px", "1.5", "high"):
        with pytest.raises(InvalidInput, match="--mask-tau"):
            parse_tau(bad)


def test_mask_tau_is_recorded_in_the_build_config(db, tmp_path):
    ex, _ = _thin_exemplars(tmp_path)
    builder = db.builder(preset="tiny")
    fixed = builder.resolve(AddClassRequest("pole", images=0, exemplars=ex)).config
    pct = builder.resolve(AddClassRequest("pole", images=0, exemplars=ex, mask_tau="p80")).config
    assert fixed.masks.segmenter_params["tau"] == 0.2 and pct.masks.segmenter_params["tau"] == "p80"
    sc = [c.set_config(c.extractors[0], ["a"]).config_hash for c in (fixed, pct)]
    assert sc[0] != sc[1]  # another rule, another set
    with pytest.raises(InvalidInput, match="--mask-tau"):
        builder.resolve(AddClassRequest("pole", images=0, exemplars=ex, mask_tau="p120"))
