"""Scale-out on Ray (issue 11), with a real local Ray instance (2 CPUs, no dashboard), the real PostgreSQL
on 127.0.0.1 and the moto S3 server (tests/conftest.py):

- a 6-class tiny vocabulary built through Ray on the live database (PostgreSQL + S3) equals the one
  built in one process: same sets (support images, config, counts, vectors), one version each;
- a worker SIGKILLed mid-run: every class is still built exactly once, no pending set is left;
- a driver SIGKILLed mid-run and started again: every class built exactly once;
- a folder segmented through Ray Data equals the single-process labels pixel for pixel (and JSON),
  bad inputs are reported, finished inputs are skipped on a re-run unless --overwrite;
- without --ray, Ray is never imported; --dry-run plans without starting anything.

The multi-node refusal needs a second Ray node and lives in tests/test_ray_cluster.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from sqlalchemy import select

import protodb
from protodb.catalog.schema import SET_PENDING, PrototypeSetRow, SupportImageRow
from protodb.segment.options import SegmentOptions
from tests.conftest import cli

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "boat", "car", "tree", "bird"]
BUILD = ["--preset", "tiny", "--images", "4", "--batch-size", "2", "-q"]  # 2 generation shards per class
RAY = ["--ray", "local", "--shard-size", "2"]


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """One private local Ray per module: the --ray local runs of this module join it."""
    for var in ("PROTODB_CATALOG_URL", "PROTODB_HOME", "PROTODB_LLM_BASE_URL", "PROTODB_CLIP_MODEL"):
        os.environ.pop(var, None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """The tiny preset's models, built once and copied into every test home (they are deterministic)."""
    home = tmp_path_factory.mktemp("models") / "db"
    reg = protodb.open(home).registry("tiny")
    reg.generator_spec("tiny")
    reg.extractor_spec("tiny-vit")
    return home / "models"


def new_home(path: Path, models: Path) -> Path:
    shutil.copytree(models, path / "models")
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_models) -> Path:
    """The reference: vocabulary 'six' built in one process (SQLite, local folders), with one intra-op
    thread like each Ray worker here (Ray sets OMP_NUM_THREADS to a worker's CPUs, 1 on 2 cores): on
    some CPUs float reductions, and so the generated images' bytes, depend on the thread count."""
    home = new_home(tmp_path_factory.mktemp("single") / "db", tiny_models)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli("vocab", "create", "six", *CLASSES, "--db", home, "-q")
        cli("add-vocab", "six", *BUILD, "--db", home)
    finally:
        torch.set_num_threads(threads)
    return home


def snapshot(db) -> dict:
    """Per class: its ready sets as (support images, config without the home-dependent model path,
    counts, vectors)."""
    out = {}
    for c in db.sets.ls():
        sets = []
        for s in db.sets.resolve(c.name):
            config = json.loads(json.dumps(s.config))
            config["generation"]["generator"].pop("model_id")  # the tiny generator's folder in each home
            rows = db.sets.prototypes(s)
            sets.append((tuple(config["support"]), json.dumps(config, sort_keys=True), s.counts,
                         rows.vectors.round(6).tobytes()))
        out[c.name] = (len(c.versions), sets)
    return out


def pending_rows(db) -> list:
    with db.session() as s:
        return list(s.scalars(select(PrototypeSetRow).where(PrototypeSetRow.status == SET_PENDING)))


def assert_built_once(db, classes) -> None:
    listed = {c.name: [v.version for v in c.versions] for c in db.sets.ls()}
    assert listed == {c: [1] for c in classes}, listed
    for c in classes:
        assert len(db.sets.resolve(c)) == 1
    assert pending_rows(db) == []
    assert db.verify().ok


def live_database(tmp_path: Path, pg_url: str, s3: dict, models: Path) -> Path:
    home = new_home(tmp_path / "live", models)
    prefix = f"s3://{s3['bucket']}/ray-{uuid.uuid4().hex[:8]}"
    cli("init", "--db", home, "--catalog", pg_url, "--vectors", f"{prefix}/vectors", "--artifacts",
        f"{prefix}/artifacts", "-q")
    return home


