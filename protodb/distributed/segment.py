"""``segment --ray``: a dataset labelled by Ray Data ``map_batches`` on an actor pool.

The driver lists the inputs (files, folders, globs; ``s3://bucket/imgs/**/*.jpg`` through fsspec), names
each input's outputs exactly as the single-process path does (:mod:`protodb.segment.inputs`) and leaves out
inputs whose outputs exist already (``--overwrite`` redoes them). Ray Data streams the remaining inputs to a
pool of actors (``--concurrency``, ``--gpus-per-worker``); each actor holds a warm
:class:`protodb.segment.segmenter.VocabularySegmenter`, reads and decodes its batch in threads while it
computes, feeds it to the one workflow (:func:`protodb.segment.workflow.segment_inputs`: ``--batch-size``
images per extractor call on CUDA, one by one on CPU) and writes each result with the one writer
(:class:`protodb.segment.outputs.OutputWriter`, to a folder or ``s3://...``). Only one small record per
input comes back to the driver (:func:`protodb.segment.result.to_row`). A bad input is reported and
skipped; the others finish.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import fsspec

from protodb.distributed.cluster import check_shared, connect, runtime_env, size_worker_threads, worker_shape
from protodb.entities import InputFailure, SegmentOutput, SegmentReport
from protodb.errors import InvalidInput, ProtoDBError
from protodb.fileio import is_remote_uri
from protodb.images import load_image
from protodb.lazy import lazy_import
from protodb.names import parse_class_list
from protodb.runners import RayOptions
from protodb.segment.inputs import list_inputs, split_done, stems_of
from protodb.segment.options import SegmentOptions, check_options
from protodb.segment.outputs import OutputWriter, check_out
from protodb.segment.result import ImageResult, from_row, to_row
from protodb.segment.segmenter import VocabularySegmenter
from protodb.segment.workflow import SegmentInput, segment_inputs
from protodb.services.container import Services

ray_data = lazy_import("ray.data")

log = logging.getLogger(__name__)
#: Threads an actor reads, decodes and writes with (overlapping its compute).
IO_THREADS = 4
ROW_KEYS = ("input", "error", "output", "vocabulary", "settings")


def read_input(src: str):
    """An input as RGB: a local path, or a URL read through fsspec."""
    if not is_remote_uri(src):
        return load_image(src)
    try:
        with fsspec.open(src, "rb") as f:
            data = f.read()
    except OSError as err:
        raise InvalidInput(f"{src}: cannot be read ({type(err).__name__}: {err})") from None
    try:
        return load_image(data)
    except InvalidInput as err:
        raise InvalidInput(str(err).replace("<bytes>", src, 1)) from None


# ================================================================================ the actor
class SegmentWorker:
    """Ray Data callable class: a warm segmenter; ``__call__`` labels one batch and writes its outputs."""

    def __init__(self, home: str, catalog_url: str, options: SegmentOptions, out: str):
        self.threads = size_worker_threads()  # torch threads = the CPUs Ray gave this actor
        self.pool = ThreadPoolExecutor(IO_THREADS)
        self.error: str | None = None  # an actor that cannot load the vocabulary says why, input by input
        try:
            self.services = Services.open(home, catalog_url=catalog_url)
            self.seg = VocabularySegmenter.open(self.services, options)
            self.writer = OutputWriter(out, self.seg.support_crop)
        except Exception as err:  # noqa: BLE001
            log.exception("segmenting worker could not start")
            text = str(err).splitlines()[0] if str(err) else ""
            self.error = text if isinstance(err, ProtoDBError) and text else f"{type(err).__name__}: {text}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        paths, stems = [str(p) for p in batch["path"]], [str(s) for s in batch["stem"]]
        if self.error:
            return _columns([to_row(InputFailure(p, self.error)) for p in paths])
        loads = {p: self.pool.submit(read_input, p) for p in paths}  # decoding overlaps the compute below
        inputs = [SegmentInput(p, loads[p].result) for p in paths]
        stem_of = dict(zip(paths, stems))
        items: list[tuple[ImageResult | InputFailure, Any]] = []
        for item in segment_inputs(self.seg, inputs, batch_size=len(paths) if self.seg.batches else 1):
            write = self.pool.submit(self.writer.write, item, stem_of[item.input]) if isinstance(item, ImageResult) \
                else None  # encoded and written while the next input computes
            items.append((item, write))
        rows = []
        for item, write in items:
            if write is not None:
                try:
                    rows.append(to_row(item, write.result()))
                    continue
                except (ProtoDBError, OSError) as err:
                    item = InputFailure(item.input, f"{item.input}: outputs could not be written "
                                                    f"({type(err).__name__}: {err})")
            rows.append(to_row(item))
        return _columns(rows)


def _columns(rows: list[dict[str, str]]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in ROW_KEYS}


# ================================================================================ the driver
def check_vocabulary(services: Services, options: SegmentOptions) -> None:
    """What the workers would all fail on, told once before any starts."""
    check_options(options)
    options.windows.check()
    if options.vocab:
        services.vocabs.show(options.vocab)
    for ref in parse_class_list(options.classes) if options.classes else []:
        services.sets.resolve(ref)  # NotFound, one line naming add-class


def segment(services: Services, inputs: Sequence[str], options: SegmentOptions, out: str, *, opts: RayOptions,
            batch_size: int = 8, overwrite: bool = False,
            progress: Callable[[int, int], None] | None = None) -> SegmentReport:
    """Label every input through Ray Data (see the module docstring)."""
    if batch_size < 1:
        raise InvalidInput(f"--batch-size must be >= 1, got {batch_size}")
    check_vocabulary(services, options)
    stores = services.stores
    out = str(out)
    if not is_remote_uri(out):
        out = str(check_out(Path(out)).resolve())
    paths, failed = list_inputs(inputs)
    stems = stems_of(paths)
    todo, done = split_done(paths, stems, out, overwrite)
    t0 = time.perf_counter()
    rows: dict[str, dict] = {}
    if todo:
        cluster = connect(opts.address)
        try:
            check_shared(stores, cluster.nodes)
            if cluster.nodes > 1 and (not is_remote_uri(out) or not all(is_remote_uri(p) for p in todo)):
                raise InvalidInput(f"a Ray cluster of {cluster.nodes} nodes needs inputs and --out every node "
                                   "reaches: give s3://... URLs (or use --ray local)")
            shape = worker_shape(cluster, workers=opts.workers, gpus=opts.gpus_per_task, cpus=opts.cpus_per_worker,
                                 what="--gpus-per-worker")
            ctx = ray_data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            ds = ray_data.from_items([{"path": p, "stem": stems[p]} for p in todo])
            ds = ds.map_batches(
                SegmentWorker, batch_size=batch_size, batch_format="numpy",
                fn_constructor_kwargs={"home": str(stores.home), "catalog_url": stores.catalog_url,
                                       "options": options, "out": out},
                compute=ray_data.ActorPoolStrategy(size=min(shape.workers, len(todo))),
                num_cpus=shape.cpus, num_gpus=shape.gpus, runtime_env=runtime_env() or None)
            for row in ds.iter_rows():
                rows[str(row["input"])] = row
                if progress:
                    progress(len(rows), len(todo))
        finally:
            cluster.close()
    outputs: list[SegmentOutput] = []
    failures: list[InputFailure] = list(failed)
    vocabulary: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for p in todo:
        row = rows.get(p)
        if row is None:
            failures.append(InputFailure(p, f"{p}: no result came back from the workers"))
            continue
        entry, vocab, sets = from_row(row)
        if isinstance(entry, InputFailure):
            failures.append(entry)
        else:
            outputs.append(entry)
            vocabulary, settings = vocabulary or vocab, settings or sets  # what the workers segmented with
    return SegmentReport(vocabulary=vocabulary, settings=settings, outputs=tuple(outputs), failed=tuple(failures),
                         seconds=time.perf_counter() - t0, skipped=tuple(done))
