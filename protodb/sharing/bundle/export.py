"""Writing bundles: collect the chosen ready sets and everything they depend on, then one
deterministic archive (the same sets always give the same bytes)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from protodb._version import __version__
from protodb.catalog import migrate
from protodb.catalog import queries
from protodb.catalog.schema import (
    SET_READY,
    ClassRow,
    CorrectionRow,
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
from protodb.entities import ExportReport
from protodb.errors import InvalidInput, NotFound, ProtoDBError
from protodb.fileio import move_into_place, temp_dir
from protodb.names import Ref
from protodb.sharing.ports import IndexLookup, SetLookup, VocabLookup
from protodb.sharing.bundle.format import FORMAT, FORMAT_VERSION, MANIFEST, Selection, json_bytes, tarinfo
from protodb.sharing.bundle.tables import TABLES, _pk, row_to_dict
from protodb.sharing.bundle.vectors import vectors_to_arrow
from protodb.stores import Stores

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


def select_sets(stores: Stores, sets: SetLookup, vocabs: VocabLookup,
                sel: Selection) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Ids of the ready sets a selection names, the vocabularies it carries (name, builtin, members
    with the sets each resolved to) and the ids of catalog vocabulary rows to export."""
    vocab_rows: list[dict[str, Any]] = []
    vocab_ids: list[str] = []
    ids: list[str] = []

    def members_of(refs: list[str], strict: bool) -> list[dict[str, Any]]:
        members = []
        for ref in refs:
            try:
                got = [p.id for p in sets.resolve(ref)]
            except NotFound:
                if strict:
                    raise
                got = []
            parsed = Ref.parse(ref)
            members.append({"class": parsed.name, "ref": ref if ref != parsed.name else None, "sets": sorted(got)})
        return members

    if sel.vocab:
        v = vocabs.show(sel.vocab)
        members = members_of(list(v.classes), strict=True)
        vocab_rows.append({"name": v.name, "builtin": bool(v.builtin), "members": members})
        ids += [i for m in members for i in m["sets"]]
        if not v.builtin:
            with stores.sessions.reader() as s:
                vocab_ids.append(s.scalar(select(VocabularyRow.id).where(VocabularyRow.name == v.name)))
    elif sel.classes:
        for ref in sel.classes:
            if sel.every_version:
                name = Ref.parse(ref).name
                with stores.sessions.reader() as s:
                    cls = queries.get_class(s, name)
                    if cls is None:
                        raise NotFound(f"no class {name!r} in this database; see: protodb ls")
                    got = [r.id for r in queries.ready_sets(s, cls.id)]
                if not got:
                    raise NotFound(f"class {name!r} has no ready prototypes; run: protodb add-class {name}")
                ids += got
            else:
                ids += [p.id for p in sets.resolve(ref)]
    else:
        with stores.sessions.reader() as s:
            ids += s.scalars(select(PrototypeSetRow.id).where(PrototypeSetRow.status == SET_READY)).all()
            rows = s.scalars(select(VocabularyRow).order_by(VocabularyRow.name)).all()
            vocab_ids += [r.id for r in rows]
            refs_by_vocab = [(r.name, [m.ref or m.cls.name for m in r.members]) for r in rows]
        for name, refs in refs_by_vocab:
            vocab_rows.append({"name": name, "builtin": False, "members": members_of(refs, strict=False)})
    if not ids:
        raise NotFound("nothing to share: the selection names no ready prototype sets; see: protodb ls")
    return sorted(set(ids)), vocab_rows, vocab_ids


