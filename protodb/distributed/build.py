"""``add-class`` / ``add-vocab --ray``: classes built by a pool of Ray actors writing to the shared database.

Work is split where it is independent::

    generation shards   images [i, j) of one class (whole generator batches; seeds make any image
                        regenerate alone), stored one by one by (run, index)
    class task          the whole add-class of one class, once its shards are done: it finds the images
                        stored, draws only what is still missing (a failed shard), then extracts, masks,
                        clusters and commits its sets

Each worker is an actor holding a :class:`protodb.api.ProtoDB` opened from (home, catalog URL) and a
:class:`protodb.pipeline.build.ClassBuilder`, so models load once per worker; images, masks and
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

from protodb.api import ProtoDB
from protodb.distributed.cluster import RayOptions, check_shared, connect, runtime_env, worker_shape
from protodb.distributed.plan import build_plan, shards_of
from protodb.distributed.progress import Poller, counter_named, start_counter
from protodb.entities import AddClassResult, AddVocabResult, BuildPlan, ClassFailure
from protodb.errors import InvalidInput, ProtoDBError
from protodb.lazy import lazy_import
from protodb.names import Ref
from protodb.pipeline.build import BYTES_PER_IMAGE, SECONDS_PER_IMAGE
from protodb.pipeline.config import MAX_IMAGES_WITHOUT_CONFIRM, AddClassRequest, check_request
from protodb.pipeline.vocab_build import missing_classes

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
        self._key: str | None = None  # progress key while a shard runs
        self.counter = counter_named(counter)
        self.error: str | None = None  # a worker that cannot open the database says why, task by task
        try:
            self.db = ProtoDB(home, catalog_url=catalog_url)
            self.builder = self.db.builder(preset=preset, device=device, dtype=dtype, progress=self._progress)
        except Exception as err:  # noqa: BLE001
            log.exception("worker could not start")
            self.error = f"a worker could not open the database: {one_line(err)}"

    def pid(self) -> int:
        return os.getpid()

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


def resolved_requests(db: ProtoDB, requests: Sequence[AddClassRequest], preset: str | None) -> list[AddClassRequest]:
    """Requests with their image count resolved (preset default) and checked, before any worker starts."""
    reg = db.registry(preset)
    out = []
    for req in requests:
        name = check_request(req)
        images = reg.default_images if req.images is None else req.images
        if images > MAX_IMAGES_WITHOUT_CONFIRM and not req.yes:
            raise InvalidInput(f"--images {images} would take about {images * SECONDS_PER_IMAGE / 3600:.1f} GPU-hours "
                               f"and {images * BYTES_PER_IMAGE / 2**30:.1f} GiB per class; the limit without --yes is "
                               f"{MAX_IMAGES_WITHOUT_CONFIRM}")
        if req.new_version:  # a task retried after its worker died would commit a second new version
            raise InvalidInput("--new-version cannot run on Ray (a retried task would add another version); "
                               "build the new version without --ray")
        out.append(req.replace(name=name, images=images))
    return out


def run_builds(db: ProtoDB, requests: Sequence[AddClassRequest], *, preset: str | None, opts: RayOptions,
               progress: Progress | None = None, on_result: Callable[[AddClassResult], None] | None = None
               ) -> tuple[list[AddClassResult], list[ClassFailure]]:
    """Build every request's class on Ray; returns (results in request order, failures)."""
    opts.check()
    progress = progress or (lambda stage, n, total: None)
    reqs = resolved_requests(db, requests, preset)
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
        check_shared(db.stores, cluster.nodes, exemplars=any(r.exemplars for r in reqs))
        shape = worker_shape(cluster, workers=opts.workers, gpus=opts.gpus_per_task, cpus=opts.cpus_per_worker)
        n_workers = min(shape.workers, len(queue))
        log.info("building %d classes on %d workers (%g CPUs, %g GPUs each) of a %d-node cluster",
                 len(reqs), n_workers, shape.cpus, shape.gpus, cluster.nodes)
        counter, counter_name = start_counter()
        worker_cls = ray.remote(BuildWorker).options(
            num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=-1, max_task_retries=opts.task_retries,
            runtime_env=runtime_env() or None)
        template = reqs[0]
        actors = [worker_cls.remote(str(db.home), db.catalog_url, preset, template.device, template.dtype,
                                     counter_name)
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


# ================================================================================ entry points
def add_class(db: ProtoDB, req: AddClassRequest, *, preset: str | None, opts: RayOptions,
              progress: Progress | None = None) -> AddClassResult:
    """One class on Ray (its generation shards spread over the workers)."""
    results, failures = run_builds(db, [req], preset=preset, opts=opts, progress=progress)
    if failures:
        raise ClassBuildFailed(failures[0].error)
    return results[0]


def vocab_requests(db: ProtoDB, name: str, template: AddClassRequest, preset: str | None
                   ) -> tuple[Any, list[AddClassRequest], list[str]]:
    """(vocabulary, requests of its classes still to build, refs already built)."""
    vocab = db.vocabs.show(name)
    wanted = list(template.extractors) or list(db.registry(preset).default_extractors)
    todo, present = missing_classes(db.sets, list(vocab.classes), wanted)
    return vocab, [template.replace(name=Ref.parse(ref).name, extractors=tuple(wanted)) for ref in todo], present


def add_vocab(db: ProtoDB, name: str, template: AddClassRequest, *, preset: str | None, opts: RayOptions,
              progress: Progress | None = None, on_result: Callable[[AddClassResult], None] | None = None
              ) -> AddVocabResult:
    """Every class of vocabulary ``name`` without prototypes, on Ray (as ``ProtoDB.add_vocab``)."""
    vocab, requests, present = vocab_requests(db, name, template, preset)
    results, failures = run_builds(db, requests, preset=preset, opts=opts, progress=progress, on_result=on_result)
    if vocab.builtin:
        db.vocabs.create(name, list(vocab.classes), description=vocab.description, replace=True,
                         background=bool(vocab.background))
    return AddVocabResult(vocab=name, classes=tuple(results), already_built=tuple(present), failed=tuple(failures))


def plan(db: ProtoDB, requests: Sequence[AddClassRequest], already_built: Sequence[str], *, preset: str | None,
         opts: RayOptions | None) -> BuildPlan:
    """``--dry-run``: the plan of building ``requests`` (nothing started, nothing written)."""
    reqs = resolved_requests(db, requests, preset)
    reg = db.registry(preset)
    generator = next((r.generator for r in reqs if r.generator), None) or reg.default_generator
    shard_size = opts.check().shard_size if opts is not None else 0
    batch = reqs[0].batch_size if reqs else 4
    return build_plan([(r.name, int(r.images or 0)) for r in reqs], list(already_built), shard_size=shard_size,
                      batch_size=batch, generator=generator, preset=preset, ray=opts.address if opts else None,
                      home=db.home)


