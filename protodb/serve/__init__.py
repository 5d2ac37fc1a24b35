"""``protodb serve``: a local HTTP service and web page over one prototype database.

=====================  ===================================================================
``config``             :class:`ServeConfig`: what a server serves and its limits (checked up front)
``warm``               the warm segmenters, one per served vocabulary, reloaded live
``jobs``               the bounded worker pool (back-pressure: 503 + Retry-After when full; place in line)
``tasks``              jobs a page follows (``/api/jobs``): state, position, elapsed, cancel; bounded, expiring
``views``              catalog pages as JSON: classes, sets, part traces (cached per set)
``results``            a segmentation as JSON (label PNG, overlay, per-pixel maps, explanations)
``guards``             body size (413 while reading), Host check, security headers, HEAD as GET, access log (ASGI)
``app``                the FastAPI application (``create_app``); routes in ``routes_api``/``routes_pages``
``server``             uvicorn on 127.0.0.1, the URL printed, SIGINT/SIGTERM stop it
``static/``            the web page: plain HTML, vanilla JS, CSS (no CDN, no build step)
=====================  ===================================================================

FastAPI and uvicorn are the optional ``serve`` extra (``pip install 'protodb[serve]'``); only this
package imports them, and only from ``app``, ``routes_*`` and ``server`` — importing
``protodb.serve`` itself needs neither, so the CLI can say how to install them.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "protodb serve needs the serve extra: pip install 'protodb[serve]'"
_NEEDS = ("fastapi", "uvicorn", "multipart")


def missing_dependencies() -> list[str]:
    """The serve extra's modules that are not installed (empty when serving can work)."""
    return [m for m in _NEEDS if importlib.util.find_spec(m) is None]
