"""A real two-node Ray cluster on this machine (two raylets, one CPU each; ``ray.cluster_utils``): a
database only this machine reaches (SQLite catalog, local folders) is refused up front in one line that
names the fix, before any worker starts; a shared database (PostgreSQL + S3 URLs) passes the check."""

from __future__ import annotations

import json
import os

import pytest

import protodb
from protodb.distributed.cluster import alive_nodes, check_shared
from protodb.errors import InvalidInput
from tests.conftest import cli

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    for var in ("PROTODB_CATALOG_URL", "PROTODB_HOME"):
        os.environ.pop(var, None)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 100 * 2**20})
    cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_sqlite_and_local_folders_are_refused_on_several_nodes(two_nodes, tmp_path, pg_url):
    assert len(alive_nodes()) == 2
    home = tmp_path / "db"
    cli("vocab", "create", "pair", "cat", "dog", "--db", home, "-q")
    for args in (["add-vocab", "pair", "--preset", "tiny"], ["add-class", "cat", "--preset", "tiny"]):
        res = cli(*args, "--ray", two_nodes, "--db", home, ok=False)
        assert res.exit_code == 1
        line = res.stderr.strip()
        assert len(line.splitlines()) == 1, line
        assert "2 nodes" in line and "the catalog is SQLite" in line and "local folders" in line
        assert "--catalog postgresql://" in line and "--vectors s3://" in line and "--artifacts s3://" in line
    assert protodb.open(home).sets.ls() == []  # nothing was built
    photo = tmp_path / "p.png"
    photo.write_bytes(b"")
    res = cli("segment", photo, "--vocab", "pair", "--db", home, "--ray", two_nodes, "--out", tmp_path / "o", ok=False)
    assert res.exit_code == 1 and "the catalog is SQLite" in res.stderr
    # a shared catalog with local stores is still refused (naming the stores); with s3:// stores it passes
    cli("init", "--db", tmp_path / "pg", "--catalog", pg_url, "-q")
    shared = protodb.open(tmp_path / "pg", catalog_url=pg_url)
    with pytest.raises(InvalidInput, match="vectors and artifacts are local folders") as err:
        check_shared(shared.stores, 2)
    assert "SQLite" not in str(err.value)
    shared.stores.settings.set("vectors_uri", "s3://bucket/vectors")
    shared.stores.settings.set("artifacts_uri", "s3://bucket/artifacts")
    check_shared(shared.stores, 2)
    plan = json.loads(cli("add-vocab", "pair", "--preset", "tiny", "--ray", two_nodes, "--dry-run", "--json",
                          "--db", home).stdout)  # a plan starts nothing and refuses nothing
    assert plan["classes"] == ["cat", "dog"] and plan["ray"] == two_nodes
