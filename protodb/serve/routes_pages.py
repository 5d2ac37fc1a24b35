"""The web page: HTML pages (gallery, set, segment, API docs) and their static scripts and styles.

Plain files from ``protodb/serve/static`` (no CDN, no build step); the pages read the JSON API.
``/docs`` and ``/redoc`` (where FastAPI puts them) redirect to ``/api/docs``, ``/openapi.json`` to
``/api/openapi.json``. ``HEAD`` is answered wherever ``GET`` is (:class:`protodb.serve.guards.HeadAsGet`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


@router.get("/")
def gallery_page() -> FileResponse:
    return _page("index.html")


@router.get("/segment")
def segment_page() -> FileResponse:
    return _page("segment.html")


@router.get("/sets/{key}")
def set_page(key: str) -> FileResponse:  # the page reads the key from its own URL
    return _page("set.html")


@router.get("/api/docs")
def api_docs_page() -> FileResponse:  # the OpenAPI document rendered by our own page (Swagger UI needs a CDN)
    return _page("docs.html")


# where FastAPI's own documentation lives by default: sent to ours
@router.get("/docs")
@router.get("/redoc")
def docs_redirect() -> RedirectResponse:
    return RedirectResponse("/api/docs", status_code=307)


@router.get("/openapi.json")
def openapi_redirect() -> RedirectResponse:
    return RedirectResponse("/api/openapi.json", status_code=307)


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
