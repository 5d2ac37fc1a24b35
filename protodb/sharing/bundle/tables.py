"""Catalog rows in bundles: which tables travel, in what order, and how a row is checked.

The tables, their insert order and their foreign keys are read from the ORM metadata
(:data:`protodb.catalog.schema.Base`), so a new table or column travels without a hand-written list.
Every incoming row is checked against its column types, lengths, identifier formats and the rules
local writes follow (class and tag names, prototype kinds, versions) before anything is written.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from protodb.catalog import rules
from protodb.catalog.schema import Base
from protodb.sharing.bundle.format import HEX, SHA, refuse

#: Tables that never travel: database settings (store URLs, remotes, user extractors).
LOCAL_TABLES = ("settings",)


def _models() -> dict[str, type]:
    by_table = {m.class_.__table__.name: m.class_ for m in Base.registry.mappers}
    return {t.name: by_table[t.name] for t in Base.metadata.sorted_tables if t.name not in LOCAL_TABLES}


#: Catalog tables in insert (foreign-key) order, name -> ORM class.
TABLES: dict[str, type] = _models()

#: (table, column, referenced table, nullable) for every foreign key between travelling tables.
FOREIGN_KEYS: tuple[tuple[str, str, str, bool], ...] = tuple(
    (name, col.name, fk.column.table.name, bool(col.nullable))
    for name, model in TABLES.items() for col in model.__table__.columns for fk in col.foreign_keys
    if fk.column.table.name in TABLES
)

def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def row_to_dict(obj: Any, model: type) -> dict[str, Any]:
    """A catalog row as JSON-ready values (datetimes as ISO 8601 UTC)."""
    out = {}
    for col in model.__table__.columns:
        value = getattr(obj, col.name)
        if isinstance(value, datetime):
            value = _utc(value).isoformat()
        out[col.name] = value
    return out


def _pk(model: type, row: dict) -> tuple:
    return tuple(str(row[c.name]) for c in model.__table__.primary_key.columns)


def rows_from_dict(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """Column values ready for the ORM constructor (ISO strings → aware datetimes)."""
    model = TABLES[table]
    out = {}
    for col in model.__table__.columns:
        if col.name not in row:
            continue
        value = row[col.name]
        if value is not None and col.type.python_type is datetime:
            value = _utc(datetime.fromisoformat(value))
        out[col.name] = value
    return out


def _check_value(table: str, col, value: Any) -> None:
    where = f"catalog/{table}.json column {col.name}"
    if value is None:
        if not col.nullable or col.primary_key:
            raise refuse(f"{where} is null")
        return
    try:
        py = col.type.python_type
    except NotImplementedError:  # pragma: no cover - every column type here has one
        py = object
    if py is str:
        if not isinstance(value, str):
            raise refuse(f"{where} is not a string")
        length = getattr(col.type, "length", None)
        if length and len(value) > length:
            raise refuse(f"{where} is longer than {length} characters")
        if col.name == "id" or col.foreign_keys:
            if not HEX.match(value):
                raise refuse(f"{where} holds {value[:40]!r}, not a hex identifier")
        if col.name.endswith("_sha256") and not SHA.match(value):
            raise refuse(f"{where} holds {value[:40]!r}, not a sha256")
    elif py is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise refuse(f"{where} is not an integer")
    elif py is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise refuse(f"{where} is not a finite number")
    elif py is datetime:
        try:
            value = datetime.fromisoformat(value)
        except (TypeError, ValueError, OverflowError):
            raise refuse(f"{where} is not an ISO 8601 time") from None
    elif py is dict:
        if not isinstance(value, dict):
            raise refuse(f"{where} is not a JSON object")
    problem = rules.check(table, col.name, value)
    if problem:
        raise refuse(f"{where} {problem}")


def _check_rows(table: str, rows: Any) -> list[dict[str, Any]]:
    model = TABLES[table]
    if not isinstance(rows, list):
        raise refuse(f"catalog/{table}.json is not a JSON list")
    cols = {c.name: c for c in model.__table__.columns}
    seen = set()
    for row in rows:
        if not isinstance(row, dict):
            raise refuse(f"catalog/{table}.json holds a non-object row")
        unknown = set(row) - set(cols)
        if unknown:
            raise refuse(f"catalog/{table}.json has unknown columns {sorted(unknown)} (written by a newer protodb?)")
        for name, col in cols.items():
            if name not in row:
                if col.primary_key or (not col.nullable and col.default is None):
                    raise refuse(f"catalog/{table}.json row lacks column {name}")
                continue
            _check_value(table, col, row[name])
        key = _pk(model, row)
        if key in seen:
            raise refuse(f"catalog/{table}.json repeats row {'/'.join(key)}")
        seen.add(key)
    return rows
