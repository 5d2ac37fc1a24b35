"""Remotes: bundles stored content-addressed on any fsspec URL (``s3://bucket/prefix``, ``file://…``).

Layout under the remote's URL::

    objects/<sha256>                 every bundle member (catalog JSON, vector Arrow files, artifacts)
                                     and every bundle manifest, named by the sha256 of its bytes
    refs/vocab/<name>.json           small index: which manifest a pushed vocabulary is, its sets
    refs/classes/<name>.json         the same for a pushed class

Objects are immutable, so only what is missing moves (one listing of ``objects/`` before a push;
a local check of the artifact store and of ``HOME/cache/objects`` before a pull) and an
interrupted push or pull simply resumes: a push writes its ref last, a pull keeps what it already
fetched (each object verified by hash) in the cache. After an import the cache keeps only the small
members (manifests, catalog JSON, vectors), so pulling again moves nothing; it may be deleted any
time. A pull then goes through the same verified import as a bundle file. Credentials come from
the standard AWS environment/config via s3fs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote

import fsspec

from protodb._version import __version__
from protodb.entities import PullReport, PushReport, Remote, RemoteRef
from protodb.errors import InvalidInput, NotFound
from protodb.hashing import sha256_file
from protodb.names import Ref, quoted
from protodb.sharing.ports import IndexLookup, SetLookup, VocabLookup
from protodb.sharing import merge
from protodb.sharing.bundle import (
    MANIFEST,
    Limits,
    Selection,
    Staged,
    build_bundle,
    check_limits,
    check_manifest,
    load_contents,
    refuse,
)
from protodb.storage.artifacts import write_whole
from protodb.stores import Settings, Stores

REF_FORMAT = "protodb-ref"
REF_KINDS = ("vocab", "classes")
MAX_REF_BYTES = 1 << 20
SETTING_PREFIX = "remote:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20

Progress = Callable[[str, int, "int | None"], None]


def check_remote_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidInput(f"remote name {name!r} is not valid: use letters, digits and _.- (e.g. team)")
    return name


def normalize_url(url: str) -> str:
    """A remote URL as stored: plain paths become absolute ``file://`` URLs; the protocol must be known."""


    url = str(url).strip()
    if not url:
        raise InvalidInput("give a remote URL, e.g. s3://bucket/protodb or file:///srv/protodb")
    if "://" not in url:
        url = "file://" + str(Path(url).expanduser().resolve())
    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        raise InvalidInput(f"{protocol}:// needs an extra package; run: pip install 'protodb[s3]'") from None
    except ValueError:
        raise InvalidInput(f"unknown storage protocol {protocol}:// in {url}; "
                           "use s3://, file:// or another fsspec URL") from None
    return url.rstrip("/")


