"""Files that appear whole or not at all, and cross-process locks.

Everything protodb writes to a local disk goes through :func:`atomic_write` (bytes) or
:func:`atomic_path` / :func:`atomic_dir` (a file or folder produced by another library): the
content is written to a temporary sibling, flushed to disk, then renamed over the target, so a
reader or a crash never sees half a file. Temporary siblings are named ``.NAME.tmp-PID-RANDOM``;
:func:`remove_stale_temps` clears those left by killed processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

FILE_MODE = 0o644
TMP_MARK = ".tmp-"


def _tmp_sibling(target: Path) -> Path:
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write a file to; on success it is fsynced, given
    ``mode`` and renamed to ``target``; on any error (or a kill) it never becomes ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(target)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(target: str | os.PathLike, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``target`` so that readers see all of it or nothing."""
    with atomic_path(target, mode=mode) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it is renamed to ``target``.

    If ``target`` appeared meanwhile (another process finished the same work), the temporary folder
    is discarded and ``target`` is kept. On error the temporary folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(target)
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temps(folder: str | os.PathLike, *, older_than_s: float = 3600.0) -> int:
    """Delete temporary siblings (``.X.tmp-PID-…``) in ``folder`` whose writer is gone (its pid is
    not alive on this host, or it is older than ``older_than_s``). Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    now = time.time()
    for entry in folder.iterdir():
        if not entry.name.startswith(".") or TMP_MARK not in entry.name:
            continue
        pid_text = entry.name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0]
        alive = pid_text.isdigit() and pid_alive(int(pid_text))
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        if alive and age < older_than_s:
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
            log.debug("removed stale temporary %s", entry)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (ours always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), held across processes."""
    path = Path(path)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.debug("waiting for lock %s", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def temp_dir(parent: str | os.PathLike, label: str) -> Iterator[Path]:
    """A private temporary folder under ``parent`` (created), removed on exit. Named like a
    temporary sibling (``.LABEL.tmp-PID-…``), so :func:`remove_stale_temps` clears it after a kill."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = _tmp_sibling(parent / label)
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def move_into_place(src: str | os.PathLike, target: str | os.PathLike, *, mode: int = FILE_MODE) -> None:
    """Move a finished file to ``target`` atomically: a rename when both are on one file system, else
    a copy through :func:`atomic_path` beside the target."""
    src, target = Path(src), Path(target)
    os.chmod(src, mode)
    try:
        os.replace(src, target)
    except OSError as err:
        if err.errno != 18:  # EXDEV: another file system
            raise
        with atomic_path(target, mode=mode) as tmp:
            shutil.copyfile(src, tmp)
        src.unlink()
    _fsync_dir(target.parent)


def is_remote_uri(uri: str) -> bool:
    """Whether ``uri`` names a store every node can reach (``s3://``, ``gs://``...; not a folder)."""
    scheme, sep, _ = str(uri).partition("://")
    return bool(sep) and scheme.lower() not in ("", "file", "local")
