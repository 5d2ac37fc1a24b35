"""Prototype-set lifecycle and name resolution, as queries over a catalog session.

Lifecycle: ``begin`` inserts a ``pending`` row (invisible to readers, owned by this process);
vectors are written; ``commit`` assigns the next version and marks the set ``ready`` in one
transaction. A writer that dies leaves a pending row whose owner is gone: ``stale_pending``
finds it so that the next write can delete its vectors and the row.

References: ``boat`` is the newest ready set, ``boat@3`` version 3, ``boat@paper`` the set of
``boat`` pinned by tag ``paper``. A tag pins at most one set per (class, extractor).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protodb.catalog.schema import (
    SET_PENDING,
    SET_READY,
    ClassRow,
    ExtractorRow,
    PrototypeSetRow,
    TagRow,
    utcnow,
)
from protodb.errors import InvalidInput, NotFound

MAX_NAME_LEN = 200
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")


def normalize_class_name(name: str) -> str:
    """Trimmed, single-spaced, lowercase. Raises InvalidInput for empty/overlong/odd names."""
    cleaned = " ".join(str(name).split()).lower()
    if not cleaned:
        raise InvalidInput("class name is empty; give a name like: protodb add-class boat")
    if len(cleaned) > MAX_NAME_LEN:
        raise InvalidInput(f"class name is {len(cleaned)} characters; the limit is {MAX_NAME_LEN}")
    if "@" in cleaned or any(ord(c) < 32 for c in cleaned):
        raise InvalidInput(f"class name {name!r} may not contain '@' or control characters")
    return cleaned


def check_tag_name(tag: str) -> str:
    if not _TAG_RE.match(tag) or tag.isdigit():
        raise InvalidInput(
            f"tag {tag!r} is not valid: use letters, digits and _.:- (not only digits), e.g. voc:paper"
        )
    return tag


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``name``, ``name@3`` or ``name@tag``."""

    name: str
    version: int | None = None
    tag: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Ref":
        base, sep, pin = str(text).partition("@")
        name = normalize_class_name(base)
        if not sep:
            return cls(name)
        pin = pin.strip()
        if pin.isdigit() and int(pin) > 0:
            return cls(name, version=int(pin))
        return cls(name, tag=check_tag_name(pin))

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.tag}" if self.tag else self.name


def owner_token() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _owner_alive(owner: dict | None) -> bool:
    if not owner or owner.get("host") != socket.gethostname():
        return True  # cannot tell for other hosts: leave their work alone
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def get_class(session: Session, name: str) -> ClassRow | None:
    return session.scalar(select(ClassRow).where(ClassRow.name == name))


def ready_sets(session: Session, class_id: str, extractor_id: str | None = None):
    q = select(PrototypeSetRow).where(
        PrototypeSetRow.class_id == class_id, PrototypeSetRow.status == SET_READY
    )
    if extractor_id is not None:
        q = q.where(PrototypeSetRow.extractor_id == extractor_id)
    return session.scalars(q.order_by(PrototypeSetRow.version)).all()


def find_ready_by_config(
    session: Session, class_id: str, extractor_id: str, config_hash: str
) -> PrototypeSetRow | None:
    return session.scalar(
        select(PrototypeSetRow)
        .where(
            PrototypeSetRow.class_id == class_id,
            PrototypeSetRow.extractor_id == extractor_id,
            PrototypeSetRow.config_hash == config_hash,
            PrototypeSetRow.status == SET_READY,
        )
        .order_by(PrototypeSetRow.version.desc())
        .limit(1)
    )


def stale_pending(session: Session, class_id: str, extractor_id: str) -> list[PrototypeSetRow]:
    """Pending sets of (class, extractor) whose writing process is gone."""
    rows = session.scalars(
        select(PrototypeSetRow).where(
            PrototypeSetRow.class_id == class_id,
            PrototypeSetRow.extractor_id == extractor_id,
            PrototypeSetRow.status == SET_PENDING,
        )
    ).all()
    return [r for r in rows if not _owner_alive((r.params or {}).get("owner"))]


