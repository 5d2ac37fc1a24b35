"""The JSON API (``/api/...``), described by the OpenAPI document at ``/api/openapi.json`` (rendered
without any CDN at ``/api/docs``). Catalog reads run in the framework's thread pool; segmenting and
prototype traces run on the bounded :class:`protodb.serve.jobs.WorkQueue` (503 when it is full)."""

from __future__ import annotations

import functools
import hmac
import json
import re
import time
from typing import Any, Optional

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import protodb
from protodb.entities import InputFailure
from protodb.errors import InvalidInput, NotFound, ProtoDBError
from protodb.images import MAX_PIXELS, load_image
from protodb.segment.workflow import SegmentInput, segment_inputs
from protodb.serve.results import parse_outputs, segment_doc

router = APIRouter(prefix="/api")

SHA256 = re.compile(r"^[0-9a-f]{64}$")
IMMUTABLE = "public, max-age=31536000, immutable"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ERROR = {"content": {"application/json": {"example": {"error": "one line saying what is wrong and what to do"}}}}
ERRORS = {400: {"description": "bad input", **ERROR}, 404: {"description": "not found", **ERROR}}


def _state(request: Request):
    return request.app.state.serve


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _clean_name(name: str | None) -> str:
    """A client's file name as shown back: printable, at most 120 characters."""
    text = "".join(ch for ch in (name or "") if ch.isprintable()).strip()
    return (text or "upload")[:120]


# ---------------------------------------------------------------------------------------- overview
@router.get("", summary="The endpoints, in one line each")
def index() -> dict[str, Any]:
    return {"docs": "/api/docs", "openapi": "/api/openapi.json", "endpoints": {
        "GET /api/health": "server, queue and reload status",
        "GET /api/vocabularies": "offered vocabularies, and every warm segmenter with the sets it uses now",
        "GET /api/classes": "classes with their ready versions, counts, thumbnails and sets",
        "GET /api/classes/{name}": "one class: versions and thing/stuff label history",
        "POST /api/classes/{name}/label": "relabel thing/stuff (--allow-writes + Bearer token)",
        "GET /api/corrections?class=NAME": "stored corrections: pixels of a class marked on an image, with provenance",
        "POST /api/corrections": "add a correction: image + mask + class (--allow-writes + Bearer token)",
        "POST /api/classes/{name}/rebuild": "a new version from the class's support plus its corrections, as a job (writes)",
        "GET /api/sets/{id or ref}": "one ready set: provenance (the resolved build config, images, masks, label)",
        "GET /api/sets/{id or ref}/images": "its support images with attention maps and fg/bg masks",
        "GET /api/sets/{id or ref}/parts|instances|background?top=6": "prototypes traced to support patches",
        "GET /api/artifacts/{sha256}": "a stored image, mask or attention map (immutable)",
        "POST /api/segment?vocab=NAME|classes=a,b&outputs=labels,overlay,maps,explain,runner_up": "segment uploaded images",
        "POST /api/jobs/segment": "the same as a job: answers at once with its id (202)",
        "GET /api/jobs/{id}": "a job's state, place in the queue, elapsed seconds",
        "GET /api/jobs/{id}/result": "a finished job's result (as POST /api/segment answers)",
        "DELETE /api/jobs/{id}": "cancel a queued or running job (or forget a finished one)",
    }}


@router.get("/health", summary="Server, queue and live-reload status")
def health(request: Request) -> dict[str, Any]:
    s = _state(request)
    return {"ok": True, "protodb_version": protodb.__version__, "schema_revision": s.db.schema_revision,
            "writes": s.config.writes_enabled, "vocabularies": list(s.pool.names()),
            "on_demand": s.pool.on_demand, "max_upload": s.config.max_upload, "max_images": s.config.max_images,
            "max_pixels": s.config.max_pixels or MAX_PIXELS, "queue": s.queue.stats(), "jobs": s.jobs.stats(),
            "reload": s.pool.stats(), "uptime": round(time.time() - s.started_at, 1)}


@router.get("/vocabularies", summary="Offered vocabularies and the warm segmenters")
def vocabularies(request: Request) -> dict[str, Any]:
    """Each offered vocabulary with what its default-options segmenter uses now (classes, the ready
    sets per extractor, generation: how many times it was rebuilt), and every warm segmenter."""
    return _state(request).pool.describe()


