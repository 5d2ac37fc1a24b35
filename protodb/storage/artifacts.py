"""Content-addressed artifact store: images, masks, attention maps, sheets.

Objects are named by the sha256 of their bytes (``ab/cdef…``), so writing the same bytes twice
stores them once and any copy can be verified. The root is a local folder or any fsspec URL
(``s3://bucket/prefix``, ``memory://…``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from protodb.fileio import atomic_write
from protodb.hashing import sha256_bytes
from protodb.lazy import lazy_import

fsspec = lazy_import("fsspec")  # (and its s3 backend): only when artifacts are touched

HASH_LEN = 64


def is_sha256(digest: object) -> bool:
    return isinstance(digest, str) and len(digest) == HASH_LEN and all(c in "0123456789abcdef" for c in digest)


def write_whole(fs, local: bool, target: str, data: bytes) -> None:
    """Write ``data`` so that readers see all of it or nothing: object stores put whole objects;
    local folders go through :func:`protodb.fileio.atomic_write`."""
    if local:
        atomic_write(target, data)
    else:
        fs.pipe_file(target, data)


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    missing: list[str]
    corrupt: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


class ArtifactStore:
    """Immutable blobs keyed by sha256. ``put`` is atomic for local folders (write, fsync, rename)."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        self.url = root
        self.fs, self.root = fsspec.core.url_to_fs(root)
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol

    def path(self, digest: str) -> str:
        if not is_sha256(digest):
            raise ValueError(f"not a sha256 digest: {str(digest)[:70]!r}")
        return f"{self.root}/{digest[:2]}/{digest[2:]}"

    def exists(self, digest: str) -> bool:
        return self.fs.exists(self.path(digest))

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its sha256. A second put of the same bytes writes nothing."""
        digest = sha256_bytes(data)
        target = self.path(digest)
        if self.fs.exists(target):
            return digest
        write_whole(self.fs, self.local, target, data)
        return digest

    def delete(self, digest: str) -> None:
        """Remove an object (only for objects a failed write of this process added and nothing names)."""
        if self.fs.exists(self.path(digest)):
            self.fs.rm_file(self.path(digest))

    def get(self, digest: str) -> bytes:
        return self.fs.cat_file(self.path(digest))

    def size(self, digest: str) -> int:
        return int(self.fs.size(self.path(digest)))

    def local_path(self, digest: str) -> Path | None:
        return Path(self.path(digest)) if self.local else None

    def verify(self, digests: Iterable[str]) -> VerifyReport:
        """Re-hash every object in ``digests``; report missing and corrupt ones."""
        missing, corrupt, n = [], [], 0
        for digest in sorted(set(digests)):
            n += 1
            if not self.exists(digest):
                missing.append(digest)
            elif sha256_bytes(self.get(digest)) != digest:
                corrupt.append(digest)
        return VerifyReport(checked=n, missing=missing, corrupt=corrupt)