def next_version(session: Session, class_id: str, extractor_id: str) -> int:
    current = session.scalar(
        select(func.max(PrototypeSetRow.version)).where(
            PrototypeSetRow.class_id == class_id, PrototypeSetRow.extractor_id == extractor_id
        )
    )
    return int(current or 0) + 1


def mark_ready(session: Session, row: PrototypeSetRow, *, table_version: int | None) -> None:
    """Assign the next version and mark ``row`` ready (caller commits; retries on conflicts)."""
    row.version = next_version(session, row.class_id, row.extractor_id)
    row.status = SET_READY
    row.vector_table_version = table_version
    row.ready_at = utcnow()
    params = dict(row.params or {})
    params.pop("owner", None)
    row.params = params


def resolve(
    session: Session, ref: Ref | str, extractor: str | None = None
) -> list[PrototypeSetRow]:
    """Ready sets a reference names: the newest per extractor name (or only ``extractor``'s).

    An extractor name may have several registrations (re-added ONNX file, imported bundle, new
    weights); all of them count, the most recently committed set wins.
    """
    ref = Ref.parse(ref) if isinstance(ref, str) else ref
    cls = get_class(session, ref.name)
    if cls is None:
        raise NotFound(f"no class {ref.name!r} in this database; run: protodb add-class {_q(ref.name)}")
    q = (
        select(PrototypeSetRow, ExtractorRow.name)
        .join(ExtractorRow, ExtractorRow.id == PrototypeSetRow.extractor_id)
        .where(PrototypeSetRow.class_id == cls.id, PrototypeSetRow.status == SET_READY)
    )
    if extractor is not None:
        q = q.where(ExtractorRow.name == extractor)
    if ref.version is not None:
        q = q.where(PrototypeSetRow.version == ref.version)
    if ref.tag is not None:
        q = q.join(TagRow, TagRow.set_id == PrototypeSetRow.id).where(TagRow.name == ref.tag)
    rows = session.execute(
        q.order_by(PrototypeSetRow.ready_at.desc(), PrototypeSetRow.version.desc())
    ).all()
    newest: dict[str, PrototypeSetRow] = {}
    for row, ext_name in rows:
        newest.setdefault(ext_name, row)
    if not newest:
        what = f" for extractor {extractor}" if extractor is not None else ""
        if ref.version is not None or ref.tag is not None:
            raise NotFound(f"{ref} does not exist{what}; see: protodb inspect {_q(ref.name)}")
        ext = f" --extractor {extractor}" if extractor is not None else ""
        raise NotFound(
            f"class {ref.name!r} has no prototypes{what}; run: protodb add-class {_q(ref.name)}{ext}"
        )
    return [newest[k] for k in sorted(newest)]


def tag_sets(session: Session, tag: str, sets: list[PrototypeSetRow], note: str | None = None) -> None:
    """Pin ``sets`` under ``tag``; a set of the same (class, extractor) already tagged is replaced."""
    check_tag_name(tag)
    for row in sets:
        if row.status != SET_READY:
            raise InvalidInput(f"set {row.id} is not ready and cannot be tagged")
        for old in session.scalars(
            select(TagRow)
            .join(PrototypeSetRow, TagRow.set_id == PrototypeSetRow.id)
            .where(
                TagRow.name == tag,
                PrototypeSetRow.class_id == row.class_id,
                PrototypeSetRow.extractor_id == row.extractor_id,
            )
        ):
            session.delete(old)
        session.flush()
        session.add(TagRow(name=tag, set_id=row.id, note=note))


def sets_with_tag(session: Session, tag: str) -> list[PrototypeSetRow]:
    return session.scalars(
        select(PrototypeSetRow)
        .join(TagRow, TagRow.set_id == PrototypeSetRow.id)
        .where(TagRow.name == tag, PrototypeSetRow.status == SET_READY)
    ).all()


def _q(name: str) -> str:
    return f'"{name}"' if " " in name else name
