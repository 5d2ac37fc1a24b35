"""add-class end to end with the tiny preset (real diffusers pipeline, real timm ViT, real stores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from sqlalchemy import func, select

import protodb
from protodb.catalog.schema import (
    ClassRow,
    GenerationRunRow,
    GeneratorSpecRow,
    LabelRow,
    MaskRow,
    PrototypeSetRow,
    SupportImageRow,
)
from protodb.pipeline.generate import derive_seed
from tests.conftest import child_env, clean_env, cli
from tests.test_labels import llm_server  # noqa: F401 - the local chat-completions server

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def add_tiny(home, *extra, ok=True):
    res = cli("add-class", *extra, "--preset", "tiny", "--db", home, "--json", ok=ok)
    return json.loads(res.stdout) if ok else res


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny database with boat built from 4 generated images."""
    home = tmp_path_factory.mktemp("built") / "db"
    clean_env()
    out = add_tiny(home, "boat", "--images", "4")
    return home, out


def test_counts_per_kind(built):
    home, out = built
    (s,) = out["sets"]
    c = s["counts"]
    assert c["class"] == 1 and c["instance"] == 4
    assert 1 <= c["part"] <= 32 and c["bg_class"] == 1 and 1 <= c["bg_instance"] <= 4
    db = protodb.open(home)
    rows = db.sets.prototypes(db.sets.resolve("boat")[0])
    assert len(rows) == sum(c.values())
    for kind, n in c.items():
        assert rows.kinds.count(kind) == n
    np.testing.assert_allclose(np.linalg.norm(rows.vectors, axis=1), 1.0, atol=1e-4)
    # instance prototypes point at the set's support images, parts at a patch inside one
    assert {i for i, k in zip(rows.image_ids, rows.kinds) if k == "instance"} == set(s["images"])
    for k, img, reg in zip(rows.kinds, rows.image_ids, rows.regions):
        if k in ("part", "bg_part"):
            y0, x0, y1, x1 = reg
            assert img in s["images"] and (y1 - y0, x1 - x0) == (1, 1)


def test_provenance_rows(built):
    home, out = built
    db = protodb.open(home)
    with db.session() as s:
        spec = s.scalars(select(GeneratorSpecRow)).one()
        assert spec.name == "tiny" and spec.steps == 3 and spec.width == spec.height == 64
        assert spec.scheduler == "DPMSolverMultistepScheduler" and spec.revision
        assert spec.config["negative_prompt"].startswith("text, low quality")
        run = s.scalars(select(GenerationRunRow)).one()
        assert run.prompt == "a good picture of a boat" and run.base_seed == 0 and run.num_images == 4
        imgs = s.scalars(select(SupportImageRow).order_by(SupportImageRow.index_in_run)).all()
        assert [i.index_in_run for i in imgs] == [0, 1, 2, 3]
        assert [i.seed for i in imgs] == [derive_seed(0, "boat", i) for i in range(4)]
        assert all(i.source == "generated" and i.attention_sha256 for i in imgs)
        masks = s.scalars(select(MaskRow)).all()
        assert len(masks) == 8 and {m.role for m in masks} == {"foreground", "background"}
        assert all(m.method in ("ncut+attention", "attention-threshold") and "tau" in m.params for m in masks)
        label = s.scalars(select(LabelRow)).one()
        assert (label.kind, label.source) == ("thing", "lexicon")
        pset = s.scalars(select(PrototypeSetRow)).one()
        assert pset.params["preset"] == "tiny" and pset.protodb_version == protodb.__version__
        assert pset.extractor.weights_hash and pset.extractor.config["patch_size"] == 8


def test_artifacts_verified(built):
    home, _ = built
    db = protodb.open(home)
    report = db.verify()
    refs = db.integrity.referenced_artifacts()
    assert report.ok and report.artifacts_checked == len(refs) >= 4 + 4 + 2
    with db.session() as s:
        sha = s.scalars(select(SupportImageRow.artifact_sha256)).first()
    im = PIL.Image.open(db.stores.artifacts.local_path(sha))
    assert im.size == (64, 64) and im.mode == "RGB"