def _catalog_rows(s: Session, set_ids: list[str], vocab_ids: list[str], lean: bool) -> dict[str, list]:
    """The ORM rows a bundle carries, by table: the sets and everything they depend on."""
    sets = _rows_in(s, PrototypeSetRow, PrototypeSetRow.id, set_ids)
    if any(r.status != SET_READY for r in sets):  # pragma: no cover - select_sets only finds ready ones
        raise InvalidInput("only ready prototype sets can be shared")
    vocab_rows = _rows_in(s, VocabularyRow, VocabularyRow.id, vocab_ids)
    members = _rows_in(s, VocabularyMemberRow, VocabularyMemberRow.vocabulary_id, vocab_ids)
    class_ids = {r.class_id for r in sets} | {m.class_id for m in members}
    ext_ids = {r.extractor_id for r in sets}
    run_ids = {r.run_id for r in sets}
    links, images, masks, corrections = [], [], [], []
    if not lean:
        links = _rows_in(s, SetImageRow, SetImageRow.set_id, set_ids)
        images = _rows_in(s, SupportImageRow, SupportImageRow.id, [link.image_id for link in links])
        masks = _rows_in(s, MaskRow, MaskRow.image_id, [i.id for i in images])
        run_ids |= {i.run_id for i in images}
        ext_ids |= {m.extractor_id for m in masks}
        class_ids |= {i.class_id for i in images}
        corrections = _rows_in(s, CorrectionRow, CorrectionRow.class_id, class_ids)
    runs = _rows_in(s, GenerationRunRow, GenerationRunRow.id, run_ids)
    class_ids |= {r.class_id for r in runs}
    return {
        "classes": _rows_in(s, ClassRow, ClassRow.id, class_ids),
        "class_labels": _rows_in(s, LabelRow, LabelRow.class_id, class_ids),
        "extractors": _rows_in(s, ExtractorRow, ExtractorRow.id, ext_ids),
        "generator_specs": _rows_in(s, GeneratorSpecRow, GeneratorSpecRow.id, [r.generator_spec_id for r in runs]),
        "generation_runs": runs, "support_images": images, "masks": masks, "prototype_sets": sets,
        "prototype_set_images": links, "tags": _rows_in(s, TagRow, TagRow.set_id, set_ids),
        "vocabularies": vocab_rows, "vocabulary_members": members, "corrections": corrections,
    }


