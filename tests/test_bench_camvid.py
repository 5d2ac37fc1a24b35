"""The leave-one-drive-out folds of benchmarks/bench_camvid.py, built from file names alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_camvid", ROOT / "benchmarks" / "bench_camvid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folds_score_every_photo_once_and_never_with_its_own_drive(bench):
    names = ([f"0001TP_{i:06d}.png" for i in range(0, 63, 3)] + [f"0006R0_f{i:05d}.png" for i in range(34)]
             + [f"0016E5_{i:05d}.png" for i in range(68)] + ["Seq05VD_f00030.png"])
    folds = bench.lodo_folds(names)
    assert [d for d, _, _ in folds] == ["0001TP", "0006R0", "0016E5", "Seq05VD"]
    assert [len(scored) for _, _, scored in folds] == [21, 34, 68, 1]
    scored_all = [n for _, _, scored in folds for n in scored]
    assert sorted(scored_all) == sorted(names)  # every photo scored exactly once over the folds
    for drive, support, scored in folds:
        assert not set(support) & set(scored)
        assert {bench.drive_of(n) for n in scored} == {drive}
        assert drive not in {bench.drive_of(n) for n in support}
        assert sorted(support + scored) == sorted(names)
    assert bench.drive_of("0016E5_07959.png") == "0016E5" and bench.drive_of("a/b/x_1.png") == "x"
    with pytest.raises(SystemExit, match="at least two drives"):
        bench.lodo_folds(["0016E5_1.png", "0016E5_2.png"])


def test_fold_folders_are_links_to_the_photos(bench, tmp_path):
    src = tmp_path / "camvid"
    for sub in ("train", "trainannot"):
        (src / sub).mkdir(parents=True)
        for n in ("a_1.png", "b_1.png"):
            (src / sub / n).write_bytes(f"{sub}/{n}".encode())
    bench.link_split(src, "train", ["b_1.png"], tmp_path / "fold", "scored")
    assert sorted(p.name for p in (tmp_path / "fold" / "scored").iterdir()) == ["b_1.png"]
    assert (tmp_path / "fold" / "scored" / "b_1.png").is_symlink()
    assert (tmp_path / "fold" / "scoredannot" / "b_1.png").read_bytes() == b"trainannot/b_1.png"


def test_custom_windows_score_and_featurise_support_through_the_same_plan(bench):
    import argparse

    def args(**kw):
        base = dict(short_side=448, scales="1", subpatch=1, window_sizes=None, window_stride=None, no_whole=False,
                    single_pass=False)
        return argparse.Namespace(**{**base, **kw})

    default = bench.window_spec(args())
    assert (default.sizes, default.stride, default.whole) == (None, None, True)  # the extractor's windows
    assert (default.resolved((224, 112)).sizes, default.resolved((224, 112)).stride) == ((224,), 112)
    assert (default.resolved(None).sizes, default.resolved(None).stride) == ((448, 336), 224)
    assert bench.support_windows(args()) is True  # the recorded default plan
    tiles = args(window_sizes=[224], window_stride=112)
    assert (bench.window_spec(tiles).sizes, bench.window_spec(tiles).stride) == ((224,), 112)
    assert bench.support_windows(tiles) == {"sizes": [224], "stride": 112, "whole": True}
    assert bench.support_windows(args(window_sizes=[], single_pass=True)) is False
    assert bench.support_windows(args(window_sizes=[])) == {"sizes": [], "stride": 224, "whole": True}
    with pytest.raises(Exception, match="nothing would be scored"):
        bench.window_spec(args(window_sizes=[], no_whole=True))
