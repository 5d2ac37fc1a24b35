"""Defects an outside red-team run found (issue 13): each case as it was run, against a tiny-preset
database ``base`` with boat and cat, now one clear line or a correct result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import protodb
from tests.conftest import child_env, clean_env, cli, fake_extractor, random_rows


@pytest.fixture(scope="module")
def base_built(tmp_path_factory):
    clean_env()
    home = tmp_path_factory.mktemp("base") / "db"
    for name in ("boat", "cat"):
        cli("add-class", name, "--preset", "tiny", "--images", "2", "-k", "4", "--db", home, "-q")
    photos = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        PIL.Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    return home, photos


@pytest.fixture
def base(base_built, tmp_path):
    """A private copy of the base database (``cp -a``), and two photos."""
    home, photos = base_built
    copy = tmp_path / "base"
    shutil.copytree(home, copy, symlinks=True)
    return copy, photos


def _one_line(res, code=1):
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == code, (res.stdout, res.stderr)
    assert len(lines) == 1 and "Traceback" not in res.stderr and "set PROTODB_DEBUG" not in res.stderr, res.stderr
    return lines[0]


def _lance_files(home: Path) -> list[Path]:
    return sorted((home / "vectors").rglob("data/*.lance"))


# ----------------------------------------------------------------------------------- 1. vector data
def test_flipped_bytes_in_a_lance_fragment_are_found(base):
    home, photos = base
    for f in _lance_files(home):  # flip bytes in the middle of the float data of every fragment
        data = bytearray(f.read_bytes())
        for k in range(len(data) // 3, len(data) // 3 + 64):
            data[k] ^= 0xFF
        f.write_bytes(bytes(data))
    res = cli("verify", "--db", home, "--json", ok=False)
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    damaged = {d["name"] for d in report["damage"] if d["what"] == "set"}
    assert damaged and damaged <= {"boat@1", "cat@1"} and not report["ok"]
    seg = cli("segment", photos / "p0.png", "--classes", "boat,cat", "--out", home.parent / "o", "--db", home, ok=False)
    line = _one_line(seg)
    assert "damaged" in line or "cannot be read" in line
    assert "protodb verify" in line


def test_a_missing_lance_fragment_is_named_by_verify_and_segment(base):
    home, photos = base
    for f in _lance_files(home):
        f.unlink()
    report = json.loads(cli("verify", "--db", home, "--json", ok=False).stdout)
    assert {d["name"] for d in report["damage"] if d["what"] == "set"} == {"boat@1", "cat@1"}
    for args in (["segment", photos / "p0.png", "--classes", "boat", "--out", home.parent / "o"],
                 ["inspect", "boat", "--parts", "--out", home.parent / "i"],
                 ["export", "--classes", "boat", "-o", home.parent / "b.tar"]):
        line = _one_line(cli(*args, "--db", home, ok=False))
        assert "boat@1" in line and "protodb verify" in line, line


# ----------------------------------------------------------------------------------- 2. model files
def test_flipped_bytes_in_a_model_file_are_found(base):
    home, photos = base
    ckpt = home / "models" / "tiny-vit" / "model.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    report = json.loads(cli("verify", "--db", home, "--json", ok=False).stdout)
    assert [d["what"] for d in report["damage"]] == ["model"] and report["models_checked"] == 1
    line = _one_line(cli("segment", photos / "p0.png", "--classes", "boat", "--db", home, ok=False))
    assert "weights do not match" in line and "protodb verify" in line


def test_a_copied_database_loads_its_own_model_files(base, tmp_path):
    home, photos = base
    copy = tmp_path / "copy"
    shutil.copytree(home, copy, symlinks=True)  # cp -a
    shutil.rmtree(home)  # the original is gone: the copy must not need it
    res = json.loads(cli("segment", photos / "p0.png", "--classes", "boat,cat", "--out", tmp_path / "o",
                         "--db", copy, "--json").stdout)
    assert len(res["outputs"]) == 1 and cli("verify", "--db", copy).exit_code == 0


# ----------------------------------------------------------------------------------- 3. output names
def test_outputs_of_one_run_never_overwrite_each_other(base, tmp_path):
    home, photos = base
    for sub, name in (("A", "x.png"), ("B", "x.png"), ("C", "x-1.png")):
        (tmp_path / sub).mkdir()
        shutil.copy(photos / "p0.png", tmp_path / sub / name)
    shutil.copy(photos / "p1.png", tmp_path / "B" / "x.png")  # B's x differs from A's
    out = tmp_path / "out"
    res = json.loads(cli("segment", tmp_path / "A" / "x.png", tmp_path / "B" / "x.png", tmp_path / "C" / "x-1.png",
                         "--classes", "boat,cat", "--out", out, "--db", home, "--json").stdout)
    labels = [o["files"]["labels"] for o in res["outputs"]]
    assert len(set(labels)) == 3 and all(Path(p).is_file() for p in labels)
    assert sorted(str(Path(p).relative_to(out)) for p in labels) == \
        ["A/x.labels.png", "B/x.labels.png", "C/x-1.labels.png"]
    metas = {json.loads(Path(o["files"]["json"]).read_text())["input"] for o in res["outputs"]}
    assert metas == {"A/x", "B/x", "C/x-1"}


# ----------------------------------------------------------------------------------- 4. same config, one set
WRITER = textwrap.dedent("""
    import sys
    from protodb_cli.main import main
    sys.argv = ["protodb", "add-class", "same", "--preset", "tiny", "--images", "4", "-k", "2",
                "--db", sys.argv[1], "--catalog", sys.argv[2], "-q"]
    main()
