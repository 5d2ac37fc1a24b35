"""Importing a verified bundle: merge, never overwrite.

Rules (``plan`` decides, ``apply`` writes in the crash-safe order):

* Objects with the same identifier (or content hash) as a local one are skipped; a prototype set
  whose id is already here is skipped whole.
* A class is matched by name. If the local class has another id (other provenance), the imported
  sets become new versions after the local ones (their ids kept); otherwise their versions are kept
  where free. Label history comes along only for classes the import creates (or the same class);
  a differing thing/stuff label is kept as it is here, with a warning.
* A support image whose generation run and index exist here with the same pixels is the same
  image; with other pixels it is imported without the run link (unique per run), with a warning.
* Tags pin at most one set per (class, extractor): a bundle tag that would move a local pin is
  skipped and reported. The newest imported set of each (class, extractor) is tagged
  ``import:<bundle short hash>``. Version/tag pins inside imported vocabularies are rewritten to
  name the imported sets; a vocabulary that exists here with other classes is imported as
  ``NAME:import-<hash>`` instead of changing the local one.

Write order: artifacts, then vectors (``VectorStore.add`` with the original set id, under the
vector lock), then one catalog transaction that inserts every row with sets ``ready``. A crash
before that transaction leaves nothing visible; the next import replaces the orphan vectors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from protodb._version import __version__
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
    SupportImageRow,
    TagRow,
    VocabularyRow,
    new_id,
)
from protodb.entities import ImportReport
from protodb.errors import ProtoDBError
from protodb.names import Ref, quoted
from protodb.sharing.bundle.contents import Contents
from protodb.sharing.bundle.format import refuse
from protodb.sharing.bundle.tables import TABLES, rows_from_dict
from protodb.storage.vectors import PrototypeRows, table_name
from protodb.stores import Stores

ORIGIN_TAG = "import:{short}"
INSERT_BATCH = 2000
_LOCAL_PATH_KEYS = ("checkpoint", "path")


@dataclass
class SetPlan:
    id: str
    cls: str  # class name
    class_id: str  # local class id
    extractor_id: str
    extractor: str
    version: int
    original_version: int
    vectors: PrototypeRows

    @property
    def renumbered(self) -> bool:
        return self.version != self.original_version


@dataclass
class Plan:
    inserts: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in TABLES})
    new_sets: list[SetPlan] = field(default_factory=list)
    skipped_sets: list[dict[str, Any]] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    existing_classes: list[str] = field(default_factory=list)
    tag_conflicts: list[str] = field(default_factory=list)
    vocabularies: list[dict[str, Any]] = field(default_factory=list)
    artifacts_missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    origin_tag: str | None = None


class _Planner:
    """Plans an import one entity kind at a time, in foreign-key order; each step reads what the
    earlier steps decided (local ids of classes, images and sets) and writes nothing."""

    def __init__(self, s: Session, c: Contents):
        self.s, self.c, self.rows = s, c, c.rows
        self.p = Plan()
        self.cls_name = {r["id"]: r["name"] for r in self.rows["classes"]}
        self.ext_name = {r["id"]: r["name"] for r in self.rows["extractors"]}
        self.class_map: dict[str, str] = {}  # bundle class id -> local class id
        self.status: dict[str, str] = {}  # bundle class id -> new | same | other
        self.new_runs: set[str] = set()
        self.image_map: dict[str, str] = {}
        self.set_where: dict[str, tuple[str, str, int]] = {}  # bundle set id -> (local class, extractor, version)
        self.pinned: dict[tuple[str, str, str], str] = {}  # (tag, local class, extractor) -> set id

    def existing(self, column, values) -> set:
        """Which of ``values`` already stand in ``column`` here (one IN query per 500 values)."""
        values = sorted({v for v in values if v is not None})
        found: set = set()
        for i in range(0, len(values), 500):
            found |= set(self.s.scalars(select(column).where(column.in_(values[i:i + 500]))).all())
        return found

    def classes(self) -> None:
        s, p = self.s, self.p
        for r in self.rows["classes"]:
            local = queries.get_class(s, r["name"])
            if local is None:
                cid = r["id"] if s.get(ClassRow, r["id"]) is None else new_id()
                p.inserts["classes"].append({**r, "id": cid})
                self.class_map[r["id"]], self.status[r["id"]] = cid, "new"
                p.new_classes.append(r["name"])
                continue
            self.class_map[r["id"]] = local.id
            self.status[r["id"]] = "same" if local.id == r["id"] else "other"
            p.existing_classes.append(r["name"])
            if local.kind != r["kind"]:
                p.warnings.append(f"class {r['name']!r} is {r['kind']} in the bundle but {local.kind} here; "
                                  f"kept {local.kind} (change it with: protodb label {quoted(r['name'])} --{r['kind']})")

    def labels(self) -> None:
        have = self.existing(LabelRow.id, [r["id"] for r in self.rows["class_labels"]])
        for r in self.rows["class_labels"]:
            if self.status[r["class_id"]] != "other" and r["id"] not in have:
                self.p.inserts["class_labels"].append({**r, "class_id": self.class_map[r["class_id"]]})

    def extractors_and_runs(self) -> None:
        s, p = self.s, self.p
        for r in self.rows["extractors"]:
            local = s.get(ExtractorRow, r["id"])
            if local is not None and int(local.dim) != int(r["dim"]):
                raise refuse(f"extractor {r['name']} ({r['id'][:16]}) is {local.dim}-d here but "
                             f"{r['dim']}-d in the bundle")
            if local is None:
                p.inserts["extractors"].append(r)
                for key in _LOCAL_PATH_KEYS:
                    value = (r.get("config") or {}).get(key)
                    if isinstance(value, str) and not os.path.isabs(value) and not value.startswith("pkg:"):
                        continue  # relative to the database home: built again here (tiny preset)
                    if isinstance(value, str) and not value.startswith("pkg:") and not os.path.exists(value):
                        p.warnings.append(
                            f"extractor {r['name']} reads {key} {value}, which is not on this machine; put the same "
                            "weights there (or build them with the same preset) before segmenting with it")
        for r in self.rows["generator_specs"]:
            if s.get(GeneratorSpecRow, r["id"]) is None:
                p.inserts["generator_specs"].append(r)
        for r in self.rows["generation_runs"]:
            if s.get(GenerationRunRow, r["id"]) is None:
                p.inserts["generation_runs"].append({**r, "class_id": self.class_map[r["class_id"]]})
                self.new_runs.add(r["id"])

    def images(self) -> None:
        s, p = self.s, self.p
        unlinked = 0
        have = self.existing(SupportImageRow.id, [r["id"] for r in self.rows["support_images"]])
        for r in self.rows["support_images"]:
            if r["id"] in have:
                self.image_map[r["id"]] = r["id"]
                continue
            row = {**r, "class_id": self.class_map[r["class_id"]]}
            if r.get("run_id") and r["run_id"] not in self.new_runs and r.get("index_in_run") is not None:
                local = s.scalar(select(SupportImageRow).where(SupportImageRow.run_id == r["run_id"],
                                                               SupportImageRow.index_in_run == r["index_in_run"]))
                if local is not None and local.artifact_sha256 == r["artifact_sha256"]:
                    self.image_map[r["id"]] = local.id
                    continue
                if local is not None:
                    row["run_id"] = None
                    unlinked += 1
            p.inserts["support_images"].append(row)
            self.image_map[r["id"]] = r["id"]
        if unlinked:
            p.warnings.append(f"{unlinked} imported support images differ from this database's images of the same "
                              "generation run and index; they were imported without the run link")

    def masks(self) -> None:
        have = self.existing(MaskRow.id, [r["id"] for r in self.rows["masks"]])
        for r in self.rows["masks"]:
            if r["id"] in have:
                continue
            image_id = self.image_map[r["image_id"]]
            same = self.s.scalar(select(MaskRow.id).where(
                MaskRow.image_id == image_id, MaskRow.role == r["role"],
                MaskRow.artifact_sha256 == r["artifact_sha256"], MaskRow.extractor_id == r["extractor_id"]))
            if same is None:
                self.p.inserts["masks"].append({**r, "image_id": image_id})

    def corrections(self) -> None:
        """Corrections of the bundle's classes, each once (by id), on the local class of the same name."""
        have = self.existing(CorrectionRow.id, [r["id"] for r in self.rows["corrections"]])
        for r in self.rows["corrections"]:
            if r["id"] not in have:
                self.p.inserts["corrections"].append({**r, "class_id": self.class_map[r["class_id"]]})

    def sets(self) -> None:
        s, p = self.s, self.p
        used: dict[tuple[str, str], set[int]] = {}
        ordered = sorted(self.rows["prototype_sets"],
                         key=lambda r: (self.cls_name[r["class_id"]], r["extractor_id"], r["version"], r["id"]))
        for r in ordered:
            local = s.get(PrototypeSetRow, r["id"])
            name, ext = self.cls_name[r["class_id"]], r["extractor_id"]
            if local is not None:
                p.skipped_sets.append({"id": r["id"], "class": name, "extractor": self.ext_name[ext],
                                       "version": local.version, "status": local.status})
                self.set_where[r["id"]] = (local.class_id, local.extractor_id, local.version)
                continue
            cid = self.class_map[r["class_id"]]
            if (cid, ext) not in used:
                used[(cid, ext)] = set(s.scalars(select(PrototypeSetRow.version).where(
                    PrototypeSetRow.class_id == cid, PrototypeSetRow.extractor_id == ext,
                    PrototypeSetRow.version.is_not(None))).all())
            taken = used[(cid, ext)]
            keep = self.status[r["class_id"]] != "other" and r["version"] not in taken
            version = r["version"] if keep else max(taken | {0}) + 1
            taken.add(version)
            vec = self.c.vectors[r["id"]]
            mapped = PrototypeRows(vectors=vec.vectors, kinds=list(vec.kinds),
                                   image_ids=[self.image_map.get(i, i) if i else None for i in vec.image_ids],
                                   regions=list(vec.regions), weights=list(vec.weights))
            p.new_sets.append(SetPlan(r["id"], name, cid, ext, self.ext_name[ext], version, r["version"], mapped))
            self.set_where[r["id"]] = (cid, ext, version)
            params = {k: v for k, v in (r.get("params") or {}).items() if k != "owner"}
            p.inserts["prototype_sets"].append({
                **r, "class_id": cid, "version": version, "status": SET_READY, "params": params,
                "vector_table": table_name(ext), "vector_table_version": None,
                "vectors_sha256": mapped.checksum(),
            })
        new_ids = {sp.id for sp in p.new_sets}
        seen = set()
        for r in self.rows["prototype_set_images"]:  # two imported images may map onto one local image
            key = (r["set_id"], self.image_map[r["image_id"]])
            if r["set_id"] in new_ids and key not in seen:
                seen.add(key)
                p.inserts["prototype_set_images"].append({**r, "image_id": key[1]})

    def tags(self) -> None:
        s, p = self.s, self.p
        set_class = {r["id"]: self.cls_name[r["class_id"]] for r in self.rows["prototype_sets"]}
        relevant = [r for r in self.rows["tags"] if r["set_id"] in self.set_where]
        have_ids = self.existing(TagRow.id, [r["id"] for r in relevant])
        pairs, local_pins = set(), {}  # local (tag, set) pairs; (tag, class, extractor) -> pinned set
        names = sorted({r["name"] for r in relevant})
        for i in range(0, len(names), 500):
            for name, cid, ext, sid in s.execute(
                    select(TagRow.name, PrototypeSetRow.class_id, PrototypeSetRow.extractor_id, TagRow.set_id)
                    .join(PrototypeSetRow, TagRow.set_id == PrototypeSetRow.id)
                    .where(TagRow.name.in_(names[i:i + 500]))):
                pairs.add((name, sid))
                local_pins.setdefault((name, cid, ext), sid)
        for r in relevant:
            cid, ext, _v = self.set_where[r["set_id"]]
            key = (r["name"], cid, ext)
            if r["id"] in have_ids or (r["name"], r["set_id"]) in pairs:
                self.pinned[key] = r["set_id"]
                continue
            other = self.pinned.get(key) or local_pins.get(key)
            if other is not None and other != r["set_id"]:
                p.tag_conflicts.append(f"{set_class[r['set_id']]}@{r['name']}")
                continue
            self.pinned[key] = r["set_id"]
            p.inserts["tags"].append(r)
        if not p.new_sets:
            return
        p.origin_tag = ORIGIN_TAG.format(short=self.c.short)
        newest: dict[tuple[str, str], SetPlan] = {}
        for sp in p.new_sets:
            k = (sp.class_id, sp.extractor_id)
            if k not in newest or sp.version > newest[k].version:
                newest[k] = sp
        for sp in sorted(newest.values(), key=lambda x: (x.cls, x.extractor_id)):
            if s.scalar(select(TagRow.id).where(TagRow.name == p.origin_tag, TagRow.set_id == sp.id)) is None:
                p.inserts["tags"].append({
                    "id": _derived_id(self.c.manifest_sha256, sp.id), "name": p.origin_tag, "set_id": sp.id,
                    "note": f"imported from bundle {self.c.manifest_sha256} "
                            f"(protodb {self.c.manifest.get('protodb_version')})",
                    "protodb_version": __version__,
                })
            self.pinned[(p.origin_tag, sp.class_id, sp.extractor_id)] = sp.id

    def artifacts(self, artifact_exists: Callable[[str], bool]) -> None:
        needed = set()
        for r in self.p.inserts["support_images"]:
            needed |= {h for h in (r["artifact_sha256"], r.get("attention_sha256")) if h}
        needed |= {r["artifact_sha256"] for r in self.p.inserts["masks"]}
        needed |= {r[k] for r in self.p.inserts["corrections"] for k in ("image_sha256", "mask_sha256")}
        self.p.artifacts_missing = sorted(h for h in needed if not artifact_exists(h))


