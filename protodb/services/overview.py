"""What a database holds, for the metadata commands: ``ls`` (classes and their ready versions),
``info`` (counts and stores) and ``vocab list``, read in plain SQL (:mod:`protodb.catalog.plain`) so that
none of them imports SQLAlchemy, LanceDB or torch. ``SetService.ls`` and ``VocabService.list`` are
these functions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any, Sequence

from protodb._version import __version__
from protodb.entities import (
    ClassVersion,
    ClassVersions,
    DbInfo,
    VocabularySummary,
    counts_of,
)
from protodb.errors import DamagedData
from protodb.names import normalize_class_name
from protodb.vocabularies import builtin_vocabularies

SET_READY, SET_PENDING = "ready", "pending"  # as protodb.catalog.schema (which would import SQLAlchemy)


def _json(value: Any, what: str, column: str) -> Any:
    """A JSON column's value (SQLite hands back text, PostgreSQL decoded JSON); DamagedData naming
    ``what`` when the text is not JSON."""
    if value is None or not isinstance(value, (str, bytes)):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise DamagedData(f"prototype set {what} is damaged: its {column} are not readable; "
                          "run: protodb verify") from None


def _iso(value: Any) -> str | None:
    """A timestamp column as ISO text (SQLite stores text, PostgreSQL hands back datetimes)."""
    if value is None:
        return None
    return (value if isinstance(value, datetime) else datetime.fromisoformat(str(value))).isoformat()


class OverviewService:
    """Read-only overviews of one database's catalog (``stores.plain`` is the reader)."""

    def __init__(self, stores):
        self.stores = stores

    def ls(self, names: Sequence[str] | None = None) -> list[ClassVersions]:
        """Every class with ready versions (a version groups the sets of one class and number across
        extractors), by name; classes without a ready set are hidden. ``names``: only these classes."""
        where, params = "", []
        if names:
            wanted = [normalize_class_name(n) for n in names]
            where, params = f" WHERE name IN ({', '.join('?' * len(wanted))})", wanted
        with self.stores.plain.cursor() as q:
            classes = q(f"SELECT id, name, kind FROM classes{where} ORDER BY name", params)
            sets = q("SELECT s.id, s.class_id, s.version, s.status, s.counts, s.params, s.config, s.nbytes, "
                     "s.ready_at, e.name, c.name FROM prototype_sets s "
                     "JOIN extractors e ON e.id = s.extractor_id JOIN classes c ON c.id = s.class_id "
                     "WHERE s.status = ? ORDER BY s.version", [SET_READY])
            n_images = dict(q("SELECT set_id, COUNT(*) FROM prototype_set_images GROUP BY set_id"))
            tags: dict[str, list[str]] = defaultdict(list)
            for tag, set_id in q("SELECT name, set_id FROM tags"):
                tags[set_id].append(tag)
        grouped: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for set_id, class_id, version, status, counts, params_, config, nbytes, ready_at, ext, cname in sets:
            what = f"{cname}@{version} ({set_id})"
            counts = _json(counts, what, "counts")
            _json(params_, what, "params"), _json(config, what, "config")  # damage is named, not skipped
            e = grouped[class_id].setdefault(int(version), {
                "status": status, "extractors": [], "images": 0, "counts": None, "sets": [], "tags": set(),
                "bytes": 0, "created_at": _iso(ready_at)})
            e["extractors"].append(ext)
            e["sets"].append(set_id)
            e["images"] = max(e["images"], int(n_images.get(set_id, 0)))
            e["bytes"] += int(nbytes or 0)
            e["tags"] |= set(tags.get(set_id, []))
            if e["counts"] is None:
                e["counts"] = counts_of(counts if isinstance(counts, dict) else None)
        out = []
        for class_id, name, kind in classes:
            versions = tuple(
                ClassVersion(version=v, status=e["status"], extractors=tuple(e["extractors"]), images=e["images"],
                             counts=e["counts"], sets=tuple(e["sets"]), tags=tuple(sorted(e["tags"])),
                             bytes=e["bytes"], created_at=e["created_at"])
                for v, e in sorted(grouped[class_id].items()))
            if versions:
                out.append(ClassVersions(name=name, kind=kind, id=class_id, versions=versions))
        return out

    def info(self) -> DbInfo:
        """Where the database lives, its schema revision, and how many classes (with a ready set), ready
        and pending sets, support images and extractors it holds."""
        with self.stores.plain.cursor() as q:
            def count(sql: str, *params) -> int:
                return int(q(sql, params)[0][0] or 0)

            classes = count("SELECT COUNT(DISTINCT class_id) FROM prototype_sets WHERE status = ?", SET_READY)
            ready = count("SELECT COUNT(*) FROM prototype_sets WHERE status = ?", SET_READY)
            pending = count("SELECT COUNT(*) FROM prototype_sets WHERE status = ?", SET_PENDING)
            images = count("SELECT COUNT(*) FROM support_images")
            extractors = count("SELECT COUNT(*) FROM extractors")
            revision = q("SELECT version_num FROM alembic_version")
        d = self.stores.describe()
        return DbInfo(home=d["home"], catalog_url=d["catalog_url"], schema_revision=revision[0][0] if revision else None,
                      vectors_uri=d["vectors_uri"], artifacts_uri=d["artifacts_uri"], protodb_version=__version__,
                      classes=classes, prototype_sets=ready, pending_sets=pending, support_images=images,
                      extractors=extractors)

    def vocabularies(self) -> list[VocabularySummary]:
        """The catalog's vocabularies by name (with their number of classes), then the built-in ones
        the catalog does not override."""
        rows = self.stores.plain.rows(
            "SELECT v.name, COUNT(m.class_id), v.version, v.description FROM vocabularies v "
            "LEFT JOIN vocabulary_members m ON m.vocabulary_id = v.id "
            "GROUP BY v.id, v.name, v.version, v.description ORDER BY v.name")
        out = [VocabularySummary(name, int(n), int(version), False, description)
               for name, n, version, description in rows]
        have = {o.name for o in out}
        for name, b in sorted(builtin_vocabularies().items()):
            if name not in have:
                out.append(VocabularySummary(name, len(b["classes"]), 0, True, b.get("description")))
        return out