""")


@pytest.mark.slow
def test_parallel_add_class_with_one_config_makes_one_set_on_postgres(pg_url, tmp_path):
    env = child_env(PYTHONPATH=os.getcwd())
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "home"), pg_url], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    db = protodb.open(tmp_path / "home", catalog_url=pg_url)
    (same,) = [c for c in db.sets.ls() if c.name == "same"]
    assert [v.version for v in same.versions] == [1]
    assert db.info().pending_sets == 0
    db.close()


# ----------------------------------------------------------------------------------- 7a. thin masks
def test_a_thin_exemplar_mask_still_gives_foreground(tmp_path):
    ex, mk = tmp_path / "ex", tmp_path / "mk"
    ex.mkdir(), mk.mkdir()
    rng = np.random.default_rng(1)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    lab = np.zeros((64, 64), np.uint8)
    lab[10:54, 31] = 40  # a one-pixel-wide bat: no 8x8 patch is half covered
    PIL.Image.fromarray(img).save(ex / "bat.png")
    PIL.Image.fromarray(lab).save(mk / "bat.png")
    home = tmp_path / "db"
    out = json.loads(cli("add-class", "baseball bat", "--exemplars", ex, "--masks", mk, "--mask-value", "40",
                         "--images", "0", "--preset", "tiny", "-k", "4", "--db", home, "--json").stdout)
    counts = out["sets"][0]["counts"]
    assert counts["class"] == 1 and counts["instance"] == 1 and counts["part"] >= 1


def test_a_class_without_foreground_blocks_with_its_name_unless_skipped(base):
    home, photos = base
    db = protodb.open(home)
    (boat,) = db.sets.resolve("boat")
    ext = db.sets.extractor_row(boat.extractor_id)
    rows = db.sets.prototypes(boat, kinds=["bg_class", "bg_part"])
    db.sets.commit("kite", ext, rows, config_hash="bg-only")  # an old database's empty set
    db.close()
    cli("vocab", "create", "sky", "boat", "kite", "cat", "--db", home)
    line = _one_line(cli("segment", photos / "p0.png", "--vocab", "sky", "--db", home, ok=False))
    assert "'kite'" in line and "no foreground prototypes" in line and "--skip-missing" in line
    res = json.loads(cli("segment", photos / "p0.png", "--vocab", "sky", "--skip-missing", "--out", home.parent / "o",
                         "--db", home, "--json").stdout)
    assert res["vocabulary"]["classes"] == ["boat", "cat"] and res["vocabulary"]["skipped"] == ["kite"]


def test_a_set_with_no_foreground_is_never_committed(tmp_path):
    ex, mk = tmp_path / "ex", tmp_path / "mk"
    ex.mkdir(), mk.mkdir()
    PIL.Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(ex / "a.png")
    PIL.Image.fromarray(np.zeros((64, 64), np.uint8)).save(mk / "a.png")  # the class is nowhere
    home = tmp_path / "db"
    line = _one_line(cli("add-class", "ghost", "--exemplars", ex, "--masks", mk, "--mask-value", "9", "--images", "0",
                         "--preset", "tiny", "--db", home, ok=False))
    assert "no exemplar shows the class" in line
    assert json.loads(cli("ls", "--db", home, "--json").stdout) == []


# ----------------------------------------------------------------------------------- 7. names
@pytest.mark.parametrize("name", ["../../etc/x", "a/b", "a\\b", "x,y", "tab\there", ".."])
def test_names_that_are_not_valid_everywhere_are_refused(base, name):
    home, _ = base
    for args in (["add-class", name, "--preset", "tiny", "--images", "1"], ["label", name, "--stuff"],
                 ["vocab", "create", "v", name], ["inspect", name, "--images", "--out", home.parent / "insp"]):
        line = _one_line(cli(*args, "--db", home, ok=False))
        assert "class name" in line, (args, line)
    assert not (home.parent / "insp").exists() and not (home.parent / "etc").exists()


# ----------------------------------------------------------------------------------- 8. killed add-class
def test_a_class_without_ready_sets_is_not_listed(base):
    home, _ = base
    db = protodb.open(home)
    with db.session() as s:
        db.sets.ensure_class(s, "late0")  # what a killed add-class left behind
    db.close()
    assert [c["name"] for c in json.loads(cli("ls", "--db", home, "--json").stdout)] == ["boat", "cat"]


# ----------------------------------------------------------------------------------- 9. leftovers
def test_killed_imports_leave_nothing_and_bundles_are_0644(base, tmp_path):
    home, _ = base
    cli("export", "--classes", "boat", "-o", tmp_path / "b.tar", "--db", home)
    assert (tmp_path / "b.tar").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["b.tar", "base"]  # nothing beside the output
    staging = home / "staging"
    stale = staging / ".import.tmp-999999-deadbeef"  # a SIGKILLed import's folder (its pid is gone)
    stale.mkdir(parents=True)
    (stale / "m0000001").write_bytes(b"x" * 1000)
    other = tmp_path / "other"
    cli("import", tmp_path / "b.tar", "--db", other)
    cli("init", "--db", home)  # the next writing open cleans up
    assert not stale.exists()


IMPORTER = textwrap.dedent("""
    import sys, time
    import protodb.sharing.merge as merge
    real = merge.apply
    def slow(*a, **kw):
        print("staged", flush=True)
        time.sleep(60)
        return real(*a, **kw)
    merge.apply = slow
    import protodb.services.sharing  # noqa: F401
    from protodb_cli.main import main
    sys.argv = ["protodb", "import", sys.argv[1], "--db", sys.argv[2]]
    main()