def _artifact_sizes(stores: Stores, tables: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """sha256 -> size of every artifact the rows name (each must exist in the store)."""
    digests = {img[key] for img in tables["support_images"] for key in ("artifact_sha256", "attention_sha256")
               if img[key]} | {m["artifact_sha256"] for m in tables["masks"]} | {
        c[key] for c in tables.get("corrections", []) for key in ("image_sha256", "mask_sha256")}
    sizes = {}
    for digest in sorted(digests):
        if not stores.artifacts.exists(digest):
            raise ProtoDBError(f"artifact {digest} is missing from {stores.artifacts_uri}; run: protodb verify")
        sizes[digest] = stores.artifacts.size(digest)
    return sizes


def _vector_blobs(set_service: SetLookup, sets: list[dict[str, Any]], class_names: dict[str, str],
                  ext_info: dict[str, tuple[str, int]]) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """One Arrow file per set (its vectors read and checked like every read: count and checksum) and
    the manifest's set list."""
    blobs, listed = {}, []
    for r in sets:
        rows = set_service.prototypes(set_service.get(r["id"]))
        counts = dict(r["counts"] or {})
        ref = f"{class_names[r['class_id']]}@{r['version']}"
        name, dim = ext_info[r["extractor_id"]]
        if len(rows) and rows.vectors.shape[1] != dim:
            raise ProtoDBError(f"set {ref} vectors are not {dim}-d; run: protodb verify")
        blobs[f"vectors/{r['id']}.arrow"] = vectors_to_arrow(rows, r["id"])
        listed.append({"id": r["id"], "class": class_names[r["class_id"]], "extractor": name,
                       "extractor_id": r["extractor_id"], "version": r["version"], "counts": counts})
    listed.sort(key=lambda d: (d["class"], d["extractor"], d["version"], d["id"]))
    return blobs, listed


def build_bundle(stores: Stores, sets: SetLookup, vocabs: VocabLookup, sel: Selection, *,
                 lean: bool = False, indexes: IndexLookup | None = None) -> BundleParts:
    """Collect the chosen ready sets and everything they depend on into bundle members.

    ``indexes``: with it, each vocabulary's entry in the manifest records the summary indexes that are
    fresh here (``"indexes"``: extractor, kind, params; the key is left out when there are none, so a
    bundle without indexes is byte for byte what it was before they travelled)."""
    set_ids, vocab_entries, vocab_ids = select_sets(stores, sets, vocabs, sel)
    if indexes is not None:
        for entry in vocab_entries:
            carried = indexes.portable(entry["name"])
            if carried:
                entry["indexes"] = carried
    with stores.sessions.reader() as s:
        objs = _catalog_rows(s, set_ids, vocab_ids, lean)
        tables = {t: sorted((row_to_dict(o, TABLES[t]) for o in rows), key=lambda r, m=TABLES[t]: _pk(m, r))
                  for t, rows in objs.items()}
    class_names = {c["id"]: c["name"] for c in tables["classes"]}
    ext_info = {e["id"]: (e["name"], int(e["dim"])) for e in tables["extractors"]}
    artifacts = _artifact_sizes(stores, tables)
    blobs = {f"catalog/{table}.json": json_bytes(rows) for table, rows in tables.items()}
    vector_blobs, contents_sets = _vector_blobs(sets, tables["prototype_sets"], class_names, ext_info)
    blobs.update(vector_blobs)
    member_meta = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                   for name, data in blobs.items()}
    member_meta.update({f"artifacts/{h}": {"sha256": h, "size": n} for h, n in artifacts.items()})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "protodb_version": __version__,
        "schema_revision": migrate.head_revision(), "lean": bool(lean),
        "lean_omits": ["support_images", "masks", "attention_maps", "corrections"] if lean else [],
        "selection": sel.to_dict(),
        "contents": {
            "classes": sorted(class_names.values()), "sets": contents_sets,
            "extractors": [{"id": i, "name": n, "dim": d} for i, (n, d) in sorted(ext_info.items())],
            "vocabularies": vocab_entries, "artifacts": len(artifacts),
        },
        "members": dict(sorted(member_meta.items())),
    }
    return BundleParts(manifest=manifest, manifest_bytes=json_bytes(manifest, indent=1), blobs=blobs,
                       artifacts=dict(sorted(artifacts.items())), read_artifact=stores.artifacts.get)


def write_tar(parts: BundleParts, out: str | Path, *, staging: Path, compress: bool | None = None,
              progress: Callable[[str, int, int | None], None] | None = None) -> ExportReport:
    """Write ``parts`` as one archive at ``out`` (gzip when ``compress`` or the name ends in .gz/.tgz).

    The archive is written in ``staging`` (inside the database home: a killed export leaves nothing
    beside ``out``, and the leftovers are cleaned on the next open), then moved into place (mode
    0644). Artifacts are re-hashed as they are copied, so a corrupt local store never ends up in a
    bundle.
    """
    out = Path(out)
    if compress is None:
        compress = out.name.endswith((".gz", ".tgz"))
    if out.is_dir():
        raise InvalidInput(f"{out} is a folder; give the bundle's file name, e.g. {out / 'bundle.tar.gz'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise InvalidInput(f"cannot write {out}: {out.parent} is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tick = progress or (lambda _s, _n, _t: None)
    tick("export", 0, parts.total_bytes())
    with temp_dir(staging, "export") as work:
        tmp = work / "bundle"
        with open(tmp, "wb") as raw:
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
                    tar.addfile(tarinfo(name, len(data)), io.BytesIO(data))
                    tick("export", len(data), None)
            if gz is not None:
                gz.close()
        move_into_place(tmp, out)
    m = parts.manifest
    return ExportReport(path=str(out), bytes=out.stat().st_size, compressed=bool(compress),
                        manifest_sha256=parts.manifest_sha256, bundle=parts.short, lean=m["lean"],
                        classes=tuple(m["contents"]["classes"]), sets=tuple(m["contents"]["sets"]),
                        vocabularies=tuple(v["name"] for v in m["contents"]["vocabularies"]),
                        members=len(parts.members()), artifacts=len(parts.artifacts))
