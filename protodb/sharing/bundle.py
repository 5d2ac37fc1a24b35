"""Bundles: one deterministic archive holding chosen prototype sets and all they depend on.

Members (tar, optionally gzip; sorted by name after ``manifest.json``; mtime 0, uid/gid 0,
mode 0644; gzip header with mtime 0 and no file name, so the same sets give the same bytes)::

    manifest.json              format, protodb version, schema revision, lean flag, what is
                               inside, and sha256 + size of every other member
    catalog/<table>.json       catalog rows as a JSON list, sorted by primary key, datetimes ISO
    vectors/<set id>.arrow     Arrow IPC file, ``prototype_schema(dim)``, rows in insertion order
    artifacts/<sha256>         support images, masks, attention maps (left out by ``lean``)

Reading is the hostile-input side: members are read one by one (never ``extractall``), only
regular files with the four known kinds of names are accepted, sizes are checked from the headers
and counted while reading, every hash is checked against the manifest, and the manifest's schema
revision must be one this code knows. Nothing is unpickled: JSON and Arrow only.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.orm import Session

from protodb import __version__
from protodb.catalog import migrate
from protodb.catalog import sets as setq
from protodb.catalog.schema import (
    SET_READY,
    ClassRow,
    ExtractorRow,
    GenerationRunRow,
    GeneratorSpecRow,
    LabelRow,
    MaskRow,
    PrototypeSetRow,
    SetImageRow,
    SupportImageRow,
    TagRow,
    VocabularyMemberRow,
    VocabularyRow,
)
from protodb.errors import InvalidInput, NotFound, ProtoDBError
from protodb.storage.vectors import KINDS, PrototypeRows, prototype_schema

FORMAT = "protodb-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MIB, GIB = 1 << 20, 1 << 30
_FIXED_MTIME = 0
_CHUNK = 1 << 20

# Catalog tables in insert (foreign-key) order.
TABLES: dict[str, type] = {
    "classes": ClassRow,
    "class_labels": LabelRow,
    "extractors": ExtractorRow,
    "generator_specs": GeneratorSpecRow,
    "generation_runs": GenerationRunRow,
    "support_images": SupportImageRow,
    "masks": MaskRow,
    "prototype_sets": PrototypeSetRow,
    "prototype_set_images": SetImageRow,
    "tags": TagRow,
    "vocabularies": VocabularyRow,
    "vocabulary_members": VocabularyMemberRow,
}

_HEX = re.compile(r"^[0-9a-f]{1,64}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_MEMBER = re.compile(
    r"^(?:manifest\.json|catalog/(?P<table>[a-z_]{1,40})\.json|vectors/(?P<set>[0-9a-f]{1,64})\.arrow"
    r"|artifacts/(?P<sha>[0-9a-f]{64}))$"
)


def refuse(reason: str) -> InvalidInput:
    """The one-line error for a bundle that is refused whole."""
    return InvalidInput(f"bundle refused, nothing imported: {reason}")


# ============================================================================ limits & selection
@dataclass(frozen=True)
class Limits:
    """Size limits for reading a bundle (bytes, uncompressed). Defaults: 2 GiB in all, 1 GiB per
    member, 256 MiB per JSON member; ``PROTODB_IMPORT_MAX_BYTES`` / ``PROTODB_IMPORT_MAX_MEMBER_BYTES``
    change the first two."""

    max_total_bytes: int = 2 * GIB
    max_member_bytes: int = 1 * GIB
    max_json_bytes: int = 256 * MIB
    max_members: int = 1_000_000

    @classmethod
    def from_env(cls, max_total_bytes: int | None = None, max_member_bytes: int | None = None) -> "Limits":
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
        if total <= 0 or member <= 0:
            raise InvalidInput("import size limits must be positive numbers of bytes")
        return cls(max_total_bytes=total, max_member_bytes=min(member, total),
                   max_json_bytes=min(cls.max_json_bytes, member))


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
        return tuple(c.strip() for c in (text or "").split(",") if c.strip())

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "classes": list(self.classes), "all": self.all,
                "every_version": self.every_version}


# ============================================================================ row (de)serialisation
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
            if not _HEX.match(value):
                raise refuse(f"{where} holds {value[:40]!r}, not a hex identifier")
        if col.name.endswith("_sha256") and not _SHA.match(value):
            raise refuse(f"{where} holds {value[:40]!r}, not a sha256")
    elif py is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise refuse(f"{where} is not an integer")
    elif py is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise refuse(f"{where} is not a finite number")
    elif py is datetime:
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise refuse(f"{where} is not an ISO 8601 time") from None
    elif py is dict:
        if not isinstance(value, dict):
            raise refuse(f"{where} is not a JSON object")


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


# ============================================================================ vectors as Arrow IPC
def vectors_to_arrow(rows: PrototypeRows, set_id: str) -> bytes:
    """One set's prototypes as an Arrow IPC file (``prototype_schema(dim)``), byte-deterministic."""
    dim = int(rows.vectors.shape[1])
    n = len(rows)
    table = pa.table(
        {
            "id": pa.array(list(rows.ids) if rows.ids else [f"{set_id}-{i}" for i in range(n)], pa.string()),
            "set_id": pa.array([set_id] * n, pa.string()),
            "kind": pa.array(list(rows.kinds), pa.string()),
            "image_id": pa.array(list(rows.image_ids), pa.string()),
            "region": pa.array([list(r) if r is not None else None for r in rows.regions],
                               type=pa.list_(pa.int32(), 4)),
            "weight": pa.array(rows.weights, type=pa.float32()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(rows.vectors, np.float32).reshape(-1), type=pa.float32()), dim),
        },
        schema=prototype_schema(dim),
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def vectors_from_arrow(path: Path, set_id: str, dim: int, expected: int) -> PrototypeRows:
    """Read and check one set's Arrow IPC file: exact schema, its set id only, finite vectors."""
    name = f"vectors/{set_id}.arrow"
    try:
        with pa.memory_map(str(path), "r") as source:
            reader = pa.ipc.open_file(source)
            if not reader.schema.equals(prototype_schema(dim)):
                raise refuse(f"{name} does not have the prototype schema for {dim}-d vectors")
            table = reader.read_all()
            table.validate(full=True)
    except pa.ArrowException as err:
        raise refuse(f"{name} is not a valid Arrow IPC file ({str(err).splitlines()[0][:120]})") from None
    if table.num_rows != expected:
        raise refuse(f"{name} holds {table.num_rows} prototypes, its catalog row says {expected}")
    if set(table.column("set_id").to_pylist()) - {set_id}:
        raise refuse(f"{name} holds prototypes of another set")
    vectors = (table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
               .astype(np.float32).reshape(-1, dim))
    if not np.isfinite(vectors).all():
        raise refuse(f"{name} holds non-finite vectors")
    kinds = table.column("kind").to_pylist()
    if set(kinds) - set(KINDS):
        raise refuse(f"{name} holds unknown prototype kinds {sorted(set(kinds) - set(KINDS))}")
    image_ids = table.column("image_id").to_pylist()
    if any(i is not None and not _HEX.match(i) for i in image_ids):
        raise refuse(f"{name} holds an image id that is not a hex identifier")
    return PrototypeRows(
        vectors=vectors, kinds=kinds, image_ids=image_ids,
        regions=[tuple(r) if r is not None else None for r in table.column("region").to_pylist()],
        weights=table.column("weight").to_pylist(), ids=table.column("id").to_pylist(),
        set_ids=table.column("set_id").to_pylist(),
    )