""")


def test_a_sigtermed_import_cleans_its_staging(base, tmp_path):
    home, _ = base
    cli("export", "--classes", "boat", "-o", tmp_path / "b.tar", "--db", home)
    target = tmp_path / "target"
    cli("init", "--db", target)
    p = subprocess.Popen([sys.executable, "-c", IMPORTER, str(tmp_path / "b.tar"), str(target)],
                         env=child_env(PYTHONPATH=os.getcwd()), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "staged"
    assert list((target / "staging").iterdir())  # the bundle is staged inside the database home
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err
    assert list((target / "staging").iterdir()) == []


# ----------------------------------------------------------------------------------- 10. read-only
def test_read_only_commands_work_on_a_read_only_database(base, tmp_path):
    home, photos = base
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to drop root's override of file permissions")
    for p in [home, *home.rglob("*")]:
        os.chmod(p, os.stat(p).st_mode & ~0o222)
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]
    exe = [sys.executable, "-m", "protodb_cli.main"]
    env = child_env(PYTHONPATH=os.getcwd())
    try:
        for args in (["ls"], ["info"], ["verify"], ["vocab", "list"], ["inspect", "boat"],
                     ["segment", str(photos / "p0.png"), "--classes", "boat,cat", "--out", str(tmp_path / "o")]):
            r = subprocess.run([*drop, *exe, *args, "--db", str(home)], capture_output=True, text=True, env=env)
            assert r.returncode == 0, (args, r.stderr)
        r = subprocess.run([*drop, *exe, "label", "boat", "--stuff", "--db", str(home)], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "is read-only" in r.stderr
    finally:
        for p in [home, *home.rglob("*")]:
            os.chmod(p, os.stat(p).st_mode | 0o200)


# ----------------------------------------------------------------------------------- 11. corruption
def test_damaged_catalog_values_are_one_line_everywhere(base):
    home, photos = base
    from sqlalchemy import text

    db = protodb.open(home)
    (boat,) = db.sets.resolve("boat")
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE prototype_sets SET counts = 'not json' WHERE id = :i"), {"i": boat.id})
        conn.execute(text("UPDATE support_images SET artifact_sha256 = 'zz' WHERE id = "
                          "(SELECT image_id FROM prototype_set_images WHERE set_id = :i LIMIT 1)"),
                     {"i": (db.sets.resolve("cat")[0]).id})
    db.close()
    report = json.loads(cli("verify", "--db", home, "--json", ok=False).stdout)
    problems = " | ".join(f"{d['what']} {d.get('name') or d['id']}: {d['problem']}" for d in report["damage"])
    assert "prototype_sets.counts is not JSON" in problems and "not a sha256" in problems
    for args in (["ls"], ["segment", photos / "p0.png", "--classes", "boat", "--out", home.parent / "o"],
                 ["inspect", "boat"]):
        line = _one_line(cli(*args, "--db", home, ok=False))
        assert "boat@1" in line and "protodb verify" in line
    line = _one_line(cli("inspect", "cat", "--images", "--out", home.parent / "i", "--db", home, ok=False))
    assert "protodb verify" in line


def test_verify_names_a_missing_extractor_row_a_renamed_table_and_wrong_dimension(base):
    home, _ = base
    from sqlalchemy import text

    db = protodb.open(home)
    cat, boat = db.sets.resolve("cat")[0], db.sets.resolve("boat")[0]
    db.sets.commit("wide", fake_extractor(dim=8), random_rows(), config_hash="w")
    with db.engine.begin() as conn:
        conn.execute(text("PRAGMA foreign_keys=OFF"))
        conn.execute(text("UPDATE prototype_sets SET vector_table = 'protos_renamed' WHERE id = :i"), {"i": cat.id})
        conn.execute(text("UPDATE extractors SET dim = 16 WHERE id = :e"), {"e": fake_extractor().id})
        conn.execute(text("UPDATE prototype_sets SET extractor_id = :x WHERE id = :i"), {"x": "ab" * 32, "i": boat.id})
    db.close()
    report = json.loads(cli("verify", "--db", home, "--json", ok=False).stdout)
    by = {d["name"]: d["problem"] for d in report["damage"] if d["what"] == "set"}
    assert "extractor row" in by["boat@1"] and "does not exist" in by["cat@1"] and "16-d" in by["wide@1"]


# ----------------------------------------------------------------------------------- 12. CLI input
@pytest.mark.parametrize("args,expected", [
    (["add-class", "boat", "--preset", "tiny", "--guidance", "nan"], "--guidance must be a finite number"),
    (["add-class", "boat", "--preset", "tiny", "--seed", "-1"], "--seed must be between"),
    (["add-class", "boat", "--preset", "tiny", "--images", "100000"], "limit without --yes"),
    (["db", "upgrade", "nosuchrev"], "unknown schema revision"),
    (["segment", "x.png", "--classes", "@@@;DROP TABLE classes"], "no class name before '@'"),
    (["eval", "--dataset", "camvid", "--root", "/nonexistent"], "dataset root not found"),
])
def test_bad_cli_input_is_one_line_before_any_model_loads(base, args, expected):
    home, _ = base
    line = _one_line(cli(*args, "--db", home, ok=False))
    assert expected in line, line


def test_bad_output_places_and_files(base, tmp_path):
    home, photos = base
    f = tmp_path / "file"
    f.write_text("x")
    assert "is a file" in _one_line(cli("segment", photos / "p0.png", "--classes", "boat", "--out", f, "--db", home,
                                        ok=False))
    assert "is a file" in _one_line(cli("export", "--classes", "boat", "-o", f / "x.tar", "--db", home, ok=False))
    assert "is a file" in _one_line(cli("ls", "--db", f, ok=False))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert "not an ONNX model" in _one_line(cli("extractor", "add", "e", "--onnx", empty, "--output-name", "a",
                                                "--input-size", "224", "--patch-size", "14", "--db", home, ok=False))


# ----------------------------------------------------------------------------------- 13. huge images
def test_a_thin_strip_and_a_good_image_both_finish(base, tmp_path):
    home, photos = base
    strip = tmp_path / "strip.png"
    PIL.Image.fromarray((np.random.default_rng(2).random((4, 8000, 3)) * 255).astype(np.uint8)).save(strip)
    res = json.loads(cli("segment", strip, photos / "p0.png", "--classes", "boat,cat", "--out", tmp_path / "o",
                         "--db", home, "--json").stdout)
    assert len(res["outputs"]) == 2 and not res["failed"]
    lab = np.asarray(PIL.Image.open(next(o for o in res["outputs"] if "strip" in o["input"])["files"]["labels"]))
    assert lab.shape == (4, 8000)


def test_a_thin_strip_exemplar_does_not_ask_for_gigabytes(tmp_path):
    ex = tmp_path / "ex"
    ex.mkdir()
    PIL.Image.fromarray((np.random.default_rng(3).random((4, 8000, 3)) * 255).astype(np.uint8)).save(ex / "s.png")
    res = cli("add-class", "strip", "--exemplars", ex, "--images", "0", "--preset", "tiny", "-k", "2",
              "--db", tmp_path / "db", ok=False)
    assert res.exit_code in (0, 1) and "Traceback" not in res.stderr and "MemoryError" not in res.stderr


# ----------------------------------------------------------------------------------- 14. skipped files
def test_exemplar_folders_say_what_was_skipped(tmp_path):
    ex = tmp_path / "ex"
    ex.mkdir()
    PIL.Image.fromarray((np.random.default_rng(4).random((64, 64, 3)) * 255).astype(np.uint8)).save(ex / "a.png")
    os.symlink(ex / "loop.jpg", ex / "loop.jpg")
    os.symlink(tmp_path / "gone.png", ex / "dangling.png")
    (ex / "x.jpg").mkdir()
    res = cli("add-class", "thing", "--exemplars", ex, "--images", "0", "--preset", "tiny", "-k", "2",
              "--db", tmp_path / "db")
    assert "skipped exemplar loop.jpg: dangling or looping symbolic link" in res.stderr
    assert "skipped exemplar dangling.png" in res.stderr and "skipped exemplar x.jpg: a folder" in res.stderr
    line = _one_line(cli("segment", ex / "loop.jpg", "--classes", "thing", "--db", tmp_path / "db", ok=False))
    assert "looping symbolic link" in line


def test_tables_are_plain_lines_when_not_a_terminal(base):
    home, _ = base
    out = cli("vocab", "list", "--db", home).stderr
    assert "┃" not in out and "│" not in out and out.splitlines()[0].split("\t")[:2] == ["name", "classes"]
