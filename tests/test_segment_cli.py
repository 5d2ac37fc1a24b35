"""segment / eval / inspect / vocab through the CLI, on a tiny database with real stores."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import protodb
from protodb.render import sheet_size
from tests.conftest import clean_env, cli
from tests.serve_helpers import scene as _scene  # left half red box (0), right blue stripes (1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """CamVid-style folders: train/ + trainannot/, val/ + valannot/ (values 0, 1; 11 = void)."""
    root = tmp_path_factory.mktemp("scenes")
    for split, seeds in (("train", range(3)), ("val", range(10, 12))):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for s in seeds:
            img, lab = _scene(s)
            lab[:3, :3] = 11  # a little void
            PIL.Image.fromarray(img).save(root / split / f"s{s}.png")
            PIL.Image.fromarray(lab).save(root / f"{split}annot" / f"s{s}.png")
    return root


@pytest.fixture(scope="module")
def tinydb(tmp_path_factory, scenes):
    """Two exemplar classes from the scenes (red box = 0, blue stripes = 1) + one generated class."""
    home = tmp_path_factory.mktemp("segdb") / "db"
    clean_env()
    for value, name in ((0, "red box"), (1, "blue stripes")):
        cli("add-class", name, "--preset", "tiny", "--images", "0", "--exemplars", scenes / "train",
            "--masks", scenes / "trainannot", "--mask-value", value, "-k", "4", "--db", home, "--json")
    cli("add-class", "boat", "--preset", "tiny", "--images", "2", "-k", "4", "--db", home, "--json")
    cli("vocab", "create", "scene", "red box", "blue stripes", "--db", home)
    return home


def test_segment_writes_labels_overlay_json(tinydb, scenes, tmp_path):
    out = tmp_path / "out"
    res = json.loads(cli("segment", scenes / "val" / "s10.png", "--vocab", "scene", "--no-background",
                         "--out", out, "--db", tinydb, "--json").stdout)
    (o,) = res["outputs"]
    assert res["failed"] == [] and res["vocabulary"]["sets"]["tiny-vit"] == ["red box@1", "blue stripes@1"]
    lab = np.asarray(PIL.Image.open(o["files"]["labels"]))
    assert lab.shape == (96, 128) and set(np.unique(lab)) <= {0, 1}
    # the two halves are told apart: the left half is mostly label 0 (red box), the right 1
    assert (lab[:, :64] == 0).mean() > 0.8 and (lab[:, 64:] == 1).mean() > 0.8
    assert PIL.Image.open(o["files"]["overlay"]).size == (128, 96)
    meta = json.loads(Path(o["files"]["json"]).read_text())
    assert meta["legend"] == {"0": "red box", "1": "blue stripes"}
    assert abs(sum(v["fraction"] for v in meta["present"].values()) - 1) < 1e-4
    assert meta["vocabulary"]["version"] == 1 and meta["settings"]["levels"] == ["class", "instance", "part"]


def test_background_labels_are_pascal_style(tinydb, scenes, tmp_path):
    res = json.loads(cli("segment", scenes / "val" / "s10.png", "--classes", "red box,boat",
                         "--out", tmp_path, "--db", tinydb, "--json").stdout)
    meta = json.loads(Path(res["outputs"][0]["files"]["json"]).read_text())
    assert meta["legend"] == {"0": "background", "1": "red box", "2": "boat"}
    lab = np.asarray(PIL.Image.open(res["outputs"][0]["files"]["labels"]))
    assert set(np.unique(lab)) <= {0, 1, 2}


def test_levels_option_changes_the_prototypes_used(tinydb, scenes, tmp_path):
    from protodb.segment.options import SegmentOptions

    db = protodb.open(tinydb)
    counts = [db.sets.resolve(c)[0].counts for c in ("red box", "blue stripes")]
    for levels, kinds in ((["class"], ["class"]), (["part"], ["part"]),
                          (["class", "instance", "part"], ["class", "instance", "part"])):
        seg = db.segmenter(SegmentOptions(vocab="scene", levels=levels, background=True))
        table = seg.vocab.tables["tiny-vit"]
        fg = sum(c[k] for c in counts for k in kinds)
        bg = sum(c["bg_" + k] for c in counts for k in kinds)
        assert table.vectors.shape[0] == fg + bg  # exactly the chosen levels (no stuff classes here)
    a = json.loads(cli("segment", scenes / "val", "--vocab", "scene", "--no-background", "--levels", "class",
                       "--out", tmp_path / "a", "--db", tinydb, "--json").stdout)
    assert a["settings"]["levels"] == ["class"] and len(a["outputs"]) == 2
    bad = cli("segment", scenes / "val", "--vocab", "scene", "--levels", "clas", "--db", tinydb, ok=False)
    assert bad.exit_code == 1 and "--levels" in bad.stderr


def test_subpatch_is_recorded_and_labels_the_same_scene(tinydb, scenes, tmp_path):
    """--subpatch 2: the settings say so, and the big regions keep their labels (finer cells only move
    edges); an out-of-range value is refused before any model loads."""
    outs = {}
    for n in ("1", "2"):
        doc = json.loads(cli("segment", scenes / "val" / "s10.png", "--vocab", "scene", "--no-background",
                             "--subpatch", n, "--out", tmp_path / n, "--db", tinydb, "--json").stdout)
        assert doc["settings"]["windows"]["subpatch"] == int(n)
        outs[n] = np.asarray(PIL.Image.open(tmp_path / n / "s10.labels.png"))
    assert outs["1"].shape == outs["2"].shape and (outs["1"] == outs["2"]).mean() > 0.9
    bad = cli("segment", scenes / "val", "--vocab", "scene", "--subpatch", "9", "--db", tinydb, ok=False)
    assert bad.exit_code == 2 and "--subpatch" in bad.stderr


def test_window_flags_choose_the_windows_and_are_recorded(tinydb, scenes, tmp_path):
    """--window-sizes/--window-stride/--no-whole: the windows scored are recorded as given (the default: the
    extractor's, resolved); 'none' scores the whole image only; bad values and --speed with them are one line."""
    def windows(*flags):
        doc = json.loads(cli("segment", scenes / "val" / "s10.png", "--vocab", "scene", "--no-background", *flags,
                             "--out", tmp_path / str(len(flags)), "--db", tinydb, "--json").stdout)
        w = doc["settings"]["windows"]
        return w["sizes"], w["stride"], w["whole"]

    default = windows()
    assert default[2] is True and default[0]
    assert windows("--window-sizes", "48,32", "--window-stride", "16", "--no-whole") == ([48, 32], 16, False)
    assert windows("--window-sizes", "none")[0::2] == ([], True)
    for bad, message in ((("--window-sizes", "4x8"), "--window-sizes takes pixel sides"),
                         (("--window-sizes", "none", "--no-whole"), "nothing would be scored"),
                         (("--window-stride", "0"), "must be positive"),
                         (("--window-sizes", "48", "--speed", "fast"), "--speed sets the windows itself")):
        res = cli("segment", scenes / "val" / "s10.png", "--vocab", "scene", *bad, "--db", tinydb, ok=False)
        assert res.exit_code != 0 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_prefiltered_classes_map_back_to_vocabulary_labels(tinydb, scenes):
    """When the pre-filter keeps a subset, label values still name vocabulary classes."""
    from protodb.images import load_image
    from protodb.segment.options import SegmentOptions

    seg = protodb.open(tinydb).segmenter(SegmentOptions(classes="boat,red box,blue stripes", background=True))

    class KeepOnly:  # the pre-filter's decision, fixed: keep vocabulary class 2 (blue stripes)
        def select(self, image, names, stuff):
            return [2]

    seg.prefilter = KeepOnly()
    out = seg.segment(load_image(scenes / "val" / "s10.png"))
    assert set(np.unique(out.labels)) <= {2, 3}  # blue stripes (2) or background (3 = C)
    assert list(out.kept) == ["blue stripes"] and set(out.present) <= {"blue stripes", "background"}


def test_explain_points_at_stored_prototypes_and_images(tinydb, scenes, tmp_path):
    res = json.loads(cli("segment", scenes / "val" / "s11.png", "--vocab", "scene", "--no-background",
                         "--explain", "--out", tmp_path, "--db", tinydb, "--json").stdout)
    (o,) = res["outputs"]
    db = protodb.open(tinydb)
    assert Path(o["files"]["explain"]).exists()
    for name, w in o["explain"].items():
        (summary,) = db.sets.resolve(w["set_ref"])
        rows = db.sets.prototypes(summary)
        assert w["prototype"] in rows.ids and w["class"] == name == summary.class_name
        j = rows.ids.index(w["prototype"])
        assert rows.kinds[j] == w["kind"]
        if w.get("support_image"):
            assert w["support_image"] in summary.images


def test_missing_class_names_the_command(tinydb, scenes):
    res = cli("segment", scenes / "val", "--classes", "red box,zebra", "--db", tinydb, ok=False)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and "protodb add-class zebra" in lines[0]


def _bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    good = PIL.Image.fromarray(_scene(3)[0])
    files = {}
    (folder / "zero.png").write_bytes(b"")
    files["zero"] = folder / "zero.png"
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files["truncated"] = folder / "truncated.png"
    (folder / "text.jpg").write_text("not an image at all")
    files["text"] = folder / "text.jpg"
    PIL.Image.fromarray((np.arange(96 * 128).reshape(96, 128) * 5).astype(np.uint16)).save(folder / "deep16.png")
    files["16bit"] = folder / "deep16.png"
    good.convert("CMYK").save(folder / "cmyk.jpg")
    files["cmyk"] = folder / "cmyk.jpg"
    good.convert("RGBA").save(folder / "rgba.png")
    files["rgba"] = folder / "rgba.png"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    good.save(folder / "rotated.jpg", exif=exif)
    files["exif"] = folder / "rotated.jpg"
    # a decompression bomb: a valid 1-bit PNG of 20000 x 20000 pixels (400 MP) in a few kB
    PIL.Image.new("1", (20000, 20000)).save(folder / "bomb.png")
    files["bomb"] = folder / "bomb.png"
    return files


def test_bad_images_fail_alone_and_exit_3(tinydb, tmp_path):
    files = _bad_inputs(tmp_path / "in")
    res = cli("segment", *files.values(), "--vocab", "scene", "--no-background", "--out", tmp_path / "out",
              "--db", tinydb, "--json", ok=False)
    assert res.exit_code == 3
    data = json.loads(res.stdout)
    failed = {Path(f["input"]).name for f in data["failed"]}
    assert failed == {"zero.png", "truncated.png", "text.jpg", "bomb.png"}
    for f in data["failed"]:
        assert "\n" not in f["error"] and Path(f["input"]).name in f["error"]
    done = {Path(o["input"]).name: o for o in data["outputs"]}
    assert set(done) == {"deep16.png", "cmyk.jpg", "rgba.png", "rotated.jpg"}
    assert done["rotated.jpg"]["size"] == [96, 128]  # EXIF orientation applied: width and height swapped
    errs = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errs) == 4