# ================================================================================ equality
@pytest.mark.slow
def test_vocabulary_built_through_ray_equals_single_process(single, tiny_models, pg_url, s3, tmp_path):
    home = live_database(tmp_path, pg_url, s3, tiny_models)
    db_args = ["--db", home, "--catalog", pg_url]
    cli("vocab", "create", "six", *CLASSES, *db_args, "-q")
    plan = json.loads(cli("add-vocab", "six", *BUILD, *RAY, *db_args, "--dry-run", "--json").stdout)
    assert plan["classes"] == CLASSES and plan["images"] == 24
    assert plan["tasks"] == {"generation_shards": 12, "class_builds": 6}
    assert plan["estimate"]["seconds"] == round(24 * plan["estimate"]["seconds_per_image"], 1) > 0
    res = json.loads(cli("add-vocab", "six", *BUILD, *RAY, *db_args, "--json").stdout)
    assert [c["name"] for c in res["classes"]] == CLASSES and res["failed"] == []
    assert all(c["generated_images"] + c["reused_images"] == 4 for c in res["classes"])
    live = protodb.open(home, catalog_url=pg_url)
    assert live.stores.vectors_uri.startswith("s3://") and live.stores.artifacts_uri.startswith("s3://")
    assert snapshot(live) == snapshot(protodb.open(single))
    assert_built_once(live, CLASSES)
    assert not (home / "vectors").exists() and not (home / "artifacts").exists()  # the workers wrote to S3
    again = json.loads(cli("add-vocab", "six", *BUILD, *RAY, *db_args, "--json").stdout)  # nothing to do
    assert again["classes"] == [] and again["already_built"] == CLASSES
    # photos on S3 segmented into S3 through Ray Data label like the single-process database
    import s3fs

    fs = s3fs.S3FileSystem()
    photos = _photos(tmp_path / "photos")
    names = ["im0.png", "im3.png", "broken.png", "sub/deep.jpg"]
    imgs = f"{s3['bucket']}/imgs-{uuid.uuid4().hex[:8]}"
    for name in names:
        fs.put_file(str(photos / name), f"{imgs}/{name}")
    out = f"s3://{s3['bucket']}/labels-{uuid.uuid4().hex[:8]}"
    inputs = [f"s3://{imgs}/*.png", f"s3://{imgs}/**/*.jpg"]
    res = cli("segment", *inputs, "--vocab", "six", *db_args, "--out", out, "--ray", "local", "--json", ok=False)
    assert res.exit_code == 3, (res.stdout, res.stderr)
    report = json.loads(res.stdout)
    assert [f["input"] for f in report["failed"]] == [f"s3://{imgs}/broken.png"]
    ref = protodb.open(single).segment([photos / n for n in names if n != "broken.png"],
                                       SegmentOptions(vocab="six"), tmp_path / "ref")
    assert len(report["outputs"]) == len(ref.outputs) == 3
    for mine, theirs in zip(report["outputs"], ref.outputs):
        assert mine["files"]["labels"].startswith(out) and mine["present"] == theirs.present
        with fs.open(mine["files"]["labels"], "rb") as f:
            np.testing.assert_array_equal(np.asarray(PIL.Image.open(f)),
                                          np.asarray(PIL.Image.open(theirs.files["labels"])))
    plan = json.loads(cli("segment", *inputs, "--vocab", "six", *db_args, "--out", out, "--ray", "local",
                          "--dry-run", "--json").stdout)  # a re-run would only retry the broken photo
    assert plan["to_segment"] == [f"s3://{imgs}/broken.png"] and len(plan["skipped"]) == 3