# ============================================================================ export
@dataclass
class BundleParts:
    """A bundle before it is written: small members in memory, artifacts read on demand."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    blobs: dict[str, bytes]  # catalog/*.json and vectors/*.arrow
    artifacts: dict[str, int]  # sha256 → size
    read_artifact: Callable[[str], bytes]

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def short(self) -> str:
        return self.manifest_sha256[:12]

    def members(self) -> list[str]:
        """Every member name in archive order: the manifest, then the rest sorted."""
        names = list(self.blobs) + [f"artifacts/{h}" for h in self.artifacts]
        return [MANIFEST] + sorted(names)

    def total_bytes(self) -> int:
        return len(self.manifest_bytes) + sum(map(len, self.blobs.values())) + sum(self.artifacts.values())


def _chunks(values: list, n: int = 500) -> Iterator[list]:
    for i in range(0, len(values), n):
        yield values[i:i + n]


def _rows_in(s: Session, model, column, values: Iterable) -> list:
    values = sorted({v for v in values if v is not None})
    out = []
    for part in _chunks(values):
        out += s.scalars(select(model).where(column.in_(part))).all()
    return out


def select_sets(db, sel: Selection) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Ids of the ready sets a selection names, the vocabularies it carries (name, builtin, members
    with the sets each resolved to) and the ids of catalog vocabulary rows to export."""
    from protodb.catalog.schema import VocabularyRow as V

    vocabs: list[dict[str, Any]] = []
    vocab_ids: list[str] = []
    ids: list[str] = []

    def members_of(refs: list[str], strict: bool) -> list[dict[str, Any]]:
        members = []
        for ref in refs:
            try:
                got = [s["id"] for s in db.resolve(ref)]
            except NotFound:
                if strict:
                    raise
                got = []
            parsed = setq.Ref.parse(ref)
            members.append({"class": parsed.name, "ref": ref if ref != parsed.name else None,
                            "sets": sorted(got)})
        return members

    if sel.vocab:
        v = db.vocab_show(sel.vocab)
        members = members_of(list(v["classes"]), strict=True)
        vocabs.append({"name": v["name"], "builtin": bool(v["builtin"]), "members": members})
        ids += [i for m in members for i in m["sets"]]
        if not v["builtin"]:
            with db.session() as s:
                vocab_ids.append(s.scalar(select(V.id).where(V.name == v["name"])))
    elif sel.classes:
        for ref in sel.classes:
            if sel.every_version:
                name = setq.Ref.parse(ref).name
                with db.session() as s:
                    cls = setq.get_class(s, name)
                    if cls is None:
                        raise NotFound(f"no class {name!r} in this database; see: protodb ls")
                    got = [r.id for r in setq.ready_sets(s, cls.id)]
                if not got:
                    raise NotFound(f"class {name!r} has no ready prototypes; run: protodb add-class {name}")
                ids += got
            else:
                ids += [s["id"] for s in db.resolve(ref)]
    else:
        with db.session() as s:
            ids += s.scalars(select(PrototypeSetRow.id).where(PrototypeSetRow.status == SET_READY)).all()
            rows = s.scalars(select(V).order_by(V.name)).all()
            vocab_ids += [r.id for r in rows]
            refs_by_vocab = [(r.name, [m.ref or m.cls.name for m in r.members]) for r in rows]
        for name, refs in refs_by_vocab:
            vocabs.append({"name": name, "builtin": False, "members": members_of(refs, strict=False)})
    if not ids:
        raise NotFound("nothing to share: the selection names no ready prototype sets; see: protodb ls")
    return sorted(set(ids)), vocabs, vocab_ids