def test_same_config_twice_is_one_version_and_new_version_makes_another(built):
    home, first = built
    again = add_tiny(home, "boat", "--images", "4")
    assert again["sets"][0]["id"] == first["sets"][0]["id"] and again["sets"][0]["reused"]
    assert again["generated_images"] == 0 and again["reused_images"] == 4
    db = protodb.open(home)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(SupportImageRow)) == 4
    ls = json.loads(cli("ls", "--db", home, "--json").stdout)
    assert [v["version"] for v in ls[0]["versions"]] == [1]
    newer = add_tiny(home, "boat", "--images", "4", "--new-version")
    assert newer["sets"][0]["version"] == 2 and newer["generated_images"] == 0
    ls = json.loads(cli("ls", "--db", home, "--json").stdout)
    v = ls[0]["versions"]
    assert [x["version"] for x in v] == [1, 2] and v[0]["counts"] == v[1]["counts"]
    assert v[0]["images"] == 4 and v[0]["extractors"] == ["tiny-vit"]


def _snapshot(home: Path):
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*")
                   if p.is_file() and "models" not in p.parts and "cache" not in p.parts
                   and not p.name.startswith("catalog.sqlite"))
    return protodb.open(home).info(), files


@pytest.mark.parametrize("args,msg", [
    (["", "--images", "2"], "empty"),
    (["x" * 500, "--images", "2"], "limit is 200"),
    (["boat", "--extractor", "nope"], "unknown extractor 'nope'"),
    (["boat", "--images", "0"], "nothing to build from"),
    (["boat", "--images", "-1"], "--images must be >= 0"),
    (["boat", "--exemplars", "/no/such/folder"], "does not exist"),
    (["tray", "--images", "2", "--lexicon", "coco"], "unknown lexicon 'coco'"),
])
def test_bad_input_is_one_line_and_changes_nothing(built, args, msg):
    home, _ = built
    before = _snapshot(home)
    res = add_tiny(home, *args, ok=False)
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and msg in lines[0], res.stderr
    assert _snapshot(home) == before


def test_lexicon_option_labels_a_new_class_from_the_authors_table(built, monkeypatch):
    """``--lexicon ovdiff``: with no LLM, a class the authors call stuff (tray; a thing in protodb's list) is
    built as stuff and its label says which lexicon decided."""
    monkeypatch.delenv("PROTODB_LLM_BASE_URL", raising=False)
    home, _ = built
    res = add_tiny(home, "tray", "--images", "2", "--lexicon", "ovdiff")
    assert res["kind"] == "stuff" and res["label_source"] == "lexicon"
    hist = protodb.open(home).labels.history("tray").history
    assert [(h.kind, h.source, h.raw_answer) for h in hist] == [("stuff", "lexicon", "lexicon: ovdiff")]
    assert add_tiny(home, "plate", "--images", "2")["kind"] == "thing"  # the built-in list decides otherwise


def test_masks_matching_no_exemplar(built, tmp_path):
    home, _ = built
    ex, mk = tmp_path / "ex", tmp_path / "mk"
    ex.mkdir(), mk.mkdir()
    PIL.Image.new("RGB", (32, 32), "red").save(ex / "a.png")
    PIL.Image.new("L", (32, 32), 255).save(mk / "b.png")
    before = _snapshot(home)
    res = add_tiny(home, "kite", "--images", "0", "--exemplars", ex, "--masks", mk, ok=False)
    assert res.exit_code == 1 and "matches an exemplar" in res.stderr
    assert _snapshot(home) == before


def _synthetic_exemplars(folder: Path, masks: Path, n=3):
    """Images with a bright square object (label 7) on textured background (label 1)."""
    folder.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((96, 128, 3)) * 80).astype(np.uint8)
        lab = np.ones((96, 128), np.uint8)
        y, x = 20 + 5 * i, 30 + 7 * i
        img[y:y + 40, x:x + 40] = (220, 40 + 30 * i, 40)
        lab[y:y + 40, x:x + 40] = 7
        PIL.Image.fromarray(img).save(folder / f"im{i}.jpg", quality=95)
        PIL.Image.fromarray(lab).save(masks / f"im{i}.png")