# ================================================================================ faults
def _worker_pids(title: str = "ray::BuildWorker") -> dict[int, str]:
    """pid -> process title of this machine's Ray build workers (Ray titles them ray::Class.method)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(title):
                out[int(entry.name)] = cmd
    return out


def _stored_images(db) -> int:
    with db.session() as s:
        return len(s.scalars(select(SupportImageRow.id)).all())


@pytest.mark.slow
def test_sigkilled_worker_mid_run_still_builds_every_class_once(tiny_models, pg_url, tmp_path):
    from protodb.distributed.build import RayExecutor
    from protodb.pipeline.config import AddClassRequest
    from protodb.runners import RayOptions

    classes = CLASSES[:4]
    home = new_home(tmp_path / "db", tiny_models)
    db = protodb.open(home, catalog_url=pg_url)
    reqs = [AddClassRequest(c, images=4, batch_size=2) for c in classes]
    out: dict = {}
    run = threading.Thread(target=lambda: out.update(zip(("results", "failed"), RayExecutor(
        db.services, "tiny", RayOptions("local", shard_size=2)).run(reqs))))
    run.start()
    killed, seen = None, set()
    deadline = time.monotonic() + 180
    while run.is_alive() and time.monotonic() < deadline:
        workers = _worker_pids()
        seen |= set(workers)
        busy = {pid: t for pid, t in workers.items() if "." in t}  # ray::BuildWorker.shard() / .build()
        if killed is None and busy and _stored_images(db) >= 2:
            killed = sorted(busy)[0]
            print("killing", killed, busy[killed])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    run.join(timeout=60)
    assert killed is not None, "no worker was busy to be killed"
    assert not run.is_alive()
    assert len(seen) > 2  # Ray started a worker in place of the killed one
    assert [r.name for r in out["results"]] == classes and out["failed"] == []
    assert killed not in _worker_pids()
    assert_built_once(db, classes)
    with db.session() as s:  # every image drawn once: (run, index) unique, nothing duplicated
        assert len(s.scalars(select(SupportImageRow.id)).all()) == 4 * len(classes)


DRIVER = [str(Path(sys.executable).parent / "protodb"), "add-vocab", "three", *BUILD, *RAY]


@pytest.mark.slow
def test_sigkilled_driver_started_again_builds_every_class_once(tiny_models, pg_url, tmp_path):
    classes = CLASSES[:3]
    bad = " ".join(["zq"] * 60)  # its prompt is over the text encoder's 77 tokens: this class always fails
    home = new_home(tmp_path / "db", tiny_models)
    db_args = ["--db", str(home), "--catalog", pg_url]
    cli("vocab", "create", "three", *classes, bad, *db_args, "-q")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROTODB_", "RAY_"))}
    first = subprocess.Popen(DRIVER + db_args, env=env, cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = protodb.open(home, catalog_url=pg_url)
    try:
        deadline = time.monotonic() + 150
        while first.poll() is None and time.monotonic() < deadline and not db.sets.ls():
            time.sleep(0.2)  # kill it once the first class is ready, the others under way
        built_before = len(db.sets.ls())
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _kill_group_later(first.pid)
    assert 1 <= built_before < len(classes)
    second = subprocess.run(DRIVER + db_args + ["--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 3, second.stderr[-2000:]  # the bad class failed, the others are built
    res = json.loads(second.stdout)
    assert len(res["already_built"]) >= built_before
    assert sorted(res["already_built"] + [c["name"] for c in res["classes"]]) == sorted(classes)
    assert [f["name"] for f in res["failed"]] == [bad] and "77 tokens" in res["failed"][0]["error"]
    assert f"error: {bad}: prompt" in second.stderr
    assert_built_once(db, classes)


def _kill_group_later(pgid: int) -> None:
    """Ray's helper agents of the killed driver outlive it: end its process group (ours) after a while."""
    time.sleep(3)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ================================================================================ segmentation
