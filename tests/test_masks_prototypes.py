"""Unsupervised fg/bg masks (normalised cut + attention) and class/instance/part prototypes.

Feature maps are synthetic: each region of a label map gets its own orthogonal direction plus a
little noise, so patches of one region are cosine-similar (> tau) and patches of different
regions are not.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from protodb.errors import InvalidInput
from protodb.pipeline.masks import (
    MaskResult,
    attention_fg_bg,
    downsample_mask,
    masks_from_labels,
    ncut_segments,
)
from protodb.pipeline.prototypes import KINDS, Prototype, build_prototypes, count_kinds


def clustered_features(labels: np.ndarray, d: int = 64, noise: float = 0.03, seed: int = 0) -> np.ndarray:
    """(h, w) int labels -> (h, w, d) float32 unit features: direction e_label + gaussian noise."""
    rng = np.random.default_rng(seed)
    f = np.eye(d, dtype=np.float32)[labels] + noise * rng.standard_normal(labels.shape + (d,)).astype(np.float32)
    return f / np.linalg.norm(f, axis=-1, keepdims=True)


def square_labels(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    lab = np.zeros((h, w), dtype=np.int64)
    y0, x0, y1, x1 = box
    lab[y0:y1, x0:x1] = 1
    return lab


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def upsample(grid_map: np.ndarray, factor: int) -> np.ndarray:
    """Patch-grid map -> pixel map (each patch a factor x factor block)."""
    return np.kron(grid_map, np.ones((factor, factor), dtype=grid_map.dtype))


# ---------------------------------------------------------------- ncut


@pytest.mark.parametrize(
    "size, box, seed",
    [
        (16, (4, 5, 10, 12), 0),
        (16, (8, 1, 14, 7), 1),
        (12, (0, 0, 5, 6), 2),
        (20, (10, 10, 18, 19), 3),
        (40, (5, 5, 20, 25), 4),  # 1600 patches: Lanczos solver
        (40, (20, 2, 35, 15), 5),
    ],
)
def test_ncut_finds_the_object_square(size, box, seed):
    """The smaller region is the first segment whatever the eigenvector's sign."""
    obj = square_labels(size, size, box).astype(bool)
    segs = ncut_segments(torch.from_numpy(clustered_features(obj.astype(int), seed=seed)), n_segments=3)
    assert all(s.dtype == bool and s.shape == (size, size) and s.any() for s in segs)
    assert iou(segs[0], obj) > 0.9
    # the background is one clique: the next cut separates it from the zeroed object patches, which
    # come back as the object again (IoU 1 > 0.5: dropped; repeated next round, it adds no new patch)
    assert len(segs) == 1


def test_ncut_segments_are_disjoint_and_find_two_objects():
    lab = np.zeros((20, 20), dtype=np.int64)
    lab[2:8, 2:8] = 1
    lab[11:18, 9:19] = 2
    segs = ncut_segments(clustered_features(lab, seed=1), n_segments=3)
    assert len(segs) >= 2
    total = np.sum(segs, axis=0)
    assert total.max() == 1  # disjoint
    for k in (1, 2):
        assert max(iou(s, lab == k) for s in segs) > 0.9


def test_ncut_large_grid_lanczos_path_and_timing():
    """4096 patches of D=768 (512 px image, patch 8) go through the Lanczos solver."""
    obj = square_labels(64, 64, (10, 20, 40, 50)).astype(bool)
    lab = obj.astype(np.int64)
    lab[45:60, 5:25] = 2
    feats = clustered_features(lab, d=768, noise=0.02, seed=2)
    att = upsample(np.where(obj, 0.9, 0.05).astype(np.float32), 8)
    attention_fg_bg(feats, att)  # warm-up (BLAS threads, imports)
    t0 = time.perf_counter()
    res = attention_fg_bg(feats, att)
    dt = time.perf_counter() - t0
    print(f"\n[timing] attention_fg_bg on 64x64 patches, D=768: {dt:.3f} s")
    assert res.method == "ncut+attention"
    assert iou(res.fg, obj) > 0.9
    assert not (res.fg & res.bg).any()


def test_ncut_uniform_features_give_no_segment():
    feats = np.ones((12, 12, 16), dtype=np.float32)
    assert ncut_segments(feats) == []


