"""Stages that must agree with the published reference methods (issue "Faithful where it costs mIoU").

* CLIP pre-filter (OVDiff): thing classes only, ``"a {name}"`` prompts, softmax of raw cosines,
  p >= 1/N_thing, top-10 fallback and cap, best subset prompt ``"a X and a Y"``, squashed image.
* Support masks (CutLER's MaskCut): split at the mean, corner rule, seed rule, the seed's component,
  taken patches zeroed (kept in the graph), IoU > 0.5 / area <= 1% drops.
* PAMR: sigma over the 3x3 windows INCLUDING the centre once per dilation; softmax over the 8 neighbours
  per dilation; column-chunked refinement equals the full one.

Expected values are computed by hand (comments) or by independent numpy / scipy code in this file.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from scipy.linalg import eigh
from threadpoolctl import threadpool_limits

from protodb.pipeline import masks as M
from protodb.pipeline.masks import attention_fg_bg, maskcut_partition, ncut_segments
from protodb.segment.pamr import affinities, pamr
from protodb.segment.prefilter import ClipPrefilter, choose_classes, class_prompt, subset_prompt


def unit(*v) -> torch.Tensor:
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm()


def at_cos(c: float) -> torch.Tensor:
    """A unit vector in R^3 whose cosine with e0 is c."""
    return torch.tensor([c, math.sqrt(max(0.0, 1 - c * c)), 0.0], dtype=torch.float64)


class SubsetLookup:
    """subset_embs for choose_classes: records the subsets asked for; ``winner`` gets the image's own
    direction (cosine 1), every other subset an orthogonal one (cosine 0)."""

    def __init__(self, image: torch.Tensor, winner: tuple[int, ...]):
        self.image, self.winner, self.asked = image, winner, None

    def __call__(self, subsets):
        self.asked = list(subsets)
        other = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        return torch.stack([self.image if s == self.winner else other for s in subsets])


E0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)

# ------------------------------------------------------------------------------------------ pre-filter


def test_prompts():
    assert class_prompt("cat") == "a cat"
    assert subset_prompt(["cat"]) == "a cat"
    assert subset_prompt(["cat", "dog"]) == "a cat and a dog"
    assert subset_prompt(["cat", "dog", "bird"]) == "a cat and a dog and a bird"


def test_choose_classes_raw_cosines_things_only_and_best_subset():
    # vocabulary: cat, sky (stuff), dog, bird, grass (stuff), car; image direction e0
    stuff = [False, True, False, False, True, False]
    cos = [1.0, 0.7071, 0.1, -1.0]  # cat, dog, bird, car
    things = torch.stack([at_cos(c) for c in cos])
    # softmax of the raw cosines: exp = 2.71828, 2.02811, 1.10517, 0.36788 (sum 6.21944)
    # -> p = 0.43706, 0.32609, 0.17770, 0.05915; 1/N_thing = 0.25: cat and dog survive.
    # (1/N over all 6 classes, 0.1667, would keep bird too; CLIP's logit scale 100 would keep cat only.)
    e = np.exp(cos)
    assert np.allclose(e / e.sum(), [0.43706, 0.32609, 0.17770, 0.05915], atol=1e-5)
    look = SubsetLookup(E0, winner=(0, 2))
    assert choose_classes(E0, things, stuff, look) == [0, 1, 2, 4]  # {cat, dog} + both stuff classes
    assert look.asked == [(0,), (2,), (0, 2)]  # vocabulary indices, every non-empty subset, sizes ascending
    look = SubsetLookup(E0, winner=(2,))
    assert choose_classes(E0, things, stuff, look) == [1, 2, 4]
    # embeddings need not be normalised; only cosines count
    assert choose_classes(3 * E0, 2 * things, stuff, SubsetLookup(E0, winner=(2,))) == [1, 2, 4]


def test_choose_classes_ties_go_to_the_smaller_then_earlier_subset():
    things = torch.stack([at_cos(0.9), at_cos(0.9)])  # p = 0.5 each, both survive
    same = lambda subsets: torch.stack([E0 for _ in subsets])  # noqa: E731  every subset cosine 1
    assert choose_classes(E0, things, [False, False], same) == [0]


def test_choose_classes_none_survive_takes_the_ten_most_probable():
    # 12 things at cosines k/12, k = 0..11; with a threshold above every probability none survives,
    # so the 10 most probable (k = 2..11) are the pool: 2^10 - 1 subsets.
    things = torch.stack([at_cos(k / 12) for k in range(12)])
    look = SubsetLookup(E0, winner=(3, 7))
    assert choose_classes(E0, things, [False] * 12, look, threshold=1.0) == [3, 7]
    assert len(look.asked) == 1023 and set().union(*look.asked) == set(range(2, 12))
    assert look.asked[:10] == [(k,) for k in range(2, 12)]


def test_choose_classes_more_than_ten_survivors_keeps_the_ten_most_probable():
    # 14 things: 12 at cosines 0.90, 0.89, ..., 0.79 and 2 at -1 (vocabulary positions 0 and 13)
    cos = [-1.0] + [0.90 - 0.01 * k for k in range(12)] + [-1.0]
    e = np.exp(cos)
    p = e / e.sum()
    assert (p >= 1 / 14).sum() == 12 and p[1:13].min() >= 1 / 14  # premise: 12 survivors, computed here
    things = torch.stack([at_cos(c) for c in cos])
    stuff = [False] * 14 + [True]  # one stuff class at the end: not classified, not counted in N_thing
    look = SubsetLookup(E0, winner=(1, 10))
    assert choose_classes(E0, things, stuff, look) == [1, 10, 14]
    assert set().union(*look.asked) == set(range(1, 11))  # the 10 highest cosines: positions 1..10
    # all cosines equal: p = 1/N_thing exactly, all 12 survive, ties keep vocabulary order -> first 10
    look = SubsetLookup(E0, winner=(0,))
    assert choose_classes(E0, torch.stack([at_cos(0.5)] * 12), [False] * 12, look) == [0]
    assert set().union(*look.asked) == set(range(10))


def test_more_than_ten_survivors_join_their_prompts_in_probability_order():
    # 12 survivors whose cosines RISE with the vocabulary position (0.79 at 0 ... 0.90 at 11), 2 far away:
    # the 10 most probable are positions 11, 10, ..., 2, and every subset lists them in that order
    cos = [0.79 + 0.01 * k for k in range(12)] + [-1.0, -1.0]
    things = torch.stack([at_cos(c) for c in cos])
    look = SubsetLookup(E0, winner=(9, 4))
    assert choose_classes(E0, things, [False] * 14, look) == [4, 9]  # the result is sorted as before
    order = list(range(11, 1, -1))
    assert look.asked[:10] == [(k,) for k in order]
    assert look.asked[10:12] == [(11, 10), (11, 9)] and look.asked[-1] == tuple(order)
    assert subset_prompt([f"c{k}" for k in look.asked[10]]) == "a c11 and a c10"
    # ten or fewer survivors keep vocabulary order (the existing rule)
    look = SubsetLookup(E0, winner=(0,))
    choose_classes(E0, torch.stack([at_cos(c) for c in [0.5, 0.9, -1.0]]), [False] * 3, look)
    assert look.asked == [(0,), (1,), (0, 1)]


def test_choose_classes_stuff_only_and_bad_inputs():
    never = lambda subsets: pytest.fail("no subset search without thing classes")  # noqa: E731
    assert choose_classes(E0, torch.zeros(0, 3), [True, True], never) == [0, 1]
    from protodb.errors import InvalidInput

    with pytest.raises(InvalidInput):
        choose_classes(E0, torch.zeros(2, 3), [False, True, False, False], never)
    with pytest.raises(InvalidInput):
        choose_classes(E0, at_cos(1.0)[None], [False], never, max_keep=0)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from protodb.models.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip-fidelity"))


def _three_bands(h=40, w=120) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 3, 0] = 255  # red left third
    arr[:, w // 3: 2 * w // 3, 1] = 255  # green middle
    arr[:, 2 * w // 3:, 2] = 255  # blue right third
    return Image.fromarray(arr)


def test_clip_prefilter_squashes_the_whole_image(tiny_clip):
    pre = ClipPrefilter(tiny_clip)
    image = _three_bands()
    pv = pre.pixel_values(image)
    assert pv.shape == (1, 3, 32, 32) and pv.dtype == torch.float32
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    red, blue = (np.array([1, 0, 0]) - mean) / std, (np.array([0, 0, 1]) - mean) / std
    # the left and right columns of the 32x32 input still show the red and blue thirds (a resize of the
    # short side to 32 and a centre crop would keep only the green middle)
    assert np.allclose(pv[0, :, :, 0].numpy(), red[:, None], atol=1e-5)
    assert np.allclose(pv[0, :, :, -1].numpy(), blue[:, None], atol=1e-5)
    expected = (np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC), np.float64) / 255 - mean) / std
    assert np.allclose(pv[0].numpy().transpose(1, 2, 0), expected, atol=1e-5)
    with torch.no_grad():
        out = pre.model.get_image_features(pixel_values=torch.from_numpy(expected.transpose(2, 0, 1)[None]).float())
        cropped = pre.processor(images=image, return_tensors="pt")["pixel_values"]
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert torch.allclose(pre.image_embedding(image), F.normalize(out[0], dim=0), atol=1e-5)
    assert not torch.allclose(cropped, pv, atol=0.1)  # the processor's own path centre-crops


def test_clip_prefilter_select_follows_the_rule_on_real_embeddings(tiny_clip):
    pre = ClipPrefilter(tiny_clip)
    names = ["cat", "sky", "dog", "bird", "car", "grass", "boat"]
    stuff = [False, True, False, False, False, True, False]
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    calls = []
    embed = pre.text_embeddings

    def recording(prompts):
        out = embed(prompts)
        calls.append((list(prompts), out.double().numpy()))
        return out

    pre.text_embeddings = recording
    chosen = pre.select(image, names, stuff)
    assert calls[0][0] == ["a cat", "a dog", "a bird", "a car", "a boat"]  # things only, "a {name}"
    img = pre.image_embedding(image).double().numpy()
    sims = calls[0][1] @ img
    p = np.exp(sims) / np.exp(sims).sum()  # raw cosines, no logit scale
    things = [0, 2, 3, 4, 6]
    pool = [things[k] for k in range(5) if p[k] >= 1 / 5]
    subsets = [c for r in range(1, len(pool) + 1) for c in combinations(pool, r)]
    assert calls[1][0] == [" and ".join(f"a {names[i]}" for i in s) for s in subsets]
    best = subsets[int(np.argmax(calls[1][1] @ img))]
    assert chosen == sorted(set(best) | {1, 5})


# ------------------------------------------------------------------------------------------ MaskCut


def test_maskcut_partition_corner_rule_comes_before_the_seed_rule():
    x = np.array([[5, 1, 1, 4],
                  [1, -1, -2, 1],
                  [1, -1, -1, 1],
                  [4, 1, 1, 4]], dtype=np.float64)
    # mean = 20 / 16 = 1.25: x > mean is the 4 corners, which also hold the seed argmax|x| = (0, 0);
    # the corner rule reverses anyway: the object is the 12 other patches (seed argmin x = (1, 2))
    mask, why = maskcut_partition(x.ravel(), (4, 4))
    corners = np.zeros((4, 4), bool)
    corners[[0, 0, 3, 3], [0, 3, 0, 3]] = True
    assert why == "corners" and np.array_equal(mask, ~corners)
    # the opposite sign: x > mean is now the 12 patches (no corner), the seed (0, 0) is not in it, so
    # the seed rule reverses to the corners, and the seed's component is (0, 0) alone
    mask, why = maskcut_partition(-x.ravel(), (4, 4))
    alone = np.zeros((4, 4), bool)
    alone[0, 0] = True
    assert why == "seed" and np.array_equal(mask, alone)
    # hence the fixed sign (seed entry positive): both signs give the corner-rule result
    for v in (x, -x):
        mask, why = maskcut_partition(M._orient(v.ravel()), (4, 4))
        assert why == "corners" and np.array_equal(mask, ~corners)


def test_maskcut_partition_seed_rule():
    x = np.array([[1, 1, 0, 0],
                  [1, 1, 0, 0],
                  [1, 1, 0, -3],
                  [1, 1, 0, 0]], dtype=np.float64)
    # mean = 5 / 16: x > mean = left two columns (2 corners); seed argmax|x| = (2, 3) is not in it
    mask, why = maskcut_partition(x.ravel(), (4, 4))
    right = np.zeros((4, 4), bool)
    right[:, 2:] = True
    assert why == "seed" and np.array_equal(mask, right)


def test_maskcut_partition_keeps_the_seed_component_not_the_largest():
    x = -np.ones((5, 5))
    x[3:5, 0:3] = 1.0  # 6 patches, one corner
    x[1, 3] = 3.0  # the seed, alone
    # mean = (6 + 3 - 18) / 25 = -0.36: x > mean = both blobs (1 corner); seed (1, 3) is in it
    mask, why = maskcut_partition(x.ravel(), (5, 5))
    assert why is None and mask.sum() == 1 and mask[1, 3]


def clustered(labels: np.ndarray, d: int = 64, noise: float = 0.03, seed: int = 0) -> np.ndarray:
    """(h, w) int labels -> (h, w, d) unit features: e_label + noise (same label: cosine ~1 > tau;
    different labels: ~0 < tau)."""
    rng = np.random.default_rng(seed)
    f = np.eye(d)[labels] + noise * rng.standard_normal(labels.shape + (d,))
    return (f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float32)


def trace_cuts(feats: np.ndarray, n: int, **kw):
    g = M._as_feature_grid(feats)
    h, w, _ = g.shape
    flat = g.reshape(h * w, -1)
    adj = (flat @ flat.T > 0.2).astype(np.float32)
    trace: list = []
    segs = M._repeated_cuts(adj, (h, w), n, 1e-5, trace=trace, **kw)
    return segs, trace


def reference_maskcut(feats, n, tau=0.2, eps=1e-5, remove=False, trace=None):
    """MaskCut written out from its description, independently of protodb's solver: each round the taken
    patches' features are set to 0 (or, ``remove``, the patches are left out of the graph: the old rule),
    W = [F F^T > tau] with eps for False, scipy's GENERALISED eigh of (D - W, D); the sign with the seed
    entry positive (protodb's documented convention); split at the mean; corner rule; seed rule; the
    seed's 4-component; IoU > 0.5 / area <= 1% drops after round 0; outputs minus the taken patches."""
    with threadpool_limits(1):  # small eighs: multi-threaded BLAS only spins on shared cores
        return _reference_maskcut(feats, n, tau, eps, remove, trace)


def _reference_maskcut(feats, n, tau, eps, remove, trace):
    h, w, d = feats.shape
    N = h * w
    f = feats.reshape(N, d).astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    painting, prev, outs = np.zeros(N, bool), np.zeros(N, bool), []
    for r in range(n):
        nodes = np.flatnonzero(~painting) if remove else np.arange(N)
        fz = f * (~painting)[:, None]
        a = (fz[nodes] @ fz[nodes].T > tau).astype(np.float64)
        a[a == 0] = eps
        dm = np.diag(a.sum(1))
        xs = eigh(dm - a, dm, subset_by_index=[1, 1])[1][:, 0]
        if xs[np.argmax(np.abs(xs))] < 0:
            xs = -xs
        bip = np.zeros(N, bool)
        bip[nodes] = xs > xs.mean()
        corners = int(bip[0]) + int(bip[w - 1]) + int(bip[N - w]) + int(bip[N - 1])
        if corners >= 3 or not bip[nodes[np.argmax(np.abs(xs))]]:
            bip[nodes] = ~bip[nodes]
            seed = nodes[np.argmin(xs)]
        else:
            seed = nodes[np.argmax(xs)]
        lab, _ = ndimage.label(bip.reshape(h, w))
        m = (lab == lab.reshape(-1)[seed]).reshape(-1)
        if trace is not None:
            trace.append(m.reshape(h, w).copy())
        if r >= 1 and ((prev & m).sum() / (prev | m).sum() > 0.5 or m.sum() / N <= 0.01):
            m = np.zeros(N, bool)
        prev = m
        outs.append((m & ~painting).reshape(h, w))
        painting |= m
    return [o for o in outs if o.any()]


def _bridge_scene():
    """12x12: background frame (44 patches, all 4 corners), object A filling the inside (84) except two
    4x2 blocks B1, B2 of a third kind (16 together), each enclosed by A."""
    lab = np.zeros((12, 12), np.int64)
    lab[1:11, 1:11] = 1
    lab[4:8, 2:4] = 2
    lab[4:8, 8:10] = 2
    return lab


def test_taken_patches_are_zeroed_not_removed_and_overlap_drops():
    lab = _bridge_scene()
    a, b, inside = lab == 1, lab == 2, lab >= 1
    segs, trace = trace_cuts(clustered(lab), 3)
    # round 0: A (the x > mean side is frame + B, holding the 4 corners: reversed)
    assert np.array_equal(trace[0]["mask"], a) and trace[0]["reversed"] == "corners"
    # round 1: B against the frame; the zeroed A patches (affinity eps to all) lie on B's side and join
    # B1 and B2 into one component: the inside, IoU with A 84/100 = 0.84 > 0.5 -> dropped
    assert np.array_equal(trace[1]["mask"], inside) and trace[1]["dropped"] == "overlap"
    # round 2: nothing was taken, same cut; the previous mask is now the empty one -> kept, minus A
    assert np.array_equal(trace[2]["mask"], inside) and trace[2]["dropped"] is None
    assert len(segs) == 2 and np.array_equal(segs[0], a) and np.array_equal(segs[1], b)
    assert len(ncut_segments(clustered(lab), 2)) == 1  # the drop is the last round: A only
    kept = ncut_segments(clustered(lab), 2, max_iou=0.9)  # 0.84 <= 0.9: kept at round 1
    assert len(kept) == 2 and np.array_equal(kept[1], b)
    # removing the taken patches (the old rule) gives a different second cut: B1 or B2 alone
    ref_zero, ref_removed = [], []
    assert [s.sum() for s in reference_maskcut(clustered(lab), 3, trace=ref_zero)] == [84, 16]
    reference_maskcut(clustered(lab), 3, remove=True, trace=ref_removed)
    assert np.array_equal(ref_zero[1], inside) and ref_removed[1].sum() == 8 and (ref_removed[1] <= b).all()


def test_small_extra_masks_are_dropped():
    for k, expect in ((1, [30]), (2, [30, 2])):  # 10x10 grid: 1 patch is 1% (dropped), 2 patches 2%
        lab = np.zeros((10, 10), np.int64)
        lab[1:6, 1:7] = 1
        lab[8, 8:8 + k] = 2
        segs, trace = trace_cuts(clustered(lab), 3)
        assert [s.sum() for s in segs] == expect
        assert trace[1]["mask"].sum() == k and trace[1]["dropped"] == (None if k == 2 else "area")
    lab = np.zeros((20, 20), np.int64)
    lab[2:8, 2:8] = 1  # 36 patches: the second cut (the first is the 70-patch object 2)
    lab[11:18, 9:19] = 2
    assert [s.sum() for s in ncut_segments(clustered(lab), 3)] == [70, 36]
    assert [s.sum() for s in ncut_segments(clustered(lab), 3, min_area=36 / 400)] == [70]  # <= min_area
    assert [s.sum() for s in ncut_segments(clustered(lab), 3, min_area=35.9 / 400)] == [70, 36]


@pytest.mark.parametrize("size, trials", [(12, 12), (24, 3)])  # 576 patches: the Lanczos path
def test_ncut_segments_match_an_independent_maskcut(size, trials):
    rng = np.random.default_rng(size)
    done = 0
    while done < trials:
        lab = np.zeros((size, size), np.int64)
        for k in (1, 2, 3):
            y0, x0 = rng.integers(0, size - 2, 2)
            hh, ww = rng.integers(2, size // 2, 2)
            lab[y0:y0 + hh, x0:x0 + ww] = k
        sizes = np.bincount(lab.ravel(), minlength=4)
        if sizes.min() == 0 or len(set(sizes.tolist())) < 4:
            continue  # equal-size regions give tied eigenvalues: any cut among them is right
        feats = clustered(lab, seed=done)
        ours, ref = ncut_segments(feats, 3), reference_maskcut(feats, 3)
        assert len(ours) == len(ref) and all(np.array_equal(a, b) for a, b in zip(ours, ref)), (done, sizes)
        done += 1


def test_mask_params_record_the_maskcut_rules():
    lab = _bridge_scene()
    att = np.where(lab == 1, 0.9, 0.05).astype(np.float32)
    res = attention_fg_bg(clustered(lab), att, erode=0)
    assert res.params["ncut_rules"] == "maskcut"
    assert res.params["ncut_max_iou"] == 0.5 and res.params["ncut_min_area"] == 0.01
    assert res.method == "ncut+attention" and np.array_equal(res.fg, lab == 1)


# ------------------------------------------------------------------------------------------ PAMR


def numpy_pamr_once(img: np.ndarray, m: np.ndarray, dilations, sharpness=10.0, eps=1e-7,
                    centre_in_std=True) -> np.ndarray:
    """One PAMR step written pixel by pixel: img (3, H, W), m (C, H, W) float64, replicate borders."""
    _, H, W = img.shape
    pad = max(dilations)
    pi = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    pm = np.pad(m, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    out = np.zeros_like(m)
    for y in range(H):
        for x in range(W):
            window, neigh, masks = [], [], []
            for d in dilations:
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v = pi[:, pad + y + dy * d, pad + x + dx * d]
                        if centre_in_std or dy or dx:
                            window.append(v)
                        if dy or dx:
                            neigh.append(v)
                            masks.append(pm[:, pad + y + dy * d, pad + x + dx * d])
            sigma = np.std(np.array(window), axis=0, ddof=1)  # (3,), unbiased like torch.std
            kappa = np.array([-(np.abs(img[:, y, x] - v) / (sigma + eps)).mean() * sharpness for v in neigh])
            alpha = np.exp(kappa - kappa.max())
            alpha /= alpha.sum()
            out[:, y, x] = (alpha[:, None] * np.array(masks)).sum(0)
    return out


@pytest.mark.parametrize("size, dilations", [(4, (1,)), (5, (1, 2))])
def test_pamr_one_step_matches_a_hand_computation(size, dilations):
    rng = np.random.default_rng(size)
    img = rng.uniform(0, 1, (3, size, size))
    m = rng.uniform(0, 1, (2, size, size))
    want = numpy_pamr_once(img, m, dilations)
    got = pamr(torch.from_numpy(img)[None].float(), torch.from_numpy(m)[None].float(), iterations=1,
               dilations=dilations)[0].double().numpy()
    assert np.allclose(got, want, atol=1e-6, rtol=0)
    # the window without the centre (the old sigma) gives a different step: the test can tell them apart
    assert np.abs(numpy_pamr_once(img, m, dilations, centre_in_std=False) - want).max() > 1e-3
    alpha = affinities(torch.from_numpy(img)[None].float(), dilations)
    assert alpha.shape == (1, 8 * len(dilations), size, size)
    assert torch.allclose(alpha.sum(1), torch.ones(1, size, size), atol=1e-6)


def test_pamr_sigma_counts_the_centre_once_per_dilation():
    from protodb.segment.pamr import local_std

    img = np.zeros((3, 5, 5))
    img[:, 2, 2] = 1.0  # one bright pixel; at the centre with dilations (1, 2): 18 values, two are 1
    sigma = local_std(torch.from_numpy(img)[None].float(), (1, 2))[0, 0, 2, 2].item()
    values = np.zeros(18)
    values[[4, 13]] = 1.0
    assert sigma == pytest.approx(values.std(ddof=1), abs=1e-6)  # sqrt((2 - 18 * (1/9)^2) / 17)
    assert sigma == pytest.approx(math.sqrt((2 - 2 / 9) / 17), abs=1e-6)


def _fake_grid_scores(maps: torch.Tensor):
    def window_grid_scores(image, extract, table, spec=None, *, keep_patches=False):
        return maps.clone(), []
    return window_grid_scores


def _table(cols: int):
    from protodb.segment.match import ClassPrototypes, build_match_table

    eye = torch.eye(8)
    return build_match_table([ClassPrototypes(f"c{i}", False, fg=eye[i:i + 1], bg=torch.zeros(0, 8))
                              for i in range(cols)], background=False)


def test_chunked_pamr_refines_every_column(monkeypatch):
    import protodb.segment.label as match
    import protodb.segment.label as windows  # segment_image's own reference to window_grid_scores

    H = W = 16
    a = torch.zeros(H, W)
    a[:, :8] = 1.0
    maps = torch.stack([a, torch.full((H, W), 0.9), 1 - a])  # column 1 never wins before refinement
    assert 1 not in maps.argmax(0).unique().tolist()
    grey = torch.full((3, H, W), 0.5)  # uniform image: alpha = 1/48 for every neighbour
    monkeypatch.setattr(windows, "window_grid_scores", _fake_grid_scores(maps))
    full = match.segment_image(grey, [(None, _table(3))], pamr=True)
    monkeypatch.setattr(match, "FULL_SCORES_MAX", H * W)  # one column per chunk
    chunked = match.segment_image(grey, [(None, _table(3))], pamr=True)
    assert full.scores is not None and chunked.scores is None  # the two paths ran
    assert np.array_equal(full.labels, chunked.labels) and torch.allclose(full.best, chunked.best, atol=1e-6)
    # column 1 stays 0.9 (an average of a constant); columns 0 and 2 sum to 1 everywhere, so at the middle
    # columns both are about 0.5 after 10 averaging steps: column 1 wins there
    assert (chunked.labels[:, 7:9] == 1).all()


def test_chunked_pamr_equals_full_on_an_image_with_edges(monkeypatch):
    import protodb.segment.label as match
    import protodb.segment.label as windows  # segment_image's own reference to window_grid_scores

    gen = torch.Generator().manual_seed(3)
    H, W = 24, 20
    img = torch.zeros(3, H, W)
    img[0, :, :9] = 0.8
    img[2, :, 9:] = 0.7
    img += 0.05 * torch.rand(img.shape, generator=gen)
    maps = torch.rand(5, H, W, generator=gen)
    monkeypatch.setattr(windows, "window_grid_scores", _fake_grid_scores(maps))
    full = match.segment_image(img, [(None, _table(5))], pamr=True)
    refined = pamr(img[None], maps[None])[0]
    assert torch.allclose(full.scores, refined, atol=1e-6)
    monkeypatch.setattr(match, "FULL_SCORES_MAX", 2 * H * W)  # chunks of 2, 2 and 1 columns
    chunked = match.segment_image(img, [(None, _table(5))], pamr=True)
    assert chunked.scores is None
    assert np.array_equal(chunked.labels, refined.argmax(0).numpy())
    assert torch.allclose(chunked.best, refined.max(0).values, atol=1e-6)


# ------------------------------------------------------------------------------------------ shared masks, preset
def test_one_mask_per_support_image_shared_by_two_extractors(tmp_path):
    """Two extractors of one class: the masks are made once on the mask extractor's grid, stored once
    (its extractor id), and both sets record that extractor as their mask source."""
    import json

    from sqlalchemy import select

    import protodb
    from protodb.catalog.schema import MaskRow, SupportImageRow
    from tests.conftest import cli

    home = tmp_path / "db"
    out = json.loads(cli("add-class", "kite", "--preset", "tiny", "--images", "2", "-k", "2",
                         "--extractor", "tiny-vit", "--extractor", "focus-vits14", "--db", home, "--json").stdout)
    assert [s["extractor"] for s in out["sets"]] == ["tiny-vit", "focus-vits14"]
    db = protodb.open(home)
    tiny, focus = (db.sets.get(s["id"]) for s in out["sets"])
    assert tiny.config["masks"]["source"] == focus.config["masks"]["source"] == "tiny-vit"
    assert tiny.config["masks"]["source_id"] == focus.config["masks"]["source_id"] == tiny.extractor_id
    with db.session() as s:
        masks = s.scalars(select(MaskRow)).all()
        images = s.scalars(select(SupportImageRow)).all()
    assert len(masks) == 2 * len(images) == 4  # fg + bg per image, once, not once per extractor
    assert {m.extractor_id for m in masks} == {tiny.extractor_id}
    assert focus.counts["class"] == 1 and tiny.counts["class"] == 1
    prov = db.inspect("kite", extractor="focus-vits14").provenance
    assert prov["mask_extractor_id"] == tiny.extractor_id and prov["masks"]  # the shared masks are found
    again = json.loads(cli("add-class", "kite", "--preset", "tiny", "--images", "2", "-k", "2", "--extractor",
                           "tiny-vit", "--extractor", "focus-vits14", "--mask-extractor", "focus-vits14",
                           "--db", home, "--json").stdout)
    assert all(not s["reused"] for s in again["sets"])  # another mask source is another configuration


def test_the_paper_preset_names_what_the_paper_used():
    from protodb.models.registry import PRESETS
    from protodb.pipeline.config import parts_for

    p = PRESETS["paper"]
    assert (p.generator, p.extractors, p.images, parts_for(p.images)) == \
        ("sd15", ("sd15", "dino-vitb8", "clip-vitb16"), 64, 32)
    assert p.clip_model == "openai/clip-vit-base-patch16" and p.mask_extractor == "dino-vitb8"
    from protodb.models.extractors import builtin_specs
    from protodb.models.generators import builtin_generators

    sd = builtin_generators()["sd15"]
    assert (sd.steps, sd.guidance, sd.width) == (30, 8.0, 512)
    specs = builtin_specs()
    assert specs["dino-vitb8"].config["facet"] == "key" and specs["clip-vitb16"].config["facet"] == "key"
    assert specs["clip-vitb16"].config["layer"] == -2 and specs["clip-vitb16"].config["model"] == p.clip_model


def test_the_paper_preset_loads_through_the_hub_code_and_fails_offline_with_one_line(tmp_path, monkeypatch):
    from tests.conftest import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    res = cli("add-class", "boat", "--preset", "paper", "--db", tmp_path / "db", ok=False)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in lines[0] and "--generator PATH" in lines[0]
    assert cli("ls", "--db", tmp_path / "db", "--json").stdout.strip() == "[]"