def test_eval_miou_matches_hand_computation(tinydb, scenes, tmp_path):
    """eval's mIoU equals an independent computation on the same predictions (void ignored)."""
    bad = cli("eval", "--dataset", "camvid", "--root", scenes, "--vocab", "scene", "--no-background",
              "--db", tinydb, ok=False)  # camvid scores 11 classes: a 2-class vocabulary is refused
    assert bad.exit_code == 1 and "11" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # a 2-class dataset: score the scene vocabulary on its own labels via the metric the CLI uses
    from protodb.images import load_image
    from protodb.segment.options import SegmentOptions

    seg = protodb.open(tinydb).segmenter(SegmentOptions(vocab="scene", background=False))
    inter, union = np.zeros(2), np.zeros(2)
    from protodb.segment.metrics import MIoU

    metric = MIoU(2, ignore_index=255)
    for name in ("s10.png", "s11.png"):
        pred = seg.segment(load_image(scenes / "val" / name)).labels
        gt = np.asarray(PIL.Image.open(scenes / "valannot" / name)).astype(np.int64)
        gt[gt == 11] = 255
        metric.update(pred, gt)
        valid = gt != 255
        for c in range(2):
            inter[c] += ((pred == c) & (gt == c) & valid).sum()
            union[c] += (((pred == c) | (gt == c)) & valid).sum()
    assert metric.result()["miou"] == pytest.approx((inter / union).mean())