def test_ncut_rejects_bad_shapes():
    with pytest.raises(InvalidInput):
        ncut_segments(np.ones((12, 16), dtype=np.float32))
    with pytest.raises(InvalidInput):
        ncut_segments(np.ones((4, 4, 8), dtype=np.float32), n_segments=0)


# ---------------------------------------------------------------- attention + ncut


def _scene():
    """16x16 grid: object square (label 1) on background (label 0)."""
    obj = square_labels(16, 16, (4, 5, 10, 12)).astype(bool)
    return obj, clustered_features(obj.astype(int), seed=3)


def test_attention_fg_bg_takes_the_attended_segment():
    obj, feats = _scene()
    att_grid = np.where(obj, 0.9, 0.05).astype(np.float32)
    res = attention_fg_bg(feats, upsample(att_grid, 4), erode=0)
    assert isinstance(res, MaskResult)
    assert res.method == "ncut+attention"
    assert res.fg.shape == res.bg.shape == (16, 16)
    assert res.fg.dtype == bool and res.bg.dtype == bool
    assert iou(res.fg, obj) > 0.9
    assert iou(res.bg, ~obj) > 0.9
    assert not (res.fg & res.bg).any()

    # the same features with attention on the surroundings: roles swap
    flipped = attention_fg_bg(feats, upsample(1.0 - att_grid, 4), erode=0)
    assert flipped.method == "ncut+attention"
    assert iou(flipped.fg, ~obj) > 0.9
    assert iou(flipped.bg, obj) > 0.9


def test_background_is_restricted_to_low_attention_and_eroded():
    obj, feats = _scene()
    att_grid = np.where(obj, 0.9, 0.05).astype(np.float32)
    att_grid[12:16, 0:4] = 0.3  # background, but too attended to be trusted as background
    att = upsample(att_grid, 4)

    bg0 = attention_fg_bg(feats, att, erode=0, bg_threshold=0.2).bg
    assert not bg0[12:16, 0:4].any()
    assert bg0[0, 15] and bg0[15, 15]

    res1 = attention_fg_bg(feats, att, erode=1, bg_threshold=0.2)
    bg1 = res1.bg
    assert res1.params["erode"] == 1
    assert bg1.sum() < bg0.sum()
    assert not (bg1 & ~bg0).any()  # erosion only removes
    ring = ndimage.binary_dilation(obj) & ~obj  # patches touching the object
    assert (bg0 & ring).any() and not (bg1 & ring).any()
    assert bg1[0, 15] and bg1[15, 15]  # the image border does not erode the background
    assert not (res1.fg & bg1).any()


def test_fallback_to_attention_thresholds_when_features_are_uniform():
    feats = np.ones((8, 8, 16), dtype=np.float32)
    att_grid = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    res = attention_fg_bg(feats, upsample(att_grid, 4), fg_threshold=0.6, bg_threshold=0.3)
    assert res.method == "attention-threshold"
    np.testing.assert_array_equal(res.fg, att_grid > 0.6)
    np.testing.assert_array_equal(res.bg, att_grid < 0.3)
    assert res.fg.any() and res.bg.any()


def test_params_are_json_able_and_complete():
    import json

    obj, feats = _scene()
    res = attention_fg_bg(feats, upsample(np.where(obj, 0.9, 0.0).astype(np.float32), 4), n_segments=2, tau=0.25)
    params = json.loads(json.dumps(res.params))
    assert params["n_segments"] == 2 and params["tau"] == 0.25
    assert {"fg_threshold", "bg_threshold", "erode", "eps", "grid"} <= set(params)


def test_attention_input_is_validated():
    _, feats = _scene()
    with pytest.raises(InvalidInput):
        attention_fg_bg(feats, np.full((64, 64), 2.0, dtype=np.float32))
    with pytest.raises(InvalidInput):
        attention_fg_bg(feats, np.zeros((2, 64, 64), dtype=np.float32))
    with pytest.raises(InvalidInput):
        attention_fg_bg(feats, np.zeros((64, 64), dtype=np.float32), fg_threshold=0.1, bg_threshold=0.5)


# ---------------------------------------------------------------- label maps and downsampling


def test_masks_from_labels():
    lab = np.array([[0, 1, 2], [2, 0, 7]])
    np.testing.assert_array_equal(masks_from_labels(lab, None), lab != 0)
    np.testing.assert_array_equal(masks_from_labels(lab, 2), lab == 2)
    assert masks_from_labels(lab, 5).sum() == 0
    with pytest.raises(InvalidInput):
        masks_from_labels(np.zeros((2, 2, 3)), None)


