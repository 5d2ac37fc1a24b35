"""The runner-up per pixel (full and column-chunked argmax agree) and the confidence rule computed from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protodb.segment.confidence import MOSTLY, NEAR_TIE, confidence, separation


def _fake_grid_scores(maps: torch.Tensor):
    def window_grid_scores(image, extract, table, spec=None, *, keep_patches=False):
        return maps.clone(), []
    return window_grid_scores


def _table(cols: int):
    from protodb.segment.match import ClassPrototypes, build_match_table

    eye = torch.eye(8)
    return build_match_table([ClassPrototypes(f"c{i}", False, fg=eye[i:i + 1], bg=torch.zeros(0, 8))
                              for i in range(cols)], background=False)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_runner_up_full_and_chunked_agree(monkeypatch, chunk):
    import protodb.segment.label as label

    gen = torch.Generator().manual_seed(5)
    H, W, C = 12, 10, 5
    maps = torch.rand(C, H, W, generator=gen)
    maps[:, 0, 0] = 0.5  # an exact five-way tie: the winner is column 0, the runner-up scores the same
    monkeypatch.setattr(label, "window_grid_scores", _fake_grid_scores(maps))
    grey = torch.full((3, H, W), 0.5)
    full = label.segment_image(grey, [(None, _table(C))])
    top = maps.topk(2, dim=0)
    assert torch.equal(full.best, top.values[0]) and torch.equal(full.second, top.values[1])
    want_idx = torch.where(top.indices[0] == torch.from_numpy(full.labels).long(), top.indices[1], top.indices[0])
    tie_free = (top.values[1] < top.values[0]).numpy()  # at exact ties any other tied column is a right runner-up
    assert np.array_equal(full.second_labels[tie_free], want_idx.numpy()[tie_free]) and not tie_free[0, 0]
    assert torch.equal(full.scores, maps)  # the score maps are left as they were
    assert full.labels[0, 0] == 0 and full.second[0, 0] == full.best[0, 0] and full.second_labels[0, 0] != 0
    assert (full.second_labels != full.labels).all()
    monkeypatch.setattr(label, "FULL_SCORES_MAX", chunk * H * W)
    chunked = label.segment_image(grey, [(None, _table(C))])
    assert chunked.scores is None
    assert np.array_equal(chunked.labels, full.labels) and torch.allclose(chunked.best, full.best)
    assert torch.allclose(chunked.second, full.second)
    assert np.array_equal(chunked.second_labels[tie_free], full.second_labels[tie_free])


def test_one_column_has_no_runner_up(monkeypatch):
    import protodb.segment.label as label

    maps = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(label, "window_grid_scores", _fake_grid_scores(maps))
    res = label.segment_image(torch.full((3, 6, 6), 0.5), [(None, _table(1))])
    assert res.second is None and res.second_labels is None
    monkeypatch.setattr(label, "FULL_SCORES_MAX", 1)
    res = label.segment_image(torch.full((3, 6, 6), 0.5), [(None, _table(1))])
    assert res.second is None and res.second_labels is None


def test_separation_is_the_share_of_the_runner_ups_distance():
    s = separation(np.array([0.9, 0.5, 1.0, 0.8, 1.0]), np.array([0.8, 0.5, 0.0, 0.79, 1.0]))
    # d1/d2: 0.1/0.2, 0.5/0.5, 0/1, 0.2/0.21, 0/0 (both perfect: a tie)
    assert s == pytest.approx([0.5, 0.0, 1.0, 1 - 0.2 / 0.21, 0.0], abs=1e-6)


def _result(labels, best, second, runner, kept=("a", "b")):
    return {"labels": np.array(labels), "scores": np.array(best, np.float32), "runner_up": np.array(second, np.float32),
            "runner_up_labels": np.array(runner), "kept": list(kept)}  # confidence's keyword arguments


def test_clear_result_has_no_warnings():
    # class a (0) on the left at 0.9 against b's 0.5: separation 0.8; b (1) on the right likewise
    res = _result([[0, 0, 1, 1]], [[0.9, 0.9, 0.9, 0.9]], [[0.5, 0.5, 0.5, 0.5]], [[1, 1, 0, 0]])
    conf = confidence(**res, names=["a", "b"], background=False)
    assert conf["verdict"] == "clear" and conf["warnings"] == [] and conf["columns"] == 2
    assert conf["classes"]["a"] == {"fraction": 0.5, "margin": 0.4, "separation": 0.8, "near_tie": 0.0,
                                    "runner_up": "b", "runner_up_share": 1.0, "uncertain": False}
    assert conf["separation"] == 0.8 and conf["near_tie"] == 0.0 and conf["score"] == pytest.approx(0.9)
    assert conf["rule"] == {"near_tie": NEAR_TIE, "mostly": MOSTLY}


def test_a_road_labelled_rocket_at_093_is_flagged():
    """High cosines that barely beat the runner-up (0.93 vs 0.925: the winner 7% nearer) are near ties."""
    labels = [[0, 0, 0, 2]]  # rocket on most pixels, one background pixel (vocabulary rocket, car + background)
    best = [[0.93, 0.93, 0.93, 0.95]]
    second = [[0.925, 0.925, 0.925, 0.5]]
    runner = [[2, 2, 2, 0]]
    conf = confidence(**_result(labels, best, second, runner), names=["rocket", "car"], background=True)
    rocket = conf["classes"]["rocket"]
    assert rocket["uncertain"] and rocket["runner_up"] == "background" and rocket["near_tie"] == 1.0
    assert rocket["separation"] == pytest.approx(1 - 0.07 / 0.075, abs=1e-4)
    assert not conf["classes"]["background"]["uncertain"]
    assert [(w["code"], w["level"]) for w in conf["warnings"]] == [("near_ties", "warning"), ("uncertain", "note")]
    assert conf["verdict"] == "doubtful" and "75%" in conf["warnings"][0]["message"]
    assert "rocket (75% of the image, mostly just ahead of background)" in conf["warnings"][1]["message"]
    assert conf["columns"] == 3  # two classes and the background competed


def test_an_uncertain_class_on_a_clear_image_is_a_note():
    # a (0) wins 3 of 4 pixels clearly; b (1) wins one pixel as a near tie (0.5 vs 0.49)
    res = _result([[0, 0, 0, 1]], [[0.9, 0.9, 0.9, 0.5]], [[0.2, 0.2, 0.2, 0.49]], [[1, 1, 1, 0]])
    conf = confidence(**res, names=["a", "b"], background=False)
    assert conf["verdict"] == "mixed" and [w["level"] for w in conf["warnings"]] == ["note"]
    assert conf["classes"]["b"]["uncertain"] and not conf["classes"]["a"]["uncertain"]
    assert "b (25% of the image, mostly just ahead of a)" in conf["warnings"][0]["message"]


def test_one_column_and_no_match_warnings():
    conf = confidence(np.zeros((2, 2), int), np.full((2, 2), -0.2, np.float32), runner_up=None, runner_up_labels=None,
                      kept=["a"], names=["a"], background=False)
    assert [w["code"] for w in conf["warnings"]] == ["one_column", "no_match"]
    assert conf["separation"] is None and conf["classes"] == {} and "every pixel is a" in conf["warnings"][0]["message"]


@pytest.mark.parametrize("vocabulary", [6, 5000])  # 5000 columns: runner-up counts per class, not a pair table
def test_per_class_numbers_equal_the_direct_ones(vocabulary):
    rng = np.random.default_rng(2)
    H, W = 60, 80
    labels = rng.integers(0, 5, (H, W))
    runner = (labels + rng.integers(1, 3, (H, W))) % 6
    best = rng.random((H, W)).astype(np.float32)
    second = best - (rng.random((H, W)) * 0.3).astype(np.float32)
    names = [f"c{i}" for i in range(vocabulary)]
    res = {"labels": labels, "scores": best, "runner_up": second, "runner_up_labels": runner, "kept": names}
    conf = confidence(**res, names=names, background=False)
    sep = separation(best, second)

    def near_median(got, values):  # between the two middle values, to the histogram's 1/10000
        v = np.sort(values.ravel())
        return v[(len(v) - 1) // 2] - 1.5e-4 <= got <= v[len(v) // 2] + 1.5e-4

    assert near_median(conf["separation"], sep)
    for c in range(5):
        mine = labels == c
        got = conf["classes"][f"c{c}"]
        assert got["fraction"] == pytest.approx(mine.mean(), abs=1e-4)
        assert got["margin"] == pytest.approx((best - second)[mine].mean(), abs=1e-4)
        assert near_median(got["separation"], sep[mine])
        assert got["near_tie"] == pytest.approx((sep[mine] < NEAR_TIE).mean(), abs=1e-4)
        counts = np.bincount(runner[mine], minlength=6)
        assert got["runner_up"] == f"c{counts.argmax()}" and got["runner_up_share"] == pytest.approx(counts.max() / mine.sum(), abs=1e-4)
