"""Segmentation core: prototype matching, sliding windows, PAMR, mIoU, dataset labels, image decoding and
the CLIP pre-filter, on hand-built features and tiny real models."""

from __future__ import annotations

import dataclasses

import io
import struct
import time
import zlib
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from protodb.errors import InvalidInput
from protodb.segment.datasets import iter_dataset, label_convention, load_label
from protodb.images import expand_inputs, load_image
from protodb.images import to_tensor as image_to_tensor
from protodb.segment.label import segment_image
from protodb.segment.match import EMPTY_SCORE, ClassPrototypes, build_match_table, score_patches
from protodb.segment.metrics import MIoU
from protodb.segment.pamr import pamr
from protodb.features.windows import Window, WindowSpec, plan_windows, resized_size
from protodb.segment.windows import window_grid_scores, window_scores


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machine is shared: one BLAS thread is faster than two fighting for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(*rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def basis(i: int, dim: int = 8) -> list[float]:
    v = [0.0] * dim
    v[i] = 1.0
    return v


# ------------------------------------------------------------------------------------------ matching


def _toy_table(background=True):
    cat = ClassPrototypes("cat", False, fg=unit(basis(0)), bg=unit(basis(3)), fg_ids=["cat-0"], bg_ids=["cat-bg"])
    dog = ClassPrototypes("dog", False, fg=unit(basis(1), basis(2)), bg=unit(basis(4)), fg_ids=["dog-0", "dog-1"])
    return build_match_table([cat, dog], background=background)


def _toy_feats() -> tuple[torch.Tensor, np.ndarray]:
    """4x4 map: left half = cat prototype, top right = dog prototype 0, bottom right column 2 = dog
    prototype 1, bottom right column 3 = cat's background prototype. Returns (feats, expected labels)."""
    f = torch.zeros(4, 4, 8)
    f[:, :2] = torch.tensor(basis(0))
    f[:2, 2:] = torch.tensor(basis(1))
    f[2:, 2] = torch.tensor(basis(2))
    f[2:, 3] = torch.tensor(basis(3))
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 2], [0, 0, 1, 2]])
    return f, expected


def test_matching_gives_exact_labels_and_max_over_prototypes():
    table = _toy_table()
    assert table.num_columns == 3 and table.column_names == ["cat", "dog", "background"]
    assert table.counts == [1, 2, 2]
    feats, expected = _toy_feats()
    scores, best = score_patches(feats, table)
    assert scores.shape == (3, 4, 4) and scores.dtype == torch.float32 and best.dtype == torch.int64
    assert np.array_equal(scores.argmax(0).numpy(), expected)
    # the dog column reaches 1.0 through EITHER of its prototypes
    assert torch.equal(scores[1, :2, 2:], torch.ones(2, 2)) and torch.equal(scores[1, 2:, 2], torch.ones(2))
    assert {table.source[int(i)] for i in best[1, :2, 2:].flatten()} == {(1, "fg", 0)}
    assert {table.source[int(i)] for i in best[1, 2:, 2]} == {(1, "fg", 1)}
    assert table.ids[int(best[2, 2, 3])] == "cat-bg" and table.source[int(best[2, 2, 3])] == (0, "bg", 0)
    # every returned index points at a prototype whose cosine equals the score
    sims = torch.einsum("nd,hwd->nhw", table.vectors, feats)
    assert torch.allclose(sims.reshape(len(sims), -1).gather(0, best.reshape(3, -1)).reshape(3, 4, 4), scores)


def test_no_background_mode_never_outputs_background():
    table = _toy_table(background=False)
    assert table.num_columns == 2 and table.counts == [1, 2]
    feats, expected = _toy_feats()
    scores, _ = score_patches(feats, table)
    labels = scores.argmax(0).numpy()
    assert scores.shape[0] == 2 and labels.max() < 2
    assert np.array_equal(labels[:, :3], expected[:, :3])


