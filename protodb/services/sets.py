"""Prototype sets: commit in crash-safe order, resolve names, read vectors, list classes, tag.

Write order (``commit``): a ``pending`` catalog row (invisible) -> the vectors (under the table's
vector lock) -> one transaction that assigns the next version and marks the set ``ready``. Stale
pending sets of dead writers are discarded first. With ``reuse_same_config`` the final transaction
first looks for a ready set of the same (class, extractor, config hash): if a concurrent writer got
there first, this writer's pending set is discarded and the existing set returned, so the same
configuration gives one set on every catalog.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from protodb.catalog import queries
from protodb.catalog.locks import lock_versions
from protodb.catalog.schema import (
    SET_PENDING,
    ClassRow,
    Damaged,
    ExtractorRow,
    LabelRow,
    PrototypeSetRow,
    SetImageRow,
    SupportImageRow,
    TagRow,
)
from protodb.entities import (
    PROTOTYPE_KINDS,
    BuiltSet,
    ClassVersions,
    ExtractorRecord,
    PrototypeSet,
    SupportImageRecord,
    TaggedSets,
    Untagged,
)
from protodb.errors import DamagedData, InvalidInput, NotFound
from protodb.lazy import lazy_import
from protodb.names import Ref, check_tag_name, normalize_class_name, quoted
from protodb.services.overview import OverviewService
from protodb.services.labels import ensure_classes
from protodb.storage.vectors import PrototypeRows, VectorCache, table_name
from protodb.stores import Stores

np = lazy_import("numpy")
log = logging.getLogger(__name__)
StageCallback = Callable[[str], None]


def _intact(row: PrototypeSetRow) -> None:
    """DamagedData (one line naming the set) when one of its JSON columns does not read back."""
    for column in ("counts", "params", "config"):
        if isinstance(getattr(row, column), Damaged):
            raise DamagedData(f"prototype set {row.cls.name}@{row.version} ({row.id}) is damaged: its {column} "
                              "are not readable; run: protodb verify")


def to_entity(s: Session, row: PrototypeSetRow) -> PrototypeSet:
    """An ORM set row (with its class, extractor, images and tags) as a :class:`PrototypeSet`."""
    _intact(row)
    images = s.scalars(select(SetImageRow.image_id).where(SetImageRow.set_id == row.id)
                       .order_by(SetImageRow.position)).all()
    tags = s.scalars(select(TagRow.name).where(TagRow.set_id == row.id)).all()
    return PrototypeSet(
        id=row.id, class_name=row.cls.name, kind=row.cls.kind, extractor=row.extractor.name,
        extractor_id=row.extractor_id, version=row.version, status=row.status,
        counts=dict(row.counts or {}), images=tuple(images), tags=tuple(sorted(tags)),
        config_hash=row.config_hash, run_id=row.run_id, params=dict(row.params or {}),
        vector_table=row.vector_table, vector_table_version=row.vector_table_version,
        bytes=int(row.nbytes or 0), protodb_version=row.protodb_version,
        created_at=row.ready_at.isoformat() if row.ready_at else None,
        config=dict(row.config) if row.config else None, vectors_sha256=row.vectors_sha256,
    )


class SetService:
    """Prototype sets of one database."""

    def __init__(self, stores: Stores):
        self.stores = stores
        self.sessions = stores.sessions
        self.cache = VectorCache(stores.cache_dir / "vectors")

    # ------------------------------------------------------------------ rows other writers share
    def ensure_class(self, s: Session, name: str, *, label: dict | None = None) -> ClassRow:
        """The class row for ``name`` (created when new; ``label`` records its thing/stuff label)."""
        name = normalize_class_name(name)
        cls = queries.get_class(s, name)
        if cls is None:
            cls = ClassRow(name=name, kind=(label or {}).get("kind", "thing"))
            s.add(cls)
            s.flush()
            if label:
                s.add(LabelRow(class_id=cls.id, **label))
        return cls

    @staticmethod
    def ensure_extractor(s: Session, record: ExtractorRecord) -> ExtractorRow:
        row = s.get(ExtractorRow, record.id)
        if row is None:
            row = ExtractorRow(id=record.id, name=record.name, kind=record.kind, config=record.config,
                               dim=record.dim, weights_hash=record.weights_hash)
            s.add(row)
            s.flush()
        return row

    def class_for_build(self, name: str, label: dict | None, relabel: dict | None = None) -> tuple[str, str]:
        """(id, kind) of the class a build writes to, in one retried transaction: created with ``label`` (the
        columns of its first label row) when new; ``relabel`` (a manual decision) given to an existing class
        of another kind changes its kind and adds to its history."""

        def rows(s: Session) -> tuple[str, str]:
            cls = self.ensure_class(s, name, label=label)
            if relabel is not None and cls.kind != relabel["kind"]:
                cls.kind = relabel["kind"]
                s.add(LabelRow(class_id=cls.id, **relabel))
            return cls.id, cls.kind

        return self.sessions.transact(rows, what="class row")

    def register_extractor(self, record: ExtractorRecord) -> None:
        """Record an extractor (once) before rows that name it are written."""
        self.sessions.transact(lambda s: self.ensure_extractor(s, record), what="extractor row")

    # ------------------------------------------------------------------ commit
    def commit(self, class_name: str, extractor: ExtractorRecord, rows, *, config_hash: str,
               config: dict | None = None, image_ids: Sequence[str] = (), run_id: str | None = None,
               params: dict | None = None, label: dict | None = None,
               on_stage: StageCallback | None = None) -> PrototypeSet:
        """Store one prototype set as a new version and make it visible (see the module docstring).

        rows: :class:`protodb.storage.vectors.PrototypeRows` (artifacts they point to already stored).
        """
        return self._commit(class_name, extractor, rows, config_hash=config_hash, config=config,
                            image_ids=image_ids, run_id=run_id, params=params, label=label,
                            on_stage=on_stage, reuse=False).set

    def commit_unless_present(self, class_name: str, extractor: ExtractorRecord, rows, **kw) -> BuiltSet:
        """As :meth:`commit`, but when a ready set of the same config exists by the time this one would
        become ready, that set is returned (``reused``) and this one discarded."""
        return self._commit(class_name, extractor, rows, reuse=True, **kw)

    def _commit(self, class_name, extractor: ExtractorRecord, rows, *, config_hash: str, config: dict | None = None,
                image_ids: Sequence[str] = (), run_id: str | None = None, params: dict | None = None,
                label: dict | None = None, on_stage: StageCallback | None = None, reuse: bool) -> BuiltSet:
        stage = on_stage or (lambda _s: None)
        if len(rows) == 0:
            raise InvalidInput(f"no prototypes to store for {class_name!r} (no masked patches)")
        if rows.vectors.shape[1] != int(extractor.dim):
            raise InvalidInput(f"prototype vectors are {rows.vectors.shape[1]}-d, extractor "
                               f"{extractor.name} gives {extractor.dim}-d")
        table = table_name(extractor.id)
        checksum = rows.checksum()

        def pending(s: Session) -> str:
            cls = self.ensure_class(s, class_name, label=label)
            ext = self.ensure_extractor(s, extractor)
            self._discard_stale(s, cls.id, ext.id)
            row = PrototypeSetRow(
                class_id=cls.id, extractor_id=ext.id, status=SET_PENDING, config_hash=config_hash,
                run_id=run_id, vector_table=table, config=config, vectors_sha256=checksum,
                params={**(params or {}), "owner": queries.owner_token()},
                counts={k: rows.kinds.count(k) for k in PROTOTYPE_KINDS}, nbytes=int(rows.vectors.nbytes),
            )
            s.add(row)
            s.flush()
            for pos, image_id in enumerate(dict.fromkeys(image_ids)):
                s.add(SetImageRow(set_id=row.id, image_id=image_id, position=pos))
            return row.id

        set_id = self.sessions.transact(pending, what=f"pending set of {class_name!r}")
        stage("pending")
        with self.stores.vector_lock(table):
            table_version = self.stores.vectors.add(table, set_id, rows)
        stage("vectors")

        def ready(s: Session) -> tuple[str, bool]:
            row = s.get(PrototypeSetRow, set_id)
            lock_versions(s, row.class_id, row.extractor_id)  # before looking for the same config
            if reuse:
                same = queries.find_ready_by_config(s, row.class_id, row.extractor_id, config_hash)
                if same is not None:
                    s.delete(row)
                    return same.id, True
            queries.mark_ready(s, row, table_version=table_version)
            return row.id, False

        final_id, reused = self.sessions.transact(ready, attempts=20, what=f"version of {class_name!r}")
        if reused:
            log.info("%s: a set with the same config became ready meanwhile; discarding this one", class_name)
            self.stores.vectors.delete_sets(table, [set_id])
        stage("ready")
        return BuiltSet(self.get(final_id), reused)

    def commit_many(self, extractor: ExtractorRecord, items: Sequence[tuple[str, object]], *, config_hash: str,
                    config: dict | None = None, params: dict | None = None) -> list[PrototypeSet]:
        """Store one new set for each (class name, PrototypeRows) of ``items`` in the crash-safe order of
        :meth:`commit`, in bulk: one transaction of pending rows (classes created, labelled by the lexicon),
        ONE append to the vector table, one transaction giving every set its next version and marking it
        ready. For many sets at once (synthetic vocabularies, imports of thousands of classes): 20,000 sets
        take seconds instead of 20,000 commits and table versions. Each set keeps its own checksum."""
        if not items:
            return []
        table = table_name(extractor.id)
        names = [normalize_class_name(n) for n, _ in items]
        if len(set(names)) != len(names):
            raise InvalidInput("commit_many takes each class once")
        for name, rows in items:
            if len(rows) == 0 or rows.vectors.shape[1] != int(extractor.dim):
                raise InvalidInput(f"prototypes of {name!r}: expected (N>=1, {extractor.dim}) vectors")

        def pending(s: Session) -> list[str]:
            ids = ensure_classes(s, names)
            self.ensure_extractor(s, extractor)
            out = []
            for name, (_, rows) in zip(names, items):
                row = PrototypeSetRow(
                    class_id=ids[name], extractor_id=extractor.id, status=SET_PENDING, config_hash=config_hash,
                    vector_table=table, config=config, vectors_sha256=rows.checksum(),
                    params={**(params or {}), "owner": queries.owner_token()},
                    counts={k: rows.kinds.count(k) for k in PROTOTYPE_KINDS}, nbytes=int(rows.vectors.nbytes))
                s.add(row)
                out.append(row)
            s.flush()
            return [r.id for r in out]

        set_ids = self.sessions.transact(pending, what=f"pending sets of {len(items)} classes")
        with self.stores.vector_lock(table):
            merged = PrototypeRows(
                vectors=np.concatenate([rows.vectors for _, rows in items]),
                kinds=[k for _, rows in items for k in rows.kinds],
                image_ids=[x for _, rows in items for x in rows.image_ids],
                regions=[x for _, rows in items for x in rows.regions],
                weights=[x for _, rows in items for x in rows.weights])
            owners = [sid for sid, (_, rows) in zip(set_ids, items) for _ in range(len(rows))]
            table_version = self.stores.vectors.add_many(table, owners, merged)

        def ready(s: Session) -> None:
            rows = self._rows_by_id(s, set_ids)
            for sid in set_ids:
                row = rows[sid]
                lock_versions(s, row.class_id, row.extractor_id)
                queries.mark_ready(s, row, table_version=table_version)

        self.sessions.transact(ready, attempts=20, what=f"versions of {len(items)} classes")
        with self.sessions.reader() as s:
            found = self._entities(s, {sid: [row] for sid, row in self._rows_by_id(s, set_ids).items()})
        return [found[sid][0] for sid in set_ids]

    @staticmethod
    def _rows_by_id(s: Session, set_ids: Sequence[str]) -> dict[str, PrototypeSetRow]:
        out = {}
        for i in range(0, len(set_ids), 500):
            out.update({r.id: r for r in s.scalars(select(PrototypeSetRow)
                                                    .where(PrototypeSetRow.id.in_(set_ids[i:i + 500])))})
        return out

    def _discard_stale(self, s: Session, class_id: str, extractor_id: str) -> None:
        for row in queries.stale_pending(s, class_id, extractor_id):
            log.info("discarding pending set %s of a writer that is gone", row.id)
            self.stores.vectors.delete_sets(row.vector_table, [row.id])
            s.delete(row)
        s.flush()

    # ------------------------------------------------------------------ reading
    def get(self, set_id: str) -> PrototypeSet:
        with self.sessions.reader() as s:
            row = s.get(PrototypeSetRow, set_id)
            if row is None:
                raise NotFound(f"no prototype set {set_id}")
            return to_entity(s, row)

    def find(self, class_name: str, extractor_id: str, config_hash: str) -> PrototypeSet | None:
        """The newest ready set of a class built with exactly this config, if any."""
        with self.sessions.reader() as s:
            cls = queries.get_class(s, normalize_class_name(class_name))
            if cls is None:
                return None
            row = queries.find_ready_by_config(s, cls.id, extractor_id, config_hash)
            return to_entity(s, row) if row else None

    def resolve(self, ref: str | Ref, extractor: str | None = None) -> list[PrototypeSet]:
        """Ready sets named by ``ref`` (``boat``, ``boat@3``, ``boat@tag``), one per extractor."""
        with self.sessions.reader() as s:
            if extractor is not None and queries.extractor_by_name(s, extractor) is None:
                cls = queries.get_class(s, (Ref.parse(ref) if isinstance(ref, str) else ref).name)
                if cls is not None:
                    raise NotFound(f"class {cls.name!r} has no prototypes for extractor {extractor}; "
                                   f"run: protodb add-class {quoted(cls.name)} --extractor {extractor}")
            return [to_entity(s, r) for r in queries.resolve(s, ref, extractor)]

    def resolve_many(self, refs: Sequence[str]) -> tuple[dict[str, list[PrototypeSet]], dict[str, str]]:
        """:meth:`resolve` of many refs at once (every extractor): ``({ref: sets, one per extractor name},
        {ref: the NotFound message resolve would give})``. Unpinned refs take a few bulk queries per 500
        names (20,000 classes resolve in seconds); pinned refs (``boat@3``, ``boat@tag``) one by one."""
        found: dict[str, list[PrototypeSet]] = {}
        problems: dict[str, str] = {}
        parsed = {ref: Ref.parse(ref) for ref in dict.fromkeys(refs)}
        with self.sessions.reader() as s:
            names = sorted({p.name for p in parsed.values()})
            classes: dict[str, ClassRow] = {}
            for i in range(0, len(names), 500):
                classes.update({c.name: c for c in s.scalars(select(ClassRow).where(ClassRow.name.in_(names[i:i + 500])))})
            newest: dict[str, dict[str, PrototypeSetRow]] = {}  # class id -> extractor name -> newest ready set
            unpinned = {p.name for p in parsed.values() if not p.pinned}
            ids = [c.id for n, c in classes.items() if n in unpinned]
            for i in range(0, len(ids), 500):
                q = (select(PrototypeSetRow, ExtractorRow.name)
                     .join(ExtractorRow, ExtractorRow.id == PrototypeSetRow.extractor_id)
                     .where(PrototypeSetRow.class_id.in_(ids[i:i + 500]), PrototypeSetRow.status == "ready")
                     .order_by(PrototypeSetRow.ready_at.desc(), PrototypeSetRow.version.desc()))
                for row, ext_name in s.execute(q).all():
                    newest.setdefault(row.class_id, {}).setdefault(ext_name, row)
            rows: dict[str, list[PrototypeSetRow]] = {}
            for ref, p in parsed.items():
                cls = classes.get(p.name)
                if cls is None:
                    problems[ref] = f"no class {p.name!r} in this database; run: protodb add-class {quoted(p.name)}"
                elif p.pinned:
                    try:
                        rows[ref] = queries.resolve(s, p)
                    except NotFound as err:
                        problems[ref] = str(err)
                elif cls.id in newest:
                    rows[ref] = [newest[cls.id][k] for k in sorted(newest[cls.id])]
                else:
                    problems[ref] = f"class {p.name!r} has no prototypes; run: protodb add-class {quoted(p.name)}"
            found = self._entities(s, rows)
        return found, problems

    def _entities(self, s: Session, rows: dict[str, list[PrototypeSetRow]]) -> dict[str, list[PrototypeSet]]:
        """:func:`to_entity` of many set rows, their images and tags read in bulk queries."""
        set_ids = sorted({r.id for rs in rows.values() for r in rs})
        images: dict[str, list[str]] = {}
        tags: dict[str, list[str]] = {}
        for i in range(0, len(set_ids), 500):
            chunk = set_ids[i:i + 500]
            for sid, image_id in s.execute(select(SetImageRow.set_id, SetImageRow.image_id)
                                           .where(SetImageRow.set_id.in_(chunk)).order_by(SetImageRow.position)):
                images.setdefault(sid, []).append(image_id)
            for sid, tag in s.execute(select(TagRow.set_id, TagRow.name).where(TagRow.set_id.in_(chunk))):
                tags.setdefault(sid, []).append(tag)
        out = {}
        for ref, rs in rows.items():
            out[ref] = []
            for row in rs:
                _intact(row)
                out[ref].append(PrototypeSet(
                    id=row.id, class_name=row.cls.name, kind=row.cls.kind, extractor=row.extractor.name,
                    extractor_id=row.extractor_id, version=row.version, status=row.status,
                    counts=dict(row.counts or {}), images=tuple(images.get(row.id, ())),
                    tags=tuple(sorted(tags.get(row.id, ()))), config_hash=row.config_hash, run_id=row.run_id,
                    params=dict(row.params or {}), vector_table=row.vector_table,
                    vector_table_version=row.vector_table_version, bytes=int(row.nbytes or 0),
                    protodb_version=row.protodb_version, created_at=row.ready_at.isoformat() if row.ready_at else None,
                    config=dict(row.config) if row.config else None, vectors_sha256=row.vectors_sha256))
        return out

    def prototypes(self, pset: PrototypeSet, kinds: Sequence[str] | None = None, *, check: bool = True):
        """The vectors of a ready set (optionally only some kinds) as PrototypeRows.

        Reads go through the vector cache (``HOME/cache/vectors``) when the set has a checksum; every
        read is compared with the checksum recorded at commit (``check``): damage is DamagedData naming
        the set and ``protodb verify``.
        """
        rows = self.cache.get(pset.id) if pset.vectors_sha256 and check else None
        if rows is not None and (len(rows) != pset.size or rows.checksum() != pset.vectors_sha256):
            log.info("cached vectors of %s do not match its checksum; reading the table again", pset.ref)
            self.cache.drop(pset.id)
            rows = None
        if rows is None:
            rows = self._read_table(pset, check)
            if pset.vectors_sha256 and check:
                self.cache.put(pset.id, rows)
        if kinds:
            wanted = set(kinds)
            rows = rows.select(np.array([k in wanted for k in rows.kinds], bool))
        return rows

    def prefetch(self, psets: Sequence[PrototypeSet], chunk: int = 2000) -> int:
        """Put the vectors of the checksummed ``psets`` that the vector cache lacks into it, reading them
        from their tables ``chunk`` sets per scan instead of one scan per set (a vocabulary's first load);
        rows that fail their checksum are left for :meth:`prototypes` to report. Returns the sets cached."""
        todo = [p for p in psets if p.vectors_sha256 and not (self.cache.folder / f"{p.id}.arrow").is_file()]
        done = 0
        for table in sorted({p.vector_table for p in todo}):
            group = [p for p in todo if p.vector_table == table]
            for i in range(0, len(group), chunk):
                part = group[i:i + chunk]
                try:
                    rows = self.stores.vectors.read(table, [p.id for p in part])
                except Exception:  # noqa: BLE001 - prototypes() reads them one by one and names the damage
                    continue
                where: dict[str, list[int]] = {}
                for j, sid in enumerate(rows.set_ids):
                    where.setdefault(sid, []).append(j)
                for p in part:
                    idx = np.array(where.get(p.id, []), np.int64)
                    mask = np.zeros(len(rows), bool)
                    mask[idx] = True
                    mine = rows.select(mask)
                    if len(mine) == p.size and mine.checksum() == p.vectors_sha256:
                        self.cache.put(p.id, mine)
                        done += 1
        return done

    def _read_table(self, pset: PrototypeSet, check: bool):
        try:
            rows = self.stores.vectors.read(pset.vector_table, [pset.id])
        except Exception as err:  # noqa: BLE001 - LanceDB raises RuntimeError/OSError/ArrowInvalid for damage
            raise DamagedData(f"prototype set {pset.ref} ({pset.extractor}) cannot be read from its vector "
                              f"table ({type(err).__name__}); run: protodb verify") from None
        if check and (len(rows) != pset.size or (pset.vectors_sha256 and rows.checksum() != pset.vectors_sha256)):
            raise DamagedData(f"prototype set {pset.ref} ({pset.extractor}) is damaged: its vectors do not "
                              "match the checksum recorded at commit; run: protodb verify")
        return rows

    def support_images(self, ids: Sequence[str]) -> dict[str, SupportImageRecord]:
        """The support images ``ids`` (those that exist), by id."""
        with self.sessions.reader() as s:
            rows = s.scalars(select(SupportImageRow).where(SupportImageRow.id.in_(list(set(ids))))).all()
            return {r.id: SupportImageRecord(r.id, r.artifact_sha256, r.width, r.height, r.source, r.seed, r.origin,
                                             r.attention_sha256) for r in rows}

    @staticmethod
    def extractor_records(s: Session) -> list[ExtractorRecord]:
        """Every registered extractor."""
        return [ExtractorRecord(r.id, r.name, r.kind, dict(r.config), int(r.dim), r.weights_hash)
                for r in s.scalars(select(ExtractorRow))]

    def extractor_row(self, extractor_id: str) -> ExtractorRecord:
        """The catalog record of an extractor (DamagedData when a set names one that is missing)."""
        with self.sessions.reader() as s:
            row = s.get(ExtractorRow, extractor_id)
            if row is None:
                raise DamagedData(f"extractor {extractor_id[:16]} is missing from the catalog; run: protodb verify")
            return ExtractorRecord(row.id, row.name, row.kind, dict(row.config), int(row.dim), row.weights_hash)

    def ls(self, names: Sequence[str] | None = None) -> list[ClassVersions]:
        """Every class with ready versions (grouped across extractors); classes without any are hidden
        (:meth:`protodb.services.overview.OverviewService.ls`)."""
        return OverviewService(self.stores).ls(names)

    # ------------------------------------------------------------------ tags
    def tag(self, tag: str, refs: Sequence[str], *, extractor: str | None = None,
            note: str | None = None) -> TaggedSets:
        """Pin the sets ``refs`` resolve to under ``tag`` (``boat@tag`` then names them)."""
        check_tag_name(tag)
        targets = [p for ref in refs for p in self.resolve(ref, extractor)]
        with self.sessions.session() as s:
            queries.tag_sets(s, tag, [s.get(PrototypeSetRow, t.id) for t in targets], note)
        return TaggedSets(tag, tuple(self.get(t.id) for t in targets))

    def untag(self, tag: str) -> Untagged:
        check_tag_name(tag)
        with self.sessions.session() as s:
            rows = s.scalars(select(TagRow).where(TagRow.name == tag)).all()
            for r in rows:
                s.delete(r)
        return Untagged(tag, len(rows))

    def tagged(self, tag: str) -> TaggedSets:
        check_tag_name(tag)
        with self.sessions.reader() as s:
            found = [to_entity(s, r) for r in queries.sets_with_tag(s, tag)]
        if not found:
            raise NotFound(f"no sets are tagged {tag!r}; tag some with: protodb alias {tag} CLASS...")
        return TaggedSets(tag, tuple(found))