def build_bundle(db, sel: Selection, *, lean: bool = False) -> BundleParts:
    """Collect the chosen ready sets and everything they depend on into bundle members."""
    set_ids, vocabs, vocab_ids = select_sets(db, sel)
    tables: dict[str, list[dict[str, Any]]] = {}
    with db.session() as s:
        sets = _rows_in(s, PrototypeSetRow, PrototypeSetRow.id, set_ids)
        if any(r.status != SET_READY for r in sets):  # pragma: no cover - select_sets only finds ready ones
            raise InvalidInput("only ready prototype sets can be shared")
        vocab_rows = _rows_in(s, VocabularyRow, VocabularyRow.id, vocab_ids)
        members = _rows_in(s, VocabularyMemberRow, VocabularyMemberRow.vocabulary_id, vocab_ids)
        class_ids = {r.class_id for r in sets} | {m.class_id for m in members}
        ext_ids = {r.extractor_id for r in sets}
        run_ids = {r.run_id for r in sets}
        links, images, masks = [], [], []
        if not lean:
            links = _rows_in(s, SetImageRow, SetImageRow.set_id, set_ids)
            images = _rows_in(s, SupportImageRow, SupportImageRow.id, [link.image_id for link in links])
            masks = _rows_in(s, MaskRow, MaskRow.image_id, [i.id for i in images])
            run_ids |= {i.run_id for i in images}
            ext_ids |= {m.extractor_id for m in masks}
            class_ids |= {i.class_id for i in images}
        runs = _rows_in(s, GenerationRunRow, GenerationRunRow.id, run_ids)
        class_ids |= {r.class_id for r in runs}
        specs = _rows_in(s, GeneratorSpecRow, GeneratorSpecRow.id, [r.generator_spec_id for r in runs])
        classes = _rows_in(s, ClassRow, ClassRow.id, class_ids)
        labels = _rows_in(s, LabelRow, LabelRow.class_id, class_ids)
        extractors = _rows_in(s, ExtractorRow, ExtractorRow.id, ext_ids)
        tags = _rows_in(s, TagRow, TagRow.set_id, set_ids)
        by_table = {
            "classes": classes, "class_labels": labels, "extractors": extractors,
            "generator_specs": specs, "generation_runs": runs, "support_images": images,
            "masks": masks, "prototype_sets": sets, "prototype_set_images": links, "tags": tags,
            "vocabularies": vocab_rows, "vocabulary_members": members,
        }
        for table, objs in by_table.items():
            model = TABLES[table]
            rows = [row_to_dict(o, model) for o in objs]
            tables[table] = sorted(rows, key=lambda r: _pk(model, r))
        class_names = {c.id: c.name for c in classes}
        ext_info = {e.id: (e.name, int(e.dim)) for e in extractors}
        set_meta = [(r.id, r.class_id, r.extractor_id, r.version, r.vector_table,
                     dict(r.counts or {})) for r in sets]
    artifacts: dict[str, int] = {}
    for img in tables["support_images"]:
        for key in ("artifact_sha256", "attention_sha256"):
            if img[key]:
                artifacts[img[key]] = 0
    for m in tables["masks"]:
        artifacts[m["artifact_sha256"]] = 0
    for digest in sorted(artifacts):
        if not db.artifacts.exists(digest):
            raise ProtoDBError(f"artifact {digest} is missing from {db.artifacts_uri}; run: protodb verify")
        artifacts[digest] = db.artifacts.size(digest)

    blobs: dict[str, bytes] = {}
    for table, rows in tables.items():
        blobs[f"catalog/{table}.json"] = _json_bytes(rows)
    contents_sets = []
    for set_id, class_id, ext_id, version, vtable, counts in set_meta:
        rows = db.vectors.read(vtable, [set_id])
        expected = sum(int(v) for v in counts.values())
        if len(rows) != expected:
            raise ProtoDBError(f"set {set_id} has {len(rows)} vectors but its catalog row says {expected}; "
                               "run: protodb verify")
        if len(rows) and rows.vectors.shape[1] != ext_info[ext_id][1]:
            raise ProtoDBError(f"set {set_id} vectors are not {ext_info[ext_id][1]}-d; run: protodb verify")
        blobs[f"vectors/{set_id}.arrow"] = vectors_to_arrow(rows, set_id)
        contents_sets.append({"id": set_id, "class": class_names[class_id], "extractor": ext_info[ext_id][0],
                              "extractor_id": ext_id, "version": version, "counts": counts})
    contents_sets.sort(key=lambda d: (d["class"], d["extractor"], d["version"], d["id"]))
    member_meta = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                   for name, data in blobs.items()}
    member_meta.update({f"artifacts/{h}": {"sha256": h, "size": n} for h, n in artifacts.items()})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "protodb_version": __version__,
        "schema_revision": migrate.head_revision(),
        "lean": bool(lean),
        "lean_omits": ["support_images", "masks", "attention_maps"] if lean else [],
        "selection": sel.to_dict(),
        "contents": {
            "classes": sorted(class_names.values()),
            "sets": contents_sets,
            "extractors": [{"id": i, "name": n, "dim": d} for i, (n, d) in sorted(ext_info.items())],
            "vocabularies": vocabs,
            "artifacts": len(artifacts),
        },
        "members": dict(sorted(member_meta.items())),
    }
    return BundleParts(manifest=manifest, manifest_bytes=_json_bytes(manifest, indent=1), blobs=blobs,
                       artifacts=dict(sorted(artifacts.items())), read_artifact=db.artifacts.get)