def test_stuff_filter_and_stuff_gives_no_background():
    sky = torch.tensor(basis(0))
    close = 0.9 * sky + 0.19 ** 0.5 * torch.tensor(basis(1))   # cosine 0.90 with sky: dropped
    far = 0.5 * sky + 0.75 ** 0.5 * torch.tensor(basis(2))     # cosine 0.50 with sky: kept
    other = torch.tensor(basis(3))
    classes = [
        ClassPrototypes("boat", False, fg=unit(basis(5)), bg=torch.stack([close, far, other]), bg_ids=["c", "f", "o"]),
        ClassPrototypes("sky", True, fg=sky[None], bg=unit(basis(6), basis(7))),
    ]
    table = build_match_table(classes, stuff_filter_threshold=0.85)
    assert table.counts == [1, 1, 2]
    bg_rows = (table.owner == 2).nonzero().flatten().tolist()
    assert sorted(table.ids[i] for i in bg_rows) == ["f", "o"]
    assert all(table.source[i][0] == 0 for i in bg_rows)  # nothing from the stuff class
    assert build_match_table(classes, stuff_filter_threshold=0.95).counts == [1, 1, 3]
    assert build_match_table(classes, stuff_filter_threshold=None).counts == [1, 1, 3]
    # a thing background that looks like sky no longer outvotes the sky class
    scores, _ = score_patches(close.reshape(1, 1, 8), table)
    assert scores[:, 0, 0].argmax() == 1


def test_empty_background_column_never_wins_and_bad_input():
    table = build_match_table([ClassPrototypes("a", False, fg=unit(basis(0)), bg=torch.zeros(0, 8))])
    scores, best = score_patches(-torch.tensor(basis(0)).reshape(1, 1, 8), table)
    assert scores[1, 0, 0] == EMPTY_SCORE and best[1, 0, 0] == -1 and scores[0, 0, 0] == -1.0
    with pytest.raises(InvalidInput):
        build_match_table([ClassPrototypes("a", False, fg=torch.zeros(0, 8), bg=torch.zeros(0, 8))])
    with pytest.raises(InvalidInput):
        score_patches(torch.zeros(2, 2, 5), table)