def test_exemplars_with_label_maps(home, tmp_path):
    _synthetic_exemplars(tmp_path / "ex", tmp_path / "lab")
    out = add_tiny(home, "box", "--images", "0", "--exemplars", tmp_path / "ex",  # background is label 1 here
                   "--masks", tmp_path / "lab", "--mask-value", "7", "--bg-value", "1", "-k", "4")
    (s,) = out["sets"]
    assert out["exemplar_images"] == 3 and out["generated_images"] == 0
    assert s["counts"]["instance"] == 3 and s["counts"]["part"] == 4 and s["counts"]["bg_instance"] == 3
    db = protodb.open(home)
    with db.session() as sess:
        rows = sess.scalars(select(SupportImageRow)).all()
        assert {r.origin for r in rows} == {"im0.jpg", "im1.jpg", "im2.jpg"}
        assert all(r.source == "exemplar" and r.seed is None for r in rows)
        masks = sess.scalars(select(MaskRow).where(MaskRow.role == "foreground")).all()
        assert {m.method for m in masks} == {"given"}
        # the stored foreground mask is the given one: the object square
        fg = np.asarray(PIL.Image.open(db.stores.artifacts.local_path(masks[0].artifact_sha256))) > 127
        assert fg.shape == (96, 128) and 0.05 < fg.mean() < 0.25


def _cluttered_exemplars(folder: Path, masks: Path) -> np.ndarray:
    """Two photos: the class (label 7) beside another labelled object (label 3) on background (1).
    Returns the first label map."""
    folder.mkdir(), masks.mkdir()
    rng = np.random.default_rng(3)
    first = None
    for i in range(2):
        img = (rng.random((96, 128, 3)) * 80).astype(np.uint8)
        lab = np.ones((96, 128), np.uint8)
        img[20:60, 10:50], lab[20:60, 10:50] = (220, 60, 40), 7
        img[30:80, 70:120], lab[30:80, 70:120] = (40, 200, 60), 3
        PIL.Image.fromarray(img).save(folder / f"c{i}.png")
        PIL.Image.fromarray(lab).save(masks / f"c{i}.png")
        first = lab if first is None else first
    return first


def _background_mask(home, origin: str) -> tuple[np.ndarray, dict]:
    """The newest stored pixel background mask of support image ``origin`` and its mask params."""
    db = protodb.open(home)
    with db.session() as s:
        image = s.scalars(select(SupportImageRow).where(SupportImageRow.origin == origin)).one()
        bg = s.scalars(select(MaskRow).where(MaskRow.image_id == image.id, MaskRow.role == "background")
                       .order_by(MaskRow.created_at.desc())).first()
        return np.asarray(PIL.Image.open(db.stores.artifacts.local_path(bg.artifact_sha256))) > 127, bg.params


@pytest.mark.slow
def test_exemplar_background_is_only_labelled_background(home, tmp_path):
    """Item 6a of the fidelity issue: with label maps, another labelled object is never background;
    'none' takes the rest of the image; the class's own value is never its background;
    --no-exemplar-background gives no background prototypes."""
    lab = _cluttered_exemplars(tmp_path / "ex", tmp_path / "lab")
    base = ["--images", "0", "--exemplars", tmp_path / "ex", "--masks", tmp_path / "lab", "--mask-value", "7",
            "-k", "2"]
    out = add_tiny(home, "box", *base, "--bg-value", "1")
    assert out["sets"][0]["counts"]["bg_instance"] == 2
    bg, params = _background_mask(home, "c0.png")
    assert params["background"] == "labelled background"
    assert bg[lab == 1].all() and not bg[lab == 3].any() and not bg[lab == 7].any()

    out = add_tiny(home, "box", *base, "--bg-value", "none")  # the old rule: every other label
    assert out["sets"][0]["version"] == 2  # another background, another config
    config = protodb.open(home).sets.resolve("box@2")[0].config
    assert config["masks"]["bg_value"] is None
    bg, params = _background_mask(home, "c0.png")
    assert params["background"] == "rest of the image" and bg[lab == 3].all() and not bg[lab == 7].any()

    out = add_tiny(home, "box", *base, "--bg-value", "7")  # the class's own value: same as 'none'
    assert out["sets"][0]["version"] == 2 and out["sets"][0]["reused"]

    out = add_tiny(home, "box", *base, "--bg-value", "1", "--no-exemplar-background")
    assert out["sets"][0]["counts"].get("bg_instance", 0) == 0 and out["sets"][0]["counts"].get("bg_part", 0) == 0
    assert protodb.open(home).sets.resolve("box@3")[0].config["masks"]["exemplar_background"] is False

    before = _snapshot(home)
    res = add_tiny(home, "box", *base, "--bg-value", "sky", ok=False)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and "--bg-value must be a label value" in lines[0]
    assert _snapshot(home) == before