def _json_bytes(data: Any, indent: int | None = None) -> bytes:
    text = json.dumps(data, sort_keys=True, indent=indent, ensure_ascii=True,
                      separators=(",", ": ") if indent else (",", ":"), allow_nan=False)
    return (text + "\n").encode()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, _FIXED_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(parts: BundleParts, out: str | os.PathLike, *, compress: bool | None = None,
              progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
    """Write ``parts`` as one archive at ``out`` (gzip when ``compress`` or the name ends in .gz/.tgz).

    The file appears atomically (written beside it, then renamed); artifacts are re-hashed as
    they are copied, so a corrupt local store never ends up in a bundle.
    """
    out = Path(out)
    if compress is None:
        compress = out.name.endswith((".gz", ".tgz"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tick = progress or (lambda _s, _n, _t: None)
    tick("export", 0, parts.total_bytes())
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as raw:
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) if compress else None
            with tarfile.open(fileobj=gz or raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name in parts.members():
                    if name == MANIFEST:
                        data = parts.manifest_bytes
                    elif name.startswith("artifacts/"):
                        digest = name.split("/", 1)[1]
                        data = parts.read_artifact(digest)
                        if hashlib.sha256(data).hexdigest() != digest:
                            raise ProtoDBError(f"artifact {digest} is corrupt in this database; run: protodb verify")
                    else:
                        data = parts.blobs[name]
                    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
                    tick("export", len(data), None)
            if gz is not None:
                gz.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return {"path": str(out), "bytes": out.stat().st_size, "compressed": bool(compress),
            "manifest_sha256": parts.manifest_sha256, "bundle": parts.short, "lean": parts.manifest["lean"],
            "classes": parts.manifest["contents"]["classes"], "sets": parts.manifest["contents"]["sets"],
            "vocabularies": [v["name"] for v in parts.manifest["contents"]["vocabularies"]],
            "members": len(parts.members()), "artifacts": len(parts.artifacts)}


# ============================================================================ reading (hostile side)
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
                or not _SHA.match(meta["sha256"]) or not isinstance(meta.get("size"), int)
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
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def short(self) -> str:
        return self.manifest_sha256[:12]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

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
            n = _CHUNK
        data = self.raw.read(min(n, self.limit - self.count + 1))
        self.count += len(data)
        if self.count > self.limit:
            raise refuse(f"the archive unpacks to more than {self.limit} bytes (decompression bomb?); "
                         "raise --max-bytes if you trust it")
        return data


def read_tar(path: str | os.PathLike, limits: Limits | None = None) -> Staged:
    """Read a bundle archive member by member into a private temporary folder, with every check
    that does not need the catalog. Raises InvalidInput (one line) for anything hostile."""
    limits = limits or Limits.from_env()
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"bundle {path} does not exist or is not a file")
    tmp = tempfile.TemporaryDirectory(prefix="protodb-import-")
    root = Path(tmp.name)
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
        tmp.cleanup()
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        tmp.cleanup()
        raise refuse(f"{path.name} is not a readable bundle ({_why(err)})") from None
    except BaseException:
        tmp.cleanup()
        raise
    if MANIFEST not in files:
        tmp.cleanup()
        raise refuse(f"{path.name} has no manifest.json")
    try:
        manifest = check_manifest(_load_json(files.pop(MANIFEST), MANIFEST))
        manifest_sha = hashes.pop(MANIFEST)[0]
        staged = Staged(manifest, manifest_sha, files, hashes, _tmp=tmp)
        check_limits(manifest, limits)
        staged.verify()
    except BaseException:
        tmp.cleanup()
        raise
    return staged


def check_member_name_prefix(name: Any) -> None:
    """The path checks that must come before any type check (absolute, '..', control chars)."""
    if not isinstance(name, str) or not name:
        raise refuse("a member has an empty name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise refuse(f"member {name[:80]!r} has an absolute path")
    if ".." in re.split(r"[/\\]", name):
        raise refuse(f"member {name[:80]!r} has a '..' path component")


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
        while block := src.read(_CHUNK):
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


# ============================================================================ contents
@dataclass
class Contents:
    """A verified bundle's catalog rows (by table), vectors (by set id) and artifact files."""

    manifest: dict[str, Any]
    manifest_sha256: str
    rows: dict[str, list[dict[str, Any]]]
    vectors: dict[str, PrototypeRows]
    artifacts: dict[str, Path | None]  # sha256 → staged file (None: already in the local store)

    @property
    def short(self) -> str:
        return self.manifest_sha256[:12]


def load_contents(staged: Staged) -> Contents:
    """Parse and cross-check the catalog rows and vectors of a verified bundle (no catalog access)."""
    staged.verify()
    rows: dict[str, list[dict[str, Any]]] = {}
    for table in TABLES:
        name = f"catalog/{table}.json"
        if name not in staged.files:
            raise refuse(f"the bundle has no {name}")
        rows[table] = _check_rows(table, _load_json(staged.files[name], name))
    ids = {t: {r["id"] for r in rows[t]} for t in TABLES if "id" in TABLES[t].__table__.columns}

    def need(table: str, column: str, target: str, nullable: bool = False) -> None:
        for r in rows[table]:
            value = r.get(column)
            if value is None and nullable:
                continue
            if value not in ids[target]:
                raise refuse(f"catalog/{table}.json refers to {target} {str(value)[:64]} that the bundle lacks")

    need("class_labels", "class_id", "classes")
    need("generation_runs", "class_id", "classes")
    need("generation_runs", "generator_spec_id", "generator_specs")
    need("support_images", "class_id", "classes")
    need("support_images", "run_id", "generation_runs", nullable=True)
    need("masks", "image_id", "support_images")
    need("masks", "extractor_id", "extractors", nullable=True)
    need("prototype_sets", "class_id", "classes")
    need("prototype_sets", "extractor_id", "extractors")
    need("prototype_sets", "run_id", "generation_runs", nullable=True)
    need("prototype_set_images", "set_id", "prototype_sets")
    need("prototype_set_images", "image_id", "support_images")
    need("tags", "set_id", "prototype_sets")
    need("vocabulary_members", "vocabulary_id", "vocabularies")
    need("vocabulary_members", "class_id", "classes")
    names = [c["name"] for c in rows["classes"]]
    if len(set(names)) != len(names):
        raise refuse("catalog/classes.json names a class twice")
    for c in rows["classes"]:
        try:
            if setq.normalize_class_name(c["name"]) != c["name"]:
                raise InvalidInput("not normalised")
        except InvalidInput:
            raise refuse(f"class name {c['name'][:60]!r} is not a valid class name") from None
    for t in rows["tags"]:
        try:
            setq.check_tag_name(t["name"])
        except InvalidInput:
            raise refuse(f"tag {t['name'][:60]!r} is not a valid tag name") from None
    for v in rows["vocabularies"]:
        try:
            setq.check_tag_name(v["name"])
        except InvalidInput:
            raise refuse(f"vocabulary {v['name'][:60]!r} is not a valid vocabulary name") from None

    artifacts: dict[str, Path | None] = {}
    for name, meta in staged.manifest["members"].items():
        if name.startswith("artifacts/"):
            artifacts[meta["sha256"]] = staged.files.get(name)
    for img in rows["support_images"]:
        for key in ("artifact_sha256", "attention_sha256"):
            if img.get(key) and img[key] not in artifacts:
                raise refuse(f"support image {img['id']} needs artifact {img[key]} that the bundle lacks")
    for m in rows["masks"]:
        if m["artifact_sha256"] not in artifacts:
            raise refuse(f"mask {m['id']} needs artifact {m['artifact_sha256']} that the bundle lacks")

    dims = {e["id"]: int(e["dim"]) for e in rows["extractors"]}
    listed = {s.get("id") for s in staged.manifest["contents"]["sets"] if isinstance(s, dict)}
    set_ids = {s["id"] for s in rows["prototype_sets"]}
    if listed != set_ids:
        raise refuse("the manifest's list of sets does not match catalog/prototype_sets.json")
    vector_members = {n for n in staged.manifest["members"] if n.startswith("vectors/")}
    if vector_members != {f"vectors/{i}.arrow" for i in set_ids}:
        raise refuse("the bundle's vector files do not match its prototype sets")
    vectors = {}
    for s in rows["prototype_sets"]:
        if s.get("status") != SET_READY or not isinstance(s.get("version"), int):
            raise refuse(f"set {s['id']} is not a ready, versioned set")
        counts = s.get("counts") or {}
        if set(counts) - set(KINDS) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
            raise refuse(f"set {s['id']} has invalid prototype counts")
        expected = sum(counts.values())
        rows_ = vectors_from_arrow(staged.files[f"vectors/{s['id']}.arrow"], s["id"], dims[s["extractor_id"]],
                                   expected)
        got = {k: rows_.kinds.count(k) for k in KINDS}
        if any(got[k] != int(counts.get(k, 0)) for k in KINDS):
            raise refuse(f"vectors/{s['id']}.arrow kinds do not match the set's counts")
        vectors[s["id"]] = rows_
    return Contents(staged.manifest, staged.manifest_sha256, rows, vectors, artifacts)


