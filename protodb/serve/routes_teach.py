"""Teaching by example over HTTP: corrections (list, add) and a class's rebuild from its corrections as a
background job. Writes need ``--allow-writes`` and ``Authorization: Bearer $PROTODB_SERVE_TOKEN``; the token
is checked before the body is read, and every input is checked before anything is written (400 for a bad
image or mask or a mask whose size differs from the image's, 404 for an unknown class, 401 without the
token, 403 when writes are off)."""

from __future__ import annotations

import json
from typing import Any, Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from protodb.errors import InvalidInput, NotFound
from protodb.images import MAX_PIXELS
from protodb.serve.routes_api import ERROR, ERRORS, _authorize, _clean_name, _error, _Refused, _state

router = APIRouter(prefix="/api")
WRITE_ERRORS = {401: ERROR, 403: ERROR, 413: ERROR, **ERRORS}
MAX_FIELD = 64 * 1024


def _refused(err: _Refused) -> JSONResponse:
    return _error(err.status, str(err), {"WWW-Authenticate": "Bearer"} if err.status == 401 else None)


@router.get("/corrections", summary="Stored corrections (of one class)", responses=ERRORS)
def corrections(request: Request, cls: Optional[str] = Query(None, alias="class", max_length=200)) -> dict[str, Any]:
    """Every correction (``class``: of that class only), oldest first: class, image and mask artifacts,
    source image hash, pixels marked, author, the set corrected, segment settings, time."""
    recs = _state(request).db.corrections.ls(cls)
    return {"corrections": [r.to_dict() for r in recs]}


async def _correction_form(request: Request) -> dict[str, Any]:
    """The multipart fields of a correction: files ``image`` and ``mask`` (or ``label_map``), text fields
    ``class``, ``values`` (JSON {value: class}), ``author``, ``set`` (a ref), ``settings`` (JSON)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("send multipart/form-data with the files 'image' and 'mask' and the field 'class'")
    form = await request.form(max_files=3, max_fields=16, max_part_size=MAX_FIELD)
    try:
        out: dict[str, Any] = {}
        for key in ("image", "mask", "label_map"):
            item = form.get(key)
            if item is not None and not isinstance(item, str):
                out[key] = (await item.read(), _clean_name(item.filename))
            elif item is not None:
                raise InvalidInput(f"'{key}' must be a file field")
        for key in ("class", "values", "author", "set", "settings"):
            value = form.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"'{key}' must be a text field")
            if value is not None and value.strip():
                out[key] = value.strip()
        return out
    finally:
        await form.close()


def _json_field(text: str | None, name: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidInput(f"'{name}' must be JSON") from None


@router.post("/corrections", summary="Add a correction (writes)", status_code=201, responses=WRITE_ERRORS)
async def add_correction(request: Request):
    """Multipart: file ``image`` (the image that was segmented), file ``mask`` (a PNG of the image's size:
    its non-zero or painted pixels are the class) and field ``class``; or file ``label_map`` with field
    ``values`` (JSON ``{"3": "boat", ...}``). Optional: ``author`` (free text), ``set`` (the ref of the set
    that produced the corrected result, e.g. ``boat@1``), ``settings`` (JSON: the segment settings).
    Answers 201 with the stored corrections. Nothing is written unless everything is valid."""
    try:
        _authorize(request)  # before the body is even parsed
    except _Refused as err:
        return _refused(err)
    s = _state(request)
    fields = await _correction_form(request)
    if "image" not in fields:
        raise InvalidInput("send the image that was segmented as the file field 'image'")
    data, name = fields["image"]
    settings = _json_field(fields.get("settings"), "settings")
    if settings is not None and not isinstance(settings, dict):
        raise InvalidInput("'settings' must be a JSON object")
    kwargs: dict[str, Any] = {"name": name, "author": fields.get("author"), "settings": settings,
                              "max_pixels": s.config.max_pixels or MAX_PIXELS}
    if "mask" in fields:
        if "class" not in fields:
            raise InvalidInput("name the class the mask marks in the field 'class'")
        kwargs.update(mask=fields["mask"][0], class_name=fields["class"])
    elif "label_map" in fields:
        values = _json_field(fields.get("values"), "values")
        if not isinstance(values, dict) or not values:
            raise InvalidInput("a label map needs 'values': a JSON object {\"3\": \"boat\", ...}")
        try:
            kwargs.update(label_map=fields["label_map"][0], values={int(k): str(v) for k, v in values.items()})
        except (TypeError, ValueError):
            raise InvalidInput("'values' keys are label values (integers)") from None
    else:
        raise InvalidInput("send the corrected pixels as the file field 'mask' (or 'label_map' with 'values')")

    def store():
        if "set" in fields:
            found = s.db.sets.resolve(fields["set"])
            if not found:
                raise NotFound(f"no ready prototype set {fields['set'][:80]!r}")
            kwargs["set_id"] = found[0].id
        return s.db.corrections.add(data, **kwargs)

    recs = await run_in_threadpool(store)
    return JSONResponse({"corrections": [r.to_dict() for r in recs]}, status_code=201)


def _rebuild_job(state, name: str, job=None) -> bytes:
    """On a worker: build a new version of ``name`` from its newest version's support plus its corrections,
    reporting each stage as the job's progress."""
    previous = state.db.sets.resolve(name)[0].ref
    totals: dict[str, Any] = {}
    done: dict[str, float] = {}

    def progress(stage: str, n: int, total: int | None) -> None:
        if total is not None:
            totals[stage], done[stage] = total, float(n)
        else:
            done[stage] = done.get(stage, 0.0) + n
        if job is not None:
            job.report(done[stage], totals.get(stage), stage)

    res = state.db.rebuild_with_corrections(name, progress=progress)
    built = res.sets[0].set
    doc = {"class": name, "previous": previous, "ref": built.ref, "reused": res.sets[0].reused, "built": res.to_dict()}
    return json.dumps(doc, separators=(",", ":")).encode()


@router.post("/classes/{name}/rebuild", summary="Rebuild a class from its corrections as a job (writes)",
             status_code=202, responses={**WRITE_ERRORS, 503: ERROR})
async def rebuild(request: Request, name: str):
    """A new version of the class from its newest version's support plus every stored correction (the
    previous version stays addressable as ``NAME@N``). Answers 202 with the job: follow ``GET
    /api/jobs/{id}`` (``progress``: stage, done, total); its result names ``previous`` and the new ``ref``."""
    try:
        _authorize(request)
    except _Refused as err:
        return _refused(err)
    s = _state(request)

    def check() -> str:
        sets = s.db.sets.resolve(name)
        if not sets:
            raise NotFound(f"class {name[:80]!r} has no ready prototypes")
        if not s.db.corrections.ls(sets[0].class_name):
            raise InvalidInput(f"class {sets[0].class_name!r} has no corrections; add one first")
        return sets[0].class_name

    cls = await run_in_threadpool(check)
    job = s.jobs.submit("build", f"rebuild {cls} from its corrections", _rebuild_job, s, cls, pass_job=True)
    return JSONResponse(job.to_dict(s.queue), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})
