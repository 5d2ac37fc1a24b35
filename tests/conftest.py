"""Shared fixtures: real SQLite/PostgreSQL catalogs, real LanceDB and artifact folders."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing can be downloaded in tests

PG_ADMIN_URL = os.environ.get("PROTODB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def clean_env(environ=None) -> dict:
    """Remove every PROTODB_* variable (they could redirect protodb: catalog, home, LLM, CLIP, limits,
    logging) from ``environ`` (default: this process's) and return it. The one list for all tests."""
    environ = os.environ if environ is None else environ
    for var in [k for k in environ if k.startswith("PROTODB_")]:
        environ.pop(var, None)
    return environ


def child_env(**extra) -> dict:
    """An environment for a protodb subprocess: this one without PROTODB_* variables, plus ``extra``."""
    return {**clean_env(dict(os.environ)), **{k: str(v) for k, v in extra.items()}}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty database folder; env vars that could redirect protodb are cleared."""
    for var in [k for k in os.environ if k.startswith("PROTODB_")]:
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "db"


@pytest.fixture
def db(home):
    import protodb

    pdb = protodb.open(home)
    yield pdb
    pdb.close()


def _pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for this test (dropped afterwards)."""
    pytest.importorskip("psycopg", reason="psycopg not installed: pip install 'protodb[postgres]'")
    from sqlalchemy import text

    try:
        admin = _pg_admin_engine()
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as err:  # noqa: BLE001
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL must answer on 127.0.0.1:5432 in CI: {err}")
        pytest.skip(f"no PostgreSQL server answers at {PG_ADMIN_URL}: {type(err).__name__}")
    name = f"protodb_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
        ), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def fake_extractor(dim: int = 8, name: str = "test-ext"):
    """An extractor record as the catalog stores it (no model behind it)."""
    from protodb.entities import ExtractorRecord

    return ExtractorRecord(id=(name.encode().hex() + "0" * 64)[:64], name=name, kind="test",
                           config={"dim": dim}, dim=dim, weights_hash=None)


def random_rows(n_parts: int = 3, dim: int = 8, seed: int = 0, n_images: int = 2):
    """1 class + n_images instance + n_parts part prototypes, and the same for the background."""
    from protodb.storage.vectors import PrototypeRows

    rng = np.random.default_rng(seed)
    kinds = []
    for prefix in ("", "bg_"):
        kinds += [prefix + "class"] + [prefix + "instance"] * n_images + [prefix + "part"] * n_parts
    vecs = rng.normal(size=(len(kinds), dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    regions = [None if k.endswith("class") else (0, 0, 2, 2) for k in kinds]
    return PrototypeRows(vectors=vecs, kinds=kinds, regions=regions)


def cli(*args, ok: bool = True):
    """Run the protodb CLI in-process; with ok=True, assert exit code 0 (showing output otherwise)."""
    from typer.testing import CliRunner

    from protodb_cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


# ------------------------------------------------------------------ S3 (moto)
S3_BUCKET = "protodb-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server (moto) on 127.0.0.1, with the standard AWS env pointing at it.

    One per test session, defined here only: a second server (a module importing this fixture) would
    repoint the env while this process's cached s3fs clients still talk to the first."""
    if shutil.which("moto_server", path=str(Path(sys.executable).parent)) is None:
        if os.environ.get("CI"):
            pytest.fail("moto[server] must be installed in CI: pip install -e '.[dev]'")
        pytest.skip("moto[server] is not installed: pip install -e '.[dev]'")
    pytest.importorskip("s3fs")
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        for _ in range(100):
            try:
                boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
                break
            except Exception:  # noqa: BLE001 - server still starting
                time.sleep(0.1)
        else:
            pytest.fail("moto server did not start")
        yield {"endpoint": endpoint, "bucket": S3_BUCKET, "env": env}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