def test_downsample_mask_uses_pixel_fraction():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:2, 0:1] = True  # patch (0, 0): 2 of 4 pixels
    mask[0:2, 2:4] = True
    mask[0, 4] = True  # patch (0, 2): 3 of 4 pixels
    mask[1, 4:6] = True
    out = downsample_mask(mask, (4, 4))
    assert out.shape == (4, 4) and out.dtype == bool
    assert out[0, 0] and out[0, 1] and out[0, 2]
    assert out.sum() == 3
    strict = downsample_mask(mask, (4, 4), min_fraction=0.75)
    assert not strict[0, 0] and strict[0, 1] and strict[0, 2]
    # non-divisible sizes: a full mask stays full, an empty one empty
    assert downsample_mask(np.ones((37, 23), bool), (5, 4)).all()
    assert not downsample_mask(np.zeros((37, 23), bool), (5, 4)).any()


# ---------------------------------------------------------------- prototypes


def _support_set():
    """Three images with different grids; image 2 has no foreground.

    Foreground patches come from 3 'part' directions, background from 2 others.
    """
    rng = np.random.default_rng(7)
    shapes = [(8, 8), (6, 10), (8, 8)]
    feats, fg, bg = [], [], []
    for i, (h, w) in enumerate(shapes):
        m = np.zeros((h, w), dtype=bool)
        if i == 0:
            m[1:5, 2:7] = True
        elif i == 1:
            m[2:6, 0:4] = True
        lab = np.where(m, rng.integers(0, 3, size=(h, w)), rng.integers(3, 5, size=(h, w)))
        feats.append(clustered_features(lab, d=16, noise=0.1, seed=10 + i))
        fg.append(m)
        bg.append(~m)
    return feats, fg, bg


def _assert_unit(protos):
    for p in protos:
        assert isinstance(p, Prototype)
        assert p.vector.dtype == np.float32 and p.vector.ndim == 1
        assert abs(float(np.linalg.norm(p.vector)) - 1.0) < 1e-5


def test_prototype_counts_order_and_norms():
    feats, fg, bg = _support_set()
    n_fg = sum(int(m.sum()) for m in fg)
    n_bg = sum(int(m.sum()) for m in bg)
    protos = build_prototypes(feats, fg, bg, k=4, seed=0)
    counts = count_kinds(protos)
    assert set(counts) == set(KINDS)
    # image 2 has no foreground patch -> no instance prototype for it
    assert counts == {
        "class": 1, "instance": 2, "part": min(4, n_fg),
        "bg_class": 1, "bg_instance": 3, "bg_part": min(4, n_bg),
    }
    kinds = [p.kind for p in protos]
    assert kinds == sorted(kinds, key=KINDS.index)  # class, instance..., part..., bg_...
    _assert_unit(protos)
    assert sum(p.weight for p in protos if p.kind == "part") == n_fg
    assert sum(p.weight for p in protos if p.kind == "bg_part") == n_bg


def test_class_and_instance_prototypes_match_hand_computed_means():
    feats, fg, bg = _support_set()
    protos = build_prototypes([torch.from_numpy(f) for f in feats], fg, bg, k=4)
    fg_all = np.concatenate([feats[i][fg[i]] for i in range(3)])
    mean = fg_all.mean(axis=0)
    cls = [p for p in protos if p.kind == "class"][0]
    np.testing.assert_allclose(cls.vector, mean / np.linalg.norm(mean), atol=1e-5)
    assert cls.image_index is None and cls.region is None and cls.weight == fg_all.shape[0]

    bg_all = np.concatenate([feats[i][bg[i]] for i in range(3)])
    bmean = bg_all.mean(axis=0)
    bcls = [p for p in protos if p.kind == "bg_class"][0]
    np.testing.assert_allclose(bcls.vector, bmean / np.linalg.norm(bmean), atol=1e-5)

    inst = [p for p in protos if p.kind == "instance"]
    assert [p.image_index for p in inst] == [0, 1]
    for p in inst:
        i = p.image_index
        ys, xs = np.nonzero(fg[i])
        assert p.region == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        m = feats[i][fg[i]].mean(axis=0)
        np.testing.assert_allclose(p.vector, m / np.linalg.norm(m), atol=1e-5)
        assert p.weight == fg[i].sum()


