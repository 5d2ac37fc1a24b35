"""The FastAPI application of ``protodb serve``: :func:`create_app`.

Errors have one shape everywhere: ``{"error": "one line"}`` with a 4xx code for what the caller can
fix (400 bad input, 401/403 writes, 404 unknown vocabulary/class/set/artifact, 413 upload too large,
422 malformed request) and 503 + ``Retry-After`` when the queue is full; 500 for the server's own
problems (damaged data, bugs), still one line (details in the server log).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import protodb
from protodb.errors import DamagedData, InvalidInput, NotFound, ProtoDBError
from protodb.serve import routes_api, routes_pages, routes_teach
from protodb.serve.config import ServeConfig
from protodb.serve.jobs import Overloaded, WorkQueue
from protodb.serve.guards import AccessLog, BodyLimit, HeadAsGet, HostGuard, SecurityHeaders, UploadTooLarge
from protodb.serve.tasks import JobTable
from protodb.serve.views import CatalogViews
from protodb.serve.warm import WarmPool

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
}


class ServeState:
    """What the routes share: the config, the database, warm segmenters, the work queue, views."""

    def __init__(self, config: ServeConfig, db, pool: WarmPool, queue: WorkQueue, views: CatalogViews):
        self.config, self.db, self.pool, self.queue, self.views = config, db, pool, queue, views
        self.started_at = time.time()


def one_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_of(err: ProtoDBError) -> int:
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, InvalidInput):
        return 400
    return 500  # DamagedData, SchemaMismatch: the server's data, not the request


def install_errors(app: FastAPI) -> None:
    @app.exception_handler(ProtoDBError)
    async def _protodb(_request: Request, err: ProtoDBError):
        if isinstance(err, DamagedData):
            log.error("damaged data: %s", err)
        return error(_status_of(err), one_line(err))

    @app.exception_handler(Overloaded)
    async def _busy(_request: Request, err: Overloaded):
        return error(503, one_line(err), {"Retry-After": str(err.retry_after)})

    @app.exception_handler(UploadTooLarge)
    async def _big(_request: Request, err: UploadTooLarge):
        return error(413, one_line(err), {"Connection": "close"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, err: StarletteHTTPException):
        message = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 404 and message == "Not Found":
            message = "no such page or endpoint; see /api"
        elif err.status_code == 405:
            message = "method not allowed here"
        return error(err.status_code, message, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError):
        first = (err.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(MemoryError)
    async def _memory(_request: Request, err: MemoryError):
        return error(507, "not enough memory for this image; send a smaller one")

    @app.exception_handler(Exception)
    async def _bug(_request: Request, err: Exception):
        log.exception("unexpected error")
        return error(500, f"internal error ({type(err).__name__}); see the server log")


def create_app(db_path=None, *, catalog_url: str | None = None, vocabs=None, allow_writes: bool | None = None,
               token: str | None = None, max_upload: int | None = None, queue_size: int | None = None,
               workers: int | None = None, config: ServeConfig | None = None, db=None, warm: bool = True,
               **more: Any) -> FastAPI:
    """The application serving database ``db_path`` (or an open ``db``).

    Arguments not given take :class:`ServeConfig`'s defaults; ``config`` gives them all at once.
    ``warm``: load the named vocabularies now (a vocabulary that cannot be served raises here, before
    any port binds). The app owns a database it opened (closed at shutdown).
    """
    fields = {"db_path": db_path, "catalog_url": catalog_url, "vocabs": None if vocabs is None else tuple(vocabs),
              "allow_writes": allow_writes, "token": token, "max_upload": max_upload, "queue_size": queue_size,
              "workers": workers, **more}
    config = (config or ServeConfig()).replace(**{k: v for k, v in fields.items() if v is not None}).check()
    owned = db is None
    if db is None:
        db = protodb.api.ProtoDB(config.db_path, catalog_url=config.catalog_url, create=False)
    try:
        pool = WarmPool(db, config.vocabs, config.options, config.reload_interval, max_warm=config.max_warm,
                        on_demand=not config.vocab_only)
        if warm:
            pool.warm()
    except BaseException:
        if owned:
            db.close()
        raise
    queue = WorkQueue(config.workers, config.queue_size)
    state = ServeState(config, db, pool, queue, CatalogViews(db, config.trace_top))
    state.jobs = JobTable(queue, config.max_jobs, config.job_ttl)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        pool.start()
        try:
            yield
        finally:
            pool.stop()
            queue.shutdown()
            if owned:
                db.close()

    app = FastAPI(title="protodb", version=protodb.__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/api/openapi.json")  # /api/docs: our page (the bundled UI uses a CDN)
    app.state.serve = state
    install_errors(app)

    app.include_router(routes_pages.router)  # first: /api/docs is a page, before the API's catch-all
    app.include_router(routes_teach.router)  # before the API's catch-all
    app.include_router(routes_api.router)
    app.include_router(routes_api.aliases)
    routes_pages.mount_static(app)
    app.add_middleware(HeadAsGet)  # innermost: HEAD is GET to the routes, and loses only the body
    app.add_middleware(BodyLimit, max_bytes=config.max_upload)
    app.add_middleware(SecurityHeaders, headers=SECURITY_HEADERS)
    app.add_middleware(HostGuard, allowed=config.hosts())  # a foreign Host gets nothing else
    if config.access_log:
        app.add_middleware(AccessLog)  # outermost: every request, refused ones too, with its final status
    return app
