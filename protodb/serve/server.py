"""Running the app: uvicorn on one socket bound before anything is announced.

The socket is bound (port 0 picks a free one) and listening before the URL is printed, so whoever
reads the URL can connect at once. uvicorn stops gracefully on SIGINT and SIGTERM: requests in
flight get ``GRACE`` seconds to finish, then the workers and the database are closed. With
``--access-log`` every request is one line on stderr (see :func:`access_logger`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
from typing import Callable, Iterator

import uvicorn

from protodb.errors import InvalidInput
from protodb.serve.app import create_app
from protodb.serve.config import ServeConfig
from protodb.serve.guards import ACCESS_LOGGER

GRACE = 5


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
    # says TCP; with proto 0 every small response waited ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        hint = "; pick another with --port (0: any free port)" if err.errno in (48, 98) else ""
        raise InvalidInput(f"cannot listen on {host}:{port}: {err.strerror or err}{hint}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/"


@contextlib.contextmanager
def quiet_stop_signals() -> Iterator[None]:
    """While uvicorn runs it handles SIGINT/SIGTERM itself (graceful stop) and, once stopped, raises the
    signal again to the handler that was there before; a no-op one makes that a clean exit (status 0)
    instead of an "interrupted" error from the command line's own handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        signal.signal(sig, lambda *_: None)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


ACCESS_FORMAT = "%(asctime)s %(message)s"


def access_logger(stream=None) -> logging.Logger:
    """The request log (:class:`protodb.serve.guards.AccessLog` writes it): INFO lines on stderr with the
    time, not passed on to the root logger (so ``log_level`` never hides it, nor doubles it)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(getattr(h, "_protodb_access", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter(ACCESS_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        handler._protodb_access = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger


def serve(config: ServeConfig, *, announce: Callable[[str], None] = print, access_log: bool | None = None,
          log_level: str = "warning") -> None:
    """Warm the named vocabularies, bind, announce the URL, serve until SIGINT/SIGTERM. ``access_log``
    (default: the config's) logs one line per request on stderr, whatever ``log_level`` says."""
    if access_log is not None:
        config = config.replace(access_log=access_log)
    config = config.check()
    if config.access_log:
        access_logger()
    app = create_app(config=config)  # a vocabulary that cannot be served fails here, before binding
    sock = bind(config.host, config.port)
    try:
        port = sock.getsockname()[1]
        # uvicorn's own access log stays off: ours (guards.AccessLog) adds bytes and milliseconds and
        # is not hidden by log_level
        server = uvicorn.Server(uvicorn.Config(
            app, host=config.host, port=port, log_level=log_level, access_log=False, lifespan="on",
            timeout_graceful_shutdown=GRACE, server_header=False, proxy_headers=False))
        announce(url_of(sock, config.host))
        with quiet_stop_signals():
            server.run(sockets=[sock])
    finally:
        sock.close()
        logging.getLogger(__name__).info("protodb serve stopped")