# ---------------------------------------------------------------------------------------- catalog
@router.get("/classes", summary="Classes with their ready versions")
def classes(request: Request) -> dict[str, Any]:
    """Every class with ready versions: thing/stuff, per version the extractors, counts per prototype
    kind, images, bytes, tags, its sets and a support-image thumbnail (an artifact digest)."""
    return _state(request).views.classes()


@router.get("/classes/{name}", summary="One class: versions and label history", responses=ERRORS)
def class_detail(request: Request, name: str) -> dict[str, Any]:
    return _state(request).views.class_detail(name)


@router.get("/sets/{key}", summary="One ready set's provenance", responses=ERRORS)
def set_detail(request: Request, key: str = Path(description="a set id (32 hex) or a ref: boat, boat@2, boat@tag"),
               extractor: Optional[str] = Query(None, max_length=200)) -> dict[str, Any]:
    """The set and its provenance: the resolved build config, generator, seeds, support images,
    masks, extractor, label history, counts and bytes (as ``protodb inspect``)."""
    return _state(request).views.set_detail(key, extractor)


@router.get("/sets/{key}/images", summary="A set's support images, masks and attention maps", responses=ERRORS)
def set_images(request: Request, key: str) -> dict[str, Any]:
    """Artifact digests of each support image, its attention map and its foreground/background masks
    (fetch them from ``/api/artifacts/{sha256}``)."""
    return _state(request).views.images(key)


@router.get("/sets/{key}/{sheet}", summary="Prototypes traced to their nearest support patches", responses=ERRORS)
async def set_trace(request: Request, key: str,
                    sheet: str = Path(description="parts, instances or background", pattern="^(parts|instances|background)$"),
                    top: int = Query(6, ge=1, le=24)) -> dict[str, Any]:
    """For each prototype of the sheet: the ``top`` support patches whose features are nearest
    (cosine), with boxes [x0, y0, x1, y1] in pixels of the stored support image."""
    s = _state(request)
    return await s.queue.run(s.views.trace, key, sheet, top)


@router.get("/artifacts/{digest}", summary="A stored artifact (immutable)",
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **ERRORS})
def artifact(request: Request, digest: str):
    """A content-addressed object: the name is its sha256, so it never changes (cached for a year)."""
    if not SHA256.match(digest):
        return _error(400, "an artifact is named by its sha256: 64 lowercase hex characters")
    etag = f'"{digest}"'
    headers = {"Cache-Control": IMMUTABLE, "ETag": etag}
    s = _state(request)
    if request.headers.get("if-none-match") in (etag, digest, "*"):
        if s.db.stores.artifacts.exists(digest):
            return Response(status_code=304, headers=headers)
    try:
        data = s.db.stores.artifacts.get(digest)
    except (FileNotFoundError, OSError, ValueError):
        return _error(404, f"no artifact {digest[:16]}… in this database")
    if data.startswith(PNG_MAGIC):
        media = "image/png"
    elif data.startswith(b"\xff\xd8\xff"):
        media = "image/jpeg"
    else:
        media = "application/octet-stream"
    return Response(content=data, media_type=media, headers=headers)


# ---------------------------------------------------------------------------------------- writes
class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _authorize(request: Request) -> None:
    s = _state(request)
    if not s.config.writes_enabled:
        raise _Refused(403, "writes are off; start the server with --allow-writes and PROTODB_SERVE_TOKEN set")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _Refused(401, "this endpoint needs 'Authorization: Bearer TOKEN' (the server's PROTODB_SERVE_TOKEN)")
    if not hmac.compare_digest(given.strip().encode(), s.config.token.encode()):
        raise _Refused(401, "wrong token")


def _label_kind(body: Any) -> str:
    """``"thing"`` or ``"stuff"`` from a relabel body, else one line saying what was wrong with it."""
    want = 'send a JSON object {"kind": "thing"} or {"kind": "stuff"}'
    if not isinstance(body, dict):
        what = {list: "an array: ", str: "a string: "}.get(type(body), "")
        raise InvalidInput(f"{want}; got {what}{json.dumps(body)[:40]}")
    if "kind" not in body:
        keys = ", ".join(repr(k) for k in list(body)[:5])
        raise InvalidInput(f'{want}; the object has no "kind"' + (f" (it has {keys})" if keys else " (it is empty)"))
    kind = body["kind"]
    if kind not in ("thing", "stuff"):
        raise InvalidInput(f'"kind" is "thing" or "stuff"; got {json.dumps(kind)[:40]}')
    return kind


