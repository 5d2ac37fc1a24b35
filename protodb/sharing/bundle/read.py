"""Reading bundles, the hostile-input side: members are read one by one (never ``extractall``),
only regular files with the four known kinds of names are accepted, sizes are checked from the
headers and counted while reading, every hash is checked against the manifest, and the manifest's
schema revision must be one this code knows. Nothing is unpickled: JSON and Arrow only. Members
are staged in a private folder inside the database home (cleaned when a killed import is noticed).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from protodb.catalog import migrate
from protodb.errors import InvalidInput
from protodb.fileio import temp_dir
from protodb.sharing.bundle.format import (
    CHUNK,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MIB,
    SHA,
    _MEMBER,
    Limits,
    check_member_name_prefix,
    refuse,
)
from protodb.sharing.bundle.tables import TABLES

def check_member_name(name: Any) -> re.Match:
    """Accept only the four known member kinds; say precisely why anything else is refused."""
    check_member_name_prefix(name)
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise refuse(f"member {name[:60]!r} has control characters in its name")
    match = _MEMBER.match(name)
    if match is None or (match.group("table") and match.group("table") not in TABLES):
        raise refuse(f"unexpected member {name[:80]!r} (a bundle holds only manifest.json, "
                     "catalog/<table>.json, vectors/<set>.arrow and artifacts/<sha256>)")
    return match


def check_manifest(data: Any) -> dict[str, Any]:
    """Check the manifest's shape, format and schema revision (before anything else is trusted)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise refuse("manifest.json is not a protodb bundle manifest")
    fv = data.get("format_version")
    if not isinstance(fv, int) or fv < 1:
        raise refuse("manifest.json has no valid format_version")
    if fv > FORMAT_VERSION:
        raise refuse(f"bundle format {fv} is newer than this protodb reads ({FORMAT_VERSION}); "
                     "upgrade protodb: pip install -U protodb")
    rev = data.get("schema_revision")
    head = migrate.head_revision()
    if not isinstance(rev, str) or rev not in migrate.known_revisions():
        raise refuse(f"bundle schema revision {str(rev)[:40]!r} is newer than this protodb knows "
                     f"(head {head}); upgrade protodb: pip install -U protodb")
    if not isinstance(data.get("lean"), bool):
        raise refuse("manifest.json has no lean flag")
    members = data.get("members")
    if not isinstance(members, dict):
        raise refuse("manifest.json lists no members")
    for name, meta in members.items():
        match = check_member_name(name)
        if name == MANIFEST:
            raise refuse("manifest.json lists itself as a member")
        if (not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str)
                or not SHA.match(meta["sha256"]) or not isinstance(meta.get("size"), int)
                or isinstance(meta.get("size"), bool) or meta["size"] < 0):
            raise refuse(f"manifest entry for {name!r} needs a sha256 and a size")
        if match.group("sha") and match.group("sha") != meta["sha256"]:
            raise refuse(f"manifest entry for {name!r} names another sha256")
    contents = data.get("contents")
    if not isinstance(contents, dict) or not isinstance(contents.get("sets"), list) \
            or not isinstance(contents.get("vocabularies"), list):
        raise refuse("manifest.json has no contents")
    return data


def check_limits(manifest: dict[str, Any], limits: Limits) -> None:
    sizes = [m["size"] for m in manifest["members"].values()]
    if len(sizes) + 1 > limits.max_members:
        raise refuse(f"{len(sizes)} members is over the limit of {limits.max_members}")
    for name, meta in manifest["members"].items():
        cap = limits.max_json_bytes if name.endswith(".json") else limits.max_member_bytes
        if meta["size"] > cap:
            raise refuse(f"member {name} is {meta['size']} bytes, over the per-member limit of {cap} "
                         "(raise it with --max-member-bytes if you trust this bundle)")
    if sum(sizes) > limits.max_total_bytes:
        raise refuse(f"members total {sum(sizes)} bytes, over the limit of {limits.max_total_bytes} "
                     "(raise it with --max-bytes if you trust this bundle)")


@dataclass
class Staged:
    """Members of one bundle laid out on local disk (names never used as paths), plus artifacts
    that are already in the local store and were therefore not fetched."""

    manifest: dict[str, Any]
    manifest_sha256: str
    files: dict[str, Path]
    hashes: dict[str, tuple[str, int]]  # name → (sha256, size) as actually read
    local_artifacts: set[str] = field(default_factory=set)
    _cleanup: contextlib.ExitStack | None = None

    @property
    def short(self) -> str:
        return self.manifest_sha256[:12]

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.close()
            self._cleanup = None

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify(self) -> None:
        """Every member listed, every listed member present, every hash and size as listed."""
        listed = self.manifest["members"]
        for name in sorted(self.files):
            if name not in listed:
                raise refuse(f"member {name} is not in the manifest")
        for name, meta in sorted(listed.items()):
            if name not in self.files:
                if name.startswith("artifacts/") and meta["sha256"] in self.local_artifacts:
                    continue
                raise refuse(f"the manifest lists {name} but the bundle has no such member")
            sha, size = self.hashes[name]
            if size != meta["size"] or sha != meta["sha256"]:
                raise refuse(f"member {name} does not match its sha256 in the manifest (corrupt or tampered)")