class RemoteStore:
    """Objects and refs under one fsspec URL."""

    def __init__(self, url: str):
        import fsspec

        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except ImportError:
            raise InvalidInput(f"{url.split('://')[0]}:// needs an extra package; "
                               "run: pip install 'protodb[s3]'") from None
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols
        self.root = self.root.rstrip("/")

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def object_path(self, digest: str) -> str:
        if not _SHA.match(digest):
            raise refuse(f"{digest[:70]!r} is not a sha256 object name")
        return self._path("objects", digest)

    def ref_path(self, kind: str, name: str) -> str:
        return self._path("refs", kind, quote(name, safe="") + ".json")

    # ------------------------------------------------------------------ objects
    def existing(self) -> dict[str, int]:
        """sha256 → size of every object on the remote (one listing)."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self._path("objects"), detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for path, info in found.items():
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if _SHA.match(name):
                out[name] = int(info.get("size") or 0)
        return out

    def put_object(self, digest: str, data: bytes) -> None:
        self._write(self.object_path(digest), data)

    def _write(self, target: str, data: bytes) -> None:
        """Whole-object write (see :func:`protodb.storage.artifacts.write_whole`)."""
        write_whole(self.fs, self.local, target, data)

    def fetch_object(self, digest: str, size: int, dest: Path, tick: Progress) -> None:
        """Download one object to ``dest`` (via a temporary file), checking its size and hash."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        h, n = hashlib.sha256(), 0
        try:
            try:
                src = self.fs.open(self.object_path(digest), "rb")
            except FileNotFoundError:
                raise refuse(f"the remote lacks object {digest}; push it again") from None
            with src, open(tmp, "wb") as out:
                while block := src.read(_CHUNK):
                    n += len(block)
                    if n > size:
                        raise refuse(f"remote object {digest} is larger than its manifest says")
                    h.update(block)
                    out.write(block)
                    tick("download", len(block), None)
            if n != size or h.hexdigest() != digest:
                raise refuse(f"remote object {digest} does not match its sha256 (corrupt upload?); push it again")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    # ------------------------------------------------------------------ refs
    def write_ref(self, kind: str, name: str, data: dict[str, Any]) -> None:
        self._write(self.ref_path(kind, name), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def read_ref(self, kind: str, name: str) -> dict[str, Any] | None:
        path = self.ref_path(kind, name)
        self.fs.invalidate_cache()
        try:
            with self.fs.open(path, "rb") as fh:
                raw = fh.read(MAX_REF_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(raw) > MAX_REF_BYTES:
            raise refuse(f"ref {kind}/{name} is larger than {MAX_REF_BYTES} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise refuse(f"ref {kind}/{name} is not valid JSON") from None
        if (not isinstance(data, dict) or data.get("format") != REF_FORMAT
                or not isinstance(data.get("manifest"), str) or not _SHA.match(data["manifest"])
                or not isinstance(data.get("manifest_size"), int) or data["manifest_size"] < 0):
            raise refuse(f"ref {kind}/{name} is not a protodb ref")
        return data

    def list_refs(self) -> list[tuple[str, str]]:
        self.fs.invalidate_cache()
        out = []
        for kind in REF_KINDS:
            try:
                paths = self.fs.ls(self._path("refs", kind), detail=False)
            except FileNotFoundError:
                continue
            for p in paths:
                base = str(p).rstrip("/").rsplit("/", 1)[-1]
                if base.endswith(".json") and not base.startswith("."):
                    out.append((kind, unquote(base[: -len(".json")])))
        return sorted(out)


# ================================================================================ settings
def remote_url(settings: Settings, name: str) -> str:
    check_remote_name(name)
    url = settings.get(SETTING_PREFIX + name)
    if url is None:
        raise NotFound(f"no remote {name!r}; add one: protodb remote add {name} s3://bucket/prefix")
    return url


def list_remotes(settings: Settings) -> list[Remote]:
    return [Remote(name, url) for name, url in settings.with_prefix(SETTING_PREFIX).items()]


# ================================================================================ push
def _push_jobs(sets: SetLookup, vocabs: VocabLookup, sel: Selection) -> tuple[list[tuple[str, str, Selection]], list[str]]:
    if sel.vocab:
        return [("vocab", sel.vocab, sel)], []
    if sel.classes:
        jobs = []
        for ref in sel.classes:
            name = Ref.parse(ref).name
            jobs.append(("classes", name, Selection(classes=(ref,), every_version=sel.every_version)))
        return jobs, []
    jobs, warnings = [], []
    for cls in sets.ls():
        jobs.append(("classes", cls.name, Selection(classes=(cls.name,), every_version=True)))
    for v in vocabs.list():
        if v.builtin:
            continue
        try:
            for ref in vocabs.show(v.name).classes:
                sets.resolve(ref)
        except NotFound as err:
            warnings.append(f"vocabulary {v.name} not pushed: {err}")
            continue
        jobs.append(("vocab", v.name, Selection(vocab=v.name)))
    if not jobs:
        raise NotFound("nothing to push: this database has no ready prototype sets; see: protodb ls")
    return jobs, warnings


def push(stores: Stores, sets: SetLookup, vocabs: VocabLookup, name: str, sel: Selection, *,
         lean: bool = False, progress: Progress | None = None, indexes: IndexLookup | None = None) -> PushReport:
    """Upload what the remote lacks of the selected bundles, then write their refs (``indexes``: see
    :func:`protodb.sharing.bundle.build_bundle`)."""
    tick = progress or (lambda _s, _n, _t: None)
    url = remote_url(stores.settings, name)
    store = RemoteStore(url)
    jobs, warnings = _push_jobs(sets, vocabs, sel)
    built = [(kind, ref_name, build_bundle(stores, sets, vocabs, s, lean=lean, indexes=indexes))
             for kind, ref_name, s in jobs]
    existing = store.existing()
    todo: dict[str, tuple[int, Callable[[], bytes]]] = {}
    for _kind, _ref, parts in built:
        objs = {parts.manifest_sha256: (len(parts.manifest_bytes), lambda p=parts: p.manifest_bytes)}
        for member, meta in parts.manifest["members"].items():
            if member.startswith("artifacts/"):
                objs[meta["sha256"]] = (meta["size"], lambda p=parts, h=meta["sha256"]: p.read_artifact(h))
            else:
                objs[meta["sha256"]] = (meta["size"], lambda p=parts, m=member: p.blobs[m])
        for digest, (size, load) in objs.items():
            if existing.get(digest) != size:
                todo[digest] = (size, load)
    present = len({d for _k, _r, p in built for d in _objects_of(p)}) - len(todo)
    tick("upload", 0, sum(size for size, _ in todo.values()))
    for digest in sorted(todo):
        size, load = todo[digest]
        data = load()
        if hashlib.sha256(data).hexdigest() != digest:
            raise InvalidInput(f"object {digest} changed while pushing (corrupt local artifact?); run: protodb verify")
        store.put_object(digest, data)
        tick("upload", size, None)
    refs = []
    for kind, ref_name, parts in built:
        ref = {"format": REF_FORMAT, "version": 1, "kind": kind, "name": ref_name,
               "manifest": parts.manifest_sha256, "manifest_size": len(parts.manifest_bytes),
               "bundle": parts.short, "bytes": parts.total_bytes(), "lean": bool(lean),
               "sets": parts.manifest["contents"]["sets"], "protodb_version": __version__,
               "pushed_at": datetime.now(timezone.utc).isoformat()}
        store.write_ref(kind, ref_name, ref)
        refs.append({"kind": kind, "name": ref_name, "bundle": parts.short,
                     "sets": len(parts.manifest["contents"]["sets"])})
    return PushReport(remote=name, url=url, refs=tuple(refs), uploaded=len(todo),
                      uploaded_bytes=sum(size for size, _ in todo.values()), already_there=present,
                      warnings=tuple(warnings))


def _objects_of(parts) -> set[str]:
    return {parts.manifest_sha256} | {m["sha256"] for m in parts.manifest["members"].values()}


# ================================================================================ pull
def _pull_refs(store: RemoteStore, sel: Selection, name: str) -> list[tuple[str, str]]:
    if sel.vocab:
        return [("vocab", sel.vocab)]
    if sel.classes:
        out = []
        for ref in sel.classes:
            parsed = Ref.parse(ref)
            if parsed.pinned:
                raise InvalidInput(f"pull takes class names, not {ref!r}: the remote holds what was pushed for "
                                   f"{parsed.name}")
            out.append(("classes", parsed.name))
        return out
    refs = store.list_refs()
    if not refs:
        raise NotFound(f"remote {name} holds nothing yet; push first: protodb push {name} --all")
    return refs


def pull(stores: Stores, name: str, sel: Selection, *, dry_run: bool = False, limits: Limits | None = None,
         progress: Progress | None = None) -> PullReport:
    """Fetch the selected bundles' missing objects (verified) and import them like bundle files."""
    tick = progress or (lambda _s, _n, _t: None)
    limits = limits or Limits.from_env()
    url = remote_url(stores.settings, name)
    store = RemoteStore(url)
    cache = stores.cache_dir / "objects"
    results, fetched_total = [], 0
    for kind, ref_name in _pull_refs(store, sel, name):
        ref = store.read_ref(kind, ref_name)
        if ref is None:
            flag = "--vocab" if kind == "vocab" else "--classes"
            raise NotFound(f"remote {name} has no {kind} {ref_name!r}; "
                           f"push it: protodb push {name} {flag} {quoted(ref_name)}")
        if ref["manifest_size"] > limits.max_json_bytes:
            raise refuse(f"manifest of {kind}/{ref_name} is {ref['manifest_size']} bytes, over the limit")
        manifest_path = cache / ref["manifest"]
        tick("download", 0, ref["manifest_size"])
        fetched = _ensure(store, cache, ref["manifest"], ref["manifest_size"], tick)
        try:
            manifest = check_manifest(json.loads(manifest_path.read_bytes().decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise refuse(f"manifest of {kind}/{ref_name} is not valid JSON") from None
        check_limits(manifest, limits)
        files, hashes, local_artifacts = {}, {}, set()
        need = 0
        for member, meta in manifest["members"].items():
            if member.startswith("artifacts/") and stores.artifacts.exists(meta["sha256"]):
                local_artifacts.add(meta["sha256"])
                continue
            if not (cache / meta["sha256"]).is_file():
                need += meta["size"]
        tick("download", 0, need)
        fetched_total += need + fetched
        for member, meta in sorted(manifest["members"].items()):
            if meta["sha256"] in local_artifacts and member.startswith("artifacts/"):
                continue
            _ensure(store, cache, meta["sha256"], meta["size"], tick)
            files[member] = cache / meta["sha256"]
            hashes[member] = (meta["sha256"], meta["size"])
        staged = Staged(manifest, ref["manifest"], files, hashes, local_artifacts)
        contents = load_contents(staged, limits)
        result = merge.apply(stores, contents, dry_run=dry_run, progress=tick)
        results.append(dataclasses.replace(result, ref={"kind": kind, "name": ref_name,
                                                         "pushed_at": ref.get("pushed_at")}))
        if not dry_run:  # artifacts now live in the store; small members stay cached for the next pull
            for member, path in files.items():
                if member.startswith("artifacts/"):
                    with contextlib.suppress(OSError):
                        path.unlink()
    return PullReport(remote=name, url=url, dry_run=dry_run, downloaded_bytes=fetched_total,
                      imports=tuple(results))


def _ensure(store: RemoteStore, cache: Path, digest: str, size: int, tick: Progress) -> int:
    """Make ``cache/digest`` hold the verified object; returns the bytes downloaded (0 if cached)."""
    path = cache / digest
    if path.is_file():
        if path.stat().st_size == size and sha256_file(path, memo=False) == digest:
            return 0
        path.unlink()
    store.fetch_object(digest, size, path, tick)
    return size


def remote_refs(settings: Settings, name: str) -> list[RemoteRef]:
    """What a remote holds: one entry per ref (kind, name, bundle, sets, pushed_at)."""
    store = RemoteStore(remote_url(settings, name))
    out = []
    for kind, ref_name in store.list_refs():
        ref = store.read_ref(kind, ref_name) or {}
        sets = ref.get("sets") if isinstance(ref.get("sets"), list) else []
        out.append(RemoteRef(kind=kind, name=ref_name, bundle=ref.get("bundle"), sets=len(sets),
                             bytes=ref.get("bytes"), pushed_at=ref.get("pushed_at")))
    return out


__all__ = ["MANIFEST", "RemoteStore", "push", "pull", "remote_url", "list_remotes", "remote_refs",
           "normalize_url", "check_remote_name"]