def test_exemplars_without_masks_and_mixed_with_generated(home, tmp_path):
    _synthetic_exemplars(tmp_path / "ex", tmp_path / "lab")
    out = add_tiny(home, "box", "--images", "2", "--exemplars", tmp_path / "ex", "-k", "4")
    assert out["exemplar_images"] == 3 and out["generated_images"] == 2
    assert out["sets"][0]["counts"]["class"] == 1 and len(out["sets"][0]["images"]) == 5
    db = protodb.open(home)
    with db.session() as s:
        methods = {m.method for m in s.scalars(select(MaskRow))}
    assert "ncut+border" in methods


def test_features_are_cached_by_content(home, tmp_path):
    _synthetic_exemplars(tmp_path / "ex", tmp_path / "lab")
    add_tiny(home, "box", "--images", "0", "--exemplars", tmp_path / "ex", "--masks", tmp_path / "lab",
             "--mask-value", "7", "-k", "2")
    cache = list((home / "cache" / "features").rglob("*.safetensors"))
    assert len(cache) == 3
    stamps = {p: p.stat().st_mtime_ns for p in cache}
    add_tiny(home, "background stuff", "--images", "0", "--exemplars", tmp_path / "ex", "--masks",
             tmp_path / "lab", "--mask-value", "1", "-k", "2")
    cache2 = list((home / "cache" / "features").rglob("*.safetensors"))
    assert len(cache2) == 3 and {p: p.stat().st_mtime_ns for p in cache2} == stamps


def test_stuff_override_and_label_history(home):
    out = add_tiny(home, "grass", "--images", "1", "--thing")
    assert out["kind"] == "thing" and out["label_source"] == "manual"
    hist = json.loads(cli("label", "grass", "--stuff", "--db", home, "--json").stdout)
    assert hist["kind"] == "stuff" and [h["kind"] for h in hist["history"]] == ["thing", "stuff"]
    ls = json.loads(cli("ls", "--db", home, "--json").stdout)
    assert ls[0]["kind"] == "stuff"


def test_llm_label_recorded(home, monkeypatch, llm_server):
    llm_server.answer = "Stuff."
    monkeypatch.setenv("PROTODB_LLM_BASE_URL", llm_server.base_url)
    monkeypatch.setenv("PROTODB_LLM_MODEL", "local-test-model")
    out = add_tiny(home, "sea", "--images", "1")
    assert out["kind"] == "stuff" and out["label_source"] == "llm"
    hist = json.loads(cli("label", "sea", "--db", home, "--json").stdout)["history"]
    assert hist[0]["model"] == "local-test-model" and hist[0]["raw_answer"] == "Stuff."
    assert "sea" in hist[0]["prompt"]


KILLER = """
import sys, time
import protodb.pipeline.support as support
from protodb_cli.main import main
_generate = support.generate
def paced(*args, **kwargs):  # at most one image per 0.5 s: the parent kills mid-run on a fast machine too
    for image in _generate(*args, **kwargs):
        time.sleep(0.5)
        yield image
support.generate = paced
sys.argv = ["protodb", "add-class", "boat", "--preset", "tiny", "--images", "8", "--batch-size", "2",
            "--db", sys.argv[1], "--quiet"]
main()
"""


