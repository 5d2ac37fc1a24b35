"""``verify``: is every stored thing what the catalog says it is?

Checks, each damage reported by name (:class:`protodb.entities.Damage`):

* artifacts: every referenced image, mask and attention map exists and re-hashes to its name;
* sets: every ready set's extractor row exists, its vector table opens, its rows can be read, their
  number, kinds and dimension match the catalog, and their checksum matches the one recorded at
  commit (flipped bytes inside a LanceDB fragment are found here);
* models: extractors whose weights are files under this database are re-hashed against the
  ``weights_hash`` recorded for them (``check_models``, given by the facade).
"""

from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import select

from protodb.catalog.schema import (
    SET_READY,
    Base,
    CorrectionRow,
    Damaged,
    ExtractorRow,
    MaskRow,
    PrototypeSetRow,
    SafeJSON,
    SupportImageRow,
)
from protodb.entities import PROTOTYPE_KINDS, Damage, VerifyReport
from protodb.storage.artifacts import is_sha256
from protodb.storage.vectors import TextEmbeddingTables
from protodb.stores import Stores

log = logging.getLogger(__name__)


class IntegrityService:
    def __init__(self, stores: Stores):
        self.stores = stores

    def referenced_artifacts(self) -> set[str]:
        with self.stores.sessions.reader() as s:
            hashes = set(s.scalars(select(SupportImageRow.artifact_sha256)).all())
            hashes |= {h for h in s.scalars(select(SupportImageRow.attention_sha256)).all() if h}
            hashes |= set(s.scalars(select(MaskRow.artifact_sha256)).all())
            hashes |= set(s.scalars(select(CorrectionRow.image_sha256)).all())
            hashes |= set(s.scalars(select(CorrectionRow.mask_sha256)).all())
        return hashes

    def _damaged_json(self) -> list[Damage]:
        """Rows whose JSON columns do not read back (text that is not JSON)."""
        out = []
        with self.stores.sessions.reader() as s:
            for model in [m.class_ for m in Base.registry.mappers]:
                cols = [c for c in model.__table__.columns if isinstance(c.type, SafeJSON)]
                if not cols:
                    continue
                pk = [c.name for c in model.__table__.primary_key.columns]
                for row in s.execute(select(*[model.__table__.c[n] for n in pk], *cols)):
                    for c in cols:
                        if isinstance(row._mapping[c.name], Damaged):
                            out.append(Damage("row", "/".join(str(row._mapping[n]) for n in pk),
                                              f"{model.__tablename__}.{c.name} is not JSON"))
        return out

    def verify(self, check_models: Callable[[], tuple[int, list[Damage]]] | None = None) -> VerifyReport:
        damage: list[Damage] = []
        digests = self.referenced_artifacts()
        bad_names = sorted(d for d in digests if not is_sha256(d))
        for d in bad_names:
            damage.append(Damage("artifact", str(d)[:70], "catalog names an artifact that is not a sha256"))
        report = self.stores.artifacts.verify(d for d in digests if is_sha256(d))
        bad_sets: list[dict] = []
        with self.stores.sessions.reader() as s:
            extractors = {e.id: e for e in s.scalars(select(ExtractorRow))}
            ready = [(r.id, r.cls.name, r.version, r.extractor_id, r.vector_table, r.counts, r.vectors_sha256)
                     for r in s.scalars(select(PrototypeSetRow).where(PrototypeSetRow.status == SET_READY))]
        tables = set(self.stores.vectors.table_names()) if ready else set()
        for set_id, cname, version, ext_id, table, counts, checksum in ready:
            ref = f"{cname}@{version}"

            def hurt(problem: str) -> None:
                damage.append(Damage("set", set_id, problem, name=ref))

            ext = extractors.get(ext_id)
            if ext is None:
                hurt(f"its extractor row {ext_id[:16]} is missing from the catalog")
            if not isinstance(counts, dict) or set(counts) - set(PROTOTYPE_KINDS) \
                    or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
                hurt("its prototype counts are not valid (unknown kind or not a count)")
                continue
            expected = sum(counts.values())
            if table not in tables:
                hurt(f"its vector table {table} does not exist")
                continue
            try:
                rows = self.stores.vectors.read(table, [set_id])
            except Exception as err:  # noqa: BLE001 - LanceDB reports missing/torn fragments in many types
                hurt(f"its vectors cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
                continue
            if len(rows) != expected:
                bad_sets.append({"set_id": set_id, "expected": expected, "found": len(rows)})
                hurt(f"holds {len(rows)} vectors, the catalog says {expected}")
                continue
            if ext is not None and len(rows) and rows.vectors.shape[1] != int(ext.dim):
                hurt(f"its vectors are {rows.vectors.shape[1]}-d, extractor {ext.name} gives {ext.dim}-d")
                continue
            if {k: rows.kinds.count(k) for k in PROTOTYPE_KINDS} != {k: int(counts.get(k, 0)) for k in PROTOTYPE_KINDS}:
                hurt("its vectors' kinds do not match the catalog's counts")
                continue
            if checksum and rows.checksum() != checksum:
                hurt("its vectors do not match the checksum recorded at commit (damaged vector data)")
        texts = TextEmbeddingTables(self.stores.vectors)
        for name in texts.names():  # the CLIP pre-filter's text cache: damaged rows are re-embedded, never used
            for problem in texts.check(name):
                damage.append(Damage("table", name, f"{problem} (the CLIP pre-filter's text embedding cache: "
                                     "segment leaves damaged rows out, embeds those prompts again and replaces the rows)"))
        for digest in report.missing:
            damage.append(Damage("artifact", digest, "missing"))
        for digest in report.corrupt:
            damage.append(Damage("artifact", digest, "does not match its sha256 (corrupt)"))
        damage += self._damaged_json()
        models_checked = 0
        if check_models is not None:
            models_checked, model_damage = check_models()
            damage += model_damage
        log.info("verified %d artifacts, %d sets, %d models: %d problems", report.checked, len(ready),
                 models_checked, len(damage))
        return VerifyReport(artifacts_checked=report.checked + len(bad_names), missing=tuple(report.missing),
                            corrupt=tuple(report.corrupt), sets_checked=len(ready), bad_sets=tuple(bad_sets),
                            damage=tuple(damage), models_checked=models_checked)
