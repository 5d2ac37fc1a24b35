"""Support images and what is stored beside them: generation runs, generated and exemplar image rows,
fg/bg mask rows, and a set's provenance (the joined rows ``inspect`` and ``protodb serve`` show).

The build pipeline (:mod:`protodb.pipeline.support`, :mod:`protodb.pipeline.build`) draws images and
makes masks; it stores artifacts itself and records every row through this service. Reads return
records (:class:`protodb.entities.SupportImageRecord`, plain dicts of digests), never rows.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protodb.catalog.schema import GenerationRunRow, GeneratorSpecRow, MaskRow, SetImageRow, SupportImageRow
from protodb.entities import PrototypeSet, SupportImageRecord
from protodb.stores import Stores

log = logging.getLogger(__name__)


def _record(r: SupportImageRow) -> SupportImageRecord:
    return SupportImageRecord(r.id, r.artifact_sha256, r.width, r.height, r.source, r.seed, r.origin,
                              r.attention_sha256)


def mask_extractor_id(pset: PrototypeSet) -> str:
    """Which extractor's grid made a set's masks: the build's mask extractor (shared masks), or for
    sets built before masks were shared, the set's own extractor."""
    return ((pset.config or {}).get("masks") or {}).get("source_id") or pset.extractor_id


class SupportService:
    def __init__(self, stores: Stores):
        self.stores = stores

    # ------------------------------------------------------------------ generation runs
    def generation_run(self, class_id: str, run_id: str, spec_id: str, spec: dict[str, Any], *, model_id: str,
                       revision: str | None, prompt: str, negative_prompt: str | None, seed: int, images: int) -> str:
        """Record (once) the generator spec ``spec_id`` (``spec``: its record, with name, scheduler, steps,
        guidance, width, height, device_dtype) and the run ``run_id`` of ``images`` images; a run asked for
        more images than recorded grows. Safe against a concurrent writer of the same rows."""

        def rows(s: Session) -> str:  # retried: a concurrent run may insert the same spec/run first
            if s.get(GeneratorSpecRow, spec_id) is None:
                s.add(GeneratorSpecRow(id=spec_id, name=spec["name"], model_id=model_id, revision=revision,
                                       scheduler=spec["scheduler"], steps=spec["steps"], guidance=spec["guidance"],
                                       width=spec["width"], height=spec["height"], dtype=spec["device_dtype"],
                                       config=spec))
                s.flush()
            run = s.get(GenerationRunRow, run_id)
            if run is None:
                s.add(GenerationRunRow(id=run_id, class_id=class_id, generator_spec_id=spec_id, prompt=prompt,
                                       negative_prompt=negative_prompt, base_seed=seed, num_images=images))
            elif run.num_images < images:
                run.num_images = images
            return run_id

        return self.stores.sessions.transact(rows, what="generation run")

    def generated(self, run_id: str, indices: Sequence[int] | None = None, below: int | None = None
                  ) -> dict[int, SupportImageRecord]:
        """The run's stored images by index: those in ``indices``, or all below ``below``."""
        with self.stores.sessions.reader() as s:
            q = select(SupportImageRow).where(SupportImageRow.run_id == run_id)
            if indices is not None:
                q = q.where(SupportImageRow.index_in_run.in_(list(indices)))
            if below is not None:
                q = q.where(SupportImageRow.index_in_run < below)
            return {r.index_in_run: _record(r) for r in s.scalars(q)}

    def store_generated(self, class_id: str, run_id: str, index: int, *, sha256: str, attention_sha256: str,
                        width: int, height: int, seed: int, prompt: str) -> SupportImageRecord:
        """Record image ``index`` of a run (its artifacts already stored). A concurrent run that stored this
        index first wins: its record is returned."""
        row = SupportImageRow(class_id=class_id, run_id=run_id, index_in_run=index, source="generated",
                              artifact_sha256=sha256, attention_sha256=attention_sha256, width=width, height=height,
                              seed=seed, prompt=prompt)
        try:
            with self.stores.sessions.session() as s:
                s.add(row)
            return _record(row)
        except IntegrityError:
            log.info("image %d of run %s was stored by a concurrent run; using it", index, run_id)
            return self.generated(run_id, [index])[index]

    # ------------------------------------------------------------------ exemplars
    def exemplar(self, class_id: str, *, sha256: str, width: int, height: int, origin: str,
                 source: str = "exemplar") -> str:
        """The id of the class's exemplar image ``sha256`` (recorded when new); ``source``: "exemplar" (a
        photo given to add-class) or "correction" (the image of a stored correction)."""

        def row_id(s: Session) -> str:
            row = s.scalar(select(SupportImageRow).where(
                SupportImageRow.class_id == class_id, SupportImageRow.source == source,
                SupportImageRow.artifact_sha256 == sha256))
            if row is None:
                row = SupportImageRow(class_id=class_id, source=source, artifact_sha256=sha256,
                                      width=width, height=height, origin=origin)
                s.add(row)
                s.flush()
            return row.id

        return self.stores.sessions.transact(row_id, what="exemplar row")

    # ------------------------------------------------------------------ masks
    def store_masks(self, image_id: str, extractor_id: str, digests: dict[str, str], *, method: str,
                    params: dict[str, Any]) -> None:
        """Record an image's mask artifacts ({role: sha256}) made on ``extractor_id``'s grid, each (role,
        artifact) once."""

        def rows(s: Session) -> None:
            have = set(s.execute(select(MaskRow.role, MaskRow.artifact_sha256).where(
                MaskRow.image_id == image_id, MaskRow.extractor_id == extractor_id)).tuples())
            for role, sha in digests.items():
                if (role, sha) not in have:
                    s.add(MaskRow(image_id=image_id, role=role, artifact_sha256=sha, method=method, params=params,
                                  extractor_id=extractor_id))

        self.stores.sessions.transact(rows, what="mask rows")

    def masks(self, image_ids: Sequence[str], extractor_id: str) -> dict[str, dict[str, str]]:
        """{image id: {role: sha256}} of the masks made on ``extractor_id``'s grid; an image built under
        several mask configs has several rows per role: the newest is given."""
        with self.stores.sessions.reader() as s:
            return self._masks(s, image_ids, extractor_id)

    @staticmethod
    def _masks(s: Session, image_ids: Sequence[str], extractor_id: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if not image_ids:
            return out
        for m in s.scalars(select(MaskRow).where(MaskRow.image_id.in_(list(image_ids)),
                                                 MaskRow.extractor_id == extractor_id).order_by(MaskRow.created_at)):
            out.setdefault(m.image_id, {})[m.role] = m.artifact_sha256
        return out

    # ------------------------------------------------------------------ a set's support
    @staticmethod
    def _set_images(s: Session, set_id: str) -> list[SupportImageRow]:
        return s.scalars(select(SupportImageRow).join(SetImageRow, SetImageRow.image_id == SupportImageRow.id)
                         .where(SetImageRow.set_id == set_id).order_by(SetImageRow.position)).all()

    def of_set(self, set_id: str, mask_extractor: str) -> list[dict[str, Any]]:
        """The set's support images in build order: id, sha256, size, source, seed, origin,
        attention_sha256 and ``masks`` {role: sha256} made on ``mask_extractor``'s grid."""
        with self.stores.sessions.reader() as s:
            images = self._set_images(s, set_id)
            masks = self._masks(s, [i.id for i in images], mask_extractor)
            return [{"id": i.id, "sha256": i.artifact_sha256, "size": [i.width, i.height], "source": i.source,
                     "seed": i.seed, "origin": i.origin, "attention_sha256": i.attention_sha256,
                     "masks": masks.get(i.id, {})} for i in images]

    def images_of(self, pset: PrototypeSet) -> dict[str, Any]:
        """A set's support images with their masks made on its mask extractor's grid (:meth:`of_set`)."""
        mask_ext = mask_extractor_id(pset)
        return {"set": pset.id, "ref": pset.ref, "mask_extractor_id": mask_ext, "images": self.of_set(pset.id, mask_ext)}

    def provenance(self, pset: PrototypeSet) -> dict[str, Any]:
        """What produced a set's support: ``images`` (records in build order), ``generator`` (spec and
        prompt of its generation run, or None), ``masks`` {method: params} and ``mask_shas`` (the mask
        artifacts), for the masks made on the set's mask extractor's grid (``mask_extractor_id``)."""
        mask_ext = mask_extractor_id(pset)
        with self.stores.sessions.reader() as s:
            images = self._set_images(s, pset.id)
            generator = None
            if pset.run_id:
                run = s.get(GenerationRunRow, pset.run_id)
                spec = s.get(GeneratorSpecRow, run.generator_spec_id)
                generator = {"name": spec.name, "model_id": spec.model_id, "revision": spec.revision,
                             "scheduler": spec.scheduler, "steps": spec.steps, "guidance": spec.guidance,
                             "size": [spec.width, spec.height], "dtype": spec.dtype, "prompt": run.prompt,
                             "negative_prompt": run.negative_prompt, "base_seed": run.base_seed}
            masks = s.scalars(select(MaskRow).where(MaskRow.image_id.in_([i.id for i in images]),
                                                    MaskRow.extractor_id == mask_ext)).all()
            methods: dict[str, dict] = {}
            for m in masks:
                methods.setdefault(m.method, {k: v for k, v in (m.params or {}).items() if k != "grid"})
            recs = [{"id": i.id, "source": i.source, "seed": i.seed, "origin": i.origin, "size": [i.width, i.height],
                     "sha256": i.artifact_sha256, "attention_sha256": i.attention_sha256} for i in images]
            return {"images": recs, "generator": generator, "masks": methods, "mask_extractor_id": mask_ext,
                    "mask_shas": sorted({m.artifact_sha256 for m in masks})}