def test_chunked_scoring_equals_unchunked_on_100k_prototypes():
    gen = torch.Generator().manual_seed(0)
    dim, n_classes = 32, 200
    counts = torch.randint(1, 700, (n_classes,), generator=gen).tolist()
    classes = [ClassPrototypes(f"c{i}", i % 25 == 0, fg=F.normalize(torch.randn(n, dim, generator=gen), dim=1),
                               bg=F.normalize(torch.randn(n // 3, dim, generator=gen), dim=1))
               for i, n in enumerate(counts)]
    t0 = time.perf_counter()
    table = build_match_table(classes, device="cpu", dtype=torch.float32)
    t_build = time.perf_counter() - t0
    n = table.vectors.shape[0]
    assert n >= 90_000
    feats = F.normalize(torch.randn(8, 8, dim, generator=gen), dim=-1)
    t0 = time.perf_counter()
    full, full_best = score_patches(feats, table)
    t_full = time.perf_counter() - t0
    timings = {}
    for chunk in (997, 8192):
        t0 = time.perf_counter()
        part, part_best = score_patches(feats, table, chunk=chunk)
        timings[chunk] = time.perf_counter() - t0
        assert torch.equal(part, full) and torch.equal(part_best, full_best)
    # reference: the whole similarity matrix and a scatter max per column
    sims = feats.reshape(64, dim) @ table.vectors.T
    ref = torch.full((64, table.num_columns), EMPTY_SCORE).scatter_reduce(
        1, table.owner.expand(64, -1), sims, "amax")
    assert torch.equal(ref.T.reshape(-1, 8, 8), full)
    assert torch.equal(table.owner[full_best], torch.arange(table.num_columns)[:, None, None].expand(-1, 8, 8))
    print(f"\n{n} prototypes, {table.num_columns} columns, 8x8 map: build {t_build * 1e3:.0f} ms, "
          f"auto chunk {t_full * 1e3:.0f} ms, chunk 997 {timings[997] * 1e3:.0f} ms, "
          f"chunk 8192 {timings[8192] * 1e3:.0f} ms")
    low, low_best = score_patches(feats, build_match_table(classes, dtype=torch.bfloat16))
    assert low.dtype == torch.float32 and (low - full).abs().max() < 2e-2


# ------------------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("size", [(480, 640), (375, 500), (100, 1000), (448, 448), (30, 20)])
def test_plan_windows_cover_the_image(size):
    spec, patch = WindowSpec().resolved(), 14  # an untiled extractor's windows
    H2, W2 = resized_size(*size, spec, patch)
    assert H2 % patch == 0 and W2 % patch == 0
    # the short side becomes 448, unless the image is longer than 4:1: then its area is capped
    assert abs(min(H2, W2) - 448) < patch or (max(size) / min(size) > 4 and H2 * W2 <= 4 * 448**2 * 1.1)
    plan = plan_windows(*size, spec, patch)
    cover = np.zeros((H2, W2), bool)
    sides = {max(patch, min(s, H2, W2) // patch * patch) for s in spec.sizes}
    for win in plan:
        assert 0 <= win.top and win.top + win.height <= H2 and 0 <= win.left and win.left + win.width <= W2
        assert win.height % patch == 0 and win.width % patch == 0
        if (win.height, win.width) != (H2, W2):
            assert win.height == win.width and win.height in sides
            for start, length in ((win.top, H2), (win.left, W2)):  # on the stride grid or flush
                assert start % spec.stride == 0 or start + win.height == length
        cover[win.top:win.top + win.height, win.left:win.left + win.width] = True
    assert cover.all()
    assert Window(0, 0, H2, W2) in plan  # the whole image (last, unless a square window already is it)
    assert len(set(plan)) == len(plan)
    for side in sides:  # consecutive windows of one size step by the stride (except the flush one)
        lefts = sorted({w.left for w in plan if w.height == side and (w.height, w.width) != (H2, W2)})
        assert all(b - a == spec.stride for a, b in zip(lefts[:-2], lefts[1:-1]))


class PatchEmbed:
    """A tiny deterministic extractor: fixed random linear patch embedding, L2-normalised."""

    def __init__(self, patch: int = 8, dim: int = 16, seed: int = 0, constant: bool = False):
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(dim, 3, patch, patch, generator=gen)
        self.bias = torch.randn(dim, generator=gen)
        self.patch_size, self.input_size, self.constant = patch, None, constant
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[2] % self.patch_size == 0 and images.shape[3] % self.patch_size == 0
        self.calls.append(tuple(images.shape))
        if self.constant:
            images = torch.full_like(images, 0.5)
        out = F.conv2d(images * 2 - 1, self.weight, self.bias, stride=self.patch_size)
        return F.normalize(out.permute(0, 2, 3, 1), dim=-1)


def _two_colour_image(h=64, w=96, edge=48) -> torch.Tensor:
    img = torch.zeros(3, h, w)
    img[0, :, :edge] = 0.9
    img[1, :, :edge] = 0.2
    img[2, :, edge:] = 0.8
    img[1, :, edge:] = 0.4
    return img


def _colour_table(extract: PatchEmbed, background=True) -> object:
    red = extract(_two_colour_image(16, 16, 16)[None])[0].reshape(-1, 16)[:1]
    blue = extract(_two_colour_image(16, 16, 0)[None])[0].reshape(-1, 16)[:1]
    grey = extract(torch.full((1, 3, 16, 16), 0.5))[0].reshape(-1, 16)[:1]
    return build_match_table([ClassPrototypes("red", False, fg=red, bg=grey, fg_ids=["r"]),
                              ClassPrototypes("blue", False, fg=blue, bg=torch.zeros(0, 16), fg_ids=["b"])],
                             background=background)


def test_window_scores_constant_extractor_equals_single_window():
    extract = PatchEmbed(constant=True)
    table = _colour_table(PatchEmbed())
    img = _two_colour_image(50, 70, 30)
    spec = WindowSpec(short_side=64, sizes=(48, 32), stride=16, whole=True, batch=64)
    many = window_scores(img, extract, table, spec)
    plan = plan_windows(50, 70, spec, 8)
    sizes = {(w.height, w.width) for w in plan}
    assert len(plan) > len(sizes) == 3
    assert sorted(c[2:] for c in extract.calls) == sorted(sizes)  # one batched call per window size
    assert sum(c[0] for c in extract.calls) == len(plan)
    one = window_scores(img, extract, table, WindowSpec(short_side=64, sizes=(), whole=True))
    assert many.shape == (3, 50, 70) and torch.allclose(many, one, atol=1e-6)
    assert torch.allclose(one, one[:, :1, :1].expand_as(one))


def test_segment_image_labels_regions_explains_and_ensembles():
    img = _two_colour_image()
    truth = np.zeros((64, 96), np.int32)
    truth[:, 48:] = 1
    spec = WindowSpec(short_side=64, sizes=(48, 32), stride=16)
    a, b = PatchEmbed(seed=0), PatchEmbed(seed=1)
    ta, tb = _colour_table(a), _colour_table(b)
    for pairs, refine in (([(a, ta)], False), ([(a, ta), (b, tb)], False), ([(a, ta)], True)):
        res = segment_image(img, pairs, windows=spec, pamr=refine)
        assert res.labels.shape == (64, 96) and res.labels.dtype == np.int32
        assert res.scores.shape == (3, 64, 96) and res.column_names == ["red", "blue", "background"]
        assert (res.labels == truth).mean() >= 0.97, (res.labels != truth).sum()
        assert np.array_equal(res.labels[:, :40], truth[:, :40]) and np.array_equal(res.labels[:, 56:], truth[:, 56:])
        assert torch.equal(res.best, res.scores.max(0).values)
        assert abs(sum(res.fractions.values()) - 1) < 1e-9 and abs(res.fractions[0] - 0.5) < 0.03
        for col, pid in ((0, "r"), (1, "b")):
            win = res.winners[col]
            assert win["prototype_id"] == pid and win["score"] > 0.999
            assert res.labels[win["pixel"]] == col
    ensemble = segment_image(img, [(a, ta), (b, tb)], windows=spec).scores
    single = [segment_image(img, [p], windows=spec).scores for p in ((a, ta), (b, tb))]
    assert torch.allclose(ensemble, (single[0] + single[1]) / 2, atol=1e-6)
    with pytest.raises(InvalidInput):
        segment_image(img, [(a, ta), (b, _colour_table(b, background=False))], windows=spec)


def test_winner_of_a_region_smaller_than_a_patch():
    from protodb.segment.label import _winners

    extract = PatchEmbed()
    table = _colour_table(extract)
    img = _two_colour_image(32, 32, 16)
    _, patches = window_scores(img, extract, table, WindowSpec(short_side=None, sizes=(), whole=True),
                               keep_patches=True)
    labels = torch.zeros(32, 32, dtype=torch.int64)
    labels[1, 30] = 2  # one background pixel, no patch centre on it (centres at 4, 12, 20, 28)
    best = torch.zeros(32, 32)
    found = _winners(labels, best, [patches], [table], (32, 32))
    assert found[2]["patch"] == (0, 3) and found[2]["pixel"] == (1, 30)
    assert table.owner[found[2]["prototype_index"]] == 2
    assert found[0]["score"] == pytest.approx(1.0, abs=1e-5) and found[0]["prototype_id"] == "r"


# ------------------------------------------------------------------------------------------ PAMR


def test_pamr_snaps_a_blocky_mask_to_the_colour_edge():
    gen = torch.Generator().manual_seed(0)
    H, W, edge = 64, 64, 37
    img = torch.zeros(1, 3, H, W)
    img[:, 0, :, :edge] = 0.8
    img[:, 2, :, edge:] = 0.7
    img += 0.02 * torch.randn(img.shape, generator=gen)
    truth = torch.zeros(H, W, dtype=torch.bool)
    truth[:, :edge] = True
    block = torch.zeros(1, 1, H, W)
    block[..., :48] = 1.0  # a 16-pixel-block mask whose edge is 11 pixels off
    block = F.interpolate(F.avg_pool2d(block, 16), size=(H, W), mode="bilinear", align_corners=False)
    masks = torch.cat([block, 1 - block], dim=1)

    def iou(m):
        pred = m[0].argmax(0) == 0
        return float((pred & truth).sum() / (pred | truth).sum())

    refined = pamr(img, masks, iterations=10)
    assert refined.shape == masks.shape
    assert iou(masks) < 0.9 and iou(refined) > 0.97 and iou(refined) > iou(masks)
    assert refined.min() >= masks.min() - 1e-5 and refined.max() <= masks.max() + 1e-5  # convex combinations
    flat = torch.full((1, 2, H, W), 0.25)
    assert torch.allclose(pamr(img, flat, iterations=3), flat)


# ------------------------------------------------------------------------------------------ metrics


def test_miou_sums_over_the_split_and_skips_ignored_and_absent_classes():
    metric = MIoU(4, ignore_index=255, names=["a", "b", "c", "d"])
    metric.update(np.array([[0, 1, 1], [1, 1, 0]]), np.array([[0, 0, 1], [1, 2, 255]]))
    metric.update(torch.tensor([[2, 2]]), torch.tensor([[2, 2]]))
    r = metric.result()
    # by hand, the ignored pixel (gt 255, pred 0) left out:
    #   a: gt {(0,0),(0,1)}, pred {(0,0)}                     -> I 1, U 2
    #   b: gt {(0,2),(1,0)}, pred {(0,1),(0,2),(1,0),(1,1)}   -> I 2, U 4
    #   c: gt {(1,1)} + 2 pixels of image 2, pred those 2     -> I 2, U 3
    #   d: absent from both                                   -> U 0, not in the mean
    assert r["intersection"] == [1, 2, 2, 0] and r["union"] == [2, 4, 3, 0]
    assert r["per_class"] == {"a": 1 / 2, "b": 2 / 4, "c": 2 / 3, "d": None}
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 4 + 2 / 3) / 3)
    assert r["accuracy"] == pytest.approx(5 / 7) and r["images"] == 2
    with pytest.raises(InvalidInput):
        metric.update(np.array([[7]]), np.array([[9]]))
    assert MIoU(2).result()["miou"] is None


# ------------------------------------------------------------------------------------------ datasets


def _png(path, values, mode="L"):
    """Save label values as a grey ("L") or palette ("P", like VOC) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(values, np.uint8)
    im = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())
    if mode == "P":
        im.putpalette([(i * 37) % 256 for i in range(768)])
    im.save(path)


def _jpg(path, size=(6, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)


def test_dataset_layouts_and_label_conventions(tmp_path):
    voc = tmp_path / "voc"
    for name in ("b", "a"):
        _jpg(voc / "JPEGImages" / f"{name}.jpg")
        _png(voc / "SegmentationClass" / f"{name}.png", [[0, 1, 20, 255], [21, 5, 0, 0]], mode="P")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("b\na\n")
    pairs = list(iter_dataset("voc", voc))
    assert [p[0].name for p in pairs] == ["b.jpg", "a.jpg"] and pairs[0][1].name == "b.png"
    assert len(list(iter_dataset("voc", voc, limit=1))) == 1
    conv = label_convention("voc")
    assert (conv["num_classes"], conv["background"], conv["ignore_index"]) == (21, True, 255)
    assert load_label(pairs[0][1], conv).tolist() == [[20, 0, 19, 255], [255, 4, 20, 20]]
    assert load_label(pairs[0][1], "context59").tolist() == [[255, 0, 19, 255], [20, 4, 255, 255]]
    assert label_convention("context")["num_classes"] == 60 and label_convention("context59")["num_classes"] == 59
    assert label_convention("coco-object")["num_classes"] == 81

    ade = tmp_path / "ade"
    _jpg(ade / "images" / "validation" / "x.jpg")
    _png(ade / "annotations" / "validation" / "x.png", [[0, 1, 150, 151]])
    (img, lab), = iter_dataset("ade20k", ade, split="val")
    assert img.name == "x.jpg" and load_label(lab, "ade20k").tolist() == [[255, 0, 149, 255]]
    assert label_convention("ade20k")["reduce_zero_label"] and label_convention("ade20k")["num_classes"] == 150

    city = tmp_path / "city"
    _jpg(city / "leftImg8bit" / "val" / "bonn" / "b_000_leftImg8bit.png")
    _png(city / "gtFine" / "val" / "bonn" / "b_000_gtFine_labelTrainIds.png", [[0, 18, 19, 255]])
    (img, lab), = iter_dataset("cityscapes", city)
    assert load_label(lab, "cityscapes").tolist() == [[0, 18, 255, 255]]

    camvid = tmp_path / "camvid"
    _jpg(camvid / "val" / "f1.png")
    _png(camvid / "valannot" / "f1.png", [[0, 10, 11, 3]])
    (img, lab), = iter_dataset("camvid", camvid)
    assert load_label(lab, "camvid").tolist() == [[0, 10, 255, 3]]

    coco = tmp_path / "coco"
    _jpg(coco / "images" / "val2017" / "0001.jpg")
    _png(coco / "annotations" / "val2017" / "0001_instanceTrainIds.png", [[0, 1, 80, 255]])
    (img, lab), = iter_dataset("coco-object", coco)
    assert load_label(lab, "coco-object").tolist() == [[80, 0, 79, 255]]

    (ade / "annotations" / "validation" / "x.png").unlink()
    with pytest.raises(InvalidInput, match="no label file"):
        list(iter_dataset("ade20k", ade))
    with pytest.raises(InvalidInput, match="unknown dataset"):
        label_convention("imagenet")
    with pytest.raises(InvalidInput):
        list(iter_dataset("voc", tmp_path / "missing"))
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (2, 2)).save(rgb)
    with pytest.raises(InvalidInput, match="colour"):
        load_label(rgb, "voc")


# ------------------------------------------------------------------------------------------ images


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR width/height (and its CRC): a cheap decompression-bomb header."""
    assert data[12:16] == b"IHDR"
    body = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:8] + data[8:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:]


def _one_line_error(src, name: str) -> str:
    with pytest.raises(InvalidInput) as err:
        load_image(src)
    msg = str(err.value)
    assert "\n" not in msg and name in msg
    return msg


def test_load_image_decodes_odd_files_and_refuses_bad_ones(tmp_path):
    # 16-bit grey PNG -> 8-bit RGB
    grey16 = np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    im = load_image(tmp_path / "g16.png")
    assert im.mode == "RGB" and im.size == (2, 2)
    assert np.asarray(im)[..., 0].tolist() == [[0, 100], [255, 7]]
    # CMYK JPEG
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    im = load_image(tmp_path / "cmyk.jpg")
    r, g, b = np.asarray(im)[5, 10].tolist()
    assert im.mode == "RGB" and im.size == (20, 10) and r > 200 and g < 60 and b < 60
    # RGBA PNG: composited on white
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:, :2] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    im = load_image(tmp_path / "rgba.png")
    assert np.asarray(im)[0, 0].tolist() == [255, 0, 0] and np.asarray(im)[0, 3].tolist() == [255, 255, 255]
    # palette image
    Image.new("RGB", (5, 3), (0, 0, 255)).convert("P").save(tmp_path / "pal.png")
    im = load_image(tmp_path / "pal.png")
    assert im.mode == "RGB" and np.asarray(im)[1, 1].tolist() == [0, 0, 255]
    # EXIF orientation 6 (rotate 90 on display): 40x20 stored, 20x40 decoded
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (0, 128, 0)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)
    # bytes input and the tensor view
    buf = io.BytesIO()
    Image.new("L", (3, 2), 128).save(buf, format="PNG")
    t = image_to_tensor(load_image(buf.getvalue()))
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32 and abs(float(t[0, 0, 0]) - 128 / 255) < 1e-6

    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty" in _one_line_error(tmp_path / "empty.jpg", "empty.jpg")
    _one_line_error(b"", "<bytes>")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "truncated" in _one_line_error(tmp_path / "cut.png", "cut.png")
    (tmp_path / "notes.jpg").write_text("this is not an image\nsecond line\n")
    assert "not an image" in _one_line_error(tmp_path / "notes.jpg", "notes.jpg")
    Image.new("1", (8, 8)).save(buf := io.BytesIO(), format="PNG")
    (tmp_path / "bomb.png").write_bytes(_patch_png_size(buf.getvalue(), 30_000, 30_000))  # 900 MP
    _one_line_error(tmp_path / "bomb.png", "bomb.png")
    (tmp_path / "big.png").write_bytes(_patch_png_size(buf.getvalue(), 9_000, 9_000))  # 81 MP > 80 MP
    assert "limit" in _one_line_error(tmp_path / "big.png", "big.png")
    _one_line_error(tmp_path / "missing.png", "missing.png")


