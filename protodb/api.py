"""The protodb facade: everything the CLI does goes through ``ProtoDB``.

A database is a catalog (SQL), a vector store (LanceDB) and an artifact store (files), found from
one home folder by default::

    HOME/catalog.sqlite   the SQL catalog (or PROTODB_CATALOG_URL, e.g. postgresql://…)
    HOME/vectors/         LanceDB tables, one per extractor
    HOME/artifacts/       content-addressed images, masks, attention maps

A shared database records its vector and artifact URLs in the catalog's settings (``protodb init
--vectors s3://… --artifacts s3://…``) so that every user of the catalog finds the same stores.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from protodb import __version__
from protodb.catalog import engine as engines
from protodb.catalog import migrate
from protodb.catalog import sets as setq
from protodb.catalog.schema import (
    SET_PENDING,
    SET_READY,
    ClassRow,
    ExtractorRow,
    LabelRow,
    MaskRow,
    PrototypeSetRow,
    SetImageRow,
    SettingRow,
    SupportImageRow,
    TagRow,
)
from protodb.errors import InvalidInput, NotFound
from protodb.storage.artifacts import ArtifactStore
from protodb.storage.vectors import KINDS, PrototypeRows, VectorStore, table_name

StageCallback = Callable[[str], None]


def default_home() -> Path:
    env = os.environ.get("PROTODB_HOME")
    return Path(env).expanduser() if env else Path.home() / ".protodb"


class ProtoDB:
    """One prototype database. Cheap to open; stores connect lazily.

    path: home folder (default ``$PROTODB_HOME`` or ``~/.protodb``). catalog_url: SQLAlchemy URL
    (default ``$PROTODB_CATALOG_URL`` or ``sqlite:///HOME/catalog.sqlite``). create: create an
    empty catalog at the current schema. check_schema: refuse a catalog at another revision
    (only ``protodb db …`` commands turn this off).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        catalog_url: str | None = None,
        create: bool = True,
        check_schema: bool = True,
    ):
        self.home = (Path(path).expanduser() if path else default_home()).resolve()
        url = catalog_url or engines.env_catalog_url()
        if url is None:
            if not create and not (self.home / "catalog.sqlite").exists():
                raise NotFound(f"no protodb database at {self.home}; run: protodb init --db {self.home}")
            self.home.mkdir(parents=True, exist_ok=True)
            url = engines.sqlite_url(self.home / "catalog.sqlite")
        self.catalog_url = url
        self.engine = engines.make_engine(url)
        self.schema_revision: str | None = None
        if check_schema:
            self.schema_revision = engines.ensure_schema(self.engine, create=create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._vectors: VectorStore | None = None
        self._artifacts: ArtifactStore | None = None

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A catalog transaction: committed on success, rolled back on any error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def transact(self, fn: Callable[[Session], Any], attempts: int = 5) -> Any:
        """Run ``fn(session)`` in one transaction, retried when a concurrent writer inserted the
        same unique row first (the retry then finds that row)."""
        for attempt in range(attempts):
            try:
                with self.session() as s:
                    return fn(s)
            except IntegrityError:
                if attempt == attempts - 1:
                    raise

    def setting(self, key: str, default: str | None = None) -> str | None:
        with self._sessions() as s:
            row = s.get(SettingRow, key)
            return row.value if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self.session() as s:
            s.merge(SettingRow(key=key, value=value))

    @property
    def vectors_uri(self) -> str:
        return self.setting("vectors_uri") or str(self.home / "vectors")

    @property
    def artifacts_uri(self) -> str:
        return self.setting("artifacts_uri") or str(self.home / "artifacts")

    @property
    def vectors(self) -> VectorStore:
        if self._vectors is None:
            self._vectors = VectorStore(self.vectors_uri)
        return self._vectors

    @property
    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self.artifacts_uri)
        return self._artifacts

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "ProtoDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ schema
    def db_current(self) -> dict[str, Any]:
        rev = engines.current_revision(self.engine)
        head = migrate.head_revision()
        return {"catalog_url": engines.safe_url(self.engine), "revision": rev, "head": head,
                "up_to_date": rev == head}

    def db_upgrade(self, target: str = "head") -> dict[str, Any]:
        with engines.migration_lock(self.engine):
            migrate.upgrade(self.engine, target)
        self.schema_revision = engines.current_revision(self.engine)
        return self.db_current()

    def db_downgrade(self, target: str) -> dict[str, Any]:
        with engines.migration_lock(self.engine):
            migrate.downgrade(self.engine, target)
        self.schema_revision = engines.current_revision(self.engine)
        return self.db_current()

    def db_check(self) -> dict[str, Any]:
        diff = migrate.check(self.engine)
        return {**self.db_current(), "in_sync": diff is None, "differences": diff}

    # ------------------------------------------------------------------ overview
    def info(self) -> dict[str, Any]:
        with self._sessions() as s:
            n_classes = s.scalar(select(func.count()).select_from(ClassRow))
            n_sets = s.scalar(
                select(func.count()).select_from(PrototypeSetRow)
                .where(PrototypeSetRow.status == SET_READY)
            )
            n_pending = s.scalar(
                select(func.count()).select_from(PrototypeSetRow)
                .where(PrototypeSetRow.status == SET_PENDING)
            )
            n_images = s.scalar(select(func.count()).select_from(SupportImageRow))
            n_extractors = s.scalar(select(func.count()).select_from(ExtractorRow))
        return {
            "home": str(self.home),
            "catalog_url": engines.safe_url(self.engine),
            "schema_revision": engines.current_revision(self.engine),
            "vectors_uri": self.vectors_uri,
            "artifacts_uri": self.artifacts_uri,
            "protodb_version": __version__,
            "classes": int(n_classes or 0),
            "prototype_sets": int(n_sets or 0),
            "pending_sets": int(n_pending or 0),
            "support_images": int(n_images or 0),
            "extractors": int(n_extractors or 0),
        }

    def ls(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every class with its ready versions (grouped across extractors)."""
        with self._sessions() as s:
            q = select(ClassRow).order_by(ClassRow.name)
            if names:
                q = q.where(ClassRow.name.in_([setq.normalize_class_name(n) for n in names]))
            classes = s.scalars(q).all()
            rows = s.execute(
                select(PrototypeSetRow, ExtractorRow.name)
                .join(ExtractorRow, ExtractorRow.id == PrototypeSetRow.extractor_id)
                .where(PrototypeSetRow.status == SET_READY)
                .order_by(PrototypeSetRow.version)
            ).all()
            n_images = dict(
                s.execute(
                    select(SetImageRow.set_id, func.count()).group_by(SetImageRow.set_id)
                ).all()
            )
            tags = defaultdict(list)
            for name, set_id in s.execute(select(TagRow.name, TagRow.set_id)).all():
                tags[set_id].append(name)
        by_class: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for row, ext_name in rows:
            entry = by_class[row.class_id].setdefault(
                row.version,
                {"version": row.version, "status": row.status, "extractors": [], "images": 0,
                 "counts": {k: 0 for k in KINDS}, "sets": [], "tags": [], "bytes": 0,
                 "created_at": row.ready_at.isoformat() if row.ready_at else None},
            )
            entry["extractors"].append(ext_name)
            entry["sets"].append(row.id)
            entry["images"] = max(entry["images"], int(n_images.get(row.id, 0)))
            entry["bytes"] += int(row.nbytes or 0)
            entry["tags"] = sorted(set(entry["tags"]) | set(tags.get(row.id, [])))
            if len(entry["extractors"]) == 1:
                entry["counts"] = {k: int((row.counts or {}).get(k, 0)) for k in KINDS}
        return [
            {"name": c.name, "kind": c.kind, "id": c.id,
             "versions": [by_class[c.id][v] for v in sorted(by_class[c.id])]}
            for c in classes
        ]

    # ------------------------------------------------------------------ classes & extractors
    def ensure_class(self, session: Session, name: str, *, label: dict | None = None) -> ClassRow:
        """The class row for ``name`` (created when new; ``label`` records its thing/stuff label)."""
        name = setq.normalize_class_name(name)
        cls = setq.get_class(session, name)
        if cls is None:
            cls = ClassRow(name=name, kind=(label or {}).get("kind", "thing"))
            session.add(cls)
            session.flush()
            if label:
                session.add(LabelRow(class_id=cls.id, **label))
        return cls

    def ensure_extractor(
        self, session: Session, *, id: str, name: str, kind: str, config: dict, dim: int,
        weights_hash: str | None,
    ) -> ExtractorRow:
        row = session.get(ExtractorRow, id)
        if row is None:
            row = ExtractorRow(
                id=id, name=name, kind=kind, config=config, dim=dim, weights_hash=weights_hash
            )
            session.add(row)
            session.flush()
        return row

    def extractor_by_name(self, session: Session, name: str) -> ExtractorRow | None:
        """The most recently registered extractor called ``name``."""
        return session.scalar(
            select(ExtractorRow).where(ExtractorRow.name == name)
            .order_by(ExtractorRow.created_at.desc()).limit(1)
        )

    # ------------------------------------------------------------------ prototype sets
    def write_set(
        self,
        class_name: str,
        extractor: dict[str, Any],
        rows: PrototypeRows,
        *,
        config_hash: str,
        image_ids: Sequence[str] = (),
        run_id: str | None = None,
        params: dict | None = None,
        label: dict | None = None,
        on_stage: StageCallback | None = None,
    ) -> dict[str, Any]:
        """Store one prototype set and make it visible, in crash-safe order.

        extractor: ``{"id", "name", "kind", "config", "dim", "weights_hash"}``.
        rows: its prototypes (artifacts they point to must already be stored).
        Order: pending catalog row → vectors → one transaction that assigns the version and
        marks the set ready. Stale pending sets of dead writers are discarded first.
        Returns ``set_summary`` of the ready set.
        """
        stage = on_stage or (lambda _s: None)
        if len(rows) == 0:
            raise InvalidInput(f"no prototypes to store for {class_name!r} (no masked patches)")
        if rows.vectors.shape[1] != int(extractor["dim"]):
            raise InvalidInput(
                f"prototype vectors are {rows.vectors.shape[1]}-d, extractor "
                f"{extractor['name']} gives {extractor['dim']}-d"
            )
        table = table_name(extractor["id"])
        for attempt in range(5):  # another process may create the same class/extractor meanwhile
            try:
                with self.session() as s:
                    cls = self.ensure_class(s, class_name, label=label)
                    ext = self.ensure_extractor(s, **extractor)
                    self._discard_stale(s, cls.id, ext.id)
                    pending = PrototypeSetRow(
                        class_id=cls.id, extractor_id=ext.id, status=SET_PENDING, config_hash=config_hash,
                        run_id=run_id, vector_table=table,
                        params={**(params or {}), "owner": setq.owner_token()},
                        counts={k: rows.kinds.count(k) for k in KINDS},
                        nbytes=int(rows.vectors.nbytes),
                    )
                    s.add(pending)
                    s.flush()
                    for pos, image_id in enumerate(dict.fromkeys(image_ids)):
                        s.add(SetImageRow(set_id=pending.id, image_id=image_id, position=pos))
                    set_id = pending.id
                break
            except IntegrityError:
                if attempt == 4:
                    raise
        stage("pending")
        with self._vector_lock(table):  # one committer per vector table (shared object storage)
            table_version = self.vectors.add(table, set_id, rows)
        stage("vectors")
        for attempt in range(20):
            try:
                with self.session() as s:
                    row = s.get(PrototypeSetRow, set_id)
                    setq.mark_ready(s, row, table_version=table_version)
                break
            except IntegrityError:
                if attempt == 19:
                    raise
        stage("ready")
        return self.set_summary(set_id)

    def _discard_stale(self, s: Session, class_id: str, extractor_id: str) -> None:
        for row in setq.stale_pending(s, class_id, extractor_id):
            self.vectors.delete_sets(row.vector_table, [row.id])
            s.delete(row)
        s.flush()

    def find_set(self, class_name: str, extractor_id: str, config_hash: str) -> dict | None:
        """The newest ready set of a class built with exactly this config, if any."""
        with self._sessions() as s:
            cls = setq.get_class(s, setq.normalize_class_name(class_name))
            if cls is None:
                return None
            row = setq.find_ready_by_config(s, cls.id, extractor_id, config_hash)
            return self.set_summary(row.id) if row else None

    def set_summary(self, set_id: str) -> dict[str, Any]:
        with self._sessions() as s:
            row = s.get(PrototypeSetRow, set_id)
            if row is None:
                raise NotFound(f"no prototype set {set_id}")
            images = s.scalars(
                select(SetImageRow.image_id).where(SetImageRow.set_id == set_id)
                .order_by(SetImageRow.position)
            ).all()
            tags = s.scalars(select(TagRow.name).where(TagRow.set_id == set_id)).all()
            return {
                "id": row.id, "class": row.cls.name, "kind": row.cls.kind,
                "extractor": row.extractor.name, "extractor_id": row.extractor_id,
                "version": row.version, "status": row.status, "counts": dict(row.counts or {}),
                "images": list(images), "tags": sorted(tags), "config_hash": row.config_hash,
                "run_id": row.run_id, "params": dict(row.params or {}),
                "vector_table": row.vector_table, "vector_table_version": row.vector_table_version,
                "bytes": int(row.nbytes or 0), "protodb_version": row.protodb_version,
                "created_at": row.ready_at.isoformat() if row.ready_at else None,
            }

    def resolve(self, ref: str, extractor: str | None = None) -> list[dict[str, Any]]:
        """Ready sets named by ``ref`` (``boat``, ``boat@3``, ``boat@tag``), one per extractor."""
        with self._sessions() as s:
            if extractor is not None and self.extractor_by_name(s, extractor) is None:
                cls = setq.get_class(s, setq.Ref.parse(ref).name)
                if cls is not None:
                    raise NotFound(f"class {cls.name!r} has no prototypes for extractor {extractor}; "
                                   f"run: protodb add-class {setq._q(cls.name)} --extractor {extractor}")
            ids = [r.id for r in setq.resolve(s, ref, extractor)]
        return [self.set_summary(i) for i in ids]

    def prototypes(self, set_summary: dict[str, Any], kinds: Sequence[str] | None = None) -> PrototypeRows:
        """The vectors of a ready set (optionally only some kinds)."""
        return self.vectors.read(set_summary["vector_table"], [set_summary["id"]], kinds)

    def tag(self, tag: str, refs: Sequence[str], *, extractor: str | None = None,
            note: str | None = None) -> list[dict[str, Any]]:
        """Pin the sets ``refs`` resolve to under ``tag`` (``boat@tag`` then names them)."""
        targets = [s for ref in refs for s in self.resolve(ref, extractor)]
        with self.session() as s:
            rows = [s.get(PrototypeSetRow, t["id"]) for t in targets]
            setq.tag_sets(s, tag, rows, note)
        return [self.set_summary(t["id"]) for t in targets]

    def untag(self, tag: str) -> int:
        setq.check_tag_name(tag)
        with self.session() as s:
            rows = s.scalars(select(TagRow).where(TagRow.name == tag)).all()
            for r in rows:
                s.delete(r)
        return len(rows)

    def tagged(self, tag: str) -> list[dict[str, Any]]:
        setq.check_tag_name(tag)
        with self._sessions() as s:
            ids = [r.id for r in setq.sets_with_tag(s, tag)]
        if not ids:
            raise NotFound(f"no sets are tagged {tag!r}; tag some with: protodb alias {tag} CLASS...")
        return [self.set_summary(i) for i in ids]

    # ------------------------------------------------------------------ integrity
    def referenced_artifacts(self) -> set[str]:
        with self._sessions() as s:
            hashes = set(s.scalars(select(SupportImageRow.artifact_sha256)).all())
            hashes |= {h for h in s.scalars(select(SupportImageRow.attention_sha256)).all() if h}
            hashes |= set(s.scalars(select(MaskRow.artifact_sha256)).all())
        return hashes

    def verify(self) -> dict[str, Any]:
        """Re-hash every referenced artifact and count every ready set's vectors."""
        report = self.artifacts.verify(self.referenced_artifacts())
        bad_sets = []
        with self._sessions() as s:
            ready = s.scalars(
                select(PrototypeSetRow).where(PrototypeSetRow.status == SET_READY)
            ).all()
            summaries = [(r.id, r.vector_table, sum((r.counts or {}).values())) for r in ready]
        for set_id, table, expected in summaries:
            got = len(self.vectors.read(table, [set_id]))
            if got != expected:
                bad_sets.append({"set_id": set_id, "expected": expected, "found": got})
        return {
            "artifacts_checked": report.checked,
            "missing": report.missing,
            "corrupt": report.corrupt,
            "sets_checked": len(summaries),
            "bad_sets": bad_sets,
            "ok": report.ok and not bad_sets,
        }

    # ------------------------------------------------------------------ building
    def registry(self, preset: str | None = None):
        from protodb.models.registry import ModelRegistry

        return ModelRegistry(self, preset)

    def add_class(self, request, *, preset: str | None = None, progress=None,
                  device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
        """Build (or find) the prototype sets of one class; see ``protodb.pipeline.build``.

        request: ``AddClassRequest``. Returns ``AddClassResult.to_dict()``.
        """
        from protodb.pipeline.build import ClassBuilder

        builder = ClassBuilder(self, self.registry(preset), device=device or request.device,
                               dtype=dtype or request.dtype, progress=progress)
        return builder.add_class(request).to_dict()

    def set_label(self, name: str, kind: str) -> dict[str, Any]:
        """Change a class's thing/stuff label by hand; the history keeps every earlier label."""
        if kind not in ("thing", "stuff"):
            raise InvalidInput(f"kind must be thing or stuff, got {kind!r}")
        with self.session() as s:
            cls = setq.get_class(s, setq.normalize_class_name(name))
            if cls is None:
                raise NotFound(f"no class {name!r}; run: protodb add-class {name}")
            cls.kind = kind
            s.add(LabelRow(class_id=cls.id, kind=kind, source="manual"))
        return self.label_history(name)

    def label_history(self, name: str) -> dict[str, Any]:
        with self._sessions() as s:
            cls = setq.get_class(s, setq.normalize_class_name(name))
            if cls is None:
                raise NotFound(f"no class {name!r}; run: protodb add-class {name}")
            history = s.scalars(
                select(LabelRow).where(LabelRow.class_id == cls.id).order_by(LabelRow.created_at)
            ).all()
            return {"name": cls.name, "kind": cls.kind, "history": [
                {"kind": h.kind, "source": h.source, "model": h.model, "prompt": h.prompt,
                 "raw_answer": h.raw_answer, "at": h.created_at.isoformat()} for h in history]}

    # ------------------------------------------------------------------ vocabularies
    def _class_for_vocab(self, s: Session, ref: str) -> tuple[ClassRow, str | None]:
        parsed = setq.Ref.parse(ref)
        cls = setq.get_class(s, parsed.name)
        if cls is None:
            from protodb.pipeline.labels import classify_with_lexicon

            lab = classify_with_lexicon(parsed.name)
            cls = self.ensure_class(s, parsed.name, label={"kind": lab.kind, "source": lab.source})
        pin = str(parsed) if (parsed.version is not None or parsed.tag) else None
        return cls, pin

    def vocab_create(self, name: str, classes: Sequence[str], *, description: str | None = None,
                     replace: bool = False, background: bool = True) -> dict[str, Any]:
        """A named vocabulary of classes (refs may pin versions: ``boat@3``). ``background``: whether
        segmenting with it scores a background class (built-in datasets without one: False)."""
        from protodb.catalog.schema import VocabularyMemberRow, VocabularyRow

        vname = setq.check_tag_name(name)
        if not classes:
            raise InvalidInput("a vocabulary needs at least one class")
        with self.session() as s:
            row = s.scalar(select(VocabularyRow).where(VocabularyRow.name == vname))
            if row is not None and not replace:
                raise InvalidInput(f"vocabulary {vname!r} exists; use: protodb vocab add {vname} CLASS")
            if row is None:
                row = VocabularyRow(name=vname, description=description, background=background)
                s.add(row)
                s.flush()
            else:
                row.members.clear()
                row.version += 1
                row.background = background
                s.flush()
            seen = set()
            for pos, ref in enumerate(classes):
                cls, pin = self._class_for_vocab(s, ref)
                if cls.id in seen:
                    continue
                seen.add(cls.id)
                row.members.append(VocabularyMemberRow(class_id=cls.id, position=pos, ref=pin))
        return self.vocab_show(vname)

    def vocab_add(self, name: str, classes: Sequence[str], *, create: bool = False) -> dict[str, Any]:
        from protodb.catalog.schema import VocabularyMemberRow, VocabularyRow

        with self.session() as s:
            row = s.scalar(select(VocabularyRow).where(VocabularyRow.name == name))
            if row is None:
                if not create:
                    raise NotFound(f"no vocabulary {name!r}; create it: protodb vocab create {name} CLASS...")
                from protodb.vocabularies import builtin_vocabularies

                base = builtin_vocabularies().get(name)
                if base is None:
                    return self.vocab_create(name, classes)
                # a built-in vocabulary is copied into the catalog whole, then extended
                have = list(base["classes"])
                extra = [c for c in classes if setq.Ref.parse(c).name not in have]
                return self.vocab_create(name, have + extra, description=base.get("description"),
                                         background=bool(base.get("background", True)))
            have = {m.class_id: m for m in row.members}
            pos = max((m.position for m in row.members), default=-1) + 1
            changed = False
            for ref in classes:
                cls, pin = self._class_for_vocab(s, ref)
                if cls.id in have:
                    if have[cls.id].ref != pin:
                        have[cls.id].ref, changed = pin, True
                    continue
                row.members.append(VocabularyMemberRow(class_id=cls.id, position=pos, ref=pin))
                have[cls.id] = row.members[-1]
                pos, changed = pos + 1, True
            if changed:
                row.version += 1
        return self.vocab_show(name)

    def vocab_remove(self, name: str, classes: Sequence[str]) -> dict[str, Any]:
        from protodb.catalog.schema import VocabularyRow

        names = {setq.normalize_class_name(c) for c in classes}
        with self.session() as s:
            row = s.scalar(select(VocabularyRow).where(VocabularyRow.name == name))
            if row is None:
                raise NotFound(f"no vocabulary {name!r}; see: protodb vocab list")
            keep = [m for m in row.members if m.cls.name not in names]
            if len(keep) != len(row.members):
                row.members[:] = keep
                row.version += 1
        return self.vocab_show(name)

    def vocab_show(self, name: str) -> dict[str, Any]:
        """A vocabulary's classes: the catalog's, else the built-in data file's."""
        from protodb.catalog.schema import VocabularyRow
        from protodb.vocabularies import builtin_vocabularies

        with self._sessions() as s:
            row = s.scalar(select(VocabularyRow).where(VocabularyRow.name == name))
            if row is not None:
                return {"name": row.name, "description": row.description, "version": row.version,
                        "builtin": False, "background": row.background,
                        "classes": [m.ref or m.cls.name for m in row.members],
                        "kinds": [m.cls.kind for m in row.members]}
        builtins = builtin_vocabularies()
        if name in builtins:
            b = builtins[name]
            return {"name": name, "description": b.get("description"), "version": 0, "builtin": True,
                    "background": b.get("background"), "classes": list(b["classes"]), "kinds": None}
        raise NotFound(f"no vocabulary {name!r}; built-in: {', '.join(sorted(builtins))}; "
                       f"or create one: protodb vocab create {name} CLASS...")

    def vocab_list(self) -> list[dict[str, Any]]:
        from protodb.catalog.schema import VocabularyRow
        from protodb.vocabularies import builtin_vocabularies

        out = []
        with self._sessions() as s:
            for row in s.scalars(select(VocabularyRow).order_by(VocabularyRow.name)):
                out.append({"name": row.name, "classes": len(row.members), "version": row.version,
                            "builtin": False, "description": row.description})
        have = {o["name"] for o in out}
        for name, b in sorted(builtin_vocabularies().items()):
            if name not in have:
                out.append({"name": name, "classes": len(b["classes"]), "version": 0, "builtin": True,
                            "description": b.get("description")})
        return out

    # ------------------------------------------------------------------ inspection
    def inspect(self, ref: str, *, extractor: str | None = None, parts: bool = False,
                background: bool = False, instances: bool = False, images: bool = False,
                out: str | os.PathLike | None = None, top: int = 6) -> dict[str, Any]:
        """Provenance of a class's set (newest, ``boat@3`` or ``boat@tag``) and, on request,
        contact sheets tracing prototypes back to support-image patches (PNG + JSON in ``out``)."""
        import json as _json

        from protodb import inspection

        name = setq.Ref.parse(ref).name
        chosen = self.resolve(ref, extractor)[0]
        data = {"class": name, "versions": (self.ls([name]) or [{}])[0].get("versions", []),
                "provenance": inspection.provenance(self, chosen), "files": {}}
        wanted = [("parts", parts, ["part"]), ("background", background, ["bg_class", "bg_instance", "bg_part"]),
                  ("instances", instances, ["instance"])]
        if any(flag for _, flag, _ in wanted) or images:
            folder = Path(out or Path.cwd() / "protodb-inspect")
            stem = f"{name.replace(' ', '_')}@{chosen['version']}-{chosen['extractor']}"
            registry = self.registry()
            prepared = None
            for label, flag, kinds in wanted:
                if not flag:
                    continue
                if prepared is None:
                    prov = data["provenance"]
                    prepared = (prov, inspection.support_features(self, prov, registry))
                traced = inspection.trace(self, chosen, kinds, registry, top=top, prepared=prepared)
                png = inspection.render_sheet(self, traced, folder / f"{stem}-{label}.png", top=top)
                js = folder / f"{stem}-{label}.json"
                js.write_text(_json.dumps({p["id"]: {"kind": p["kind"], "index": p["index"],
                                                     "nearest": p["nearest"]}
                                           for p in traced["prototypes"]}, indent=1))
                data["files"][label] = {"png": str(png), "json": str(js)}
            if images:
                png = inspection.render_support(self, data["provenance"], folder / f"{stem}-images.png")
                data["files"]["images"] = {"png": str(png)}
        return data

    # ---- sharing (bundles, remotes, live database; see protodb/sharing/)
    def _vector_lock(self, table: str):
        """Context manager serialising commits to vector table ``table`` across processes
        (PostgreSQL advisory lock; file lock for SQLite). See ``protodb.sharing.live``."""
        from protodb.sharing.live import vector_lock

        return vector_lock(self.engine, table)

    @staticmethod
    def _selection(vocab: str | None, classes: Sequence[str] | str | None, all_sets: bool):
        from protodb.sharing.bundle import Selection

        if isinstance(classes, str):
            classes = Selection.parse_classes(classes)
        return Selection(vocab=vocab, classes=tuple(classes or ()), all=all_sets)

    def export_bundle(self, out: str | os.PathLike, *, vocab: str | None = None,
                      classes: Sequence[str] | str | None = None, all_sets: bool = False,
                      lean: bool = False, compress: bool | None = None,
                      progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
        """Write the chosen ready sets and everything they depend on as one deterministic archive.

        Exactly one of ``vocab`` (with its definition), ``classes`` (refs: ``boat``, ``boat@3``) or
        ``all_sets``. ``lean`` leaves out support images, masks and attention maps. gzip when
        ``compress`` or ``out`` ends in .gz/.tgz. Returns the path, size, bundle hash and contents.
        """
        from protodb.sharing.bundle import build_bundle, write_tar

        parts = build_bundle(self, self._selection(vocab, classes, all_sets), lean=lean)
        return write_tar(parts, out, compress=compress, progress=progress)

    def import_bundle(self, path: str | os.PathLike, *, dry_run: bool = False,
                      max_bytes: int | None = None, max_member_bytes: int | None = None,
                      progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
        """Verify a bundle whole (paths, types, sizes, every hash, schema revision), then merge it:
        identical objects skipped, other-provenance sets added as new versions, nothing overwritten.
        ``dry_run`` reports what would be added/skipped. Hostile input: InvalidInput, nothing written."""
        from protodb.sharing import merge
        from protodb.sharing.bundle import Limits, load_contents, read_tar

        limits = Limits.from_env(max_bytes, max_member_bytes)
        with read_tar(path, limits) as staged:
            contents = load_contents(staged)
            out = merge.apply(self, contents, dry_run=dry_run, progress=progress)
        out["path"] = str(path)
        return out

    def remote_add(self, name: str, url: str) -> dict[str, str]:
        """Remember a remote (stored as setting ``remote:NAME``): s3://bucket/prefix, file://…, a path."""
        from protodb.sharing import remote

        remote.check_remote_name(name)
        url = remote.normalize_url(url)
        self.set_setting(remote.SETTING_PREFIX + name, url)
        return {"name": name, "url": url}

    def remote_list(self) -> list[dict[str, str]]:
        from protodb.sharing import remote

        return remote.list_remotes(self)

    def remote_remove(self, name: str) -> dict[str, str]:
        from protodb.sharing import remote

        url = remote.remote_url(self, name)
        with self.session() as s:
            s.delete(s.get(SettingRow, remote.SETTING_PREFIX + name))
        return {"name": name, "url": url}

    def remote_show(self, name: str) -> list[dict[str, Any]]:
        """What a remote holds: its refs (vocabularies and classes pushed there)."""
        from protodb.sharing import remote

        return remote.remote_refs(self, name)

    def push(self, remote_name: str, *, vocab: str | None = None,
             classes: Sequence[str] | str | None = None, all_sets: bool = False, lean: bool = False,
             progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
        """Upload to a remote what it lacks of the chosen bundles (content-addressed), refs last."""
        from protodb.sharing import remote

        return remote.push(self, remote_name, self._selection(vocab, classes, all_sets), lean=lean,
                           progress=progress)

    def pull(self, remote_name: str, *, vocab: str | None = None,
             classes: Sequence[str] | str | None = None, all_sets: bool = False, dry_run: bool = False,
             max_bytes: int | None = None, max_member_bytes: int | None = None,
             progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
        """Fetch what is missing here of a remote's refs (verified) and import them like bundles."""
        from protodb.sharing import remote
        from protodb.sharing.bundle import Limits

        return remote.pull(self, remote_name, self._selection(vocab, classes, all_sets), dry_run=dry_run,
                           limits=Limits.from_env(max_bytes, max_member_bytes), progress=progress)
