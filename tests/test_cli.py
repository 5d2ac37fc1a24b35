"""The CLI: JSON on stdout, one-line errors, exit codes; through the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from protodb_cli.main import app
from tests.conftest import child_env, fake_extractor, random_rows

runner = CliRunner()


def run(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def test_init_info_json(home):
    run("init", "--db", home)
    info = json.loads(run("info", "--db", home, "--json").stdout)
    assert info["schema_revision"] == "0003"
    assert info["classes"] == 0 and info["prototype_sets"] == 0
    assert info["catalog_url"] == f"sqlite:///{home.resolve()}/catalog.sqlite"


def test_ls_json_lists_versions(db, home):
    db.sets.commit("boat", fake_extractor(), random_rows(seed=1), config_hash="a")
    db.sets.commit("boat", fake_extractor(), random_rows(seed=2, n_parts=4), config_hash="b")
    db.sets.tag("best", ["boat@1"])
    data = json.loads(run("ls", "--db", home, "--json").stdout)
    assert [c["name"] for c in data] == ["boat"] and data[0]["kind"] == "thing"
    versions = data[0]["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["counts"] == {"class": 1, "instance": 2, "part": 4,
                                     "bg_class": 1, "bg_instance": 2, "bg_part": 4}
    assert versions[0]["extractors"] == ["test-ext"] and versions[0]["tags"] == ["best"]
    assert versions[0]["status"] == "ready"


def test_db_commands_json(home):
    run("init", "--db", home)
    cur = json.loads(run("db", "current", "--db", home, "--json").stdout)
    assert cur["revision"] == cur["head"] == "0003" and cur["up_to_date"]
    chk = json.loads(run("db", "check", "--db", home, "--json").stdout)
    assert chk["in_sync"] is True
    up = json.loads(run("db", "upgrade", "--db", home, "--json").stdout)
    assert up["revision"] == "0003"


def test_verify_exit_code(db, home):
    digest = db.stores.artifacts.put(b"image bytes")
    from protodb.catalog.schema import ClassRow, SupportImageRow

    with db.session() as s:
        cls = ClassRow(name="boat")
        s.add(cls)
        s.flush()
        s.add(SupportImageRow(class_id=cls.id, source="exemplar", artifact_sha256=digest, width=1, height=1))
    assert json.loads(run("verify", "--db", home, "--json").stdout)["ok"] is True
    db.stores.artifacts.local_path(digest).write_bytes(b"changed")
    bad = run("verify", "--db", home, "--json", ok=False)
    assert bad.exit_code == 1 and json.loads(bad.stdout)["corrupt"] == [digest]


def test_alias_json(db, home):
    db.sets.commit("boat", fake_extractor(), random_rows(), config_hash="a")
    out = json.loads(run("alias", "paper", "boat@1", "--db", home, "--json").stdout)
    assert out["sets"][0]["class"] == "boat" and out["sets"][0]["version"] == 1
    shown = json.loads(run("alias", "paper", "--db", home, "--json").stdout)
    assert shown == out


def test_errors_are_one_line_with_nonzero_exit(db, home):
    result = run("alias", "paper", "ghost", "--db", home, ok=False)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "protodb add-class ghost" in lines[0]
    assert result.stdout == ""


def test_stale_catalog_refused_by_cli(db, home):
    from sqlalchemy import text

    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    result = run("info", "--db", home, ok=False)
    assert result.exit_code == 1 and "newer than this protodb knows" in result.stderr


def _all_commands(group, prefix=()):
    import typer.main

    click_group = typer.main.get_command(group) if not hasattr(group, "commands") else group
    for name, cmd in click_group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


def test_every_command_has_help_with_an_example():
    commands = list(_all_commands(app))
    assert len(commands) > 25 and ("db", "check") in commands and ("segment",) in commands
    for cmd in commands:
        out = run(*cmd, "--help").stdout
        assert "Example: protodb" in out, cmd


def test_root_help_documents_exit_codes():
    out = run("--help").stdout
    assert "0 ok, 1 error, 2 usage error, 3 some inputs failed" in " ".join(out.split())


def test_postgres_through_catalog_option(pg_url, home):
    run("init", "--db", home, "--catalog", pg_url)
    info = json.loads(run("info", "--db", home, "--catalog", pg_url, "--json").stdout)
    assert info["catalog_url"].startswith("postgresql") and info["schema_revision"] == "0003"
    assert json.loads(run("db", "check", "--catalog", pg_url, "--db", home, "--json").stdout)["in_sync"]


@pytest.mark.slow
def test_console_script_end_to_end(home):
    exe = shutil.which("protodb") or os.path.join(os.path.dirname(os.sys.executable), "protodb")
    env = child_env()
    env["PROTODB_HOME"] = str(home)
    missing = subprocess.run([exe, "info"], capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and "protodb init" in missing.stderr and not home.exists()  # never created
    subprocess.run([exe, "init", "-q"], capture_output=True, text=True, env=env, check=True)
    out = subprocess.run([exe, "info", "--json"], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout)["schema_revision"] == "0003"
    bad = subprocess.run([exe, "alias", "x", "ghost"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    usage = subprocess.run([exe, "info", "--no-such-flag"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2


def test_database_options_before_the_command(db, home):
    info = json.loads(run("--db", home, "info", "--json").stdout)
    assert info["home"] == str(home.resolve())
    assert json.loads(run("--db", home, "ls", "--json").stdout) == []


def test_read_only_commands_never_create_a_database(tmp_path):
    typo = tmp_path / "typo"
    for args in (["ls"], ["info"], ["verify"], ["vocab", "list"], ["inspect", "boat"], ["db", "current"]):
        res = run(*args, "--db", typo, ok=False)
        assert res.exit_code == 1 and "protodb init --db" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    bad_dir = tmp_path / "nonexistent" / "dir" / "x.sqlite"
    res = run("ls", "--catalog", f"sqlite:///{bad_dir}", "--db", typo, ok=False)
    assert res.exit_code == 1 and not (tmp_path / "nonexistent").exists() and not typo.exists()
