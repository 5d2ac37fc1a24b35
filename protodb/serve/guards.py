"""Guards in front of the application (plain ASGI, no framework): body size, Host header, headers.

:class:`BodyLimit` refuses a request body over ``max_bytes``: at once from a ``Content-Length`` that
says so (nothing is read), else while reading — the body is counted as it arrives and the read stops
at the limit with :class:`UploadTooLarge` (answered 413), so no request can make the server hold more
than the limit. :class:`HostGuard` answers 400 to a Host header that is not this server's (a web page
reaching 127.0.0.1 through DNS rebinding sends its own host name) and 403 to a POST whose Origin is
another site (a cross-site form post needs no CORS preflight). :class:`HeadAsGet` answers ``HEAD``
wherever ``GET`` is answered, with the same status and headers and no body. :class:`AccessLog` logs
one line per request.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

ACCESS_LOGGER = "protodb.serve.access"


class UploadTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"upload is over the {limit / 1024 / 1024:g} MB limit; send a smaller image "
                         "(or start the server with a larger --max-upload-mb)")
        self.limit = limit


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    return await send_json(send, 400, {"error": "Content-Length is not a number"})
        if declared is not None and declared > self.max_bytes:
            return await send_json(send, 413, {"error": str(UploadTooLarge(self.max_bytes))})
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


class HostGuard:
    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1").lower() for k, v in scope.get("headers", ()) if k == b"host"), "")
        if _hostname(host) not in self.allowed:
            return await send_json(send, 400, {"error": f"Host {host[:80]!r} is not served here; use "
                                                        f"http://{sorted(self.allowed)[0]}:PORT/ or --allow-host"})
        if scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS"):
            origin = next((v.decode("latin-1").lower() for k, v in scope.get("headers", ()) if k == b"origin"), None)
            if origin is not None and _hostname(origin.split("://", 1)[-1]) not in self.allowed:
                # another site's page posting here (a form needs no CORS preflight): refused
                return await send_json(send, 403, {"error": f"requests from {origin[:80]!r} are not accepted "
                                                            "(cross-site); call the API from this server's pages "
                                                            "or without an Origin header"})
        await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    """``name`` of ``name``, ``name:port``, ``[v6]:port``, lowercased."""
    host = host.lower().split("/", 1)[0]
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SecurityHeaders:
    """Adds fixed headers (nosniff, no framing, no referrer, a same-origin CSP) to every response."""

    def __init__(self, app, headers: dict[str, str]):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", ())}
                message = {**message, "headers": [*message.get("headers", ()),
                                                  *((k, v) for k, v in self.headers if k not in have)]}
            await send(message)

        await self.app(scope, receive, with_headers)


class HeadAsGet:
    """``HEAD`` answered as ``GET`` without the body (caches and link checkers use it): the routes see
    GET, the client gets the same status and headers (Content-Length of the full body) and no bytes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            return await self.app(scope, receive, send)
        ended = False

        async def headers_only(message: dict) -> None:
            nonlocal ended
            if message["type"] == "http.response.body":
                if ended or message.get("more_body", False):
                    return
                ended = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            elif message["type"] == "http.response.pathsend":  # a file sent by the server: not for HEAD
                if not ended:
                    ended = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class AccessLog:
    """One line per request on the ``protodb.serve.access`` logger: client, request line, status, bytes
    of the response body and milliseconds until its last byte (``-`` for a status when none was sent)."""

    def __init__(self, app, logger: logging.Logger | None = None):
        self.app = app
        self.log = logger or logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status: int | None = None
        sent = 0

        async def counted(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            client = scope.get("client") or ("-", 0)
            target = scope.get("raw_path") or scope.get("path", "").encode()
            if isinstance(target, bytes):
                target = target.decode("latin-1")
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            line = "".join(ch if ch.isprintable() else "?" for ch in f'{scope.get("method", "-")} {target[:300]}')
            self.log.info('%s:%s "%s HTTP/%s" %s %d B %.1f ms', client[0], client[1], line,
                          scope.get("http_version", "1.1"), status if status is not None else "-", sent,
                          1000 * (time.perf_counter() - t0))