@router.post("/classes/{name}/label", summary="Relabel a class thing or stuff (writes)",
             responses={401: ERROR, 403: ERROR, **ERRORS})
async def relabel(request: Request, name: str):
    """Body ``{"kind": "thing" | "stuff"}``; the label history keeps every earlier decision. Needs
    ``--allow-writes`` and ``Authorization: Bearer $PROTODB_SERVE_TOKEN``."""
    try:
        _authorize(request)  # before the body is even parsed
    except _Refused as err:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return _error(err.status, str(err), headers)
    try:
        body = await request.json()
    except ValueError:
        raise InvalidInput('send a JSON body: {"kind": "thing"} or {"kind": "stuff"}') from None
    kind = _label_kind(body)
    history = await run_in_threadpool(_state(request).db.labels.set, name, kind)
    return history.to_dict()


# ---------------------------------------------------------------------------------------- segmenting
def _flag(value: Any, name: str) -> bool | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(f"{name} is true or false, got {str(value)[:20]!r}")


async def _read_upload(request: Request, max_images: int) -> tuple[list[tuple[bytes, str]], dict[str, str]]:
    """([(image bytes, file name)], form fields). Multipart (one or more fields ``image``), else the
    raw body is the image; the size limit is enforced while reading by
    :class:`protodb.serve.guards.BodyLimit`."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=max_images, max_fields=32, max_part_size=64 * 1024)
        try:
            uploads = [u for key in ("image", "file") for u in form.getlist(key)]
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            files = [u for u in uploads if not isinstance(u, str)]
            if not files:
                raise InvalidInput("send the image as the multipart file field 'image' (repeat it for several)")
            return [(await u.read(), _clean_name(u.filename)) for u in files], fields
        finally:
            await form.close()
    # any other body is the image itself, whatever it is labelled (curl --data-binary says urlencoded)
    return [(await request.body(), _clean_name(request.query_params.get("name")))], {}


def _decode(data: bytes, name: str, max_pixels: int):
    if not data:
        raise InvalidInput(f"{name}: empty upload (0 bytes); send an image file")
    try:
        return load_image(data, max_pixels=max_pixels)
    except InvalidInput as err:
        message = str(err)
        if message.startswith("<bytes>: "):
            message = message[len("<bytes>: "):]
        raise InvalidInput(f"{name}: {message}") from None


def _segment_job(state, key, uploads: list[tuple[bytes, str]], outputs: set[str]) -> bytes:
    """On a worker: feed the uploads to the segment workflow with the warm segmenter of ``key`` (decoding
    refuses non-images, truncated files, bombs) and serialize each result. One image: its result or its
    error; several: one entry each (an image that fails does not stop the others)."""
    served = state.pool.get(key)
    max_pixels = state.config.max_pixels or MAX_PIXELS
    inputs = [SegmentInput(name, functools.partial(_decode, data, name, max_pixels)) for data, name in uploads]
    results: list[dict[str, Any]] = []
    for item in segment_inputs(served.segmenter, inputs):
        if isinstance(item, InputFailure):
            if len(uploads) == 1:  # its own status: 400/404 for what the caller sent, 507 memory, else 500
                raise item.cause if isinstance(item.cause, (ProtoDBError, MemoryError)) else ProtoDBError(item.error)
            results.append({"input": item.input, "error": item.error.splitlines()[0]})
        else:
            results.append(segment_doc(served, item, outputs=outputs))
    if len(uploads) == 1:
        return json.dumps(results[0], separators=(",", ":")).encode()
    if all("error" in r for r in results):
        raise InvalidInput(f"every image failed; first: {results[0]['error']}")
    return json.dumps({"results": results, "failed": sum("error" in r for r in results)},
                      separators=(",", ":")).encode()


def _param(name: str, about: str, schema: dict | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or {"type": "string"},
            "description": about}


_BOOL = {"type": "boolean"}
#: ``POST /api/segment``'s fields (query parameters or multipart form fields), for the OpenAPI document
SEGMENT_FIELDS = [
    _param("vocab", "vocabulary to segment with (neither vocab nor classes: the only offered vocabulary)"),
    _param("classes", "or an ad-hoc comma list of classes: cat,dog,boat@3 (not with vocab)"),
    _param("extractor", "comma list of extractors to use (default: every one the classes share)"),
    _param("levels", "prototype levels, any of class,instance,part (default: all three)"),
    _param("background", "true: score a background class; false: none (default: the vocabulary's)", _BOOL),
    _param("pamr", "true: refine the score maps with PAMR", _BOOL),
    _param("skip_missing", "true: segment with the usable classes, leaving out the others", _BOOL),
    _param("outputs", "comma list of labels, overlay, maps, explain, runner_up, or none (default: labels)"),
    _param("explain", "true: add explain to the outputs", _BOOL),
    _param("name", "the image's name in the answer when the body is the raw image (default: upload)"),
]
SEGMENT_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "the image file(s): the field repeated for several (at most --max-images)"},
        **{p["name"]: {**p["schema"], "description": p["description"]} for p in SEGMENT_FIELDS if p["name"] != "name"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "or the raw image bytes as the whole body (any content type)"}},
}}
SEGMENT_OPENAPI = {"parameters": SEGMENT_FIELDS, "requestBody": SEGMENT_BODY}


async def _segment_args(request: Request) -> tuple[Any, list[tuple[bytes, str]], set[str]]:
    """(warm segmenter key, uploads, outputs) of a segment request, checked; the catalog is asked on a
    thread (never a worker) whether the key is served."""
    s = _state(request)
    uploads, fields = await _read_upload(request, s.config.max_images)
    params = {**request.query_params, **fields}
    outputs = parse_outputs(params.get("outputs"))
    if _flag(params.get("explain"), "explain"):
        outputs.add("explain")
    extractors = [e.strip() for e in params["extractor"].split(",") if e.strip()] if params.get("extractor") else None

    key = s.pool.key(vocab=params.get("vocab") or None, classes=params.get("classes") or None,
                     extractors=extractors, levels=params.get("levels") or None,
                     background=_flag(params.get("background"), "background"), pamr=_flag(params.get("pamr"), "pamr"),
                     skip_missing=_flag(params.get("skip_missing"), "skip_missing"))
    if key not in s.pool.pinned:  # the catalog decides (a thread, not the event loop); never a worker
        key = await run_in_threadpool(s.pool.check_allowed, key)
    return key, uploads, outputs


@router.post("/segment", summary="Segment uploaded images", openapi_extra=SEGMENT_OPENAPI, responses={
    200: {"description": "one image: its result; several: {'results': [...], 'failed': n}"},
    413: ERROR, 503: {"description": "busy: every worker and queue place taken (Retry-After)", **ERROR}, **ERRORS})
async def segment(request: Request):
    """Label every pixel of one or more images (multipart field ``image``, repeatable; or the raw
    body). Query or form fields: ``vocab`` or ``classes`` (``cat,dog,boat@3``; neither: the only
    offered vocabulary), ``extractor`` (comma list), ``levels`` (any of class,instance,part),
    ``background``, ``pamr``, ``skip_missing`` (true/false), ``explain`` (true: add explanations),
    ``outputs`` (comma list of labels, overlay, maps, runner_up, explain; default labels).

    Answers ``present`` {class: {fraction, score}}, ``legend`` and ``colours`` (label values as in
    ``protodb segment``'s PNGs), ``vocabulary`` (the sets used), ``settings``, ``confidence`` and the
    outputs asked: ``labels_png`` and ``overlay_png`` (base64 PNG; the overlay leaves the background
    as the photo), ``maps`` (per-pixel labels and int16 scores x 10000, base64), ``runner_up`` (adds
    to maps the best other label per pixel and its score), ``explain`` (per class the winning
    prototype, its set, support image and box).

    A score is a cosine similarity (-1 to 1) to the class's nearest prototype, not a probability.
    ``confidence`` says how clearly the winners beat their runners-up: ``separation`` = 1 - (1 - s1) /
    (1 - s2) per pixel (0 a tie), per class and for the image, the share of near ties (separation
    under 0.1), each class's usual runner-up, ``warnings`` (level warning: most of the image near
    ties, a single competing column, no match; level note: classes that only just won) and
    ``verdict``: clear, mixed (notes only) or doubtful.

    Images over the pixel limit (``max_pixels`` in ``/api/health``, 80 MP) are refused with 400.
    For progress and cancel on long work use ``POST /api/jobs/segment`` (same fields)."""
    s = _state(request)
    key, uploads, outputs = await _segment_args(request)
    body = await s.queue.run(_segment_job, s, key, uploads, outputs)
    return Response(content=body, media_type="application/json")


# ---------------------------------------------------------------------------------------- jobs
JOB_ERRORS = {404: {"description": "no such job (finished jobs are kept --job-ttl seconds)", **ERROR}}


@router.post("/jobs/segment", summary="Segment uploaded images as a job (progress, cancel)", status_code=202,
             openapi_extra=SEGMENT_OPENAPI, responses={
                 202: {"description": "the job: id, state, position in the queue; Location: its URL"},
                 413: ERROR, 503: {"description": "busy: the queue or the job table is full (Retry-After)", **ERROR},
                 **ERRORS})
async def segment_job(request: Request):
    """The fields of ``POST /api/segment``, checked at once (a bad field or an unknown vocabulary is
    answered here); the work waits in the same queue. Answers 202 with the job (``GET
    /api/jobs/{id}`` to follow it, ``GET /api/jobs/{id}/result`` once ``done``)."""
    s = _state(request)
    key, uploads, outputs = await _segment_args(request)
    n = len(uploads)
    label = f"segment {n} image{'s' if n != 1 else ''} with {key.label}"
    job = s.jobs.submit("segment", label, _segment_job, s, key, uploads, outputs)
    return JSONResponse(job.to_dict(s.queue), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


@router.get("/jobs/{job_id}", summary="A job's state, place in the queue and elapsed time", responses=JOB_ERRORS)
def job_status(request: Request, job_id: str = Path(max_length=64)) -> dict[str, Any]:
    """``state``: queued, running, cancelling, done, failed or cancelled; ``position`` (1 = next to
    start) and ``ahead`` while queued; ``elapsed``, ``queued_seconds``, ``running_seconds``;
    ``typical_seconds``: the recent mean time of one piece of work; ``error`` and ``status`` when
    failed; ``result_url`` when done."""
    s = _state(request)
    return s.jobs.get(job_id).to_dict(s.queue)


@router.get("/jobs/{job_id}/result", summary="A finished job's result", responses={
    409: {"description": "not finished yet", **ERROR}, 410: {"description": "cancelled", **ERROR}, **JOB_ERRORS})
def job_result(request: Request, job_id: str = Path(max_length=64)):
    """What the synchronous endpoint would have answered: the result (200), or the job's error with
    the status it would have had."""
    s = _state(request)
    job = s.jobs.get(job_id)
    if job.state == "done":
        return Response(content=job.result, media_type=job.media_type)
    if job.state == "failed":
        return _error(job.status or 500, job.error or "failed")
    if job.state == "cancelled":
        return _error(410, f"job {job.id} was cancelled; it has no result")
    return _error(409, f"job {job.id} is {job.state}; poll GET /api/jobs/{job.id} until it is done")


@router.delete("/jobs/{job_id}", summary="Cancel a job (or forget a finished one)", responses=JOB_ERRORS)
def job_cancel(request: Request, job_id: str = Path(max_length=64)) -> dict[str, Any]:
    """A queued job is cancelled at once and never runs; a running one is ``cancelling`` until its
    worker finishes the image in hand, then ``cancelled`` (its result dropped). A finished job is
    forgotten (``removed``: true), freeing its result."""
    s = _state(request)
    job, removed = s.jobs.cancel(job_id)
    return {**job.to_dict(s.queue), "removed": removed}


#: ``POST /segment`` (the page itself is ``GET /segment``): the same endpoint without the /api prefix
aliases = APIRouter()
aliases.add_api_route("/segment", segment, methods=["POST"], summary="Segment uploaded images (= POST /api/segment)",
                      responses={413: ERROR, 503: ERROR, **ERRORS}, openapi_extra=SEGMENT_OPENAPI)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
def unknown(rest: str):
    raise NotFound(f"no endpoint /api/{rest[:80]}; see /api")
