"""``add-class`` / ``add-vocab --ray``: classes built by a pool of Ray actors writing to the shared database.

Work is split where it is independent::

    generation shards   images [i, j) of one class (whole generator batches; seeds make any image
                        regenerate alone), stored one by one by (run, index)
    class task          the whole add-class of one class, once its shards are done: it finds the images
                        stored, draws only what is still missing (a failed shard), then extracts, masks,
                        clusters and commits its sets

:class:`RayExecutor` is the Ray side of :class:`protodb.pipeline.vocab_build.BuildExecutor`: the planner
(:mod:`protodb.pipeline.vocab_build`) decides what to build, this module only runs it. Each worker is an
actor holding the database's services (:class:`protodb.services.container.Services`, opened from home and
catalog URL) and a :class:`protodb.pipeline.build.ClassBuilder`, so models load once per worker; images, masks and
vectors go from the worker straight into the database, only small records come back to the driver. The
driver keeps one task in flight per worker (a class task goes first as soon as its shards are done),
records each class's outcome and goes on when one fails.

Faults: a worker that dies (SIGKILL, OOM, lost node) is restarted by Ray and its task retried
(``max_restarts``, ``max_task_retries``). A retried or duplicated task cannot make a second set or a half
set: a set is written ``pending`` and made ``ready`` in one transaction, the same config gives one set
(``SetService.commit_unless_present``), a dead writer's pending set is discarded by the next commit of
that class, and the support stage resumes by (run, index). A driver started again skips the classes
already built (add-vocab) or finds their sets (add-class) and resumes the others.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from protodb.distributed.cluster import check_shared, connect, runtime_env, size_worker_threads, worker_shape
from protodb.distributed.progress import Poller, counter_named, start_counter
from protodb.entities import AddClassResult, ClassFailure
from protodb.errors import InvalidInput, ProtoDBError
from protodb.lazy import lazy_import
from protodb.models.registry import ModelRegistry
from protodb.pipeline.build import ClassBuilder
from protodb.pipeline.config import AddClassRequest
from protodb.pipeline.vocab_build import resolved_requests
from protodb.planning import shards_of
from protodb.runners import RayOptions
from protodb.services.container import Services

ray = lazy_import("ray")

log = logging.getLogger(__name__)
Progress = Callable[[str, int, "int | None"], None]
CLASSES, IMAGES = "classes built", "support images"


class ClassBuildFailed(ProtoDBError):
    """The one class of a distributed add-class failed (its error, one line)."""


def one_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return text if isinstance(err, ProtoDBError) and text else f"{type(err).__name__}: {text}".rstrip(": ")


# ================================================================================ the worker (an actor)
class BuildWorker:
    """A Ray actor: one database connection and one class builder whose models stay loaded."""

    def __init__(self, home: str, catalog_url: str, preset: str | None, device: str, dtype: str, counter: str):
        self.threads = size_worker_threads()  # torch threads = the CPUs Ray gave this actor
        self._key: str | None = None  # progress key while a shard runs
        self.counter = counter_named(counter)
        self.error: str | None = None  # a worker that cannot open the database says why, task by task
        try:
            self.services = Services.open(home, catalog_url=catalog_url, create=True)
            self.builder = ClassBuilder.open(self.services, preset=preset, device=device, dtype=dtype,
                                             progress=self._progress)
        except Exception as err:  # noqa: BLE001
            log.exception("worker could not start")
            self.error = f"a worker could not open the database: {one_line(err)}"

    def pid(self) -> int:
        return os.getpid()

    def torch_threads(self) -> int:
        return self.threads

    def _progress(self, stage: str, n: int, total: int | None) -> None:
        # shards report each image they draw; class tasks report their counts in their result
        if self._key is not None and self.counter is not None and stage == "generate" and n and total is None:
            self.counter.add.remote(self._key, n)

    def shard(self, req: AddClassRequest, indices: list[int]) -> dict[str, Any]:
        if self.error:
            return {"error": self.error}
        self._key = f"{IMAGES}:{req.name}"
        try:
            return {"drawn": self.builder.generate_shard(req, indices)}
        except Exception as err:  # noqa: BLE001 - recorded; the class task draws these images again
            log.exception("%s: images %s failed", req.name, indices[:1] + indices[-1:])
            return {"error": one_line(err)}
        finally:
            self._key = None

    def build(self, req: AddClassRequest) -> dict[str, Any]:
        if self.error:
            return {"error": self.error}
        try:
            return {"result": self.builder.add_class(req)}
        except Exception as err:  # noqa: BLE001 - one failing class must not stop the others
            log.exception("%s failed", req.name)
            return {"error": one_line(err)}


# ================================================================================ the driver
@dataclass
class _Item:
    kind: str  # "shard" | "build"
    name: str
    req: AddClassRequest
    indices: list[int] | None = None


def _refuse_new_version(requests: Sequence[AddClassRequest]) -> None:
    if any(r.new_version for r in requests):  # a task retried after its worker died would commit a second one
        raise InvalidInput("--new-version cannot run on Ray (a retried task would add another version); "
                           "build the new version without --ray")


class RayExecutor:
    """Builds classes on Ray actors (see the module docstring): the Ray side of
    :class:`protodb.pipeline.vocab_build.BuildExecutor`."""

    def __init__(self, services: Services, preset: str | None, opts: RayOptions):
        self.services, self.preset, self.opts = services, preset, opts.check()

    def check(self, requests: Sequence[AddClassRequest]) -> list[AddClassRequest]:
        """``requests`` resolved and checked before any worker starts."""
        _refuse_new_version(requests)
        return resolved_requests(ModelRegistry(self.services.stores, self.preset), requests)

    def add_class(self, req: AddClassRequest, *, progress: Progress | None = None) -> AddClassResult:
        """One class on Ray (its generation shards spread over the workers)."""
        results, failures = self.run([req], progress=progress)
        if failures:
            raise ClassBuildFailed(failures[0].error)
        return results[0]

    def run(self, requests: Sequence[AddClassRequest], *, progress: Progress | None = None,
            on_result: Callable[[AddClassResult], None] | None = None
            ) -> tuple[list[AddClassResult], list[ClassFailure]]:
        """Build every request's class on Ray; returns (results in request order, failures)."""
        opts, stores = self.opts, self.services.stores
        progress = progress or (lambda stage, n, total: None)
        reqs = self.check(requests)
        if not reqs:
            return [], []
        order = {r.name: i for i, r in enumerate(reqs)}
        queue: collections.deque[_Item] = collections.deque()
        pending: dict[str, int] = {}
        for req in reqs:
            shards = shards_of(req.images or 0, opts.shard_size, req.batch_size)
            pending[req.name] = len(shards)
            if shards:
                queue.extend(_Item("shard", req.name, req, s) for s in shards)
            else:
                queue.append(_Item("build", req.name, req))
        cluster = connect(opts.address)
        actors, counter = [], None
        try:
            check_shared(stores, cluster.nodes, exemplars=any(r.exemplars for r in reqs))
            shape = worker_shape(cluster, workers=opts.workers, gpus=opts.gpus_per_task, cpus=opts.cpus_per_worker)
            n_workers = min(shape.workers, len(queue))
            log.info("building %d classes on %d workers (%g CPUs, %g GPUs each) of a %d-node cluster",
                     len(reqs), n_workers, shape.cpus, shape.gpus, cluster.nodes)
            counter, counter_name = start_counter()
            worker_cls = ray.remote(BuildWorker).options(
                num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=-1, max_task_retries=opts.task_retries,
                runtime_env=runtime_env() or None)
            template = reqs[0]
            actors = [worker_cls.remote(str(stores.home), stores.catalog_url, self.preset, template.device,
                                         template.dtype, counter_name)
                      for _ in range(n_workers)]
            results, failures = _schedule(actors, queue, pending, reqs, opts, counter, progress, on_result)
        finally:
            for handle in actors + ([counter] if counter is not None else []):
                try:
                    ray.kill(handle)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            cluster.close()
        results.sort(key=lambda r: order.get(r.name, len(order)))
        failures.sort(key=lambda f: order.get(f.name, len(order)))
        return results, failures


