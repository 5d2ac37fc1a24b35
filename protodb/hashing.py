"""The one way protodb hashes things: canonical JSON, bytes and files (all sha256, lowercase hex).

Canonical JSON (``canonical_json``) is what every content identifier in protodb is computed over:
keys sorted, no spaces, UTF-8, no NaN/Infinity, tuples as lists. The same value always gives the
same text, so the same build configuration always gives the same ``config_hash``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from protodb.fileio import atomic_write

_CHUNK = 1 << 22


def _default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON text (sorted keys, compact separators, no NaN)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_default)


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """sha256 hex digest of :func:`canonical_json` of ``obj``: the identity of a configuration."""
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


_FILE_MEMO: dict[tuple[str, int, int], str] = {}
_MEMO_LOCK = threading.Lock()
_PERSIST: dict[str, Path] = {}


def persist_file_hashes(path: str | os.PathLike) -> None:
    """Also remember file digests across processes in the JSON file ``path`` (per real path, size and
    mtime), so a weight file is hashed once, not on every run. ``verify`` never uses it."""
    _PERSIST["path"] = Path(path)


def _persisted() -> dict:
    target = _PERSIST.get("path")
    if target is None or not target.is_file():
        return {}
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _persist(real: str, key: tuple[str, int, int], digest: str) -> None:
    target = _PERSIST.get("path")
    if target is None:
        return
    table = _persisted()
    table[real] = [key[1], key[2], digest]
    try:
        atomic_write(target, canonical_json(table).encode())
    except OSError:
        pass  # a read-only home: hashing again next time only costs time


def sha256_file(path: str | os.PathLike, *, memo: bool = True) -> str:
    """sha256 hex digest of a file's bytes, read in chunks.

    With ``memo`` the digest is remembered per (real path, size, mtime in ns) for the life of the
    process (and across processes after :func:`persist_file_hashes`), so checking a 100 MB weight
    file on every load costs one ``stat`` after the first time.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if memo:
        with _MEMO_LOCK:
            if key in _FILE_MEMO:
                return _FILE_MEMO[key]
        known = _persisted().get(real)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            with _MEMO_LOCK:
                _FILE_MEMO[key] = known[2]
            return known[2]
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    out = digest.hexdigest()
    if memo:
        with _MEMO_LOCK:
            _FILE_MEMO[key] = out
        _persist(real, key, out)
    return out


def sha256_files(files: dict[str, str | os.PathLike]) -> str:
    """One file: its sha256. Several (label -> path): sha256 of the sorted ``"label sha256\\n"`` lines."""
    if len(files) == 1:
        return sha256_file(next(iter(files.values())))
    lines = "".join(f"{label} {sha256_file(p)}\n" for label, p in sorted(files.items()))
    return sha256_bytes(lines.encode("utf-8"))
