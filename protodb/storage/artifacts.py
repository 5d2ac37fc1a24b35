"""Content-addressed artifact store: images, masks, attention maps, sheets.

Objects are named by the sha256 of their bytes (``ab/cdef…``), so writing the same bytes twice
stores them once and any copy can be verified. The root is a local folder or any fsspec URL
(``s3://bucket/prefix``, ``memory://…``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import fsspec

HASH_LEN = 64


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_whole(fs, local: bool, target: str, data: bytes) -> None:
    """Write ``data`` so that readers see all of it or nothing: object stores put whole objects;
    local folders write a temporary file, fsync it and rename it into place."""
    if not local:
        fs.pipe_file(target, data)
        return
    parent = target.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, digest: str) -> str:
        if len(digest) != HASH_LEN or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
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
