"""Bundle format: member names, the manifest, size limits, what to share, and the tar conventions.

Members (tar, optionally gzip; sorted by name after ``manifest.json``; mtime 0, uid/gid 0, mode
0644; gzip header with mtime 0 and no file name, so the same sets give the same bytes)::

    manifest.json              format, protodb version, schema revision, lean flag, what is
                               inside, and sha256 + size of every other member
    catalog/<table>.json       catalog rows as a JSON list, sorted by primary key, datetimes ISO
    vectors/<set id>.arrow     Arrow IPC file, ``prototype_schema(dim)``, rows in insertion order
    artifacts/<sha256>         support images, masks, attention maps (left out by ``lean``)
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any

from protodb.errors import InvalidInput
from protodb.names import parse_class_list

FORMAT = "protodb-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MIB, GIB = 1 << 20, 1 << 30
_FIXED_MTIME = 0
CHUNK = 1 << 20

HEX = re.compile(r"^[0-9a-f]{1,64}$")
SHA = re.compile(r"^[0-9a-f]{64}$")
_MEMBER = re.compile(
    r"^(?:manifest\.json|catalog/(?P<table>[a-z_]{1,40})\.json|vectors/(?P<set>[0-9a-f]{1,64})\.arrow"
    r"|artifacts/(?P<sha>[0-9a-f]{64}))$"
)


def refuse(reason: str) -> InvalidInput:
    """The one-line error for a bundle that is refused whole."""
    return InvalidInput(f"bundle refused, nothing imported: {reason}")


@dataclass(frozen=True)
class Limits:
    """Size limits for reading a bundle (bytes, uncompressed). Defaults: 2 GiB in all, 1 GiB per
    member, 256 MiB per JSON member, 1,000,000 catalog rows in all; ``PROTODB_IMPORT_MAX_BYTES`` /
    ``PROTODB_IMPORT_MAX_MEMBER_BYTES`` / ``PROTODB_IMPORT_MAX_ROWS`` change them."""

    max_total_bytes: int = 2 * GIB
    max_member_bytes: int = 1 * GIB
    max_json_bytes: int = 256 * MIB
    max_members: int = 1_000_000
    max_rows: int = 1_000_000

    @classmethod
    def from_env(cls, max_total_bytes: int | None = None, max_member_bytes: int | None = None,
                 max_rows: int | None = None) -> "Limits":
        def pick(value, var, default):
            if value is not None:
                return int(value)
            env = os.environ.get(var)
            if env:
                try:
                    return int(env)
                except ValueError:
                    raise InvalidInput(f"{var}={env!r} is not a number of bytes") from None
            return default

        total = pick(max_total_bytes, "PROTODB_IMPORT_MAX_BYTES", cls.max_total_bytes)
        member = pick(max_member_bytes, "PROTODB_IMPORT_MAX_MEMBER_BYTES", min(cls.max_member_bytes, total))
        rows = pick(max_rows, "PROTODB_IMPORT_MAX_ROWS", cls.max_rows)
        if total <= 0 or member <= 0 or rows <= 0:
            raise InvalidInput("import limits must be positive numbers (bytes, rows)")
        return cls(max_total_bytes=total, max_member_bytes=min(member, total),
                   max_json_bytes=min(cls.max_json_bytes, member), max_rows=rows)


@dataclass(frozen=True)
class Selection:
    """What to share: a vocabulary, some classes (refs like ``boat`` or ``boat@3``), or all.

    ``vocab``: its classes' sets as the vocabulary resolves them (+ its definition).
    ``classes``: the sets each ref resolves to (newest per extractor unless pinned);
    ``every_version`` takes every ready set of those classes instead.
    ``all``: every ready set of every class, and every vocabulary of the catalog.
    """

    vocab: str | None = None
    classes: tuple[str, ...] = ()
    all: bool = False
    every_version: bool = False

    def __post_init__(self) -> None:
        chosen = sum([bool(self.vocab), bool(self.classes), bool(self.all)])
        if chosen != 1:
            raise InvalidInput("choose what to share with exactly one of --vocab NAME, --classes a,b or --all")

    @staticmethod
    def parse_classes(text: str | None) -> tuple[str, ...]:
        return tuple(parse_class_list(text))

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "classes": list(self.classes), "all": self.all,
                "every_version": self.every_version}


def check_member_name_prefix(name: Any) -> None:
    """The path checks that must come before any type check (absolute, '..', control chars)."""
    if not isinstance(name, str) or not name:
        raise refuse("a member has an empty name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise refuse(f"member {name[:80]!r} has an absolute path")
    if ".." in re.split(r"[/\\]", name):
        raise refuse(f"member {name[:80]!r} has a '..' path component")


def json_bytes(data: Any, indent: int | None = None) -> bytes:
    text = json.dumps(data, sort_keys=True, indent=indent, ensure_ascii=True,
                      separators=(",", ": ") if indent else (",", ":"), allow_nan=False)
    return (text + "\n").encode()


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, _FIXED_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info
