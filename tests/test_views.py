"""Support views (``add-class --augment``): more views of each exemplar photo, their masks cut the same way,
recorded in the build config, made again the same way, never from corrections or other views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from typer.testing import CliRunner

from protodb.errors import InvalidInput
from protodb.pipeline.config import AddClassRequest, ExemplarInput
from protodb.pipeline.views import ZOOM_SIDE, check_views, light_views, with_views, zoom_views


def _exemplar(w=120, h=90, seed=0, name="p.png") -> ExemplarInput:
    """A photo whose red channel is the column index and green the row index (so a crop's position can be
    read off its pixels), a class mask over columns 30..59 and a background mask elsewhere."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w)[None, :]
    img[..., 1] = np.arange(h)[:, None]
    img[..., 2] = seed
    mask = np.zeros((h, w), bool)
    mask[:, 30:60] = True
    return ExemplarInput(path=Path(name), image=PIL.Image.fromarray(img), mask=mask, background=~mask)


def test_zoom_views_crop_two_thirds_and_cut_the_masks_the_same_way():
    ex = _exemplar()
    views = zoom_views(ex, seed=0)
    assert [v for v, _ in views] == ["zoom-1", "zoom-2"]
    for _, v in views:
        assert v.image.size == ex.image.size and v.mask.shape == ex.mask.shape
        a = np.asarray(v.image).astype(int)
        cols = a[0, :, 0]  # the source columns the view's columns show
        span = cols.max() - cols.min()
        assert abs(span - round(120 * ZOOM_SIDE)) <= 2  # 2/3 of the width, stretched to the full width
        # the view's mask is where its pixels came from the mask's columns (nearest resize: at most 1 px off)
        expect = (cols >= 30) & (cols < 60)
        assert (v.mask[0] != expect).sum() <= 2
        assert not (v.mask & v.background).any()
    assert [np.asarray(v.image).tobytes() for _, v in zoom_views(ex, seed=0)] == \
        [np.asarray(v.image).tobytes() for _, v in views]  # the same photo and seed, the same crops
    other = zoom_views(ex, seed=1)
    assert any(np.asarray(a.image).tobytes() != np.asarray(b.image).tobytes() for (_, a), (_, b) in zip(views, other))


def test_light_views_keep_the_geometry_and_change_the_light():
    ex = _exemplar()
    (dusk_id, dusk), (noon_id, noon) = light_views(ex, 0)
    assert (dusk_id, noon_id) == ("light-dusk", "light-noon")
    base = np.asarray(ex.image).astype(float).mean()
    assert np.asarray(dusk.image).astype(float).mean() < base < np.asarray(noon.image).astype(float).mean()
    assert dusk.mask is ex.mask and noon.background is ex.background


def test_with_views_adds_views_of_photos_only_and_drops_views_that_miss_the_class():
    photo = _exemplar(name="a.png")
    tiny = _exemplar(name="b.png", seed=3)
    tiny.mask[:] = False
    tiny.mask[0, 0] = True  # one corner pixel: most zooms miss it
    correction = ExemplarInput(path=Path("c.png"), image=photo.image, mask=photo.mask, source="correction")
    out = with_views([photo, tiny, correction], ["zoom", "light"], seed=0)
    views = [e for e in out if e.source == "view"]
    assert out[:3] == [photo, tiny, correction]
    assert {e.path.name for e in views if e.path.name.startswith("a.png")} == {
        "a.png#zoom-1", "a.png#zoom-2", "a.png#light-dusk", "a.png#light-noon"}
    assert not any(e.path.name.startswith("c.png") for e in views)  # corrections get no views
    assert all(e.mask.any() for e in views)  # a zoom that missed b's pixel is left out
    assert {e.view for e in views} <= {"zoom-1", "zoom-2", "light-dusk", "light-noon"}
    assert views[0].digest()["source"] == "view" and views[0].digest()["view"] == views[0].view


def test_an_unknown_view_is_one_clear_error():
    assert check_views(["light", "zoom", "zoom"]) == ("zoom", "light")
    with pytest.raises(InvalidInput, match="unknown --augment view 'blur'; choose from zoom, light"):
        check_views(["blur"])


def _photos(root: Path) -> tuple[Path, Path]:
    ex, mk = root / "ex", root / "mk"
    ex.mkdir(), mk.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = (rng.random((96, 128, 3)) * 60).astype(np.uint8)
        lab = np.zeros((96, 128), np.uint8)
        lab[20:80, 30:100] = 5
        img[lab == 5] = (200, 40 + 50 * i, 40)
        PIL.Image.fromarray(img).save(ex / f"p{i}.png")
        PIL.Image.fromarray(lab).save(mk / f"p{i}.png")
    return ex, mk


def test_add_class_with_views_stores_them_and_records_them(db, tmp_path):
    ex, mk = _photos(tmp_path)
    builder = db.builder(preset="tiny")
    plain = builder.add_class(AddClassRequest("box", images=0, exemplars=ex, masks=mk, mask_value=5, k=4))
    res = builder.add_class(AddClassRequest("box", images=0, exemplars=ex, masks=mk, mask_value=5, k=4,
                                            augment=("zoom",)))
    (built,) = res.sets
    assert built.set.id != plain.sets[0].set.id  # views make another set
    cfg = db.sets.get(built.set.id).config
    assert cfg["augment"] == ["zoom"] and "augment" not in db.sets.get(plain.sets[0].set.id).config
    views = [e for e in cfg["exemplars"] if e.get("source") == "view"]
    assert len(views) == 4 and {e["view"] for e in views} == {"zoom-1", "zoom-2"}
    assert len(cfg["support"]) == 6  # 2 photos + 2 views each
    assert built.set.counts["instance"] == 6
    info = db.support.images_of(db.sets.get(built.set.id))
    assert sorted(i["source"] for i in info["images"]) == ["exemplar"] * 2 + ["view"] * 4
    again = builder.add_class(AddClassRequest("box", images=0, exemplars=ex, masks=mk, mask_value=5, k=4,
                                              augment=("zoom",)))
    assert again.sets[0].set.id == built.set.id  # the same request, the same views: one set


def test_cli_augment_takes_a_view_and_refuses_an_unknown_one(tmp_path):
    from protodb_cli.main import app

    ex, mk = _photos(tmp_path)
    db = tmp_path / "db"
    base = ["--db", str(db), "add-class", "box", "--preset", "tiny", "--images", "0", "--exemplars", str(ex),
            "--masks", str(mk), "--mask-value", "5", "-k", "4"]
    bad = CliRunner().invoke(app, base + ["--augment", "blur"])
    assert bad.exit_code == 1 and "unknown --augment view 'blur'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    ok = CliRunner().invoke(app, base + ["--augment", "light", "--json"])
    assert ok.exit_code == 0, ok.output
