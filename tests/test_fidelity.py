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

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protodb.segment.pamr import affinities, pamr


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
    import protodb.segment.match as match
    import protodb.segment.windows as windows

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
    import protodb.segment.match as match
    import protodb.segment.windows as windows

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