def _schedule(actors, queue, pending, reqs, opts: RayOptions, counter, progress: Progress, on_result):
    images = {r.name: int(r.images or 0) for r in reqs}
    had_shards = {name: n > 0 for name, n in pending.items()}
    counted = collections.Counter()

    def count(name: str, n: int) -> None:  # support images shown, never more than the class asks for
        n = max(0, min(n, images[name] - counted[name]))
        if n:
            counted[name] += n
            progress(IMAGES, n, None)

    poller = Poller(counter, lambda key, n, _t: count(key.partition(":")[2], n))
    progress(CLASSES, 0, len(reqs))
    progress(IMAGES, 0, sum(images.values()))
    results: list[AddClassResult] = []
    failures: list[ClassFailure] = []
    idle = list(range(len(actors)))
    inflight: dict[Any, tuple[int, _Item]] = {}
    last_poll = 0.0
    while queue or inflight:
        while idle and queue:
            a, item = idle.pop(0), queue.popleft()
            if item.kind == "shard":
                ref = actors[a].shard.remote(item.req, item.indices)
            else:
                ref = actors[a].build.remote(item.req)
            inflight[ref] = (a, item)
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
        if time.monotonic() - last_poll > 0.5:
            poller.poll()
            last_poll = time.monotonic()
        for ref in done:
            a, item = inflight.pop(ref)
            idle.append(a)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker died more often than the retries allow
                out = {"error": f"its worker was lost {opts.task_retries + 1} times ({type(err).__name__}); "
                                "re-run the command to resume it"}
            if item.kind == "shard":
                lo, hi = item.indices[0], item.indices[-1]
                if "error" in out:
                    log.warning("%s: images %d-%d: %s; the class task draws them", item.name, lo, hi, out["error"])
                else:
                    count(item.name, len(item.indices) - int(out["drawn"]))  # found already stored
                pending[item.name] -= 1
                if pending[item.name] == 0:
                    queue.appendleft(_Item("build", item.name, item.req))
                continue
            if "error" in out:
                failures.append(ClassFailure(item.name, out["error"]))
                log.warning("%s failed: %s", item.name, out["error"])
            else:
                res: AddClassResult = out["result"]
                results.append(res)
                count(item.name, res.generated_images + (0 if had_shards[item.name] else res.reused_images))
                if on_result:
                    on_result(res)
            progress(CLASSES, 1, None)
    poller.poll()
    return results, failures