@pytest.mark.slow
def test_resume_after_sigkill(home):
    home.mkdir(parents=True)
    protodb.open(home).close()
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(home)], env=env)
    db = protodb.open(home)
    deadline = time.time() + 300
    n = 0
    while n < 2:
        assert proc.poll() is None, "add-class finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
        with db.session() as s:
            n = s.scalar(select(func.count()).select_from(SupportImageRow))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with db.session() as s:
        kept = s.scalar(select(func.count()).select_from(SupportImageRow))
    assert 2 <= kept < 8 and db.info().prototype_sets == 0
    out = add_tiny(home, "boat", "--images", "8", "--batch-size", "2")
    assert out["reused_images"] == kept and out["generated_images"] == 8 - kept
    with db.session() as s:
        rows = s.scalars(select(SupportImageRow.index_in_run)).all()
    assert sorted(rows) == list(range(8))
    assert db.verify().ok and db.info().prototype_sets == 1


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.exists(), reason="CamVid photos not present at ../shared/data/camvid")
def test_camvid_exemplars_through_real_onnx_dinov2(home, tmp_path):
    ex, lab = tmp_path / "ex", tmp_path / "lab"
    ex.mkdir(), lab.mkdir()
    names = sorted(p.name for p in (CAMVID / "train").iterdir())[:4]
    for n in names:  # symlinks: the photos are read in place, never copied into the project
        (ex / n).symlink_to(CAMVID / "train" / n)
        (lab / n).symlink_to(CAMVID / "trainannot" / n)
    out = json.loads(cli("add-class", "car", "--images", "0", "--exemplars", ex, "--masks", lab,
                         "--mask-value", "8", "--extractor", "focus-vits14", "--db", home, "--json").stdout)
    (s,) = out["sets"]
    assert s["extractor"] == "focus-vits14" and s["counts"]["class"] == 1
    cars = sum(int((np.asarray(PIL.Image.open(lab / n)) == 8).any()) for n in names)
    assert s["counts"]["instance"] <= cars and s["counts"]["part"] == 32
    pdb = protodb.open(home)
    rows = pdb.sets.prototypes(pdb.sets.get(s["id"]))
    assert rows.vectors.shape[1] == 384


def test_object_segment_prefers_the_segment_off_the_border():
    from protodb.pipeline.support_masks import object_segment

    frame = np.zeros((10, 12), bool)
    frame[0, :] = frame[-1, :] = frame[:, 0] = frame[:, -1] = True  # touches every border
    obj = np.zeros((10, 12), bool)
    obj[3:7, 4:9] = True  # in the middle
    assert (object_segment([frame, obj], (10, 12)) == obj).all()
    tiny = np.zeros((10, 12), bool)
    tiny[5, 5] = True  # below the minimum area: never the object
    rest = ~tiny
    assert not object_segment([tiny], (10, 12))[5, 5]
    assert object_segment([tiny], (10, 12)).sum() in (0, rest.sum())


def test_missing_generator_weights_change_nothing(built, monkeypatch):
    home, _ = built
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(home.parent / "empty-hub-cache"))
    before = _snapshot(home)
    res = cli("add-class", "ship", "--images", "2", "--extractor", "focus-vits14", "--db", home, ok=False)
    assert res.exit_code == 1 and "stable-diffusion-v1-5" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert _snapshot(home) == before


RACER = """
import sys
from protodb_cli.main import main
sys.argv = ["protodb", "add-class", "zebra", "--preset", "tiny", "--images", "2", "-k", "4", "--db", sys.argv[1], "-q"]
main()
"""


@pytest.mark.slow
def test_two_add_class_runs_of_a_new_class_at_once(home):
    home.mkdir(parents=True)
    protodb.open(home).close()
    add_tiny(home, "warmup", "--images", "1", "-k", "2")  # builds the tiny models once
    env = child_env()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(home)], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    db = protodb.open(home)
    (cls,) = [c for c in db.sets.ls() if c.name == "zebra"]
    assert cls.versions and all(v.status == "ready" for v in cls.versions)
    with db.session() as s:
        zid = s.scalar(select(ClassRow.id).where(ClassRow.name == "zebra"))
        idx = s.scalars(select(SupportImageRow.index_in_run).where(SupportImageRow.class_id == zid)).all()
    assert sorted(idx) == [0, 1]  # both runs share the generated images: none stored twice
    assert db.verify().ok and db.info().pending_sets == 0