class _CountingReader:
    """A read-only stream that refuses once more than ``limit`` bytes came through it."""

    def __init__(self, raw, limit: int):
        self.raw, self.limit, self.count = raw, limit, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        data = self.raw.read(min(n, self.limit - self.count + 1))
        self.count += len(data)
        if self.count > self.limit:
            raise refuse(f"the archive unpacks to more than {self.limit} bytes (decompression bomb?); "
                         "raise --max-bytes if you trust it")
        return data


def read_tar(path: str | Path, staging: Path, limits: Limits | None = None) -> Staged:
    """Read a bundle archive member by member into a private folder under ``staging`` (inside the
    database home), with every check that does not need the catalog. Raises InvalidInput (one line)
    for anything hostile; the folder is removed then, or when the returned Staged is closed."""
    limits = limits or Limits.from_env()
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"bundle {path} does not exist or is not a file")
    tmp = contextlib.ExitStack()
    root = tmp.enter_context(temp_dir(staging, "import"))
    files: dict[str, Path] = {}
    hashes: dict[str, tuple[str, int]] = {}
    total = 0
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
            # headers and padding count too: allow them a small margin over the data limit
            counted = _CountingReader(stream, limits.max_total_bytes + 8 * MIB)
            try:
                tar = tarfile.open(fileobj=counted, mode="r|")
            except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
                raise refuse(f"{path.name} is not a tar archive ({_why(err)})") from None
            with tar:
                for n, member in enumerate(_members(tar), 1):
                    if n > limits.max_members:
                        raise refuse(f"more than {limits.max_members} members")
                    name = member.name
                    check_member_name_prefix(name)
                    if member.issym() or member.islnk():
                        raise refuse(f"member {name[:80]!r} is a {'symlink' if member.issym() else 'hard link'}")
                    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
                        raise refuse(f"member {name[:80]!r} is not a regular file ({_kind(member)})")
                    check_member_name(name)
                    if name in files:
                        raise refuse(f"member {name} appears twice")
                    cap = limits.max_json_bytes if name.endswith(".json") else limits.max_member_bytes
                    if member.size > cap:
                        raise refuse(f"member {name} is {member.size} bytes, over the per-member limit of {cap} "
                                     "(raise it with --max-member-bytes if you trust this bundle)")
                    if total + member.size > limits.max_total_bytes:
                        raise refuse(f"members total more than {limits.max_total_bytes} bytes "
                                     "(raise it with --max-bytes if you trust this bundle)")
                    target = root / f"m{n:07d}"
                    sha, size = _copy_member(tar, member, target, cap)
                    total += size
                    files[name], hashes[name] = target, (sha, size)
    except InvalidInput:
        tmp.close()
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        tmp.close()
        raise refuse(f"{path.name} is not a readable bundle ({_why(err)})") from None
    except BaseException:
        tmp.close()
        raise
    if MANIFEST not in files:
        tmp.close()
        raise refuse(f"{path.name} has no manifest.json")
    try:
        manifest = check_manifest(_load_json(files.pop(MANIFEST), MANIFEST))
        manifest_sha = hashes.pop(MANIFEST)[0]
        staged = Staged(manifest, manifest_sha, files, hashes, _cleanup=tmp)
        check_limits(manifest, limits)
        staged.verify()
    except BaseException:
        tmp.close()
        raise
    return staged


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        member = tar.next()
        if member is None:
            return
        yield member


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, cap: int) -> tuple[str, int]:
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - regular files always have data
        raise refuse(f"member {member.name} has no data")
    h, size = hashlib.sha256(), 0
    with open(target, "wb") as dst:
        while block := src.read(CHUNK):
            size += len(block)
            if size > min(cap, member.size):
                raise refuse(f"member {member.name} holds more bytes than its header says")
            h.update(block)
            dst.write(block)
    if size != member.size:
        raise refuse(f"member {member.name} is truncated")
    return h.hexdigest(), size


def _kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "a directory"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a fifo"
    if member.issparse():
        return "a sparse file"
    return f"tar type {member.type!r}"


def _why(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:120]


def _load_json(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as err:
        raise refuse(f"{name} is not valid JSON ({_why(err)})") from None


def _no_constant(token: str):
    raise ValueError(f"{token} is not allowed")
