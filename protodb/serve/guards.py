"""Guards in front of the application (plain ASGI, no framework): body size, Host header, headers.

:class:`BodyLimit` refuses a request body over ``max_bytes``: at once from a ``Content-Length`` that
says so (nothing is read), else while reading — the body is counted as it arrives and the read stops
at the limit with :class:`UploadTooLarge` (answered 413), so no request can make the server hold more
than the limit. :class:`HostGuard` answers 400 to a Host header that is not this server's (a web page
reaching 127.0.0.1 through DNS rebinding sends its own host name) and 403 to a POST whose Origin is
another site (a cross-site form post needs no CORS preflight).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


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