PLUGIN = '''
import os
import numpy as np

name = "cutlike"


def available():
    return os.path.isfile(os.environ.get("CUTLIKE_CHECKPOINT", "/nonexistent"))


def params():
    return {"checkpoint": os.path.basename(os.environ["CUTLIKE_CHECKPOINT"])}


def segment(image, grid):
    h, w = grid
    m = np.zeros(grid, bool)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True  # "the object is in the middle"
    return [m]
'''


def _install_plugin(site):
    """A segmenter plugin installed the way pip would: a module + dist-info with an entry point."""
    site.mkdir()
    (site / "cutlike_plugin.py").write_text(PLUGIN)
    info = site / "cutlike_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cutlike-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[protodb.segmenters]\ncutlike = cutlike_plugin\n")


def test_segmenter_plugin_is_used_only_with_its_checkpoint(home, tmp_path, monkeypatch):
    _install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _synthetic_exemplars(tmp_path / "ex", tmp_path / "lab")
    out = add_tiny(home, "box", "--images", "0", "--exemplars", tmp_path / "ex", "-k", "2")
    db = protodb.open(home)
    with db.session() as s:
        assert {m.method for m in s.scalars(select(MaskRow))} == {"ncut+border"}  # no checkpoint: ncut
    ckpt = tmp_path / "model_final.pth"
    ckpt.write_bytes(b"weights")
    monkeypatch.setenv("CUTLIKE_CHECKPOINT", str(ckpt))
    again = add_tiny(home, "box", "--images", "0", "--exemplars", tmp_path / "ex", "-k", "2")
    assert again["sets"][0]["version"] == 2  # another segmenter is another configuration
    with db.session() as s:
        rows = s.scalars(select(MaskRow).where(MaskRow.method == "cutlike+border",
                                               MaskRow.role == "foreground")).all()
        assert len(rows) == 3 and rows[0].params["cutlike"] == {"checkpoint": "model_final.pth"}
        fg = np.asarray(PIL.Image.open(db.stores.artifacts.local_path(rows[0].artifact_sha256))) > 127
    h, w = fg.shape
    assert fg[h // 2, w // 2] and not fg[2, 2]  # the plugin's central proposal became the foreground
    before = _snapshot(home)
    bad = add_tiny(home, "kite", "--images", "0", "--exemplars", tmp_path / "ex", "--segmenter", "nope", ok=False)
    assert bad.exit_code == 1 and "unknown segmenter 'nope'" in bad.stderr and _snapshot(home) == before


def test_a_broken_plugin_is_skipped_and_logged_with_its_error(home, tmp_path, monkeypatch, caplog):
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_plugin.py").write_text("raise ImportError('needs detectron2')\n")
    info = site / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[protodb.segmenters]\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    from protodb.pipeline import segmenters

    with caplog.at_level("WARNING", logger="protodb.pipeline.segmenters"):
        assert segmenters.choose("auto") is None  # the built-in ncut, not a crash
    assert "broken" in caplog.text and "needs detectron2" in caplog.text
    _synthetic_exemplars(tmp_path / "ex", tmp_path / "lab")
    quiet = cli("add-class", "box", "--images", "0", "--exemplars", tmp_path / "ex", "-k", "2", "--preset", "tiny",
                "--db", home)
    assert "needs detectron2" not in quiet.stderr  # silent by default
    loud = cli("-v", "add-class", "box", "--images", "0", "--exemplars", tmp_path / "ex", "-k", "2",
               "--preset", "tiny", "--db", home)
    assert "broken" in loud.stderr and "needs detectron2" in loud.stderr  # shown with -v


def test_default_parts_keep_the_papers_ratio(home):
    """K defaults to 32 per 64 support images, never below 32 (resolved before anything is written and
    recorded in the build config); an explicit -k is taken as given."""
    from protodb.pipeline.config import AddClassRequest, parts_for

    assert [parts_for(n) for n in (0, 4, 64, 65, 100, 123, 640)] == [32, 32, 32, 32, 50, 62, 320]
    builder = protodb.open(home).builder(preset="tiny")
    assert builder.resolve(AddClassRequest("boat", images=100)).config.k == 50
    assert builder.resolve(AddClassRequest("boat", images=4)).config.k == 32
    assert builder.resolve(AddClassRequest("boat", images=100, k=7)).config.k == 7
    assert protodb.open(home).info().prototype_sets == 0
