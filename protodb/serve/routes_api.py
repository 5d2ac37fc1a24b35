"""The JSON API (``/api/...``). Catalog reads run in the framework's thread pool; segmenting and part
traces run on the bounded :class:`protodb.serve.jobs.WorkQueue` (503 when it is full)."""

from __future__ import annotations

import hmac
import re
import time
from typing import Any, Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import protodb
from protodb.errors import InvalidInput, NotFound, ProtoDBError
from protodb.images import MAX_PIXELS, load_image
from protodb.serve.results import parse_outputs, segment_json

router = APIRouter(prefix="/api")

SHA256 = re.compile(r"^[0-9a-f]{64}$")
IMMUTABLE = "public, max-age=31536000, immutable"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _state(request: Request):
    return request.app.state.serve


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _clean_name(name: str | None) -> str:
    """A client's file name as shown back: printable, at most 120 characters."""
    text = "".join(ch for ch in (name or "") if ch.isprintable()).strip()
    return (text or "upload")[:120]


# ---------------------------------------------------------------------------------------- overview
@router.get("")
def index() -> dict[str, Any]:
    return {"endpoints": {
        "GET /api/health": "server, queue and reload status",
        "GET /api/vocabularies": "served vocabularies and the sets each one uses now",
        "GET /api/classes": "classes with their ready versions, thumbnails and sets",
        "GET /api/classes/{name}": "one class: versions and thing/stuff label history",
        "POST /api/classes/{name}/label": "relabel thing/stuff (--allow-writes + Bearer token)",
        "GET /api/sets/{id or ref}": "one ready set: provenance (build config, images, masks, label)",
        "GET /api/sets/{id or ref}/parts?top=6": "each part prototype's nearest support patches",
        "GET /api/artifacts/{sha256}": "a stored image (immutable)",
        "POST /api/segment?vocab=NAME&outputs=labels,overlay,maps,explain": "segment an uploaded image",
    }}


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    s = _state(request)
    return {"ok": True, "protodb_version": protodb.__version__, "schema_revision": s.db.schema_revision,
            "writes": s.config.writes_enabled, "vocabularies": list(s.pool.names()),
            "max_upload": s.config.max_upload, "queue": s.queue.stats(), "reload": s.pool.stats(),
            "uptime": round(time.time() - s.started_at, 1)}


@router.get("/vocabularies")
def vocabularies(request: Request) -> dict[str, Any]:
    return {"vocabularies": _state(request).pool.describe()}


# ---------------------------------------------------------------------------------------- catalog
@router.get("/classes")
def classes(request: Request) -> dict[str, Any]:
    return _state(request).views.classes()


@router.get("/classes/{name}")
def class_detail(request: Request, name: str) -> dict[str, Any]:
    return _state(request).views.class_detail(name)


@router.get("/sets/{key}")
def set_detail(request: Request, key: str, extractor: Optional[str] = Query(None, max_length=200)) -> dict[str, Any]:
    return _state(request).views.set_detail(key, extractor)


@router.get("/sets/{key}/parts")
async def set_parts(request: Request, key: str, top: int = Query(6, ge=1, le=24)) -> dict[str, Any]:
    s = _state(request)
    return await s.queue.run(s.views.parts, key, top)


@router.get("/artifacts/{digest}")
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


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@router.post("/classes/{name}/label")
async def relabel(request: Request, name: str):
    """Body ``{"kind": "thing" | "stuff"}``; the label history keeps every earlier decision."""
    try:
        _authorize(request)  # before the body is even parsed
    except _Refused as err:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return _error(err.status, str(err), headers)
    try:
        body = await request.json()
    except ValueError:
        raise InvalidInput('send a JSON body: {"kind": "thing"} or {"kind": "stuff"}') from None
    kind = body.get("kind") if isinstance(body, dict) else None
    if kind not in ("thing", "stuff"):
        raise InvalidInput(f'send {{"kind": "thing"}} or {{"kind": "stuff"}}; got {str(kind)[:40]!r}')
    history = await run_in_threadpool(_state(request).db.labels.set, name, kind)
    return history.to_dict()


# ---------------------------------------------------------------------------------------- segmenting
def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


async def _read_upload(request: Request) -> tuple[bytes, str, dict[str, str]]:
    """(image bytes, file name, form fields). Multipart (field ``image``) or the raw body; the size
    limit is enforced while reading by :class:`protodb.serve.guards.BodyLimit`."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16, max_part_size=64 * 1024)
        try:
            upload = form.get("image") or form.get("file")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            if upload is None or isinstance(upload, str):
                raise InvalidInput("send the image as the multipart file field 'image'")
            data = await upload.read()
            return data, _clean_name(upload.filename), fields
        finally:
            await form.close()
    if ctype.startswith("application/x-www-form-urlencoded"):
        raise InvalidInput("send the image as multipart/form-data (field 'image') or as the raw request body")
    return await request.body(), _clean_name(request.query_params.get("name")), {}


def _segment_job(state, vocab: str, data: bytes, name: str, outputs: set[str]) -> bytes:
    """On a worker: decode (refusing non-images, truncated files, bombs), segment, serialize."""
    try:
        image = load_image(data, max_pixels=state.config.max_pixels or MAX_PIXELS)
    except InvalidInput as err:
        message = str(err)
        if message.startswith("<bytes>: "):
            message = message[len("<bytes>: "):]
        raise InvalidInput(f"{name}: {message}") from None
    served = state.pool.get(vocab)
    t0 = time.perf_counter()
    try:
        result = served.segmenter.segment(image)
    except RuntimeError as err:  # e.g. an image too large for this machine's memory
        raise ProtoDBError(f"{name}: could not be segmented ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    return segment_json(served, image, result, outputs=outputs, name=name, seconds=time.perf_counter() - t0)


@router.post("/segment")
async def segment(request: Request):
    """Segment one image with a served vocabulary. Query or form fields: ``vocab`` (optional when one
    is served), ``outputs`` (comma list of labels, overlay, maps, explain; default labels)."""
    s = _state(request)
    data, name, fields = await _read_upload(request)
    params = {**request.query_params, **fields}
    if not data:
        raise InvalidInput(f"{name}: empty upload (0 bytes); send an image file")
    outputs = parse_outputs(params.get("outputs"))
    if _flag(params.get("explain", "")):
        outputs.add("explain")
    vocab = params.get("vocab") or None

    def choose() -> str:
        if vocab is None:
            names = s.pool.names()
            if len(names) != 1:
                raise InvalidInput("say which vocabulary: vocab=NAME; served: " + (", ".join(names) or "none"))
            return names[0]
        return s.pool.check_served(vocab)

    chosen = await run_in_threadpool(choose)
    body = await s.queue.run(_segment_job, s, chosen, data, name, outputs)
    return Response(content=body, media_type="application/json")


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
def unknown(rest: str):
    raise NotFound(f"no endpoint /api/{rest[:80]}; see /api")
