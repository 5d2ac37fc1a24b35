"""Catalog queries over a session: classes, set lifecycle and name resolution.

Set lifecycle (driven by :class:`protodb.services.sets.SetService`): a set is inserted ``pending``
(invisible to readers, owned by the writing process: ``owner_token``); its vectors are written; then
one transaction gives it the next free version and marks it ``ready`` (:func:`mark_ready`). A
writer that dies leaves a pending row whose owner is gone: :func:`stale_pending` finds it so that
the next writer of that (class, extractor) can delete its vectors and the row.

References (:class:`protodb.names.Ref`): ``boat`` is the newest ready set per extractor, ``boat@3``
version 3, ``boat@paper`` the set of ``boat`` pinned by tag ``paper``. A tag pins at most one set
per (class, extractor).
"""

from __future__ import annotations

import os
import socket

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
from protodb.fileio import pid_alive
from protodb.names import Ref, check_tag_name, quoted


def owner_token() -> dict:
    """Who writes a pending set: this host and process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def owner_alive(owner: dict | None) -> bool:
    """Whether the process that owns a pending set may still be running (other hosts: assume so)."""
    if not owner or owner.get("host") != socket.gethostname():
        return True
    return pid_alive(int(owner.get("pid", -1)))


def get_class(session: Session, name: str) -> ClassRow | None:
    return session.scalar(select(ClassRow).where(ClassRow.name == name))


def extractor_by_name(session: Session, name: str) -> ExtractorRow | None:
    """The most recently registered extractor called ``name``."""
    return session.scalar(select(ExtractorRow).where(ExtractorRow.name == name)
                          .order_by(ExtractorRow.created_at.desc()).limit(1))


def ready_sets(session: Session, class_id: str, extractor_id: str | None = None) -> list[PrototypeSetRow]:
    q = select(PrototypeSetRow).where(PrototypeSetRow.class_id == class_id, PrototypeSetRow.status == SET_READY)
    if extractor_id is not None:
        q = q.where(PrototypeSetRow.extractor_id == extractor_id)
    return list(session.scalars(q.order_by(PrototypeSetRow.version)).all())


def find_ready_by_config(session: Session, class_id: str, extractor_id: str,
                         config_hash: str) -> PrototypeSetRow | None:
    """The newest ready set of (class, extractor) built with exactly this config."""
    return session.scalar(
        select(PrototypeSetRow)
        .where(PrototypeSetRow.class_id == class_id, PrototypeSetRow.extractor_id == extractor_id,
               PrototypeSetRow.config_hash == config_hash, PrototypeSetRow.status == SET_READY)
        .order_by(PrototypeSetRow.version.desc()).limit(1)
    )


def stale_pending(session: Session, class_id: str, extractor_id: str) -> list[PrototypeSetRow]:
    """Pending sets of (class, extractor) whose writing process is gone."""
    rows = session.scalars(
        select(PrototypeSetRow).where(PrototypeSetRow.class_id == class_id,
                                      PrototypeSetRow.extractor_id == extractor_id,
                                      PrototypeSetRow.status == SET_PENDING)
    ).all()
    return [r for r in rows if not owner_alive((r.params or {}).get("owner"))]


def next_version(session: Session, class_id: str, extractor_id: str) -> int:
    current = session.scalar(
        select(func.max(PrototypeSetRow.version)).where(
            PrototypeSetRow.class_id == class_id, PrototypeSetRow.extractor_id == extractor_id)
    )
    return int(current or 0) + 1


def mark_ready(session: Session, row: PrototypeSetRow, *, table_version: int | None) -> None:
    """Give ``row`` the next version and mark it ready (the caller commits and retries on conflicts)."""
    row.version = next_version(session, row.class_id, row.extractor_id)
    row.status = SET_READY
    row.vector_table_version = table_version
    row.ready_at = utcnow()
    params = dict(row.params or {})
    params.pop("owner", None)
    row.params = params


def resolve(session: Session, ref: Ref | str, extractor: str | None = None) -> list[PrototypeSetRow]:
    """Ready sets a reference names: the newest per extractor name (or only ``extractor``'s).

    An extractor name may have several registrations (re-added ONNX file, imported bundle, new
    weights); all of them count, the most recently committed set wins.
    """
    ref = Ref.parse(ref) if isinstance(ref, str) else ref
    cls = get_class(session, ref.name)
    if cls is None:
        raise NotFound(f"no class {ref.name!r} in this database; run: protodb add-class {quoted(ref.name)}")
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
    rows = session.execute(q.order_by(PrototypeSetRow.ready_at.desc(), PrototypeSetRow.version.desc())).all()
    newest: dict[str, PrototypeSetRow] = {}
    for row, ext_name in rows:
        newest.setdefault(ext_name, row)
    if not newest:
        what = f" for extractor {extractor}" if extractor is not None else ""
        if ref.pinned:
            raise NotFound(f"{ref} does not exist{what}; see: protodb inspect {quoted(ref.name)}")
        ext = f" --extractor {extractor}" if extractor is not None else ""
        raise NotFound(f"class {ref.name!r} has no prototypes{what}; run: protodb add-class {quoted(ref.name)}{ext}")
    return [newest[k] for k in sorted(newest)]


def tag_sets(session: Session, tag: str, sets: list[PrototypeSetRow], note: str | None = None) -> None:
    """Pin ``sets`` under ``tag``; a set of the same (class, extractor) already tagged is replaced."""
    check_tag_name(tag)
    for row in sets:
        if row.status != SET_READY:
            raise InvalidInput(f"set {row.id} is not ready and cannot be tagged")
        for old in session.scalars(
            select(TagRow).join(PrototypeSetRow, TagRow.set_id == PrototypeSetRow.id)
            .where(TagRow.name == tag, PrototypeSetRow.class_id == row.class_id,
                   PrototypeSetRow.extractor_id == row.extractor_id)
        ):
            session.delete(old)
        session.flush()
        session.add(TagRow(name=tag, set_id=row.id, note=note))


def sets_with_tag(session: Session, tag: str) -> list[PrototypeSetRow]:
    return list(session.scalars(
        select(PrototypeSetRow).join(TagRow, TagRow.set_id == PrototypeSetRow.id)
        .where(TagRow.name == tag, PrototypeSetRow.status == SET_READY)
    ).all())
