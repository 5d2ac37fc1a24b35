"""What a server serves and its limits: one frozen :class:`ServeConfig`, checked before anything binds."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from protodb.errors import InvalidInput
from protodb.segment.options import SegmentOptions

TOKEN_ENV = "PROTODB_SERVE_TOKEN"
MIN_TOKEN_LEN = 16
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def default_workers() -> int:
    """Segmenting threads: half the cores (torch already uses several per call), 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass(frozen=True)
class ServeConfig:
    """A server's settings.

    vocabs: vocabularies warmed at start and kept warm. options: the default segment options
    (vocabulary left empty; a request may override extractors, levels, background, PAMR,
    skip-missing). Other catalog vocabularies and class lists are served on demand (up to max_warm
    warm segmenters) unless vocab_only. allow_writes + token: writes (relabel) need both; the token is compared
    in constant time. max_upload: bytes of one request body. workers / queue_size: segmenting threads
    and requests that may wait for one; more at once are refused (503, Retry-After). reload_interval:
    seconds between cheap catalog checks for new ready sets. allowed_hosts: Host headers accepted
    (DNS-rebinding guard; default: the bound host and the loopback names). max_jobs / job_ttl: jobs
    (``/api/jobs``) held at once, and seconds a finished one is kept for its result. access_log: one
    line per request on stderr (method, path, status, bytes, milliseconds).
    """

    db_path: Path | None = None
    catalog_url: str | None = None
    vocabs: tuple[str, ...] = ()
    options: SegmentOptions = field(default_factory=SegmentOptions)
    allow_writes: bool = False
    token: str | None = None
    max_upload: int = 20 * 1024 * 1024
    queue_size: int = 8
    workers: int = field(default_factory=default_workers)
    reload_interval: float = 2.0
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    allowed_hosts: tuple[str, ...] | None = None
    max_pixels: int | None = None  # None: protodb.images.MAX_PIXELS
    trace_top: int = 6
    max_warm: int = 8  # warm segmenters kept besides the pinned ones (other vocabularies, class lists, options)
    vocab_only: bool = False  # serve only the named vocabularies with the server's options
    max_images: int = 16  # images in one POST /api/segment
    max_jobs: int = 16  # jobs held at once (unfinished + finished awaiting their result)
    job_ttl: float = 300.0  # seconds a finished job's result is kept
    access_log: bool = False

    def replace(self, **changes: Any) -> "ServeConfig":
        return dataclasses.replace(self, **changes)

    def check(self) -> "ServeConfig":
        """One line per problem, before any model loads or any port binds."""
        if self.allow_writes:
            if not self.token:
                raise InvalidInput(f"--allow-writes needs a token: set {TOKEN_ENV} (at least {MIN_TOKEN_LEN} "
                                   "characters) and send it as 'Authorization: Bearer TOKEN'")
            if len(self.token) < MIN_TOKEN_LEN:
                raise InvalidInput(f"{TOKEN_ENV} is {len(self.token)} characters; use at least {MIN_TOKEN_LEN} "
                                   "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        if self.max_upload < 1024:
            raise InvalidInput(f"the upload limit must be at least 1 KiB, got {self.max_upload} bytes")
        if self.workers < 1 or self.queue_size < 0:
            raise InvalidInput(f"--workers must be >= 1 and --queue >= 0; got {self.workers} / {self.queue_size}")
        if not self.reload_interval > 0:
            raise InvalidInput(f"--reload-interval must be > 0 seconds, got {self.reload_interval}")
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"--port must be 0..65535, got {self.port}")
        if self.options.vocab or self.options.classes:
            raise InvalidInput("serve options name no vocabulary; list the served ones with --vocab")
        if self.vocab_only and not self.vocabs:
            raise InvalidInput("--vocab-only needs the vocabularies to serve: --vocab NAME")
        if self.max_warm < 0 or self.max_images < 1:
            raise InvalidInput(f"--max-warm must be >= 0 and images per request >= 1; got {self.max_warm} / "
                               f"{self.max_images}")
        if self.max_jobs < 1 or not self.job_ttl > 0:
            raise InvalidInput(f"--max-jobs must be >= 1 and --job-ttl > 0 seconds; got {self.max_jobs} / {self.job_ttl}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise InvalidInput(f"the pixel limit must be positive, got {self.max_pixels}")
        return self

    def hosts(self) -> list[str]:
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        return list(dict.fromkeys([self.host, *LOOPBACK]))

    @property
    def writes_enabled(self) -> bool:
        return bool(self.allow_writes and self.token)


def from_env_token(value: str | None = None) -> str | None:
    token = value if value is not None else os.environ.get(TOKEN_ENV)
    return token.strip() if token and token.strip() else None


def served_names(vocabs: Sequence[str]) -> tuple[str, ...]:
    out = []
    for v in vocabs:
        for name in str(v).split(","):
            if name.strip() and name.strip() not in out:
                out.append(name.strip())
    return tuple(out)
