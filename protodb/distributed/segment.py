"""``segment --ray``: a dataset labelled by Ray Data ``map_batches`` on an actor pool.

The driver lists the inputs (files, folders, globs; ``s3://bucket/imgs/**/*.jpg`` through fsspec), names
each input's outputs exactly as the single-process path does (:func:`protodb.segment.outputs.output_stems`)
and leaves out inputs whose outputs exist already (``--overwrite`` redoes them). Ray Data streams the
remaining inputs to a pool of actors (``--concurrency``, ``--gpus-per-worker``); each actor holds a warm
:class:`protodb.segment.run.VocabularySegmenter` (extractors, match tables, pre-filter loaded once),
reads and decodes its batch in threads while it computes, labels ``--batch-size`` images per call
(batched through the extractors on CUDA, one by one on CPU), and writes the label PNG, overlay and JSON
itself (to ``--out``: a folder or ``s3://...``; the JSON last, so an input counts as done only when all
its files are there). Only one small record per input comes back to the driver. A bad input is
reported and skipped; the others finish.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

from protodb.api import ProtoDB
from protodb.distributed.cluster import RayOptions, check_shared, connect, is_remote_uri, runtime_env, worker_shape
from protodb.distributed.plan import segment_plan
from protodb.entities import InputFailure, SegmentOutput, SegmentPlan, SegmentReport
from protodb.errors import InvalidInput, ProtoDBError
from protodb.images import IMAGE_EXTENSIONS, expand_inputs, load_image
from protodb.lazy import lazy_import
from protodb.names import parse_class_list
from protodb.segment.options import SegmentOptions, check_options
from protodb.segment.outputs import check_out, output_stems

ray = lazy_import("ray")
ray_data = lazy_import("ray.data")
fsspec = lazy_import("fsspec")
batched = lazy_import("protodb.segment.batched")

log = logging.getLogger(__name__)
#: Threads an actor reads, decodes and writes with (overlapping its compute).
IO_THREADS = 4
#: What each input leaves under --out; an input is done when all of them exist (the JSON is written last).
DONE_SUFFIXES = (".labels.png", ".overlay.png", ".json")


# ================================================================================ inputs and outputs
def _remote_inputs(url: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(url)
    scheme = url.split("://", 1)[0]
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path))
        what = "pattern matches no image files"
    elif fs.isdir(path):
        found = sorted(fs.ls(path, detail=False))
        what = "prefix holds no images"
    elif fs.isfile(path):
        return [url]
    else:
        raise InvalidInput(f"{url}: no such object or prefix")
    found = [p for p in found if PurePosixPath(p).suffix.lower() in IMAGE_EXTENSIONS]
    if not found:
        raise InvalidInput(f"{url}: {what} ({', '.join(IMAGE_EXTENSIONS)})")
    return [f"{scheme}://{p}" for p in found]


def list_inputs(args: Sequence[str]) -> tuple[list[str], list[InputFailure]]:
    """Every input (local paths or URLs) in argument order without duplicates; a bad argument is one
    failure and the others still count."""
    out: list[str] = []
    failed: list[InputFailure] = []
    for arg in args:
        try:
            found = _remote_inputs(arg) if is_remote_uri(arg) else [str(p) for p in expand_inputs([arg])]
        except ProtoDBError as err:
            failed.append(InputFailure(str(arg), str(err)))
            continue
        out += [p for p in found if p not in out]
    return out, failed


def stems_of(inputs: Sequence[str]) -> dict[str, str]:
    """Output names as :func:`output_stems` gives them (URLs count by bucket and key)."""
    keys = {p: (PurePosixPath(p.split("://", 1)[1]) if is_remote_uri(p) else Path(p)) for p in inputs}
    stems = output_stems(list(keys.values()))
    return {p: stems[k] for p, k in keys.items()}


def existing_outputs(out: str) -> set[str]:
    """Files under ``out`` (relative, with '/'), found in one listing."""
    if is_remote_uri(out):
        fs, root = fsspec.core.url_to_fs(out)
        root = root.rstrip("/")
        try:
            return {p[len(root) + 1:] for p in fs.find(root)}
        except FileNotFoundError:
            return set()
    root = Path(out)
    if not root.is_dir():
        return set()
    found = set()
    for folder, _dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        found.update(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files)
    return found


def split_done(inputs: Sequence[str], stems: dict[str, str], out: str, overwrite: bool) -> tuple[list[str], list[str]]:
    """(inputs to segment, inputs whose outputs all exist)."""
    if overwrite:
        return list(inputs), []
    have = existing_outputs(out)
    todo, done = [], []
    for p in inputs:
        (done if all(stems[p] + s in have for s in DONE_SUFFIXES) else todo).append(p)
    return todo, done


# ================================================================================ the actor
class SegmentWorker:
    """Ray Data callable class: a warm segmenter; ``__call__`` labels one batch and writes its outputs."""

    def __init__(self, home: str, catalog_url: str, options: SegmentOptions, out: str):
        self.out = out
        self.remote = is_remote_uri(out)
        self.pool = ThreadPoolExecutor(IO_THREADS)
        self.error: str | None = None  # an actor that cannot load the vocabulary says why, input by input
        try:
            self.db = ProtoDB(home, catalog_url=catalog_url, create=False)
            self.seg = self.db.segmenter(options)
            self.fs = fsspec.core.url_to_fs(out)[0] if self.remote else None
        except Exception as err:  # noqa: BLE001
            log.exception("segmenting worker could not start")
            text = str(err).splitlines()[0] if str(err) else ""
            self.error = text if isinstance(err, ProtoDBError) and text else f"{type(err).__name__}: {text}"
        self.batched = self.error is None and self.seg.device.type == "cuda"

    def _load(self, src: str):
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

    def _write(self, image, result, stem: str) -> dict[str, str]:
        if not self.remote:
            return self.seg.write(image, result, Path(self.out), stem, stem)
        tmp = Path(tempfile.mkdtemp(prefix="protodb-seg-"))
        try:
            local = self.seg.write(image, result, tmp, stem, stem)
            files = {}
            for kind in sorted(local, key=lambda k: k == "json"):  # the JSON last: it marks the input done
                target = f"{self.out.rstrip('/')}/{stem}{Path(local[kind]).name[len(Path(stem).name):]}"
                self.fs.put_file(local[kind], target)
                files[kind] = target
            return files
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        paths, stems = [str(p) for p in batch["path"]], [str(s) for s in batch["stem"]]
        if self.error:
            return {"input": paths, "error": [self.error] * len(paths), **{k: ["null"] * len(paths) for k in
                                                                        ("size", "present", "files", "explain")}}
        loads = [self.pool.submit(self._load, p) for p in paths]  # decoding overlaps the compute below
        rows = {k: [] for k in ("input", "error", "size", "present", "files", "explain")}
        images: dict[int, Any] = {}
        errors: dict[int, str] = {}
        for i, fut in enumerate(loads):
            try:
                images[i] = fut.result() if self.batched else fut
            except ProtoDBError as err:
                errors[i] = str(err)
        results: dict[int, dict] = {}
        if self.batched and len(images) > 1:
            try:
                order = sorted(images)
                results = dict(zip(order, batched.segment_batch(self.seg, [images[i] for i in order])))
            except (MemoryError, RuntimeError) as err:  # too big together: one by one below
                log.warning("batch of %d failed (%s); segmenting one by one", len(images), err)
                results = {}
        writes = {}
        for i, path in enumerate(paths):
            if i in errors:
                continue
            try:
                image = images[i].result() if not self.batched else images[i]
                images[i] = image
                result = results.get(i) or self.seg.segment(image)
                results[i] = result
                writes[i] = self.pool.submit(self._write, image, result, stems[i])  # encode while the next computes
            except ProtoDBError as err:
                errors[i] = str(err)
            except Exception as err:  # noqa: BLE001 - one input too big or odd: the others still run
                log.warning("%s failed: %s", path, err)
                errors[i] = (f"{path}: could not be segmented ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:160] if str(err) else ''})")
        for i, path in enumerate(paths):
            files, error = None, errors.get(i, "")
            if not error:
                try:
                    files = writes[i].result()
                except (ProtoDBError, OSError) as err:
                    error = f"{path}: outputs could not be written ({type(err).__name__}: {err})"
            rows["input"].append(path)
            rows["error"].append(error)
            ok = not error
            image, result = (images.get(i), results.get(i)) if ok else (None, None)
            rows["size"].append(json.dumps([image.width, image.height] if ok else None))
            rows["present"].append(json.dumps(result["present"] if ok else None))
            rows["files"].append(json.dumps(files))
            rows["explain"].append(json.dumps(result["winners"] if ok and self.seg.opts.explain else None))
        return rows


# ================================================================================ the driver
def _check_vocabulary(db: ProtoDB, options: SegmentOptions) -> None:
    """What the workers would all fail on, told once before any starts."""
    check_options(options)
    options.windows.check()
    if options.vocab:
        db.vocabs.show(options.vocab)
    for ref in parse_class_list(options.classes) if options.classes else []:
        db.sets.resolve(ref)  # NotFound, one line naming add-class


def plan(db: ProtoDB, inputs: Sequence[str], options: SegmentOptions, out: str, *, overwrite: bool,
         batch_size: int, address: str | None) -> SegmentPlan:
    """``--dry-run``: inputs to label and those already done (nothing started, nothing written)."""
    paths, failed = list_inputs(inputs)
    stems = stems_of(paths)
    todo, done = split_done(paths, stems, str(out), overwrite)
    extractor = options.extractors[0] if options.extractors else None
    if extractor is None and (options.vocab or options.classes):
        try:
            first = parse_class_list(options.classes)[0] if options.classes else db.vocabs.show(options.vocab).classes[0]
            sets = db.sets.resolve(first.strip())
            extractor = sets[0].extractor if sets else None
        except ProtoDBError:
            extractor = None
    return segment_plan(todo, done, failed, batch_size=batch_size, extractor=extractor, ray=address, home=db.home)


def segment(db: ProtoDB, inputs: Sequence[str], options: SegmentOptions, out: str, *, opts: RayOptions,
            batch_size: int = 8, overwrite: bool = False,
            progress: Callable[[int, int], None] | None = None) -> SegmentReport:
    """Label every input through Ray Data (see the module docstring)."""
    if batch_size < 1:
        raise InvalidInput(f"--batch-size must be >= 1, got {batch_size}")
    _check_vocabulary(db, options)
    out = str(out)
    if not is_remote_uri(out):
        out = str(check_out(Path(out)).resolve())
    paths, failed = list_inputs(inputs)
    stems = stems_of(paths)
    todo, done = split_done(paths, stems, out, overwrite)
    t0 = time.perf_counter()
    rows: dict[str, dict] = {}
    vocabulary, settings = {}, {}
    if todo:
        cluster = connect(opts.address)
        try:
            check_shared(db.stores, cluster.nodes)
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
                fn_constructor_kwargs={"home": str(db.home), "catalog_url": db.catalog_url, "options": options,
                                       "out": out},
                compute=ray_data.ActorPoolStrategy(size=min(shape.workers, len(todo))),
                num_cpus=shape.cpus, num_gpus=shape.gpus, runtime_env=runtime_env() or None)
            for row in ds.iter_rows():
                rows[str(row["input"])] = row
                if progress:
                    progress(len(rows), len(todo))
        finally:
            cluster.close()
        # the vocabulary and settings the workers used, as the single-process report gives them
        first = next((r for r in rows.values() if not r["error"] and json.loads(r["files"] or "null")), None)
        if first is not None:
            meta = _read_json(json.loads(first["files"])["json"])
            vocabulary, settings = meta.get("vocabulary", {}), meta.get("settings", {})
    outputs, failures = [], list(failed)
    for p in todo:
        row = rows.get(p)
        if row is None:
            failures.append(InputFailure(p, f"{p}: no result came back from the workers"))
        elif row["error"]:
            failures.append(InputFailure(p, str(row["error"])))
        else:
            outputs.append(SegmentOutput(input=p, size=tuple(json.loads(row["size"])), present=json.loads(row["present"]),
                                         files=json.loads(row["files"]), explain=json.loads(row["explain"])))
    return SegmentReport(vocabulary=vocabulary, settings=settings, outputs=tuple(outputs), failed=tuple(failures),
                         seconds=time.perf_counter() - t0, skipped=tuple(done))


def _read_json(path: str) -> dict:
    try:
        if is_remote_uri(path):
            with fsspec.open(path, "rb") as f:
                return json.loads(f.read())
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