def test_part_regions_point_at_member_patches():
    feats, fg, bg = _support_set()
    protos = build_prototypes(feats, fg, bg, k=3)
    for prefix, masks in (("", fg), ("bg_", bg)):
        parts = [p for p in protos if p.kind == prefix + "part"]
        centroids = np.stack([p.vector for p in parts])
        for j, p in enumerate(parts):
            y0, x0, y1, x1 = p.region
            assert (y1 - y0, x1 - x0) == (1, 1)
            assert masks[p.image_index][y0, x0]
            patch = feats[p.image_index][y0, x0]
            assert int(np.argmax(centroids @ patch)) == j  # the patch belongs to this cluster
            # ... and is the member nearest the centroid
            members = np.concatenate([f[m] for f, m in zip(feats, masks)])
            members = members[np.argmax(members @ centroids.T, axis=1) == j]
            assert len(members) == p.weight
            assert float(patch @ p.vector) >= float((members @ p.vector).max()) - 1e-6
    # 3 well separated fg directions and k=3: each part is one direction
    fg_parts = np.stack([p.vector for p in protos if p.kind == "part"])
    assert sorted(int(np.argmax(v)) for v in fg_parts) == [0, 1, 2]


def test_prototypes_are_deterministic_for_a_seed():
    feats, fg, bg = _support_set()
    a = build_prototypes(feats, fg, bg, k=5, seed=3)
    b = build_prototypes(feats, fg, bg, k=5, seed=3)
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert (p.kind, p.image_index, p.region, p.weight) == (q.kind, q.image_index, q.region, q.weight)
        np.testing.assert_array_equal(p.vector, q.vector)


def test_fewer_parts_than_k_when_few_patches():
    feats, fg, bg = _support_set()
    n_fg = sum(int(m.sum()) for m in fg)
    protos = build_prototypes(feats, fg, bg, k=n_fg + 50, background=False)
    counts = count_kinds(protos)
    assert counts["part"] == n_fg
    assert counts["bg_class"] == counts["bg_instance"] == counts["bg_part"] == 0
    # every fg patch is its own part
    assert all(p.weight == 1 for p in protos if p.kind == "part")


def test_subsampled_kmeans_fit_still_assigns_every_patch():
    feats, fg, bg = _support_set()
    n_fg = sum(int(m.sum()) for m in fg)
    protos = build_prototypes(feats, fg, None, k=3, background=False, max_fit_patches=12)
    parts = [p for p in protos if p.kind == "part"]
    assert len(parts) == 3
    assert sum(p.weight for p in parts) == n_fg


def test_empty_foreground_gives_no_foreground_prototypes():
    feats, fg, bg = _support_set()
    empty = [np.zeros_like(m) for m in fg]
    counts = count_kinds(build_prototypes(feats, empty, bg, k=4))
    assert counts["class"] == counts["instance"] == counts["part"] == 0
    assert counts["bg_class"] == 1 and counts["bg_instance"] == 3


def test_prototype_input_validation():
    feats, fg, bg = _support_set()
    with pytest.raises(InvalidInput):
        build_prototypes([], [], [])
    with pytest.raises(InvalidInput):
        build_prototypes(feats, fg[:2], bg)
    with pytest.raises(InvalidInput):
        build_prototypes(feats, [m.T for m in fg], bg)
    with pytest.raises(InvalidInput):
        build_prototypes([feats[0], feats[1][..., :8], feats[2]], fg, bg)


@pytest.mark.slow
def test_kmeans_timing_at_paper_scale():
    """64 images x 1024 fg patches, D=768, K=32 (printed, loosely bounded)."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 768)).astype(np.float32)
    feats = [
        centers[rng.integers(0, 40, (32, 32))] + rng.standard_normal((32, 32, 768), dtype=np.float32)
        for _ in range(64)
    ]
    full = [np.ones((32, 32), dtype=bool)] * 64
    t0 = time.perf_counter()
    protos = build_prototypes(feats, full, None, k=32, background=False)
    dt = time.perf_counter() - t0
    print(f"\n[timing] build_prototypes 64 x 1024 patches, D=768, K=32: {dt:.2f} s")
    assert count_kinds(protos)["part"] == 32
    assert dt < 60  # generous: the 2 shared cores may be busy