def test_expand_inputs(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "c.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "d.jpg").write_bytes(b"x")
    assert [p.name for p in expand_inputs([str(folder)])] == ["a.JPG", "b.png"]
    assert [p.name for p in expand_inputs([str(folder / "*.png"), str(folder / "b.png")])] == ["b.png"]
    assert [p.name for p in expand_inputs([str(folder / "**" / "*.jpg")])] == ["d.jpg"]
    assert [p.name for p in expand_inputs([str(folder / "c.txt")])] == ["c.txt"]  # explicit files kept
    for bad in ([str(folder / "*.gif")], [str(tmp_path / "nope.jpg")], []):
        with pytest.raises(InvalidInput):
            expand_inputs(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match="no images"):
        expand_inputs([str(empty)])


# ------------------------------------------------------------------------------------------ CLIP pre-filter


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from protodb.models.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_clip_prefilter_selects_a_best_subset_plus_stuff(tiny_clip):
    from protodb.segment.prefilter import ClipPrefilter, subset_prompt

    pre = ClipPrefilter(tiny_clip)
    names = ["cat", "dog", "bird", "car", "boat", "horse", "sheep", "train", "bus", "cow", "chair", "table",
             "sky", "grass"]
    stuff = [False] * 12 + [True, True]
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    probs = pre.probabilities(image, names[:12])  # thing classes only: stuff is never classified
    assert probs.shape == (12,) and abs(float(probs.sum()) - 1) < 1e-5
    survivors = [i for i in range(12) if probs[i] >= 1 / 12]  # 1 / N_thing
    small = len(survivors) - 1  # a max_keep that truncates the survivors
    assert small >= 1
    by_prob = sorted(survivors, key=lambda i: -float(probs[i]))[:small]  # truncated: most probable first
    top = sorted(by_prob)
    for max_keep, pool in ((10, survivors), (small, top)):
        chosen = pre.select(image, names, stuff, max_keep=max_keep)
        assert chosen == pre.select(image, names, stuff, max_keep=max_keep)  # deterministic
        assert chosen == sorted(chosen) and {12, 13} <= set(chosen)
        things = [i for i in chosen if i < 12]
        assert things and set(things) <= set(pool) and len(things) <= max_keep
        if max_keep == small:  # the chosen subset has the best prompt-image cosine of all subsets, whose
            # prompts join the classes in probability order (the survivors were truncated to the top-k)
            subsets = [c for r in range(1, small + 1) for c in combinations(by_prob, r)]
            sims = pre.text_embeddings([subset_prompt([names[i] for i in s]) for s in subsets]) @ pre.image_embedding(image)
            assert tuple(things) == tuple(sorted(subsets[int(sims.argmax())]))
    assert pre.select(image, ["sky", "grass"], [True, True]) == [0, 1]
    assert subset_prompt(["cat", "dog", "bird"]) == "a cat and a dog and a bird"
    with pytest.raises(InvalidInput):
        ClipPrefilter(tiny_clip / "missing")


def test_dataset_offsets_come_from_the_vocabulary_files():
    """One source for label values: the datasets' conventions read the vocabularies' label_offset."""
    from protodb.segment.datasets import dataset_names, label_convention
    from protodb.vocabularies import load_builtin

    for name in dataset_names():
        conv = label_convention(name)
        doc = load_builtin(conv["vocabulary"])
        assert conv["offset"] == doc["label_offset"], name
        assert doc["ignore_index"] in conv["file_ignore"] or conv["background"], name
    assert label_convention("ade20k")["reduce_zero_label"] and label_convention("camvid")["file_ignore"] == [11]


def test_a_thin_strip_is_scored_with_bounded_memory():
    """An 8000x4 image: the resize keeps its area near 4 x 448^2 (no 896000x448 tensor) and the windows
    still cover it."""
    spec, patch = WindowSpec(), 14
    H2, W2 = resized_size(4, 8000, spec, patch)
    assert H2 * W2 <= 4 * 448**2 * 1.1 and H2 == patch
    plan = plan_windows(4, 8000, spec, patch)
    cover = np.zeros((H2, W2), bool)
    for win in plan:
        cover[win.top:win.top + win.height, win.left:win.left + win.width] = True
    assert cover.all() and len(plan) < 50


def test_window_scales_average_finer_passes():
    """scales=(1, 1.5): the mean of the pass at short side 64 and the pass at 96, and the winners may
    come from either scale's windows."""
    img = _two_colour_image()
    a = PatchEmbed(seed=0)
    ta = _colour_table(a)
    base = WindowSpec(short_side=64, sizes=(48, 32), stride=16)
    both = segment_image(img, [(a, ta)], windows=dataclasses.replace(base, scales=(1.0, 1.5)))
    one = segment_image(img, [(a, ta)], windows=base).scores
    fine = segment_image(img, [(a, ta)], windows=dataclasses.replace(base, short_side=96)).scores
    assert torch.allclose(both.scores, (one + fine) / 2, atol=1e-6)
    assert not torch.allclose(one, fine, atol=1e-3)  # the finer pass does see something else
    assert [s.short_side for s in dataclasses.replace(base, scales=(1.0, 1.5)).at_scales()] == [64, 96]
    with pytest.raises(InvalidInput, match="--scales"):
        from protodb.segment.options import parse_scales

        parse_scales("1,9")


class MeanColour:
    """An 'extractor' whose patch feature is the patch's mean colour (L2-normalised): a patch is red
    exactly when more than half of it is red."""

    def __init__(self, patch: int = 14):
        self.patch_size, self.input_size = patch, None
        self.crops = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.crops += images.shape[0]
        return F.normalize(F.avg_pool2d(images, self.patch_size).permute(0, 2, 3, 1), dim=-1)


@pytest.mark.parametrize("axis", [0, 1])
def test_subpatch_sampling_finds_a_stripe_narrower_than_a_patch(axis):
    """An 8-pixel red stripe straddling a 14-pixel patch boundary covers 4/14 of each patch: at stride 14
    blue wins everywhere; sampling the patch grid twice per axis (shifts -3 and +4) centres a patch on
    the stripe, so red is found there (and only there), along either axis."""
    from protodb.subpatch import offsets

    assert offsets(14, 1) == [0] and offsets(14, 2) == [-3, 4]
    assert set(np.diff(offsets(14, 4)).tolist()) == {3, 4}  # patch/n = 3.5 apart, rounded
    img = torch.zeros(3, 56, 56)
    img[2] = 1.0
    sl = (slice(None), slice(24, 32)) if axis == 1 else (slice(24, 32), slice(None))
    img[(0, *sl)], img[(2, *sl)] = 1.0, 0.0
    table = build_match_table([ClassPrototypes("red", False, fg=unit([1.0, 0, 0]), bg=torch.zeros(0, 3)),
                               ClassPrototypes("blue", False, fg=unit([0, 0, 1.0]), bg=torch.zeros(0, 3))],
                              background=False)
    spec = WindowSpec(short_side=None, sizes=(28,), stride=14, whole=True)
    coarse = segment_image(img, [(MeanColour(), table)], windows=spec)
    assert (coarse.labels == 0).sum() == 0
    extract = MeanColour()
    fine = segment_image(img, [(extract, table)], windows=dataclasses.replace(spec, subpatch=2))
    red = np.argwhere(fine.labels == 0)[:, axis]
    assert red.size and 20 <= red.min() and red.max() <= 32 and abs(red.mean() - 27) < 3
    assert fine.scores.shape == (2, 56, 56)
    assert extract.crops == 4 * len(plan_windows(56, 56, spec, 14))  # 2 x 2 shifted passes per window
    grid, _ = window_grid_scores(img, MeanColour(), table, dataclasses.replace(spec, subpatch=2))
    assert grid.shape == (2, 8, 8)
    with pytest.raises(InvalidInput, match="--subpatch"):
        dataclasses.replace(spec, subpatch=9).check()
