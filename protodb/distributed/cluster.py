"""``--ray local|auto|ADDRESS``: a private local Ray instance or a running cluster, its resources, and the
checks a cluster needs before any work starts.

``local`` starts a private instance on this machine (no dashboard, a small object store; the current
one when this process already runs Ray, as tests and notebooks do). ``auto`` joins the cluster that
``ray start --head`` started on this machine, ADDRESS (``10.0.0.5:6379``, ``ray://head:10001``) another.

Workers write to the database themselves, so on more than one node every node must reach the same
catalog and stores: an SQLite catalog or a local-folder store is refused up front, in one line that
names the fix. Environment variables the stores and models read (``PROTODB_*``, ``AWS_*``, ``HF_*``)
travel with the workers (Ray ``runtime_env``), so S3 endpoints and offline switches hold everywhere.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protodb.errors import InvalidInput
from protodb.fileio import is_remote_uri
from protodb.lazy import lazy_import

if TYPE_CHECKING:
    from protodb.stores import Stores

ray = lazy_import("ray")

log = logging.getLogger(__name__)

#: Environment variables the workers get from the driver (stores, credentials, offline switches).
FORWARDED_ENV_PREFIXES = ("PROTODB_", "AWS_", "HF_", "TRANSFORMERS_")
#: Object store of a private local instance: workers exchange only small records (paths, results).
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
INIT_FIX = "start one with: ray start --head (then --ray auto), or use --ray local"



@dataclass
class Cluster:
    """A Ray connection. ``started``: this process connected (and disconnects in :meth:`close`)."""

    address: str
    started: bool
    nodes: int
    cpus: float
    gpus: float

    def close(self) -> None:
        if self.started and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "nodes": self.nodes, "cpus": self.cpus, "gpus": self.gpus}


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def connect(address: str, *, num_cpus: int | None = None, object_store_memory: int | None = None) -> Cluster:
    """Start (``local``) or join (``auto`` / ADDRESS) Ray; see the module docstring."""
    address = (address or "").strip()
    if not address:
        raise InvalidInput("--ray takes local, auto or a cluster address such as 10.0.0.5:6379")
    if importlib.util.find_spec("ray") is None:
        raise InvalidInput("--ray needs Ray on this machine and every worker: pip install 'protodb[ray]'")
    started = False
    if not ray.is_initialized():
        quiet = dict(log_to_driver=False, logging_level=logging.WARNING, namespace="protodb")
        try:
            if address == "local":  # the notice that a private instance uses token auth says nothing new
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                         object_store_memory=object_store_memory or LOCAL_OBJECT_STORE_BYTES, **quiet)
            else:
                ray.init(address=address, **quiet)
        except ConnectionError as err:
            raise InvalidInput(f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}; "
                               f"{INIT_FIX}") from None
        started = True
    _quiet_ray_data()
    nodes = alive_nodes()
    total = ray.cluster_resources()
    return Cluster(address=address, started=started, nodes=len(nodes), cpus=float(total.get("CPU", 0)),
                   gpus=float(total.get("GPU", 0)))


def _quiet_ray_data() -> None:
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": ours are shown


def forwarded_env() -> dict[str, str]:
    """The driver's variables workers need (see :data:`FORWARDED_ENV_PREFIXES`)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def threads_for(cpus: float | None, current: int) -> int:
    """torch's intra-op threads for a worker Ray gave ``cpus`` CPUs: that many (at least 1), so that N workers
    on N cores do not each start a thread per core; ``current`` when Ray gave none (outside a worker)."""
    return max(1, int(cpus)) if cpus else current


def size_worker_threads() -> int:
    """Set torch's threads in a Ray worker to the CPUs Ray assigned it (:func:`threads_for`); returns them."""
    import torch  # deferred: the catalog-only paths never load torch

    cpus = None
    if ray.is_initialized():
        try:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except AssertionError:  # the driver, not a worker: nothing was assigned
            cpus = None
    n = threads_for(cpus, torch.get_num_threads())
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def runtime_env() -> dict[str, Any]:
    env = forwarded_env()
    return {"env_vars": env} if env else {}


def check_shared(stores: "Stores", nodes: int, *, exemplars: bool = False) -> None:
    """Refuse a cluster of more than one node when the database lives on this machine only."""
    if nodes <= 1:
        return
    reasons = []
    if stores.catalog_url.startswith("sqlite"):
        reasons.append("the catalog is SQLite")
    local = [what for what, uri in (("vectors", stores.vectors_uri), ("artifacts", stores.artifacts_uri))
             if not is_remote_uri(uri)]
    if local:
        reasons.append(f"the {' and '.join(local)} are local folders")
    if reasons:
        raise InvalidInput(f"a Ray cluster of {nodes} nodes needs a database every node reaches, but "
                           f"{' and '.join(reasons)}; create a shared one with: protodb init --catalog "
                           "postgresql://USER@HOST/DB --vectors s3://BUCKET/vectors --artifacts s3://BUCKET/artifacts "
                           "(then pass --catalog postgresql://... here), or use --ray local")
    if exemplars:
        raise InvalidInput(f"--exemplars is a folder on this machine, which the other {nodes - 1} nodes cannot "
                           "read; build exemplar classes without --ray (or with --ray local)")


@dataclass(frozen=True)
class WorkerShape:
    """How many workers run and what each one holds."""

    workers: int
    cpus: float
    gpus: float

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "cpus_per_worker": self.cpus, "gpus_per_worker": self.gpus}


def worker_shape(cluster: Cluster, *, workers: int | None, gpus: float | None, cpus: float | None,
                 what: str = "--gpus-per-task") -> WorkerShape:
    """Resources per worker (GPUs: 1 on a GPU cluster, else 0; CPUs: a share of the cluster's on CPU) and
    how many workers fit; a worker the cluster can never hold is refused in one line."""
    if workers is not None and workers < 1:
        raise InvalidInput(f"--workers must be >= 1, got {workers}")
    if gpus is None:
        gpus = 1.0 if cluster.gpus > 0 else 0.0
    if gpus < 0 or (cpus is not None and cpus <= 0):
        raise InvalidInput(f"{what} and CPUs per worker must be positive, got {gpus} / {cpus}")
    if gpus > 0 and cluster.gpus <= 0:
        raise InvalidInput(f"{what} {gpus:g} asks for GPUs but the Ray cluster has none; use {what} 0")
    if gpus > 1 and gpus != int(gpus):
        raise InvalidInput(f"{what} above 1 must be a whole number, got {gpus:g}")
    if gpus > 0:
        fit = int(cluster.gpus // gpus + 1e-9)
        want = workers or fit
        cpus = cpus or 1.0
    else:
        want = workers or max(1, int(cluster.cpus))
        cpus = cpus or max(1.0, math.floor(cluster.cpus / want))
        fit = int(cluster.cpus // cpus + 1e-9)
    fit = min(fit, int(cluster.cpus // cpus + 1e-9)) if cluster.cpus else fit
    if fit < 1:
        raise InvalidInput(f"one worker needs {cpus:g} CPUs and {gpus:g} GPUs; the Ray cluster has "
                           f"{cluster.cpus:g} CPUs and {cluster.gpus:g} GPUs")
    if want > fit:
        log.warning("%d workers asked, %d fit in the cluster's resources; using %d", want, fit, fit)
        want = fit
    return WorkerShape(workers=int(want), cpus=float(cpus), gpus=float(gpus))