def test_eval_on_a_camvid_layout(tmp_path):
    """A full 11-class CamVid-layout eval on a tiny database: per-class table and JSON keys."""
    home = tmp_path / "db"
    root = tmp_path / "cv"
    for split in ("train", "trainannot", "val", "valannot"):
        (root / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 2)):
        for i in range(n):
            img = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
            lab = (np.arange(96)[None, :] // 9).repeat(64, 0).astype(np.uint8)  # values 0..10, stripes
            PIL.Image.fromarray(img).save(root / split / f"f{i}.png")
            PIL.Image.fromarray(lab).save(root / f"{split}annot" / f"f{i}.png")
    names = protodb.vocabularies.load_builtin("camvid")["classes"]
    for v, name in enumerate(names):
        cli("add-class", name, "--preset", "tiny", "--images", "0", "--exemplars", root / "train", "--masks",
            root / "trainannot", "--mask-value", v, "-k", "2", "--db", home)
    res = json.loads(cli("eval", "--dataset", "camvid", "--root", root, "--no-background", "--db", home,
                         "--json").stdout)
    assert res["images"] == 2 and set(res["per_class"]) == set(names)
    assert res["settings"]["background"] is False
    # independent check: score segment's label PNGs against the label maps by hand
    seg = json.loads(cli("segment", root / "val", "--vocab", "camvid", "--no-background", "--out",
                         tmp_path / "pred", "--db", home, "--json").stdout)
    inter, union = np.zeros(11), np.zeros(11)
    for o in seg["outputs"]:
        pred = np.asarray(PIL.Image.open(o["files"]["labels"])).astype(np.int64)
        gt = np.asarray(PIL.Image.open(root / "valannot" / Path(o["input"]).name)).astype(np.int64)
        valid = gt != 11
        for c in range(11):
            inter[c] += ((pred == c) & (gt == c) & valid).sum()
            union[c] += (((pred == c) | (gt == c)) & valid).sum()
    expected = np.mean([i / u for i, u in zip(inter, union) if u > 0])
    assert res["miou"] == pytest.approx(expected, abs=1e-9)
    wrong = cli("eval", "--dataset", "camvid", "--root", root, "--classes", ",".join(reversed(names)),
                "--no-background", "--db", home, ok=False)
    assert wrong.exit_code == 1 and "order must match" in wrong.stderr


def test_inspect_sheets_and_traces(tinydb, tmp_path):
    data = json.loads(cli("inspect", "red box", "--parts", "--images", "--out", tmp_path, "--top", "3",
                          "--db", tinydb, "--json").stdout)
    prov = data["provenance"]
    assert prov["counts"]["part"] == 4 and prov["extractor"]["weights_hash"]
    assert prov["masks"] and "given" in prov["masks"] and prov["label"]["kind"] in ("thing", "stuff")
    png = PIL.Image.open(data["files"]["parts"]["png"])
    assert png.size == sheet_size(4, 3)
    trace = json.loads(Path(data["files"]["parts"]["json"]).read_text())
    db = protodb.open(tinydb)
    (summary,) = db.sets.resolve("red box")
    rows = db.sets.prototypes(summary, kinds=["part"])
    # recompute: each traced patch really is the nearest support patch to its part prototype
    inspector = db.inspector
    feats = {rec["id"]: f for rec, _, f in inspector.support_features(prov)}
    allf = np.concatenate([f.reshape(-1, f.shape[-1]).numpy() for f in feats.values()])
    for pid, entry in trace.items():
        vec = rows.vectors[rows.ids.index(pid)]
        best = float((allf @ vec).max())
        first = entry["nearest"][0]
        f = feats[first["image"]]
        y, x = first["patch"]
        assert float(f[y, x].numpy() @ vec) == pytest.approx(best, abs=1e-4)
        assert first["similarity"] == pytest.approx(best, abs=1e-3)
        assert db.stores.artifacts.exists(next(i["sha256"] for i in prov["images"] if i["id"] == first["image"]))
    assert Path(data["files"]["images"]["png"]).exists()


def test_vocab_commands_json(tinydb):
    v = json.loads(cli("vocab", "show", "scene", "--db", tinydb, "--json").stdout)
    assert v["classes"] == ["red box", "blue stripes"] and v["version"] == 1
    v = json.loads(cli("vocab", "add", "scene", "boat@1", "--db", tinydb, "--json").stdout)
    assert v["classes"][-1] == "boat@1" and v["version"] == 2
    v = json.loads(cli("vocab", "remove", "scene", "boat", "--db", tinydb, "--json").stdout)
    assert v["classes"] == ["red box", "blue stripes"] and v["version"] == 3
    listing = json.loads(cli("vocab", "list", "--db", tinydb, "--json").stdout)
    names = {r["name"]: r for r in listing}
    assert names["voc"]["classes"] == 20 and names["scene"]["builtin"] is False


@pytest.mark.slow
def test_demo_quick(tmp_path):
    pytest.importorskip("skimage")
    res = json.loads(cli("demo", "--out", tmp_path / "demo", "--quick", "--json").stdout)
    assert Path(res["out"], "report.md").exists()
    for seg in res["segment"]:
        for path in seg["files"].values():
            assert Path(path).exists()
    motorbike = next(s for s in res["segment"] if "motorcycle_right" in s["input"])
    assert motorbike["present"]["motorcycle"]["fraction"] > 0.15  # the held-out view is found
    assert "STAND-IN" in Path(res["out"], "report.md").read_text()


def test_prefilter_with_a_tiny_clip(tinydb, scenes, tmp_path):
    from protodb.models.tiny import build_tiny_clip

    folder = build_tiny_clip(tmp_path / "clip")
    res = json.loads(cli("segment", scenes / "val" / "s10.png", "--classes", "red box,blue stripes,boat",
                         "--clip-model", folder, "--out", tmp_path / "o", "--db", tinydb, "--json").stdout)
    meta = json.loads(Path(res["outputs"][0]["files"]["json"]).read_text())
    kept = meta["prefilter_kept"]
    assert res["settings"]["prefilter"] is True and kept and set(kept) <= {"red box", "blue stripes", "boat"}
    assert set(res["outputs"][0]["present"]) <= set(kept) | {"background"}
    off = json.loads(cli("segment", scenes / "val" / "s10.png", "--classes", "red box,blue stripes,boat",
                         "--clip-model", folder, "--no-prefilter", "--out", tmp_path / "o2", "--db", tinydb,
                         "--json").stdout)
    assert off["settings"]["prefilter"] is False


def test_extractor_add_registers_an_onnx_vit(tmp_path):
    from protodb.models.extractors import focus_onnx_path

    home = tmp_path / "db"
    onnx = focus_onnx_path()
    out = json.loads(cli("extractor", "add", "focus2", "--onnx", onnx, "--output-name",
                         "/backbone/layernorm/Add_1_output_0", "--input-size", "224", "--patch-size", "14",
                         "--db", home, "--json").stdout)
    import hashlib

    assert out["dim"] == 384 and out["weights_hash"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    listing = json.loads(cli("extractor", "list", "--db", home, "--json").stdout)
    mine = next(e for e in listing if e["name"] == "focus2")
    assert mine["kind"] == "onnx" and mine["config"]["mean"] == [0.485, 0.456, 0.406]
    assert "flip" not in mine["config"]
    cli("extractor", "add", "focus2-flip", "--onnx", onnx, "--output-name", "/backbone/layernorm/Add_1_output_0",
        "--input-size", "224", "--patch-size", "14", "--flip", "--db", home, "--json")
    listing = json.loads(cli("extractor", "list", "--db", home, "--json").stdout)
    flipped = next(e for e in listing if e["name"] == "focus2-flip")
    assert flipped["config"] == {**mine["config"], "flip": True}
    bad = cli("extractor", "add", "focus3", "--onnx", onnx, "--output-name", "no/such/tensor",
              "--input-size", "224", "--patch-size", "14", "--db", home, ok=False)
    assert bad.exit_code == 1 and len(bad.stderr.strip().splitlines()) == 1
    dup = cli("extractor", "add", "focus-vits14", "--onnx", onnx, "--output-name",
              "/backbone/layernorm/Add_1_output_0", "--input-size", "224", "--patch-size", "14",
              "--db", home, ok=False)
    assert dup.exit_code == 1 and "built-in" in dup.stderr


def test_builtin_vocabulary_keeps_its_classes_and_background_flag(tmp_path):
    home = tmp_path / "db"
    out = json.loads(cli("add-class", "car", "--preset", "tiny", "--images", "1", "-k", "2", "--vocab",
                         "camvid", "--db", home, "--json").stdout)
    assert out["vocab"] == "camvid"
    v = json.loads(cli("vocab", "show", "camvid", "--db", home, "--json").stdout)
    assert len(v["classes"]) == 11 and v["builtin"] is False and v["background"] is False


def test_add_vocab_skips_classes_that_have_prototypes(tmp_path):
    home = tmp_path / "db"
    cli("vocab", "create", "duo", "kite", "boat", "--db", home)
    first = json.loads(cli("add-class", "kite", "--preset", "tiny", "--images", "1", "-k", "2", "--db", home,
                           "--json").stdout)
    res = json.loads(cli("add-vocab", "duo", "--preset", "tiny", "--images", "1", "--db", home, "--json").stdout)
    assert res["already_built"] == ["kite"] and [c["name"] for c in res["classes"]] == ["boat"]
    assert protodb.open(home).sets.resolve("kite")[0].id == first["sets"][0]["id"]


def test_messages_are_not_read_as_markup(tmp_path):
    cli("init", "--db", tmp_path / "db")
    res = cli("label", "[ab]", "--db", tmp_path / "db", ok=False)
    assert "'[ab]'" in res.stderr and res.exit_code == 1


def test_prompt_with_unknown_fields_changes_nothing(tmp_path):
    home = tmp_path / "db"
    res = cli("add-class", "boat", "--preset", "tiny", "--images", "1", "--prompt", "a {style} photo of {name}",
              "--db", home, ok=False)
    assert res.exit_code == 1 and "{name}" in res.stderr
    assert protodb.open(home).info().classes == 0


def test_speed_presets_on_segment_and_add_class(tinydb, scenes, tmp_path):
    res = json.loads(cli("segment", scenes / "val" / "s10.png", "--vocab", "scene", "--no-background", "--speed", "fast",
                         "--dtype", "float32", "--out", tmp_path / "out", "--db", tinydb, "--json").stdout)
    (o,) = res["outputs"]
    settings = json.loads(Path(o["files"]["json"]).read_text())["settings"]
    assert settings["speed"] == "fast" and settings["dtype"] == "float32"
    assert settings["windows"]["sizes"] == [] and settings["windows"]["whole"] is True
    lab = np.asarray(PIL.Image.open(o["files"]["labels"]))
    assert (lab[:, :64] == 0).mean() > 0.8 and (lab[:, 64:] == 1).mean() > 0.8  # still tells the halves apart
    bad = cli("segment", scenes / "val" / "s10.png", "--vocab", "scene", "--speed", "turbo", "--db", tinydb, ok=False)
    assert bad.exit_code != 0 and "unknown speed preset 'turbo'" in bad.output
    built = json.loads(cli("add-class", "red box quick", "--preset", "tiny", "--images", "0", "--exemplars", scenes / "train",
                           "--masks", scenes / "trainannot", "--mask-value", 0, "-k", "4", "--speed", "fast",
                           "--dtype", "float32", "--db", tinydb, "--json").stdout)
    (made,) = built["sets"]
    assert made["version"] == 1 and not made["reused"]
    (pset,) = protodb.open(tinydb).sets.resolve("red box quick@1")
    (first,) = protodb.open(tinydb).sets.resolve("red box@1")
    assert first.config["support_windows"]["sizes"] == [448, 336]
    assert pset.config["support_windows"] == first.config["support_windows"]  # fast's support is best's: one db