def plan(s: Session, c: Contents, artifact_exists: Callable[[str], bool]) -> Plan:
    """Decide what an import adds and skips, against the catalog as ``s`` sees it (writes nothing)."""
    pl = _Planner(s, c)
    pl.classes()
    pl.labels()
    pl.extractors_and_runs()
    pl.images()
    pl.masks()
    pl.corrections()
    pl.sets()
    pl.tags()
    _plan_vocabularies(s, c, pl.p, pl.class_map, pl.set_where, pl.pinned)
    pl.artifacts(artifact_exists)
    return pl.p


def _derived_id(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]


def _plan_vocabularies(s, c: Contents, p: Plan, class_map, set_where, pinned) -> None:
    rows = c.rows
    cls_name = {r["id"]: r["name"] for r in rows["classes"]}
    by_name = {v["name"]: v for v in rows["vocabularies"]}
    for entry in c.manifest["contents"]["vocabularies"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise refuse("the manifest's vocabularies are malformed")
        name = entry["name"]
        if entry.get("builtin"):
            p.vocabularies.append({"name": name, "action": "builtin"})
            continue
        vrow = by_name.get(name)
        if vrow is None:
            raise refuse(f"the manifest names vocabulary {name!r} but catalog/vocabularies.json lacks it")
        member_sets = {}
        for m in entry.get("members") or []:
            if isinstance(m, dict) and isinstance(m.get("class"), str):
                member_sets[m["class"]] = [i for i in (m.get("sets") or []) if isinstance(i, str)]
        members = sorted((m for m in rows["vocabulary_members"] if m["vocabulary_id"] == vrow["id"]),
                         key=lambda m: m["position"])
        wanted = []
        for m in members:
            cname = cls_name[m["class_id"]]
            wanted.append((cname, class_map[m["class_id"]], m["position"],
                           _rewrite_ref(cname, m.get("ref"), member_sets.get(cname, []), set_where, pinned)))
        local = s.scalar(select(VocabularyRow).where(VocabularyRow.name == name))
        target = name
        if local is not None:
            have = [(m.cls.name, m.ref) for m in local.members]
            if have == [(w[0], w[3]) for w in wanted]:
                p.vocabularies.append({"name": name, "action": "skipped", "reason": "identical here"})
                continue
            target = f"{name[:80]}:import-{c.short[:8]}"
            if s.scalar(select(VocabularyRow.id).where(VocabularyRow.name == target)) is not None:
                p.vocabularies.append({"name": name, "action": "skipped", "reason": f"{target} exists here"})
                continue
        vid = vrow["id"] if s.get(VocabularyRow, vrow["id"]) is None else new_id()
        p.inserts["vocabularies"].append({**vrow, "id": vid, "name": target})
        for _name, cid, pos, ref in wanted:
            p.inserts["vocabulary_members"].append(
                {"vocabulary_id": vid, "class_id": cid, "position": pos, "ref": ref})
        p.vocabularies.append({"name": target, "action": "added", "from": name,
                               "classes": [w[3] or w[0] for w in wanted]})
        if target != name:
            p.warnings.append(f"vocabulary {name!r} exists here with other classes; imported as {target!r}")


def _rewrite_ref(cname: str, ref: str | None, set_ids: list[str], set_where, pinned) -> str | None:
    """A member pin that still names the same sets here, or a version pin that does."""
    if ref is None:
        return None
    parsed = Ref.parse(ref)
    places = [set_where[i] for i in set_ids if i in set_where]
    if not places:
        return ref
    versions = {v for _c, _e, v in places}
    if parsed.tag is not None and all(pinned.get((parsed.tag, cid, ext)) in set_ids for cid, ext, _v in places):
        return ref
    if parsed.version is not None and versions == {parsed.version}:
        return ref
    if len(versions) == 1:
        return f"{cname}@{versions.pop()}"
    return ref


# ================================================================================ apply
def report(c: Contents, p: Plan, *, dry_run: bool) -> ImportReport:
    art_bytes = sum(c.artifacts[h].stat().st_size for h in p.artifacts_missing if c.artifacts.get(h))
    return ImportReport(
        bundle=c.short,
        manifest_sha256=c.manifest_sha256,
        dry_run=dry_run,
        lean=bool(c.manifest.get("lean")),
        protodb_version=c.manifest.get("protodb_version"),
        schema_revision=c.manifest.get("schema_revision"),
        origin_tag=p.origin_tag,
        added={
            "classes": sorted(p.new_classes),
            "sets": [{"id": sp.id, "class": sp.cls, "extractor": sp.extractor, "version": sp.version,
                      "original_version": sp.original_version, "renumbered": sp.renumbered,
                      "prototypes": len(sp.vectors)} for sp in p.new_sets],
            "extractors": sorted(r["name"] for r in p.inserts["extractors"]),
            "images": len(p.inserts["support_images"]),
            "masks": len(p.inserts["masks"]),
            "corrections": len(p.inserts["corrections"]),
            "artifacts": len(p.artifacts_missing),
            "artifact_bytes": int(art_bytes),
            "tags": sorted({r["name"] for r in p.inserts["tags"]}),
            "vocabularies": [v["name"] for v in p.vocabularies if v["action"] == "added"],
        },
        skipped={
            "sets": p.skipped_sets,
            "classes_existing": sorted(p.existing_classes),
            "tags": sorted(p.tag_conflicts),
            "vocabularies": [v for v in p.vocabularies if v["action"] != "added"],
        },
        warnings=tuple(p.warnings),
        indexes=_carried_indexes(c, p, dry_run),
    )


def _carried_indexes(c: Contents, p: Plan, dry_run: bool) -> tuple[dict[str, Any], ...]:
    """The indexes the bundle carried, under the names their vocabularies have here: an added vocabulary
    (perhaps renamed ``NAME:import-<hash>``), a built-in one, or one identical here. A vocabulary skipped
    because its renamed copy exists already is left alone."""
    here = {}
    for v in p.vocabularies:
        if v["action"] == "added":
            here[v["from"]] = v["name"]
        elif v["action"] == "builtin" or v.get("reason") == "identical here":
            here[v["name"]] = v["name"]
    state = "would rebuild" if dry_run else "pending"
    return tuple({"vocabulary": here[name], "extractor": ix["extractor"], "kind": ix["kind"],
                  "params": dict(ix["params"]), "state": state}
                 for name, carried in sorted(c.indexes.items()) if name in here for ix in carried)


def apply(stores: Stores, c: Contents, *, dry_run: bool = False,
          progress: Callable[[str, int, int | None], None] | None = None) -> ImportReport:
    """Import verified contents: artifacts -> vectors -> one catalog transaction."""
    tick = progress or (lambda _s, _n, _t: None)
    with stores.sessions.reader() as s:
        first = plan(s, c, stores.artifacts.exists)
    if dry_run:
        return report(c, first, dry_run=True)
    table_versions: dict[str, int] = {}
    written: list[str] = []
    try:
        if first.artifacts_missing:
            tick("artifacts", 0, sum(c.artifacts[h].stat().st_size for h in first.artifacts_missing))
        for digest in first.artifacts_missing:
            data = c.artifacts[digest].read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise refuse(f"artifact {digest} changed on disk while importing")
            stores.artifacts.put(data)
            written.append(digest)
            tick("artifacts", len(data), None)
        if first.new_sets:
            tick("vectors", 0, sum(int(sp.vectors.vectors.nbytes) for sp in first.new_sets))
        for sp in first.new_sets:
            table = table_name(sp.extractor_id)
            with stores.vector_lock(table):
                stores.vectors.delete_sets(table, [sp.id])  # orphans of an import that died before its commit
                table_versions[sp.id] = stores.vectors.add(table, sp.id, sp.vectors)
            tick("vectors", int(sp.vectors.vectors.nbytes), None)

        def commit(s: Session) -> Plan:
            p = plan(s, c, lambda _h: True)
            missing = [sp.id for sp in p.new_sets if sp.id not in table_versions]
            if missing:
                raise ProtoDBError(f"the database changed during the import (set {missing[0]}); run it again")
            _insert(s, p, table_versions)
            return p

        final = stores.sessions.transact(commit, attempts=20, what="import")
    except BaseException:  # nothing was committed: leave no orphan vectors or artifacts behind
        _undo(stores, first, table_versions, written)
        raise
    out = report(c, final, dry_run=False)
    return dataclasses.replace(out, added={**out.added, "artifacts": len(first.artifacts_missing)})


def _undo(stores: Stores, p: Plan, table_versions: dict[str, int], written: list[str]) -> None:
    """Remove what a failed import wrote: its sets' vectors, and the artifacts it added that no
    catalog row names (a concurrent writer may have started to use one: those stay)."""
    for sp in p.new_sets:
        if sp.id in table_versions:
            table = table_name(sp.extractor_id)
            with contextlib.suppress(Exception), stores.vector_lock(table):
                stores.vectors.delete_sets(table, [sp.id])
    if not written:
        return
    with stores.sessions.reader() as s:
        named = set(s.scalars(select(SupportImageRow.artifact_sha256).where(SupportImageRow.artifact_sha256.in_(written))))
        named |= set(s.scalars(select(SupportImageRow.attention_sha256).where(SupportImageRow.attention_sha256.in_(written))))
        named |= set(s.scalars(select(MaskRow.artifact_sha256).where(MaskRow.artifact_sha256.in_(written))))
        named |= set(s.scalars(select(CorrectionRow.image_sha256).where(CorrectionRow.image_sha256.in_(written))))
        named |= set(s.scalars(select(CorrectionRow.mask_sha256).where(CorrectionRow.mask_sha256.in_(written))))
    for digest in written:
        if digest not in named:
            with contextlib.suppress(Exception):
                stores.artifacts.delete(digest)


def _insert(s: Session, p: Plan, table_versions: dict[str, int]) -> None:
    """Every planned row, table by table in foreign-key order, as batched executemany inserts."""
    for table, model in TABLES.items():
        rows = []
        for row in p.inserts[table]:
            values = rows_from_dict(table, row)
            if table == "prototype_sets":
                values["vector_table_version"] = table_versions[row["id"]]
            rows.append(values)
        for i in range(0, len(rows), INSERT_BATCH):
            s.execute(insert(model), rows[i:i + INSERT_BATCH])
