"""Support features: one pass, or through segment's sliding windows (each cell the mean of its windows)."""

from __future__ import annotations

import json

import numpy as np

import PIL.Image
import pytest
import torch
import torch.nn.functional as F

import protodb
from protodb.models.extractors.loading import load_extractor
from protodb.models.tiny import build_tiny_extractor
from protodb.pipeline.config import AddClassRequest
from protodb.segment.options import SegmentOptions
from protodb.features.cache import FeatureCache
from protodb.features.featurize import featurize
from protodb.errors import InvalidInput
from protodb.features.windows import SUPPORT_WINDOWS, WindowSpec, support_plan, support_window_spec
from tests.conftest import cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_extractor(build_tiny_extractor(tmp_path_factory.mktemp("tiny")))


def _photo(w: int, h: int) -> PIL.Image.Image:
    from sklearn.datasets import load_sample_image

    return PIL.Image.fromarray(load_sample_image("china.jpg")).resize((w, h), PIL.Image.BILINEAR)


def test_windowed_features_are_the_mean_over_the_windows_holding_each_cell(tiny, tmp_path):
    """64x48 photo at short side 48 (a 6x8 grid of 8-px patches); windows of 32 px at stride 16 and the
    whole image: each cell's feature is the normalised sum of the features its windows gave it."""
    from protodb.images import to_tensor

    image = _photo(64, 48)
    spec = WindowSpec(short_side=None, sizes=(32,), stride=16, whole=True)
    (got,) = featurize(tiny, [("sha", image)], short_side=48, windows=spec)
    t = to_tensor(image, (48, 64))
    acc, seen = torch.zeros(6, 8, tiny.dim), torch.zeros(6, 8)
    boxes = [(top, left, 32) for top in (0, 16) for left in (0, 16, 32)]  # the last flush with the border
    for top, left, side in boxes:
        acc[top // 8:(top + side) // 8, left // 8:(left + side) // 8] += tiny(t[None, :, top:top + side, left:left + side])[0]
        seen[top // 8:(top + side) // 8, left // 8:(left + side) // 8] += 1
    acc += tiny(t[None])[0]
    expected = F.normalize(acc, dim=-1)
    assert got.shape == (6, 8, tiny.dim) and bool((seen >= 1).all())
    assert torch.allclose(got, expected.half().float(), atol=1e-3)
    (single,) = featurize(tiny, [("sha", image)], short_side=48)
    assert torch.allclose(single, tiny(t[None])[0].half().float(), atol=1e-3)
    assert not torch.allclose(got, single, atol=1e-2)  # the windows' contexts change the features

    # an image smaller than segment's windows is one window: the same features as one pass
    (small,) = featurize(tiny, [("sha", image)], short_side=48, windows=support_window_spec(SUPPORT_WINDOWS))
    assert torch.equal(small, single)

    cache = FeatureCache(tmp_path / "cache")  # both kinds cached side by side, each read back as written
    a = featurize(tiny, [("sha", image)], short_side=48, windows=spec, cache=cache)[0]
    b = featurize(tiny, [("sha", image)], short_side=48, cache=cache)[0]
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    assert torch.equal(featurize(tiny, [("sha", image)], short_side=48, windows=spec, cache=cache)[0], a)
    assert torch.equal(featurize(tiny, [("sha", image)], short_side=48, cache=cache)[0], b)


def test_support_window_plan_is_segments_and_recorded(tmp_path):
    default = WindowSpec().resolved()  # an untiled extractor's windows
    assert SUPPORT_WINDOWS == {"sizes": list(default.sizes), "stride": default.stride, "whole": default.whole}
    spec = support_window_spec(SUPPORT_WINDOWS)
    assert (spec.sizes, spec.stride, spec.whole, spec.short_side) == (default.sizes, default.stride, True, None)
    assert support_window_spec(None) is None

    builder = protodb.open(tmp_path / "db").builder(preset="tiny")
    on = builder.resolve(AddClassRequest("boat", images=2)).config
    off = builder.resolve(AddClassRequest("boat", images=2, support_windows=False)).config
    assert on.to_dict()["support_windows"] == SUPPORT_WINDOWS
    assert "support_windows" not in off.to_dict()  # one pass: the config sets built before it had


def test_support_windows_take_a_plan_which_is_recorded_and_checked(tmp_path):
    plan = {"sizes": [224], "stride": 112, "whole": True}
    assert support_plan(plan) == plan and support_plan(True) == SUPPORT_WINDOWS
    assert support_plan(False) is None and support_plan(None) is None
    builder = protodb.open(tmp_path / "db").builder(preset="tiny")
    custom = builder.resolve(AddClassRequest("boat", images=2, support_windows=plan)).config
    default = builder.resolve(AddClassRequest("boat", images=2)).config
    assert custom.to_dict()["support_windows"] == plan
    assert custom.support_features.window_spec().sizes == (224,)
    assert custom.to_dict() != default.to_dict()  # another plan is another build (and config hash)
    for bad in ({"sizes": [], "stride": 112, "whole": False}, {"sizes": [0], "stride": 112, "whole": True},
                {"sizes": [224]}, "windows"):
        with pytest.raises(InvalidInput):
            support_plan(bad)


def test_single_pass_builds_another_set_and_records_it(tmp_path):
    home = tmp_path / "db"
    first = json.loads(cli("add-class", "boat", "--images", "2", "--preset", "tiny", "--db", home, "--json").stdout)
    again = json.loads(cli("add-class", "boat", "--images", "2", "--preset", "tiny", "--single-pass", "--db", home,
                           "--json").stdout)
    assert [s["version"] for s in first["sets"]] == [1] and [s["version"] for s in again["sets"]] == [2]
    shown = json.loads(cli("inspect", "boat@2", "--db", home, "--json").stdout)
    text = json.dumps(shown)
    assert '"support_windows": null' in text
    shown1 = json.dumps(json.loads(cli("inspect", "boat@1", "--db", home, "--json").stdout))
    assert json.dumps(SUPPORT_WINDOWS)[1:-1].replace(" ", "") in shown1.replace(" ", "")


def _noise(gen: torch.Generator) -> PIL.Image.Image:
    """A 64x48 RGB photo of uniform noise drawn from ``gen``."""
    return PIL.Image.fromarray((torch.rand(48, 64, 3, generator=gen) * 255).byte().numpy())


def _exemplar_folder(folder, gen: torch.Generator, n: int = 2):
    """``folder`` holding ``n`` noise photos (0.png, 1.png, ...) for add-class --exemplars."""
    folder.mkdir()
    for i in range(n):
        _noise(gen).save(folder / f"{i}.png")
    return folder


def test_default_windows_are_a_tiled_extractors_tiles_and_are_recorded_resolved(tmp_path):
    from protodb.features.windows import DEFAULT_SIZES, DEFAULT_STRIDE, plan_windows
    from protodb.models.extractors import ExtractorSpec
    from protodb.segment.match import ClassPrototypes, build_match_table
    from protodb.segment.windows import window_grid_scores

    spec = build_tiny_extractor(tmp_path / "t")
    plain = load_extractor(spec)
    tiled = load_extractor(ExtractorSpec("tiny-tiles", "tiny", {**spec.config, "tile": {"size": 32, "stride": 16}}))
    gen = torch.Generator().manual_seed(0)
    table = build_match_table([ClassPrototypes(f"c{i}", False, fg=torch.randn(3, 32, generator=gen),
                                               bg=torch.zeros(0, 32)) for i in range(3)], background=False)
    image = torch.rand(3, 48, 64, generator=gen)
    default = WindowSpec(short_side=48)
    assert (default.sizes, default.stride) == (None, None)
    _, kept = window_grid_scores(image, tiled, table, default, keep_patches=True)
    tiles = plan_windows(48, 64, default.resolved((32, 16)), 8)
    assert [k.window for k in kept] == tiles  # each tile one window, then the whole image
    assert {(w.height, w.width) for w in tiles} == {(32, 32), (48, 64)} and len(tiles) == 2 * 3 + 1
    _, kept_plain = window_grid_scores(image, plain, table, default, keep_patches=True)
    assert [k.window for k in kept_plain] == plan_windows(48, 64, WindowSpec(short_side=48, sizes=DEFAULT_SIZES,
                                                                             stride=DEFAULT_STRIDE), 8)
    explicit = WindowSpec(short_side=48, sizes=(40,), stride=8)  # explicit windows win over the tiles
    _, kept_explicit = window_grid_scores(image, tiled, table, explicit, keep_patches=True)
    assert {(k.window.height, k.window.width) for k in kept_explicit} == {(40, 40), (48, 64)}

    # add-class records the tiled extractor's windows as its support plan; segment records them resolved
    home = tmp_path / "db"
    db = protodb.open(home)
    ex = _exemplar_folder(tmp_path / "ex", gen)
    db.add_extractor(ExtractorSpec("tiny-tiles", "tiny", {**spec.config, "tile": {"size": 32, "stride": 16}}))
    req = AddClassRequest("boat", images=0, exemplars=ex, extractors=("tiny-tiles",), short_side=48, k=2)
    built = db.builder(preset="tiny").add_class(req)
    assert built.sets[0].set.config["support_windows"] == {"sizes": [32], "stride": 16, "whole": True}
    seg = db.segmenter(SegmentOptions(classes="boat", extractors=("tiny-tiles",), background=False,
                                      windows=WindowSpec(short_side=48)))
    recorded = seg.settings.to_dict()["windows"]
    assert (recorded["sizes"], recorded["stride"], recorded["whole"]) == ([32], 16, True)

    # a class built through other windows (as databases built before tile windows were) is scored through
    # the windows its prototypes were built with, unless windows are given
    old = db.builder(preset="tiny").add_class(req.replace(name="car", support_windows={"sizes": [40], "stride": 8,
                                                                                         "whole": True}))
    assert old.sets[0].set.config["support_windows"] == {"sizes": [40], "stride": 8, "whole": True}
    for classes, given, want in (("car", None, ([40], 8)), ("car", (32, 16), ([32], 16)), ("boat,car", None, ([32], 16))):
        w = WindowSpec(short_side=48) if given is None else WindowSpec(short_side=48, sizes=(given[0],), stride=given[1])
        seg = db.segmenter(SegmentOptions(classes=classes, extractors=("tiny-tiles",), background=False, windows=w))
        recorded = seg.settings.to_dict()["windows"]
        assert (recorded["sizes"], recorded["stride"]) == want, (classes, given)  # two plans: the default
        assert seg.segment(_noise(gen)).labels.shape == (48, 64)


@pytest.mark.parametrize("flip", [False, True])
def test_subpatch_passes_of_a_tiled_extractor_share_tiles_and_equal_the_window_by_window_path(tmp_path, flip):
    from protodb.models.extractors import ExtractorSpec
    from protodb.segment.match import ClassPrototypes, build_match_table
    from protodb.segment.windows import window_grid_scores

    spec = build_tiny_extractor(tmp_path / "t")
    tiled = load_extractor(ExtractorSpec("tiny-tiles", "tiny", {**spec.config, "flip": flip,
                                                                "tile": {"size": 32, "stride": 16}}))

    class WindowByWindow:  # the same extractor without window_features: one call per window's n x n crops
        patch_size, device, tile = tiled.patch_size, tiled.device, tiled.tile

        def __call__(self, crops):
            return tiled(crops)

    gen = torch.Generator().manual_seed(1)
    table = build_match_table([ClassPrototypes(f"c{i}", False, fg=torch.randn(4, 32, generator=gen),
                                               bg=torch.zeros(0, 32)) for i in range(3)], background=False)
    image = torch.rand(3, 48, 64, generator=gen)
    windows = WindowSpec(short_side=48, subpatch=2)
    runs = []
    original = tiled._run_tiles
    tiled._run_tiles = lambda t: (runs.append(len(t)), original(t))[1]
    shared, _ = window_grid_scores(image, tiled, table, windows)
    n_shared = sum(runs)
    runs.clear()
    alone, _ = window_grid_scores(image, WindowByWindow(), table, windows)
    assert shared.shape == alone.shape == (3, 12, 16)  # the (2 h, 2 w) interleaved grid
    assert torch.allclose(shared, alone, atol=1e-5)
    assert n_shared < sum(runs)  # each shift's tiles ran once for all its windows
    assert n_shared == 4 * 6 * (2 if flip else 1)  # 4 shifts x 6 tiles of the 48x64 image (x2: the mirror)


def test_a_lighter_view_runs_touching_tiles_without_the_mirror_and_segment_records_it(tmp_path):
    """``Extractor.lighter``: the same model on tiles that do not overlap and/or without the mirror pass gives
    exactly what an extractor configured that way gives; the original is untouched; the feature cache key
    differs; a preset that asks for it is applied at segment time and recorded in the settings."""
    from protodb.features.cache import extractor_key
    from protodb.features.windows import plan_windows
    from protodb.models.extractors import ExtractorSpec
    from protodb.speed import PRESETS

    spec = build_tiny_extractor(tmp_path / "t")
    flip_cfg = {**spec.config, "tile": {"size": 32, "stride": 16}, "flip": True}
    full = load_extractor(ExtractorSpec("tiny-tiles-flip", "tiny", flip_cfg))
    touch = load_extractor(ExtractorSpec("tiny-touch", "tiny", {**spec.config, "tile": {"size": 32, "stride": 32}}))
    view = full.lighter(tile_stride=32, mirror=False)
    assert (view.tile, view.flip, full.tile, full.flip) == ((32, 32), False, (32, 16), True)
    assert view.passes() == {"tile": [32, 32], "mirror": False} and full.passes() == {"tile": [32, 16], "mirror": True}
    assert full.lighter() is full and full.lighter(tile_stride=16) is full  # nothing to change: itself
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(3, 48, 64, generator=gen)
    assert torch.allclose(view(image[None]), touch(image[None]), atol=1e-5)
    plan = plan_windows(48, 64, WindowSpec(short_side=48).resolved(view.tile), 8)
    for a, b in zip(view.window_features(image, plan), touch.window_features(image, plan)):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(view(image[None]), full(image[None]), atol=1e-3)  # it is another pass
    mirror_only = full.lighter(mirror=False)
    assert mirror_only.tile == (32, 16) and not mirror_only.flip
    assert len({extractor_key(full), extractor_key(view), extractor_key(mirror_only)}) == 3
    for bad in (12, 40, 0):
        with pytest.raises(InvalidInput, match="tile stride"):
            full.lighter(tile_stride=bad)

    home = tmp_path / "db"
    db = protodb.open(home)
    ex = _exemplar_folder(tmp_path / "ex", gen)
    db.add_extractor(ExtractorSpec("tiny-tiles-flip", "tiny", flip_cfg))
    db.builder(preset="tiny").add_class(AddClassRequest("boat", images=0, exemplars=ex,
                                                        extractors=("tiny-tiles-flip",), short_side=48, k=2))
    photo = _noise(gen)
    for name, preset in [*PRESETS.items(), (None, PRESETS["balanced"])]:  # None: the default preset
        seg = db.segmenter(SegmentOptions(classes="boat", extractors=("tiny-tiles-flip",), background=False,
                                          windows=WindowSpec(short_side=48), speed=name))
        want = {"tile": [32, 32 if preset.tiles_touch else 16], "mirror": preset.mirror}
        got = seg.settings.to_dict()
        assert got["speed"] == preset.name
        assert got["passes"] == {"tiny-tiles-flip": want}, name
        assert got["windows"]["stride"] == want["tile"][1] or not got["windows"]["sizes"], (name, got["windows"])
        assert seg.segment(photo).labels.shape == (48, 64)


def test_two_stage_matching_runs_a_tiled_extractors_shared_tiles_once(tmp_path):
    """Stage 1 and stage 2 read one computation of the first extractor's windows, through its shared tiles:
    as many tiles as the exhaustive path runs (not every window's crop on its own), and where the shortlist
    holds every class the labels are the exhaustive ones."""
    from protodb.models.extractors import ExtractorSpec
    from protodb.models.extractors.base import Extractor

    spec = build_tiny_extractor(tmp_path / "t")
    db = protodb.open(tmp_path / "db")
    db.add_extractor(ExtractorSpec("tiny-tiles", "tiny", {**spec.config, "tile": {"size": 32, "stride": 16}}))
    gen = torch.Generator().manual_seed(4)
    for name in ("boat", "car", "tree"):
        ex = _exemplar_folder(tmp_path / name, gen)
        db.builder(preset="tiny").add_class(AddClassRequest(name, images=0, exemplars=ex, extractors=("tiny-tiles",),
                                                            short_side=48, k=2))
    photo = _noise(gen)
    tiles = []
    original = Extractor._run_tiles

    def counting(self, batch):
        tiles.append(int(batch.shape[0]))
        return original(self, batch)

    runs = {}
    for mode, kw in (("exhaustive", {"exhaustive": True}), ("two-stage", {"shortlist": 2})):
        seg = db.segmenter(SegmentOptions(classes="boat,car,tree", extractors=("tiny-tiles",), background=False,
                                          windows=WindowSpec(short_side=48), **kw))
        assert seg.settings.to_dict()["matching"]["mode"] == mode
        tiles.clear()
        Extractor._run_tiles = counting
        try:
            res = seg.segment(photo)
        finally:
            Extractor._run_tiles = original
        runs[mode] = (res, sum(tiles))
    (full, full_tiles), (two, two_tiles) = runs["exhaustive"], runs["two-stage"]
    assert full_tiles == two_tiles == 2 * 3  # the 6 distinct 32-px tiles of the 48x64 photo, once each
    kept = [["boat", "car", "tree"].index(n) for n in two.kept]
    assert len(kept) == 2
    inside = np.isin(full.labels, kept)  # where the exhaustive winner was shortlisted, the same label
    assert inside.any() and np.array_equal(full.labels[inside], two.labels[inside])