def _photos(folder: Path) -> Path:
    rng = np.random.default_rng(7)
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        img = (rng.random((48 + 8 * i, 64, 3)) * 80).astype(np.uint8)
        img[:, : 20 + 4 * i] += np.array([150, 40, 20], np.uint8)
        PIL.Image.fromarray(img).save(folder / f"im{i}.png")
    PIL.Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(folder / "sub" / "deep.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


SINGLE_SEGMENT = textwrap.dedent("""
    import json, sys
    from typer.testing import CliRunner
    from protodb_cli.main import app
    r = CliRunner().invoke(app, sys.argv[1:])
    home = sys.argv[sys.argv.index("--db") + 1]
    plan = CliRunner().invoke(app, ["add-vocab", "six", "--preset", "tiny", "--dry-run", "--db", home])
    assert plan.exit_code == 0, plan.output
    assert "ray" not in sys.modules, "the single-process path imported ray"
    print(json.dumps({"code": r.exit_code, "stdout": r.stdout}))
""")


@pytest.mark.slow
def test_folder_through_ray_data_equals_single_process_pixel_for_pixel(single, tmp_path):
    photos = _photos(tmp_path / "photos")
    inputs = [str(photos), str(photos / "**" / "*.jpg")]
    common = ["--vocab", "six", "--db", str(single), "--json"]
    ref = subprocess.run([sys.executable, "-c", SINGLE_SEGMENT, "segment", *inputs, *common, "--out",
                          str(tmp_path / "one")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ref.returncode == 0, ref.stderr[-2000:]
    one = json.loads(ref.stdout)
    assert one["code"] == 3
    one = json.loads(one["stdout"])
    res = cli("segment", *inputs, *common, "--out", tmp_path / "many", "--ray", "local", "--batch-size", "2", ok=False)
    assert res.exit_code == 3, (res.stdout, res.stderr)  # the broken input failed, the others were written
    many = json.loads(res.stdout)
    assert [o["input"] for o in many["outputs"]] == [o["input"] for o in one["outputs"]] and len(many["outputs"]) == 6
    assert many["failed"] == one["failed"] and "broken.png" in many["failed"][0]["error"]
    assert many["vocabulary"] == one["vocabulary"] and many["settings"] == one["settings"]
    for a, b in zip(one["outputs"], many["outputs"]):
        assert a["present"] == b["present"]
        assert set(a["files"]) == set(b["files"]) and all(Path(f).is_file() for f in b["files"].values())
        la, lb = np.asarray(PIL.Image.open(a["files"]["labels"])), np.asarray(PIL.Image.open(b["files"]["labels"]))
        np.testing.assert_array_equal(la, lb)  # pixel for pixel
        assert Path(a["files"]["json"]).read_text() == Path(b["files"]["json"]).read_text()
    assert Path(many["outputs"][-1]["files"]["labels"]).parent.name == "sub"  # relative paths mirrored
    # a re-run skips what is done (here: everything but the broken photo, left out, so no worker starts)
    stamps = {f: Path(f).stat().st_mtime_ns for o in many["outputs"] for f in o["files"].values()}
    good = [o["input"] for o in one["outputs"]]
    again = json.loads(cli("segment", *good, *common, "--out", tmp_path / "many", "--ray", "local").stdout)
    assert again["skipped"] == good and again["outputs"] == [] and again["failed"] == []
    assert {f: Path(f).stat().st_mtime_ns for f in stamps} == stamps  # untouched
    # a plan of the full inputs: only the broken photo is left; --overwrite would redo everything
    for flags, todo in (([], [str(photos / "broken.png")]), (["--overwrite"], [o["input"] for o in one["outputs"]])):
        plan = json.loads(cli("segment", *inputs, *common, "--out", tmp_path / "many", "--ray", "local",
                              "--dry-run", *flags).stdout)
        assert sorted(plan["to_segment"]) == sorted(todo + ([str(photos / "broken.png")] if flags else []))


def test_options_that_need_ray_are_refused_without_it(single, tmp_path):
    res = cli("segment", tmp_path, "--vocab", "six", "--db", single, "--concurrency", "2", ok=False)
    assert res.exit_code == 1 and "--concurrency only apply with --ray" in res.stderr
    res = cli("add-vocab", "six", "--db", single, "--workers", "2", "--preset", "tiny", ok=False)
    assert res.exit_code == 1 and "--workers only apply with --ray" in res.stderr
    plan = json.loads(cli("add-vocab", "six", "--db", single, "--preset", "tiny", "--dry-run", "--json").stdout)
    assert plan["classes"] == [] and plan["already_built"] == CLASSES and plan["ray"] is None


def test_batched_path_of_the_actor_equals_one_by_one(single, tmp_path):
    """What a CUDA actor runs (images decoded in threads, extractor calls batched across images), forced on
    CPU in float32: the same labels and files as segmenting one image at a time."""
    from protodb.distributed.segment import SegmentWorker
    from protodb.segment.inputs import stems_of
    from protodb.segment.outputs import OutputWriter

    photos = _photos(tmp_path / "photos")
    paths = sorted(str(p) for p in photos.glob("*.png"))
    worker = SegmentWorker(str(single), protodb.open(single).catalog_url,
                           SegmentOptions(vocab="six", dtype="float32"), str(tmp_path / "out"))
    worker.seg.batches = True
    stems = stems_of(paths)
    rows = worker({"path": np.array(paths), "stem": np.array([stems[p] for p in paths])})
    assert rows["input"] == paths
    broken = paths.index(str(photos / "broken.png"))
    assert "broken.png" in rows["error"][broken] and sum(bool(e) for e in rows["error"]) == 1
    seg = worker.seg
    good = [p for i, p in enumerate(paths) if i != broken]
    images = [PIL.Image.open(p).convert("RGB") for p in good]
    reference = OutputWriter(tmp_path / "ref", seg.support_crop)
    for p, im, res in zip(good, images, seg.segment_many(images, good)):
        one = seg.segment(im, p)
        np.testing.assert_array_equal(res.labels, one.labels)
        assert res.present == one.present
        files = json.loads(rows["output"][paths.index(p)])["files"]
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(files["labels"])),
                                      np.asarray(PIL.Image.open(reference.write(one, stems[p])["labels"])))


def test_worker_shape_and_shards():
    from protodb.distributed.cluster import Cluster, worker_shape
    from protodb.planning import shards_of
    from protodb.errors import InvalidInput

    gpu = Cluster("auto", False, nodes=2, cpus=32, gpus=4)
    assert worker_shape(gpu, workers=None, gpus=None, cpus=None).to_dict() == \
        {"workers": 4, "cpus_per_worker": 1.0, "gpus_per_worker": 1.0}  # default: one GPU per task
    assert worker_shape(gpu, workers=None, gpus=0.5, cpus=None).workers == 8  # a small extractor shares a GPU
    assert worker_shape(gpu, workers=16, gpus=1, cpus=None).workers == 4  # no more than fit
    cpu = Cluster("local", False, nodes=1, cpus=2, gpus=0)
    assert worker_shape(cpu, workers=None, gpus=None, cpus=None).to_dict() == \
        {"workers": 2, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0}
    assert worker_shape(cpu, workers=1, gpus=None, cpus=None).cpus == 2.0  # one worker gets every core
    with pytest.raises(InvalidInput, match="has none"):
        worker_shape(cpu, workers=None, gpus=1, cpus=None)
    assert shards_of(4, 2, 2) == [[0, 1], [2, 3]]
    assert shards_of(10, 3, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # whole generator batches
    assert shards_of(64, 64, 4) == [] and shards_of(0, 16, 4) == []  # one shard: the class task draws them


def test_worker_threads_follow_the_cpus_ray_assigned():
    """A Ray worker runs torch with as many threads as CPUs Ray gave it (two 1-CPU workers on 2 cores do not
    each start 2 threads); outside a worker nothing changes."""
    from protodb.distributed.cluster import size_worker_threads, threads_for

    assert (threads_for(1.0, 8), threads_for(3.0, 8), threads_for(0.5, 8), threads_for(None, 8)) == (1, 3, 1, 8)
    before = torch.get_num_threads()
    assert size_worker_threads() == before == torch.get_num_threads()


@pytest.mark.slow
def test_a_real_ray_worker_sizes_its_threads(tmp_path):
    import ray

    from protodb.distributed.cluster import size_worker_threads

    script = textwrap.dedent("""
        import json, ray
        from protodb.distributed.cluster import size_worker_threads
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        one = ray.remote(num_cpus=1)(size_worker_threads)
        two = ray.remote(num_cpus=2)(size_worker_threads)
        print(json.dumps([ray.get(one.remote()), ray.get(two.remote())]))
        ray.shutdown()
    """)
    assert ray and size_worker_threads  # imported here: the subprocess runs the same code
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=180,
                         env={**os.environ, "OMP_NUM_THREADS": "2", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 2]
